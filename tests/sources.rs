//! Sources beyond hero_* (DESIGN section 12) against real servers: the Swagger Petstore's
//! OpenAPI 3.0 document (from the npm package @readme/oas-examples) served by a Python
//! HTTP server that implements a few of its operations, and MCP servers built with the
//! official Python SDK (FastMCP) over stdio and Streamable HTTP.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use hero_executor::client::Client;
use http::HeaderMap;
use serde_json::{Value, json};

/// The published Petstore document, fetched once from the npm registry into `target/`.
fn petstore_spec() -> PathBuf {
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = FETCH.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-data/oas-examples-8.2.2");
    let spec = dir.join("package/3.0/yaml/petstore.yaml");
    if !spec.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let packed = Command::new("npm")
            .args(["pack", "--silent", "@readme/oas-examples@8.2.2"])
            .current_dir(&dir)
            .output()
            .expect("npm (the Petstore document comes from the npm registry)");
        assert!(
            packed.status.success(),
            "npm pack: {}",
            String::from_utf8_lossy(&packed.stderr)
        );
        let untar = Command::new("tar")
            .args(["xzf", "readme-oas-examples-8.2.2.tgz"])
            .current_dir(&dir)
            .status()
            .unwrap();
        assert!(untar.success() && spec.exists(), "{} not unpacked", spec.display());
    }
    spec
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sources").join(name)
}

/// Starts a Python server that prints `PORT <n>` when it listens.
fn python_server(args: &[&str], env: &[(&str, &str)]) -> (ChildGuard, u16) {
    let mut child = Command::new("python3")
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .unwrap_or_else(|| panic!("server did not start: {line:?}"))
        .parse()
        .unwrap();
    (ChildGuard(child), port)
}

const KEY: &str = "pk-7f3a9c1e-secret-value";

fn petstore(spec: &Path) -> (ChildGuard, u16) {
    python_server(
        &[script("petstore_server.py").to_str().unwrap(), spec.to_str().unwrap()],
        &[("PETSTORE_KEY", KEY)],
    )
}

/// A policy where agents run everything, deleting pets is denied, and adding one waits for ops.
const POLICY: &str = r#"
[[grant]]
claim = "agent"
capabilities = ["*"]

[[guard]]
capabilities = ["pets.deletePet"]
effect = "deny"
reason = "pets are not deleted through agents"

[[guard]]
capabilities = ["pets.addPet"]
effect = "require_approval"
approvers = ["ops"]
reason = "new pets need a human"
"#;

async fn call(client: &Client, capability: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": capability, "params": params});
    let reply = client
        .send(
            http::Method::POST,
            "/rpc",
            HeaderMap::new(),
            serde_json::to_vec(&body).unwrap(),
        )
        .await
        .unwrap();
    serde_json::from_slice(&reply.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openapi_source_is_called_under_policy_and_its_secret_is_found_nowhere() {
    let node = Node::new();
    let (_server, port) = petstore(&petstore_spec());
    let dir = node.tmp.path();
    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
    std::fs::write(
        dir.join("sources.toml"),
        format!(
            r#"
[[source]]
name = "pets"
kind = "openapi"
spec = "{}"
base_url = "http://127.0.0.1:{port}/v2"
timeout_ms = 10000
auth = {{ type = "header", name = "api_key", value = "env:PETSTORE_KEY" }}
"#,
            petstore_spec().display()
        ),
    )
    .unwrap();
    let mut command = node.daemon_command(&[
        "--sources",
        dir.join("sources.toml").to_str().unwrap(),
        "--policy",
        dir.join("policy.toml").to_str().unwrap(),
    ]);
    command.env("PETSTORE_KEY", KEY).env("RUST_LOG", "debug");
    let _daemon = ChildGuard(command.spawn().unwrap());
    let sock = node.rpc_sock();
    eventually("the daemon", || async {
        tokio::net::UnixStream::connect(&sock).await.is_ok()
    })
    .await;
    enrol(&node, "agent", &key(1), &["agent"], None).await;
    enrol(&node, "ops", &key(2), &["ops"], None).await;
    let agent = signed_client(&node, "agent", &key(1));
    let ops = signed_client(&node, "ops", &key(2));

    // Discovery: operations with their schemas and derived intent, in every catalog method.
    let names = capability_names(&sock).await;
    for name in [
        "pets.getPetById",
        "pets.addPet",
        "pets.findPetsByStatus",
        "pets.getUserByName",
    ] {
        assert!(names.contains(&name.to_owned()), "{name} missing from {names:?}");
    }
    assert!(
        !names.contains(&"pets.deletePet".to_owned()),
        "denied by policy: not listed"
    );
    let described = rpc(&sock, "catalog.describe", json!({"capability": "pets.getPetById"})).await["result"].clone();
    assert_eq!(described["x-hero-intent"]["side_effect_class"], "read");
    assert_eq!(described["params_schema"]["required"], json!(["petId"]));
    assert_eq!(described["summary"], "Find pet by ID");
    let add = rpc(&sock, "catalog.describe", json!({"capability": "pets.addPet"})).await["result"].clone();
    assert_eq!(add["x-hero-intent"]["idempotency"], "replay-unsafe");
    assert!(add["params_schema"]["properties"]["body"].is_object(), "{add}");
    let found = rpc(&sock, "catalog.search", json!({"query": "pet status"})).await;
    assert!(found.to_string().contains("pets.findPetsByStatus"), "{found}");
    let doc = rpc(&sock, "catalog.openrpc", json!({})).await["result"].clone();
    assert!(
        doc["components"]["schemas"]["pets.Pet"].is_object(),
        "components are prefixed"
    );
    let listed = rpc(&sock, "sources.list", json!({})).await["result"]["sources"][0].clone();
    assert_eq!(listed["status"], "ok", "{listed}");
    assert!(listed["operations"].to_string().contains("deletePet"), "{listed}");
    assert_eq!(
        listed["operations"].as_array().unwrap().len(),
        20,
        "every Petstore operation"
    );
    assert_eq!(listed["auth"]["value"], "env:PETSTORE_KEY");

    // Calls through JSON-RPC, REST and MCP.
    let pet = call(&agent, "pets.getPetById", json!({"petId": 1})).await;
    assert_eq!(pet["result"]["name"], "Rex", "{pet}");
    let rest = http(
        &node.rest_sock(),
        "POST",
        "/api/v1/execute/pets.findPetsByStatus",
        &[("content-type", "application/json")],
        json!({"status": ["available", "sold"]}).to_string(),
    )
    .await;
    assert_eq!(rest.status, 200, "{:?}", rest.body);
    assert_eq!(
        rest.json().as_array().map(Vec::len),
        Some(2),
        "a query array repeats the parameter"
    );
    let mcp = hero_executor::mcp_bridge::connect(
        &sock,
        Some(hero_executor::client::Signer::new("agent", key(1))),
        false,
        (),
    )
    .await
    .unwrap();
    let mut params = rmcp::model::CallToolRequestParams::new("execute");
    params.arguments = json!({"capability": "pets.getPetById", "params": {"petId": 2}})
        .as_object()
        .cloned();
    let through_mcp = mcp.peer().call_tool(params).await.unwrap();
    assert_eq!(through_mcp.structured_content.unwrap()["name"], "Tom");

    // Bad params never leave; target errors keep their status and an excerpt.
    let invalid = call(&agent, "pets.getPetById", json!({"petId": "one"})).await;
    assert_eq!(error_code(&invalid), -32602, "{invalid}");
    let missing = call(&agent, "pets.getPetById", json!({"petId": 404})).await;
    assert_eq!(error_code(&missing), -32023, "{missing}");
    assert_eq!(missing["error"]["data"]["status"], 404);
    assert!(
        missing["error"]["data"]["body"]
            .as_str()
            .unwrap()
            .contains("Pet not found")
    );
    let html = call(&agent, "pets.getPetById", json!({"petId": 700})).await;
    assert_eq!(error_code(&html), -32022, "{html}");
    // A path parameter stays one segment: it cannot climb to another operation, escaped
    // or not (a server or proxy may decode %2F and resolve ..).
    for climbing in ["../pet/1", "..", "x%2F..%2Fpet"] {
        let refused = call(&agent, "pets.getUserByName", json!({"username": climbing})).await;
        assert_eq!(error_code(&refused), -32602, "{climbing}: {refused}");
    }

    // Redirects: on the source's origin followed, to another host refused.
    let same = call(&agent, "pets.getPetById", json!({"petId": 301})).await;
    assert_eq!(same["result"]["name"], "Rex", "{same}");
    let elsewhere = call(&agent, "pets.getPetById", json!({"petId": 302})).await;
    assert_eq!(error_code(&elsewhere), -32022, "{elsewhere}");
    assert!(
        elsewhere["error"]["message"].as_str().unwrap().contains("another host"),
        "{elsewhere}"
    );

    // Policy: a denied operation and one held for approval.
    let denied = call(&agent, "pets.deletePet", json!({"petId": 2})).await;
    assert_eq!(error_code(&denied), -32002, "{denied}");
    let held = call(
        &agent,
        "pets.addPet",
        json!({"body": {"id": 7, "name": "Nemo", "photoUrls": []}}),
    )
    .await;
    assert_eq!(error_code(&held), -32010, "{held}");
    let run_id = held["error"]["data"]["run_id"].as_str().unwrap().to_owned();
    ops.rpc("runs.approve", json!({"run_id": run_id}), HeaderMap::new())
        .await
        .unwrap();
    let done = ops
        .rpc("runs.wait", json!({"run_id": run_id}), HeaderMap::new())
        .await
        .unwrap();
    assert_eq!(done["status"], "succeeded", "{done}");
    let nemo = call(&agent, "pets.getPetById", json!({"petId": 7})).await;
    assert_eq!(nemo["result"]["name"], "Nemo", "the approved call ran: {nemo}");

    // The key: sent to the target, redacted from what it echoed, and nowhere else.
    let leak = call(&agent, "pets.getPetById", json!({"petId": 999})).await;
    assert_eq!(leak["result"]["name"], "the key is [redacted]", "{leak}");
    let spoof = call(&agent, "pets.deletePet", json!({"petId": 1, "api_key": "guess"})).await;
    assert_eq!(error_code(&spoof), -32002);
    let runs = rpc(&sock, "runs.list", json!({"limit": 200})).await;
    let mut everything = vec![runs.to_string(), leak.to_string(), missing.to_string()];
    for method in ["catalog.list", "catalog.openrpc", "sources.list"] {
        everything.push(rpc(&sock, method, json!({})).await.to_string());
    }
    everything.push(String::from_utf8_lossy(&get(&sock, "/metrics").await.body).into_owned());
    everything.push(String::from_utf8_lossy(&get(&sock, "/health").await.body).into_owned());
    for run in runs["result"]["runs"].as_array().unwrap() {
        let id = run["id"].as_str().unwrap();
        everything.push(rpc(&sock, "runs.get", json!({"run_id": id})).await.to_string());
    }
    everything.push(node.daemon_log());
    assert!(
        node.daemon_log().contains("pets"),
        "the log is the daemon's (debug level)"
    );
    for text in &everything {
        assert!(
            !text.contains(KEY),
            "the secret leaked: {}",
            &text[..text.len().min(2000)]
        );
    }
}

/// An in-process executor with one OpenAPI source over a spec file this test controls.
async fn with_spec(node: &Node, spec: &Path, port: u16) -> Executor {
    let secret = node.tmp.path().join("key");
    std::fs::write(&secret, format!("{KEY}\n")).unwrap();
    let sources = node.tmp.path().join("sources.toml");
    std::fs::write(
        &sources,
        format!(
            "[[source]]\nname = \"pets\"\nkind = \"openapi\"\nspec = \"{}\"\nbase_url = \"http://127.0.0.1:{port}/v2\"\n\
             auth = {{ type = \"header\", name = \"api_key\", value = \"file:{}\" }}\n",
            spec.display(),
            secret.display()
        ),
    )
    .unwrap();
    let mut config = node.config();
    config.sources = Some(sources);
    node.start(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_added_to_the_spec_is_refused_until_an_admin_accepts_it() {
    let node = Node::new();
    let original: Value = serde_norway::from_str(&std::fs::read_to_string(petstore_spec()).unwrap()).unwrap();
    let spec = node.tmp.path().join("petstore.json");
    std::fs::write(&spec, original.to_string()).unwrap();
    let (_server, port) = petstore(&petstore_spec());
    let executor = with_spec(&node, &spec, port).await;
    let sock = node.rpc_sock();
    eventually("pets in the catalog", || async {
        capability_names(&sock).await.contains(&"pets.getPetById".to_owned())
    })
    .await;
    enrol(&node, "agent", &key(1), &["agent"], None).await;
    let agent = signed_client(&node, "agent", &key(1));
    // The file secret is read on use.
    assert_eq!(
        call(&agent, "pets.getPetById", json!({"petId": 1})).await["result"]["name"],
        "Rex"
    );

    // The spec grows an operation (and the file is reloaded).
    let mut grown = original.clone();
    grown["paths"]["/pet/{petId}/vaccinate"] = json!({"post": {
        "operationId": "vaccinatePet", "summary": "Vaccinate a pet",
        "parameters": [{"name": "petId", "in": "path", "required": true, "schema": {"type": "integer"}}],
        "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}}
    }});
    std::fs::write(&spec, grown.to_string()).unwrap();
    let reloaded = rpc(&sock, "sources.reload", json!({})).await;
    assert_eq!(reloaded["result"]["sources"], json!(["pets"]), "{reloaded}");
    let listed = rpc(&sock, "sources.list", json!({})).await["result"]["sources"][0].clone();
    assert_eq!(listed["status"], "changed", "{listed}");
    assert_eq!(listed["pending"], json!(["vaccinatePet"]));
    assert_ne!(listed["fingerprint"], listed["accepted"]["fingerprint"]);
    let described = rpc(&sock, "catalog.describe", json!({"capability": "pets.vaccinatePet"})).await;
    assert_eq!(described["result"]["new"], true, "listed, marked new: {described}");
    let refused = call(&agent, "pets.vaccinatePet", json!({"petId": 1})).await;
    assert_eq!(error_code(&refused), -32002, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("sources.accept"));
    let run = rpc(&sock, "runs.get", json!({"run_id": refused["error"]["data"]["run_id"]})).await;
    assert_eq!(run["result"]["status"], "denied", "the refusal is a run: {run}");
    // Operations that were accepted before still run.
    assert_eq!(
        call(&agent, "pets.getPetById", json!({"petId": 2})).await["result"]["name"],
        "Tom"
    );
    // Only an admin accepts, lists (secret references, paths, fingerprints) or reloads.
    for (method, params) in [
        ("sources.accept", json!({"name": "pets"})),
        ("sources.list", json!({})),
        ("sources.reload", json!({})),
    ] {
        let by_agent = agent.rpc(method, params, HeaderMap::new()).await;
        assert!(
            matches!(
                &by_agent,
                Err(hero_executor::client::ClientError::Rpc { code: -32002, .. })
            ),
            "{method}: {by_agent:?}"
        );
    }

    // An accept names what the admin reviewed; a fingerprint no longer served is refused.
    let stale = rpc(
        &sock,
        "sources.accept",
        json!({"name": "pets", "fingerprint": "0".repeat(64)}),
    )
    .await;
    assert_eq!(error_code(&stale), -32004, "{stale}");
    let reviewed = listed["fingerprint"].as_str().unwrap();
    let accepted = http(
        &node.rest_sock(),
        "POST",
        "/api/v1/sources/pets/accept",
        &[("content-type", "application/json")],
        json!({"fingerprint": reviewed}).to_string(),
    )
    .await;
    assert_eq!(accepted.status, 200, "{:?}", accepted.body);
    assert_eq!(accepted.json()["newly_accepted"], json!(["vaccinatePet"]));
    assert_eq!(accepted.json()["status"], "ok");
    let vaccinated = call(&agent, "pets.vaccinatePet", json!({"petId": 1})).await;
    assert_eq!(vaccinated["result"], json!({"vaccinated": 1}), "{vaccinated}");

    // What was accepted survives a restart.
    executor.stop().await;
    let _executor = with_spec(&node, &spec, port).await;
    eventually("pets again", || async {
        capability_names(&sock).await.contains(&"pets.vaccinatePet".to_owned())
    })
    .await;
    let agent = signed_client(&node, "agent", &key(1));
    assert_eq!(
        call(&agent, "pets.vaccinatePet", json!({"petId": 2})).await["result"]["vaccinated"],
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_3_1_document_is_served_and_intents_are_overridden() {
    let node = Node::new();
    let spec31 = petstore_spec().parent().unwrap().join("../../3.1/yaml/petstore.yaml");
    let (_server, port) = petstore(&petstore_spec());
    let secret = node.tmp.path().join("key");
    std::fs::write(&secret, KEY).unwrap();
    let sources = node.tmp.path().join("sources.toml");
    std::fs::write(
        &sources,
        format!(
            "[[source]]\nname = \"pets\"\nkind = \"openapi\"\nspec = \"{}\"\nbase_url = \"http://127.0.0.1:{port}/v2\"\n\
             auth = {{ type = \"header\", name = \"api_key\", value = \"file:{}\" }}\n\
             [source.operations.getPetById]\nintent = {{ audience_scope = \"self\" }}\n\
             [source.operations.findPetsByStatus]\nintent = {{ side_effect_class = \"admin\" }}\n",
            spec31.display(),
            secret.display()
        ),
    )
    .unwrap();
    let mut config = node.config();
    config.sources = Some(sources);
    let _executor = node.start(config).await;
    let sock = node.rpc_sock();
    eventually("pets", || async {
        capability_names(&sock).await.contains(&"pets.getPetById".to_owned())
    })
    .await;
    let described = rpc(&sock, "catalog.describe", json!({"capability": "pets.getPetById"})).await["result"].clone();
    assert_eq!(
        described["x-hero-intent"]["audience_scope"], "self",
        "overridden: {described}"
    );
    assert_eq!(
        described["x-hero-intent"]["side_effect_class"], "read",
        "the rest derived"
    );
    assert_eq!(
        rpc(&sock, "pets.getPetById", json!({"petId": 2})).await["result"]["name"],
        "Tom"
    );
    // An override to admin puts the operation under the default policy's admin guard.
    let held = rpc(&sock, "pets.findPetsByStatus", json!({"status": ["sold"]})).await;
    assert_eq!(error_code(&held), -32010, "{held}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_sources_file_is_refused_with_its_lines_and_the_running_one_stays() {
    let node = Node::new();
    let (_server, port) = petstore(&petstore_spec());
    let _echo = node.spawn_echo("echo");
    let _executor = with_spec(&node, &petstore_spec(), port).await;
    let sock = node.rpc_sock();
    eventually("pets", || async {
        capability_names(&sock).await.contains(&"pets.getPetById".to_owned())
    })
    .await;

    let bad = format!(
        "[[source]]\nname = \"pets\"\nkind = \"openapi\"\nspec = \"/nonexistent.yaml\"\nbase_url = \"http://127.0.0.1:{port}/v2\"\n\
         \n[[source]]\nname = \"echo\"\nkind = \"mcp\"\ncommand = \"true\"\n\
         \n[[source]]\nname = \"x\"\nkind = \"openapi\"\nspec = \"s.yaml\"\nbase_url = \"ftp://host\"\nauth = {{ type = \"bearer\", token = \"plain-text-token\" }}\n"
    );
    let file = node.tmp.path().join("sources.toml");
    std::fs::write(&file, bad).unwrap();
    let refused = rpc(&sock, "sources.reload", json!({})).await;
    assert_eq!(error_code(&refused), -32602, "{refused}");
    let details: Vec<String> = refused["error"]["data"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["message"].as_str().unwrap().to_owned())
        .collect();
    let shown = file.display().to_string();
    let expect = [
        format!("{shown}:16: \"ftp://host\""),
        format!("{shown}:17: auth: token:"),
    ];
    for e in &expect {
        assert!(details.iter().any(|d| d.starts_with(e)), "{e} not in {details:#?}");
    }
    assert!(
        !refused.to_string().contains("plain-text-token"),
        "a literal secret is not echoed"
    );
    // Fixed syntax, then the checks that need the node: a missing spec and a hero name.
    let bad = format!(
        "[[source]]\nname = \"pets\"\nkind = \"openapi\"\nspec = \"/nonexistent.yaml\"\nbase_url = \"http://127.0.0.1:{port}/v2\"\n\
         \n[[source]]\nname = \"echo\"\nkind = \"mcp\"\ncommand = \"true\"\n"
    );
    std::fs::write(&file, bad).unwrap();
    let refused = rpc(&sock, "sources.reload", json!({})).await.to_string();
    assert!(
        refused.contains(&format!("{shown}:1: pets: spec /nonexistent.yaml")),
        "{refused}"
    );
    assert!(
        refused.contains(&format!("{shown}:7: echo: a hero service of that name exists")),
        "{refused}"
    );
    // The running sources are untouched.
    let pet = rpc(&sock, "pets.getPetById", json!({"petId": 1})).await;
    assert_eq!(pet["result"]["name"], "Rex", "{pet}");

    // At start, the same file stops the daemon with every error.
    let other = Node::new();
    let output = other
        .daemon_command(&["--sources", file.to_str().unwrap()])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("{shown}:1: pets: spec")), "{stderr}");
}

fn mcp_sources(node: &Node, body: &str) -> PathBuf {
    let file = node.tmp.path().join("sources.toml");
    std::fs::write(&file, body).unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_stdio_source_is_supervised_and_its_secret_redacted() {
    let node = Node::new();
    let token = node.tmp.path().join("token");
    std::fs::write(&token, "notes-token-5b1d0c").unwrap();
    let file = mcp_sources(
        &node,
        &format!(
            "[[source]]\nname = \"notes\"\nkind = \"mcp\"\ncommand = \"sh\"\n\
             args = [\"-c\", \"python3 {} stdio {}\"]\nsecret_env = {{ NOTES_TOKEN = \"file:{}\" }}\n",
            script("mcp_server.py").display(),
            node.tmp.path().display(),
            token.display()
        ),
    );
    let mut config = node.config();
    config.sources = Some(file);
    let _executor = node.start(config).await;
    let sock = node.rpc_sock();
    eventually("notes tools", || async {
        capability_names(&sock).await.contains(&"notes.add".to_owned())
    })
    .await;

    let add = rpc(&sock, "catalog.describe", json!({"capability": "notes.add"})).await["result"].clone();
    assert_eq!(add["x-hero-intent"]["side_effect_class"], "read", "readOnlyHint: {add}");
    assert_eq!(add["params_schema"]["required"], json!(["a", "b"]));
    let create = rpc(&sock, "catalog.describe", json!({"capability": "notes.create_note"})).await["result"].clone();
    assert_eq!(
        create["x-hero-intent"]["side_effect_class"], "mutate-self",
        "destructiveHint false"
    );
    let sum = rpc(&sock, "notes.add", json!({"a": 2, "b": 3})).await;
    assert_eq!(sum["result"]["result"], 5, "structured content: {sum}");
    let rest = http(
        &node.rest_sock(),
        "POST",
        "/api/v1/execute/notes.create_note",
        &[("content-type", "application/json")],
        json!({"text": "buy milk"}).to_string(),
    )
    .await;
    // Without structured content, the answer is the tool's content blocks.
    let text = rest.json()["content"][0]["text"].as_str().map(str::to_owned);
    assert!(text.is_some_and(|t| t.contains("buy milk")), "{:?}", rest.body);
    let mcp = hero_executor::mcp_bridge::connect(&sock, None, false, ())
        .await
        .unwrap();
    let mut params = rmcp::model::CallToolRequestParams::new("execute");
    params.arguments = json!({"capability": "notes.add", "params": {"a": 40, "b": 2}})
        .as_object()
        .cloned();
    let through_mcp = mcp.peer().call_tool(params).await.unwrap();
    assert_eq!(through_mcp.structured_content.unwrap()["result"], 42, "through MCP");
    let invalid = rpc(&sock, "notes.add", json!({"a": "two"})).await;
    assert_eq!(error_code(&invalid), -32602, "validated before it is sent: {invalid}");
    let failed = rpc(&sock, "notes.fail", json!({"reason": "out of ink"})).await;
    assert_eq!(error_code(&failed), -32023, "{failed}");
    assert!(
        failed["error"]["message"].as_str().unwrap().contains("out of ink"),
        "{failed}"
    );
    let leak = rpc(&sock, "notes.whoami", json!({})).await.to_string();
    assert!(leak.contains("my token is [redacted]"), "{leak}");
    let runs = rpc(&sock, "runs.list", json!({"limit": 100})).await.to_string();
    assert!(!leak.contains("notes-token-5b1d0c") && !runs.contains("notes-token-5b1d0c"));

    // The child dies; the call that killed it fails; the executor starts it again.
    let crashed = rpc(&sock, "notes.crash", json!({})).await;
    assert!(crashed.get("error").is_some(), "{crashed}");
    eventually("notes restarted", || async {
        rpc(&sock, "notes.add", json!({"a": 1, "b": 1})).await["result"]["result"] == 2
    })
    .await;
    let listed = rpc(&sock, "sources.list", json!({})).await["result"]["sources"][0].clone();
    assert!(listed["connection"]["restarts"].as_u64().unwrap() >= 1, "{listed}");
    assert_eq!(listed["connection"]["connected"], true);

    // Removed from the file: the server (started through a shell) is stopped whole.
    let tag = node.tmp.path().display().to_string();
    let running = || {
        let out = Command::new("pgrep")
            .args(["-f", &format!("mcp_server.py stdio {tag}")])
            .output()
            .unwrap();
        !out.stdout.is_empty()
    };
    assert!(running(), "the server runs under sh");
    std::fs::write(node.tmp.path().join("sources.toml"), "").unwrap();
    let reloaded = rpc(&sock, "sources.reload", json!({})).await;
    assert_eq!(reloaded["result"]["sources"], json!([]), "{reloaded}");
    eventually("the MCP server stopped", || async { !running() }).await;
    let gone = rpc(&sock, "notes.add", json!({"a": 1, "b": 1})).await;
    assert_eq!(error_code(&gone), -32020, "{gone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_streamable_http_source_is_called_from_every_surface() {
    let node = Node::new();
    let (_server, port) = python_server(&[script("mcp_server.py").to_str().unwrap(), "http"], &[]);
    let file = mcp_sources(
        &node,
        &format!("[[source]]\nname = \"remote\"\nkind = \"mcp\"\nurl = \"http://127.0.0.1:{port}/mcp\"\n"),
    );
    let mut config = node.config();
    config.sources = Some(file);
    // One call in flight to a target, a source as a hero service.
    config.max_per_target = 1;
    let _executor = node.start(config).await;
    let sock = node.rpc_sock();
    eventually("remote tools", || async {
        capability_names(&sock).await.contains(&"remote.add".to_owned())
    })
    .await;
    enrol(&node, "agent", &key(1), &["agent"], None).await;
    let agent = signed_client(&node, "agent", &key(1));
    assert_eq!(
        call(&agent, "remote.add", json!({"a": 20, "b": 22})).await["result"]["result"],
        42
    );
    // While a slow call holds the source's one place, the next waits for it (the server
    // itself would answer at once).
    let slow = {
        let agent = signed_client(&node, "agent", &key(1));
        tokio::spawn(async move { call(&agent, "remote.sleep", json!({"ms": 1000})).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let quick = call(&agent, "remote.add", json!({"a": 1, "b": 1})).await;
    assert_eq!(quick["result"]["result"], 2, "{quick}");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(500),
        "it waited for the slow call: {:?}",
        started.elapsed()
    );
    assert_eq!(slow.await.unwrap()["result"]["result"], 1000);
    let mcp = hero_executor::mcp_bridge::connect(
        &sock,
        Some(hero_executor::client::Signer::new("agent", key(1))),
        true,
        (),
    )
    .await
    .unwrap();
    let tools: Vec<String> = mcp
        .peer()
        .list_all_tools()
        .await
        .unwrap()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    let add = tools
        .iter()
        .find(|t| t.contains("remote") && t.contains("add"))
        .unwrap_or_else(|| panic!("{tools:?}"));
    let mut params = rmcp::model::CallToolRequestParams::new(add.clone());
    params.arguments = json!({"a": 1, "b": 2}).as_object().cloned();
    let through_mcp = mcp.peer().call_tool(params).await.unwrap();
    assert_eq!(
        through_mcp.structured_content.unwrap()["result"],
        3,
        "a direct MCP tool"
    );
    let rest = http(
        &node.rest_sock(),
        "POST",
        "/api/v1/execute/remote.create_note",
        &[("content-type", "application/json")],
        json!({"text": "over http"}).to_string(),
    )
    .await;
    assert_eq!(rest.status, 200, "{:?}", rest.body);
}
