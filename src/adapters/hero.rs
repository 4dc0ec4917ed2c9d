//! The hero convention endpoints every socket answers: `/health` and
//! `/.well-known/heroservice.json` (DESIGN section 2).

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::json;

use crate::{AppState, SERVICE_NAME, VERSION};

/// Which socket a router serves; decides what `heroservice.json` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    Rpc,
    Rest,
    /// `ui.sock`: the operator console.
    Ui,
}

/// `/health` and `/.well-known/heroservice.json` for one socket.
pub fn routes(kind: SocketKind) -> Router<AppState> {
    Router::new().route("/health", get(health)).route(
        "/.well-known/heroservice.json",
        get(move |State(state): State<AppState>| heroservice(kind, state)),
    )
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "service": SERVICE_NAME, "version": VERSION }))
}

async fn heroservice(kind: SocketKind, state: AppState) -> Response {
    let (protocol, socket, spec) = match kind {
        SocketKind::Rpc => ("openrpc", "rpc", "/openrpc.json"),
        SocketKind::Rest => ("rest", "rest", "/openapi.json"),
        SocketKind::Ui => ("ui", "ui", "/"),
    };
    Json(json!({
        "protocol": protocol,
        "name": SERVICE_NAME,
        "title": "Hero Executor",
        "version": VERSION,
        "description": "The secure execution gateway of a HERO node: verifies who is asking, \
                        applies policy, records runs and forwards calls to hero_* services.",
        "socket": socket,
        "spec": spec,
        "signing_key": state.server_key.description(),
    }))
    .into_response()
}
