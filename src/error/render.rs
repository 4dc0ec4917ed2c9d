//! Rendering an [`ExecError`] as a whole HTTP answer, once per protocol: RFC 9457
//! `application/problem+json` for REST, a JSON-RPC error object everywhere else. Layers
//! and adapters both answer through here, so a rejection looks the same whichever part
//! of the stack made it.

use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{ExecError, ParamError};
use crate::jsonrpc;
use crate::limits::BufferedBody;

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

/// A whole-body JSON-RPC error answering the request `id`, with the given HTTP status.
pub fn jsonrpc_error(error: &ExecError, id: &Value, status: StatusCode) -> Response {
    let body = jsonrpc::failure(id, error, None).get().to_owned();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Answers a request with an error before any adapter ran, in the shape of the surface
/// its path belongs to; a JSON-RPC error keeps the request's id when its body parsed.
pub fn reject<B>(request: &http::Request<B>, error: ExecError) -> Response {
    let id = request
        .extensions()
        .get::<BufferedBody>()
        .map_or(Value::Null, |body| jsonrpc::request_id(&body.0));
    reject_with_id(request.uri().path(), &id, error)
}

/// Like [`reject`], for a request of which only the path is known.
pub fn reject_path(path: &str, error: ExecError) -> Response {
    reject_with_id(path, &Value::Null, error)
}

fn reject_with_id(path: &str, id: &Value, error: ExecError) -> Response {
    crate::error::note(&error);
    error.log();
    let mut response = if path.starts_with("/api/") || path == "/openapi.json" {
        problem(&error)
    } else {
        jsonrpc_error(&error, id, error.http_status())
    };
    let retry_after = match error {
        ExecError::RateLimited { retry_after_s } => Some(retry_after_s),
        ExecError::Overloaded => Some(1),
        _ => None,
    };
    if let Some(seconds) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, seconds.into());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_carry_the_jsonrpc_code() {
        let response = problem(&ExecError::TargetTimeout("x".into()));
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
    }
}
