//! `GET /metrics` after real calls, parsed by the Prometheus project's own OpenMetrics
//! parser (Python `prometheus_client`), and `/health`'s catalog and store fields.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;

use common::*;
use serde_json::{Value, json};

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

const POLICY: &str = r#"
[[grant]]
claim = "agent"
capabilities = ["*"]

[[guard]]
capabilities = ["echo.counter.reset"]
effect = "require_approval"
approvers = ["ops"]
reason = "resets need ops"

[[guard]]
capabilities = ["echo.whoami"]
effect = "deny"
reason = "not here"
"#;

/// `GET path` on the metrics listener (plain TCP, no identity), as raw status and body.
fn scrape_tcp(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to --metrics-listen");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: scraper\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_owned();
    (status, content_type, body.to_owned())
}

/// Parses OpenMetrics text with `prometheus_client.openmetrics.parser` (which also checks
/// the format: it refuses text without `# EOF`, bad escapes, duplicate families...).
fn parse(text: &str) -> Vec<Sample> {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (make python-deps installs prometheus-client)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the parser refused the metrics:\n{text}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The value of `name` with exactly `labels` (0 when absent).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    samples
        .iter()
        .find(|(n, l, _)| n == name && *l == wanted)
        .map_or(0.0, |(_, _, v)| *v)
}

/// Every value the label `label` takes in samples of `name`.
fn label_values(samples: &[Sample], name: &str, label: &str) -> BTreeSet<String> {
    samples
        .iter()
        .filter(|(n, _, _)| n == name)
        .filter_map(|(_, l, _)| l.get(label).cloned())
        .collect()
}

async fn setup(node: &Node) -> (ChildGuard, Executor) {
    let echo = node.spawn_echo("echo");
    let policy = node.tmp.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut config = node.config();
    config.policy = Some(policy);
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let executor = node.start(config).await;
    (echo, executor)
}

const AGENT: &[(&str, &str)] = &[("x-hero-claims", "agent")];

/// Invariant: every call moves exactly the counters of its capability and outcome; 1,000
/// calls to invented capabilities are all counted as `unknown` and add no label value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_the_calls_made() {
    let node = Node::new();
    let (_echo, executor) = setup(&node).await;
    let addr = executor.metrics.expect("the metrics listener");
    let sock = node.rpc_sock();
    let before = parse(&scrape_tcp(addr, "/metrics").2);

    for i in 0..3 {
        let answer = rpc_with(&sock, "echo.echo", json!({"message": format!("m{i}")}), AGENT).await;
        assert!(answer["result"].is_object(), "{answer}");
    }
    let held = rpc_with(&sock, "echo.counter.reset", json!({}), AGENT).await;
    assert_eq!(error_code(&held), -32010, "{held}");
    let denied = rpc_with(&sock, "echo.whoami", json!({}), AGENT).await;
    assert_eq!(error_code(&denied), -32002, "{denied}");
    let failed = rpc_with(&sock, "echo.fail", json!({"code": 7}), AGENT).await;
    assert_eq!(error_code(&failed), 7, "{failed}");
    // 1,000 invented names, in batches of 100.
    for batch in 0..10 {
        let calls: Vec<Value> = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                json!({"jsonrpc": "2.0", "id": n, "method": format!("made{n}.up{n}"), "params": {}})
            })
            .collect();
        let answer = post_rpc(&sock, &json!(calls), AGENT).await.json();
        assert_eq!(answer.as_array().map(Vec::len), Some(100), "{answer}");
    }

    let (status, content_type, text) = scrape_tcp(addr, "/metrics");
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let after = parse(&text);
    let delta = |name: &str, labels: &[(&str, &str)]| value(&after, name, labels) - value(&before, name, labels);
    let calls = "hero_executor_calls_total";
    assert_eq!(
        delta(calls, &[("capability", "echo.echo"), ("outcome", "succeeded")]),
        3.0
    );
    assert_eq!(
        delta(calls, &[("capability", "echo.counter.reset"), ("outcome", "held")]),
        1.0
    );
    assert_eq!(
        delta(calls, &[("capability", "echo.whoami"), ("outcome", "denied")]),
        1.0
    );
    assert_eq!(delta(calls, &[("capability", "echo.fail"), ("outcome", "failed")]), 1.0);
    let unknown: f64 = ["failed", "denied"]
        .iter()
        .map(|outcome| delta(calls, &[("capability", "unknown"), ("outcome", outcome)]))
        .sum();
    assert_eq!(unknown, 1000.0, "every invented name is counted as unknown");
    assert_eq!(
        label_values(&after, calls, "capability"),
        ["echo.counter.reset", "echo.echo", "echo.fail", "echo.whoami", "unknown"]
            .map(String::from)
            .into(),
        "no label value from a caller's invention"
    );
    assert_eq!(delta("hero_executor_upstream_errors_total", &[("code", "target")]), 1.0);
    assert_eq!(
        delta(
            "hero_executor_call_duration_seconds_count",
            &[("capability", "echo.echo")]
        ),
        3.0
    );
    let decisions = "hero_executor_policy_decisions_total";
    assert_eq!(delta(decisions, &[("verdict", "require_approval")]), 1.0);
    assert_eq!(delta(decisions, &[("verdict", "deny")]), 1.0);
    assert_eq!(delta(decisions, &[("verdict", "allow")]), 1004.0);
    // 3 + 1 + 1 + 1 single calls and 10 batches, all HTTP 200 (JSON-RPC errors are answers).
    let requests = "hero_executor_requests_total";
    assert_eq!(delta(requests, &[("surface", "rpc"), ("status", "200")]), 16.0);
    assert_eq!(value(&after, "hero_executor_approvals_pending", &[]), 1.0);
    assert_eq!(value(&after, "hero_executor_catalog_services", &[]), 1.0);
    assert!(value(&after, "hero_executor_catalog_capabilities", &[]) >= 7.0);
    assert_eq!(
        value(
            &after,
            "hero_executor_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // The held run cancelled: one more outcome, nothing pending.
    let run_id = held["error"]["data"]["run_id"].as_str().unwrap().to_owned();
    let cancelled = rpc_with(&sock, "runs.cancel", json!({"run_id": run_id}), AGENT).await;
    assert_eq!(cancelled["result"]["status"], "cancelled", "{cancelled}");
    let last = parse(&scrape_tcp(addr, "/metrics").2);
    assert_eq!(
        value(
            &last,
            calls,
            &[("capability", "echo.counter.reset"), ("outcome", "cancelled")]
        ),
        1.0
    );
    assert_eq!(value(&last, "hero_executor_approvals_pending", &[]), 0.0);
}

/// Invariant: on rpc.sock the metrics are for an administrator; the metrics listener
/// serves nothing else; refused signatures are counted by reason; `/health` reports the
/// catalog and the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_may_read_the_metrics_and_what_else_is_counted() {
    let node = Node::new();
    let (_echo, executor) = setup(&node).await;
    let addr = executor.metrics.expect("the metrics listener");
    let sock = node.rpc_sock();

    let owner = get(&sock, "/metrics").await;
    assert_eq!(owner.status, 200);
    assert!(owner.content_type().starts_with("application/openmetrics-text"));
    let narrowed = http(&sock, "GET", "/metrics", AGENT, "").await;
    assert_eq!(narrowed.status, 403, "{:?}", narrowed.body);
    for path in ["/rpc", "/api/v1/runs", "/mcp", "/"] {
        assert_eq!(scrape_tcp(addr, path).0, 404, "{path} on the metrics listener");
    }

    // A key nobody enrolled.
    let stranger = signed_client(&node, "stranger", &key(9));
    let refused = stranger
        .rpc("echo.echo", json!({"message": "x"}), Default::default())
        .await;
    assert!(
        refused.is_err() || refused.as_ref().unwrap().get("error").is_some(),
        "{refused:?}"
    );
    let samples = parse(&scrape_tcp(addr, "/metrics").2);
    assert_eq!(
        value(
            &samples,
            "hero_executor_signature_failures_total",
            &[("reason", "unknown_key")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "hero_executor_requests_total",
            &[("surface", "rpc"), ("status", "401")]
        ),
        1.0
    );

    for health in [get(&sock, "/health").await.json(), {
        let (status, _, body) = scrape_tcp(addr, "/health");
        assert_eq!(status, 200);
        serde_json::from_str(&body).unwrap()
    }] {
        assert_eq!(health["status"], "ok", "{health}");
        assert_eq!(health["service"], "hero_executor");
        assert_eq!(health["store"], "ok");
        assert_eq!(health["catalog"]["services"], 1, "{health}");
        assert!(health["catalog"]["capabilities"].as_u64().unwrap() >= 7, "{health}");
    }
}

/// Invariant: whoever reaches the unauthenticated metrics listener cannot hold more than
/// its few connections open: the next one waits (the daemon keeps serving its sockets)
/// and is answered once one of them closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_holds_few_connections() {
    let node = Node::new();
    let (_echo, executor) = setup(&node).await;
    let addr = executor.metrics.expect("the metrics listener");
    // Idle connections that send nothing, up to the cap (16).
    let mut idle: Vec<std::net::TcpStream> = (0..16)
        .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
        .collect();
    let mut waiting = std::net::TcpStream::connect(addr).expect("the kernel queues the next one");
    write!(
        waiting,
        "GET /metrics HTTP/1.1\r\nHost: scraper\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    waiting
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let mut first = [0u8; 1];
    let early = waiting.read(&mut first);
    assert!(
        early.is_err(),
        "a connection past the cap was served: {early:?} {first:?}"
    );
    // The daemon's own sockets are not affected.
    let health = get(&node.rpc_sock(), "/health").await;
    assert_eq!(health.status, 200);
    // One idle connection closes: the waiting one is served.
    drop(idle.pop());
    waiting
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut raw = String::new();
    waiting.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
}
