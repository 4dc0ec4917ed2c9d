//! Identity end to end: signed calls through the real executor, every rejection the
//! contract names (each checked not to reach the target), keys management, and signed
//! responses verified against the published key.

mod common;

use common::*;
use ed25519_dalek::SigningKey;
use hero_executor::client::{Client, ClientError, Reply, Signer, hero_headers, verify_response};
use hero_executor::identity::signature::{self, MessageView};
use http::{HeaderMap, HeaderValue, Method, Uri};
use serde_json::{Value, json};
use sfv::FieldType;

fn now() -> i64 {
    hero_executor::now_unix()
}

/// A raw signed JSON-RPC request, built by the library's signer, for tampering.
fn signed_request(key: &SigningKey, keyid: &str, body: &Value, extra: &[(&str, &str)]) -> (Uri, HeaderMap, Vec<u8>) {
    let uri: Uri = "/rpc".parse().unwrap();
    let body = serde_json::to_vec(body).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("localhost"));
    for (k, v) in extra {
        headers.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    Signer::new(keyid, key.clone())
        .sign(&Method::POST, &uri, &mut headers, &body, now())
        .unwrap();
    (uri, headers, body)
}

/// Signs with an arbitrary parameter line (`(...)` inner list text), for bad parameters.
fn signed_with_params(key: &SigningKey, params: &str, body: &[u8], extra: &[(&str, &str)]) -> HeaderMap {
    let uri: Uri = "/rpc".parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("localhost"));
    for (k, v) in extra {
        headers.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    headers.insert("content-digest", signature::content_digest(body).parse().unwrap());
    let list: sfv::List = sfv::Parser::new(params).parse().unwrap();
    let sfv::ListEntry::InnerList(inner) = &list[0] else {
        panic!("not an inner list")
    };
    let line = list.serialize().unwrap();
    let view = MessageView::request(&Method::POST, &uri, &headers);
    let base = signature::signature_base(&view, None, &inner.items, &line).unwrap();
    let sig = signature::sign_ed25519(key, &base);
    headers.insert("signature-input", format!("sig1={line}").parse().unwrap());
    headers.insert(
        "signature",
        format!("sig1={}", signature::byte_sequence(&sig)).parse().unwrap(),
    );
    headers
}

async fn send(node: &Node, headers: &HeaderMap, body: Vec<u8>) -> Answer {
    let pairs: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    http(&node.rpc_sock(), "POST", "/rpc", &refs, body).await
}

fn add_one() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "echo.counter.add", "params": {"amount": 1}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_call_round_trip_with_a_verified_response() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _executor = node.start(node.config()).await;
    let agent = key(1);
    enrol(&node, "agent-1", &agent, &["agent", "ops"], None).await;

    let client = Client::new(node.rpc_sock())
        .with_signer(Signer::new("agent-1", agent.clone()))
        .trust_published_key()
        .await
        .unwrap();
    let seen = client
        .rpc(
            "echo.whoami",
            json!({}),
            hero_headers(Some(3), Some("agent"), None).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(seen["claims"], "agent", "the header narrowed the key's ceiling: {seen}");
    assert_eq!(seen["context"], "3");

    // The raw reply: signed by the executor, bound to our request's signature.
    let reply = client
        .send(
            Method::POST,
            "/rpc",
            HeaderMap::new(),
            serde_json::to_vec(&add_one()).unwrap(),
        )
        .await
        .unwrap();
    assert!(reply.verified);
    let input = reply.headers["signature-input"].to_str().unwrap();
    assert!(input.starts_with("hero_executor=(\"@status\" \"content-type\" \"content-digest\" \"@method\";req \"@path\";req \"signature\";req;key=\"sig1\")"), "{input}");

    // The same over REST and over the TCP listener.
    let rest = Client::new(node.rest_sock())
        .with_signer(Signer::new("agent-1", agent))
        .trust_published_key()
        .await
        .unwrap();
    let reply = rest
        .send(Method::GET, "/api/v1/catalog?q=echo", HeaderMap::new(), Vec::new())
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert!(reply.verified);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_responses_fail_the_clients_check() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _executor = node.start(node.config()).await;
    let agent = key(2);
    enrol(&node, "agent-2", &agent, &["agent"], None).await;
    let info = get(&node.rpc_sock(), "/.well-known/heroservice.json").await.json();
    assert_eq!(info["signing_key"]["alg"], "ed25519");
    let executor_key = signature::parse_public_key(info["signing_key"]["public_key_pem"].as_str().unwrap()).unwrap();

    let (uri, headers, body) = signed_request(&agent, "agent-2", &add_one(), &[]);
    let answer = send(&node, &headers, body).await;
    let reply = Reply {
        status: answer.status,
        headers: answer.headers,
        body: answer.body,
        verified: false,
    };
    let request = MessageView::request(&Method::POST, &uri, &headers);
    verify_response(&executor_key, &request, &reply).expect("the genuine response verifies");

    let tampered_body = Reply {
        body: bytes::Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"result":{"value":999}}"#),
        ..clone(&reply)
    };
    assert!(
        verify_response(&executor_key, &request, &tampered_body).is_err(),
        "body"
    );
    let mut tampered_digest = clone(&tampered_body);
    tampered_digest.headers.insert(
        "content-digest",
        signature::content_digest(&tampered_digest.body).parse().unwrap(),
    );
    assert!(
        verify_response(&executor_key, &request, &tampered_digest).is_err(),
        "body and digest"
    );
    let tampered_status = Reply {
        status: http::StatusCode::IM_A_TEAPOT,
        ..clone(&reply)
    };
    assert!(
        verify_response(&executor_key, &request, &tampered_status).is_err(),
        "status"
    );
    let other_request: Uri = "/other".parse().unwrap();
    let moved = MessageView {
        uri: &other_request,
        ..request
    };
    assert!(
        verify_response(&executor_key, &moved, &reply).is_err(),
        "bound to the request"
    );
    let impostor = key(99).verifying_key();
    assert!(verify_response(&impostor, &request, &reply).is_err(), "another key");
}

fn clone(reply: &Reply) -> Reply {
    Reply {
        status: reply.status,
        headers: reply.headers.clone(),
        body: reply.body.clone(),
        verified: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_signature_is_refused_before_forwarding() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let mut config = node.config();
    config.max_body_bytes = 4096;
    let _executor = node.start(config).await;
    let agent = key(3);
    enrol(&node, "agent-3", &agent, &["agent"], Some(&[0, 7])).await;
    let revoked = key(4);
    enrol(&node, "gone", &revoked, &["agent"], None).await;
    assert!(
        rpc(&node.rpc_sock(), "keys.revoke", json!({"keyid": "gone"}))
            .await
            .get("result")
            .is_some()
    );
    let body = serde_json::to_vec(&add_one()).unwrap();
    let t = now();

    let mut cases: Vec<(&str, HeaderMap, Vec<u8>, u16, i64)> = Vec::new();
    // Tampered after signing.
    let (_, mut h, b) = signed_request(&agent, "agent-3", &add_one(), &[("x-hero-context", "7")]);
    h.insert("x-hero-context", "0".parse().unwrap());
    cases.push(("tampered x-hero-context", h, b, 401, -32001));
    let (_, h, _) = signed_request(&agent, "agent-3", &add_one(), &[]);
    let other = serde_json::to_vec(
        &json!({"jsonrpc": "2.0", "id": 1, "method": "echo.counter.add", "params": {"amount": 1000}}),
    )
    .unwrap();
    cases.push(("tampered body (digest mismatch)", h, other.clone(), 401, -32001));
    let (_, mut h, _) = signed_request(&agent, "agent-3", &add_one(), &[]);
    h.insert("content-digest", signature::content_digest(&other).parse().unwrap());
    cases.push(("tampered body and digest", h, other, 401, -32001));
    let (_, mut h, b) = signed_request(&agent, "agent-3", &add_one(), &[]);
    h.insert("x-hero-claims", "agent".parse().unwrap());
    cases.push(("x-hero-* header not covered", h, b, 401, -32001));
    let (_, mut h, b) = signed_request(&agent, "agent-3", &add_one(), &[]);
    let sig = h["signature"].to_str().unwrap().replace("sig1=:", "sig1=:AAAA");
    h.insert("signature", sig.parse().unwrap());
    cases.push(("garbled signature bytes", h, b, 401, -32001));
    // Bad parameters.
    let covered = r#"("@method" "@path" "content-digest")"#;
    let p = |rest: String| format!("{covered}{rest}");
    for (what, params) in [
        (
            "stale created",
            p(format!(
                r#";created={};nonce="a1";keyid="agent-3";alg="ed25519""#,
                t - 301
            )),
        ),
        (
            "created in the future",
            p(format!(
                r#";created={};nonce="a2";keyid="agent-3";alg="ed25519""#,
                t + 60
            )),
        ),
        (
            "expires passed",
            p(format!(
                r#";created={};expires={};nonce="a3";keyid="agent-3""#,
                t - 10,
                t - 1
            )),
        ),
        (
            "wrong alg",
            p(format!(
                r#";created={t};nonce="a4";keyid="agent-3";alg="rsa-pss-sha512""#
            )),
        ),
        ("no created", p(r#";nonce="a5";keyid="agent-3""#.to_owned())),
        ("no nonce", p(format!(r#";created={t};keyid="agent-3""#))),
        ("no keyid", p(format!(r#";created={t};nonce="a6""#))),
        (
            "content-digest not covered",
            format!(r#"("@method" "@path");created={t};nonce="a7";keyid="agent-3""#),
        ),
        (
            "@method not covered",
            format!(r#"("@path" "content-digest");created={t};nonce="a8";keyid="agent-3""#),
        ),
    ] {
        cases.push((
            what,
            signed_with_params(&agent, &params, &body, &[]),
            body.clone(),
            401,
            -32001,
        ));
    }
    let unknown = key(5);
    let params = p(format!(r#";created={t};nonce="b1";keyid="stranger""#));
    cases.push((
        "unknown keyid",
        signed_with_params(&unknown, &params, &body, &[]),
        body.clone(),
        401,
        -32005,
    ));
    let params = p(format!(r#";created={t};nonce="b2";keyid="gone""#));
    cases.push((
        "revoked keyid",
        signed_with_params(&revoked, &params, &body, &[]),
        body.clone(),
        401,
        -32005,
    ));
    let params = p(format!(r#";created={t};nonce="b3";keyid="agent-3""#));
    cases.push((
        "signed by another key",
        signed_with_params(&unknown, &params, &body, &[]),
        body.clone(),
        401,
        -32001,
    ));
    // Hero context rules.
    let (_, h, b) = signed_request(&agent, "agent-3", &add_one(), &[("x-hero-context", "8")]);
    cases.push(("context outside the key's list", h, b, 403, -32005));
    let (_, h, b) = signed_request(&agent, "agent-3", &add_one(), &[("x-hero-user", "alice")]);
    cases.push(("X-Hero-User without executor.impersonate", h, b, 403, -32002));
    // Oversized body, signed.
    let big = json!({"jsonrpc": "2.0", "id": 1, "method": "echo.counter.add", "params": {"amount": 1, "pad": "x".repeat(5000)}});
    let (_, h, b) = signed_request(&agent, "agent-3", &big, &[]);
    cases.push(("oversized body", h, b, 413, -32600));

    for (what, headers, body, status, code) in cases {
        let answer = send(&node, &headers, body).await;
        assert_eq!(
            answer.status.as_u16(),
            status,
            "{what}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(error_code(&answer.json()), code, "{what}");
        if status == 401 {
            assert!(
                answer.headers.contains_key("accept-signature"),
                "{what}: 401 says what to sign"
            );
        }
    }

    // A replayed request: the first goes through, the identical second does not.
    let (_, h, b) = signed_request(&agent, "agent-3", &add_one(), &[("x-hero-context", "7")]);
    assert_eq!(send(&node, &h, b.clone()).await.status, 200);
    let replay = send(&node, &h, b).await;
    assert_eq!(replay.status, 401);
    assert!(
        replay.json()["error"]["message"].as_str().unwrap().contains("replay"),
        "{}",
        replay.json()
    );

    // Nothing but the one genuine call reached the target.
    let value = rpc(&node.rpc_sock(), "echo.counter.get", json!({})).await;
    assert_eq!(value["result"]["value"], 1, "{value}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_never_widen_and_keys_need_admin() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _executor = node.start(node.config()).await;
    let agent = key(6);
    enrol(&node, "agent-6", &agent, &["agent"], None).await;
    let admin = key(7);
    enrol(&node, "admin-7", &admin, &["executor.admin"], None).await;
    let as_agent = Client::new(node.rpc_sock()).with_signer(Signer::new("agent-6", agent.clone()));

    let widened = hero_headers(None, Some("agent,executor.admin"), None).unwrap();
    let seen = as_agent.rpc("echo.whoami", json!({}), widened.clone()).await.unwrap();
    assert_eq!(seen["claims"], "agent", "the header cannot add claims: {seen}");
    match as_agent.rpc("keys.list", json!({}), widened).await {
        Err(ClientError::Rpc { code: -32002, .. }) => {}
        other => panic!("keys.list without executor.admin: {other:?}"),
    }

    let as_admin = Client::new(node.rpc_sock()).with_signer(Signer::new("admin-7", admin));
    let listed = as_admin.rpc("keys.list", json!({}), HeaderMap::new()).await.unwrap();
    let ids: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["keyid"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["admin-7", "agent-6"]);
    let again = json!({"keyid": "agent-6", "public_key": b64_public(&key(8)), "claims": ["x"]});
    match as_admin.rpc("keys.add", again, HeaderMap::new()).await {
        Err(ClientError::Rpc { code: -32004, .. }) => {}
        other => panic!("a keyid is enrolled once: {other:?}"),
    }
    let pem = signature::public_key_pem(&key(9).verifying_key());
    let added = as_admin
        .rpc(
            "keys.add",
            json!({"keyid": "pem-key", "public_key": pem, "claims": ["*"], "note": "PEM works too"}),
            HeaderMap::new(),
        )
        .await
        .unwrap();
    assert_eq!(added["claims"], json!(["*"]));
    for bad in [
        json!({"keyid": "bad id", "public_key": b64_public(&key(10)), "claims": []}),
        json!({"keyid": "short-key", "public_key": "AAAA", "claims": []}),
        json!({"keyid": "k", "public_key": b64_public(&key(10)), "claims": ["a,b"]}),
    ] {
        match as_admin.rpc("keys.add", bad.clone(), HeaderMap::new()).await {
            Err(ClientError::Rpc { code: -32602, .. }) => {}
            other => panic!("{bad}: {other:?}"),
        }
    }

    // Revoking cuts the key off immediately.
    as_admin
        .rpc("keys.revoke", json!({"keyid": "agent-6"}), HeaderMap::new())
        .await
        .unwrap();
    match as_agent
        .rpc("echo.echo", json!({"message": "hi"}), HeaderMap::new())
        .await
    {
        Err(ClientError::Rpc { code: -32005, .. }) => {}
        other => panic!("a revoked key: {other:?}"),
    }

    // REST: the same keys, same rules.
    let rest = Client::new(node.rest_sock()).with_signer(Signer::new("pem-key", key(9)));
    let reply = rest
        .send(Method::GET, "/api/v1/keys", HeaderMap::new(), Vec::new())
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let reply = rest
        .send(Method::DELETE, "/api/v1/keys/nobody", HeaderMap::new(), Vec::new())
        .await
        .unwrap();
    assert_eq!(reply.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_callers_must_sign() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let mut config = node.config();
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    let executor = node.start(config).await;
    let agent = key(11);
    enrol(&node, "agent-11", &agent, &["agent"], None).await;

    let addr = executor.tcp.unwrap();
    let send_tcp = |headers: HeaderMap, body: Vec<u8>| async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut request = http::Request::post("/rpc");
        *request.headers_mut().unwrap() = headers;
        let response = sender
            .send_request(
                request
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    .unwrap(),
            )
            .await
            .unwrap();
        response.status()
    };
    let (_, headers, body) = signed_request(
        &agent,
        "agent-11",
        &json!({"jsonrpc": "2.0", "id": 1, "method": "echo.echo", "params": {"message": "tcp"}}),
        &[],
    );
    assert_eq!(send_tcp(headers.clone(), body.clone()).await, 200);
    let mut unsigned = HeaderMap::new();
    unsigned.insert("host", HeaderValue::from_static("localhost"));
    assert_eq!(send_tcp(unsigned, body).await, 401);
}

/// Signs a REST request for one method/path, then sends it as another.
async fn send_moved(
    node: &Node,
    key: &SigningKey,
    keyid: &str,
    signed_as: (&str, &str),
    sent_as: (&str, &str),
) -> Answer {
    let (method, path) = signed_as;
    let method: Method = method.parse().unwrap();
    let uri: Uri = path.parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("localhost"));
    Signer::new(keyid, key.clone())
        .sign(&method, &uri, &mut headers, b"", now())
        .unwrap();
    let pairs: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    http(&node.rest_sock(), sent_as.0, sent_as.1, &refs, bytes::Bytes::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_method_path_and_query_are_refused() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _executor = node.start(node.config()).await;
    let admin = key(12);
    enrol(&node, "admin-12", &admin, &["*"], None).await;
    let genuine = send_moved(
        &node,
        &admin,
        "admin-12",
        ("GET", "/api/v1/catalog?q=echo"),
        ("GET", "/api/v1/catalog?q=echo"),
    )
    .await;
    assert_eq!(genuine.status, 200, "{}", String::from_utf8_lossy(&genuine.body));
    for (what, signed_as, sent_as) in [
        (
            "@method",
            ("GET", "/api/v1/keys/admin-12"),
            ("DELETE", "/api/v1/keys/admin-12"),
        ),
        (
            "@path",
            ("GET", "/api/v1/catalog/echo.echo"),
            ("GET", "/api/v1/catalog/echo.sleep"),
        ),
        (
            "@query",
            ("GET", "/api/v1/catalog?q=echo"),
            ("GET", "/api/v1/catalog?q=counter"),
        ),
        (
            "@query added",
            ("GET", "/api/v1/catalog"),
            ("GET", "/api/v1/catalog?q=counter"),
        ),
    ] {
        let answer = send_moved(&node, &admin, "admin-12", signed_as, sent_as).await;
        assert_eq!(answer.status, 401, "{what}: {}", String::from_utf8_lossy(&answer.body));
        assert_eq!(answer.json()["code"], -32001, "{what}");
    }
    // The DELETE above never happened: the key is still enrolled and usable.
    let still = send_moved(
        &node,
        &admin,
        "admin-12",
        ("GET", "/api/v1/keys"),
        ("GET", "/api/v1/keys"),
    )
    .await;
    assert_eq!(still.json()["keys"][0]["revoked"], false);
}
