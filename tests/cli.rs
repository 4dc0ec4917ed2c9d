//! The client-side CLI against the real daemon: keygen -> keys add -> signed call, as in
//! the README, plus listing and revoking.

mod common;

use std::process::{Command, Output};

use common::*;

fn cli(node: &Node, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hero_executor"))
        .arg("--socket-dir")
        .arg(node.socket_dir())
        .args(args)
        .current_dir(node.tmp.path())
        .env_remove("HERO_EXECUTOR_KEY")
        .env_remove("HERO_EXECUTOR_KEYID")
        .output()
        .unwrap()
}

fn ok(output: &Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_enrol_call_list_revoke() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _daemon = node.spawn_daemon(&[]).await;

    let out = ok(&cli(&node, &["keygen", "--out", "agent.pem"]));
    let keyid = out
        .lines()
        .find_map(|l| l.strip_prefix("suggested keyid: "))
        .unwrap()
        .to_owned();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(node.tmp.path().join("agent.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(out.contains("-----BEGIN PUBLIC KEY-----"));
    let again = cli(&node, &["keygen", "--out", "agent.pem"]);
    assert!(!again.status.success(), "keygen does not overwrite a key");

    let out = ok(&cli(
        &node,
        &[
            "keys",
            "add",
            &keyid,
            "agent.pem.pub",
            "--claims",
            "agent,ops",
            "--contexts",
            "0,5",
        ],
    ));
    assert!(out.contains(&format!("enrolled {keyid}")), "{out}");

    let signed = ["--key", "agent.pem", "--keyid", keyid.as_str()];
    let out = ok(&cli(
        &node,
        &[&["call", "echo.echo", r#"{"message":"signed"}"#][..], &signed].concat(),
    ));
    let result: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["message"], "signed");
    let out = ok(&cli(
        &node,
        &[
            &["call", "echo.whoami", "--context", "5", "--claims", "agent"][..],
            &signed,
        ]
        .concat(),
    ));
    let seen: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (seen["context"].as_str(), seen["claims"].as_str()),
        (Some("5"), Some("agent"))
    );

    let denied = cli(
        &node,
        &[
            &["call", "echo.echo", r#"{"message":"x"}"#, "--context", "9"][..],
            &signed,
        ]
        .concat(),
    );
    assert_eq!(
        denied.status.code(),
        Some(7),
        "a context the key may not use: unauthenticated"
    );
    assert!(String::from_utf8_lossy(&denied.stderr).contains("-32005"));

    let out = ok(&cli(&node, &["keys", "list"]));
    assert!(
        out.lines()
            .any(|l| l.starts_with(&keyid) && l.contains("agent,ops") && l.contains("0,5")),
        "{out}"
    );

    // The README's approval flow: held, listed, approved by the owner, collected by the agent.
    let held = cli(&node, &[&["call", "echo.counter.reset"][..], &signed].concat());
    assert_eq!(held.status.code(), Some(3), "held for approval");
    let stderr = String::from_utf8_lossy(&held.stderr);
    assert!(stderr.contains("held for approval as run "), "{stderr}");
    let out = ok(&cli(&node, &["runs", "list", "--status", "awaiting_approval"]));
    let run_id = out
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert!(out.lines().nth(1).unwrap().contains("echo.counter.reset"), "{out}");
    // The approver's inbox holds it; the agent's own does not (nobody approves their own run).
    let inbox = ok(&cli(&node, &["runs", "list", "--inbox"]));
    assert!(inbox.contains(&run_id), "{inbox}");
    let agents = ok(&cli(&node, &[&["runs", "list", "--inbox"][..], &signed].concat()));
    assert!(!agents.contains(&run_id), "{agents}");
    let out = ok(&cli(&node, &["runs", "approve", &run_id, "--note", "fine"]));
    assert!(out.contains("approved"), "{out}");
    let out = ok(&cli(&node, &[&["runs", "wait", run_id.as_str()][..], &signed].concat()));
    let run: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(run["status"], "succeeded", "{run}");
    let out = ok(&cli(&node, &["runs", "list"]));
    assert!(out.lines().next().unwrap().split_whitespace().eq([
        "ID",
        "NAME",
        "STATUS",
        "PRINCIPAL",
        "AGE",
        "DURATION"
    ]));
    assert!(
        out.lines()
            .any(|l| l.contains("echo.counter.reset") && l.contains("succeeded") && l.contains(&keyid)),
        "{out}"
    );

    ok(&cli(&node, &["keys", "revoke", &keyid]));
    let refused = cli(
        &node,
        &[&["call", "echo.echo", r#"{"message":"x"}"#][..], &signed].concat(),
    );
    assert_eq!(refused.status.code(), Some(7), "a revoked key: unauthenticated");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("revoked"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// Exit codes a script can act on, `catalog`, `call --idempotency-key`, and paging runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_catalog_idempotency_and_paging() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _executor = node.start(node.config()).await;
    let code = |args: &[&str]| cli(&node, args).status.code();
    assert_eq!(code(&["call", "echo.echo", r#"{"message":"x"}"#]), Some(0));
    assert_eq!(
        code(&["call", "echo.echo", r#"{"message":42}"#]),
        Some(5),
        "invalid params"
    );
    assert_eq!(code(&["call", "echo.nope"]), Some(5), "no such method");
    assert_eq!(code(&["call", "hero_proc.kill"]), Some(4), "denied by policy");
    assert_eq!(
        code(&["call", "echo.fail", r#"{"code":-32000}"#]),
        Some(6),
        "the target's own error"
    );
    assert_eq!(code(&["call", "echo.counter.reset"]), Some(3), "held");
    let out = ok(&cli(&node, &["runs", "list", "--status", "awaiting_approval"]));
    let held = out
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert_eq!(
        code(&["runs", "wait", &held, "--timeout-ms", "10"]),
        Some(3),
        "still pending"
    );
    ok(&cli(&node, &["runs", "cancel", &held]));
    assert_eq!(code(&["runs", "wait", &held]), Some(4), "cancelled");

    let listed = ok(&cli(&node, &["catalog", "list"]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("echo.counter.add") && l.contains("mutate-self")),
        "{listed}"
    );
    let found = ok(&cli(&node, &["catalog", "search", "delay"]));
    assert!(found.lines().nth(1).unwrap().starts_with("echo.sleep"), "{found}");
    let described: serde_json::Value =
        serde_json::from_str(&ok(&cli(&node, &["catalog", "describe", "echo.sleep"]))).unwrap();
    assert_eq!(described["params_schema"]["required"], serde_json::json!(["ms"]));

    let add = [
        "call",
        "echo.counter.add",
        r#"{"amount":2}"#,
        "--idempotency-key",
        "once",
    ];
    let first = ok(&cli(&node, &add));
    assert_eq!(ok(&cli(&node, &add)), first, "a retry gets the first outcome");
    let counter: serde_json::Value = serde_json::from_str(&ok(&cli(&node, &["call", "echo.counter.get"]))).unwrap();
    assert_eq!(counter["value"], 2, "the counter moved once");

    let page = cli(&node, &["runs", "list", "--limit", "2", "--since", "1h"]);
    let hint = String::from_utf8_lossy(&page.stderr).to_string();
    let next = hint
        .trim()
        .strip_prefix("more runs: add --cursor ")
        .unwrap_or_else(|| panic!("{hint}"));
    let rest = ok(&cli(&node, &["runs", "list", "--limit", "1000", "--cursor", next]));
    assert!(rest.lines().count() > 2, "{rest}");
    assert_eq!(code(&["runs", "list", "--since", "soon"]), Some(5));
}

/// `script interface` and `script run FILE` (with `--args`), and the exit code of a script
/// that fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_interface_and_run() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _executor = node.start(node.config()).await;
    let interface = ok(&cli(&node, &["script", "interface", "--service", "echo"]));
    assert!(interface.contains("echo::echo(#{message: string})"), "{interface}");
    std::fs::write(
        node.tmp.path().join("s.rhai"),
        "let r = echo::echo(#{message: args.m}); print(r.result.message); r.result.message.len()",
    )
    .unwrap();
    let out = ok(&cli(&node, &["script", "run", "s.rhai", "--args", r#"{"m": "hello"}"#]));
    let result: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["value"], 5, "{result}");
    assert_eq!(result["output"], serde_json::json!(["hello"]));
    std::fs::write(node.tmp.path().join("bad.rhai"), "let x = ;").unwrap();
    let failed = cli(&node, &["script", "run", "bad.rhai"]);
    assert_eq!(
        failed.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
}
