//! REST surface on rest.sock (DESIGN section 4). Every handler turns the HTTP request
//! into the same [`Command`] the OpenRPC surface would parse, so both share one path
//! through the dispatcher. Errors are `application/problem+json` (RFC 9457).

pub mod events;
mod runs;

use std::sync::OnceLock;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use http::{HeaderMap, header};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::openrpc::idempotency_key;
use crate::AppState;
use crate::command::{CatalogList, CatalogSearch, Command, Describe, Execute, KeyRef, NewKey, SourceRef};
use crate::error::render::{Problem, problem, problem_for_run};
use crate::error::{ExecError, Failure, ParamError};
use crate::intent::{Caller, Outcome, Surface};

/// The REST routes and the generated OpenAPI document.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/execute/{capability}", post(execute))
        .route("/api/v1/catalog", get(catalog))
        .route("/api/v1/catalog/{capability}", get(describe))
        .route("/api/v1/keys", get(keys_list).post(keys_add))
        .route("/api/v1/keys/{keyid}", delete(keys_revoke))
        .route("/api/v1/runs", get(runs::list))
        .route("/api/v1/runs/{id}", get(runs::get))
        .route("/api/v1/runs/{id}/wait", get(runs::wait))
        .route("/api/v1/runs/{id}/approve", post(runs::approve))
        .route("/api/v1/runs/{id}/reject", post(runs::reject))
        .route("/api/v1/runs/{id}/cancel", post(runs::cancel))
        .route("/api/v1/events", get(events::stream))
        .route("/api/v1/policy", get(runs::policy))
        .route("/api/v1/policy/explain", post(runs::explain))
        .route("/api/v1/scripts/run", post(script_run))
        .route("/api/v1/interface", get(interface))
        .route("/api/v1/sources", get(sources_list))
        .route("/api/v1/sources/reload", post(sources_reload))
        .route("/api/v1/sources/{name}/accept", post(sources_accept))
        .route("/openapi.json", get(openapi_document))
}

/// Turns a core outcome into a response: the result as the body, or a problem.
fn respond(outcome: Outcome) -> Response {
    match outcome {
        Ok(result) => ([(header::CONTENT_TYPE, "application/json")], result.get().to_owned()).into_response(),
        // A held call is accepted, not failed: 202 and where to follow it.
        Err(Failure {
            error: ExecError::ApprovalPending { run_id, expires_at },
            ..
        }) => {
            let body = json!({
                "status": "awaiting_approval",
                "run_id": run_id,
                "expires_at": expires_at,
                "console": crate::console::run_path(&run_id),
            });
            let location = format!("/api/v1/runs/{run_id}");
            (
                http::StatusCode::ACCEPTED,
                [
                    (header::CONTENT_TYPE, "application/json".to_owned()),
                    (header::LOCATION, location),
                ],
                body.to_string(),
            )
                .into_response()
        }
        Err(failure) => {
            failure.error.log();
            problem_for_run(&failure.error, failure.run_id.as_deref())
        }
    }
}

/// Applies `command` as the caller, as the OpenRPC surface would.
async fn call(state: &AppState, caller: Option<Extension<Caller>>, command: Command) -> Response {
    let Some(Extension(caller)) = caller else {
        return problem(&ExecError::Unauthenticated("this endpoint needs an identity".into()));
    };
    respond(command.apply(&state.dispatcher, &caller, Surface::Rest).await)
}

/// Run a capability on its target service.
#[utoipa::path(
    post,
    path = "/api/v1/execute/{capability}",
    tag = "execute",
    params(
        ("capability" = String, Path, description = "`<service>.<method>`, e.g. `echo.echo`"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key return the first outcome"),
        ("X-Hero-Context" = Option<u64>, Header, description = "Hero context (default 0)"),
        ("X-Hero-Claims" = Option<String>, Header, description = "Comma list narrowing the caller's claims"),
    ),
    request_body(content = Object, description = "The capability's params (by name); an empty body means no params"),
    responses(
        (status = 200, description = "The target's result, as it sent it", body = Object),
        (status = 202, description = "Held for approval: `{status, run_id, expires_at}`, `Location: /api/v1/runs/{id}`", body = Object),
        (status = 403, description = "Denied by policy", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency key reused with different input", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Malformed body or headers", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No acceptable identity", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such capability", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the size limit", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Params do not match the schema, or the target's own error", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The target answered garbage", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The target is unavailable", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "The target timed out", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn execute(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(capability): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(p @ (Value::Object(_) | Value::Array(_))) => Some(p),
            Ok(_) => {
                return problem(&ExecError::InvalidRequest(
                    "the body must be a JSON object or array of params".into(),
                ));
            }
            Err(e) => return problem(&ExecError::Parse(e.to_string())),
        }
    };
    let idempotency_key = match idempotency_key(&headers) {
        Ok(key) => key,
        Err(error) => return problem(&error),
    };
    let execute = Execute {
        idempotency_key,
        ..Execute::new(capability, params)
    };
    call(&state, caller, Command::Execute(execute)).await
}

/// Query of `GET /api/v1/catalog`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CatalogQuery {
    /// Search terms; without it, every capability is listed.
    q: Option<String>,
    /// Only this service.
    service: Option<String>,
    /// At most this many results when searching (1-200, default 20).
    limit: Option<usize>,
}

/// List or search the capabilities reachable through the executor.
#[utoipa::path(
    get,
    path = "/api/v1/catalog",
    tag = "catalog",
    params(CatalogQuery),
    responses(
        (status = 200, description = "`{capabilities: [...]}` (plus `services` and `unavailable` when listing)", body = Object),
        (status = 400, description = "Malformed query", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn catalog(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    query: Result<Query<CatalogQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => return problem(&ExecError::InvalidRequest(e.body_text())),
    };
    let command = match query.q {
        Some(query_text) => Command::CatalogSearch(CatalogSearch {
            query: query_text,
            service: query.service,
            limit: query.limit,
        }),
        None => Command::CatalogList(CatalogList { service: query.service }),
    };
    call(&state, caller, command).await
}

/// Describe one capability: params, schemas, result and `x-hero-intent`.
#[utoipa::path(
    get,
    path = "/api/v1/catalog/{capability}",
    tag = "catalog",
    params(("capability" = String, Path, description = "`<service>.<method>`")),
    responses(
        (status = 200, description = "The capability", body = Object),
        (status = 404, description = "No such capability", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn describe(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(capability): Path<String>,
) -> Response {
    call(&state, caller, Command::CatalogDescribe(Describe { capability })).await
}

/// A key to enrol (`keys.add`).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // documents the body; the handler passes the JSON through unchanged
struct NewKeyBody {
    /// A name chosen at enrolment: 1-128 of letters, digits and `. _ : @ -`.
    keyid: String,
    /// PEM SubjectPublicKeyInfo, or base64 of the raw 32-byte Ed25519 key.
    public_key: String,
    /// The claims ceiling of requests signed with this key (`*` = full trust).
    claims: Vec<String>,
    /// Contexts the key may act in (absent: any).
    contexts: Option<Vec<u64>>,
    note: Option<String>,
}

/// List enrolled keys (needs `executor.admin`).
#[utoipa::path(
    get,
    path = "/api/v1/keys",
    tag = "keys",
    responses(
        (status = 200, description = "`{keys: [...]}`", body = Object),
        (status = 403, description = "Missing the executor.admin claim", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn keys_list(State(state): State<AppState>, caller: Option<Extension<Caller>>) -> Response {
    call(&state, caller, Command::KeysList).await
}

/// Enrol a key (needs `executor.admin`).
#[utoipa::path(
    post,
    path = "/api/v1/keys",
    tag = "keys",
    request_body = NewKeyBody,
    responses(
        (status = 200, description = "The enrolled key", body = Object),
        (status = 403, description = "Missing the executor.admin claim", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The keyid is already enrolled", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid keyid, key or claims", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn keys_add(State(state): State<AppState>, caller: Option<Extension<Caller>>, body: Bytes) -> Response {
    match typed_body::<NewKey>(&body, "keys.add") {
        Ok(new) => call(&state, caller, Command::KeysAdd(new)).await,
        Err(error) => problem(&error),
    }
}

/// An optional JSON object body (empty means `{}`).
fn object_body(body: &[u8]) -> Result<Map<String, Value>, ExecError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ExecError::InvalidRequest("the body must be a JSON object".into())),
        Err(e) => Err(ExecError::Parse(e.to_string())),
    }
}

/// An optional JSON object body read as the params of `method`.
fn typed_body<T: serde::de::DeserializeOwned>(body: &[u8], method: &str) -> Result<T, ExecError> {
    let object = object_body(body)?;
    serde_json::from_value(Value::Object(object)).map_err(|e| ExecError::invalid_params(format!("{method}: {e}")))
}

/// Revoke a key (needs `executor.admin`); its signatures are refused from then on.
#[utoipa::path(
    delete,
    path = "/api/v1/keys/{keyid}",
    tag = "keys",
    params(("keyid" = String, Path, description = "The key to revoke")),
    responses(
        (status = 200, description = "The revoked key", body = Object),
        (status = 403, description = "Missing the executor.admin claim", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn keys_revoke(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(keyid): Path<String>,
) -> Response {
    call(&state, caller, Command::KeysRevoke(KeyRef { keyid })).await
}

/// The sources beyond hero_* (needs `executor.admin`): status, fingerprints, pending operations.
#[utoipa::path(
    get,
    path = "/api/v1/sources",
    tag = "sources",
    responses(
        (status = 200, description = "`{file, sources: [...]}` as `sources.list`", body = Object),
        (status = 403, description = "Missing the executor.admin claim", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn sources_list(State(state): State<AppState>, caller: Option<Extension<Caller>>) -> Response {
    call(&state, caller, Command::SourcesList).await
}

/// Run a Rhai script as the caller (`script.run`): every call it makes is decided and recorded.
#[utoipa::path(
    post,
    path = "/api/v1/scripts/run",
    tag = "scripts",
    request_body(content = Object, description = "`{source, args?, timeout_ms?, idempotency_key?}`"),
    responses(
        (status = 200, description = "`{run_id, status, value, error, held_run_id, output, calls, totals}`", body = Object),
        (status = 422, description = "Not a script.run request (the source too large, unknown fields)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn script_run(State(state): State<AppState>, caller: Option<Extension<Caller>>, body: Bytes) -> Response {
    match typed_body::<crate::script::ScriptRun>(&body, "script.run") {
        Ok(request) => call(&state, caller, Command::ScriptRun(request)).await,
        Err(error) => problem(&error),
    }
}

/// `GET /api/v1/interface` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct InterfaceQuery {
    /// Only this service.
    service: Option<String>,
    /// `rhai` (default), `typescript`, `python`.
    language: Option<String>,
}

/// What the caller may run, one line per capability, for a model's context (`catalog.interface`).
#[utoipa::path(
    get,
    path = "/api/v1/interface",
    tag = "catalog",
    params(InterfaceQuery),
    responses(
        (status = 200, description = "`{language, capabilities, interface}`", body = Object),
        (status = 400, description = "Malformed query", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown language or invalid service name", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn interface(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    query: Result<Query<InterfaceQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => return problem(&ExecError::InvalidRequest(e.body_text())),
    };
    let command = Command::CatalogInterface(crate::command::CatalogInterface {
        service: query.service,
        language: query.language,
    });
    call(&state, caller, command).await
}

/// `POST /api/v1/sources/{name}/accept`'s optional body.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AcceptBody {
    /// The fingerprint the admin reviewed (`GET /api/v1/sources`): refused (409) if the
    /// source serves another one now.
    fingerprint: Option<String>,
}

/// Accept what a source serves now (needs `executor.admin`): its new operations become callable.
#[utoipa::path(
    post,
    path = "/api/v1/sources/{name}/accept",
    tag = "sources",
    params(("name" = String, Path, description = "The source")),
    request_body(content = Option<AcceptBody>, description = "Optional: the fingerprint reviewed"),
    responses(
        (status = 200, description = "The source, as `sources.list` shows it", body = Object),
        (status = 403, description = "Missing the executor.admin claim", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such source", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The source serves nothing yet", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn sources_accept(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let fingerprint = match typed_body::<AcceptBody>(&body, "sources.accept") {
        Ok(body) => body.fingerprint,
        Err(error) => return problem(&error),
    };
    call(&state, caller, Command::SourcesAccept(SourceRef { name, fingerprint })).await
}

/// Reload the sources file (needs `executor.admin`); an invalid file keeps the running sources.
#[utoipa::path(
    post,
    path = "/api/v1/sources/reload",
    tag = "sources",
    responses(
        (status = 200, description = "`{file, sources: [names]}`", body = Object),
        (status = 403, description = "Missing the executor.admin claim", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The file has errors, each with its line; nothing changed", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn sources_reload(State(state): State<AppState>, caller: Option<Extension<Caller>>) -> Response {
    call(&state, caller, Command::SourcesReload).await
}

/// The generated OpenAPI 3.1 document of this surface.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "hero_executor REST API",
        description = "REST surface of hero_executor (rest.sock)."
    ),
    paths(
        execute,
        catalog,
        describe,
        keys_list,
        keys_add,
        keys_revoke,
        runs::list,
        runs::get,
        runs::wait,
        runs::approve,
        runs::reject,
        runs::cancel,
        runs::policy,
        runs::explain,
        script_run,
        interface,
        sources_list,
        sources_accept,
        sources_reload,
        events::stream
    ),
    components(schemas(Problem, ParamError, NewKeyBody, AcceptBody))
)]
pub struct ApiDoc;

async fn openapi_document() -> Response {
    static DOC: OnceLock<String> = OnceLock::new();
    let doc = DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = crate::VERSION.to_owned();
        doc.to_pretty_json().unwrap_or_default()
    });
    ([(header::CONTENT_TYPE, "application/json")], doc.as_str()).into_response()
}
