//! Limits: the request body is buffered once, under the limit, before anything reads it
//! (kept in a [`BufferedBody`] extension so later layers do not re-buffer); each principal
//! has a token bucket ([`RateLimiter`]); load shedding answers in the surface's shape.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::header::CONTENT_LENGTH;

use crate::error::ExecError;
use crate::error::render::{reject, reject_path};

/// The request body, already read.
#[derive(Debug, Clone)]
pub struct BufferedBody(pub Bytes);

/// Buffers the body up to `limit` bytes; larger bodies get 413 in the surface's own shape.
pub async fn buffer_body(State(limit): State<usize>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let too_large = || {
        reject_path(
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
            return reject_path(
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

/// Per-principal token buckets: `rate` requests per second, bursts up to `burst`.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: std::sync::Mutex<std::collections::HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: std::time::Instant,
}

/// Buckets kept at most; idle full ones are dropped first.
const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    /// `rate == 0` disables limiting.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst: burst.max(1.0),
            buckets: Default::default(),
        }
    }

    /// Takes one token for `principal`; when empty, how many seconds until one is back.
    pub fn check(&self, principal: &str) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = std::time::Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(principal) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(principal.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * self.rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

/// The rate-limit layer: runs after identity, per principal.
pub async fn rate_limit(State(state): State<crate::AppState>, request: Request, next: Next) -> Response {
    let verdict = match request.extensions().get::<crate::intent::Principal>() {
        Some(principal) => state.rate_limiter.check(&principal.id),
        None => Ok(()),
    };
    match verdict {
        Ok(()) => next.run(request).await,
        Err(retry_after_s) => {
            let mut response = reject(&request, ExecError::RateLimited { retry_after_s });
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, retry_after_s.into());
            response
        }
    }
}

/// Answers a request shed at the concurrency limit (503, `Retry-After: 1`).
pub async fn shed(uri: http::Uri, _: tower::BoxError) -> Response {
    let mut response = reject_path(uri.path(), ExecError::Overloaded);
    response.headers_mut().insert(http::header::RETRY_AFTER, 1.into());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_and_are_per_principal() {
        let limiter = RateLimiter::new(1.0, 2.0);
        assert!(limiter.check("a").is_ok());
        assert!(limiter.check("a").is_ok());
        assert_eq!(limiter.check("a"), Err(1));
        assert!(limiter.check("b").is_ok(), "another principal has its own bucket");
        assert!(RateLimiter::new(0.0, 0.0).check("a").is_ok(), "0 disables");
    }
}
