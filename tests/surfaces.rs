//! What each surface lets through (DESIGN sections 3, 5 and 9): the executor never
//! forwards to itself or through a second name for a service (symlinks, hard links,
//! reserved namespaces), MCP answers like the other surfaces (invisible equals absent,
//! approver tools in direct mode, JSON-RPC parse errors, sessions bound to their
//! principal, idempotency keys), and capability names are bounded and printable.
//!
//! Each test names one hole and asserts the contract once it is closed.

mod common;

use axum::Router;
use axum::routing::post;
use common::*;
use hero_executor::client::{Client, ClientError, Signer};
use hero_executor::mcp_bridge;
use http::{HeaderMap, HeaderValue, Method};
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService};
use serde_json::{Value, json};

type McpClient = RunningService<RoleClient, ()>;

/// An MCP client over rpc.sock: signed as `keyid` (seed of [`key`]), or the owner if `None`.
async fn mcp(node: &Node, signer: Option<(&str, u8)>, direct: bool) -> McpClient {
    let signer = signer.map(|(keyid, seed)| Signer::new(keyid, key(seed)));
    mcp_bridge::connect(&node.rpc_sock(), signer, direct, ()).await.unwrap()
}

async fn tool(client: &McpClient, name: &str, args: Value) -> CallToolResult {
    let mut params = CallToolRequestParams::new(name.to_owned());
    params.arguments = args.as_object().cloned();
    client.peer().call_tool(params).await.unwrap()
}

async fn tool_names(client: &McpClient) -> Vec<String> {
    client
        .peer()
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect()
}

/// Service names in the owner's `catalog.list`.
async fn listed_services(node: &Node) -> Vec<String> {
    let response = rpc(&node.rpc_sock(), "catalog.list", json!({})).await;
    let mut services: Vec<String> = response["result"]["capabilities"]
        .as_array()
        .unwrap_or_else(|| panic!("catalog.list: {response}"))
        .iter()
        .map(|c| c["service"].as_str().unwrap().to_owned())
        .collect();
    services.dedup();
    services
}

async fn refresh(node: &Node) -> Value {
    let refreshed = rpc(&node.rpc_sock(), "catalog.refresh", json!({})).await;
    assert!(refreshed.get("result").is_some(), "catalog.refresh: {refreshed}");
    refreshed
}

/// A policy file in the node's temp dir.
fn policy_file(node: &Node, text: &str) -> std::path::PathBuf {
    let path = node.tmp.path().join("policy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

// ---- 4. Never forward to ourselves or through an alias -------------------------------

/// What a call answered, in short, for the list of problems a test reports.
fn answered(result: &Result<Value, ClientError>) -> String {
    match result {
        Ok(value) => {
            let principals: Vec<&Value> = value["runs"]
                .as_array()
                .map(|runs| runs.iter().map(|r| &r["principal"]).collect())
                .unwrap_or_default();
            match principals.is_empty() {
                true => format!("the result {value}"),
                false => format!("a run list with runs of principals {principals:?}"),
            }
        }
        Err(error) => error.to_string(),
    }
}

/// Fails with every problem found, so one run shows every symptom of a hole.
#[track_caller]
fn assert_none(problems: &[String]) {
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_to_our_own_socket_dir_is_not_a_service() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _executor = node.start(node.config()).await;
    enrol(&node, "agent", &key(1), &["agent"], None).await;
    let agent = signed_client(&node, "agent", &key(1));
    // The owner has a run of its own, which a loop would leak.
    let owned = rpc(&node.rpc_sock(), "echo.echo", json!({"message": "owner's"})).await;
    assert!(owned.get("result").is_some(), "{owned}");
    let held = agent.rpc("echo.counter.reset", json!({}), HeaderMap::new()).await;
    let Err(ClientError::Rpc { code: -32010, data, .. }) = held else {
        panic!("echo.counter.reset should be held: {held:?}");
    };
    let run_id = data.unwrap()["run_id"].as_str().unwrap().to_owned();

    let dir = node.socket_dir();
    std::os::unix::fs::symlink(dir.join("hero_executor"), dir.join("loop")).unwrap();
    refresh(&node).await;
    let mut problems = Vec::new();
    let services = listed_services(&node).await;
    if services.contains(&"loop".to_owned()) {
        problems.push(format!("catalog.list shows the service loop: {services:?}"));
    }
    let listed = agent.rpc("loop.runs.list", json!({}), HeaderMap::new()).await;
    if listed.is_ok() {
        problems.push(format!(
            "agent's loop.runs.list answered (the executor called itself as the owner): {}",
            answered(&listed)
        ));
    }
    let approved = agent
        .rpc("loop.runs.approve", json!({ "run_id": run_id }), HeaderMap::new())
        .await;
    if approved.is_ok() {
        problems.push(format!("agent's loop.runs.approve answered: {}", answered(&approved)));
    }
    let run = rpc(&node.rpc_sock(), "runs.get", json!({ "run_id": run_id })).await;
    if run["result"]["status"] != "awaiting_approval" {
        problems.push(format!("the held run is now {}", run["result"]["status"]));
    }
    assert_none(&problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_link_to_our_own_socket_is_not_a_service() {
    let node = Node::new();
    let _executor = node.start(node.config()).await;
    enrol(&node, "agent", &key(1), &["agent"], None).await;
    let agent = signed_client(&node, "agent", &key(1));
    let dir = node.socket_dir();
    std::fs::create_dir(dir.join("loop2")).unwrap();
    std::fs::hard_link(node.rpc_sock(), dir.join("loop2/rpc.sock")).unwrap();
    refresh(&node).await;
    let mut problems = Vec::new();
    let services = listed_services(&node).await;
    if services.contains(&"loop2".to_owned()) {
        problems.push(format!("catalog.list shows the service loop2: {services:?}"));
    }
    let listed = agent.rpc("loop2.runs.list", json!({}), HeaderMap::new()).await;
    if listed.is_ok() {
        problems.push(format!(
            "agent's loop2.runs.list answered (the executor called itself as the owner): {}",
            answered(&listed)
        ));
    }
    assert_none(&problems);
}

/// A hard link to another service's socket is a second name for it: refused at the
/// connection (its listener is bound elsewhere), while the service itself stays callable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_link_to_another_services_socket_is_not_a_second_name() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let config = node.config();
    let _executor = node.start(config).await;
    enrol(&node, "agent", &key(1), &["agent"], None).await;
    let agent = signed_client(&node, "agent", &key(1));
    let dir = node.socket_dir();
    std::fs::create_dir(dir.join("twin")).unwrap();
    std::fs::hard_link(dir.join("echo/rpc.sock"), dir.join("twin/rpc.sock")).unwrap();
    refresh(&node).await;
    let services = listed_services(&node).await;
    assert!(!services.contains(&"twin".to_owned()), "twin listed: {services:?}");
    assert!(
        services.contains(&"echo".to_owned()),
        "the real service stays: {services:?}"
    );
    let through_twin = agent.rpc("twin.echo", json!({"message": "x"}), HeaderMap::new()).await;
    assert!(
        through_twin.is_err(),
        "twin.echo reached echo: {}",
        answered(&through_twin)
    );
    let owner = rpc(&node.rpc_sock(), "echo.echo", json!({"message": "x"})).await;
    assert_eq!(owner["result"]["message"], "x", "{owner}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_service_dir_does_not_escape_guards() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let policy = policy_file(
        &node,
        r#"[[grant]]
claim = "agent"
capabilities = ["*"]

[[guard]]
capabilities = ["echo.*"]
effect = "deny"
reason = "echo is off limits"
"#,
    );
    let mut config = node.config();
    config.policy = Some(policy);
    let _executor = node.start(config).await;
    enrol(&node, "agent", &key(1), &["agent"], None).await;
    let agent = signed_client(&node, "agent", &key(1));

    let dir = node.socket_dir();
    std::os::unix::fs::symlink(dir.join("echo"), dir.join("alias")).unwrap();
    refresh(&node).await;
    let mut problems = Vec::new();
    let services = listed_services(&node).await;
    if services.contains(&"alias".to_owned()) {
        problems.push(format!("catalog.list shows the service alias: {services:?}"));
    }
    let echoed = agent.rpc("alias.echo", json!({"message": "x"}), HeaderMap::new()).await;
    if echoed.is_ok() {
        problems.push(format!(
            "alias.echo reached echo past its deny guard: {}",
            answered(&echoed)
        ));
    }
    assert_none(&problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_under_a_reserved_name_is_never_called() {
    let node = Node::new();
    let _keys = node.spawn_echo("keys");
    let _executor = node.start(node.config()).await;
    enrol(&node, "agent", &key(1), &["agent"], None).await;
    refresh(&node).await;
    let mut problems = Vec::new();
    let services = listed_services(&node).await;
    if services.contains(&"keys".to_owned()) {
        problems.push(format!("catalog.list shows the service keys: {services:?}"));
    }

    let owner = mcp(&node, None, false).await;
    let agent = mcp(&node, Some(("agent", 1)), false).await;
    for (who, client) in [("owner", &owner), ("agent", &agent)] {
        for args in [
            json!({"capability": "keys.echo", "params": {"message": "x"}}),
            json!({"capability": "runs.list"}),
        ] {
            let result = tool(client, "execute", args.clone()).await;
            if result.is_error != Some(true) {
                problems.push(format!(
                    "MCP execute {args} as {who} is not a tool error: {:?}",
                    result.structured_content
                ));
            }
        }
    }
    assert_none(&problems);
}

// ---- 6. MCP --------------------------------------------------------------------------

/// A node with the example service, an agent and an approver (ops, no grants).
async fn mcp_node() -> (Node, ChildGuard, Executor) {
    let node = Node::new();
    let echo = node.spawn_echo("echo");
    let executor = node.start(node.config()).await;
    enrol(&node, "agent", &key(1), &["agent"], None).await;
    enrol(&node, "ops", &key(2), &["ops"], None).await;
    (node, echo, executor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_tool_the_caller_may_not_see_is_answered_like_a_missing_one() {
    let (node, _echo, _executor) = mcp_node().await;
    let ops = mcp(&node, Some(("ops", 2)), true).await;
    let answer = |name: &'static str| {
        let ops = &ops;
        async move {
            let result = tool(ops, name, json!({"message": "x"})).await;
            let error = result
                .structured_content
                .as_ref()
                .map(|c| c["error"].clone())
                .unwrap_or_default();
            (
                result.is_error,
                error["code"].as_i64(),
                error["message"].as_str().unwrap_or_default().replace(name, "X"),
            )
        }
    };
    let invisible = answer("echo.echo").await;
    let missing = answer("echo.nope").await;
    assert_eq!(invisible.0, Some(true), "{invisible:?}");
    assert_eq!(
        invisible, missing,
        "(isError, code, message) for a tool that exists but is invisible vs one that does not exist"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_mode_lists_run_status_and_approver_tools() {
    let (node, _echo, _executor) = mcp_node().await;
    let agent = tool_names(&mcp(&node, Some(("agent", 1)), true).await).await;
    let ops = tool_names(&mcp(&node, Some(("ops", 2)), true).await).await;
    assert!(
        agent.contains(&"run_status".to_owned()),
        "agent's direct tools: {agent:?}"
    );
    for name in ["run_status", "approve", "reject"] {
        assert!(ops.contains(&name.to_owned()), "ops's direct tools: {ops:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_on_mcp_is_a_json_rpc_parse_error() {
    let node = Node::new();
    let _executor = node.start(node.config()).await;
    let answer = http(
        &node.rpc_sock(),
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ],
        "{nope",
    )
    .await;
    let body = String::from_utf8_lossy(&answer.body).into_owned();
    let code = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["error"]["code"].as_i64());
    assert_eq!(
        (answer.status.as_u16(), code),
        (400, Some(-32700)),
        "(HTTP status, error.code); body: {body}"
    );
}

/// The JSON-RPC messages in an MCP HTTP answer (JSON, or `data:` lines of an SSE stream).
fn messages(body: &[u8]) -> Vec<Value> {
    let body = String::from_utf8_lossy(body);
    if let Ok(value) = serde_json::from_str(&body) {
        return vec![value];
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect()
}

/// A signed MCP request to `/mcp`.
async fn mcp_send(
    client: &Client,
    method: Method,
    session: Option<&str>,
    body: Option<Value>,
) -> hero_executor::client::Reply {
    let mut headers = HeaderMap::new();
    headers.insert(
        "accept",
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    headers.insert("mcp-protocol-version", HeaderValue::from_static("2025-06-18"));
    if let Some(session) = session {
        headers.insert("mcp-session-id", session.parse().unwrap());
    }
    let body = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
    client.send(method, "/mcp", headers, body).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_principal_cannot_use_or_close_a_session() {
    let (node, _echo, _executor) = mcp_node().await;
    let agent = signed_client(&node, "agent", &key(1));
    let ops = signed_client(&node, "ops", &key(2));

    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
    let reply = mcp_send(&agent, Method::POST, None, Some(init)).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let session = reply.headers["mcp-session-id"].to_str().unwrap().to_owned();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let reply = mcp_send(&agent, Method::POST, Some(&session), Some(initialized)).await;
    assert_eq!(reply.status, 202);
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});

    // ops posting into agent's session gets no tool list.
    let reply = mcp_send(&ops, Method::POST, Some(&session), Some(list.clone())).await;
    let answered = messages(&reply.body).iter().any(|m| m.get("result").is_some());
    assert!(
        !answered && (reply.status == 403 || reply.status == 404 || reply.status == 200),
        "ops used agent's session: HTTP {} {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );

    // ops cannot close it.
    let reply = mcp_send(&ops, Method::DELETE, Some(&session), None).await;
    assert!(
        reply.status == 403 || reply.status == 404,
        "DELETE of agent's session by ops must be refused (403/404), got HTTP {} {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );

    // agent still can use it.
    let reply = mcp_send(&agent, Method::POST, Some(&session), Some(list)).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let messages = messages(&reply.body);
    assert!(
        messages.iter().any(|m| m["result"]["tools"].is_array()),
        "agent's session still answers: {messages:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_execute_honours_the_idempotency_key() {
    let (node, _echo, _executor) = mcp_node().await;
    let agent = mcp(&node, Some(("agent", 1)), false).await;
    let args = json!({"capability": "echo.counter.add", "params": {"amount": 1}, "idempotency_key": "m1"});
    let first = tool(&agent, "execute", args.clone()).await;
    let second = tool(&agent, "execute", args).await;
    assert_eq!(first.is_error, Some(false), "{first:?}");
    let value = rpc(&node.rpc_sock(), "echo.counter.get", json!({})).await;
    assert_eq!(
        value["result"]["value"], 1,
        "the retry with the same idempotency_key executes once (answers: {:?} / {:?})",
        first.structured_content, second.structured_content
    );
}

// ---- 8. Names are bounded ------------------------------------------------------------

/// Names of every run, as the owner lists them.
async fn run_names(node: &Node) -> Vec<String> {
    let listed = rpc(&node.rpc_sock(), "runs.list", json!({"limit": 1000})).await;
    listed["result"]["runs"]
        .as_array()
        .unwrap_or_else(|| panic!("runs.list: {listed}"))
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_capability_names_are_refused_and_not_recorded() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _executor = node.start(node.config()).await;
    let long = format!("echo.{}", "a".repeat(300));
    let overlong = || async {
        let names = run_names(&node).await;
        names.iter().map(String::len).filter(|&n| n > 256).collect::<Vec<_>>()
    };
    let mut problems = Vec::new();

    let by_name = rpc(&node.rpc_sock(), &long, json!({})).await;
    assert!(by_name["error"].is_object(), "{by_name}");
    let recorded = overlong().await;
    if !recorded.is_empty() {
        problems.push(format!(
            "by method name: a run was recorded under a name of {recorded:?} bytes"
        ));
    }

    let via_execute = rpc(&node.rpc_sock(), "execute", json!({"capability": long, "params": {}})).await;
    if via_execute["error"]["code"] != -32602 {
        problems.push(format!(
            "via execute: error code {} instead of -32602",
            via_execute["error"]["code"]
        ));
    }
    let now = overlong().await;
    if now.len() > recorded.len() {
        problems.push(format!("via execute: a run was recorded under a name of {now:?} bytes"));
    }
    assert_none(&problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprintable_capability_names_are_refused_and_not_recorded() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _executor = node.start(node.config()).await;
    let mut problems = Vec::new();
    for name in ["echo.e\u{202e}cho", "echo.a\u{7}b"] {
        let answer = rpc(&node.rpc_sock(), name, json!({})).await;
        assert!(answer["error"].is_object(), "{name:?}: {answer}");
        if run_names(&node).await.iter().any(|n| n == name) {
            problems.push(format!("a run was recorded under {name:?}"));
        }
    }
    assert_none(&problems);
}

/// A stub service whose spec has one good method and two with unacceptable names.
fn odd_service() -> Router {
    Router::new().route(
        "/rpc",
        post(|body: String| async move {
            let request: Value = serde_json::from_str(&body).unwrap();
            let method =
                |name: String| json!({"name": name, "params": [], "x-hero-intent": {"side_effect_class": "read"}});
            let spec = json!({"openrpc": "1.3.2", "info": {"title": "odd", "version": "1"}, "methods": [
                method("ok".to_owned()), method("bad\u{202e}name".to_owned()), method("x".repeat(300))]});
            let result = match request["method"].as_str() {
                Some("rpc.discover") => spec,
                _ => json!({"called": request["method"]}),
            };
            json!({"jsonrpc": "2.0", "id": request["id"], "result": result}).to_string()
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_with_unacceptable_names_stay_out_of_the_catalog() {
    let node = Node::new();
    let _odd = node.serve_stub("odd", odd_service()).await;
    let _executor = node.start(node.config()).await;
    refresh(&node).await;
    let mut names: Vec<String> = capability_names(&node.rpc_sock())
        .await
        .into_iter()
        .filter(|n| n.starts_with("odd."))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["odd.ok"],
        "only the method with a bounded, printable name is a capability"
    );
}
