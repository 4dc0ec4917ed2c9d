//! Hostile and malformed input, on the real server. Each test names its invariant.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Invariant: a client that sends its headers too slowly (slowloris) is disconnected after
/// the header-read timeout; it cannot pin a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let node = Node::new();
    let mut config = node.config();
    config.header_read_timeout = Duration::from_millis(300);
    let _executor = node.start(config).await;
    let mut stream = tokio::net::UnixStream::connect(node.rpc_sock()).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut reply)).await;
    assert!(read.is_ok(), "the server closed the connection");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        reply.is_empty() || String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 408"),
        "{reply:?}"
    );
}

/// Invariant: an oversized request head is refused (431), and the daemon keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_are_refused() {
    let node = Node::new();
    let _executor = node.start(node.config()).await;
    let big = "x".repeat(100 * 1024);
    let mut stream = tokio::net::UnixStream::connect(node.rpc_sock()).await.unwrap();
    let head = format!("GET /health HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut reply)).await;
    assert!(
        String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    // Too many header fields.
    let many: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let mut stream = tokio::net::UnixStream::connect(node.rpc_sock()).await.unwrap();
    let _ = stream
        .write_all(format!("GET /health HTTP/1.1\r\nhost: x\r\n{many}\r\n").as_bytes())
        .await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut reply)).await;
    assert!(
        String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(get(&node.rpc_sock(), "/health").await.status, 200);
}

/// Invariant: malformed bodies (bad UTF-8, deep nesting, wrong shapes) get JSON-RPC errors,
/// never a crash or a plain-text answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_clean_jsonrpc_errors() {
    let node = Node::new();
    let _executor = node.start(node.config()).await;
    let sock = node.rpc_sock();
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(Vec<u8>, i64)> = vec![
        (vec![0xc3, 0x28, b'{', b'}'], -32700),
        (deep.into_bytes(), -32700),
        (
            b"{\"jsonrpc\":\"2.0\",\"method\":\"x\",\"id\":{\"a\":1}}".to_vec(),
            -32600,
        ),
        (b"\"just a string\"".to_vec(), -32600),
        (
            b"{\"jsonrpc\":\"2.0\",\"method\":\"rpc.discover\",\"params\":\"nope\",\"id\":1}".to_vec(),
            -32600,
        ),
        (b"{\"jsonrpc\":\"2.0\",\"method\":\"\xff\",\"id\":1}".to_vec(), -32700),
    ];
    for (body, code) in cases {
        let answer = http(
            &sock,
            "POST",
            "/rpc",
            &[("content-type", "application/json")],
            body.clone(),
        )
        .await;
        assert_eq!(
            answer.content_type(),
            "application/json",
            "{}",
            String::from_utf8_lossy(&body[..body.len().min(40)])
        );
        let reply: Value = answer.json();
        let reply = if reply.is_array() { reply[0].clone() } else { reply };
        assert_eq!(
            error_code(&reply),
            code,
            "{}",
            String::from_utf8_lossy(&body[..body.len().min(40)])
        );
    }
    assert_eq!(get(&sock, "/health").await.status, 200);
}

/// Invariant: an enormous or garbled Signature-Input is refused with 401 before any
/// expensive work; duplicate hero headers are a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_headers_are_refused_cleanly() {
    let node = Node::new();
    let _executor = node.start(node.config()).await;
    let lists = |n: usize| {
        let members: Vec<String> = (0..n)
            .map(|i| format!("s{i}=(\"@method\");created=1;keyid=\"k{i}\""))
            .collect();
        let sigs: Vec<String> = (0..n).map(|i| format!("s{i}=:AAAA:")).collect();
        (members.join(", "), sigs.join(", "))
    };
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "catalog.list"}).to_string();
    // Thousands of signatures: over the head limit, refused before parsing (431).
    let (input, sig) = lists(2000);
    let answer = http(
        &node.rpc_sock(),
        "POST",
        "/rpc",
        &[("signature-input", input.as_str()), ("signature", sig.as_str())],
        body.clone(),
    )
    .await;
    assert_eq!(answer.status, 431);
    // Fifty: parsed, then refused before any verification (at most 8 are looked at).
    let (input, sig) = lists(50);
    let answer = http(
        &node.rpc_sock(),
        "POST",
        "/rpc",
        &[("signature-input", input.as_str()), ("signature", sig.as_str())],
        body.clone(),
    )
    .await;
    assert_eq!(answer.status, 401);
    assert!(
        answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 8")
    );
    for (input, sig) in [
        ("sig1=(", "sig1=:AAAA:"),
        ("((((", "))))"),
        ("sig1=(\"@method\";req=?2);created=1", "sig1=:!!:"),
    ] {
        let answer = http(
            &node.rpc_sock(),
            "POST",
            "/rpc",
            &[("signature-input", input), ("signature", sig)],
            body.clone(),
        )
        .await;
        assert_eq!(answer.status, 401, "{input}");
    }
    let answer = http(
        &node.rpc_sock(),
        "POST",
        "/rpc",
        &[("x-hero-claims", "a"), ("x-hero-claims", "b")],
        body,
    )
    .await;
    assert_eq!(answer.status, 400);
}

/// Invariant: thousands of concurrent connections are all answered (or refused cleanly)
/// and the daemon stays responsive afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_connections() {
    let node = Node::new();
    let _executor = node.start(node.config()).await;
    let sock = node.rpc_sock();
    let connections = (0..3000).map(|_| {
        let sock = sock.clone();
        async move {
            let Ok(mut stream) = tokio::net::UnixStream::connect(&sock).await else {
                return "refused";
            };
            if stream
                .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .is_err()
            {
                return "reset";
            }
            let mut reply = Vec::new();
            let _ = stream.read_to_end(&mut reply).await;
            match String::from_utf8_lossy(&reply) {
                r if r.starts_with("HTTP/1.1 200") => "ok",
                r if r.starts_with("HTTP/1.1 503") => "shed",
                _ => "reset",
            }
        }
    });
    let outcomes = futures::future::join_all(connections).await;
    let ok = outcomes.iter().filter(|o| **o == "ok").count();
    assert!(
        ok > 0 && outcomes.iter().all(|o| matches!(*o, "ok" | "shed" | "refused")),
        "{:?}",
        outcomes.iter().filter(|o| **o != "ok").collect::<Vec<_>>()
    );
    assert_eq!(get(&sock, "/health").await.status, 200);
}

/// Invariant: an idle keep-alive connection is closed after the header-read timeout, so
/// clients that connect and go quiet cannot hold connections forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let node = Node::new();
    let mut config = node.config();
    config.header_read_timeout = Duration::from_millis(300);
    let _executor = node.start(config).await;
    let mut stream = tokio::net::UnixStream::connect(node.rpc_sock()).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 4096];
    let n = stream.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    // Now stay quiet: the server must close the connection on its own.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle connection was closed by the server");
}
