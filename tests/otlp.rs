//! OpenTelemetry export (`--otlp-endpoint`, `--otlp-runs`; DESIGN section 14), checked by
//! a real OTLP/HTTP receiver that decodes with the OpenTelemetry project's own protobuf
//! classes (`tests/otlp_receiver.py`, PyPI `opentelemetry-proto`): spans per request,
//! call and forwarded call, parented and continuing the caller's `traceparent`; an
//! approved call linked to its held call; every final run as a log record; and a
//! collector that is stuck or absent costs calls nothing (what is lost is counted).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hero_executor::client::{Client, ClientError};
use hero_executor::telemetry::OtlpConfig;
use http::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

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
capabilities = ["echo.counter.add"]
effect = "deny"
reason = "not here"
"#;

/// The caller's trace: its trace id and the span id it calls from.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The receiver, and every line it printed since it started.
struct Receiver {
    _child: ChildGuard,
    port: u16,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start() -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otlp_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 (make python-deps installs opentelemetry-proto)");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let port = first
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the OTLP receiver did not start: {first:?}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let value: Value = serde_json::from_str(&line).expect("a JSON line from the receiver");
                sink.lock().unwrap().push(value);
            }
        });
        Self {
            _child: ChildGuard(child),
            port,
            lines,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn of(&self, kind: &str) -> Vec<Value> {
        let lines = self.lines.lock().unwrap();
        let errors: Vec<&Value> = lines.iter().filter(|l| l["type"] == "error").collect();
        assert!(errors.is_empty(), "the receiver could not decode an export: {errors:?}");
        lines.iter().filter(|l| l["type"] == kind).cloned().collect()
    }

    /// Waits (bounded) until a span or record of `kind` matches `wanted`; returns it.
    async fn wait(&self, kind: &str, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..200 {
            if let Some(found) = self.of(kind).into_iter().find(&wanted) {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no {kind} {what} arrived; got {:#?}", self.of(kind));
    }
}

fn otlp(endpoint: &str, runs: bool) -> OtlpConfig {
    let mut config = OtlpConfig::new(endpoint, runs).unwrap();
    config.delay = Duration::from_millis(50);
    config.timeout = Duration::from_secs(2);
    // As OTEL_EXPORTER_OTLP_TRACES_HEADERS / _LOGS_HEADERS would set them.
    config
        .trace_headers
        .insert("api-key", HeaderValue::from_static("trace-key"));
    config
        .log_headers
        .insert("api-key", HeaderValue::from_static("log-key"));
    // As OTEL_RESOURCE_ATTRIBUTES would: the service's own name is not to be replaced.
    config.resource = [("host.name", "node7"), ("service.name", "impostor")]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec();
    config
}

/// A receiver, and a node exporting spans and runs to it under [`POLICY`].
async fn traced_node() -> (Receiver, Setup, Executor) {
    let receiver = Receiver::start();
    let node = Node::new();
    let policy = node.tmp.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let endpoint = receiver.endpoint();
    let (s, executor) = setup(node, |c| {
        c.policy = Some(policy);
        c.otlp = Some(otlp(&endpoint, true));
    })
    .await;
    (receiver, s, executor)
}

fn traceparent(flags: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let value = format!("00-{TRACE}-{CALLER_SPAN}-{flags}");
    headers.insert("traceparent", HeaderValue::from_str(&value).unwrap());
    headers
}

fn attr<'v>(item: &'v Value, key: &str) -> &'v Value {
    &item["attributes"][key]
}

fn held_run(result: Result<Value, ClientError>) -> String {
    match result {
        Err(ClientError::Rpc { code: -32010, data, .. }) => data.unwrap()["run_id"].as_str().unwrap().to_owned(),
        other => panic!("expected the call to be held, got {other:?}"),
    }
}

/// Invariant: a call's spans form one tree in the caller's trace (request, call, forwarded
/// call), the target is sent the forwarded call's span, and each span says what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_callers_trace_and_say_what_happened() {
    let (receiver, s, _executor) = traced_node().await;

    // Allowed and forwarded: the target sees the upstream span as its parent.
    let seen = s.agent.rpc("echo.whoami", json!({}), traceparent("01")).await.unwrap();
    let run_id = seen["run_id"]
        .as_str()
        .expect("the target is sent the run id")
        .to_owned();
    let sent = seen["traceparent"].as_str().expect("the target is sent a traceparent");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE, "01"), "{sent}");

    let call = receiver
        .wait("span", "for the call", |s| {
            attr(s, "hero.run_id") == run_id.as_str() && s["kind"] == "SPAN_KIND_INTERNAL"
        })
        .await;
    assert_eq!(call["name"], "call echo.whoami");
    assert_eq!(call["trace_id"], TRACE);
    assert_eq!(
        call["api_key"], "trace-key",
        "the configured headers reach the collector"
    );
    assert_eq!(attr(&call, "hero.capability"), "echo.whoami");
    assert_eq!(attr(&call, "hero.principal"), "agent");
    assert_eq!(attr(&call, "hero.decision"), "allow");
    assert_eq!(attr(&call, "hero.outcome"), "succeeded");
    assert_eq!(attr(&call, "hero.surface"), "openrpc");
    assert_eq!(call["status"], "STATUS_CODE_UNSET");
    assert_eq!(call["resource"]["service.name"], "hero_executor");
    assert_eq!(call["resource"]["host.name"], "node7");

    let request = receiver
        .wait("span", "for the request", |s| s["span_id"] == call["parent_span_id"])
        .await;
    assert_eq!(request["kind"], "SPAN_KIND_SERVER");
    assert_eq!(request["trace_id"], TRACE);
    assert_eq!(
        request["parent_span_id"], CALLER_SPAN,
        "the caller's span is the request's parent"
    );
    assert_eq!(request["name"], "POST rpc");
    assert_eq!(attr(&request, "http.response.status_code"), 200);
    assert_eq!(attr(&request, "hero.endpoint"), "rpc");
    assert_eq!(attr(&request, "hero.principal"), "agent");
    assert!(
        attr(&request, "hero.request_id")
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );

    let upstream = receiver
        .wait("span", "for the forwarded call", |s| {
            s["parent_span_id"] == call["span_id"]
        })
        .await;
    assert_eq!(upstream["kind"], "SPAN_KIND_CLIENT");
    assert_eq!(upstream["name"], "forward echo.whoami");
    assert_eq!(
        upstream["span_id"], parts[2],
        "the target's parent is the forwarded call's span"
    );
    assert_eq!(attr(&upstream, "rpc.method"), "whoami");
    assert_eq!(attr(&upstream, "hero.run_id"), run_id.as_str());

    // The run's final state as a log record, in the call's trace.
    let record = receiver
        .wait("log", "for the run", |r| attr(r, "hero.run_id") == run_id.as_str())
        .await;
    assert_eq!(record["event_name"], "hero.run");
    assert_eq!(record["api_key"], "log-key");
    assert_eq!(attr(&record, "hero.status"), "succeeded");
    assert_eq!(attr(&record, "hero.capability"), "echo.whoami");
    assert_eq!(attr(&record, "hero.principal"), "agent");
    assert_eq!(attr(&record, "hero.decision"), "allow");
    assert!(attr(&record, "hero.duration_ms").as_i64().is_some(), "{record}");
    assert_eq!(record["trace_id"], TRACE);
    assert_eq!(record["span_id"], call["span_id"]);
    assert_eq!(record["resource"], call["resource"]);
    assert_eq!(record["body"], format!("run {run_id} echo.whoami succeeded"));

    // Params and results stay out of every span and record: a value sent (and echoed
    // back), and one quoted by a schema error, are nowhere in what was exported.
    let echoed = s
        .agent
        .rpc("echo.echo", json!({"message": "marker-sent-7f3a"}), HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(echoed["message"], "marker-sent-7f3a");
    let refused = s
        .agent
        .rpc(
            "echo.echo",
            json!({"message": ["marker-refused-9c1d"]}),
            HeaderMap::new(),
        )
        .await;
    assert!(
        matches!(refused, Err(ClientError::Rpc { code: -32602, .. })),
        "{refused:?}"
    );
    let refused = receiver
        .wait("log", "for the refused call", |r| {
            attr(r, "hero.capability") == "echo.echo" && attr(r, "hero.status") == "failed"
        })
        .await;
    assert_eq!(attr(&refused, "hero.error.code"), -32602);
    receiver
        .wait("span", "for the refused call", |s| attr(s, "hero.outcome") == "failed")
        .await;
    for kind in ["span", "log"] {
        for item in receiver.of(kind) {
            let text = item.to_string();
            assert!(
                !text.contains("marker-sent-7f3a") && !text.contains("marker-refused-9c1d"),
                "a param or result was exported: {text}"
            );
        }
    }

    // A target error: the call and forwarded spans are errors with the target's code.
    let failed = s.agent.rpc("echo.fail", json!({"code": 7}), HeaderMap::new()).await;
    assert!(matches!(failed, Err(ClientError::Rpc { code: 7, .. })), "{failed:?}");
    let call = receiver
        .wait("span", "for the failed call", |s| {
            attr(s, "hero.capability") == "echo.fail" && s["kind"] == "SPAN_KIND_INTERNAL"
        })
        .await;
    assert_eq!(attr(&call, "hero.outcome"), "failed");
    assert_eq!(attr(&call, "hero.error.code"), 7);
    assert_eq!(call["status"], "STATUS_CODE_ERROR");
    let forwarded = receiver
        .wait("span", "for the failed forwarding", |s| {
            s["parent_span_id"] == call["span_id"]
        })
        .await;
    assert_eq!(forwarded["kind"], "SPAN_KIND_CLIENT");
    assert_eq!(forwarded["status"], "STATUS_CODE_ERROR");
    assert_eq!(attr(&forwarded, "hero.error.code"), 7);

    // A denied call.
    let denied = s
        .agent
        .rpc("echo.counter.add", json!({"amount": 1}), HeaderMap::new())
        .await;
    assert!(
        matches!(denied, Err(ClientError::Rpc { code: -32002, .. })),
        "{denied:?}"
    );
    let denied = receiver
        .wait("span", "for the denied call", |s| {
            attr(s, "hero.capability") == "echo.counter.add"
        })
        .await;
    assert_eq!(attr(&denied, "hero.decision"), "deny");
    assert_eq!(attr(&denied, "hero.outcome"), "denied");
    assert_eq!(attr(&denied, "hero.error.code"), -32002);
    let denied_id = attr(&denied, "hero.run_id").as_str().unwrap().to_owned();
    let record = receiver
        .wait("log", "for the denied run", |r| {
            attr(r, "hero.run_id") == denied_id.as_str()
        })
        .await;
    assert_eq!(attr(&record, "hero.status"), "denied");
    assert_eq!(record["severity_text"], "WARN");
    assert_eq!(attr(&record, "hero.error.code"), -32002);

    // An invented name does not become a span name.
    let unknown = s.agent.rpc("made.up", json!({}), HeaderMap::new()).await;
    assert!(unknown.is_err());
    let span = receiver
        .wait("span", "for the invented name", |s| {
            attr(s, "hero.capability") == "made.up"
        })
        .await;
    assert_eq!(span["name"], "call unknown");
    assert_eq!(attr(&span, "hero.outcome"), "failed");
    assert_eq!(span["status"], "STATUS_CODE_ERROR");

    // A caller that samples nothing (flags 00) is not traced, and its trace goes on unsampled.
    let quiet = "0af7651916cd43dd8448eb211c80319c";
    let mut headers = HeaderMap::new();
    let value = format!("00-{quiet}-b7ad6b7169203331-00");
    headers.insert("traceparent", HeaderValue::from_str(&value).unwrap());
    let seen = s.agent.rpc("echo.whoami", json!({}), headers).await.unwrap();
    let sent = seen["traceparent"].as_str().unwrap();
    assert!(
        sent.starts_with(&format!("00-{quiet}-")) && sent.ends_with("-00"),
        "{sent}"
    );
    // Spans are exported in the order they end: once a later call's are in, the quiet
    // call's would be too.
    let later = s.agent.rpc("echo.whoami", json!({}), HeaderMap::new()).await.unwrap();
    let later_id = later["run_id"].as_str().unwrap().to_owned();
    receiver
        .wait("span", "for the later call", |s| {
            attr(s, "hero.run_id") == later_id.as_str()
        })
        .await;
    assert!(
        receiver.of("span").iter().all(|s| s["trace_id"] != quiet),
        "spans of an unsampled trace were exported"
    );
}

/// Invariant: the approved call's span is linked to the held call's span, the held call's
/// span says it was held, and the run's one record is its final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_call_is_linked_to_the_held_one() {
    let (receiver, s, _executor) = traced_node().await;

    let run_id = held_run(s.agent.rpc("echo.counter.reset", json!({}), traceparent("01")).await);
    let held = receiver
        .wait("span", "for the held call", |s| {
            attr(s, "hero.run_id") == run_id.as_str() && attr(s, "hero.outcome") == "held"
        })
        .await;
    assert_eq!(held["trace_id"], TRACE);
    assert_eq!(attr(&held, "hero.decision"), "require_approval");

    let approved = s
        .ops
        .rpc("runs.approve", json!({ "run_id": run_id }), HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(approved["status"], "running", "{approved}");
    let call = receiver
        .wait("span", "for the approved call", |s| {
            attr(s, "hero.run_id") == run_id.as_str() && attr(s, "hero.outcome") == "succeeded"
        })
        .await;
    assert_eq!(call["name"], "call echo.counter.reset");
    assert_eq!(
        call["links"],
        json!([{"trace_id": held["trace_id"], "span_id": held["span_id"]}]),
        "the approved call is linked to the held call"
    );
    assert_eq!(attr(&call, "hero.approver"), "ops");
    assert_eq!(attr(&call, "hero.principal"), "agent");
    // Its parent is the approver's request.
    let approval = receiver
        .wait("span", "for the approval request", |s| {
            s["span_id"] == call["parent_span_id"]
        })
        .await;
    assert_eq!(approval["kind"], "SPAN_KIND_SERVER");
    assert_eq!(attr(&approval, "hero.principal"), "ops");
    receiver
        .wait("span", "for the approved call's forwarding", |s| {
            s["parent_span_id"] == call["span_id"] && s["kind"] == "SPAN_KIND_CLIENT"
        })
        .await;

    let record = receiver
        .wait("log", "for the approved run", |r| {
            attr(r, "hero.run_id") == run_id.as_str()
        })
        .await;
    assert_eq!(attr(&record, "hero.status"), "succeeded");
    assert_eq!(attr(&record, "hero.approver"), "ops");
    assert_eq!(record["trace_id"], TRACE, "the record is in the held call's trace");
    // One record per run: the held state is not final, so only the end is exported.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let records = receiver
        .of("log")
        .into_iter()
        .filter(|r| attr(r, "hero.run_id") == run_id.as_str())
        .count();
    assert_eq!(records, 1);
}

/// `n` calls through `client`, every one answered with a result.
async fn calls_succeed(client: &Client, n: usize) {
    for i in 0..n {
        let result = client
            .rpc("echo.echo", json!({"message": format!("m{i}")}), HeaderMap::new())
            .await;
        assert!(result.is_ok(), "call {i} failed with the collector away: {result:?}");
    }
}

fn dropped(text: &str, signal: &str, reason: &str) -> f64 {
    let prefix = format!("hero_executor_otlp_dropped_total{{signal=\"{signal}\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.parse().unwrap())
}

async fn metrics_text(node: &Node) -> String {
    let answer = get(&node.rpc_sock(), "/metrics").await;
    assert_eq!(answer.status, 200);
    String::from_utf8(answer.body.to_vec()).unwrap()
}

/// Invariant: a collector that accepts connections and never answers, or one that is not
/// there, fails no call; what cannot be sent is dropped from a bounded queue and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_or_absent_collector_fails_no_call() {
    // Stuck: accepts, reads nothing, answers nothing.
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stuck_addr = stuck.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for stream in stuck.incoming().map_while(Result::ok) {
            keep.lock().unwrap().push(stream);
        }
    });
    let node = Node::new();
    let (s, executor) = setup(node, |c| {
        let mut config = otlp(&format!("http://{stuck_addr}"), true);
        config.queue = 16;
        c.otlp = Some(config);
    })
    .await;
    calls_succeed(&s.agent, 60).await;
    let text = metrics_text(&s.node).await;
    assert!(
        dropped(&text, "spans", "queue_full") > 0.0,
        "a full queue drops and counts:\n{text}"
    );
    assert!(dropped(&text, "runs", "queue_full") > 0.0, "{text}");
    // The export that hangs gives up after its timeout and its batch is counted.
    eventually("the stuck export to be counted as failed", || async {
        dropped(&metrics_text(&s.node).await, "spans", "export_failed") > 0.0
    })
    .await;
    assert!(
        !held.lock().unwrap().is_empty(),
        "the executor did reach the stuck collector"
    );
    executor.stop().await;

    // Absent: nothing listens on the port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let node = Node::new();
    let (s, _executor) = setup(node, |c| c.otlp = Some(otlp(&format!("http://{port}"), false))).await;
    calls_succeed(&s.agent, 30).await;
    eventually("the refused export to be counted as failed", || async {
        dropped(&metrics_text(&s.node).await, "spans", "export_failed") > 0.0
    })
    .await;
}

/// Invariant: a bad endpoint is refused at start with a message naming the flag.
#[test]
fn a_bad_endpoint_is_refused_at_start() {
    for bad in ["localhost:4318", "ftp://collector", "http://"] {
        let error = OtlpConfig::new(bad, false).unwrap_err();
        assert!(error.contains("--otlp-endpoint"), "{error}");
    }
    let node = Node::new();
    // `--info` reads the whole configuration, then prints and exits.
    let info = |args: &[&str], env: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_hero_executor"))
            .arg("--socket-dir")
            .arg(node.socket_dir())
            .arg("--data-dir")
            .arg(node.data_dir())
            .args(args)
            .arg("--info")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let stderr = |output: &std::process::Output| String::from_utf8_lossy(&output.stderr).into_owned();
    let refused = info(&["--otlp-endpoint", "collector:4318"], &[]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--otlp-endpoint") && stderr(&refused).contains("http://"),
        "{}",
        stderr(&refused)
    );
    let refused = info(&["--otlp-endpoint", "http://127.0.0.1:4318/v1/traces"], &[]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("base URL"), "{}", stderr(&refused));
    for (args, env) in [
        (&["--otlp-runs"][..], &[][..]),
        (&[][..], &[("HERO_EXECUTOR_OTLP_RUNS", "yes")][..]),
    ] {
        let refused = info(args, env);
        assert!(!refused.status.success(), "--otlp-runs needs --otlp-endpoint");
        assert!(stderr(&refused).contains("--otlp-endpoint"), "{}", stderr(&refused));
    }
    // Turned off explicitly, it needs nothing; turned on, it is read as on.
    for value in ["false", "0", "off"] {
        let fine = info(&[], &[("HERO_EXECUTOR_OTLP_RUNS", value)]);
        assert!(
            fine.status.success(),
            "HERO_EXECUTOR_OTLP_RUNS={value}: {}",
            stderr(&fine)
        );
    }
    let on = info(
        &["--otlp-endpoint", "http://127.0.0.1:4318"],
        &[("HERO_EXECUTOR_OTLP_RUNS", "1")],
    );
    assert!(on.status.success(), "{}", stderr(&on));
    let refused = info(
        &["--otlp-endpoint", "http://127.0.0.1:4318"],
        &[("OTEL_RESOURCE_ATTRIBUTES", "host.name=node7,region")],
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("OTEL_RESOURCE_ATTRIBUTES: entry 2 is not name=value"),
        "{}",
        stderr(&refused)
    );
}
