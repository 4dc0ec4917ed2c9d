//! Faults and limits on real processes. Each test names the invariant it proves.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use common::*;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

/// A stub whose `hold` calls report their arrival and wait until released.
fn gate(name: &'static str) -> (Router, mpsc::UnboundedReceiver<()>, Arc<Notify>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let released = release.clone();
    let router = Router::new().route(
        "/rpc",
        post(move |body: String| {
            let tx = tx.clone();
            let released = released.clone();
            async move {
                let request: Value = serde_json::from_str(&body).unwrap();
                let result = if request["method"] == "rpc.discover" {
                    json!({"openrpc": "1.3.2", "info": {"title": name, "version": "1"},
                           "methods": [{"name": "hold", "params": [], "x-hero-intent": {"side_effect_class": "read"}}]})
                } else {
                    // Waiting before telling: a release sent right after the arrival is not missed.
                    let notified = released.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    let _ = tx.send(());
                    notified.await;
                    json!("released")
                };
                json!({"jsonrpc": "2.0", "id": request["id"], "result": result}).to_string()
            }
        }),
    );
    (router, rx, release)
}

/// Invariant: a principal over its rate gets -32029 (429 + Retry-After on REST) and nothing
/// is executed; other principals are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_per_principal() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let mut config = node.config();
    config.rate_limit = (0.5, 4.0);
    let _executor = node.start(config).await;
    let sock = node.rpc_sock();
    enrol(&node, "agent", &key(1), &["agent"], None).await; // the owner's first token
    for _ in 0..3 {
        assert!(
            rpc(&sock, "echo.counter.add", json!({"amount": 1}))
                .await
                .get("result")
                .is_some()
        );
    }
    let limited = post_rpc(
        &sock,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "echo.counter.add", "params": {"amount": 1}}),
        &[],
    )
    .await;
    assert_eq!(limited.status, 429);
    assert_eq!(error_code(&limited.json()), -32029);
    assert!(limited.headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    let rest = http(&node.rest_sock(), "GET", "/api/v1/catalog", &[], "").await;
    assert_eq!(
        (rest.status.as_u16(), rest.content_type()),
        (429, "application/problem+json")
    );
    // Another principal has its own bucket, and the limited calls never ran.
    let agent = signed_client(&node, "agent", &key(1));
    let counter = agent
        .rpc("echo.counter.get", json!({}), http::HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(counter["value"], 3);
}

/// Invariant: past the global concurrency limit requests are shed at once with 503/-32029,
/// and the daemon serves again as soon as load drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_not_queued() {
    let node = Node::new();
    let (router, mut arrived, release) = gate("gate");
    let _gate = node.serve_stub("gate", router).await;
    let mut config = node.config();
    config.max_concurrent = 2;
    let _executor = node.start(config).await;
    let sock = node.rpc_sock();
    let held: Vec<_> = (0..2)
        .map(|_| {
            let sock = sock.clone();
            tokio::spawn(async move { rpc(&sock, "gate.hold", json!({})).await })
        })
        .collect();
    arrived.recv().await.unwrap();
    arrived.recv().await.unwrap();
    let started = Instant::now();
    let shed = post_rpc(
        &sock,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "catalog.list"}),
        &[],
    )
    .await;
    assert_eq!(shed.status, 503);
    assert_eq!(error_code(&shed.json()), -32029);
    assert!(started.elapsed() < Duration::from_secs(2), "shed at once, not queued");
    // Health checks are never shed: a busy daemon is not a dead one.
    assert_eq!(get(&sock, "/health").await.status, 200);
    release.notify_waiters();
    for call in held {
        assert_eq!(call.await.unwrap()["result"], "released");
    }
    assert_eq!(get(&sock, "/health").await.status, 200);
}

/// Invariant: one slow target cannot starve the others: its calls over the per-target cap
/// time out (-32021) while calls to other services go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_target_does_not_starve_the_others() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let (router, mut arrived, release) = gate("slow");
    let _slow = node.serve_stub("slow", router).await;
    let mut config = node.config();
    config.max_per_target = 1;
    config.core.call_timeout = Duration::from_secs(3);
    let _executor = node.start(config).await;
    let sock = node.rpc_sock();
    let call_slow = || {
        let sock = sock.clone();
        tokio::spawn(async move { rpc(&sock, "slow.hold", json!({})).await })
    };
    let first = call_slow();
    arrived.recv().await.unwrap();
    let second = call_slow();
    // The slow service is saturated; another service answers at once...
    assert_eq!(
        rpc(&sock, "echo.echo", json!({"message": "fine"})).await["result"]["message"],
        "fine"
    );
    // ...and the second call to the slow one waits for a slot instead of reaching it.
    assert!(arrived.try_recv().is_err(), "the cap held the second call back");
    assert_eq!(error_code(&second.await.unwrap()), -32021);
    release.notify_waiters();
    let first = first.await.unwrap();
    assert!(
        first["error"]["code"] == -32021 || first["result"] == "released",
        "{first}"
    );
}

/// Invariant: when a target dies mid-call, its callers get -32020/-32022 at once (not at the
/// timeout), the runs say `failed`, and other targets are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_killed_mid_call() {
    let node = Node::new();
    let mut doomed = node.spawn_echo("doomed");
    let _other = node.spawn_echo("other");
    let _executor = node.start(node.config()).await;
    let sock = node.rpc_sock();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let sock = sock.clone();
            tokio::spawn(async move { rpc(&sock, "doomed.sleep", json!({"ms": 20_000})).await })
        })
        .collect();
    eventually("the calls to be in flight", || async {
        let running = rpc(&node.rpc_sock(), "runs.list", json!({"status": "running"})).await;
        running["result"]["runs"].as_array().unwrap().len() == 4
    })
    .await;
    let killed_at = Instant::now();
    doomed.0.kill().unwrap();
    for call in calls {
        let response = call.await.unwrap();
        let code = error_code(&response);
        assert!(code == -32020 || code == -32022, "{response}");
    }
    assert!(
        killed_at.elapsed() < Duration::from_secs(5),
        "answered at once, not at the 30 s timeout"
    );
    let failed = rpc(
        &sock,
        "runs.list",
        json!({"status": "failed", "capability": "doomed.sleep"}),
    )
    .await;
    assert_eq!(failed["result"]["runs"].as_array().unwrap().len(), 4);
    assert_eq!(
        rpc(&sock, "other.echo", json!({"message": "still fine"})).await["result"]["message"],
        "still fine"
    );
}

/// Drives `echo.whoami` from `clients` connections until `stop` is set; returns the run ids
/// of every call that was answered with a result.
async fn load(node: &Node, clients: usize, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..clients)
        .map(|_| {
            let sock = node.rpc_sock();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut answered = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(stream) = tokio::net::UnixStream::connect(&sock).await else {
                        break;
                    };
                    let Ok((mut sender, conn)) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
                    else {
                        break;
                    };
                    tokio::spawn(conn);
                    let body = r#"{"jsonrpc":"2.0","id":1,"method":"echo.whoami"}"#;
                    let request = http::Request::post("/rpc")
                        .header("host", "x")
                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                        .unwrap();
                    let Ok(response) = sender.send_request(request).await else {
                        break;
                    };
                    use http_body_util::BodyExt;
                    let Ok(body) = response.into_body().collect().await else {
                        break;
                    };
                    let answer: Value = serde_json::from_slice(&body.to_bytes()).unwrap_or_default();
                    match answer["result"]["run_id"].as_str() {
                        Some(id) => answered.push(id.to_owned()),
                        None => break,
                    }
                }
                answered
            })
        })
        .collect()
}

/// Runs the real daemon under load from 8 clients, signals it with `sig` once it has
/// recorded at least 50 runs, restarts it, and returns the node, the guards of the echo
/// service and the restarted daemon, the exit status, and the run ids of every call that
/// got an answer.
async fn signal_under_load(
    sig: rustix::process::Signal,
) -> (Node, [ChildGuard; 2], std::process::ExitStatus, Vec<String>) {
    let node = Node::new();
    let echo = node.spawn_echo("echo");
    let mut daemon = node.spawn_daemon(&["--rate-limit-rps", "0"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&node, 8, stop.clone()).await;
    eventually("some load", || async {
        let runs = rpc(&node.rpc_sock(), "runs.list", json!({"limit": 100})).await;
        runs["result"]["runs"].as_array().map_or(0, Vec::len) >= 50
    })
    .await;
    signal(daemon.0.id(), sig);
    let status = tokio::task::spawn_blocking(move || daemon.wait()).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut answered = Vec::new();
    for worker in workers {
        answered.extend(worker.await.unwrap());
    }
    assert!(!answered.is_empty());
    let restarted = node.spawn_daemon(&["--rate-limit-rps", "0"]).await;
    (node, [echo, restarted], status, answered)
}

/// Every answered call has a `succeeded` run, and no run is left in one of `statuses`.
async fn assert_runs(node: &Node, answered: &[String], statuses: &[&str]) {
    for id in answered {
        let run = rpc(&node.rpc_sock(), "runs.get", json!({"run_id": id})).await;
        assert_eq!(run["result"]["status"], "succeeded", "answered call {id}: {run}");
    }
    for status in statuses {
        let left = rpc(&node.rpc_sock(), "runs.list", json!({"status": status})).await;
        assert!(
            left["result"]["runs"].as_array().unwrap().is_empty(),
            "{status}: {left}"
        );
    }
}

/// Invariant: after SIGKILL under load and a restart, every request that got an answer has
/// a final (succeeded) run, nothing is left `running`, and the database opens clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_answered_run() {
    let (node, _processes, _, answered) = signal_under_load(rustix::process::Signal::KILL).await;
    assert_runs(&node, &answered, &["running"]).await;
}

/// Invariant: SIGTERM under load drains: exit 0, every answered request has a final run,
/// and no run is left `running` (or needs `interrupted`) after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_cleanly() {
    let (node, _processes, status, answered) = signal_under_load(rustix::process::Signal::TERM).await;
    assert!(status.success());
    assert_runs(&node, &answered, &["running", "interrupted"]).await;
}

/// Invariant: a run's record is in the journal (`hero_executor.journal`, beside the
/// database) before its call is forwarded and answered, and what the journal holds is
/// folded into SQLite at the next start. With the database locked by another connection,
/// the writer cannot fold, yet every call is answered (from the journal); after a SIGKILL
/// and a restart every answered call is a final run; a torn record at the journal's end (a
/// kill in the middle of a write) is discarded, and the daemon starts clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_is_folded_at_start_and_a_torn_record_is_dropped() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let daemon = node.spawn_daemon(&["--rate-limit-rps", "0"]).await;
    let blocker = rusqlite::Connection::open(node.data_dir().join("hero_executor.db")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut answered = Vec::new();
    for _ in 0..20 {
        // echo.whoami answers with the X-Hero-Run-Id it was called with: the run's id.
        let response = rpc(&node.rpc_sock(), "echo.whoami", json!({})).await;
        let run_id = response["result"]["run_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{response}"));
        answered.push(run_id.to_owned());
    }
    signal(daemon.0.id(), rustix::process::Signal::KILL);
    drop(daemon);
    blocker.execute_batch("ROLLBACK").unwrap();
    let count: i64 = blocker
        .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 0, "nothing was folded while the database was locked");
    drop(blocker);
    let journal = node.data_dir().join("hero_executor.journal");
    assert!(std::fs::metadata(&journal).unwrap().len() > 0, "the runs are journaled");
    let mut torn = std::fs::OpenOptions::new().append(true).open(&journal).unwrap();
    std::io::Write::write_all(&mut torn, &[200, 0, 0, 0, 1, 2, 3, 4, b'{', b'"']).unwrap();
    drop(torn);

    let _restarted = node.spawn_daemon(&["--rate-limit-rps", "0"]).await;
    for id in &answered {
        let run = rpc(&node.rpc_sock(), "runs.get", json!({"run_id": id})).await;
        assert_eq!(run["result"]["status"], "succeeded", "answered call {id}: {run}");
        assert!(run["result"]["result"]["run_id"].is_string(), "its result too: {run}");
    }
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), 0, "folded, then emptied");
    assert!(node.daemon_log().contains("torn or corrupt"), "{}", node.daemon_log());
}

/// Invariant: a pooled connection the target closed while it was idle is not used again.
/// The target is restarted between two calls, so every connection to it is closed, and the
/// second call still succeeds on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_target_gets_new_connections() {
    let node = Node::new();
    let mut first = node.spawn_echo("phoenix");
    let _executor = node.start(node.config()).await;
    let sock = node.rpc_sock();
    for _ in 0..3 {
        let answer = rpc(&sock, "phoenix.echo", json!({"message": "before"})).await;
        assert_eq!(answer["result"]["message"], "before", "{answer}");
    }
    first.0.kill().unwrap();
    first.wait();
    let _second = node.spawn_echo("phoenix");
    for round in 0..3 {
        let answer = rpc(&sock, "phoenix.echo", json!({"message": "after"})).await;
        assert_eq!(
            answer["result"]["message"], "after",
            "call {round} after the restart: {answer}"
        );
    }
}
