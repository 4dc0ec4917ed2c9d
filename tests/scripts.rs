//! Agent scripts (DESIGN section 13) on the real daemon with the example service: many
//! calls in one script, each decided by policy and recorded as a child run; denials as
//! values, a held call ending the script; limits; the sandbox; the hero headers.

mod common;

use common::*;
use hero_executor::client::Client;
use http::HeaderMap;
use serde_json::{Value, json};

/// Agents run everything, except that echo.fail is denied; counter.reset (admin) waits for ops.
const POLICY: &str = r#"
[[grant]]
claim = "agent"
capabilities = ["*"]

[[guard]]
capabilities = ["echo.fail"]
effect = "deny"
reason = "no failing on purpose"

[[guard]]
capabilities = ["*"]
side_effect = ["admin"]
effect = "require_approval"
approvers = ["ops"]
reason = "admin actions need ops"
"#;

async fn start() -> (Setup, Executor) {
    let node = Node::new();
    let policy = node.tmp.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    setup(node, |config| config.policy = Some(policy)).await
}

async fn script(client: &Client, source: &str, extra: Value) -> Value {
    let mut params = json!({"source": source});
    for (k, v) in extra.as_object().unwrap() {
        params[k] = v.clone();
    }
    client.rpc("script.run", params, HeaderMap::new()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_combines_calls_handles_a_denial_and_stops_at_a_held_call() {
    let (s, _executor) = start().await;
    let sock = s.node.rpc_sock();

    // Several calls, both forms, combined; args in, print out.
    let source = r#"
        let a = echo::echo(#{message: args.greeting});
        let b = invoke("echo.counter.add", #{amount: 2});
        let c = echo::counter_add(#{amount: 3});
        print(`added ${b.result.value} then ${c.result.value}`);
        #{ greeting: a.result.message, total: c.result.value, runs: [a.run_id, b.run_id, c.run_id] }
    "#;
    let result = script(&s.agent, source, json!({"args": {"greeting": "hi"}})).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["value"]["greeting"], "hi");
    assert_eq!(result["value"]["total"], 5);
    assert_eq!(result["output"], json!(["added 2 then 5"]));
    assert_eq!(result["totals"]["calls"], 3);
    assert!(result["totals"]["operations"].as_u64().is_some());
    let script_run = result["run_id"].as_str().unwrap().to_owned();
    // Each call is a child run of the script's run, visible in runs.list.
    let runs = rpc(&sock, "runs.list", json!({"limit": 50})).await["result"]["runs"].clone();
    let children: Vec<&Value> = runs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["parent_id"] == script_run.as_str())
        .collect();
    assert_eq!(children.len(), 3, "{runs}");
    assert!(
        children
            .iter()
            .all(|r| r["principal"] == "agent" && r["status"] == "succeeded")
    );
    let parent = rpc(&sock, "runs.get", json!({"run_id": script_run})).await["result"].clone();
    assert_eq!(parent["name"], "script.run");
    assert_eq!(parent["status"], "succeeded");

    // A denied call is a value the script inspects; a held call ends the script.
    let source = r#"
        // Denied capabilities are not offered as functions, and by name they are refused.
        let denied = invoke("echo.fail", #{code: 1, message: "x"});
        if !denied.ok { print(`denied: ${denied.error.code}`); }
        let held = echo::counter_reset();
        print("not reached");
        42
    "#;
    let result = script(&s.agent, source, json!({"idempotency_key": "reset-1"})).await;
    assert_eq!(result["status"], "awaiting_approval", "{result}");
    assert_eq!(result["output"], json!(["denied: -32002"]));
    let held = result["held_run_id"].as_str().unwrap().to_owned();
    let calls = result["calls"].as_array().unwrap();
    assert_eq!(calls[0]["status"], "denied");
    assert_eq!(calls[1]["status"], "awaiting_approval");
    assert_eq!(calls[1]["run_id"], held.as_str());
    // Approved, the same script with the same key goes on: calls already made answer
    // from their runs, none runs twice.
    s.ops
        .rpc("runs.approve", json!({"run_id": held}), HeaderMap::new())
        .await
        .unwrap();
    s.ops
        .rpc("runs.wait", json!({"run_id": held}), HeaderMap::new())
        .await
        .unwrap();
    let again = script(&s.agent, source, json!({"idempotency_key": "reset-1"})).await;
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(again["value"], 42);
    assert_eq!(again["output"], json!(["denied: -32002", "not reached"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_stop_scripts_and_the_daemon_keeps_serving() {
    let (s, _executor) = start().await;
    let sock = s.node.rpc_sock();
    let endless = script(&s.agent, "let x = 0; loop { x += 1; }", json!({})).await;
    assert_eq!(endless["status"], "failed", "{endless}");
    assert_eq!(endless["error"]["limit"], true, "{endless}");
    assert!(
        endless["error"]["message"].as_str().unwrap().contains("operation"),
        "{endless}"
    );
    // Wall time: a script that waits on slow calls is stopped between them.
    let slow = script(
        &s.agent,
        "for i in 0..20 { echo::sleep(#{ms: 100}); } 1",
        json!({"timeout_ms": 350}),
    )
    .await;
    assert_eq!(slow["status"], "failed", "{slow}");
    assert!(
        slow["error"]["message"].as_str().unwrap().contains("wall time"),
        "{slow}"
    );
    assert!(slow["totals"]["calls"].as_u64().unwrap() < 10, "{slow}");
    // Sizes, depth and the number of calls.
    let big = script(&s.agent, r#"let s = "x"; loop { s += s; }"#, json!({})).await;
    assert_eq!(big["status"], "failed", "{big}");
    let deep = script(&s.agent, "fn f(n) { f(n + 1) } f(0)", json!({})).await;
    assert_eq!(deep["status"], "failed", "{deep}");
    let many = script(&s.agent, "for i in 0..1000 { echo::counter_get(); } 1", json!({})).await;
    assert_eq!(many["status"], "failed", "{many}");
    assert_eq!(many["totals"]["calls"], 100, "the call limit: {many}");
    assert_eq!(many["error"]["limit"], true, "{many}");
    // A script cannot pass its own error off as a limit by its text.
    let faked = script(
        &s.agent,
        r#"throw "too many capability calls (at most 100)""#,
        json!({}),
    )
    .await;
    assert_eq!(faked["status"], "failed", "{faked}");
    assert!(faked["error"]["limit"].is_null(), "{faked}");
    // Variables in a scope are bounded (each value is, by the size limits).
    let hoard: String = (0..300).map(|i| format!("let v{i} = {i}; ")).collect();
    let hoarded = script(&s.agent, &format!("{hoard} 1"), json!({})).await;
    assert_eq!(hoarded["status"], "failed", "{hoarded}");
    assert_eq!(hoarded["error"]["limit"], true, "{hoarded}");
    // The source is kept whole, but args past the run store's cap are not: only the
    // digest of the whole input is (the largest source and 400 KB of args).
    let big_args = script(&s.agent, "args.len()", json!({"args": "a".repeat(400_000)})).await;
    assert_eq!(big_args["value"], 400_000, "{}", big_args["error"]);
    let stored = rpc(&sock, "runs.get", json!({"run_id": big_args["run_id"]})).await["result"].clone();
    assert_eq!(stored["input_truncated"], true, "{}", stored["input_sha256"]);
    assert!(stored["params"].is_null(), "the args are not stored");
    // Still serving.
    let pong = rpc(&sock, "echo.echo", json!({"message": "still here"})).await;
    assert_eq!(pong["result"]["message"], "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_has_no_files_network_environment_or_modules() {
    let (s, _executor) = start().await;
    for (escape, why) in [
        (r#"import "std/fs" as fs; fs::read("/etc/passwd")"#, "module"),
        (r#"eval("40 + 2")"#, "eval"),
        (r#"open_file("/etc/passwd")"#, "open_file"),
        (r#"read_file("/etc/passwd")"#, "read_file"),
        (r#"env("HOME")"#, "env"),
        (r#"connect("127.0.0.1:22")"#, "connect"),
        (r#"http_get("http://127.0.0.1/")"#, "http_get"),
        (r#"system("id")"#, "system"),
        (
            r#"invoke("keys.add", #{keyid: "x", public_key: "y", claims: ["*"]})"#,
            "own methods",
        ),
    ] {
        let result = script(&s.agent, escape, json!({})).await;
        let refused =
            result["status"] == "failed" || (result["status"] == "succeeded" && result["value"]["ok"] == false);
        assert!(refused, "{why}: {result}");
        assert!(!result.to_string().contains("root:x:0:0"), "{why}: {result}");
    } // The executor's own methods are not capabilities, also for a caller who may use them.
    let source = r#"invoke("keys.add", #{keyid: "x", public_key: "y", claims: ["*"]})"#;
    let owner = rpc(&s.node.rpc_sock(), "script.run", json!({"source": source})).await["result"].clone();
    assert_eq!(owner["value"]["ok"], false, "{owner}");
    assert_eq!(owner["value"]["error"]["code"], -32602, "{owner}");
    assert!(
        owner["value"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("executor's own methods"),
        "{owner}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_carry_the_callers_hero_headers_whatever_the_script_says() {
    let (s, _executor) = start().await;
    let source = r#"
        let a = echo::whoami(#{"x-hero-context": "9", "x-hero-claims": "*"});
        let b = invoke("echo.whoami");
        [a, b.result]
    "#;
    let mut headers = HeaderMap::new();
    headers.insert("x-hero-context", "3".parse().unwrap());
    headers.insert("x-hero-claims", "agent".parse().unwrap());
    let result = s
        .agent
        .rpc("script.run", json!({"source": source}), headers)
        .await
        .unwrap();
    assert_eq!(result["status"], "succeeded", "{result}");
    // Params named like hero headers are params (echo.whoami ignores them), never headers.
    assert_eq!(result["value"][0]["result"]["context"], "3", "{result}");
    assert_eq!(result["value"][0]["result"]["claims"], "agent", "{result}");
    assert_eq!(result["value"][1]["context"], "3", "{result}");
    assert_eq!(result["value"][1]["claims"], "agent");
    assert_eq!(result["value"][1]["user"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interface_and_run_script_over_mcp_and_rest() {
    let (s, _executor) = start().await;
    let interface = s
        .agent
        .rpc("catalog.interface", json!({"service": "echo"}), HeaderMap::new())
        .await
        .unwrap();
    let text = interface["interface"].as_str().unwrap();
    assert!(
        text.contains("echo::echo(#{message: string}) -> map  // Return the params unchanged [read, safe]"),
        "{text}"
    );
    assert!(
        text.contains("echo::counter_add(#{amount: Amount}) -> Counter"),
        "{text}"
    );
    assert!(
        !text.contains("echo::fail"),
        "denied capabilities are not offered: {text}"
    );
    let python = s
        .agent
        .rpc("catalog.interface", json!({"language": "python"}), HeaderMap::new())
        .await
        .unwrap();
    assert!(
        python["interface"]
            .as_str()
            .unwrap()
            .contains("def echo_sleep(ms: int) ->"),
        "{python}"
    );

    let rest = http(
        &s.node.rest_sock(),
        "POST",
        "/api/v1/scripts/run",
        &[("content-type", "application/json")],
        json!({"source": "echo::echo(#{message: \"rest\"}).result.message"}).to_string(),
    )
    .await;
    assert_eq!(rest.json()["value"], "rest", "{:?}", rest.body);

    let mcp = hero_executor::mcp_bridge::connect(
        &s.node.rpc_sock(),
        Some(hero_executor::client::Signer::new("agent", key(1))),
        false,
        (),
    )
    .await
    .unwrap();
    let mut params = rmcp::model::CallToolRequestParams::new("run_script");
    params.arguments = json!({"source": "let r = echo::counter_add(#{amount: 7}); r.result.value", "args": {}})
        .as_object()
        .cloned();
    let result = mcp.peer().call_tool(params).await.unwrap();
    let value = result.structured_content.unwrap();
    assert_eq!(value["status"], "succeeded", "{value}");
    assert_eq!(value["value"], 7);
    // A malformed field is refused as JSON-RPC refuses it, not left out.
    let mut params = rmcp::model::CallToolRequestParams::new("run_script");
    params.arguments = json!({"source": "1", "timeout_ms": "soon"}).as_object().cloned();
    let refused = mcp.peer().call_tool(params).await.unwrap();
    assert_eq!(refused.is_error, Some(true), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripts_calls_count_against_the_callers_rate_limit() {
    let node = Node::new();
    let (s, _executor) = setup(node, |config| config.rate_limit = (0.5, 5.0)).await;
    let source = r#"
        let limited = 0;
        for i in 0..10 { let r = echo::counter_get(); if !r.ok && r.error.code == -32029 { limited += 1; } }
        limited
    "#;
    let result = script(&s.agent, source, json!({})).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert!(
        result["value"].as_u64().unwrap() >= 5,
        "a burst of 5, the request took one: {result}"
    );
}
