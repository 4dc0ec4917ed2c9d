//! Resource bounds (issue 12): no caller and no service can exhaust, stall or crash the
//! daemon. One test per item of the issue, and a combined "hostile neighbour" test, on the
//! real daemon (in-process, or the real binary where a figure depends on the process: its
//! single async worker, or its memory read from `/proc/<pid>/status`). Every loop is bounded,
//! every wait polls under a deadline, and a daemon whose memory runs away is killed at once
//! so a failing test cannot take the machine with it. The tests run one at a time (they
//! measure latency and memory on a small machine), and only rely on today's flags and the
//! defaults README Limits documents.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use common::*;
use ed25519_dalek::SigningKey;
use hero_executor::client::Signer;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The MCP headers of a POST.
const MCP_POST: [(&str, &str); 2] = [
    ("content-type", "application/json"),
    ("accept", "application/json, text/event-stream"),
];

/// Held by every test: one's load must not show up in another's latency or memory figures.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A pattern that backtracks exponentially on a run of `a`s that does not end in `b`
/// (issue 12, item 5).
const EVIL_PATTERN: &str = "^(a|a)*\\1b";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// One HTTP/1.1 request over a Unix socket; unlike [`http`], a dead or silent daemon is an
/// `Err` (with what happened) instead of a panic or a hang.
async fn try_http(
    sock: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
    limit: Duration,
) -> Result<Answer, String> {
    let body = body.into();
    let exchange = async {
        let stream = UnixStream::connect(sock).await.map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let mut request = Request::builder().method(method).uri(path).header("host", "localhost");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = sender
            .send_request(request.body(Full::new(body)).unwrap())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
}

/// Calls one JSON-RPC method as the owner (unsigned); the response object, or what went wrong.
async fn try_rpc(sock: &Path, method: &str, params: Value, limit: Duration) -> Result<Value, String> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let answer = try_http(
        sock,
        "POST",
        "/rpc",
        &[("content-type", "application/json")],
        body,
        limit,
    )
    .await?;
    serde_json::from_slice(&answer.body).map_err(|e| {
        format!(
            "HTTP {} not JSON ({e}): {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        )
    })
}

/// Times `GET /health`: the duration, or the failure (status, or no answer within 3 s).
async fn timed_health(sock: &Path) -> Result<Duration, String> {
    let started = Instant::now();
    let answer = try_http(sock, "GET", "/health", &[], Bytes::new(), Duration::from_secs(3)).await?;
    match answer.status.as_u16() {
        200 => Ok(started.elapsed()),
        status => Err(format!(
            "/health answered {status}: {}",
            String::from_utf8_lossy(&answer.body)
        )),
    }
}

/// Times the owner's `echo.echo`: the duration, or the failure (error, or no answer within 3 s).
async fn timed_echo(sock: &Path, service: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let response = try_rpc(
        sock,
        &format!("{service}.echo"),
        json!({"message": "owner"}),
        Duration::from_secs(3),
    )
    .await?;
    match response["result"]["message"].as_str() {
        Some("owner") => Ok(started.elapsed()),
        _ => Err(format!("{service}.echo: {response}")),
    }
}

/// Headers signing `method path` with `body` as `keyid`, created at `created`.
fn signed(keyid: &str, key: &SigningKey, method: &str, path: &str, body: &[u8], created: i64) -> Vec<(String, String)> {
    let method: Method = method.parse().unwrap();
    let uri: Uri = path.parse().unwrap();
    let mut headers = HeaderMap::new();
    Signer::new(keyid, key.clone())
        .sign(&method, &uri, &mut headers, body, created)
        .unwrap();
    headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect()
}

/// Sends a request with `headers` (owned pairs, as [`signed`] makes them) and `extra`.
async fn send(
    sock: &Path,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    extra: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut all: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    try_http(
        sock,
        method,
        path,
        &all,
        Bytes::copy_from_slice(body),
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// A signed `POST /rpc` of `body` as `keyid`, signed now.
async fn signed_rpc(sock: &Path, keyid: &str, key: &SigningKey, body: &Value) -> Answer {
    let body = serde_json::to_vec(body).unwrap();
    let headers = signed(keyid, key, "POST", "/rpc", &body, hero_executor::now_unix());
    send(
        sock,
        "POST",
        "/rpc",
        &headers,
        &[("content-type", "application/json")],
        &body,
    )
    .await
}

/// An MCP `initialize` body.
fn initialize(client: &str) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": client, "version": "1"}}})
    .to_string()
    .into_bytes()
}

/// `initialize` over `POST /mcp`, signed as `signer` (or unsigned, as the owner).
async fn mcp_initialize(sock: &Path, signer: Option<(&str, &SigningKey)>) -> Answer {
    let body = initialize("bounds");
    let headers = match signer {
        Some((keyid, key)) => signed(keyid, key, "POST", "/mcp", &body, hero_executor::now_unix()),
        None => Vec::new(),
    };
    send(sock, "POST", "/mcp", &headers, &MCP_POST, &body).await
}

/// `DELETE /mcp` of `session`, signed as `signer` (or unsigned, as the owner).
async fn mcp_delete(sock: &Path, signer: Option<(&str, &SigningKey)>, session: &str) -> Answer {
    let headers = match signer {
        Some((keyid, key)) => signed(keyid, key, "DELETE", "/mcp", b"", hero_executor::now_unix()),
        None => Vec::new(),
    };
    send(sock, "DELETE", "/mcp", &headers, &[("mcp-session-id", session)], b"").await
}

/// The session id an `initialize` answer opened.
fn session_id(answer: &Answer) -> String {
    answer
        .headers
        .get("mcp-session-id")
        .unwrap_or_else(|| {
            panic!(
                "no session (HTTP {}): {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            )
        })
        .to_str()
        .unwrap()
        .to_owned()
}

/// A process's resident set, in MiB, from `/proc/<pid>/status` (`None`: it is gone).
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// CPU time a process has used so far, in clock ticks (`utime + stime` of `/proc/<pid>/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses: utime and stime are the
    // 12th and 13th of them.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// Waits until a process has used no CPU for 200 ms: it has dealt with everything sent to it.
async fn settled(pid: u32) {
    let started = Instant::now();
    let mut last = cpu_ticks(pid);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = cpu_ticks(pid);
        if now == last {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "process {pid} never went idle");
        last = now;
    }
}

/// Samples a process's VmRSS every 10 ms on its own thread and remembers the peak; past
/// `kill_above` MiB it kills the process at once (the test fails on the peak anyway, and a
/// runaway daemon must not take the machine down). Stops when dropped, when the process is
/// gone, or after two minutes.
struct RssWatch {
    peak_kib: Arc<AtomicU64>,
    killed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl RssWatch {
    fn start(pid: u32, kill_above: f64) -> Self {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (peak, dead, stopped) = (peak_kib.clone(), killed.clone(), stop.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            while !stopped.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
                let Some(mib) = rss_mib(pid) else { break };
                peak.fetch_max((mib * 1024.0) as u64, Ordering::Relaxed);
                if mib > kill_above {
                    dead.store(true, Ordering::Relaxed);
                    signal(pid, rustix::process::Signal::KILL);
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Self { peak_kib, killed, stop }
    }

    /// The highest VmRSS seen so far, in MiB.
    fn peak(&self) -> f64 {
        self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }

    /// Whether it had to kill the process.
    fn killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Connects, retrying while the listen backlog is full (bounded by [`DEADLINE`]).
async fn connect(sock: &Path) -> UnixStream {
    let started = Instant::now();
    loop {
        match UnixStream::connect(sock).await {
            Ok(stream) => return stream,
            Err(e) => {
                assert!(started.elapsed() < DEADLINE, "connect {}: {e}", sock.display());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Reads a response head (up to the blank line); `None` if the connection closed first.
async fn read_head(stream: &mut UnixStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
        if head.len() > 64 * 1024 {
            break;
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// The status code on a response head's first line.
fn status_of(head: &str) -> u16 {
    head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A connection that sent a complete, validly signed `POST /rpc` head announcing a
/// 1,000-byte body, and then one byte of it.
struct SlowBody {
    stream: UnixStream,
    sent_at: Instant,
}

impl SlowBody {
    /// Whether the daemon has neither answered nor closed it yet (without waiting).
    fn pending(&self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// Opens `n` slow-body connections signed as `keyid`, one after another.
async fn open_slow_bodies(sock: &Path, keyid: &str, key: &SigningKey, n: usize) -> Vec<SlowBody> {
    let mut slow = Vec::with_capacity(n);
    for i in 0..n {
        // A complete JSON-RPC call of exactly 1,000 bytes, signed whole.
        let prefix = format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"echo.echo","params":{{"message":""#);
        let body = format!("{prefix}{}\"}}}}", "x".repeat(1000 - prefix.len() - 3));
        assert_eq!(body.len(), 1000);
        let headers = signed(keyid, key, "POST", "/rpc", body.as_bytes(), hero_executor::now_unix());
        let mut head = String::from(
            "POST /rpc HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n",
        );
        for (k, v) in &headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        head.push_str(&body[..1]);
        let mut stream = connect(sock).await;
        // The daemon may refuse a slow sender at once; that is its right.
        let _ = stream.write_all(head.as_bytes()).await;
        slow.push(SlowBody {
            stream,
            sent_at: Instant::now(),
        });
    }
    slow
}

/// A stub hero service whose `rpc.discover` answers `spec` (serialised once) and whose
/// methods answer `{"called": <method>}`.
fn stub(spec: Value) -> Router {
    let spec = Arc::new(spec.to_string());
    Router::new().route(
        "/rpc",
        post(move |body: String| {
            let spec = spec.clone();
            async move {
                let request: Value = serde_json::from_str(&body).unwrap_or_default();
                let result = match request["method"].as_str() {
                    Some("rpc.discover") => spec.to_string(),
                    method => json!({"called": method}).to_string(),
                };
                format!(r#"{{"jsonrpc":"2.0","id":{},"result":{result}}}"#, request["id"])
            }
        }),
    )
}

/// An OpenRPC document of `methods` (already built).
fn document(title: &str, methods: Vec<Value>, components: Value) -> Value {
    json!({"openrpc": "1.3.2", "info": {"title": title, "version": "1"},
           "methods": methods, "components": components})
}

/// A read-only method `name` with one param `param` of `schema`.
fn method(name: String, param: &str, schema: Value) -> Value {
    json!({"name": name, "params": [{"name": param, "schema": schema}],
           "result": {"name": "r", "schema": {"type": "object"}},
           "x-hero-intent": {"side_effect_class": "read", "idempotency": "safe"}})
}

/// The service `regex` with one method `check`: its `text` and each of its `words` must
/// match [`EVIL_PATTERN`].
fn regex_service() -> Router {
    let pattern = json!({"type": "string", "pattern": EVIL_PATTERN});
    let check = json!({"name": "check", "paramStructure": "by-name",
        "params": [{"name": "text", "schema": pattern},
                   {"name": "words", "schema": {"type": "array", "items": pattern}}],
        "result": {"name": "r", "schema": {"type": "object"}},
        "x-hero-intent": {"side_effect_class": "read", "idempotency": "safe"}});
    stub(document("regex", vec![check], json!({})))
}

/// Params of `regex.check` that cost [`EVIL_PATTERN`] the most: 36 KB of 16-`a` words. A
/// single long string trips the regex engine's backtracking limit (1,000,000 steps) at once
/// and is refused in 0.1 s; a 16-letter word stays under it and fails to match after about
/// 2^16 steps, and all 1,940 of them are checked (105 s in a debug build today).
fn evil_words() -> Value {
    json!({"words": vec!["a".repeat(16); 36 * 1024 / 19]})
}

/// Runs `task` while timing `/health` every 50 ms; returns the task's output (`None` if it
/// took longer than `limit`, then it is aborted), how long it took, and the slowest
/// `/health` (an error if one failed).
async fn while_probing<T: Send + 'static>(
    sock: &Path,
    task: tokio::task::JoinHandle<T>,
    limit: Duration,
) -> (Option<T>, Duration, Result<Duration, String>) {
    let started = Instant::now();
    let mut worst: Result<Duration, String> = Ok(Duration::ZERO);
    while !task.is_finished() && started.elapsed() < limit {
        let probe = timed_health(sock).await;
        worst = match (worst, probe) {
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            (Ok(a), Ok(b)) => Ok(a.max(b)),
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !task.is_finished() {
        task.abort();
        return (None, started.elapsed(), worst);
    }
    let elapsed = started.elapsed();
    (Some(task.await.unwrap()), elapsed, worst)
}

/// The owner's `catalog.refresh`, with a generous bound; panics with what happened.
async fn refresh(sock: &Path) -> Value {
    try_rpc(sock, "catalog.refresh", json!({}), Duration::from_secs(25))
        .await
        .unwrap_or_else(|e| panic!("catalog.refresh: {e}"))
}

// ---------------------------------------------------------------------------------------
// Item 1: the replay window at the edge of max age
// ---------------------------------------------------------------------------------------

/// Invariant: a signature created exactly `max_age` ago is accepted once; its nonce is
/// remembered for longer than it can be accepted, so every immediate replay gets 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_at_the_edge_of_max_age_is_refused() {
    let _serial = SERIAL.lock().await;
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _executor = node.start(node.config()).await;
    let sock = node.rpc_sock();
    let agent = key(21);
    enrol(&node, "edge", &agent, &["agent"], None).await;
    let body =
        serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 1, "method": "echo.counter.add", "params": {"amount": 1}}))
            .unwrap();
    let mut accepted = None;
    for _ in 0..3 {
        // Start early in a second, so the request and its replays share it.
        while std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis()
            > 200
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let headers = signed("edge", &agent, "POST", "/rpc", &body, hero_executor::now_unix() - 300);
        let first = send(&sock, "POST", "/rpc", &headers, &[], &body).await;
        if first.status == 200 {
            accepted = Some(headers);
            break;
        }
        // The second turned between signing and checking: stale, try again.
        assert_eq!(first.status, 401, "{}", String::from_utf8_lossy(&first.body));
    }
    let headers = accepted.expect("a signature created max_age ago is accepted");
    let mut replays = Vec::new();
    for _ in 0..20 {
        replays.push(send(&sock, "POST", "/rpc", &headers, &[], &body).await.status.as_u16());
    }
    let counter = rpc(&sock, "echo.counter.get", json!({})).await;
    assert!(
        replays.iter().all(|s| *s == 401),
        "every replay is refused with 401; got {replays:?} (counter {})",
        counter["result"]["value"]
    );
    assert_eq!(counter["result"]["value"], 1, "the call ran once: {counter}");
}

// ---------------------------------------------------------------------------------------
// Item 2: slow bodies
// ---------------------------------------------------------------------------------------

/// Invariant: 1,030 signed connections that send a head and one byte of their body cannot
/// take the slots others need: the owner's `/health` and `echo.echo` answer within a
/// second while they are held, and a slow body is cut off (408 or closed) within 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_do_not_take_the_slots_others_need() {
    let _serial = SERIAL.lock().await;
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let daemon = node.spawn_daemon(&[]).await;
    let pid = daemon.0.id();
    let sock = node.rpc_sock();
    enrol(&node, "slow", &key(22), &["agent"], None).await;
    assert!(timed_echo(&sock, "echo").await.is_ok(), "echo is reachable");
    let baseline = open_fds(pid);

    let mut slow = open_slow_bodies(&sock, "slow", &key(22), 1030).await;
    // Wait until the daemon has taken them all in: each is open in the daemon, or it was
    // already answered or closed (a daemon may refuse a slow sender at once).
    eventually("the daemon to take the slow connections in", || async {
        let dealt_with = slow.iter().filter(|s| !s.pending()).count();
        open_fds(pid).saturating_sub(baseline) + dealt_with >= 1000
    })
    .await;
    settled(pid).await;
    // Sample for a while: the daemon reads the heads in its own time.
    let sampling = Instant::now();
    let mut samples = Vec::new();
    while sampling.elapsed() < Duration::from_millis(1500) {
        let health = timed_health(&sock).await;
        let echo = timed_echo(&sock, "echo").await;
        samples.push((health, echo));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed: Vec<_> = samples
        .iter()
        .filter(|(health, echo)| {
            let quick = |r: &Result<Duration, String>| r.as_ref().is_ok_and(|t| *t < Duration::from_secs(1));
            !quick(health) || !quick(echo)
        })
        .collect();
    assert!(
        failed.is_empty(),
        "with 1,030 slow bodies held, the owner's /health and echo.echo must answer within 1 s: \
         {} of {} samples failed; the first: {:?}",
        failed.len(),
        samples.len(),
        failed[0]
    );

    // The first slow connection is answered (408) or closed within 15 s of its byte.
    let first = &mut slow[0];
    let deadline = first.sent_at + Duration::from_secs(15);
    let mut reply = Vec::new();
    let cut = tokio::time::timeout_at(deadline.into(), first.stream.read_to_end(&mut reply)).await;
    assert!(cut.is_ok(), "a slow body was neither answered nor closed within 15 s");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 408"), "{reply}");
}

// ---------------------------------------------------------------------------------------
// Item 3: MCP sessions and streams
// ---------------------------------------------------------------------------------------

/// Invariant: one principal has at most 32 MCP sessions open; the 33rd `initialize` gets
/// 429 / -32029, and closing one makes room for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_sessions_are_capped_per_principal() {
    let _serial = SERIAL.lock().await;
    let node = Node::new();
    let _executor = node.start(node.config()).await;
    let sock = node.rpc_sock();
    let greedy = key(23);
    enrol(&node, "greedy", &greedy, &[], None).await;
    let signer = Some(("greedy", &greedy));
    let mut sessions = Vec::new();
    for _ in 0..32 {
        let answer = mcp_initialize(&sock, signer).await;
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
        sessions.push(session_id(&answer));
    }
    let refused = mcp_initialize(&sock, signer).await;
    assert_eq!(
        refused.status,
        429,
        "the 33rd session of one principal is refused: {}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(error_code(&refused.json()), -32029);
    let deleted = mcp_delete(&sock, signer, &sessions[0]).await;
    assert!(deleted.status.is_success(), "DELETE: {}", deleted.status);
    let again = mcp_initialize(&sock, signer).await;
    assert_eq!(
        again.status,
        200,
        "a closed session makes room: {}",
        String::from_utf8_lossy(&again.body)
    );
}

/// Invariant: a closed MCP session frees its memory and its tasks: 2,000 cycles of
/// `initialize` and `DELETE` by one principal (the owner, unsigned, so that the loop is
/// quick) leave VmRSS less than 64 MiB above its level after 100 cycles, and it does not
/// keep growing: less than 8 MiB over the last 1,000 (today each closed session leaves
/// about 16 KiB behind, 16 MiB per 1,000, which the 64 MiB bound alone lets pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_mcp_sessions_free_their_memory() {
    let _serial = SERIAL.lock().await;
    let node = Node::new();
    let daemon = node.spawn_daemon(&["--rate-limit-rps", "0"]).await;
    let pid = daemon.0.id();
    let watch = RssWatch::start(pid, 2048.0);
    let sock = node.rpc_sock();
    let mut rss = std::collections::BTreeMap::new();
    for cycle in 1..=2000 {
        let opened = mcp_initialize(&sock, None).await;
        let session = session_id(&opened);
        let deleted = mcp_delete(&sock, None, &session).await;
        assert!(deleted.status.is_success(), "DELETE: {}", deleted.status);
        if [100, 1000, 2000].contains(&cycle) {
            rss.insert(cycle, rss_mib(pid).expect("the daemon is alive"));
        }
    }
    let (after_100, after_1000, after_2000) = (rss[&100], rss[&1000], rss[&2000]);
    let seen = format!(
        "VmRSS after 100, 1,000 and 2,000 sessions opened and deleted: {after_100:.1}, \
         {after_1000:.1}, {after_2000:.1} MiB (peak {:.1} MiB)",
        watch.peak()
    );
    assert!(after_2000 - after_100 < 64.0, "{seen}");
    assert!(after_2000 - after_1000 < 8.0, "still growing: {seen}");
}

/// Invariant: `GET /mcp` event streams are counted: past 256 held streams they are refused
/// (429 or 503), and `/health` still answers within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_event_streams_are_counted() {
    let _serial = SERIAL.lock().await;
    let node = Node::new();
    let _executor = node.start(node.config()).await;
    let sock = node.rpc_sock();
    let mut sessions = Vec::new();
    for _ in 0..10 {
        sessions.push(session_id(&mcp_initialize(&sock, None).await));
    }
    let mut held = Vec::new();
    let mut outcomes: std::collections::BTreeMap<u16, usize> = Default::default();
    for i in 0..300 {
        let mut stream = connect(&sock).await;
        let head = format!(
            "GET /mcp HTTP/1.1\r\nhost: localhost\r\naccept: text/event-stream\r\n\
             mcp-protocol-version: 2025-06-18\r\nmcp-session-id: {}\r\n\r\n",
            sessions[i % sessions.len()]
        );
        let _ = stream.write_all(head.as_bytes()).await;
        let status = match tokio::time::timeout(Duration::from_secs(3), read_head(&mut stream)).await {
            Ok(Some(head)) => status_of(&head),
            Ok(None) => 0,
            Err(_) => panic!("stream {i}: no answer head within 3 s"),
        };
        *outcomes.entry(status).or_default() += 1;
        held.push(stream);
    }
    let health = timed_health(&sock).await;
    let accepted = outcomes.get(&200).copied().unwrap_or(0);
    let refused: usize = [429, 503].iter().filter_map(|s| outcomes.get(s)).sum();
    assert!(
        accepted <= 256 && refused >= 300 - 256 && accepted + refused == 300,
        "300 GET /mcp streams by status (0: closed): {outcomes:?}; at most 256 are held, \
         the rest get 429 or 503"
    );
    let health = health.unwrap_or_else(|e| panic!("with 300 streams open: {e}"));
    assert!(health < Duration::from_secs(1), "/health took {health:?}");
}

// ---------------------------------------------------------------------------------------
// Item 4: a small spec cannot crash the executor
// ---------------------------------------------------------------------------------------

/// Invariant: a 1,000-component, 1,500-method spec does not blow up the executor (VmRSS
/// stays under 300 MiB, it keeps serving, the service is listed), and a 10,000-method
/// service costs less than 100 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_spec_cannot_crash_the_executor() {
    let _serial = SERIAL.lock().await;
    // 1,000 small object schemas, every other one referring to the next; 1,500 methods
    // whose one param is a $ref to one of them (240 KB in all).
    let schemas: serde_json::Map<String, Value> = (0..1000)
        .map(|i| {
            let mut properties = json!({"id": {"type": "integer"}, "name": {"type": "string"}});
            if i % 2 == 0 {
                properties["next"] = json!({"$ref": format!("#/components/schemas/S{}", i + 1)});
            }
            (format!("S{i}"), json!({"type": "object", "properties": properties}))
        })
        .collect();
    let methods = (0..1500)
        .map(|i| {
            json!({"name": format!("m{i}"),
                   "params": [{"name": "item", "schema": {"$ref": format!("#/components/schemas/S{}", i % 1000)}}]})
        })
        .collect();
    let spec = document("components", methods, json!({"schemas": schemas}));

    let node = Node::new();
    let mut daemon = node.spawn_daemon(&[]).await;
    let pid = daemon.0.id();
    let watch = RssWatch::start(pid, 300.0);
    let sock = node.rpc_sock();
    let _stub = node.serve_stub("components", stub(spec)).await;
    let refreshed = try_rpc(&sock, "catalog.refresh", json!({}), Duration::from_secs(25)).await;
    assert!(
        !watch.killed(),
        "VmRSS passed 300 MiB during discovery (the daemon was killed); refresh: {refreshed:?}"
    );
    assert!(
        daemon.0.try_wait().unwrap().is_none(),
        "the daemon died: {refreshed:?}\n{}",
        node.daemon_log()
    );
    let listed = try_rpc(
        &sock,
        "catalog.list",
        json!({"service": "components"}),
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|e| panic!("catalog.list: {e}"));
    let listed = listed["result"]["capabilities"].as_array().map_or(0, Vec::len);
    assert!(listed > 0, "the service's capabilities are listed");
    assert!(watch.peak() < 300.0, "VmRSS peaked at {:.0} MiB", watch.peak());
    drop(watch);

    // 10,000 small methods.
    let methods = (0..10_000)
        .map(|i| method(format!("m{i}"), "n", json!({"type": "integer", "minimum": 0})))
        .collect();
    let node = Node::new();
    let daemon = node.spawn_daemon(&[]).await;
    let pid = daemon.0.id();
    let before = rss_mib(pid).unwrap();
    let watch = RssWatch::start(pid, before + 400.0);
    let sock = node.rpc_sock();
    let _stub = node
        .serve_stub("wide", stub(document("wide", methods, json!({}))))
        .await;
    let refreshed = refresh(&sock).await;
    assert_eq!(
        refreshed["result"]["capabilities"], 10_000,
        "{}",
        refreshed["result"]["unavailable"]
    );
    let after = rss_mib(pid).expect("the daemon is alive");
    assert!(
        watch.peak() - before < 100.0 && after - before < 100.0,
        "a 10,000-method service: VmRSS {before:.0} MiB before, {after:.0} MiB after, peak {:.0} MiB",
        watch.peak()
    );
}

// ---------------------------------------------------------------------------------------
// Item 5: validation has a budget
// ---------------------------------------------------------------------------------------

/// Invariant: a params schema with a catastrophic pattern cannot stall the daemon: a call
/// with 36 KB of `a`s (one string, or short words) is answered within 3 s, and `/health`
/// answers within a second meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_has_a_budget() {
    let _serial = SERIAL.lock().await;
    let node = Node::new();
    let _regex = node.serve_stub("regex", regex_service()).await;
    let _daemon = node.spawn_daemon(&[]).await;
    let sock = node.rpc_sock();
    for (what, params) in [
        ("one 36 KB string", json!({"text": "a".repeat(36 * 1024)})),
        ("36 KB of 16-letter words", evil_words()),
    ] {
        let call = {
            let sock = sock.clone();
            tokio::spawn(async move { try_rpc(&sock, "regex.check", params, Duration::from_secs(20)).await })
        };
        let (answer, took, health) = while_probing(&sock, call, Duration::from_secs(8)).await;
        let answer = answer.map(|a| a.map(|v| v.to_string().chars().take(200).collect::<String>()));
        assert!(
            took < Duration::from_secs(3) && health.as_ref().is_ok_and(|h| *h < Duration::from_secs(1)),
            "{what}: the call took {took:?} ({answer:?}); the slowest /health meanwhile: {health:?}"
        );
        assert!(matches!(answer, Some(Ok(_))), "{what}: an answer: {answer:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Item 6: catalog paths are linear and do not block
// ---------------------------------------------------------------------------------------

/// Invariant: `catalog.openrpc` over a 20,000-method service answers within 3 s, and
/// `/health` within a second meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_openrpc_is_linear() {
    let _serial = SERIAL.lock().await;
    let methods = (0..20_000)
        .map(|i| method(format!("m{i:05}"), "n", json!({"type": "integer"})))
        .collect();
    let node = Node::new();
    let _daemon = node.spawn_daemon(&[]).await;
    let sock = node.rpc_sock();
    let _stub = node
        .serve_stub("huge", stub(document("huge", methods, json!({}))))
        .await;
    let refreshed = refresh(&sock).await;
    // A cap on methods per service may keep some out; at least 10,000 are served.
    let served = refreshed["result"]["capabilities"].as_u64().unwrap_or(0);
    assert!(served >= 10_000, "{refreshed}");
    let call = {
        let sock = sock.clone();
        tokio::spawn(async move { try_rpc(&sock, "catalog.openrpc", json!({}), Duration::from_secs(20)).await })
    };
    let (answer, took, health) = while_probing(&sock, call, Duration::from_secs(15)).await;
    assert!(
        took < Duration::from_secs(3) && health.as_ref().is_ok_and(|h| *h < Duration::from_secs(1)),
        "catalog.openrpc took {took:?}; the slowest /health meanwhile: {health:?}"
    );
    let document = answer
        .expect("answered")
        .unwrap_or_else(|e| panic!("catalog.openrpc: {e}"));
    assert_eq!(
        document["result"]["methods"].as_array().map(Vec::len),
        Some(served as usize),
        "every served method is in the document"
    );
}

/// Invariant: a service whose socket accepts but never answers does not delay the
/// discovery of another: while callers keep missing on the silent one (each miss probes
/// it), a service started after it is callable within 5 s of the silent one's start, less
/// than one discovery timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_service_does_not_delay_discovery() {
    let _serial = SERIAL.lock().await;
    let node = Node::new();
    let _executor = node.start(node.config()).await;
    let sock = node.rpc_sock();
    // Accepts connections and holds them, never reading or writing.
    let started = Instant::now();
    let dir = node.socket_dir().join("silent");
    std::fs::create_dir_all(&dir).unwrap();
    let listener = tokio::net::UnixListener::bind(dir.join("rpc.sock")).unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let silent = {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                held.push(stream);
            }
        })
    };
    // Callers missing on the silent service (each miss probes it).
    let misses: Vec<_> = (0..3)
        .map(|_| {
            let sock = sock.clone();
            tokio::spawn(async move { try_rpc(&sock, "silent.ping", json!({}), Duration::from_secs(30)).await })
        })
        .collect();
    eventually("the silent service to be probed", || async {
        accepted.load(Ordering::Relaxed) > 0
    })
    .await;

    let _echo2 = node.spawn_echo("echo2");
    let called = try_rpc(&sock, "echo2.echo", json!({"message": "owner"}), Duration::from_secs(8)).await;
    let took = started.elapsed();
    for miss in misses {
        miss.abort();
    }
    silent.abort();
    let called = called.unwrap_or_else(|e| panic!("echo2.echo after {took:?}: {e}"));
    assert_eq!(called["result"]["message"], "owner", "{called}");
    assert!(
        took < Duration::from_secs(5),
        "echo2 became callable {took:?} after the silent service started"
    );
}

// ---------------------------------------------------------------------------------------
// Item 7: rate limits before cost
// ---------------------------------------------------------------------------------------

/// Invariant: a batch is charged per call (at most `burst` of its calls run), and a
/// request refused with 429 does not use up its nonce: sent again once the bucket has
/// refilled, it is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_come_before_cost() {
    let _serial = SERIAL.lock().await;
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let mut config = node.config();
    config.rate_limit = (1.0, 5.0);
    let _executor = node.start(config).await;
    let sock = node.rpc_sock();
    enrol(&node, "batcher", &key(24), &["agent"], None).await;
    enrol(&node, "burst", &key(25), &["agent"], None).await;

    // (a) A batch of 10 with 5 tokens.
    let batch: Vec<Value> = (1..=10)
        .map(|id| json!({"jsonrpc": "2.0", "id": id, "method": "echo.counter.add", "params": {"amount": 1}}))
        .collect();
    let answer = signed_rpc(&sock, "batcher", &key(24), &Value::Array(batch)).await;
    let reply = answer.json();
    let counter = rpc(&sock, "echo.counter.get", json!({})).await;
    let ran = counter["result"]["value"].as_i64().unwrap();
    let codes: Vec<Option<i64>> = match &reply {
        Value::Array(items) => items.iter().map(|r| r["error"]["code"].as_i64()).collect(),
        single => vec![single["error"]["code"].as_i64()],
    };
    assert!(
        ran <= 5,
        "a batch of 10 with a burst of 5 ran {ran} calls (HTTP {}): {codes:?}",
        answer.status
    );
    assert!(
        (codes.len() == 1 || codes.len() == 10) && codes.iter().all(|c| *c == Some(-32029)),
        "refused as one -32029 or ten: {reply}"
    );

    // (b) Drain the bucket of `burst` until a request is refused with 429.
    let body =
        serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 1, "method": "echo.echo", "params": {"message": "again"}}))
            .unwrap();
    let mut refused = None;
    for _ in 0..20 {
        let headers = signed("burst", &key(25), "POST", "/rpc", &body, hero_executor::now_unix());
        let answer = send(&sock, "POST", "/rpc", &headers, &[], &body).await;
        if answer.status == 429 {
            refused = Some(headers);
            break;
        }
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    }
    let headers = refused.expect("the bucket ran dry");
    let started = Instant::now();
    loop {
        let again = send(&sock, "POST", "/rpc", &headers, &[], &body).await;
        match again.status.as_u16() {
            200 => break,
            429 if started.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            status => panic!(
                "a request refused with 429, sent again after {:?}: HTTP {status} {}",
                started.elapsed(),
                String::from_utf8_lossy(&again.body)
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Item 8: the body limit is what it says
// ---------------------------------------------------------------------------------------

/// An `echo.echo` JSON-RPC call of `mib` MiB.
fn big_call(mib: usize) -> Vec<u8> {
    let message = "x".repeat(mib * 1024 * 1024);
    json!({"jsonrpc": "2.0", "id": 1, "method": "echo.echo", "params": {"message": message}})
        .to_string()
        .into_bytes()
}

/// Invariant: the body limit is `--max-body-bytes` (4 MiB) on every surface: 3 MiB gets
/// through to the method, 5 MiB gets 413 in the surface's own shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_limit_is_max_body_bytes() {
    let _serial = SERIAL.lock().await;
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _executor = node.start(node.config()).await;
    let (rpc_sock, rest_sock) = (node.rpc_sock(), node.rest_sock());
    let json_ct = [("content-type", "application/json")];
    let limit = Duration::from_secs(20);
    let show = |a: &Answer| {
        format!(
            "HTTP {} {}: {}",
            a.status,
            a.content_type(),
            String::from_utf8_lossy(&a.body[..a.body.len().min(200)])
        )
    };

    let three = try_http(&rpc_sock, "POST", "/rpc", &json_ct, big_call(3), limit)
        .await
        .unwrap();
    assert!(
        three.status != 413 && three.content_type() == "application/json",
        "3 MiB on /rpc: {}",
        show(&three)
    );
    assert!(three.json().get("jsonrpc").is_some(), "{}", show(&three));

    // As below: the 413 may race the client's write; the answer is what is checked.
    let mut five = try_http(&rpc_sock, "POST", "/rpc", &json_ct, big_call(5), limit).await;
    for _ in 0..3 {
        match &five {
            Err(e) if e.contains("error writing a body") => {
                five = try_http(&rpc_sock, "POST", "/rpc", &json_ct, big_call(5), limit).await
            }
            _ => break,
        }
    }
    let five = five.unwrap();
    assert_eq!(five.status, 413, "5 MiB on /rpc: {}", show(&five));
    assert_eq!(error_code(&five.json()), -32600);

    let params = |mib: usize| {
        json!({"message": "x".repeat(mib * 1024 * 1024)})
            .to_string()
            .into_bytes()
    };
    let path = "/api/v1/execute/echo.echo";
    // The 413 may come while the client still writes: hyper's client then reports the
    // write error instead of the answer; the answer is what is checked, so try again.
    let mut five = try_http(&rest_sock, "POST", path, &json_ct, params(5), limit).await;
    for _ in 0..3 {
        match &five {
            Err(e) if e.contains("error writing a body") => {
                five = try_http(&rest_sock, "POST", path, &json_ct, params(5), limit).await
            }
            _ => break,
        }
    }
    let five = five.unwrap();
    assert_eq!(
        (five.status.as_u16(), five.content_type()),
        (413, "application/problem+json"),
        "5 MiB on REST: {}",
        show(&five)
    );
    let three = try_http(&rest_sock, "POST", path, &json_ct, params(3), limit)
        .await
        .unwrap();
    assert_ne!(three.status, 413, "3 MiB on REST: {}", show(&three));
}

// ---------------------------------------------------------------------------------------
// The hostile neighbour
// ---------------------------------------------------------------------------------------

/// Invariant: while one client holds a few hundred slow bodies, opens MCP sessions in a
/// loop and keeps calling a method with a catastrophic pattern, the owner's calls keep
/// answering within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_neighbour_does_not_starve_the_owner() {
    let _serial = SERIAL.lock().await;
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _regex = node.serve_stub("regex", regex_service()).await;
    let _daemon = node.spawn_daemon(&[]).await;
    let sock = node.rpc_sock();
    let hostile = key(26);
    enrol(&node, "hostile", &hostile, &["agent"], None).await;
    assert!(timed_echo(&sock, "echo").await.is_ok(), "echo is reachable");

    let stop = Arc::new(AtomicBool::new(false));
    let _slow = open_slow_bodies(&sock, "hostile", &hostile, 300).await;
    let sessions = {
        let (sock, stop, hostile) = (sock.clone(), stop.clone(), hostile.clone());
        tokio::spawn(async move {
            for _ in 0..5000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let body = initialize("hostile");
                let headers = signed("hostile", &hostile, "POST", "/mcp", &body, hero_executor::now_unix());
                let mut all: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                all.extend_from_slice(&MCP_POST);
                let _ = try_http(&sock, "POST", "/mcp", &all, body, Duration::from_secs(5)).await;
            }
        })
    };
    let patterns = {
        let (sock, stop, hostile) = (sock.clone(), stop.clone(), hostile.clone());
        tokio::spawn(async move {
            let call = json!({"jsonrpc": "2.0", "id": 1, "method": "regex.check", "params": evil_words()});
            let body = serde_json::to_vec(&call).unwrap();
            for _ in 0..500 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let headers = signed("hostile", &hostile, "POST", "/rpc", &body, hero_executor::now_unix());
                let all: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let _ = try_http(&sock, "POST", "/rpc", &all, body.clone(), Duration::from_secs(10)).await;
            }
        })
    };

    let mut took = Vec::new();
    for _ in 0..20 {
        match timed_echo(&sock, "echo").await {
            Ok(t) => took.push(t),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                panic!("an owner's echo.echo after {} good ones: {e}", took.len());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    sessions.abort();
    patterns.abort();
    let worst = took.iter().max().unwrap();
    assert!(
        *worst < Duration::from_secs(1),
        "the owner's slowest echo.echo took {worst:?}: {took:?}"
    );
}
