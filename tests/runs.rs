//! Policy, runs and approvals end to end (DESIGN sections 7-8): decisions on a live
//! daemon, run records for every intent, approvals by another principal, expiry,
//! restarts, idempotency, listing and pruning.

mod common;

use std::time::Duration;

use common::*;
use hero_executor::client::{Client, ClientError};
use http::HeaderMap;
use serde_json::{Value, json};

async fn call(client: &Client, method: &str, params: Value) -> Result<Value, ClientError> {
    client.rpc(method, params, HeaderMap::new()).await
}

fn rpc_error(result: Result<Value, ClientError>) -> (i64, Option<Value>) {
    match result {
        Err(ClientError::Rpc { code, data, .. }) => (code, data),
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
}

/// Holds `echo.counter.reset` (an admin method: the default policy wants ops approval).
async fn held_reset(s: &Setup) -> String {
    let (code, data) = rpc_error(call(&s.agent, "echo.counter.reset", json!({})).await);
    assert_eq!(code, -32010);
    let data = data.unwrap();
    assert!(data["expires_at"].as_i64().unwrap() > hero_executor::runs::now_ms());
    data["run_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_calls_are_recorded_and_reveal_nothing() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    // ops holds no grant: denied, recorded, with the run id in the error.
    let (code, data) = rpc_error(call(&s.ops, "echo.echo", json!({"message": "hi"})).await);
    assert_eq!(code, -32002);
    let run_id = data.unwrap()["run_id"].as_str().unwrap().to_owned();
    let run = call(&s.ops, "runs.get", json!({ "run_id": run_id })).await.unwrap();
    assert_eq!(run["status"], "denied");
    assert_eq!(run["decision"], "deny");
    assert_eq!(run["error"]["code"], -32002);
    assert!(run["rule"].as_str().unwrap().contains("no grant covers echo.echo"));
    // Whether or not the capability exists, the answer is the same.
    let exists = rpc_error(call(&s.ops, "echo.echo", json!({"message": "x"})).await);
    let invented = rpc_error(call(&s.ops, "echo.not_a_method", json!({})).await);
    let other_service = rpc_error(call(&s.ops, "secret_service.steal", json!({})).await);
    for (code, data) in [exists, invented, other_service] {
        assert_eq!(code, -32002);
        assert!(data.unwrap()["run_id"].is_string());
    }
    // A caller with a grant learns that a method does not exist.
    assert_eq!(
        rpc_error(call(&s.agent, "echo.not_a_method", json!({})).await).0,
        -32601
    );
    // hero_proc.* is denied to everyone, full trust included.
    let response = rpc(&s.node.rpc_sock(), "hero_proc.service.stop", json!({})).await;
    assert_eq!(error_code(&response), -32002);
    assert!(
        response["error"]["message"]
            .as_str()
            .unwrap()
            .contains("process control")
    );
    // The catalog only shows what the caller may run.
    let seen = |c: Value| c["capabilities"].as_array().unwrap().len();
    assert_eq!(seen(call(&s.agent, "catalog.list", json!({})).await.unwrap()), 7);
    assert_eq!(seen(call(&s.ops, "catalog.list", json!({})).await.unwrap()), 0);
    assert_eq!(
        seen(call(&s.ops, "catalog.search", json!({"query": "echo"})).await.unwrap()),
        0
    );
    assert_eq!(
        rpc_error(call(&s.ops, "catalog.describe", json!({"capability": "echo.echo"})).await).0,
        -32003
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_round_trip_by_another_principal() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    call(&s.agent, "echo.counter.add", json!({"amount": 5})).await.unwrap();
    let run_id = held_reset(&s).await;

    // The caller waits; a short wait returns the run still pending.
    let pending = call(&s.agent, "runs.wait", json!({"run_id": run_id, "timeout_ms": 50}))
        .await
        .unwrap();
    assert_eq!(pending["status"], "awaiting_approval");
    assert_eq!(pending["approvers"], json!(["ops"]));
    // Nothing ran yet.
    assert_eq!(call(&s.agent, "echo.counter.get", json!({})).await.unwrap()["value"], 5);

    // The requester cannot approve its own call (it lacks the claim, too).
    assert_eq!(
        rpc_error(call(&s.agent, "runs.approve", json!({"run_id": run_id})).await).0,
        -32002
    );

    let waiter = {
        let agent = signed_client(&s.node, "agent", &key(1));
        let run_id = run_id.clone();
        tokio::spawn(async move { call(&agent, "runs.wait", json!({"run_id": run_id, "timeout_ms": 20_000})).await })
    };
    let approved = call(
        &s.ops,
        "runs.approve",
        json!({"run_id": run_id, "note": "ok for the demo"}),
    )
    .await
    .unwrap();
    assert!(
        ["running", "succeeded"].contains(&approved["status"].as_str().unwrap()),
        "{approved}"
    );

    let done = waiter.await.unwrap().unwrap();
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"], json!({"value": 5}), "reset returns the old value");
    assert_eq!(done["approver"], "ops");
    assert_eq!(done["decision_note"], "ok for the demo");
    assert_eq!(call(&s.agent, "echo.counter.get", json!({})).await.unwrap()["value"], 0);

    // Deciding twice is a conflict.
    assert_eq!(
        rpc_error(call(&s.ops, "runs.approve", json!({"run_id": run_id})).await).0,
        -32004
    );
    assert_eq!(
        rpc_error(call(&s.ops, "runs.reject", json!({"run_id": run_id})).await).0,
        -32004
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_approval_is_refused_and_rejection_is_final() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    enrol(&s.node, "both", &key(3), &["agent", "ops"], None).await;
    let both = signed_client(&s.node, "both", &key(3));
    let (code, data) = rpc_error(call(&both, "echo.counter.reset", json!({})).await);
    assert_eq!(code, -32010);
    let own = data.unwrap()["run_id"].as_str().unwrap().to_owned();
    let (code, _) = rpc_error(call(&both, "runs.approve", json!({"run_id": own})).await);
    assert_eq!(code, -32002, "nobody approves their own run");

    let run_id = held_reset(&s).await;
    let rejected = call(&s.ops, "runs.reject", json!({"run_id": run_id, "reason": "not today"}))
        .await
        .unwrap();
    assert_eq!(rejected["status"], "rejected");
    let seen = call(&s.agent, "runs.wait", json!({"run_id": run_id})).await.unwrap();
    assert_eq!(
        (seen["status"].as_str(), seen["decision_note"].as_str()),
        (Some("rejected"), Some("not today"))
    );
    // The agent cannot see another principal's runs; the owner (admin) can.
    assert_eq!(
        rpc_error(call(&s.agent, "runs.get", json!({"run_id": own})).await).0,
        -32003
    );
    assert_eq!(
        rpc(&s.node.rpc_sock(), "runs.get", json!({"run_id": own})).await["result"]["principal"],
        "both"
    );
    // Cancelling one's own pending call.
    let run_id = held_reset(&s).await;
    let cancelled = call(&s.agent, "runs.cancel", json!({"run_id": run_id})).await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(
        rpc_error(call(&s.ops, "runs.approve", json!({"run_id": run_id})).await).0,
        -32004
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_approvals_expire() {
    let (s, _executor) = setup(Node::new(), |c| c.core.approval_ttl = Duration::from_millis(300)).await;
    let run_id = held_reset(&s).await;
    let run = call(&s.agent, "runs.wait", json!({"run_id": run_id, "timeout_ms": 10_000}))
        .await
        .unwrap();
    assert_eq!(run["status"], "expired", "{run}");
    assert_eq!(
        rpc_error(call(&s.ops, "runs.approve", json!({"run_id": run_id})).await).0,
        -32004
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_survive_a_restart() {
    let node = Node::new();
    let (s, executor) = setup(node, |_| {}).await;
    call(&s.agent, "echo.counter.add", json!({"amount": 9})).await.unwrap();
    let run_id = held_reset(&s).await;
    executor.stop().await;

    let _executor = s.node.start(s.node.config()).await;
    let pending = call(&s.agent, "runs.get", json!({"run_id": run_id})).await.unwrap();
    assert_eq!(pending["status"], "awaiting_approval");
    call(&s.ops, "runs.approve", json!({"run_id": run_id})).await.unwrap();
    let done = call(&s.agent, "runs.wait", json!({"run_id": run_id, "timeout_ms": 20_000}))
        .await
        .unwrap();
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["value"], 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_execute_once() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    let add = |key: &str, amount: i64| json!({"capability": "echo.counter.add", "params": {"amount": amount}, "idempotency_key": key});
    let first = call(&s.agent, "execute", add("k-1", 10)).await.unwrap();
    let retry = call(&s.agent, "execute", add("k-1", 10)).await.unwrap();
    assert_eq!(first, retry);
    assert_eq!(
        call(&s.agent, "echo.counter.get", json!({})).await.unwrap()["value"],
        10,
        "executed once"
    );
    let (code, data) = rpc_error(call(&s.agent, "execute", add("k-1", 11)).await);
    assert_eq!(code, -32004, "same key, different input");
    assert!(data.unwrap()["run_id"].is_string());
    // Keys belong to principals: another principal's identical key is independent.
    enrol(&s.node, "agent2", &key(4), &["agent"], None).await;
    let agent2 = signed_client(&s.node, "agent2", &key(4));
    call(&agent2, "execute", add("k-1", 1)).await.unwrap();
    assert_eq!(
        call(&s.agent, "echo.counter.get", json!({})).await.unwrap()["value"],
        11
    );

    // REST: the Idempotency-Key header.
    let rest_sock = s.node.rest_sock();
    let rest = |key: &'static str| {
        let sock = rest_sock.clone();
        async move {
            http(
                &sock,
                "POST",
                "/api/v1/execute/echo.counter.add",
                &[("idempotency-key", key)],
                r#"{"amount": 100}"#,
            )
            .await
        }
    };
    let a = rest("r-1").await;
    let b = rest("r-1").await;
    assert_eq!((a.status, a.json()), (b.status, b.json()));
    assert_eq!(
        call(&s.agent, "echo.counter.get", json!({})).await.unwrap()["value"],
        111
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_filters_and_cursor_paging() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    for i in 0..5 {
        call(&s.agent, "echo.echo", json!({"message": format!("m{i}")}))
            .await
            .unwrap();
    }
    let _ = call(&s.agent, "echo.fail", json!({})).await;
    let _ = call(&s.ops, "echo.echo", json!({"message": "denied"})).await;
    let _ = call(&s.agent, "echo.echo", json!({"message": 7})).await; // invalid params: failed

    let sock = s.node.rpc_sock();
    let list = |params: Value| {
        let sock = sock.clone();
        async move { rpc(&sock, "runs.list", params).await }
    };
    let names = |page: &Value| -> Vec<String> {
        page["result"]["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = list(json!({"limit": 100})).await;
    assert_eq!(names(&all).len(), 8);
    assert_eq!(names(&all)[0], "echo.echo", "newest first");
    assert_eq!(names(&list(json!({"capability": "echo.fail"})).await), ["echo.fail"]);
    let denied = list(json!({"status": "denied"})).await;
    assert_eq!(denied["result"]["runs"][0]["principal"], "ops");
    assert_eq!(names(&list(json!({"status": "failed"})).await).len(), 2);
    assert_eq!(names(&list(json!({"principal": "ops"})).await).len(), 1);
    let future = hero_executor::runs::now_ms() + 60_000;
    assert!(names(&list(json!({"since": future})).await).is_empty());
    assert_eq!(error_code(&list(json!({"status": "bogus"})).await), -32602);

    // Paging: every run exactly once, newest first.
    let mut seen = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let mut params = json!({"limit": 3});
        if !cursor.is_null() {
            params["cursor"] = cursor.clone();
        }
        let page = list(params).await;
        seen.extend(
            page["result"]["runs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned()),
        );
        cursor = page["result"]["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    let all_ids: Vec<String> = all["result"]["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, all_ids);

    // A principal lists only its own runs.
    let own = call(&s.ops, "runs.list", json!({})).await.unwrap();
    assert_eq!(own["runs"].as_array().unwrap().len(), 1);
    assert_eq!(
        rpc_error(call(&s.ops, "runs.list", json!({"principal": "agent"})).await).0,
        -32002
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_keeps_pending_runs() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    call(&s.agent, "echo.echo", json!({"message": "old"})).await.unwrap();
    let pending = held_reset(&s).await;
    assert_eq!(
        rpc_error(call(&s.agent, "runs.prune", json!({"older_than_s": 0})).await).0,
        -32002,
        "admin only"
    );
    let pruned = rpc(&s.node.rpc_sock(), "runs.prune", json!({"older_than_s": 0})).await;
    assert_eq!(pruned["result"]["deleted"], 1, "{pruned}");
    let left = rpc(&s.node.rpc_sock(), "runs.list", json!({})).await;
    let ids: Vec<&str> = left["result"]["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [pending.as_str()]);
    assert_eq!(
        error_code(&rpc(&s.node.rpc_sock(), "runs.prune", json!({"status": "running"})).await),
        -32602
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_of_a_concurrent_burst_is_recorded() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    let sock = s.node.rpc_sock();
    let calls = (0..200).map(|i| {
        let sock = sock.clone();
        async move {
            let params = match i % 4 {
                0 => json!({"message": format!("m{i}")}),
                1 => json!({"message": i}), // invalid params
                _ => json!({"message": "x"}),
            };
            let method = if i % 4 == 3 { "echo.whoami" } else { "echo.echo" };
            rpc(&sock, method, params).await
        }
    });
    let answers = futures::future::join_all(calls).await;
    assert_eq!(answers.len(), 200);
    let counts = rpc(&sock, "runs.list", json!({"limit": 1000})).await;
    let runs = counts["result"]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 200, "one run per request");
    let failed = runs.iter().filter(|r| r["status"] == "failed").count();
    assert_eq!((failed, runs.len() - failed), (50, 150));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_holds_with_202_and_location() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    let rest = Client::new(s.node.rest_sock()).with_signer(hero_executor::client::Signer::new("agent", key(1)));
    let reply = rest
        .send(
            http::Method::POST,
            "/api/v1/execute/echo.counter.reset",
            HeaderMap::new(),
            b"{}".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 202);
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    let location = reply.headers["location"].to_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/v1/runs/{}", body["run_id"].as_str().unwrap()));
    let ops = Client::new(s.node.rest_sock()).with_signer(hero_executor::client::Signer::new("ops", key(2)));
    let approved = ops
        .send(
            http::Method::POST,
            &format!("{location}/approve"),
            HeaderMap::new(),
            br#"{"note":"via REST"}"#.to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(approved.status, 200, "{}", String::from_utf8_lossy(&approved.body));
    let done = rest
        .send(
            http::Method::GET,
            &format!("{location}/wait?timeout_ms=20000"),
            HeaderMap::new(),
            Vec::new(),
        )
        .await
        .unwrap();
    let done: Value = serde_json::from_slice(&done.body).unwrap();
    assert_eq!(done["status"], "succeeded");
    let denied = ops
        .send(
            http::Method::POST,
            "/api/v1/execute/echo.echo",
            HeaderMap::new(),
            br#"{"message":"x"}"#.to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(denied.status, 403);
    assert!(serde_json::from_slice::<Value>(&denied.body).unwrap()["run_id"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reload_keeps_the_old_policy_when_the_new_one_is_invalid() {
    let node = Node::new();
    let policy = node.tmp.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[grant]]\nclaim = \"agent\"\ncapabilities = [\"echo.echo\"]\n",
    )
    .unwrap();
    let path = policy.clone();
    let (s, _executor) = setup(node, move |c| c.policy = Some(path)).await;
    call(&s.agent, "echo.echo", json!({"message": "a"})).await.unwrap();
    assert_eq!(rpc_error(call(&s.agent, "echo.whoami", json!({})).await).0, -32002);
    let listed = || async {
        let listed = call(&s.agent, "catalog.list", json!({})).await.unwrap();
        let names = listed["capabilities"].as_array().unwrap().iter();
        names
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(listed().await, ["echo.echo"]);

    std::fs::write(
        &policy,
        "[[grant]]\nclaim = \"agent\"\n\ncapabilities = [\"echo.who*\"]\n",
    )
    .unwrap();
    let refused = rpc(&s.node.rpc_sock(), "policy.reload", json!({})).await;
    assert_eq!(error_code(&refused), -32602);
    let errors = refused["error"]["data"]["errors"].as_array().unwrap();
    assert!(
        errors[0]["message"].as_str().unwrap().contains("policy.toml:4:"),
        "{refused}"
    );
    call(&s.agent, "echo.echo", json!({"message": "old policy still runs"}))
        .await
        .unwrap();

    std::fs::write(&policy, "[[grant]]\nclaim = \"agent\"\ncapabilities = [\"echo.*\"]\n").unwrap();
    let reloaded = rpc(&s.node.rpc_sock(), "policy.reload", json!({})).await;
    assert_eq!(reloaded["result"]["rules"], 1, "{reloaded}");
    call(&s.agent, "echo.whoami", json!({})).await.unwrap();
    // What the catalog shows follows the new policy (visibility is cached per policy).
    let now_listed = listed().await;
    assert!(now_listed.contains(&"echo.whoami".to_owned()), "{now_listed:?}");

    // explain says why, with the rule's line; check finds patterns that match nothing.
    let explained = rpc(
        &s.node.rpc_sock(),
        "policy.explain",
        json!({"capability": "echo.sleep", "keyid": "ops"}),
    )
    .await;
    let decision = &explained["result"]["decision"];
    assert_eq!(decision["verdict"], "deny");
    assert_eq!(
        decision["reason"],
        "no grant covers echo.sleep for principal ops with claims ops"
    );
    let explained = rpc(
        &s.node.rpc_sock(),
        "policy.explain",
        json!({"capability": "echo.sleep", "keyid": "agent"}),
    )
    .await;
    assert_eq!(explained["result"]["decision"]["matched"][0]["line"], 1);
    std::fs::write(
        &policy,
        "[[grant]]\nclaim = \"agent\"\ncapabilities = [\"echo.*\", \"ghost.*\"]\n",
    )
    .unwrap();
    rpc(&s.node.rpc_sock(), "policy.reload", json!({})).await;
    let check = rpc(&s.node.rpc_sock(), "policy.check", json!({})).await;
    assert_eq!(
        check["result"]["unmatched"],
        json!([{"kind": "grant", "index": 1, "line": 1, "pattern": "ghost.*"}])
    );
    // Policy administration is for executor.admin only.
    assert_eq!(rpc_error(call(&s.agent, "policy.get", json!({})).await).0, -32002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policy_of_the_real_daemon() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let policy = node.tmp.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[grant]]\nclaim = \"agent\"\ncapabilities = [\"echo.echo\"]\n",
    )
    .unwrap();
    let daemon = node.spawn_daemon(&["--policy", policy.to_str().unwrap()]).await;
    enrol(&node, "agent", &key(1), &["agent"], None).await;
    let agent = signed_client(&node, "agent", &key(1));
    assert_eq!(rpc_error(call(&agent, "echo.whoami", json!({})).await).0, -32002);
    std::fs::write(&policy, "[[grant]]\nclaim = \"agent\"\ncapabilities = [\"echo.*\"]\n").unwrap();
    signal(daemon.0.id(), rustix::process::Signal::HUP);
    eventually("the reloaded policy", || async {
        call(&agent, "echo.whoami", json!({})).await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_flight_when_the_daemon_is_killed_is_interrupted() {
    use axum::routing::post;
    let node = Node::new();
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<()>();
    let stub = axum::Router::new().route(
        "/rpc",
        post(move |body: String| {
            let arrived = arrived_tx.clone();
            async move {
                let request: Value = serde_json::from_str(&body).unwrap();
                if request["method"] == "rpc.discover" {
                    let spec = json!({"openrpc": "1.3.2", "info": {"title": "t", "version": "1"},
                                      "methods": [{"name": "hold", "params": [], "x-hero-intent": {"side_effect_class": "read"}}]});
                    return json!({"jsonrpc": "2.0", "id": request["id"], "result": spec}).to_string();
                }
                let _ = arrived.send(());
                std::future::pending::<String>().await
            }
        }),
    );
    let _stub = node.serve_stub("slow", stub).await;
    let mut daemon = node.spawn_daemon(&[]).await;
    let sock = node.rpc_sock();
    let caller = tokio::spawn(async move { rpc(&sock, "slow.hold", json!({})).await });
    arrived.recv().await.unwrap();
    signal(daemon.0.id(), rustix::process::Signal::KILL);
    tokio::task::spawn_blocking(move || daemon.wait()).await.unwrap();
    caller.abort();

    let _restarted = node.spawn_daemon(&[]).await;
    let runs = rpc(&node.rpc_sock(), "runs.list", json!({"capability": "slow.hold"})).await;
    let run = &runs["result"]["runs"][0];
    assert_eq!(run["status"], "interrupted", "{runs}");
    assert!(run["finished_at"].is_i64());
    let running = rpc(&node.rpc_sock(), "runs.list", json!({"status": "running"})).await;
    assert!(
        running["result"]["runs"].as_array().unwrap().is_empty(),
        "nothing stays running"
    );
}
