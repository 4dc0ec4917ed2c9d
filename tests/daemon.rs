//! The real binary: start-up, single instance, logs, and graceful shutdown.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use common::*;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

/// A stub service whose method `hold` tells the test it arrived, then waits for `release`.
fn gate() -> (Router, mpsc::UnboundedReceiver<()>, Arc<Notify>) {
    let (arrived_tx, arrived_rx) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let released = release.clone();
    let router = Router::new().route(
        "/rpc",
        post(move |body: String| {
            let arrived = arrived_tx.clone();
            let released = released.clone();
            async move {
                let request: Value = serde_json::from_str(&body).unwrap();
                let result = if request["method"] == "rpc.discover" {
                    json!({"openrpc": "1.3.2", "info": {"title": "gate", "version": "1"},
                           "methods": [{"name": "hold", "params": []}]})
                } else {
                    // Waiting before telling: a release sent right after the arrival is not missed.
                    let notified = released.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    let _ = arrived.send(());
                    notified.await;
                    json!("released")
                };
                (
                    [("content-type", "application/json")],
                    json!({"jsonrpc": "2.0", "id": request["id"], "result": result}).to_string(),
                )
            }
        }),
    );
    (router, arrived_rx, release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_call_in_flight_then_exits_0() {
    let node = Node::new();
    let (router, mut arrived, release) = gate();
    let _gate = node.serve_stub("gate", router).await;
    let mut daemon = node.spawn_daemon(&[]).await;
    let sock = node.rpc_sock();

    let in_flight = tokio::spawn({
        let sock = sock.clone();
        async move { rpc(&sock, "gate.hold", json!({})).await }
    });
    arrived.recv().await.expect("the call reached the target");
    daemon.terminate();
    // It stops accepting: the socket goes away while the call is still held.
    eventually("rpc.sock to stop accepting", || async {
        tokio::net::UnixStream::connect(&sock).await.is_err()
    })
    .await;
    assert!(
        daemon.0.try_wait().unwrap().is_none(),
        "it waits for the call in flight"
    );
    release.notify_one();
    let response = in_flight.await.unwrap();
    assert_eq!(
        response["result"], "released",
        "the call in flight completed: {response}"
    );
    let status = tokio::task::spawn_blocking(move || daemon.wait()).await.unwrap();
    assert!(status.success(), "exit status {status:?}\n{}", node.daemon_log());
    assert!(!node.rest_sock().exists(), "socket files are removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_is_bounded() {
    let node = Node::new();
    let (router, mut arrived, _never_released) = gate();
    let _gate = node.serve_stub("gate", router).await;
    let mut daemon = node.spawn_daemon(&["--drain-timeout-secs", "1"]).await;
    let sock = node.rpc_sock();
    let stuck = tokio::spawn(async move {
        let stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"gate.hold"}"#;
        let request = http::Request::post("/rpc")
            .header("host", "x")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        sender.send_request(request).await.is_err()
    });
    arrived.recv().await.unwrap();
    daemon.terminate();
    let status = tokio::task::spawn_blocking(move || daemon.wait()).await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(stuck.await.unwrap(), "the stuck call's connection was closed");
    assert!(
        node.daemon_log().contains("drain timeout reached"),
        "{}",
        node.daemon_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_dir_is_refused() {
    let node = Node::new();
    let first = node.spawn_daemon(&[]).await;
    let second = node
        .daemon_command(&[])
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("already running"), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.0.id())), "{stderr}");
    // The first one is unharmed.
    assert_eq!(get(&node.rpc_sock(), "/health").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_sockets_are_replaced() {
    let node = Node::new();
    let dir = node.socket_dir().join("hero_executor");
    std::fs::create_dir_all(&dir).unwrap();
    drop(std::os::unix::net::UnixListener::bind(dir.join("rpc.sock")).unwrap());
    std::fs::write(dir.join("rest.sock"), "left over").unwrap();
    // Any worker count serves (the default depends on the machine's cores).
    let _daemon = node.spawn_daemon(&["--workers", "3"]).await;
    assert_eq!(get(&node.rest_sock(), "/health").await.status, 200);
    let refused = node.daemon_command(&["--workers", "0"]).output().unwrap();
    assert!(!refused.status.success());
    assert!(node.daemon_log().contains("--workers"), "{}", node.daemon_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_id() {
    let node = Node::new();
    let _daemon = node.spawn_daemon(&["--log-format", "json"]).await;
    let answer = http(
        &node.rpc_sock(),
        "GET",
        "/health",
        &[("x-request-id", "req-4242")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(answer.headers["x-request-id"], "req-4242", "the id is echoed back");
    let answer = get(&node.rpc_sock(), "/health").await;
    let generated = answer.headers["x-request-id"].to_str().unwrap().to_owned();
    eventually("the request's log line", || async {
        node.daemon_log().contains(&generated)
    })
    .await;
    let lines: Vec<Value> = node
        .daemon_log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["span"]["request_id"] == "req-4242"),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_socket_dir_is_a_clear_error() {
    let node = Node::new();
    let not_a_dir = node.tmp.path().join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hero_executor"))
        .arg("--socket-dir")
        .arg(not_a_dir.join("sockets"))
        .arg("--data-dir")
        .arg(node.data_dir())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot create socket directory"), "{stderr}");
}

/// Signals when dropped: tells the test a handler future was cancelled.
struct DropSignal(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_hanging_up_cancels_the_forwarded_call() {
    let node = Node::new();
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<tokio::sync::oneshot::Receiver<()>>();
    let router = Router::new().route(
        "/rpc",
        post(move |body: String| {
            let arrived = arrived_tx.clone();
            async move {
                let request: Value = serde_json::from_str(&body).unwrap();
                if request["method"] == "rpc.discover" {
                    let spec = json!({"openrpc": "1.3.2", "info": {"title": "t", "version": "1"}, "methods": [{"name": "hold", "params": []}]});
                    return json!({"jsonrpc": "2.0", "id": request["id"], "result": spec}).to_string();
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                let _guard = DropSignal(Some(tx));
                let _ = arrived.send(rx);
                std::future::pending::<String>().await
            }
        }),
    );
    let _stub = node.serve_stub("slow", router).await;
    let _executor = node.start(node.config()).await;

    let sock = node.rpc_sock();
    let caller = tokio::spawn(async move { rpc(&sock, "slow.hold", json!({})).await });
    let cancelled = arrived.recv().await.expect("the call reached the target");
    caller.abort(); // the caller goes away: its connection closes
    tokio::time::timeout(DEADLINE, cancelled)
        .await
        .expect("the target's handler was dropped: the executor abandoned the call")
        .unwrap();
}
