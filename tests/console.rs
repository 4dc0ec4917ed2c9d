//! The operator console on ui.sock (DESIGN section 14), over HTTP as a browser would speak
//! it (the real browser test is tests/console_browser.rs): the socket and its hero
//! endpoints, every page, the same-origin check and the anti-CSRF token, the human named
//! by the router (checked and recorded), escaping of what services say, "try it" through
//! the dispatcher, keys and policy forms, and the live event stream.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use common::*;
use hero_executor::client::{Client, ClientError};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

struct Setup {
    node: Node,
    _echo: ChildGuard,
    agent: Client,
}

async fn setup() -> (Setup, Executor) {
    let node = Node::new();
    let echo = node.spawn_echo("echo");
    let executor = node.start(node.config()).await;
    enrol(&node, "agent", &key(1), &["agent"], None).await;
    let agent = signed_client(&node, "agent", &key(1));
    (
        Setup {
            node,
            _echo: echo,
            agent,
        },
        executor,
    )
}

impl Setup {
    fn ui(&self) -> std::path::PathBuf {
        self.node.socket_dir().join("hero_executor/ui.sock")
    }

    async fn page(&self, path: &str, headers: &[(&str, &str)]) -> (http::StatusCode, String) {
        let answer = http(&self.ui(), "GET", path, headers, Bytes::new()).await;
        (answer.status, String::from_utf8_lossy(&answer.body).into_owned())
    }

    /// A form post from the console's own origin, with `headers` (the router's) added.
    async fn post(&self, path: &str, form: &[(&str, &str)], headers: &[(&str, &str)]) -> Answer {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut all = vec![
            ("content-type", "application/x-www-form-urlencoded"),
            ("origin", "http://localhost"),
        ];
        all.extend_from_slice(headers);
        http(&self.ui(), "POST", path, &all, body).await
    }

    /// The anti-CSRF token of a page rendered for the viewer the headers name.
    async fn token(&self, headers: &[(&str, &str)]) -> String {
        let (_, page) = self.page("/runs", headers).await;
        let at = page.find("name=\"csrf-token\" content=\"").expect("a csrf meta tag") + 27;
        page[at..at + 64].to_owned()
    }

    async fn run(&self, run_id: &str) -> Value {
        rpc(&self.node.rpc_sock(), "runs.get", json!({ "run_id": run_id })).await["result"].clone()
    }

    /// Holds echo.counter.reset as the agent; returns the run id and the error data.
    async fn hold(&self) -> (String, Value) {
        match self.agent.rpc("echo.counter.reset", json!({}), HeaderMap::new()).await {
            Err(ClientError::Rpc { code: -32010, data, .. }) => {
                let data = data.expect("data");
                (data["run_id"].as_str().unwrap().to_owned(), data)
            }
            other => panic!("expected a held call, got {other:?}"),
        }
    }
}

const CAROL_OPS: &[(&str, &str)] = &[("x-hero-user", "carol"), ("x-hero-claims", "ops")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_socket_serves_every_page_with_a_strict_policy() {
    let (s, _executor) = setup().await;
    let mode = std::fs::metadata(s.ui()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "ui.sock mode");
    assert_eq!(get(&s.ui(), "/health").await.json()["status"], "ok");
    let hero = get(&s.ui(), "/.well-known/heroservice.json").await.json();
    assert_eq!(
        (hero["protocol"].as_str(), hero["socket"].as_str()),
        (Some("ui"), Some("ui"))
    );
    let home = get(&s.ui(), "/").await;
    assert_eq!(home.status, 303);
    assert_eq!(home.headers["location"], "/runs");
    let (run_id, _) = s.hold().await;
    for path in [
        "/runs",
        "/runs?status=awaiting_approval&since=1h&hide_denied=1",
        &format!("/runs/{run_id}"),
        "/approvals",
        "/catalog",
        "/catalog/echo.echo",
        "/keys",
        "/policy",
        "/policy?capability=echo.counter.reset&keyid=agent",
    ] {
        let answer = get(&s.ui(), path).await;
        let body = String::from_utf8_lossy(&answer.body);
        assert_eq!(answer.status, 200, "{path}: {body}");
        assert!(answer.content_type().starts_with("text/html"), "{path}");
        let csp = answer.headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(
            !body.contains("<script>") && !body.contains(" style="),
            "{path}: nothing inline"
        );
        assert!(!body.contains("PRIVATE KEY"), "{path}");
    }
    let (_, runs) = s.page("/runs", &[]).await;
    assert!(
        runs.contains("echo.counter.reset") && runs.contains("awaiting approval"),
        "{runs}"
    );
    let (_, page) = s.page(&format!("/runs/{run_id}"), &[]).await;
    let created = s.run(&run_id).await["created_at"].as_i64().unwrap();
    let when = hero_executor::human::rfc3339(created);
    assert!(page.contains(&when), "times in RFC 3339 ({when}): {page}");
    assert!(page.contains("guard #1 (line"), "the rule that matched: {page}");
    let (_, policy) = s.page("/policy?capability=echo.counter.reset&keyid=agent", &[]).await;
    assert!(
        policy.contains("require approval") && policy.contains("id=\"L14\""),
        "{policy}"
    );
    for asset in ["/static/console.css", "/static/console.js"] {
        assert_eq!(get(&s.ui(), asset).await.status, 200, "{asset}");
    }
    let (status, _) = s.page("/runs/not-a-run", &[]).await;
    assert_eq!(status, 404);
    // Another site's page may not open the live stream.
    let (status, _) = s.page("/api/v1/events", &[("origin", "http://evil.example")]).await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_need_the_same_origin_and_the_viewers_token() {
    let (s, _executor) = setup().await;
    let (run_id, data) = s.hold().await;
    assert_eq!(
        data["console"],
        format!("/runs/{run_id}"),
        "a held call names its console page"
    );
    let decide = format!("/runs/{run_id}/decide");
    let token = s.token(&[]).await;
    let approve = [
        ("decision", "approve"),
        ("note", "looks fine"),
        ("csrf", token.as_str()),
    ];

    let no_token = s.post(&decide, &[("decision", "approve")], &[]).await;
    assert_eq!(no_token.status, 403);
    assert!(String::from_utf8_lossy(&no_token.body).contains("Refused"));
    for (name, value) in [
        ("origin", "http://evil.example"),
        ("origin", "null"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&approve)
            .finish();
        let headers = [("content-type", "application/x-www-form-urlencoded"), (name, value)];
        let answer = http(&s.ui(), "POST", &decide, &headers, body).await;
        assert_eq!(answer.status, 403, "{name}: {value}");
    }
    let carols = s.token(CAROL_OPS).await;
    let stolen = s
        .post(&decide, &[("decision", "approve"), ("csrf", carols.as_str())], &[])
        .await;
    assert_eq!(stolen.status, 403, "a token made for another viewer");
    assert_eq!(
        s.run(&run_id).await["status"],
        "awaiting_approval",
        "nothing refused changed it"
    );

    let done = s.post(&decide, &approve, &[]).await;
    assert_eq!(done.status, 303, "{}", String::from_utf8_lossy(&done.body));
    assert_eq!(done.headers["location"], format!("/runs/{run_id}"));
    let waited = rpc(
        &s.node.rpc_sock(),
        "runs.wait",
        json!({ "run_id": run_id, "timeout_ms": 10_000 }),
    )
    .await["result"]
        .clone();
    assert_eq!(waited["status"], "succeeded", "{waited}");
    let owner = waited["approver"].as_str().unwrap().to_owned();
    assert!(owner.starts_with("uid:"), "{waited}");
    assert_eq!(waited["decision_note"], "looks fine");
    let (_, page) = s.page(&format!("/runs/{run_id}"), &[]).await;
    assert!(
        page.contains("id=\"run-status\"") && page.contains(">succeeded<"),
        "{page}"
    );
    assert!(
        page.contains(&format!("id=\"run-approver\" class=\"mono\">{owner}<")),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_human_behind_the_router_is_checked_and_recorded() {
    let (s, _executor) = setup().await;
    // The owner's process acts for bob (it holds executor.impersonate): bob's reset is held.
    let held = rpc_with(
        &s.node.rpc_sock(),
        "echo.counter.reset",
        json!({}),
        &[("x-hero-user", "bob")],
    )
    .await;
    assert_eq!(error_code(&held), -32010, "{held}");
    let run_id = held["error"]["data"]["run_id"].as_str().unwrap().to_owned();
    let decide = format!("/runs/{run_id}/decide");

    // Bob, through the console, with the approver claim: not his own run.
    let bob: &[(&str, &str)] = &[("x-hero-user", "bob"), ("x-hero-claims", "ops")];
    let (_, inbox) = s.page("/approvals", bob).await;
    assert!(!inbox.contains(&run_id), "bob's own run is not in his inbox");
    let token = s.token(bob).await;
    let refused = s
        .post(&decide, &[("decision", "approve"), ("csrf", token.as_str())], bob)
        .await;
    assert_eq!(refused.status, 403);
    assert!(String::from_utf8_lossy(&refused.body).contains("nobody approves their own run"));

    // Dave holds no approver claim: he does not even learn the run exists.
    let dave: &[(&str, &str)] = &[("x-hero-user", "dave"), ("x-hero-claims", "agent")];
    assert_eq!(s.page(&format!("/runs/{run_id}"), dave).await.0, 404);

    // Carol may: the run waits in her inbox, and her approval records her.
    let (_, inbox) = s.page("/approvals", CAROL_OPS).await;
    assert!(inbox.contains(&format!("data-run-id=\"{run_id}\"")), "{inbox}");
    assert!(inbox.contains("signed in as</span> <strong>uid:"), "{inbox}");
    let token = s.token(CAROL_OPS).await;
    let done = s
        .post(
            &decide,
            &[("decision", "approve"), ("note", "ok"), ("csrf", token.as_str())],
            CAROL_OPS,
        )
        .await;
    assert_eq!(done.status, 303, "{}", String::from_utf8_lossy(&done.body));
    let run = s.run(&run_id).await;
    let approver = run["approver"].as_str().unwrap();
    assert!(
        approver.starts_with("uid:") && approver.ends_with("(for carol)"),
        "{run}"
    );
    // She sees the run she decided, but not its outcome (that goes to who asked).
    let (status, page) = s.page(&format!("/runs/{run_id}"), CAROL_OPS).await;
    assert_eq!(status, 200);
    assert!(page.contains("The outcome goes to who asked"), "{page}");
    // A call held through the console (the human's claims only) can be approved: the
    // relay's own claims still name the human at approval.
    let erin: &[(&str, &str)] = &[("x-hero-user", "erin"), ("x-hero-claims", "agent")];
    let erins = s.token(erin).await;
    let tried = s
        .post(
            "/catalog/echo.counter.reset/try",
            &[("params", "{}"), ("idempotency_key", "e-1"), ("csrf", erins.as_str())],
            erin,
        )
        .await;
    assert_eq!(tried.status, 303, "{}", String::from_utf8_lossy(&tried.body));
    let held = tried.headers["location"]
        .to_str()
        .unwrap()
        .trim_start_matches("/runs/")
        .to_owned();
    assert_eq!(s.run(&held).await["status"], "awaiting_approval");
    let ok = s
        .post(
            &format!("/runs/{held}/decide"),
            &[("decision", "approve"), ("csrf", token.as_str())],
            CAROL_OPS,
        )
        .await;
    assert_eq!(ok.status, 303, "{}", String::from_utf8_lossy(&ok.body));
    let ran = rpc(
        &s.node.rpc_sock(),
        "runs.wait",
        json!({ "run_id": held, "timeout_ms": 10_000 }),
    )
    .await;
    assert_eq!(ran["result"]["status"], "succeeded", "{ran}");
    // Outside the relay, naming another user does not make a principal's own run someone
    // else's: the owner acting for bob may not approve what it asked for as alice.
    let alices = rpc_with(
        &s.node.rpc_sock(),
        "echo.counter.reset",
        json!({}),
        &[("x-hero-user", "alice")],
    )
    .await;
    let alices = alices["error"]["data"]["run_id"].as_str().unwrap().to_owned();
    let switched = rpc_with(
        &s.node.rpc_sock(),
        "runs.approve",
        json!({ "run_id": alices }),
        &[("x-hero-user", "bob")],
    )
    .await;
    assert_eq!(error_code(&switched), -32002, "{switched}");
    // Nor does another principal acting for the same user approve that user's run.
    enrol(&s.node, "router", &key(3), &["ops", "executor.impersonate"], None).await;
    let router = signed_client(&s.node, "router", &key(3));
    let as_alice = hero_executor::client::hero_headers(None, None, Some("alice")).unwrap();
    let listed = router
        .rpc("runs.list", json!({"inbox": true}), as_alice.clone())
        .await
        .unwrap();
    assert!(
        !listed.to_string().contains(&alices),
        "alice's own run is not in her inbox: {listed}"
    );
    match router.rpc("runs.approve", json!({ "run_id": alices }), as_alice).await {
        Err(ClientError::Rpc { code, .. }) => assert_eq!(code, -32002),
        other => panic!("the router acting for alice approved alice's run: {other:?}"),
    }

    // Keys and policy need executor.admin, which carol's claims do not hold.
    let (_, keys) = s.page("/keys", CAROL_OPS).await;
    assert!(keys.contains("needs the executor.admin claim") && !keys.contains("name=\"public_key\""));
    let enrol = s
        .post(
            "/keys",
            &[
                ("keyid", "x"),
                ("public_key", &b64_public(&key(9))),
                ("csrf", token.as_str()),
            ],
            CAROL_OPS,
        )
        .await;
    assert_eq!(enrol.status, 403);
}

/// A service whose descriptions carry markup.
fn hostile_service() -> Router {
    let doc = json!({
        "openrpc": "1.3.2",
        "info": {
            "title": "<b>evil</b>",
            "version": "1",
            "description": "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=1\">"
        },
        "methods": [{
            "name": "look",
            "summary": "<img src=x onerror=alert(1)>",
            "description": "</pre><script>alert(2)</script>",
            "params": [],
            "result": {"name": "r", "schema": {"type": "object", "description": "<script>alert(3)</script>"}},
            "x-hero-intent": {"side_effect_class": "read", "idempotency": "safe"}
        }]
    });
    Router::new().route(
        "/rpc",
        post(move |body: axum::Json<Value>| {
            let doc = doc.clone();
            async move {
                let result = match body["method"].as_str() {
                    Some("rpc.discover") => doc,
                    _ => json!({}),
                };
                axum::Json(json!({"jsonrpc": "2.0", "id": body["id"].clone(), "result": result}))
            }
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_service_says_is_shown_as_text() {
    let (s, _executor) = setup().await;
    let _stub = s.node.serve_stub("evil", hostile_service()).await;
    rpc(&s.node.rpc_sock(), "catalog.refresh", json!({})).await;
    for path in ["/catalog", "/catalog/evil.look"] {
        let (status, page) = s.page(path, &[]).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            page.contains("&lt;script&gt;"),
            "{path} shows the markup as text: {page}"
        );
        for live in ["<script>window", "<img src=x", "<script>alert", "<b>evil"] {
            assert!(!page.contains(live), "{path} contains live markup {live}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_it_goes_through_the_dispatcher_and_keeps_what_was_typed() {
    let (s, _executor) = setup().await;
    let token = s.token(&[]).await;
    let try_it = |params: &'static str, key: &'static str| {
        let token = token.clone();
        let s = &s;
        async move {
            s.post(
                "/catalog/echo.counter.add/try",
                &[("params", params), ("idempotency_key", key), ("csrf", token.as_str())],
                &[],
            )
            .await
        }
    };
    let ran = try_it(r#"{"amount": 2}"#, "k-1").await;
    assert_eq!(ran.status, 303, "{}", String::from_utf8_lossy(&ran.body));
    let location = ran.headers["location"].to_str().unwrap().to_owned();
    let run = s.run(location.trim_start_matches("/runs/")).await;
    assert_eq!(
        (run["status"].as_str(), run["surface"].as_str()),
        (Some("succeeded"), Some("console"))
    );
    assert_eq!(run["result"]["value"], 2);
    // The same form sent again is a replay (shown as the run it replays), not a second add.
    let again = try_it(r#"{"amount": 2}"#, "k-1").await;
    assert_eq!(again.headers["location"].to_str().unwrap(), location);
    let counter = rpc(&s.node.rpc_sock(), "echo.counter.get", json!({})).await;
    assert_eq!(counter["result"]["value"], 2, "added once");

    let not_json = try_it(r#"{"amount": "#, "k-2").await;
    assert_eq!(not_json.status, 422);
    let page = String::from_utf8_lossy(&not_json.body);
    assert!(
        page.contains("not JSON") && page.contains("{&quot;amount&quot;: </textarea>"),
        "{page}"
    );
    let invalid = try_it(r#"{"amount": "two"}"#, "k-3").await;
    assert_eq!(invalid.status, 422);
    let page = String::from_utf8_lossy(&invalid.body);
    assert!(page.contains("&#x2f;amount") && page.contains("Recorded as"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_policy_forms_act_and_keep_what_was_typed() {
    let (s, _executor) = setup().await;
    let token = s.token(&[]).await;
    let public = b64_public(&key(7));
    let enrolled = s
        .post(
            "/keys",
            &[
                ("keyid", "bot-7"),
                ("public_key", public.as_str()),
                ("claims", "agent, ops"),
                ("contexts", "1,2"),
                ("note", "the build bot"),
                ("csrf", token.as_str()),
            ],
            &[],
        )
        .await;
    assert_eq!(enrolled.status, 303, "{}", String::from_utf8_lossy(&enrolled.body));
    let keys = rpc(&s.node.rpc_sock(), "keys.list", json!({})).await;
    let bot = keys["result"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["keyid"] == "bot-7")
        .cloned();
    let bot = bot.expect("enrolled");
    assert_eq!(
        (bot["claims"].clone(), bot["contexts"].clone()),
        (json!(["agent", "ops"]), json!([1, 2]))
    );
    let bad = s
        .post(
            "/keys",
            &[
                ("keyid", "bot-8"),
                ("public_key", "not a key"),
                ("note", "kept <b>"),
                ("csrf", token.as_str()),
            ],
            &[],
        )
        .await;
    assert_eq!(bad.status, 422);
    let page = String::from_utf8_lossy(&bad.body);
    assert!(
        page.contains("value=\"bot-8\"") && page.contains("kept &lt;b&gt;"),
        "{page}"
    );
    let revoked = s.post("/keys/bot-7/revoke", &[("csrf", token.as_str())], &[]).await;
    assert_eq!(revoked.status, 303);
    let reloaded = s.post("/policy/reload", &[("csrf", token.as_str())], &[]).await;
    assert_eq!(reloaded.status, 200);
    assert!(String::from_utf8_lossy(&reloaded.body).contains("Reloaded"));
    let pruned = s
        .post(
            "/runs/prune",
            &[("older_than_days", "0"), ("csrf", token.as_str())],
            &[],
        )
        .await;
    assert_eq!(pruned.status, 303);
    assert!(
        pruned.headers["location"]
            .to_str()
            .unwrap()
            .starts_with("/runs?pruned=")
    );
    let bad = s
        .post(
            "/runs/prune",
            &[("older_than_days", "soon"), ("csrf", token.as_str())],
            &[],
        )
        .await;
    assert_eq!(bad.status, 422);
}

/// Reads server-sent events from `sock` with `headers` until `stop` says so or 10 s pass.
async fn read_events(
    sock: &Path,
    headers: &[(&str, &str)],
    ready: tokio::sync::oneshot::Sender<()>,
    stop: impl Fn(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let stream = tokio::net::UnixStream::connect(sock).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut request = http::Request::get("/api/v1/events").header("host", "localhost");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = sender
        .send_request(request.body(http_body_util::Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let _ = ready.send(());
    let mut body = response.into_body();
    let mut text = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !stop(&events) {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            _ => break,
        };
        let Ok(data) = frame.into_data() else { continue };
        text.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let name = block
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("message");
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                events.push((name.to_owned(), serde_json::from_str(data).unwrap_or(Value::Null)));
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_only_what_the_caller_may_see() {
    let (s, _executor) = setup().await;
    let (ready, listening) = tokio::sync::oneshot::channel();
    let ui = s.ui();
    let carol = tokio::spawn(async move {
        read_events(&ui, CAROL_OPS, ready, |events| {
            events.iter().any(|(name, _)| name == "approval")
        })
        .await
    });
    listening.await.unwrap();
    // The agent's plain call: not carol's to see. Its reset: waits for ops, so it is.
    s.agent
        .rpc("echo.echo", json!({"message": "one"}), HeaderMap::new())
        .await
        .unwrap();
    let (held, _) = s.hold().await;
    let events = carol.await.unwrap();
    let ids: Vec<&str> = events.iter().filter_map(|(_, e)| e["id"].as_str()).collect();
    assert!(
        ids.iter().all(|id| *id == held),
        "carol saw only the run waiting for her: {events:?}"
    );
    let approval = events
        .iter()
        .find(|(name, _)| name == "approval")
        .expect("an approval event");
    assert_eq!(approval.1["status"], "awaiting_approval");
    assert_eq!(approval.1["console"], format!("/runs/{held}"));

    // The same stream on rest.sock, for the owner: every run, as it changes.
    let (ready, listening) = tokio::sync::oneshot::channel();
    let rest = s.node.rest_sock();
    let owner = tokio::spawn(async move {
        read_events(&rest, &[], ready, |events| {
            events.iter().any(|(_, e)| e["status"] == "succeeded")
        })
        .await
    });
    listening.await.unwrap();
    s.agent
        .rpc("echo.echo", json!({"message": "two"}), HeaderMap::new())
        .await
        .unwrap();
    let events = owner.await.unwrap();
    assert!(
        events.iter().any(|(n, e)| n == "run" && e["name"] == "echo.echo"),
        "{events:?}"
    );
}

/// Invariant: a principal holds at most 16 event streams, however many users it names
/// (the owner may name any user: each name is not a fresh allowance of streams).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_counted_per_principal_whatever_user_it_names() {
    let (s, _executor) = setup().await;
    let sock = s.node.rest_sock();
    let open = |user: String| {
        let sock = sock.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let request = http::Request::get("/api/v1/events")
                .header("host", "localhost")
                .header("x-hero-user", user)
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            (response.status(), sender, response)
        }
    };
    let mut held = Vec::new();
    for i in 0..16 {
        let (status, sender, response) = open(format!("user{i}")).await;
        assert_eq!(status, 200, "stream {i}");
        held.push((sender, response));
    }
    let (status, _, _) = open("user16".into()).await;
    assert_eq!(status, 429, "a 17th stream under another user name");
    // One closes: the next is served.
    drop(held.pop());
    eventually("a stream slot to free", || {
        let open = &open;
        async move { open("again".into()).await.0 == 200 }
    })
    .await;
}

/// Invariant: only the socket's trusted peer relays humans. A signed key on `ui.sock` that
/// holds the impersonation claim is an ordinary caller there: it may not ask as alice and
/// approve the same run as bob (a self-approval under two names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_key_on_the_console_socket_is_not_a_relay() {
    let (s, _executor) = setup().await;
    enrol(
        &s.node,
        "twofaced",
        &key(4),
        &["agent", "ops", "executor.impersonate"],
        None,
    )
    .await;
    let signer = || hero_executor::client::Signer::new("twofaced", key(4));
    let on_rpc = Client::new(s.node.rpc_sock()).with_signer(signer());
    let as_alice = hero_executor::client::hero_headers(None, None, Some("alice")).unwrap();
    let run_id = match on_rpc.rpc("echo.counter.reset", json!({}), as_alice).await {
        Err(ClientError::Rpc { code: -32010, data, .. }) => data.unwrap()["run_id"].as_str().unwrap().to_owned(),
        other => panic!("expected a held call, got {other:?}"),
    };
    let on_ui = Client::new(s.ui()).with_signer(signer());
    let as_bob = || hero_executor::client::hero_headers(None, None, Some("bob")).unwrap();
    let page = on_ui
        .send(http::Method::GET, "/runs", as_bob(), Vec::new())
        .await
        .unwrap();
    let page = String::from_utf8_lossy(&page.body).into_owned();
    let at = page.find("name=\"csrf-token\" content=\"").expect("a csrf meta tag") + 27;
    let token = page[at..at + 64].to_owned();
    let form: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("decision", "approve"), ("csrf", token.as_str())])
        .finish();
    let mut headers = as_bob();
    headers.insert("content-type", "application/x-www-form-urlencoded".parse().unwrap());
    headers.insert("origin", "http://localhost".parse().unwrap());
    let decided = on_ui
        .send(
            http::Method::POST,
            &format!("/runs/{run_id}/decide"),
            headers,
            form.into_bytes(),
        )
        .await
        .unwrap();
    assert_ne!(decided.status, 303, "the key approved its own run under another name");
    assert_eq!(s.run(&run_id).await["status"], "awaiting_approval");
}
