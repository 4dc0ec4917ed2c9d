//! REST for runs and policy: the same `runs.*` / `policy.*` methods as OpenRPC.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;

use super::{Problem, call, object_body, problem};
use crate::AppState;
use crate::error::ExecError;
use crate::intent::Caller;

/// Query of `GET /api/v1/runs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct RunsQuery {
    /// Only runs with this status (e.g. `awaiting_approval`, `succeeded`, `denied`).
    status: Option<String>,
    /// Only runs of this capability.
    capability: Option<String>,
    /// Only runs of this principal (others' runs need `executor.admin`).
    principal: Option<String>,
    /// Only runs created at or after this time (Unix ms).
    since: Option<i64>,
    /// Page size (1-1000, default 50).
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Query of `GET /api/v1/runs/{id}/wait`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct WaitQuery {
    /// How long to wait for a final status (default 30000, at most 600000).
    timeout_ms: Option<u64>,
}

/// List runs, newest first.
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs", params(RunsQuery),
    responses((status = 200, description = "`{runs: [...], next_cursor}`", body = Object),
              (status = 403, description = "Another principal's runs without executor.admin", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    query: Result<Query<RunsQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return problem(&ExecError::InvalidRequest(e.body_text())),
    };
    let params = json!({"status": q.status, "capability": q.capability, "principal": q.principal,
                        "since": q.since, "limit": q.limit, "cursor": q.cursor});
    call(&state, caller, "runs.list", crate::jsonrpc::without_nulls(params)).await
}

/// One run.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs", params(("id" = String, Path, description = "Run id")),
    responses((status = 200, description = "The run", body = Object),
              (status = 404, description = "No such run (or not yours)", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn get(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Response {
    call(&state, caller, "runs.get", json!({ "run_id": id })).await
}

/// Wait until a run is final (or the timeout passes), then return it.
#[utoipa::path(get, path = "/api/v1/runs/{id}/wait", tag = "runs",
    params(("id" = String, Path, description = "Run id"), WaitQuery),
    responses((status = 200, description = "The run, final or as it is at the timeout", body = Object),
              (status = 404, description = "No such run (or not yours)", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn wait(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return problem(&ExecError::InvalidRequest(e.body_text())),
    };
    call(
        &state,
        caller,
        "runs.wait",
        crate::jsonrpc::without_nulls(json!({ "run_id": id, "timeout_ms": q.timeout_ms })),
    )
    .await
}

/// Approve a held run (body: `{"note": "..."}`, optional).
#[utoipa::path(post, path = "/api/v1/runs/{id}/approve", tag = "runs", params(("id" = String, Path, description = "Run id")),
    request_body(content = Object, description = "`{note?}`"),
    responses((status = 200, description = "The run, now running", body = Object),
              (status = 403, description = "Not an approver, or one's own run", body = Problem, content_type = "application/problem+json"),
              (status = 409, description = "Already decided or expired", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn approve(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    decide(&state, caller, "runs.approve", id, &body, "note").await
}

/// Reject a held run (body: `{"reason": "..."}`, optional).
#[utoipa::path(post, path = "/api/v1/runs/{id}/reject", tag = "runs", params(("id" = String, Path, description = "Run id")),
    request_body(content = Object, description = "`{reason?}`"),
    responses((status = 200, description = "The run, now rejected", body = Object),
              (status = 403, description = "Not an approver, or one's own run", body = Problem, content_type = "application/problem+json"),
              (status = 409, description = "Already decided or expired", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn reject(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    decide(&state, caller, "runs.reject", id, &body, "reason").await
}

/// Cancel a held run, or an approved one still executing.
#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", tag = "runs", params(("id" = String, Path, description = "Run id")),
    responses((status = 200, description = "The run, now cancelled", body = Object),
              (status = 409, description = "Already final", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn cancel(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Response {
    call(&state, caller, "runs.cancel", json!({ "run_id": id })).await
}

/// The policy in force (needs executor.admin).
#[utoipa::path(get, path = "/api/v1/policy", tag = "policy",
    responses((status = 200, description = "`{source, rules, text}`", body = Object),
              (status = 403, description = "Missing executor.admin", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn policy(State(state): State<AppState>, caller: Option<Extension<Caller>>) -> Response {
    call(&state, caller, "policy.get", json!({})).await
}

/// Explain a decision: `{capability, claims?, context?, keyid?}` (needs executor.admin).
#[utoipa::path(post, path = "/api/v1/policy/explain", tag = "policy",
    request_body(content = Object, description = "`{capability, claims?, context?, keyid?}`"),
    responses((status = 200, description = "The decision and every matching rule", body = Object),
              (status = 403, description = "Missing executor.admin", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn explain(State(state): State<AppState>, caller: Option<Extension<Caller>>, body: Bytes) -> Response {
    match object_body(&body) {
        Ok(params) => call(&state, caller, "policy.explain", Value::Object(params)).await,
        Err(error) => problem(&error),
    }
}

async fn decide(
    state: &AppState,
    caller: Option<Extension<Caller>>,
    method: &str,
    id: String,
    body: &[u8],
    field: &str,
) -> Response {
    let mut params = match object_body(body) {
        Ok(params) => params,
        Err(error) => return problem(&error),
    };
    params.retain(|k, _| k == field);
    params.insert("run_id".into(), id.into());
    call(state, caller, method, Value::Object(params)).await
}
