//! REST surface on rest.sock (DESIGN section 4). Every handler turns the HTTP request
//! into the same method call the OpenRPC surface makes, so both share one path through
//! the dispatcher. Errors are `application/problem+json` (RFC 9457).

mod runs;

use std::sync::OnceLock;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use http::{HeaderMap, header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::AppState;
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
        .route("/api/v1/policy", get(runs::policy))
        .route("/api/v1/policy/explain", post(runs::explain))
        .route("/openapi.json", get(openapi_document))
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// The JSON-RPC error code for the same error (DESIGN section 3).
    pub code: i64,
    /// Schema violations, for invalid params.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<ParamError>>,
    /// The target's own error data, when a target failed the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// The run this request was recorded as, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// Renders an error as `application/problem+json`.
pub fn problem(error: &ExecError) -> Response {
    problem_for_run(error, None)
}

/// Renders an error of a run as `application/problem+json`, with its `run_id`.
pub fn problem_for_run(error: &ExecError, run_id: Option<&str>) -> Response {
    let status = error.http_status();
    let (errors, data) = match error {
        ExecError::InvalidParams { details, .. } => (Some(details.clone()), None),
        ExecError::Target { data, .. } => (None, data.as_deref().cloned()),
        _ => (None, None),
    };
    let body = Problem {
        kind: format!("urn:hero-executor:error:{}", error.slug()),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail: error.public_message(),
        code: error.code(),
        errors,
        data,
        run_id: run_id.map(str::to_owned),
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response()
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
            let body = json!({"status": "awaiting_approval", "run_id": run_id, "expires_at": expires_at});
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

/// Runs `method` with `params` through the dispatcher, as the OpenRPC surface would.
async fn call(state: &AppState, caller: Option<Extension<Caller>>, method: &str, params: Value) -> Response {
    let Some(Extension(caller)) = caller else {
        return problem(&ExecError::Unauthenticated("this endpoint needs an identity".into()));
    };
    respond(
        state
            .dispatcher
            .call(&caller, Surface::Rest, method, Some(params))
            .await,
    )
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
    let mut call_params = Map::new();
    call_params.insert("capability".into(), capability.into());
    if let Some(params) = params {
        call_params.insert("params".into(), params);
    }
    if let Some(key) = headers.get("idempotency-key") {
        let Ok(key) = key.to_str() else {
            return problem(&ExecError::InvalidRequest(
                "Idempotency-Key is not visible ASCII".into(),
            ));
        };
        call_params.insert("idempotency_key".into(), key.into());
    }
    call(&state, caller, "execute", Value::Object(call_params)).await
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
    match query.q {
        Some(q) => {
            let mut params = json!({ "query": q });
            if let Some(limit) = query.limit {
                params["limit"] = limit.into();
            }
            if let Some(service) = query.service {
                params["service"] = service.into();
            }
            call(&state, caller, "catalog.search", params).await
        }
        None => call(&state, caller, "catalog.list", json!({ "service": query.service })).await,
    }
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
    call(&state, caller, "catalog.describe", json!({ "capability": capability })).await
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
    call(&state, caller, "keys.list", json!({})).await
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
    match object_body(&body) {
        Ok(params) => call(&state, caller, "keys.add", Value::Object(params)).await,
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
    call(&state, caller, "keys.revoke", json!({ "keyid": keyid })).await
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
        runs::explain
    ),
    components(schemas(Problem, ParamError, NewKeyBody))
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn problems_carry_the_jsonrpc_code() {
        let response = problem(&ExecError::TargetTimeout("x".into()));
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
    }
}
