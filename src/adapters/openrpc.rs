//! OpenRPC surface: JSON-RPC 2.0 over `POST /rpc`, plus `GET /openrpc.json`
//! (DESIGN section 3). Batches run concurrently; notifications get no answer (204
//! when nothing at all is answered). Every error, even for an unparsable body, is a
//! JSON-RPC error object.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode, header};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::command::Command;
use crate::error::ExecError;
use crate::error::render::jsonrpc_error;
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

async fn handle(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = caller.map(|Extension(c)| c);
    let incoming = match jsonrpc::parse_body(&body, state.config.max_batch) {
        Ok(incoming) => incoming,
        // Unparsable bodies and invalid batches are still JSON-RPC answers: HTTP 200.
        Err(error) => return jsonrpc_error(&error, &Value::Null, StatusCode::OK),
    };
    let idempotency_key = match idempotency_key(&headers) {
        Ok(key) => key,
        Err(error) => return jsonrpc_error(&error, &jsonrpc::request_id(&body), StatusCode::OK),
    };
    match incoming {
        Incoming::Single(item) => match answer(&state, caller.as_ref(), item, idempotency_key).await {
            Some(reply) => json_response(StatusCode::OK, reply.get().to_owned()),
            None => StatusCode::NO_CONTENT.into_response(),
        },
        // A key names one call: which one of a batch would it be?
        Incoming::Batch(_) if idempotency_key.is_some() => {
            let error =
                ExecError::InvalidRequest("Idempotency-Key is refused on a batch: send the calls one by one".into());
            jsonrpc_error(&error, &Value::Null, StatusCode::OK)
        }
        Incoming::Batch(items) => {
            // The identity layer took one token for the request; a batch pays one per call.
            if let Some(caller) = &caller
                && let Err(retry_after_s) = state.rate_limiter.check(&caller.principal.id, items.len() - 1)
            {
                state.metrics.rate_limited();
                let error = ExecError::RateLimited { retry_after_s };
                let mut response = jsonrpc_error(&error, &Value::Null, StatusCode::TOO_MANY_REQUESTS);
                response.headers_mut().insert(header::RETRY_AFTER, retry_after_s.into());
                return response;
            }
            let replies = items
                .into_iter()
                .map(|item| answer(&state, caller.as_ref(), item, None));
            let replies: Vec<Box<RawValue>> = futures::future::join_all(replies).await.into_iter().flatten().collect();
            if replies.is_empty() {
                return StatusCode::NO_CONTENT.into_response();
            }
            json_response(StatusCode::OK, jsonrpc::raw(&replies).get().to_owned())
        }
    }
}

/// The `Idempotency-Key` header, if any.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ExecError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) => Ok(Some(key.to_owned())),
        Err(_) => Err(ExecError::InvalidRequest("Idempotency-Key is not visible ASCII".into())),
    }
}

/// Parses one request into a command and applies it; `None` for a notification (it still runs).
async fn answer(
    state: &AppState,
    caller: Option<&Caller>,
    item: Result<Request, Invalid>,
    idempotency_key: Option<String>,
) -> Option<Box<RawValue>> {
    let request = match item {
        Ok(request) => request,
        Err(invalid) => return Some(jsonrpc::failure(&invalid.id, &invalid.error(), None)),
    };
    let command = Command::parse(&request.method, request.params).and_then(|c| c.with_idempotency_key(idempotency_key));
    let outcome = match (command, caller) {
        (Err(error), _) => Err(error.into()),
        (Ok(command), Some(caller)) => command.apply(&state.dispatcher, caller, Surface::Openrpc).await,
        // The identity layer only lets requests without a caller through for rpc.discover.
        (Ok(Command::Discover), None) => crate::command::discover(),
        (Ok(_), None) => Err(ExecError::Unauthenticated("this method needs an identity".into()).into()),
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

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
