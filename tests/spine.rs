//! The spine end to end: the real executor on temp-dir sockets, the real example
//! service and stub services, driven over Unix sockets.

mod common;

use std::time::Duration;

use axum::Router;
use axum::routing::post;
use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hero_endpoints_on_every_socket() {
    let node = Node::new();
    let _executor = node.start(node.config()).await;
    for (sock, protocol, socket) in [(node.rpc_sock(), "openrpc", "rpc"), (node.rest_sock(), "rest", "rest")] {
        let health = get(&sock, "/health").await;
        assert_eq!(health.status, 200);
        assert_eq!(
            health.json(),
            json!({"status": "ok", "service": "hero_executor", "version": env!("CARGO_PKG_VERSION"),
                   "catalog": {"services": 0, "capabilities": 0}, "store": "ok"})
        );
        let info = get(&sock, "/.well-known/heroservice.json").await.json();
        assert_eq!(info["protocol"], protocol);
        assert_eq!(info["socket"], socket);
        assert_eq!(info["name"], "hero_executor");
        for key in ["title", "version", "description"] {
            assert!(info[key].is_string(), "{key} missing in {info}");
        }
    }
    // Socket files are 0660.
    use std::os::unix::fs::PermissionsExt;
    for sock in [node.rpc_sock(), node.rest_sock()] {
        assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o660);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_discover_is_openrpc_json_byte_for_byte() {
    let node = Node::new();
    let _executor = node.start(node.config()).await;
    let file = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openrpc.json")).unwrap();
    let served = get(&node.rpc_sock(), "/openrpc.json").await;
    assert_eq!(served.status, 200);
    assert_eq!(served.body, file.as_bytes(), "GET /openrpc.json is the file");
    let answer = post_rpc(
        &node.rpc_sock(),
        &json!({"jsonrpc": "2.0", "id": 1, "method": "rpc.discover"}),
        &[],
    )
    .await;
    let text = String::from_utf8(answer.body.to_vec()).unwrap();
    let expected = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{}}}"#, file.trim());
    assert_eq!(text, expected, "rpc.discover embeds the file verbatim");
    // The REST socket publishes a generated OpenAPI 3.1 document.
    let openapi = get(&node.rest_sock(), "/openapi.json").await.json();
    assert_eq!(openapi["openapi"], "3.1.0");
    for path in [
        "/api/v1/execute/{capability}",
        "/api/v1/catalog",
        "/api/v1/catalog/{capability}",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} missing from openapi.json");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_with_headers_derived_from_the_intent() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _executor = node.start(node.config()).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = rpc_with(
        &node.rpc_sock(),
        "echo.whoami",
        json!({}),
        &[
            ("x-hero-context", "5"),
            ("x-hero-claims", "ops,agent,executor.impersonate"),
            ("x-hero-user", "alice"),
            ("x-hero-run-id", "forged-by-caller"),
            ("traceparent", parent),
        ],
    )
    .await;
    let seen = &response["result"];
    assert_eq!(seen["context"], "5", "{response}");
    assert_eq!(seen["claims"], "agent,executor.impersonate,ops");
    assert_eq!(seen["user"], "alice");
    let run_id = seen["run_id"].as_str().unwrap();
    assert_ne!(
        run_id, "forged-by-caller",
        "the run id comes from the executor, not the caller"
    );
    assert_eq!(uuid::Uuid::parse_str(run_id).unwrap().get_version_num(), 7);
    let trace = seen["traceparent"].as_str().unwrap();
    assert!(
        trace.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "same trace: {trace}"
    );
    assert_ne!(trace, parent, "a new span for the forwarded call");

    // Full trust without a claims header: no X-Hero-Claims (hero convention), context 0.
    let seen = rpc(&node.rpc_sock(), "echo.whoami", json!({})).await["result"].clone();
    assert_eq!(seen["claims"], Value::Null);
    assert_eq!(seen["context"], "0");
    assert_eq!(seen["user"], Value::Null);

    // `execute` is the same call.
    let response = rpc(
        &node.rpc_sock(),
        "execute",
        json!({"capability": "echo.echo", "params": {"message": "hi"}}),
    )
    .await;
    assert_eq!(response["result"], json!({"message": "hi"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_notifications() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _executor = node.start(node.config()).await;
    let sock = node.rpc_sock();
    let batch = json!([
        {"jsonrpc": "2.0", "id": "a", "method": "echo.echo", "params": {"message": "one"}},
        {"jsonrpc": "2.0", "method": "echo.counter.add", "params": {"amount": 2}},
        {"jsonrpc": "2.0", "id": 7, "method": "no_such_service.x"},
        {"jsonrpc": "1.0", "id": 8, "method": "echo.echo"},
        42
    ]);
    let answer = post_rpc(&sock, &batch, &[]).await;
    assert_eq!(answer.status, 200);
    let replies = answer.json();
    let replies = replies.as_array().unwrap();
    assert_eq!(replies.len(), 4, "the notification gets no reply: {replies:?}");
    let by_id = |id: Value| {
        replies
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no reply for {id}"))
    };
    assert_eq!(by_id(json!("a"))["result"], json!({"message": "one"}));
    assert_eq!(error_code(by_id(json!(7))), -32601);
    assert_eq!(error_code(by_id(json!(8))), -32600);
    assert_eq!(error_code(by_id(Value::Null)), -32600);

    // A batch of notifications only: 204, and they did run.
    let notes = json!([
        {"jsonrpc": "2.0", "method": "echo.counter.add", "params": {"amount": 3}},
        {"jsonrpc": "2.0", "method": "echo.counter.add", "params": {"amount": 5}}
    ]);
    let answer = post_rpc(&sock, &notes, &[]).await;
    assert_eq!(answer.status, 204);
    assert!(answer.body.is_empty());
    let single = post_rpc(
        &sock,
        &json!({"jsonrpc": "2.0", "method": "echo.counter.add", "params": {"amount": 10}}),
        &[],
    )
    .await;
    assert_eq!(single.status, 204);
    let value = rpc(&sock, "echo.counter.get", json!({})).await;
    assert_eq!(value["result"]["value"], 20, "2 + 3 + 5 + 10: {value}");

    // Empty and oversized batches are invalid requests.
    assert_eq!(error_code(&post_rpc(&sock, &json!([]), &[]).await.json()), -32600);
    let big: Vec<Value> = (0..101)
        .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "rpc.discover"}))
        .collect();
    assert_eq!(
        error_code(&post_rpc(&sock, &Value::Array(big), &[]).await.json()),
        -32600
    );
}

/// A stub service whose one method answers with whatever `answer` returns.
fn misbehaving_stub(answer: &'static str, content_type: &'static str) -> Router {
    Router::new().route(
        "/rpc",
        post(move |body: String| async move {
            if body.contains("rpc.discover") {
                let spec = json!({"openrpc": "1.3.2", "info": {"title": "t", "version": "1"},
                                  "methods": [{"name": "x", "params": []}]});
                return (
                    [("content-type", "application/json")],
                    json!({"jsonrpc": "2.0", "id": "discover", "result": spec}).to_string(),
                );
            }
            ([("content-type", content_type)], answer.to_owned())
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _garbage = node
        .serve_stub("garbage", misbehaving_stub("<html>oops</html>", "text/html"))
        .await;
    let huge: &'static str =
        Box::leak(format!(r#"{{"jsonrpc":"2.0","id":1,"result":"{}"}}"#, "x".repeat(200_000)).into_boxed_str());
    let _huge = node
        .serve_stub("huge", misbehaving_stub(huge, "application/json"))
        .await;
    // A socket file nobody listens on: the service is down.
    std::fs::create_dir_all(node.socket_dir().join("ghost")).unwrap();
    drop(std::os::unix::net::UnixListener::bind(node.socket_dir().join("ghost/rpc.sock")).unwrap());

    let mut config = node.config();
    config.core.call_timeout = Duration::from_millis(300);
    config.max_response_bytes = 64 * 1024;
    let _executor = node.start(config).await;
    let sock = node.rpc_sock();

    let not_a_request = post_rpc(&sock, &json!(null), &[]).await;
    assert_eq!(not_a_request.status, 200);
    assert_eq!(error_code(&not_a_request.json()), -32600);
    let garbled = http(
        &sock,
        "POST",
        "/rpc",
        &[("content-type", "application/json")],
        "{\"jsonrpc\": ",
    )
    .await;
    assert_eq!(garbled.status, 200, "parse errors are HTTP 200");
    assert_eq!(garbled.content_type(), "application/json");
    assert_eq!(error_code(&garbled.json()), -32700);
    assert_eq!(garbled.json()["id"], Value::Null);
    let not_utf8 = http(&sock, "POST", "/rpc", &[], vec![0xff, 0xfe, 0x00]).await;
    assert_eq!(error_code(&not_utf8.json()), -32700);

    let cases: Vec<(&str, Value, i64)> = vec![
        ("no_such_service.method", json!({}), -32601),
        ("echo.no_such_method", json!({}), -32601),
        ("catalog.no_such_method", json!({}), -32601),
        ("nodots", json!({}), -32601),
        ("echo.echo", json!({"message": 5}), -32602),
        ("echo.echo", json!({}), -32602),
        ("execute", json!({"capability": "echo.no_such_method"}), -32003),
        ("execute", json!({"capability": "no_such_service.x"}), -32003),
        ("execute", json!({"nothing": 1}), -32602),
        ("catalog.describe", json!({"capability": "echo.nope"}), -32003),
        ("ghost.anything", json!({}), -32020),
        ("echo.sleep", json!({"ms": 5000}), -32021),
        ("garbage.x", json!({}), -32022),
        ("huge.x", json!({}), -32022),
    ];
    for (method, params, code) in cases {
        let response = rpc(&sock, method, params.clone()).await;
        assert_eq!(error_code(&response), code, "{method} {params}: {response}");
        assert_eq!(response["id"], 1, "the id is preserved");
    }

    // Invalid params carry JSON pointers.
    let response = rpc(&sock, "echo.counter.add", json!({"amount": "lots"})).await;
    assert_eq!(
        response["error"]["data"]["errors"][0]["pointer"], "/amount",
        "{response}"
    );

    // The target's own error passes through unchanged, plus the run it was recorded as.
    let response = rpc(
        &sock,
        "echo.fail",
        json!({"code": 4242, "message": "nope", "data": {"why": "asked to"}}),
    )
    .await;
    let run_id = response["error"]["data"]["run_id"].as_str().expect("run_id").to_owned();
    assert_eq!(
        response["error"],
        json!({"code": 4242, "message": "nope", "data": {"why": "asked to", "run_id": run_id}})
    );

    // After all that, the daemon still serves.
    assert_eq!(
        rpc(&sock, "echo.echo", json!({"message": "still here"})).await["result"]["message"],
        "still here"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_service_names_never_reach_a_path() {
    let node = Node::new();
    let _executor = node.start(node.config()).await;
    let sock = node.rpc_sock();
    for method in ["../etc.passwd", "Echo.echo", "a/b.c", "9lives.x", ".x", "hero-agent.x"] {
        let response = rpc(&sock, method, json!({})).await;
        assert_eq!(error_code(&response), -32601, "{method}: {response}");
        assert!(
            response["error"]["message"].as_str().unwrap().contains("service"),
            "{response}"
        );
        let response = rpc(&sock, "execute", json!({"capability": method})).await;
        assert_eq!(error_code(&response), -32602, "execute {method}: {response}");
    }
    let rest = http(&node.rest_sock(), "POST", "/api/v1/execute/..%2Fx.y", &[], "{}").await;
    assert_eq!(rest.status, 422);
    assert_eq!(rest.content_type(), "application/problem+json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_refused_in_the_surface_shape() {
    let node = Node::new();
    let mut config = node.config();
    config.max_body_bytes = 1024;
    let _executor = node.start(config).await;
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"rpc.discover","params":{{"pad":"{}"}}}}"#,
        "x".repeat(2048)
    );
    let answer = http(
        &node.rpc_sock(),
        "POST",
        "/rpc",
        &[("content-type", "application/json")],
        big.clone(),
    )
    .await;
    assert_eq!(answer.status, 413);
    assert_eq!(error_code(&answer.json()), -32600);
    let answer = http(&node.rest_sock(), "POST", "/api/v1/execute/echo.echo", &[], big).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.content_type(), "application/problem+json");
    assert_eq!(answer.json()["code"], -32600);
    // Without a Content-Length (chunked), the limit holds while reading.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(node.rpc_sock()).await.unwrap();
    let head = "POST /rpc HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = "x".repeat(512);
    for _ in 0..4 {
        let written = stream
            .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .await;
        if written.is_err() {
            break; // the server may answer and close before we finish
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("-32600"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_appear_and_disappear_while_running() {
    let node = Node::new();
    let _executor = node.start(node.config()).await;
    let sock = node.rpc_sock();
    assert!(capability_names(&sock).await.is_empty());

    let mut late = node.spawn_echo("late");
    eventually("late.* in the catalog", || async {
        capability_names(&sock).await.contains(&"late.echo".to_owned())
    })
    .await;
    assert_eq!(
        rpc(&sock, "late.echo", json!({"message": "hi"})).await["result"]["message"],
        "hi"
    );

    late.terminate();
    assert!(late.wait().success());
    eventually("late.* gone from the catalog", || async {
        capability_names(&sock).await.is_empty()
    })
    .await;
    let response = rpc(&sock, "late.echo", json!({"message": "hi"})).await;
    assert_eq!(
        error_code(&response),
        -32020,
        "a departed service is unavailable: {response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_right_after_a_service_starts_does_not_race_the_watcher() {
    let node = Node::new();
    let mut config = node.config();
    config.catalog_refresh = Duration::from_secs(3600);
    let _executor = node.start(config).await;
    let _echo = node.spawn_echo("fresh");
    // No waiting: a miss on a service whose socket exists discovers it on the spot.
    let response = rpc(&node.rpc_sock(), "fresh.echo", json!({"message": "now"})).await;
    assert_eq!(response["result"]["message"], "now", "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_methods() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _other = node.spawn_echo("other");
    let _executor = node.start(node.config()).await;
    let sock = node.rpc_sock();

    let listed = rpc(&sock, "catalog.list", json!({"service": "other"})).await["result"].clone();
    let names: Vec<&str> = listed["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with("other.")) && names.len() == 7,
        "{names:?}"
    );
    assert_eq!(listed["services"][0]["name"], "other");

    let found = rpc(
        &sock,
        "catalog.search",
        json!({"query": "counter", "service": "echo", "limit": 2}),
    )
    .await["result"]
        .clone();
    let found: Vec<&str> = found["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(found, ["echo.counter.add", "echo.counter.get"]);
    // Name matches rank above description matches ("delay" is only in sleep's summary/description).
    let found = rpc(&sock, "catalog.search", json!({"query": "delay"})).await["result"]["capabilities"].clone();
    assert_eq!(found[0]["name"], "echo.sleep");
    let found = rpc(&sock, "catalog.search", json!({"query": "echo"})).await["result"]["capabilities"].clone();
    assert_eq!(found[0]["name"], "echo.echo", "exact segment match first: {found}");

    let described = rpc(&sock, "catalog.describe", json!({"capability": "echo.counter.add"})).await["result"].clone();
    assert_eq!(described["x-hero-intent"]["side_effect_class"], "mutate-self");
    assert_eq!(described["x-hero-intent"]["idempotency"], "replay-unsafe");
    assert_eq!(described["params_schema"]["required"], json!(["amount"]));

    // Fingerprints skip re-parsing: a refresh with nothing new changes nothing.
    let report = rpc(&sock, "catalog.refresh", json!({})).await["result"].clone();
    assert_eq!(report["services"], json!(["echo", "other"]));
    assert_eq!(report["changed"], json!([]));
    assert_eq!(report["capabilities"], 14);

    // The aggregated document prefixes names and refs, and is valid OpenRPC.
    let doc = rpc(&sock, "catalog.openrpc", json!({})).await["result"].clone();
    let add = doc["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "echo.counter.add")
        .unwrap();
    assert_eq!(add["params"][0]["schema"]["$ref"], "#/components/schemas/echo.Amount");
    assert!(doc["components"]["schemas"]["echo.Amount"].is_object());
    assert!(doc["components"]["schemas"]["other.Counter"].is_object());
    let errors = common_openrpc::meta_schema_errors(&doc);
    assert!(
        errors.is_empty(),
        "aggregated document is not valid OpenRPC: {errors:?}"
    );
}

#[path = "common/openrpc.rs"]
mod common_openrpc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_surface() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _executor = node.start(node.config()).await;
    let sock = node.rest_sock();

    let ok = http(
        &sock,
        "POST",
        "/api/v1/execute/echo.echo",
        &[("content-type", "application/json")],
        r#"{"message":"rest"}"#,
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json(), json!({"message": "rest"}));
    assert!(ok.headers.contains_key("x-request-id"));

    let no_params = http(&sock, "POST", "/api/v1/execute/echo.counter.get", &[], "").await;
    assert_eq!(no_params.json(), json!({"value": 0}));

    let catalog = get(&sock, "/api/v1/catalog").await.json();
    assert_eq!(catalog["capabilities"].as_array().unwrap().len(), 7);
    let search = get(&sock, "/api/v1/catalog?q=sleep&limit=1").await.json();
    assert_eq!(search["capabilities"][0]["name"], "echo.sleep");
    let describe = get(&sock, "/api/v1/catalog/echo.sleep").await.json();
    assert_eq!(describe["name"], "echo.sleep");

    for (method, path, body, status, code) in [
        ("POST", "/api/v1/execute/echo.nope", "{}", 404, -32003),
        ("POST", "/api/v1/execute/echo.echo", "{not json", 400, -32700),
        ("POST", "/api/v1/execute/echo.echo", "42", 400, -32600),
        ("POST", "/api/v1/execute/echo.echo", r#"{"message": 1}"#, 422, -32602),
        ("POST", "/api/v1/execute/echo.fail", r#"{"code": 7}"#, 422, 7),
        ("GET", "/api/v1/catalog/echo.nope", "", 404, -32003),
        ("GET", "/api/v1/catalog?limit=abc&q=x", "", 400, -32600),
        ("GET", "/api/v1/nowhere", "", 404, -32003),
        ("DELETE", "/api/v1/catalog", "", 405, -32600),
    ] {
        let answer = http(&sock, method, path, &[], body).await;
        assert_eq!(
            answer.status,
            status,
            "{method} {path}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(answer.content_type(), "application/problem+json", "{method} {path}");
        let problem = answer.json();
        assert_eq!(problem["code"], code, "{method} {path}: {problem}");
        assert_eq!(problem["status"], status);
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:hero-executor:error:")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hero_headers_are_validated() {
    let node = Node::new();
    let _executor = node.start(node.config()).await;
    let sock = node.rpc_sock();
    for headers in [
        vec![("x-hero-context", "-1")],
        vec![("x-hero-context", "one")],
        vec![("x-hero-context", "1"), ("x-hero-context", "2")],
        vec![("x-hero-claims", "has space")],
    ] {
        let answer = post_rpc(
            &sock,
            &json!({"jsonrpc": "2.0", "id": 1, "method": "catalog.list"}),
            &headers,
        )
        .await;
        assert_eq!(answer.status, 400, "{headers:?}");
        assert_eq!(error_code(&answer.json()), -32600, "{headers:?}");
    }
    // Claims narrowed away: X-Hero-User is no longer allowed.
    let answer = post_rpc(
        &sock,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "catalog.list"}),
        &[("x-hero-claims", "agent"), ("x-hero-user", "mallory")],
    )
    .await;
    assert_eq!(answer.status, 403);
    assert_eq!(error_code(&answer.json()), -32002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_calls_need_a_trusted_peer() {
    let node = Node::new();
    let mut config = node.config();
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    let executor = node.start(config).await;
    let addr = executor.tcp.unwrap();

    // Over TCP, discovery is open and everything else needs a signature.
    let tcp = |path: &'static str, body: &'static str| async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let method = if body.is_empty() { "GET" } else { "POST" };
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())))
            .unwrap();
        sender.send_request(request).await.unwrap()
    };
    assert_eq!(tcp("/health", "").await.status(), 200);
    assert_eq!(
        tcp("/rpc", r#"{"jsonrpc":"2.0","id":1,"method":"rpc.discover"}"#)
            .await
            .status(),
        200
    );
    let denied = tcp("/rpc", r#"{"jsonrpc":"2.0","id":1,"method":"catalog.list"}"#).await;
    assert_eq!(denied.status(), 401);
    assert!(
        denied.headers()["accept-signature"]
            .to_str()
            .unwrap()
            .contains("\"@method\"")
    );
    let denied = tcp("/api/v1/catalog", "").await;
    assert_eq!(denied.status(), 401);
    assert_eq!(denied.headers()["content-type"], "application/problem+json");
    executor.stop().await;

    // With unsigned_local = off, even the owner must sign.
    let node = Node::new();
    let mut config = node.config();
    config.unsigned_local = hero_executor::config::UnsignedLocal::Off;
    let _executor = node.start(config).await;
    let answer = post_rpc(
        &node.rpc_sock(),
        &json!({"jsonrpc": "2.0", "id": 1, "method": "catalog.list"}),
        &[],
    )
    .await;
    assert_eq!(answer.status, 401);
    assert_eq!(error_code(&answer.json()), -32001);
}
