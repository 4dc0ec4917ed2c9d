//! Request body limit: every body is buffered once, under the limit, before anything
//! reads it. The buffered bytes are kept in a [`BufferedBody`] extension so later layers
//! (identity today, signature verification later) read them without re-buffering.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::header::CONTENT_LENGTH;

use crate::adapters::reject;
use crate::error::ExecError;

/// The request body, already read.
#[derive(Debug, Clone)]
pub struct BufferedBody(pub Bytes);

/// Buffers the body up to `limit` bytes; larger bodies get 413 in the surface's own shape.
pub async fn buffer_body(State(limit): State<usize>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let too_large = || {
        reject(
            &path,
            ExecError::TooLarge(format!("request body exceeds the limit of {limit} bytes")),
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return too_large();
    }
    let (mut parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(e) if is_length_limit(&e) => return too_large(),
        Err(e) => {
            return reject(
                &path,
                ExecError::InvalidRequest(format!("could not read the request body: {e}")),
            );
        }
    };
    parts.extensions.insert(BufferedBody(bytes.clone()));
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}
