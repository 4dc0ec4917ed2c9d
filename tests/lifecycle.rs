//! `--start`, `--stop` and `--info` against a fake hero_proc: a real server on a temp
//! `hero_proc/rpc.sock` that records each call and runs the registered script as hero_proc
//! would.

mod common;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use common::*;
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct FakeHeroProc {
    calls: Arc<Mutex<Vec<(String, Value)>>>,
    spec: Arc<Mutex<Option<Value>>>,
    child: Arc<tokio::sync::Mutex<Option<tokio::process::Child>>>,
}

async fn hero_proc(State(fake): State<FakeHeroProc>, body: String) -> String {
    let request: Value = serde_json::from_str(&body).unwrap();
    let method = request["method"].as_str().unwrap().to_owned();
    // The running executor also discovers hero_proc like any service; only service.* counts.
    if method.starts_with("service.") {
        fake.calls
            .lock()
            .unwrap()
            .push((method.clone(), request["params"].clone()));
    }
    match method.as_str() {
        "service.set" => *fake.spec.lock().unwrap() = Some(request["params"].clone()),
        "service.start" => {
            let action = fake.spec.lock().unwrap().clone().unwrap()["actions"][0].clone();
            let script: Vec<String> = action["script"]
                .as_str()
                .unwrap()
                .split(' ')
                .map(str::to_owned)
                .collect();
            let mut command = tokio::process::Command::new(&script[0]);
            command
                .args(&script[1..])
                .kill_on_drop(true)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            for (k, v) in action["env"].as_object().unwrap() {
                command.env(k, v.as_str().unwrap());
            }
            *fake.child.lock().await = Some(command.spawn().unwrap());
        }
        "service.stop" => {
            if let Some(mut child) = fake.child.lock().await.take() {
                signal(child.id().unwrap(), rustix::process::Signal::TERM);
                child.wait().await.unwrap();
            }
        }
        _ => {}
    }
    json!({"jsonrpc": "2.0", "id": request["id"], "result": {"ok": true}}).to_string()
}

async fn cli(node: &Node, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_hero_executor"))
        .arg("--socket-dir")
        .arg(node.socket_dir())
        .arg("--data-dir")
        .arg(node.data_dir())
        .args(args)
        .output()
        .await
        .unwrap()
}

fn out(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_registers_with_hero_proc_waits_for_health_and_stops() {
    let node = Node::new();
    let fake = FakeHeroProc::default();
    let _hero_proc = node
        .serve_stub(
            "hero_proc",
            Router::new().route("/rpc", post(hero_proc)).with_state(fake.clone()),
        )
        .await;

    let started = cli(
        &node,
        &["--start", "--policy", "tests/fixtures/../../src/default_policy.toml"],
    )
    .await;
    assert!(started.status.success(), "{}", out(&started));
    assert!(out(&started).contains("running under hero_proc"), "{}", out(&started));
    assert_eq!(
        get(&node.rpc_sock(), "/health").await.status,
        200,
        "healthy when --start returns"
    );

    let calls = fake.calls.lock().unwrap().clone();
    let methods: Vec<&str> = calls.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(methods, ["service.set", "service.start"]);
    assert_eq!(calls[1].1, json!({"name": "hero_executor"}));
    let spec = &calls[0].1;
    assert_eq!(spec["name"], "hero_executor");
    let action = &spec["actions"][0];
    assert_eq!(
        (
            action["name"].as_str(),
            action["interpreter"].as_str(),
            action["is_process"].as_bool()
        ),
        (Some("hero_executor"), Some("exec"), Some(true))
    );
    let script = action["script"].as_str().unwrap();
    assert!(script.starts_with(env!("CARGO_BIN_EXE_hero_executor")), "{script}");
    let socket_dir = std::path::absolute(node.socket_dir()).unwrap();
    assert!(
        script.contains(&format!("--socket-dir {}", socket_dir.display())),
        "{script}"
    );
    assert!(script.contains("--policy /"), "paths are absolute: {script}");
    let rpc = node.rpc_sock().display().to_string();
    let rest = node.rest_sock().display().to_string();
    let ui = node.socket_dir().join("hero_executor/ui.sock").display().to_string();
    assert_eq!(action["kill_other"], json!({"socket": [rpc, rest, ui]}));
    assert_eq!(action["health_checks"], json!([{"openrpc_socket": rpc}]));
    assert_eq!(
        action["env"]["HERO_SOCKET_DIR"],
        node.socket_dir().display().to_string()
    );

    // Idempotent: already running, nothing registered again.
    let again = cli(&node, &["--start"]).await;
    assert!(again.status.success());
    assert!(out(&again).contains("already running"), "{}", out(&again));
    assert_eq!(fake.calls.lock().unwrap().len(), 2);

    let stopped = cli(&node, &["--stop"]).await;
    assert!(stopped.status.success(), "{}", out(&stopped));
    assert_eq!(fake.calls.lock().unwrap().last().unwrap().0, "service.stop");
    assert!(
        tokio::net::UnixStream::connect(node.rpc_sock()).await.is_err(),
        "stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_without_hero_proc_is_a_clear_error() {
    let node = Node::new();
    let started = cli(&node, &["--start"]).await;
    assert_eq!(started.status.code(), Some(1));
    assert!(out(&started).contains("hero_proc is not running"), "{}", out(&started));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fails_when_the_service_never_becomes_healthy() {
    let node = Node::new();
    // A hero_proc that accepts everything but starts nothing.
    let _hero_proc = node
        .serve_stub(
            "hero_proc",
            Router::new().route(
                "/rpc",
                post(|body: String| async move {
                    let request: Value = serde_json::from_str(&body).unwrap();
                    json!({"jsonrpc": "2.0", "id": request["id"], "result": {}}).to_string()
                }),
            ),
        )
        .await;
    let started = cli(&node, &["--start", "--start-timeout-secs", "1"]).await;
    assert_eq!(started.status.code(), Some(1));
    assert!(out(&started).contains("did not answer /health"), "{}", out(&started));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_without_hero_proc_signals_the_instance_in_the_lock_file() {
    let node = Node::new();
    let mut daemon = node.spawn_daemon(&[]).await;
    let stopped = cli(&node, &["--stop"]).await;
    assert!(stopped.status.success(), "{}", out(&stopped));
    assert!(
        out(&stopped).contains(&format!("pid {}", daemon.0.id())),
        "{}",
        out(&stopped)
    );
    let status = tokio::task::spawn_blocking(move || daemon.wait()).await.unwrap();
    assert!(status.success());
    let again = cli(&node, &["--stop"]).await;
    assert!(out(&again).contains("not running"), "{}", out(&again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_describes_the_service_as_toml() {
    let node = Node::new();
    let info = cli(&node, &["--info"]).await;
    let text = String::from_utf8(info.stdout).unwrap();
    let parsed: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(parsed["name"].as_str(), Some("hero_executor"));
    assert_eq!(parsed["version"].as_str(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(parsed["binary"].as_str(), Some(env!("CARGO_BIN_EXE_hero_executor")));
    assert_eq!(
        parsed["sockets"]["rpc"].as_str().unwrap(),
        node.rpc_sock().display().to_string()
    );
    assert_eq!(parsed["protocols"]["rpc"].as_array().unwrap().len(), 2);
}
