//! Limits: admission before any body is read ([`admit`]: slots per peer and in all, shed
//! at once when full); the request body buffered once, under the size limit and the read
//! deadline (kept in a [`BufferedBody`] extension so later layers do not re-buffer); a token
//! bucket per principal ([`RateLimiter`], applied by the identity layer). Every refusal is
//! answered in the surface's shape.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::CONTENT_LENGTH;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::AppState;
use crate::error::ExecError;
use crate::error::render::reject_path;
use crate::identity::Peer;

/// The request body, already read.
#[derive(Debug, Clone)]
pub struct BufferedBody(pub Bytes);

/// Buffers the body up to `max_body_bytes` within `body_read_timeout`; larger bodies get
/// 413 and slower ones 408, in the surface's own shape.
pub async fn buffer_body(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.config.max_body_bytes;
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
    let deadline = state.config.body_read_timeout;
    let read = tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await;
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Err(_) => {
            let error = format!("the request body did not arrive within {} s", deadline.as_secs_f64());
            return reject_path(&path, ExecError::RequestTimeout(error));
        }
        Ok(Err(e)) if is_length_limit(&e) => return too_large(),
        Ok(Err(e)) => {
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

    /// Takes `cost` tokens for `principal` (a batch costs one per call); when it has fewer,
    /// takes none and says how many seconds until they are back.
    pub fn check(&self, principal: &str, cost: usize) -> Result<(), u64> {
        let cost = cost as f64;
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
        if cost > self.burst {
            // Never fits: say how long a full bucket takes (the caller should split the batch).
            return Err((self.burst / self.rate).ceil().max(1.0) as u64);
        }
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            Ok(())
        } else {
            Err(((cost - bucket.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

/// Slots of requests in flight, per peer and claimed identity (see [`admit`]).
pub struct Admission {
    cap: usize,
    slots: std::sync::Mutex<std::collections::HashMap<String, Arc<Semaphore>>>,
}

/// Keys kept before idle ones are dropped.
const MAX_ADMISSION_KEYS: usize = 10_000;

impl Admission {
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            slots: Default::default(),
        }
    }

    /// A slot for `key`, if it has one free.
    fn try_acquire(&self, key: &str) -> Option<OwnedSemaphorePermit> {
        self.try_acquire_scaled(key, 1)
    }

    /// A slot for `key`, whose slots are `scale` times the cap.
    fn try_acquire_scaled(&self, key: &str, scale: usize) -> Option<OwnedSemaphorePermit> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() >= MAX_ADMISSION_KEYS && !slots.contains_key(key) {
            // Only the semaphores nobody holds a permit of are dropped.
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let semaphore = slots
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.cap * scale)))
            .clone();
        drop(slots);
        semaphore.try_acquire_owned().ok()
    }
}

/// Refuses a request its head already fails. A short body (up to [`EARLY_BODY_BYTES`],
/// within [`EARLY_BODY_WAIT`], in one of the peer's slots) is read first, so a JSON-RPC
/// answer still carries the request's id; otherwise the answer has none.
async fn refuse_early(state: &AppState, request: Request, peer: &str, error: ExecError) -> Response {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let slot = match declared {
        Some(len) if len <= EARLY_BODY_BYTES => state.admission.try_acquire(&format!("refused@{peer}")),
        _ => None,
    };
    let (parts, body) = request.into_parts();
    let mut request = Request::from_parts(parts, Body::empty());
    if slot.is_some()
        && let Ok(Ok(bytes)) = tokio::time::timeout(EARLY_BODY_WAIT, axum::body::to_bytes(body, EARLY_BODY_BYTES)).await
    {
        // `rpc.discover` is open to anyone: answered here, as the OpenRPC surface would.
        if request.uri().path() == "/rpc"
            && let Some(answer) = open_discover(&bytes)
        {
            return answer;
        }
        request.extensions_mut().insert(BufferedBody(bytes));
    }
    crate::identity::refuse(&request, error)
}

/// The answer to a body that is a single `rpc.discover` request, if it is one.
fn open_discover(body: &[u8]) -> Option<Response> {
    let request = serde_json::from_slice(body)
        .ok()
        .map(crate::jsonrpc::parse_request)?
        .ok()?;
    if request.method != "rpc.discover" {
        return None;
    }
    let id = request.id?;
    let result = crate::command::discover().ok()?;
    let answer = crate::jsonrpc::success(&id, &result).get().to_owned();
    Some(([(http::header::CONTENT_TYPE, "application/json")], answer).into_response())
}

/// Largest body read from a request refused by its head, for its JSON-RPC id.
const EARLY_BODY_BYTES: usize = 64 * 1024;

/// How long such a body may take.
const EARLY_BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Admission, before any body is read: the open routes (`/health`, discovery documents)
/// always pass; anything else must pass the identity checks its head allows
/// ([`crate::identity::precheck`]), then take a slot of its peer and claimed identity
/// (`--max-concurrent-per-peer`) and one of all (`--max-concurrent`). Past either, the
/// request is shed at once (503, `Retry-After: 1`) rather than queued. So a slow or
/// greedy sender fills its own slots, not everyone's, and never the health check's. The
/// slots are held until the answer's head is out.
pub async fn admit(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if crate::identity::is_open_route(request.uri().path()) {
        return next.run(request).await;
    }
    let peer = match request.extensions().get::<ConnectInfo<Peer>>().map(|c| &c.0) {
        Some(Peer::Unix { uid, pid }) => format!("unix:{uid:?}:{pid:?}"),
        Some(Peer::Tcp(addr)) => format!("tcp:{}", addr.ip()),
        None => "unknown".to_owned(),
    };
    let claimed = match crate::identity::precheck(&state, &mut request) {
        Ok(claimed) => claimed,
        Err(error) => return refuse_early(&state, request, &peer, error).await,
    };
    // A claim is not proven before the body is read: one peer may claim several keys, so a
    // peer (a uid, an address) has a total too, the trusted local owner excepted.
    let total = match request.extensions().get::<ConnectInfo<Peer>>().map(|c| &c.0) {
        _ if state.dispatcher.is_local_owner(&claimed) => None,
        Some(Peer::Unix { uid, .. }) => Some(format!("total@unix:{uid:?}")),
        Some(Peer::Tcp(addr)) => Some(format!("total@tcp:{}", addr.ip())),
        None => Some("total@unknown".to_owned()),
    };
    let _peer_total = match total {
        Some(key) => match state.admission.try_acquire_scaled(&key, 2) {
            Some(slot) => Some(slot),
            None => return shed(&state, &request),
        },
        None => None,
    };
    let Some(_own) = state.admission.try_acquire(&format!("{claimed}@{peer}")) else {
        return shed(&state, &request);
    };
    let Ok(_any) = state.in_flight.clone().try_acquire_owned() else {
        return shed(&state, &request);
    };
    next.run(request).await
}

/// Sheds a request at a concurrency limit (503), and counts it.
fn shed(state: &AppState, request: &Request) -> Response {
    state.metrics.shed();
    reject_path(request.uri().path(), ExecError::Overloaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_and_are_per_principal() {
        let limiter = RateLimiter::new(1.0, 2.0);
        assert!(limiter.check("a", 1).is_ok());
        assert!(limiter.check("a", 1).is_ok());
        assert_eq!(limiter.check("a", 1), Err(1));
        assert!(limiter.check("b", 1).is_ok(), "another principal has its own bucket");
        assert!(
            limiter.check("b", 2).is_err(),
            "a cost above the tokens left takes none"
        );
        assert!(limiter.check("b", 1).is_ok());
        assert!(limiter.check("c", 3).is_err(), "a cost above the burst never fits");
        assert!(RateLimiter::new(0.0, 0.0).check("a", 5).is_ok(), "0 disables");
    }
}
