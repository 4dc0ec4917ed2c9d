//! REST for runs and policy: the same `runs.*` / `policy.*` commands as OpenRPC.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;

use super::{call, object_body, typed_body};
use crate::AppState;
use crate::command::{Approve, Command, Explain, Reject, RunRef, RunsList, RunsWait};
use crate::error::ExecError;
use crate::error::render::{Problem, problem};
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
    /// Only the runs waiting for an approval the caller may give.
    inbox: Option<bool>,
    /// Statuses to leave out, comma-separated (e.g. `denied`).
    hide: Option<String>,
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
    let list = RunsList {
        status: q.status,
        capability: q.capability,
        principal: q.principal,
        since: q.since,
        limit: q.limit,
        cursor: q.cursor,
        inbox: q.inbox,
        hide: q.hide.map(|h| {
            h.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        }),
    };
    call(&state, caller, Command::RunsList(list)).await
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
    call(&state, caller, Command::RunsGet(RunRef { run_id: id })).await
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
    let wait = RunsWait {
        run_id: id,
        timeout_ms: q.timeout_ms,
    };
    call(&state, caller, Command::RunsWait(wait)).await
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
    match note(&body, "note") {
        Ok(note) => call(&state, caller, Command::RunsApprove(Approve { run_id: id, note })).await,
        Err(error) => problem(&error),
    }
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
    match note(&body, "reason") {
        Ok(reason) => call(&state, caller, Command::RunsReject(Reject { run_id: id, reason })).await,
        Err(error) => problem(&error),
    }
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
    call(&state, caller, Command::RunsCancel(RunRef { run_id: id })).await
}

/// The policy in force (needs executor.admin).
#[utoipa::path(get, path = "/api/v1/policy", tag = "policy",
    responses((status = 200, description = "`{source, rules, text}`", body = Object),
              (status = 403, description = "Missing executor.admin", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn policy(State(state): State<AppState>, caller: Option<Extension<Caller>>) -> Response {
    call(&state, caller, Command::PolicyGet).await
}

/// Explain a decision: `{capability, claims?, context?, keyid?}` (needs executor.admin).
#[utoipa::path(post, path = "/api/v1/policy/explain", tag = "policy",
    request_body(content = Object, description = "`{capability, claims?, context?, keyid?}`"),
    responses((status = 200, description = "The decision and every matching rule", body = Object),
              (status = 403, description = "Missing executor.admin", body = Problem, content_type = "application/problem+json")))]
pub(super) async fn explain(State(state): State<AppState>, caller: Option<Extension<Caller>>, body: Bytes) -> Response {
    match typed_body::<Explain>(&body, "policy.explain") {
        Ok(explain) => call(&state, caller, Command::PolicyExplain(explain)).await,
        Err(error) => problem(&error),
    }
}

/// The optional `field` of a decision's body (`{"note": "..."}`); other members are ignored.
fn note(body: &[u8], field: &str) -> Result<Option<String>, ExecError> {
    match object_body(body)?.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(ExecError::invalid_params(format!("{field} must be a string"))),
    }
}
