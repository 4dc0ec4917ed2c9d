//! What rmcp's Streamable HTTP transport leaves to us: a session is used, streamed or
//! deleted only by the principal that opened it (rmcp accepts any holder of the session
//! id), and a body that is not JSON is a JSON-RPC parse error (HTTP 400, -32700) in the
//! surface's own shape.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{Method, StatusCode};
use serde_json::Value;

use crate::dispatch::actor;
use crate::error::ExecError;
use crate::error::render::jsonrpc_error;
use crate::intent::Caller;
use crate::limits::BufferedBody;

/// The header naming a Streamable HTTP session.
const SESSION_HEADER: &str = "mcp-session-id";

/// The principal that opened each live session.
#[derive(Clone, Default)]
pub struct Sessions {
    owners: Arc<Mutex<HashMap<String, String>>>,
}

impl Sessions {
    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The `/mcp` middleware: checks the body and the session's owner before rmcp sees the
/// request, and learns owners from the answers that open sessions.
pub async fn guard(State(sessions): State<Sessions>, request: Request, next: Next) -> Response {
    if request.method() == Method::POST
        && let Some(body) = request.extensions().get::<BufferedBody>()
        && let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body.0)
    {
        return jsonrpc_error(&ExecError::Parse(e.to_string()), &Value::Null, StatusCode::BAD_REQUEST);
    }
    // The owner is the principal and the user it acts for.
    let principal = request.extensions().get::<Caller>().map(actor);
    let session = request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(session) = &session
        && sessions
            .owners()
            .get(session)
            .is_some_and(|owner| Some(owner) != principal.as_ref())
    {
        // Answered as rmcp answers an unknown session: another's session is none of yours.
        let error = ExecError::NotFound("no such MCP session".into());
        return jsonrpc_error(&error, &Value::Null, StatusCode::NOT_FOUND);
    }
    let deleting = request.method() == Method::DELETE;
    let response = next.run(request).await;
    let opened = response.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok());
    match (opened, principal, session) {
        (_, _, Some(session)) if deleting && response.status().is_success() => {
            sessions.owners().remove(&session);
        }
        (Some(opened), Some(principal), None) => {
            sessions.owners().entry(opened.to_owned()).or_insert(principal);
        }
        _ => {}
    }
    response
}
