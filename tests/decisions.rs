//! Decisions that must be made again, or made at all (DESIGN sections 6-8): an approval
//! is a second decision (key, policy, catalog and params checked again before anything
//! is forwarded); an idempotent replay is decided like a new call, scoped by principal,
//! pinned user and capability, and recorded; guards on claims see the key's own claims;
//! approvers have an inbox and see pending runs only; identity failures answer with the
//! right status, code and request id.
//!
//! Each test names one hole and asserts the contract once it is closed.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::post;
use common::*;
use hero_executor::client::{Client, ClientError, Signer, hero_headers};
use http::{HeaderMap, Method};
use serde_json::{Value, json};

impl Setup {
    /// Calls as the owner (unsigned, same uid: full trust) and returns the whole response.
    async fn owner(&self, method: &str, params: Value) -> Value {
        rpc(&self.node.rpc_sock(), method, params).await
    }

    /// The echo counter, read by the owner.
    async fn counter(&self) -> i64 {
        let response = self.owner("echo.counter.get", json!({})).await;
        response["result"]["value"]
            .as_i64()
            .unwrap_or_else(|| panic!("echo.counter.get: {response}"))
    }

    /// A run as the owner sees it.
    async fn run(&self, run_id: &str) -> Value {
        let response = self.owner("runs.get", json!({ "run_id": run_id })).await;
        response["result"].clone()
    }
}

async fn call(client: &Client, method: &str, params: Value) -> Result<Value, ClientError> {
    client.rpc(method, params, HeaderMap::new()).await
}

fn rpc_error(what: &str, result: Result<Value, ClientError>) -> (i64, Option<Value>) {
    match result {
        Err(ClientError::Rpc { code, data, .. }) => (code, data),
        other => panic!("{what}: expected a JSON-RPC error, got {other:?}"),
    }
}

/// Holds `method` as `client` (the default policy wants ops approval for admin methods).
async fn hold(client: &Client, method: &str, params: Value) -> String {
    let (code, data) = rpc_error(&format!("{method} should be held"), call(client, method, params).await);
    assert_eq!(code, -32010, "{method} should be held for approval");
    data.unwrap()["run_id"].as_str().unwrap().to_owned()
}

/// A short account of an outcome, for failure messages.
fn outcome(result: &Result<Value, ClientError>) -> String {
    match result {
        Ok(run) if run.get("status").is_some() => format!("a run with status {}", run["status"]),
        Ok(value) => format!("the result {value}"),
        Err(error) => error.to_string(),
    }
}

/// The run id in an error's data.
fn run_id_of(data: &Option<Value>) -> Option<&str> {
    data.as_ref().and_then(|d| d["run_id"].as_str())
}

// ---- 1. An approval is a second decision --------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approving_the_run_of_a_revoked_key_is_denied() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    assert!(s.owner("echo.counter.add", json!({"amount": 5})).await["result"].is_object());
    let run_id = hold(&s.agent, "echo.counter.reset", json!({})).await;
    let revoked = s.owner("keys.revoke", json!({"keyid": "agent"})).await;
    assert!(revoked.get("result").is_some(), "keys.revoke: {revoked}");

    let approved = call(&s.ops, "runs.approve", json!({ "run_id": run_id })).await;
    let Err(ClientError::Rpc { code, data, .. }) = approved else {
        panic!(
            "approving the held run of a since-revoked key must be refused (-32002), got {}",
            outcome(&approved)
        );
    };
    assert_eq!(code, -32002, "a revoked key's run is denied at approval");
    assert_eq!(run_id_of(&data), Some(run_id.as_str()), "error.data.run_id");

    let run = s.run(&run_id).await;
    assert_eq!(run["status"], "denied", "{run}");
    assert_eq!(run["approver"], "ops", "{run}");
    let message = run["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("revoked"), "the reason names the revocation: {run}");
    assert_eq!(s.counter().await, 5, "nothing reached the target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approving_after_a_policy_reload_that_denies_is_denied() {
    let node = Node::new();
    let policy = node.tmp.path().join("policy.toml");
    std::fs::write(&policy, hero_executor::policy::DEFAULT_POLICY).unwrap();
    let path = policy.clone();
    let (s, _executor) = setup(node, move |c| c.policy = Some(path)).await;
    assert!(s.owner("echo.counter.add", json!({"amount": 5})).await["result"].is_object());
    let run_id = hold(&s.agent, "echo.counter.reset", json!({})).await;

    let mut text = std::fs::read_to_string(&policy).unwrap();
    text.push_str(
        "\n[[guard]]\ncapabilities = [\"echo.counter.reset\"]\neffect = \"deny\"\nreason = \"resets are off\"\n",
    );
    std::fs::write(&policy, text).unwrap();
    let reloaded = s.owner("policy.reload", json!({})).await;
    assert!(reloaded.get("result").is_some(), "policy.reload: {reloaded}");

    let approved = call(&s.ops, "runs.approve", json!({ "run_id": run_id })).await;
    let Err(ClientError::Rpc { code, data, .. }) = approved else {
        panic!(
            "approving a run the reloaded policy denies must be refused (-32002), got {}",
            outcome(&approved)
        );
    };
    assert_eq!(code, -32002);
    assert_eq!(run_id_of(&data), Some(run_id.as_str()), "error.data.run_id");
    let run = s.run(&run_id).await;
    assert_eq!(run["status"], "denied", "{run}");
    assert_eq!(s.counter().await, 5, "nothing reached the target");
}

/// A stub `notes` service whose spec can change under it, counting calls to `wipe`.
struct Notes {
    spec: Arc<Mutex<Value>>,
    wipes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

fn notes_spec(tag_schema: Value) -> Value {
    json!({"openrpc": "1.3.2", "info": {"title": "notes", "version": "1"}, "methods": [{
        "name": "wipe",
        "params": [{"name": "tag", "required": true, "schema": tag_schema}],
        "result": {"name": "r", "schema": {"type": "object"}},
        "x-hero-intent": {"side_effect_class": "admin"}}]})
}

async fn serve_notes(node: &Node) -> Notes {
    let spec = Arc::new(Mutex::new(notes_spec(json!({"type": "string"}))));
    let wipes = Arc::new(AtomicUsize::new(0));
    let router = {
        let (spec, wipes) = (spec.clone(), wipes.clone());
        Router::new().route(
            "/rpc",
            post(move |body: String| {
                let (spec, wipes) = (spec.clone(), wipes.clone());
                async move {
                    let request: Value = serde_json::from_str(&body).unwrap();
                    let result = match request["method"].as_str() {
                        Some("rpc.discover") => spec.lock().unwrap().clone(),
                        Some("wipe") => {
                            wipes.fetch_add(1, Ordering::SeqCst);
                            json!({"wiped": true})
                        }
                        _ => {
                            let error = json!({"code": -32601, "message": "no such method"});
                            return json!({"jsonrpc": "2.0", "id": request["id"], "error": error}).to_string();
                        }
                    };
                    json!({"jsonrpc": "2.0", "id": request["id"], "result": result}).to_string()
                }
            }),
        )
    };
    let task = node.serve_stub("notes", router).await;
    Notes { spec, wipes, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approving_params_the_current_schema_refuses_fails() {
    let node = Node::new();
    let notes = serve_notes(&node).await;
    let (s, _executor) = setup(node, |_| {}).await;
    let run_id = hold(&s.agent, "notes.wipe", json!({"tag": "abcdef"})).await;

    *notes.spec.lock().unwrap() = notes_spec(json!({"type": "string", "maxLength": 3}));
    let refreshed = s.owner("catalog.refresh", json!({})).await;
    assert_eq!(
        refreshed["result"]["changed"],
        json!(["notes"]),
        "the new spec is in the catalog: {refreshed}"
    );

    let approved = call(&s.ops, "runs.approve", json!({ "run_id": run_id })).await;
    let Err(ClientError::Rpc { code, data, .. }) = approved else {
        panic!(
            "approving params the current schema refuses must fail (-32602), got {}",
            outcome(&approved)
        );
    };
    assert_eq!(code, -32602);
    assert_eq!(run_id_of(&data), Some(run_id.as_str()), "error.data.run_id");
    let run = s.run(&run_id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(notes.wipes.load(Ordering::SeqCst), 0, "wipe never reached the stub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approving_a_capability_that_left_the_catalog_fails() {
    let node = Node::new();
    let notes = serve_notes(&node).await;
    let (s, _executor) = setup(node, |_| {}).await;
    let run_id = hold(&s.agent, "notes.wipe", json!({"tag": "abcdef"})).await;

    notes.task.abort();
    std::fs::remove_file(s.node.socket_dir().join("notes/rpc.sock")).unwrap();
    let refreshed = s.owner("catalog.refresh", json!({})).await;
    assert_eq!(
        refreshed["result"]["removed"],
        json!(["notes"]),
        "notes left the catalog: {refreshed}"
    );

    let approved = call(&s.ops, "runs.approve", json!({ "run_id": run_id })).await;
    let Err(ClientError::Rpc { code, .. }) = approved else {
        panic!(
            "approving a capability that left the catalog must be an error (-32020 or -32003), got {}",
            outcome(&approved)
        );
    };
    assert!([-32020, -32003].contains(&code), "code {code}");
    let run = s.run(&run_id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(notes.wipes.load(Ordering::SeqCst), 0, "wipe never reached the stub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approving_when_nothing_changed_runs_the_call() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    let run_id = hold(&s.agent, "echo.counter.reset", json!({})).await;
    let approved = call(&s.ops, "runs.approve", json!({ "run_id": run_id })).await.unwrap();
    assert_eq!(approved["status"], "running", "{approved}");
    let done = call(&s.agent, "runs.wait", json!({"run_id": run_id, "timeout_ms": 20_000}))
        .await
        .unwrap();
    assert_eq!(done["status"], "succeeded", "{done}");
}

// ---- 2. An idempotent replay is a decision too ---------------------------------------

fn add_with_key(key: &str) -> Value {
    json!({"capability": "echo.counter.add", "params": {"amount": 1}, "idempotency_key": key})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_decided_with_the_claims_of_the_retry() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    call(&s.agent, "execute", add_with_key("k1")).await.unwrap();
    let narrowed = hero_headers(None, Some("nothing"), None).unwrap();
    let replay = s.agent.rpc("execute", add_with_key("k1"), narrowed).await;
    let Err(ClientError::Rpc { code, .. }) = replay else {
        panic!(
            "a replay whose effective claims grant nothing must be denied (-32002), got {}",
            outcome(&replay)
        );
    };
    assert_eq!(code, -32002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_scoped_by_the_pinned_user() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    enrol(&s.node, "router", &key(3), &["agent", "executor.impersonate"], None).await;
    let router = signed_client(&s.node, "router", &key(3));
    let as_user = |user: &str| hero_headers(None, None, Some(user)).unwrap();
    let alice = router
        .rpc("execute", add_with_key("k2"), as_user("alice"))
        .await
        .unwrap();
    let a = alice["value"].as_i64().unwrap();
    let mallory = router
        .rpc("execute", add_with_key("k2"), as_user("mallory"))
        .await
        .unwrap();
    assert_eq!(
        mallory["value"].as_i64(),
        Some(a + 1),
        "mallory's call runs anew, it does not get alice's stored result {alice}"
    );
    assert_eq!(s.counter().await, a + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_scoped_by_the_capability() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    call(&s.agent, "execute", add_with_key("k3")).await.unwrap();
    let echoed = call(
        &s.agent,
        "execute",
        json!({"capability": "echo.echo", "params": {"message": "x"}, "idempotency_key": "k3"}),
    )
    .await;
    assert_eq!(
        echoed.as_ref().ok(),
        Some(&json!({"message": "x"})),
        "the same key on another capability is another call: {echoed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_recorded_as_a_run_pointing_at_the_original() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    let first = call(&s.agent, "execute", add_with_key("k4")).await.unwrap();
    let second = call(&s.agent, "execute", add_with_key("k4")).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(s.counter().await, 1, "executed once");

    let listed = call(&s.agent, "runs.list", json!({"capability": "echo.counter.add"}))
        .await
        .unwrap();
    let runs = listed["runs"].as_array().unwrap();
    let original = runs
        .iter()
        .rev()
        .find(|r| r["replay_of"].is_null())
        .unwrap_or_else(|| panic!("no original run: {listed}"));
    let original_id = original["id"].as_str().unwrap();
    let recorded: Vec<(&Value, &Value)> = runs.iter().map(|r| (&r["id"], &r["replay_of"])).collect();
    assert!(
        runs.iter().any(|r| r["replay_of"] == original_id),
        "the replay is recorded as a run with replay_of = {original_id}; (id, replay_of) listed: {recorded:?}"
    );
}

/// Owner calls `echo.counter.add` by method name with an `Idempotency-Key` header.
async fn add_by_name(s: &Setup, key: &str) -> Value {
    post_rpc(
        &s.node.rpc_sock(),
        &json!({"jsonrpc": "2.0", "id": 1, "method": "echo.counter.add", "params": {"amount": 1}}),
        &[("idempotency-key", key)],
    )
    .await
    .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_key_header_applies_to_a_single_call_by_method_name() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    let first = add_by_name(&s, "k5").await;
    let second = add_by_name(&s, "k5").await;
    assert_eq!(
        s.counter().await,
        1,
        "a retry with the same Idempotency-Key header executes once (answers: {first} / {second})"
    );
    assert_eq!(first["result"], second["result"]);
    assert_eq!(first["result"], json!({"value": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_key_header_is_refused_on_a_batch() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    let add = |id: i64| json!({"jsonrpc": "2.0", "id": id, "method": "echo.counter.add", "params": {"amount": 1}});
    let answer = post_rpc(
        &s.node.rpc_sock(),
        &json!([add(1), add(2)]),
        &[("idempotency-key", "k5")],
    )
    .await
    .json();
    assert!(
        answer.is_object(),
        "one error object for the whole batch, not an array: {answer}"
    );
    assert_eq!(error_code(&answer), -32600, "{answer}");
    assert_eq!(s.counter().await, 0, "nothing in the batch ran");
}

// ---- 3. Guards on claims use the key's own claims ------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_claim_in_the_header_does_not_dodge_a_guard() {
    let node = Node::new();
    let policy = node.tmp.path().join("policy.toml");
    std::fs::write(
        &policy,
        r#"[[grant]]
claim = "agent"
capabilities = ["echo.*"]

[[guard]]
capabilities = ["echo.*"]
claims = ["contractor"]
effect = "deny"
reason = "contractors may not use echo"
"#,
    )
    .unwrap();
    let path = policy.clone();
    let (s, _executor) = setup(node, move |c| c.policy = Some(path)).await;
    enrol(&s.node, "con", &key(3), &["agent", "contractor"], None).await;
    enrol(&s.node, "plain", &key(4), &["agent"], None).await;
    let con = signed_client(&s.node, "con", &key(3));
    let plain = signed_client(&s.node, "plain", &key(4));
    let echo = json!({"message": "x"});

    let (code, _) = rpc_error("con calls echo.echo", call(&con, "echo.echo", echo.clone()).await);
    assert_eq!(code, -32002);
    let narrowed = hero_headers(None, Some("agent"), None).unwrap();
    let dodged = con.rpc("echo.echo", echo.clone(), narrowed).await;
    let Err(ClientError::Rpc { code, .. }) = dodged else {
        panic!(
            "X-Hero-Claims: agent must not dodge the contractor guard (-32002), got {}",
            outcome(&dodged)
        );
    };
    assert_eq!(code, -32002);
    call(&plain, "echo.echo", echo).await.unwrap();
}

// ---- 5. The approver inbox -----------------------------------------------------------

fn run_ids(listed: &Value) -> Vec<String> {
    listed["runs"]
        .as_array()
        .unwrap_or_else(|| panic!("not a run list: {listed}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The ids `runs.list` answers `client` with.
async fn listed(client: &Client, params: Value) -> Result<Vec<String>, ClientError> {
    call(client, "runs.list", params).await.map(|page| run_ids(&page))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvers_list_the_runs_waiting_for_them() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    let run_id = hold(&s.agent, "echo.counter.reset", json!({})).await;

    let mut problems = Vec::new();
    match listed(&s.ops, json!({"status": "awaiting_approval"})).await {
        Ok(ids) if ids.contains(&run_id) => {}
        other => problems.push(format!(
            "ops runs.list {{status: awaiting_approval}} misses the run waiting for its approval: {other:?}"
        )),
    }
    match listed(&s.ops, json!({"inbox": true})).await {
        Ok(ids) if ids.contains(&run_id) => {}
        other => problems.push(format!("ops runs.list {{inbox: true}} misses the run: {other:?}")),
    }
    // Nobody approves their own run, so it is not in the agent's inbox (an empty list or
    // a refusal both say so).
    if let Ok(ids) = listed(&s.agent, json!({"inbox": true})).await
        && ids.contains(&run_id)
    {
        problems.push(format!("agent's own run is in its inbox: {ids:?}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvers_neither_cancel_nor_see_decided_runs() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    let run_id = hold(&s.agent, "echo.counter.reset", json!({})).await;

    let cancelled = call(&s.ops, "runs.cancel", json!({ "run_id": run_id })).await;
    let Err(ClientError::Rpc { code, .. }) = cancelled else {
        panic!(
            "an approver may not cancel another principal's run, got {}",
            outcome(&cancelled)
        );
    };
    assert!([-32002, -32003].contains(&code), "code {code}");
    assert_eq!(s.run(&run_id).await["status"], "awaiting_approval");

    call(&s.ops, "runs.approve", json!({ "run_id": run_id })).await.unwrap();
    let done = call(&s.agent, "runs.wait", json!({"run_id": run_id, "timeout_ms": 20_000}))
        .await
        .unwrap();
    assert_eq!(done["status"], "succeeded", "{done}");
    // The approver who decided it sees the run, not its outcome.
    let seen = call(&s.ops, "runs.get", json!({ "run_id": run_id })).await.unwrap();
    assert_eq!(seen["status"], "succeeded", "{seen}");
    assert!(seen["result"].is_null() && seen["outcome_withheld"] == true, "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_records_who_cancelled_it() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    let run_id = hold(&s.agent, "echo.counter.reset", json!({})).await;
    let cancelled = s.owner("runs.cancel", json!({ "run_id": run_id })).await;
    let run = &cancelled["result"];
    assert_eq!(run["status"], "cancelled", "{cancelled}");
    let by = run["cancelled_by"].as_str().unwrap_or_default();
    assert!(
        by.starts_with("uid:"),
        "cancelled_by names the owner (uid:<n>), got cancelled_by = {}",
        run["cancelled_by"]
    );
}

// ---- 7. Identity answers -------------------------------------------------------------

fn echo_body(id: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": id, "method": "echo.echo", "params": {"message": "x"}})).unwrap()
}

/// Sends `echo.echo` signed as `keyid` with `key`, with extra headers.
async fn signed_echo(node: &Node, keyid: &str, seed: u8, headers: HeaderMap) -> hero_executor::client::Reply {
    Client::new(node.rpc_sock())
        .with_signer(Signer::new(keyid, key(seed)))
        .send(Method::POST, "/rpc", headers, echo_body(42))
        .await
        .unwrap()
}

fn reply_json(reply: &hero_executor::client::Reply) -> Value {
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&reply.body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_revoked_keys_are_a_failed_signature() {
    let node = Node::new();
    let _executor = node.start(node.config()).await;
    enrol(&node, "gone", &key(4), &["agent"], None).await;
    let revoked = rpc(&node.rpc_sock(), "keys.revoke", json!({"keyid": "gone"})).await;
    assert!(revoked.get("result").is_some(), "keys.revoke: {revoked}");

    let mut seen = Vec::new();
    for (what, keyid, seed) in [("unknown keyid", "stranger", 5), ("revoked keyid", "gone", 4)] {
        let reply = signed_echo(&node, keyid, seed, HeaderMap::new()).await;
        seen.push((
            what,
            reply.status.as_u16(),
            reply.headers.contains_key("accept-signature"),
            reply_json(&reply)["error"]["code"].as_i64(),
        ));
    }
    assert_eq!(
        seen,
        [
            ("unknown keyid", 401, true, Some(-32005)),
            ("revoked keyid", 401, true, Some(-32005)),
        ],
        "(case, HTTP status, Accept-Signature present, JSON-RPC code)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_the_key_may_not_use_is_403() {
    let node = Node::new();
    let _executor = node.start(node.config()).await;
    enrol(&node, "ctx", &key(6), &["agent"], Some(&[1])).await;
    let reply = signed_echo(&node, "ctx", 6, hero_headers(Some(2), None, None).unwrap()).await;
    assert_eq!(
        (reply.status.as_u16(), reply_json(&reply)["error"]["code"].as_i64()),
        (403, Some(-32005))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_keep_the_request_id_when_the_body_parsed() {
    let node = Node::new();
    let _executor = node.start(node.config()).await;
    let mut ids = Vec::new();

    // An invalid hero header, unsigned owner.
    let answer = http(
        &node.rpc_sock(),
        "POST",
        "/rpc",
        &[("content-type", "application/json"), ("x-hero-context", "abc")],
        echo_body(42),
    )
    .await
    .json();
    assert!(answer["error"].is_object(), "{answer}");
    ids.push(("invalid X-Hero-Context", answer["id"].clone()));

    // A signature by a key that is not enrolled.
    let reply = signed_echo(&node, "stranger", 5, HeaderMap::new()).await;
    let answer = reply_json(&reply);
    assert!(answer["error"].is_object(), "{answer}");
    ids.push(("unknown keyid", answer["id"].clone()));

    // Rate limited: a node whose owner has one request, refilled far slower than the test
    // runs (the contract's (1.0, 1.0) would refill within a second on a slow machine).
    let limited = Node::new();
    let mut config = limited.config();
    config.rate_limit = (0.01, 1.0);
    let _limited = limited.start(config).await;
    let first = post_rpc(
        &limited.rpc_sock(),
        &json!({"jsonrpc": "2.0", "id": 41, "method": "echo.echo", "params": {"message": "x"}}),
        &[],
    )
    .await;
    assert_ne!(first.status, 429, "the first call is within the burst");
    let answer = http(
        &limited.rpc_sock(),
        "POST",
        "/rpc",
        &[("content-type", "application/json")],
        echo_body(42),
    )
    .await;
    assert_eq!(answer.status, 429);
    let answer = answer.json();
    assert_eq!(error_code(&answer), -32029, "{answer}");
    ids.push(("rate limited", answer["id"].clone()));

    assert_eq!(
        ids,
        [
            ("invalid X-Hero-Context", json!(42)),
            ("unknown keyid", json!(42)),
            ("rate limited", json!(42)),
        ],
        "every JSON-RPC error answers with the request's id"
    );
}

// ---- Found in review: the edges of the same rules ------------------------------------

/// An approver that waits on a held run does not get its outcome once it is decided (it
/// sees that the run it approved ended, not the result), and the answer to the approval
/// is the run as approved (`running`), never its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_waiting_on_a_run_does_not_get_its_result() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    let run_id = hold(&s.agent, "echo.counter.reset", json!({})).await;
    let waiting = {
        let ops = signed_client(&s.node, "ops", &key(2));
        let run_id = run_id.clone();
        tokio::spawn(async move { call(&ops, "runs.wait", json!({"run_id": run_id, "timeout_ms": 10_000})).await })
    };
    let approved = call(&s.ops, "runs.approve", json!({ "run_id": run_id })).await.unwrap();
    assert_eq!(approved["status"], "running", "{approved}");
    assert!(approved["result"].is_null(), "{approved}");
    let seen = waiting.await.unwrap().unwrap();
    assert_eq!(seen["status"], "succeeded", "{seen}");
    assert!(seen["result"].is_null() && seen["outcome_withheld"] == true, "{seen}");
    let other = signed_client(&s.node, "ops2", &key(4));
    enrol(&s.node, "ops2", &key(4), &["ops"], None).await;
    let (code, _) = rpc_error(
        "another approver's read",
        call(&other, "runs.get", json!({ "run_id": run_id })).await,
    );
    assert_eq!(code, -32003, "an approver who did not decide it does not see it");
    let done = call(&s.agent, "runs.wait", json!({ "run_id": run_id })).await.unwrap();
    assert_eq!(done["status"], "succeeded", "the caller still collects it");
}

/// A router acting for mallory sees, waits for and cancels only mallory's runs, not the
/// runs it made for alice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_acting_for_a_user_sees_only_that_users_runs() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    enrol(&s.node, "router", &key(3), &["agent", "executor.impersonate"], None).await;
    let router = signed_client(&s.node, "router", &key(3));
    let as_user = |user: &str| hero_headers(None, None, Some(user)).unwrap();
    let (_, data) = rpc_error(
        "alice's reset is held",
        router.rpc("echo.counter.reset", json!({}), as_user("alice")).await,
    );
    let alices = run_id_of(&data).unwrap().to_owned();
    let mallory = as_user("mallory");
    let listed = router.rpc("runs.list", json!({}), mallory.clone()).await.unwrap();
    assert!(
        !run_ids(&listed).contains(&alices),
        "mallory lists alice's run: {listed}"
    );
    for method in ["runs.get", "runs.wait", "runs.cancel"] {
        let answer = router.rpc(method, json!({ "run_id": alices }), mallory.clone()).await;
        assert_eq!(
            rpc_error(method, answer).0,
            -32003,
            "{method} of alice's run as mallory"
        );
    }
    let alice = router
        .rpc("runs.get", json!({ "run_id": alices }), as_user("alice"))
        .await;
    assert_eq!(alice.unwrap()["status"], "awaiting_approval");
}

/// `uid:<n>` names the trusted local peer; no key may take that name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_may_not_be_named_like_the_local_owner() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    let params = json!({"keyid": "uid:0", "public_key": b64_public(&key(9)), "claims": ["agent"]});
    let added = s.owner("keys.add", params).await;
    assert_eq!(error_code(&added), -32602, "{added}");
}

/// An `Idempotency-Key` header decides whether a call runs at all, so a signature must
/// cover it: one added on the way is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_key_header_must_be_signed() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    let body =
        serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 7, "method": "echo.counter.add", "params": {"amount": 1}}))
            .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("host", "localhost".parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    Signer::new("agent", key(1))
        .sign(
            &Method::POST,
            &"/rpc".parse().unwrap(),
            &mut headers,
            &body,
            hero_executor::now_unix(),
        )
        .unwrap();
    headers.insert("idempotency-key", "added-on-the-way".parse().unwrap());
    let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.to_str().unwrap())).collect();
    let answer = http(&s.node.rpc_sock(), "POST", "/rpc", &pairs, body).await;
    assert_eq!(answer.status, 401, "{}", String::from_utf8_lossy(&answer.body));
    // Signed with the header, it is accepted, and a retry is answered from the first call.
    let keyed = |key: &str| {
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", key.parse().unwrap());
        headers
    };
    let first = s
        .agent
        .rpc("echo.counter.add", json!({"amount": 1}), keyed("k9"))
        .await
        .unwrap();
    let again = s
        .agent
        .rpc("echo.counter.add", json!({"amount": 1}), keyed("k9"))
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(s.counter().await, 1);
}

/// The same key in another context is a conflict, not the other context's result; a call
/// refused before it ran does not use its key up; params in another order are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_respect_context_refusals_and_member_order() {
    let (s, _executor) = setup(Node::new(), |_| {}).await;
    call(&s.agent, "execute", add_with_key("c1")).await.unwrap();
    let other_context = hero_headers(Some(2), None, None).unwrap();
    let replay = s.agent.rpc("execute", add_with_key("c1"), other_context).await;
    assert_eq!(rpc_error("another context", replay).0, -32004);
    // Invalid params are refused before forwarding: the key is still free afterwards.
    let bad = json!({"capability": "echo.counter.add", "params": {"amount": "x"}, "idempotency_key": "c2"});
    assert_eq!(
        rpc_error("invalid params", call(&s.agent, "execute", bad).await).0,
        -32602
    );
    call(&s.agent, "execute", add_with_key("c2")).await.unwrap();
    assert_eq!(s.counter().await, 2);
    // Member order does not make another input.
    let ab = json!({"capability": "echo.echo", "params": {"message": "m", "x": 1}, "idempotency_key": "c3"});
    let ba = json!({"capability": "echo.echo", "idempotency_key": "c3", "params": {"x": 1, "message": "m"}});
    let first = call(&s.agent, "execute", ab).await;
    let second = call(&s.agent, "execute", ba).await;
    assert_eq!(outcome(&first), outcome(&second));
}
