//! A small hero-convention service to try hero_executor with before any real hero_*
//! service is installed.
//!
//! It serves `<socket_dir>/<name>/rpc.sock` (default name `echo`) with `GET /health`,
//! `GET /.well-known/heroservice.json`, `GET /openrpc.json` and JSON-RPC on `POST /rpc`,
//! and declares `x-hero-intent` on every method. Methods:
//!
//! - `echo {message, ...}`: returns its params unchanged.
//! - `whoami`: the hero headers the call arrived with (context, claims, user, run id, trace).
//! - `sleep {ms}`: answers after `ms` milliseconds.
//! - `fail {code?, message?, data?}`: answers with that JSON-RPC error.
//! - `counter.add {amount}` / `counter.get` / `counter.reset`: a little in-memory state.
//!
//! Run: `cargo run --example echo_service -- [--name echo] [--socket-dir DIR]`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// The executor's allocator, so `make bench` compares the same stack.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Service {
    name: String,
    spec: String,
    counter: AtomicI64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut name = "echo".to_owned();
    let mut socket_dir: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--name" => name = args.next().ok_or("--name needs a value")?,
            "--socket-dir" => socket_dir = Some(args.next().ok_or("--socket-dir needs a value")?.into()),
            "-h" | "--help" => {
                println!("echo_service [--name NAME] [--socket-dir DIR]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    if !hero_executor::intent::is_service_name(&name) {
        return Err(format!("invalid service name {name:?}: must match ^[a-z][a-z0-9_]*$").into());
    }
    let socket_dir = hero_executor::config::default_socket_dir(socket_dir.as_deref())?;
    let dir = socket_dir.join(&name);
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("rpc.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)?;

    let service = Arc::new(Service {
        spec: serde_json::to_string_pretty(&spec(&name))?,
        name,
        counter: AtomicI64::new(0),
    });
    let app = Router::new()
        .route(
            "/health",
            get(|State(s): State<Arc<Service>>| async move {
                axum::Json(json!({"status": "ok", "service": s.name, "version": "0.1.0"}))
            }),
        )
        .route(
            "/.well-known/heroservice.json",
            get(|State(s): State<Arc<Service>>| async move {
                axum::Json(json!({
                    "protocol": "openrpc", "name": s.name, "title": "Echo example service",
                    "version": "0.1.0", "description": "hero_executor's example service", "socket": "rpc",
                }))
            }),
        )
        .route(
            "/openrpc.json",
            get(|State(s): State<Arc<Service>>| async move {
                ([(header::CONTENT_TYPE, "application/json")], s.spec.clone())
            }),
        )
        .route("/rpc", post(rpc))
        .with_state(service);

    println!("echo_service: listening on {}", socket.display());
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    axum::serve(listener, app).with_graceful_shutdown(stop).await?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

async fn rpc(State(s): State<Arc<Service>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return reply(json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "parse error"}}));
    };
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let params = request.get("params").cloned().unwrap_or(json!({}));
    let method = request.get("method").and_then(Value::as_str).unwrap_or_default();
    let result = match method {
        "rpc.discover" => Ok(serde_json::from_str::<Value>(&s.spec).unwrap_or(Value::Null)),
        "echo" => Ok(params),
        "whoami" => {
            let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            Ok(json!({
                "context": h("x-hero-context"), "claims": h("x-hero-claims"), "user": h("x-hero-user"),
                "run_id": h("x-hero-run-id"), "traceparent": h("traceparent"),
            }))
        }
        "sleep" => {
            let ms = params.get("ms").and_then(Value::as_u64).unwrap_or(0).min(600_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json!({"slept_ms": ms}))
        }
        "fail" => Err(json!({
            "code": params.get("code").and_then(Value::as_i64).unwrap_or(-32000),
            "message": params.get("message").and_then(Value::as_str).unwrap_or("failed on request"),
            "data": params.get("data").cloned().unwrap_or(Value::Null),
        })),
        "counter.add" => {
            let amount = params.get("amount").and_then(Value::as_i64).unwrap_or(0);
            Ok(json!({"value": s.counter.fetch_add(amount, Ordering::SeqCst) + amount}))
        }
        "counter.get" => Ok(json!({"value": s.counter.load(Ordering::SeqCst)})),
        "counter.reset" => Ok(json!({"value": s.counter.swap(0, Ordering::SeqCst)})),
        other => Err(json!({"code": -32601, "message": format!("method not found: {other}")})),
    };
    if request.get("id").is_none() {
        return StatusCode::NO_CONTENT.into_response();
    }
    reply(match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(error) => json!({"jsonrpc": "2.0", "id": id, "error": error}),
    })
}

fn reply(body: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The service's OpenRPC document, with `x-hero-intent` on every method.
fn spec(name: &str) -> Value {
    let intent = |side_effect: &str, idempotency: &str| {
        json!({"side_effect_class": side_effect, "audience_scope": "self",
               "identity_requirement": "enrolled-user", "idempotency": idempotency})
    };
    json!({
        "openrpc": "1.3.2",
        "info": {"title": format!("{name} (hero_executor example service)"), "version": "0.1.0"},
        "methods": [
            {"name": "echo", "summary": "Return the params unchanged",
             "description": "Echoes back whatever params it is given. Useful to check a path end to end.",
             "paramStructure": "by-name",
             "params": [{"name": "message", "required": true, "schema": {"type": "string", "maxLength": 10000}}],
             "result": {"name": "echo", "schema": {"type": "object"}},
             "x-hero-intent": intent("read", "safe")},
            {"name": "whoami", "summary": "Show the hero headers this call arrived with",
             "description": "Returns X-Hero-Context, X-Hero-Claims, X-Hero-User, X-Hero-Run-Id and traceparent as received.",
             "params": [], "result": {"name": "headers", "schema": {"type": "object"}},
             "x-hero-intent": intent("read", "safe")},
            {"name": "sleep", "summary": "Answer after a delay",
             "description": "Waits `ms` milliseconds (at most 600000), then answers. Use it to see timeouts and cancellation.",
             "paramStructure": "by-name",
             "params": [{"name": "ms", "required": true, "schema": {"type": "integer", "minimum": 0, "maximum": 600000}}],
             "result": {"name": "slept", "schema": {"type": "object", "properties": {"slept_ms": {"type": "integer"}}}},
             "x-hero-intent": intent("read", "safe")},
            {"name": "fail", "summary": "Answer with a JSON-RPC error",
             "description": "Always fails, with the given code, message and data.",
             "paramStructure": "by-name",
             "params": [{"name": "code", "schema": {"type": "integer"}},
                        {"name": "message", "schema": {"type": "string"}},
                        {"name": "data", "description": "any JSON value", "schema": {}}],
             "errors": [{"code": -32000, "message": "failed on request"}],
             "x-hero-intent": intent("read", "safe")},
            {"name": "counter.add", "summary": "Add to the in-memory counter",
             "description": "Adds `amount` to a counter kept in memory and returns the new value. Not safe to replay.",
             "paramStructure": "by-name",
             "params": [{"name": "amount", "required": true, "schema": {"$ref": "#/components/schemas/Amount"}}],
             "result": {"name": "counter", "schema": {"$ref": "#/components/schemas/Counter"}},
             "x-hero-intent": intent("mutate-self", "replay-unsafe")},
            {"name": "counter.get", "summary": "Read the counter",
             "params": [], "result": {"name": "counter", "schema": {"$ref": "#/components/schemas/Counter"}},
             "x-hero-intent": intent("read", "safe")},
            {"name": "counter.reset", "summary": "Reset the counter to zero",
             "description": "Administrative: resets the counter and returns the value it had.",
             "params": [], "result": {"name": "counter", "schema": {"$ref": "#/components/schemas/Counter"}},
             "x-hero-intent": intent("admin", "replay-safe")}
        ],
        "components": {"schemas": {
            "Amount": {"type": "integer", "minimum": -1000000, "maximum": 1000000},
            "Counter": {"type": "object", "properties": {"value": {"type": "integer"}}, "required": ["value"]}
        }}
    })
}
