//! Security properties of a running daemon. Each test names its invariant.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use serde_json::json;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Invariant: sockets are 0660, the data directory 0700 and the executor's key 0600.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_have_tight_modes() {
    let node = Node::new();
    let _daemon = node.spawn_daemon(&[]).await;
    assert_eq!(mode(&node.rpc_sock()), 0o660);
    assert_eq!(mode(&node.rest_sock()), 0o660);
    assert_eq!(mode(&node.data_dir()), 0o700);
    assert_eq!(mode(&node.data_dir().join("executor_ed25519.pem")), 0o600);
}

/// Invariant: at the default log level, neither params, results, signatures nor key
/// material appear in the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secrets_or_params_in_default_logs() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _daemon = node.spawn_daemon(&[]).await;
    enrol(&node, "agent", &key(1), &["agent"], None).await;
    let agent = signed_client(&node, "agent", &key(1));
    let secret = "SECRET-PARAM-7f3a9c";
    agent
        .rpc("echo.echo", json!({"message": secret}), http::HeaderMap::new())
        .await
        .unwrap();
    let _ = agent
        .rpc("echo.fail", json!({"message": secret}), http::HeaderMap::new())
        .await;
    let _ = rpc(&node.rpc_sock(), "echo.echo", json!({"message": 42, "token": secret})).await;
    eventually("the calls' log lines", || async {
        node.daemon_log().matches("answered status=").count() >= 4
    })
    .await;
    let ghost = signed_client(&node, "ghost", &key(5));
    let _ = ghost
        .rpc("echo.echo", json!({"message": secret}), http::HeaderMap::new())
        .await;
    eventually("the refusal's log line", || async {
        node.daemon_log().matches("answered status=").count() >= 5
    })
    .await;
    let log = node.daemon_log();
    assert!(!log.contains(secret), "params or results leaked into the log");
    // Who, what and why, one line per request.
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle) && l.contains("answered"))
            .unwrap_or_else(|| panic!("no answered line with {needle}: {log}"))
            .to_owned()
    };
    let failed = line("call=echo.fail");
    for part in ["principal=agent", "run_id=", "code=", "error="] {
        assert!(failed.contains(part), "{part} missing: {failed}");
    }
    let refused = line("code=-32005");
    assert!(refused.contains("ghost") && refused.contains("status=401"), "{refused}");
    assert_eq!(log.matches("call=echo.fail").count(), 1, "one failure, one line: {log}");
    for needle in ["sig1=", "PRIVATE KEY", "signature-input", &b64_public(&key(1))] {
        assert!(!log.contains(needle), "{needle} leaked into the log");
    }
    let pem = std::fs::read_to_string(node.data_dir().join("executor_ed25519.pem")).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!log.contains(&body), "the executor's key leaked");
}
