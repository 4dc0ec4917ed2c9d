//! Protocol adapters: they translate between a wire protocol and the core's calls, and
//! nothing else. Policy, forwarding and records live behind [`crate::dispatch`].

pub mod hero;
pub mod mcp;
pub mod openrpc;
pub mod rest;

use axum::response::Response;

use crate::error::ExecError;

/// Renders an error from a layer (before any adapter ran) in the shape of the surface the
/// path belongs to: problem+json under `/api/` and for the OpenAPI document, a JSON-RPC
/// error everywhere else.
pub fn reject(path: &str, error: ExecError) -> Response {
    error.log();
    if path.starts_with("/api/") || path == "/openapi.json" {
        rest::problem(&error)
    } else {
        openrpc::error_response(&error, error.http_status())
    }
}
