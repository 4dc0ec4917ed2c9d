//! The executor's error type and its JSON-RPC codes (DESIGN section 3).
//!
//! Every surface renders the same [`ExecError`]: the OpenRPC adapter as a JSON-RPC
//! error object, REST as `application/problem+json` (RFC 9457). Details of internal
//! failures go to the log, never to the client.

pub mod render;

use http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

/// JSON-RPC error codes used by the executor.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    pub const UNAUTHENTICATED: i64 = -32001;
    pub const PERMISSION_DENIED: i64 = -32002;
    pub const NOT_FOUND: i64 = -32003;
    pub const CONFLICT: i64 = -32004;
    pub const NOT_ENROLLED: i64 = -32005;
    pub const APPROVAL_PENDING: i64 = -32010;
    pub const APPROVAL_REFUSED: i64 = -32011;
    pub const TARGET_UNAVAILABLE: i64 = -32020;
    pub const TARGET_TIMEOUT: i64 = -32021;
    pub const TARGET_PROTOCOL: i64 = -32022;
    /// A source target answered with an error: a non-2xx HTTP status, or an MCP tool error.
    pub const TARGET_ERROR: i64 = -32023;
    pub const RATE_LIMITED: i64 = -32029;
}

/// One schema violation in a call's params, located by JSON pointer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ParamError {
    /// JSON pointer into the params (`""` is the params object itself).
    pub pointer: String,
    /// What is wrong there.
    pub message: String,
}

/// Everything that can go wrong between a request arriving and its answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExecError {
    /// The body is not JSON.
    #[error("parse error: {0}")]
    Parse(String),
    /// The body is JSON but not a valid request.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The body exceeds a size limit (JSON-RPC -32600, HTTP 413).
    #[error("request too large: {0}")]
    TooLarge(String),
    /// The body did not arrive within its deadline (JSON-RPC -32600, HTTP 408).
    #[error("request timeout: {0}")]
    RequestTimeout(String),
    /// The HTTP method is not allowed on this route (JSON-RPC -32600, HTTP 405).
    #[error("method not allowed: {0}")]
    HttpMethodNotAllowed(String),
    /// No such method (JSON-RPC method name unknown or not a valid capability name).
    #[error("method not found: {0}")]
    MethodNotFound(String),
    /// Params do not match the method's schema.
    #[error("invalid params: {message}")]
    InvalidParams { message: String, details: Vec<ParamError> },
    /// A bug or an unexpected failure inside the executor; the detail is only logged.
    #[error("internal error")]
    Internal(String),
    /// No acceptable identity on the request.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Policy or identity rules refuse the call.
    #[error("permission denied: {0}")]
    Denied(String),
    /// A capability, run or key that does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request conflicts with existing state (a keyid already enrolled, a run already decided).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The signature's key is not enrolled, or was revoked (-32005, HTTP 401: sign with
    /// another key).
    #[error("{0}")]
    UnknownKey(String),
    /// The principal may not act in the requested context (-32005, HTTP 403).
    #[error("{0}")]
    NotEnrolled(String),
    /// The call waits for a human's approval (-32010).
    #[error("approval pending: run {run_id} waits for approval until {}", crate::human::rfc3339(*expires_at))]
    ApprovalPending { run_id: String, expires_at: i64 },
    /// The approval was rejected or expired (-32011).
    #[error("{0}")]
    ApprovalRefused(String),
    /// The caller sent more than its rate allows (-32029, HTTP 429 with `Retry-After`).
    #[error("rate limited: retry in {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    /// A bounded resource (MCP sessions, event streams) is full for this caller (-32029,
    /// HTTP 429).
    #[error("{0}")]
    TooMany(String),
    /// The executor is at its concurrency limit and sheds the request (HTTP 503).
    #[error("overloaded: too many requests in flight, retry shortly")]
    Overloaded,
    /// The target service has no socket or refuses connections.
    #[error("target unavailable: {0}")]
    TargetUnavailable(String),
    /// The target did not answer within the call timeout.
    #[error("target timed out: {0}")]
    TargetTimeout(String),
    /// The target answered something that is not a JSON-RPC response.
    #[error("target protocol error: {0}")]
    TargetProtocol(String),
    /// The target's own JSON-RPC error, passed through unchanged.
    #[error("{message}")]
    Target {
        code: i64,
        message: String,
        data: Option<Box<Value>>,
    },
}

impl ExecError {
    /// Builds an invalid-params error with one located detail.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::InvalidParams {
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// The JSON-RPC error code of this error.
    pub fn code(&self) -> i64 {
        match self {
            Self::Parse(_) => code::PARSE_ERROR,
            Self::InvalidRequest(_) | Self::TooLarge(_) | Self::RequestTimeout(_) | Self::HttpMethodNotAllowed(_) => {
                code::INVALID_REQUEST
            }
            Self::MethodNotFound(_) => code::METHOD_NOT_FOUND,
            Self::InvalidParams { .. } => code::INVALID_PARAMS,
            Self::Internal(_) => code::INTERNAL_ERROR,
            Self::Unauthenticated(_) => code::UNAUTHENTICATED,
            Self::Denied(_) => code::PERMISSION_DENIED,
            Self::NotFound(_) => code::NOT_FOUND,
            Self::Conflict(_) => code::CONFLICT,
            Self::UnknownKey(_) | Self::NotEnrolled(_) => code::NOT_ENROLLED,
            Self::ApprovalPending { .. } => code::APPROVAL_PENDING,
            Self::ApprovalRefused(_) => code::APPROVAL_REFUSED,
            Self::RateLimited { .. } | Self::TooMany(_) | Self::Overloaded => code::RATE_LIMITED,
            Self::TargetUnavailable(_) => code::TARGET_UNAVAILABLE,
            Self::TargetTimeout(_) => code::TARGET_TIMEOUT,
            Self::TargetProtocol(_) => code::TARGET_PROTOCOL,
            Self::Target { code, .. } => *code,
        }
    }

    /// The message a client sees. Internal details stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            Self::Internal(_) => "internal error".to_owned(),
            Self::Target { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// Structured data for the client, if any (`run_id` is added by the caller).
    fn data(&self) -> Option<Value> {
        match self {
            Self::InvalidParams { details, .. } if !details.is_empty() => Some(json!({ "errors": details })),
            Self::Target { data, .. } => data.as_deref().cloned(),
            Self::RateLimited { retry_after_s } => Some(json!({ "retry_after_s": retry_after_s })),
            Self::ApprovalPending { run_id, expires_at } => Some(json!({
                "run_id": run_id,
                "expires_at": expires_at,
                "status": "awaiting_approval",
                "wait": format!("runs.wait {{\"run_id\": \"{run_id}\"}}"),
                "approve": format!("runs.approve {{\"run_id\": \"{run_id}\"}} by a holder of an approver claim"),
                "console": crate::console::run_path(run_id),
            })),
            _ => None,
        }
    }

    /// The JSON-RPC `error` object. `run_id` is merged into `data` when a run exists.
    pub fn to_jsonrpc(&self, run_id: Option<&str>) -> Value {
        let mut data = self.data();
        if let Some(run_id) = run_id {
            match &mut data {
                Some(Value::Object(map)) => {
                    map.insert("run_id".into(), Value::String(run_id.to_owned()));
                }
                // A target's non-object data is kept under `target_data`.
                Some(other) => data = Some(json!({ "target_data": other.take(), "run_id": run_id })),
                None => data = Some(json!({ "run_id": run_id })),
            }
        }
        let mut obj = json!({ "code": self.code(), "message": self.public_message() });
        if let Some(data) = data {
            obj["data"] = data;
        }
        obj
    }

    /// The HTTP status used when this error is the whole answer (REST, and layer rejections).
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::Parse(_) | Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::HttpMethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::MethodNotFound(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::InvalidParams { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unauthenticated(_) | Self::UnknownKey(_) => StatusCode::UNAUTHORIZED,
            Self::Denied(_) | Self::NotEnrolled(_) => StatusCode::FORBIDDEN,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::ApprovalPending { .. } => StatusCode::ACCEPTED,
            Self::ApprovalRefused(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } | Self::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::TargetUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TargetTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::TargetProtocol(_) => StatusCode::BAD_GATEWAY,
            Self::Target { code, .. } => match *code {
                code::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
                code::INVALID_PARAMS => StatusCode::UNPROCESSABLE_ENTITY,
                // The target's application errors are answers about the request.
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            },
        }
    }

    /// A short machine-readable slug, used in problem `type` URIs.
    pub fn slug(&self) -> &'static str {
        match self {
            Self::Parse(_) => "parse-error",
            Self::InvalidRequest(_) => "invalid-request",
            Self::TooLarge(_) => "too-large",
            Self::RequestTimeout(_) => "request-timeout",
            Self::HttpMethodNotAllowed(_) => "method-not-allowed",
            Self::MethodNotFound(_) => "method-not-found",
            Self::InvalidParams { .. } => "invalid-params",
            Self::Internal(_) => "internal-error",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Denied(_) => "permission-denied",
            Self::NotFound(_) => "not-found",
            Self::Conflict(_) => "conflict",
            Self::UnknownKey(_) => "unknown-key",
            Self::NotEnrolled(_) => "not-enrolled",
            Self::ApprovalPending { .. } => "approval-pending",
            Self::ApprovalRefused(_) => "approval-refused",
            Self::RateLimited { .. } => "rate-limited",
            Self::TooMany(_) => "too-many",
            Self::Overloaded => "overloaded",

            Self::TargetUnavailable(_) => "target-unavailable",
            Self::TargetTimeout(_) => "target-timeout",
            Self::TargetProtocol(_) => "target-protocol-error",
            Self::Target { .. } => "target-error",
        }
    }

    /// Logs internal details once, at the boundary where the error is rendered.
    pub fn log(&self) {
        if let Self::Internal(detail) = self {
            tracing::error!(%detail, "internal error");
        }
    }
}

/// Records how a request failed (code and reason) on its span, for its one log line (the
/// run id is recorded where the run is made, or named).
pub fn note(error: &ExecError) {
    let span = tracing::Span::current();
    span.record("code", error.code());
    // Not the text of errors that may quote params or come from a target: the log
    // never holds what a caller sent or a service answered.
    match error {
        ExecError::InvalidParams { .. } => span.record("error", "invalid params (the details are in the run)"),
        ExecError::Target { .. } => span.record("error", "the target's own error (in the run)"),
        _ => span.record("error", tracing::field::display(error.public_message())),
    };
}

/// An error, with the id of the run it belongs to when there is one.
#[derive(Debug, Clone)]
pub struct Failure {
    pub error: ExecError,
    pub run_id: Option<String>,
}

impl Failure {
    /// Attaches `run_id` to `error`.
    pub fn with_run(error: ExecError, run_id: impl Into<String>) -> Self {
        Self {
            error,
            run_id: Some(run_id.into()),
        }
    }
}

impl From<ExecError> for Failure {
    fn from(error: ExecError) -> Self {
        Self { error, run_id: None }
    }
}
