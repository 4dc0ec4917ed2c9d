//! Micro-benchmarks of the core's hot paths (`make microbench`):
//! signature verification and answer signing, a policy decision over 1,000 rules, catalog
//! search over 10,000 capabilities (and what a caller may see of them under that policy),
//! run insert throughput (group commit), and filtered run listing on a table of 1,000,000
//! rows.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hero_executor::catalog::spec::parse_service;
use hero_executor::catalog::{HeroIntent, Snapshot};
use hero_executor::db::Db;
use hero_executor::dispatch::VisibilityCache;
use hero_executor::identity::registry::{NewKey, Registry};
use hero_executor::identity::respond::ServerKey;
use hero_executor::identity::signature;
use hero_executor::identity::verify::{SignatureRules, Verifier};
use hero_executor::intent::{Caller, Claims, Principal};
use hero_executor::policy::{Policy, Subject};
use hero_executor::runs::store::{ListFilter, RunStore};
use hero_executor::runs::{Run, RunStatus};
use http::{HeaderMap, Method, Uri};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn signature_verification(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("bench.db")).unwrap();
    let registry = Arc::new(Registry::load(db).unwrap());
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let public = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        key.verifying_key().as_bytes(),
    );
    rt.block_on(registry.add(NewKey {
        keyid: "bench".into(),
        public_key: public,
        claims: vec!["agent".into()],
        contexts: None,
        note: None,
    }))
    .unwrap();
    // No nonce, so the same signed request verifies every iteration.
    let rules = SignatureRules {
        require_nonce: false,
        ..SignatureRules::default()
    };
    let verifier = Verifier::new(registry, rules);
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"echo.echo","params":{"message":"hello"}}"#;
    let uri: Uri = "/rpc".parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("host", "localhost".parse().unwrap());
    headers.insert("x-hero-context", "3".parse().unwrap());
    // Signed without a nonce (the replay cache would refuse the second iteration otherwise).
    headers.insert("content-digest", signature::content_digest(body).parse().unwrap());
    let components = ["\"@method\"", "\"@path\"", "\"content-digest\"", "\"x-hero-context\""];
    let inner = signature::params_inner_list(&components, hero_executor::now_unix(), None, None, "bench").unwrap();
    let line = signature::serialize_inner_list(&inner).unwrap();
    let view = signature::MessageView::request(&Method::POST, &uri, &headers);
    let base = signature::signature_base(&view, None, &inner.items, &line).unwrap();
    let sig = signature::sign_ed25519(&key, &base);
    headers.insert("signature-input", format!("sig1={line}").parse().unwrap());
    headers.insert(
        "signature",
        format!("sig1={}", signature::byte_sequence(&sig)).parse().unwrap(),
    );
    c.bench_function("verify a signed request (parse, digest, base, Ed25519)", |b| {
        b.iter(|| {
            verifier
                .verify(&Method::POST, &uri, &headers, body, hero_executor::now_unix(), None)
                .unwrap()
                .principal
        })
    });

    // What the executor adds to the answer of that request (identity/respond.rs).
    let server = ServerKey::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
    let answer = br#"{"jsonrpc":"2.0","id":1,"result":{"message":"hello"}}"#;
    let request = signature::MessageView::request(&Method::POST, &uri, &headers);
    c.bench_function("sign an answer (digest, base with ;req, Ed25519)", |b| {
        b.iter(|| {
            let (mut parts, ()) = http::Response::builder()
                .header("content-type", "application/json")
                .body(())
                .unwrap()
                .into_parts();
            server.sign_answer(&request, Some("sig1"), &mut parts, answer).unwrap();
            black_box(parts)
        })
    });
}

/// A policy of 1,000 rules (grants and approval guards) that lets `agent` run `echo.*`.
fn big_policy() -> Policy {
    let mut text = String::new();
    for i in 0..999 {
        match i % 2 {
            0 => text.push_str(&format!("[[grant]]\nclaim = \"team{i}\"\ncapabilities = [\"svc{i}.*\", \"shared.m{i}\"]\n\n")),
            _ => text.push_str(&format!(
                "[[guard]]\ncapabilities = [\"svc{i}.admin.*\"]\nside_effect = [\"admin\"]\neffect = \"require_approval\"\napprovers = [\"ops{i}\"]\n\n"
            )),
        }
    }
    text.push_str("[[grant]]\nclaim = \"agent\"\ncapabilities = [\"echo.*\"]\n");
    let policy = Policy::parse(&text, "bench.toml").unwrap();
    assert_eq!(policy.rule_count(), 1000);
    policy
}

fn policy_decision(c: &mut Criterion) {
    let policy = big_policy();
    let claims = Claims::parse("agent").unwrap();
    let subject = Subject {
        principal: "bench",
        claims: &claims,
        ceiling: &claims,
        context: 0,
    };
    c.bench_function("policy decision, 1,000 rules", |b| {
        b.iter(|| black_box(policy.decide(subject, black_box("echo.counter.add"), &HeroIntent::UNDECLARED)))
    });
}

/// 100 services of 100 capabilities each.
fn big_catalog() -> Snapshot {
    let mut snapshot = Snapshot::default();
    for s in 0..100 {
        let methods: Vec<serde_json::Value> = (0..100)
            .map(|m| serde_json::json!({"name": format!("group{}.method{m}", m % 7), "summary": format!("does thing {m} for area {s}"),
                                         "description": "a longer description with words like search, books, agent and chat",
                                         "params": [{"name": "q", "schema": {"type": "string"}}]}))
            .collect();
        let doc = serde_json::json!({"openrpc": "1.3.2", "info": {"title": "t", "version": "1"}, "methods": methods})
            .to_string();
        let name = format!("svc{s}");
        snapshot.services.insert(
            name.clone(),
            Arc::new(parse_service(&name, &doc, String::new(), &Default::default()).unwrap()),
        );
    }
    assert_eq!(snapshot.capabilities().count(), 10_000);
    snapshot
}

fn catalog_search(c: &mut Criterion) {
    let snapshot = big_catalog();
    c.bench_function("catalog search, 10,000 capabilities", |b| {
        b.iter(|| black_box(snapshot.search(black_box("method42 books"), None, 20, |_| true)))
    });

    // What catalog.list|search and MCP tool lists filter by: the capabilities policy lets
    // the caller see. Deciding it (cold) is one policy decision per capability; after that
    // it is cached per subject until the catalog or the policy changes.
    let policy = big_policy();
    let caller = Caller {
        principal: Principal {
            id: "bench".into(),
            ceiling: Claims::All,
            contexts: None,
        },
        context: 0,
        claims: Claims::parse("team0,team2,team4").unwrap(),
        user: None,
        request_id: String::new(),
        traceparent: None,
        relayed: false,
    };
    c.bench_function("catalog visibility, 10,000 capabilities, 1,000 rules (cold)", |b| {
        b.iter(|| black_box(VisibilityCache::default().get(&policy, &caller, &snapshot)))
    });
    let cache = VisibilityCache::default();
    c.bench_function(
        "catalog search, 10,000 capabilities, as a caller (cached visibility)",
        |b| {
            b.iter(|| {
                let visible = cache.get(&policy, &caller, &snapshot);
                black_box(snapshot.search(black_box("method42 books"), None, 20, |c| visible.contains(c)))
            })
        },
    );
}

fn run(id: String, i: usize) -> Run {
    Run {
        id,
        parent_id: None,
        replay_of: None,
        cancelled_by: None,
        trace: None,
        name: format!("svc{}.method{}", i % 20, i % 7),
        surface: hero_executor::intent::Surface::Openrpc,
        principal: format!("agent{}", i % 50),
        chain: vec![format!("agent{}", i % 50)],
        context: 0,
        claims: vec!["agent".into()],
        service: format!("svc{}", i % 20),
        method: format!("method{}", i % 7),
        input_sha256: "0".repeat(64),
        input: Some(r#"{"message":"hello"}"#.into()),
        input_truncated: false,
        idempotency_key: None,
        decision: hero_executor::policy::Verdict::Allow,
        rule: None,
        approvers: vec![],
        status: [RunStatus::Succeeded, RunStatus::Failed, RunStatus::Denied][i % 3],
        result: Some(r#"{"message":"hello"}"#.into()),
        result_truncated: false,
        error: None,
        approver: None,
        decision_note: None,
        created_at: hero_executor::runs::now_ms(),
        started_at: None,
        finished_at: None,
        expires_at: None,
    }
}

fn run_store(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let store = Arc::new(RunStore::open(&path, Db::open(&path).unwrap()).unwrap());
    let mut group = c.benchmark_group("run store");
    group.throughput(Throughput::Elements(256));
    group.bench_function(
        BenchmarkId::new("insert, 256 concurrent writers (group commit)", 256),
        |b| {
            b.to_async(&rt).iter(|| {
                let store = store.clone();
                async move {
                    let writes = (0..256).map(|i| store.insert(run(uuid::Uuid::now_v7().to_string(), i)));
                    futures::future::join_all(writes)
                        .await
                        .into_iter()
                        .for_each(|r| r.unwrap());
                }
            })
        },
    );
    group.finish();

    // Listing on a table of 1,000,000 rows, filled directly for speed.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("million.db");
    let db = Db::open(&path).unwrap();
    db.call_blocking(|conn| {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO runs (id, name, surface, principal, chain, context, claims, service, method, input_sha256,
                 decision, approvers, status, created_at) VALUES (?1, ?2, 'openrpc', ?3, '[]', 0, 'agent', ?4, ?5, '', 'allow', '[]', ?6, ?7)",
            )?;
            let start = hero_executor::runs::now_ms() - 1_000_000;
            for i in 0..1_000_000usize {
                let ts = uuid::Timestamp::from_unix(uuid::NoContext, ((start + i as i64) / 1000) as u64, (((start + i as i64) % 1000) * 1_000_000) as u32);
                let r = run(uuid::Uuid::new_v7(ts).to_string(), i);
                stmt.execute(rusqlite::params![r.id, r.name, r.principal, r.service, r.method, r.status.as_str(), start + i as i64])?;
            }
        }
        tx.commit()
    })
    .unwrap();
    let store = RunStore::open(&path, db).unwrap();
    let mut group = c.benchmark_group("run listing, 1,000,000 rows");
    for (what, filter) in [
        (
            "newest 50",
            ListFilter {
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "status=failed, 50",
            ListFilter {
                status: Some(RunStatus::Failed),
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "capability + principal, 50",
            ListFilter {
                capability: Some("svc3.method3".into()),
                principal: Some("agent3".into()),
                limit: 50,
                ..Default::default()
            },
        ),
        (
            "status + capability + since, 50",
            ListFilter {
                status: Some(RunStatus::Denied),
                capability: Some("svc5.method5".into()),
                since: Some(hero_executor::runs::now_ms() - 500_000),
                limit: 50,
                ..Default::default()
            },
        ),
    ] {
        group.bench_function(what, |b| b.to_async(&rt).iter(|| store.list(filter.clone())));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = signature_verification, policy_decision, catalog_search, run_store
}
criterion_main!(benches);
