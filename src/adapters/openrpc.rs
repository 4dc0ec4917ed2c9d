//! OpenRPC surface: JSON-RPC 2.0 over `POST /rpc`, plus `GET /openrpc.json`
//! (DESIGN section 3). Batches run concurrently; notifications get no answer (204
//! when nothing at all is answered). Every error, even for an unparsable body, is a
//! JSON-RPC error object.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{StatusCode, header};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::ExecError;
use crate::intent::{Caller, Surface};
use crate::jsonrpc::{self, Incoming, Invalid, Request};
use crate::{AppState, OPENRPC_JSON};

/// `POST /rpc` and `GET /openrpc.json`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/rpc", post(handle))
        .route("/openrpc.json", get(openrpc_document))
}

/// The embedded `openrpc.json`, byte for byte.
async fn openrpc_document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENRPC_JSON).into_response()
}

async fn handle(State(state): State<AppState>, caller: Option<Extension<Caller>>, body: Bytes) -> Response {
    let caller = caller.map(|Extension(c)| c);
    let incoming = match jsonrpc::parse_body(&body, state.config.max_batch) {
        Ok(incoming) => incoming,
        // Unparsable bodies and invalid batches are still JSON-RPC answers: HTTP 200.
        Err(error) => return error_response(&error, StatusCode::OK),
    };
    match incoming {
        Incoming::Single(item) => match answer(&state, caller.as_ref(), item).await {
            Some(reply) => json_response(StatusCode::OK, reply.get().to_owned()),
            None => StatusCode::NO_CONTENT.into_response(),
        },
        Incoming::Batch(items) => {
            let replies =
                futures::future::join_all(items.into_iter().map(|item| answer(&state, caller.as_ref(), item))).await;
            let replies: Vec<Box<RawValue>> = replies.into_iter().flatten().collect();
            if replies.is_empty() {
                return StatusCode::NO_CONTENT.into_response();
            }
            json_response(StatusCode::OK, jsonrpc::raw(&replies).get().to_owned())
        }
    }
}

/// Runs one request; `None` for a notification (it still runs).
async fn answer(state: &AppState, caller: Option<&Caller>, item: Result<Request, Invalid>) -> Option<Box<RawValue>> {
    let request = match item {
        Ok(request) => request,
        Err(invalid) => return Some(jsonrpc::failure(&invalid.id, &invalid.error(), None)),
    };
    let outcome = match caller {
        Some(caller) => {
            state
                .dispatcher
                .call(caller, Surface::Openrpc, &request.method, request.params)
                .await
        }
        // The identity layer only lets requests without a caller through for rpc.discover.
        None if request.method == "rpc.discover" => crate::methods::discover(),
        None => Err(ExecError::Unauthenticated("this method needs an identity".into()).into()),
    };
    let id = request.id?;
    Some(match outcome {
        Ok(result) => jsonrpc::success(&id, &result),
        Err(failure) => {
            failure.error.log();
            jsonrpc::failure(&id, &failure.error, failure.run_id.as_deref())
        }
    })
}

/// A whole-body JSON-RPC error (id null) with the given HTTP status.
pub fn error_response(error: &ExecError, status: StatusCode) -> Response {
    json_response(status, jsonrpc::failure(&Value::Null, error, None).get().to_owned())
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
