//! An independent RFC 9421 implementation (the Python `http-message-signatures` package,
//! which writes `created;keyid;alg;nonce`) signs through `examples/signed_call.py`, and
//! the executor accepts it. `make test` installs `examples/requirements.txt`.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_signs_and_is_accepted() {
    let probe = Command::new("python3")
        .args(["-c", "import http_message_signatures, requests"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "python3 with http-message-signatures is needed: pip install -r examples/requirements.txt"
    );
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _executor = node.start(node.config()).await;

    let out = Command::new(env!("CARGO_BIN_EXE_hero_executor"))
        .args(["keygen", "--out"])
        .arg(node.tmp.path().join("py.pem"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = std::fs::read_to_string(node.tmp.path().join("py.pem.pub")).unwrap();
    let added = rpc(
        &node.rpc_sock(),
        "keys.add",
        json!({"keyid": "py-agent", "public_key": public, "claims": ["agent"], "contexts": [4]}),
    )
    .await;
    assert!(added.get("result").is_some(), "{added}");

    let mut command = Command::new("python3");
    command
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/signed_call.py"))
        .args(["echo.whoami", "{}", "--keyid", "py-agent", "--context", "4", "--key"])
        .arg(node.tmp.path().join("py.pem"))
        .arg("--socket-dir")
        .arg(node.socket_dir());
    // Blocking, off the runtime the in-process executor runs on.
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The independent signer orders its parameters keyid-before-alg (httpsig writes alg first).
    let stderr = String::from_utf8_lossy(&out.stderr);
    let input = stderr.lines().find_map(|l| l.strip_prefix("request signed: ")).unwrap();
    let keyid_at = input.find(";keyid=").unwrap();
    let alg_at = input.find(";alg=").unwrap();
    assert!(keyid_at < alg_at, "{input}");
    let seen: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(seen["claims"], "agent");
    assert_eq!(seen["context"], "4");
}
