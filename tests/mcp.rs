//! MCP end to end with the official Rust SDK's client: the Streamable HTTP endpoint on
//! rpc.sock (signed through the library's transport) and the stdio bridge
//! (`hero_executor mcp`, a real child process).

mod common;

use axum::Router;
use axum::routing::post;
use common::*;
use hero_executor::client::Signer;
use hero_executor::mcp_bridge;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService};
use serde_json::{Value, json};

type McpClient = RunningService<RoleClient, ()>;

async fn mcp(node: &Node, keyid: &str, seed: u8, direct: bool) -> McpClient {
    mcp_bridge::connect(&node.rpc_sock(), Some(Signer::new(keyid, key(seed))), direct, ())
        .await
        .unwrap()
}

async fn tool(client: &McpClient, name: &str, args: Value) -> CallToolResult {
    let mut params = CallToolRequestParams::new(name.to_owned());
    params.arguments = args.as_object().cloned();
    client.peer().call_tool(params).await.unwrap()
}

fn structured(result: &CallToolResult) -> Value {
    result.structured_content.clone().unwrap_or(Value::Null)
}

async fn tool_names(client: &McpClient) -> Vec<String> {
    let mut names: Vec<String> = client
        .peer()
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_tools_search_describe_execute_and_approvals() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _executor = node.start(node.config()).await;
    enrol(&node, "agent", &key(1), &["agent"], None).await;
    enrol(&node, "ops", &key(2), &["ops"], None).await;
    let agent = mcp(&node, "agent", 1, false).await;
    let ops = mcp(&node, "ops", 2, false).await;

    let info = agent.peer().peer_info().unwrap();
    assert_eq!(info.server_info.as_ref().unwrap().name, "hero_executor");
    assert_eq!(
        tool_names(&agent).await,
        ["describe", "execute", "interface", "run_script", "run_status", "search"]
    );
    assert_eq!(
        tool_names(&ops).await,
        [
            "approve",
            "describe",
            "execute",
            "interface",
            "reject",
            "run_script",
            "run_status",
            "search"
        ],
        "approvers see approve/reject"
    );
    let tools = agent.peer().list_all_tools().await.unwrap();
    let execute = tools.iter().find(|t| t.name == "execute").unwrap();
    assert!(
        execute
            .description
            .as_deref()
            .unwrap()
            .contains("Services you can reach: echo"),
        "{execute:?}"
    );

    // search -> describe -> execute
    let found = tool(&agent, "search", json!({"query": "counter"})).await;
    assert_eq!(structured(&found)["capabilities"][0]["name"], "echo.counter.add");
    let described = tool(&agent, "describe", json!({"capability": "echo.counter.add"})).await;
    assert_eq!(structured(&described)["params_schema"]["required"], json!(["amount"]));
    let executed = tool(
        &agent,
        "execute",
        json!({"capability": "echo.counter.add", "params": {"amount": 4}}),
    )
    .await;
    assert_eq!(executed.is_error, Some(false));
    assert_eq!(structured(&executed), json!({"value": 4}));
    let text = serde_json::to_value(&executed.content).unwrap()[0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"value": 4}),
        "a text copy too"
    );

    // A target error and a denial are tool errors, not protocol errors.
    let failed = tool(
        &agent,
        "execute",
        json!({"capability": "echo.fail", "params": {"code": 77, "message": "boom"}}),
    )
    .await;
    assert_eq!(failed.is_error, Some(true));
    assert_eq!(structured(&failed)["error"]["code"], 77);
    let denied = tool(
        &ops,
        "execute",
        json!({"capability": "echo.echo", "params": {"message": "x"}}),
    )
    .await;
    assert_eq!(denied.is_error, Some(true));
    assert_eq!(structured(&denied)["error"]["code"], -32002);

    // A held call is a normal result; another principal approves it; run_status waits for it.
    let held = tool(&agent, "execute", json!({"capability": "echo.counter.reset"})).await;
    assert_eq!(held.is_error, Some(false));
    let held = structured(&held);
    assert_eq!(held["status"], "awaiting_approval");
    let run_id = held["run_id"].as_str().unwrap().to_owned();
    assert!(held["expires_at"].is_i64());
    let own = tool(&agent, "approve", json!({"run_id": run_id})).await;
    assert_eq!(
        own.is_error,
        Some(true),
        "the agent has no approve tool and no approver claim"
    );
    let approved = tool(&ops, "approve", json!({"run_id": run_id, "note": "via MCP"})).await;
    assert_eq!(approved.is_error, Some(false), "{approved:?}");
    let done = tool(&agent, "run_status", json!({"run_id": run_id, "wait_ms": 20000})).await;
    assert_eq!(structured(&done)["status"], "succeeded");
    assert_eq!(structured(&done)["result"], json!({"value": 4}));

    // Every MCP call is a run with surface mcp.
    let runs = rpc(&node.rpc_sock(), "runs.list", json!({})).await;
    let runs = runs["result"]["runs"].as_array().unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["echo.counter.reset", "echo.echo", "echo.fail", "echo.counter.add"],
        "newest first"
    );
    assert!(runs.iter().all(|r| r["surface"] == "mcp"), "{runs:#?}");
}

/// A stub service with `n` read-only methods, for pagination.
fn many_methods(n: usize) -> Router {
    Router::new().route(
        "/rpc",
        post(move |body: String| async move {
            let request: Value = serde_json::from_str(&body).unwrap();
            let result = match request["method"].as_str() {
                Some("rpc.discover") => {
                    let methods: Vec<Value> = (0..n)
                        .map(|i| {
                            json!({"name": format!("m{i:03}"), "summary": format!("method {i}"), "params": [],
                                        "result": {"name": "r", "schema": {"type": "object"}},
                                        "x-hero-intent": {"side_effect_class": "read", "idempotency": "safe"}})
                        })
                        .collect();
                    json!({"openrpc": "1.3.2", "info": {"title": "many", "version": "1"}, "methods": methods})
                }
                _ => json!({"called": request["method"]}),
            };
            json!({"jsonrpc": "2.0", "id": request["id"], "result": result}).to_string()
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tools_are_paginated_annotated_and_differ_per_principal() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _many = node.serve_stub("many", many_methods(60)).await;
    let policy = node.tmp.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[grant]]\nclaim = \"agent\"\ncapabilities = [\"echo.*\", \"many.*\"]\n\n[[grant]]\nclaim = \"reader\"\ncapabilities = [\"echo.echo\"]\n",
    )
    .unwrap();
    let mut config = node.config();
    config.policy = Some(policy);
    let _executor = node.start(config).await;
    enrol(&node, "agent", &key(1), &["agent"], None).await;
    enrol(&node, "reader", &key(3), &["reader"], None).await;

    let agent = mcp(&node, "agent", 1, true).await;
    let first_page = agent.peer().list_tools(None).await.unwrap();
    assert_eq!(first_page.tools.len(), 51, "50 capabilities and run_status");
    assert!(first_page.next_cursor.is_some(), "67 capabilities come in pages");
    let all = agent.peer().list_all_tools().await.unwrap();
    assert_eq!(all.len(), 68, "67 capabilities and run_status");
    let add = all.iter().find(|t| t.name == "echo.counter.add").unwrap();
    assert_eq!(add.input_schema["required"], json!(["amount"]));
    let output = add
        .output_schema
        .as_ref()
        .expect("the result's $ref is resolved into an outputSchema");
    assert_eq!(
        (output["type"].as_str(), &output["required"]),
        (Some("object"), &json!(["value"]))
    );
    let annotations = add.annotations.as_ref().unwrap();
    assert_eq!(
        (annotations.read_only_hint, annotations.idempotent_hint),
        (Some(false), Some(false))
    );
    let echo = all
        .iter()
        .find(|t| t.name == "echo.echo")
        .unwrap()
        .annotations
        .clone()
        .unwrap();
    assert_eq!(
        (echo.read_only_hint, echo.idempotent_hint, echo.destructive_hint),
        (Some(true), Some(true), Some(false))
    );

    let reader = mcp(&node, "reader", 3, true).await;
    assert_eq!(
        tool_names(&reader).await,
        ["echo.echo", "run_status"],
        "tool lists follow each principal's grants"
    );

    let called = tool(&agent, "many.m042", json!({})).await;
    assert_eq!(structured(&called), json!({"called": "m042"}));
    let echoed = tool(&reader, "echo.echo", json!({"message": "direct"})).await;
    assert_eq!(structured(&echoed), json!({"message": "direct"}));
    let refused = tool(&reader, "many.m001", json!({})).await;
    assert_eq!(refused.is_error, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_belongs_to_the_principal_that_opened_it() {
    let node = Node::new();
    let _executor = node.start(node.config()).await;
    enrol(&node, "agent", &key(1), &["agent"], None).await;
    let agent = mcp(&node, "agent", 1, false).await;
    assert_eq!(tool_names(&agent).await.len(), 6);
    // Unsigned and not the owner's uid over TCP would be refused; here: a bad signature on /mcp.
    let answer = http(
        &node.rpc_sock(),
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("signature", "sig1=:AAAA:"),
            ("signature-input", "sig1=(\"@method\");created=1"),
        ],
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#,
    )
    .await;
    assert_eq!(answer.status, 401, "the identity layer runs before MCP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stdio_bridge_signs_and_forwards() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _executor = node.start(node.config()).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hero_executor"))
        .args(["keygen", "--out"])
        .arg(node.tmp.path().join("bridge.pem"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = std::fs::read_to_string(node.tmp.path().join("bridge.pem.pub")).unwrap();
    let added = rpc(
        &node.rpc_sock(),
        "keys.add",
        json!({"keyid": "bridge", "public_key": public, "claims": ["agent"]}),
    )
    .await;
    assert!(added.get("result").is_some());

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hero_executor"))
        .arg("--socket-dir")
        .arg(node.socket_dir())
        .args(["mcp", "--keyid", "bridge", "--key"])
        .arg(node.tmp.path().join("bridge.pem"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stdin = child.stdin.take().unwrap();
    let client = ().serve((stdout, stdin)).await.unwrap();
    assert_eq!(
        tool_names(&client).await,
        ["describe", "execute", "interface", "run_script", "run_status", "search"]
    );
    let mut params = CallToolRequestParams::new("execute");
    params.arguments = json!({"capability": "echo.whoami"}).as_object().cloned();
    let result = client.peer().call_tool(params).await.unwrap();
    assert_eq!(
        result.structured_content.as_ref().unwrap()["claims"],
        "agent",
        "signed as the bridge's key"
    );
    let runs = rpc(&node.rpc_sock(), "runs.list", json!({"principal": "bridge"})).await;
    assert_eq!(runs["result"]["runs"][0]["surface"], "mcp");
    client.cancel().await.unwrap();
}

/// The JSON-RPC messages in an MCP HTTP answer (JSON, or `data:` lines of an SSE stream).
fn messages(answer: &Answer) -> Vec<Value> {
    let body = String::from_utf8_lossy(&answer.body);
    if answer.content_type().starts_with("application/json") {
        return vec![serde_json::from_str(&body).unwrap()];
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_versions_2025_06_18_and_2025_11_25_over_plain_http() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _executor = node.start(node.config()).await;
    for version in ["2025-06-18", "2025-11-25"] {
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "curl", "version": "1"}}});
        let headers = [
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ];
        let answer = http(&node.rpc_sock(), "POST", "/mcp", &headers, init.to_string()).await;
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
        let session = answer.headers["mcp-session-id"].to_str().unwrap().to_owned();
        assert_eq!(messages(&answer)[0]["result"]["protocolVersion"], version);
        assert!(
            !answer.headers.contains_key("signature"),
            "an unsigned request that does not ask gets an unsigned answer"
        );

        let with_session = [
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-session-id", session.as_str()),
            ("mcp-protocol-version", version),
        ];
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let answer = http(&node.rpc_sock(), "POST", "/mcp", &with_session, initialized.to_string()).await;
        assert_eq!(answer.status, 202);
        let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                          "params": {"name": "execute", "arguments": {"capability": "echo.echo", "params": {"message": version}}}});
        let answer = http(&node.rpc_sock(), "POST", "/mcp", &with_session, call.to_string()).await;
        let result = &messages(&answer)[0]["result"];
        assert_eq!(result["structuredContent"], json!({"message": version}), "{result}");
        assert_eq!(result["isError"], false);

        // Asked for (RFC 9421 Accept-Signature), the answer is signed like every other surface's.
        let asking = [
            with_session.as_slice(),
            &[("accept-signature", "hero_executor=(\"@status\")")],
        ]
        .concat();
        let answer = http(&node.rpc_sock(), "POST", "/mcp", &asking, call.to_string()).await;
        assert_eq!(answer.status, 200);
        let input = answer.headers["signature-input"].to_str().unwrap();
        assert!(input.starts_with("hero_executor=(\"@status\""), "{input}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_on_the_tcp_listener_needs_a_signature_and_any_host() {
    let node = Node::new();
    let mut config = node.config();
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    let executor = node.start(config).await;
    enrol(&node, "remote", &key(5), &["agent"], None).await;
    let addr = executor.tcp.unwrap();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "remote", "version": "1"}}})
    .to_string();
    let send = |signed: bool| {
        let init = init.clone();
        async move {
            let uri: http::Uri = "/mcp".parse().unwrap();
            let mut headers = http::HeaderMap::new();
            headers.insert("host", "executor.node.example:9944".parse().unwrap());
            headers.insert("content-type", "application/json".parse().unwrap());
            headers.insert("accept", "application/json, text/event-stream".parse().unwrap());
            if signed {
                Signer::new("remote", key(5))
                    .sign(
                        &http::Method::POST,
                        &uri,
                        &mut headers,
                        init.as_bytes(),
                        hero_executor::now_unix(),
                    )
                    .unwrap();
            }
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut request = http::Request::post(uri);
            *request.headers_mut().unwrap() = headers;
            let request = request
                .body(http_body_util::Full::new(bytes::Bytes::from(init)))
                .unwrap();
            sender.send_request(request).await.unwrap().status()
        }
    };
    assert_eq!(send(false).await, 401);
    assert_eq!(send(true).await, 200);
}
