//! The hero convention endpoints every socket answers: `/health` and
//! `/.well-known/heroservice.json` (DESIGN section 2).

use axum::extract::State;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::{Extension, Router};
use http::header;
use serde_json::json;

use crate::error::ExecError;
use crate::error::render::reject_path;
use crate::intent::Caller;
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

/// The hero shape, with the catalog's size and whether the run store answers (an executor
/// that cannot record runs cannot serve calls: `"status": "degraded"`).
pub async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let snapshot = state.dispatcher.catalog().snapshot();
    let store = state.dispatcher.runs().healthy().await;
    Json(json!({
        "status": if store { "ok" } else { "degraded" },
        "service": SERVICE_NAME,
        "version": VERSION,
        "catalog": {
            "services": snapshot.services.len(),
            "capabilities": snapshot.capabilities().count(),
        },
        "store": if store { "ok" } else { "error" },
    }))
}

/// `GET /metrics` on rpc.sock: the executor's metrics name every capability called, so
/// they are for an administrator (`executor.admin`); scrapers use `--metrics-listen`.
pub async fn metrics(State(state): State<AppState>, caller: Option<Extension<Caller>>) -> Response {
    let Some(Extension(caller)) = caller else {
        return reject_path("/metrics", ExecError::Unauthenticated("no caller identity".into()));
    };
    if let Err(error) = crate::access::require_admin(&caller, "reading the metrics") {
        return reject_path("/metrics", error);
    }
    metrics_text(&state).await
}

/// `GET /metrics` on the metrics listener: read-only and unauthenticated, bound where only
/// scrapers reach.
pub async fn metrics_open(State(state): State<AppState>) -> Response {
    metrics_text(&state).await
}

async fn metrics_text(state: &AppState) -> Response {
    let snapshot = state.dispatcher.catalog().snapshot();
    let runs = state.dispatcher.runs();
    let readings = crate::metrics::Readings {
        approvals_pending: runs.pending_approvals().await.unwrap_or(0),
        catalog_services: snapshot.services.len(),
        catalog_capabilities: snapshot.capabilities().count(),
        store_lag: runs.lag(),
    };
    let text = state.metrics.render(readings);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
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
