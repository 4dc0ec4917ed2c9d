//! JSON-RPC client for target services over `$HERO_SOCKET_DIR/<service>/rpc.sock`.
//!
//! Keep-alive connections are pooled per service. A call takes one from the pool (or opens
//! one, after the checks in [`socket`]) and drives it itself, in its own task: hyper's
//! HTTP/1.1 client half, with no connection task to hand the request to and the answer
//! back from. Every call has a deadline and an answer-size cap; a dropped call drops its
//! connection instead of returning it to the pool.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::net::UnixStream;

pub mod socket;

use crate::error::ExecError;
use crate::jsonrpc;
pub use socket::OwnSockets;

/// Headers a forwarded call carries, all derived from the intent (never copied from the caller).
#[derive(Debug, Clone, Default)]
pub struct ForwardHeaders {
    pub context: u64,
    /// Effective claims; `None` for full trust (the header is then omitted).
    pub claims: Option<String>,
    /// The pinned user the call is on behalf of.
    pub user: Option<String>,
    pub run_id: String,
    pub traceparent: String,
}

/// How long a connection may wait in the pool before it is closed instead of reused.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Most idle connections kept per target.
const POOL_MAX_IDLE: usize = 64;

/// One keep-alive connection to a target: hyper's HTTP/1.1 client half and the connection
/// it drives. Nothing runs it in the background: the call that holds it polls it (see
/// [`Link::drive`]), so a forwarded call costs no hand-off to a connection task.
struct Link {
    send: http1::SendRequest<Full<Bytes>>,
    conn: http1::Connection<TokioIo<UnixStream>, Full<Bytes>>,
    idle_since: Instant,
}

impl Link {
    /// Opens a connection to `service`'s socket, when that socket may be called at all
    /// ([`socket`]).
    async fn open(dir: &Path, own: &OwnSockets, service: &str) -> Result<Self, ExecError> {
        let refused = |why: String| ExecError::TargetUnavailable(format!("{service}: cannot connect: {why}"));
        // Names are validated before a call is built; the path is checked before it is used.
        let (path, id) = own.target(dir, service).map_err(refused)?;
        let stream = UnixStream::connect(&path).await.map_err(|e| refused(e.to_string()))?;
        socket::check_peer(&stream, &path, id).map_err(refused)?;
        let (send, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| refused(root_cause(&e)))?;
        Ok(Self {
            send,
            conn,
            idle_since: Instant::now(),
        })
    }

    /// Whether a pooled connection can take a request now: it is polled once, which also
    /// notices a target that closed it while it was idle.
    fn ready_now(&mut self) -> bool {
        if self.idle_since.elapsed() > POOL_IDLE {
            return false;
        }
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        if self.conn.poll_without_shutdown(&mut cx).is_ready() {
            return false; // closed, or broken
        }
        matches!(self.send.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }

    /// Polls `work` and, alongside it, the connection that feeds it, in the calling task.
    /// The error is why the connection failed.
    async fn drive<F: Future + Unpin>(&mut self, mut work: F) -> Result<F::Output, String> {
        let mut ended = false;
        std::future::poll_fn(|cx| {
            if !ended {
                match self.conn.poll_without_shutdown(cx) {
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(root_cause(&e))),
                    Poll::Ready(Ok(())) => ended = true,
                    Poll::Pending => {}
                }
            }
            match Pin::new(&mut work).poll(cx) {
                Poll::Ready(output) => Poll::Ready(Ok(output)),
                // Nothing drives the work any more: it would wait forever.
                Poll::Pending if ended => Poll::Ready(Err("the target closed the connection".to_owned())),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Whether the connection may go back to the pool after an exchange.
    fn reusable(&self) -> bool {
        !self.send.is_closed()
    }
}

/// The pooled client for every target service.
#[derive(Clone)]
pub struct Upstream {
    socket_dir: Arc<PathBuf>,
    own: Arc<OwnSockets>,
    /// Idle keep-alive connections per target, most recently used last.
    idle: Arc<std::sync::Mutex<HashMap<String, Vec<Link>>>>,
    max_response_bytes: usize,
    /// Calls in flight per target, so one slow service cannot take every connection.
    per_target: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>>,
    max_per_target: usize,
}

impl Upstream {
    /// A client for services under `socket_dir`.
    pub fn new(socket_dir: PathBuf, max_response_bytes: usize, own: OwnSockets) -> Self {
        Self {
            socket_dir: Arc::new(socket_dir),
            own: Arc::new(own),
            idle: Arc::default(),
            max_response_bytes,
            per_target: Arc::default(),
            max_per_target: 64,
        }
    }

    /// At most `max` calls in flight to one target; more wait within their timeout.
    pub fn with_target_limit(mut self, max: usize) -> Self {
        self.max_per_target = max.max(1);
        self
    }

    fn target_slots(&self, service: &str) -> Arc<tokio::sync::Semaphore> {
        let mut slots = self.per_target.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(service.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.max_per_target)))
            .clone()
    }

    /// A place among the calls in flight to `target` (a hero service or a source: their
    /// names never collide), waited for within `timeout`. Kept across reloads of a source.
    pub async fn slot(&self, target: &str, timeout: Duration) -> Result<tokio::sync::OwnedSemaphorePermit, ExecError> {
        tokio::time::timeout(timeout, self.target_slots(target).acquire_owned())
            .await
            .map_err(|_| {
                ExecError::TargetTimeout(format!(
                    "{target} already has {} calls in flight; none finished within {} ms",
                    self.max_per_target,
                    timeout.as_millis()
                ))
            })?
            .map_err(|_| ExecError::Internal("target limiter closed".into()))
    }

    /// Calls `method` on `service` and returns its `result`, or its error passed through.
    pub async fn call(
        &self,
        service: &str,
        method: &str,
        params: Option<&Value>,
        headers: &ForwardHeaders,
        timeout: Duration,
    ) -> Result<Box<RawValue>, ExecError> {
        let started = std::time::Instant::now();
        let _slot = self.slot(service, timeout).await?;
        let body = jsonrpc::request(&headers.run_id, method, params);
        let remaining = timeout.saturating_sub(started.elapsed());
        let bytes = self.exchange(service, &body, Some(headers), remaining).await?;
        parse_answer(service, &bytes)
    }

    /// Calls `method` with no hero headers (for the executor's own administrative calls,
    /// e.g. to hero_proc); returns the parsed result.
    pub async fn call_plain(
        &self,
        service: &str,
        method: &str,
        params: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, ExecError> {
        let body = jsonrpc::request("1", method, params);
        let bytes = self.exchange(service, &body, None, timeout).await?;
        let result = parse_answer(service, &bytes)?;
        serde_json::from_str(result.get()).map_err(|e| ExecError::TargetProtocol(e.to_string()))
    }

    /// Calls `rpc.discover` and returns the raw text of its `result`, for fingerprinting.
    pub async fn discover(&self, service: &str, timeout: Duration) -> Result<String, ExecError> {
        let body = jsonrpc::request("discover", "rpc.discover", None);
        let bytes = self.exchange(service, &body, None, timeout).await?;
        #[derive(serde::Deserialize)]
        struct Answer<'a> {
            #[serde(borrow)]
            result: Option<&'a serde_json::value::RawValue>,
            error: Option<Value>,
        }
        let answer: Answer<'_> = serde_json::from_slice(&bytes)
            .map_err(|e| ExecError::TargetProtocol(format!("{service}: rpc.discover answer is not JSON-RPC: {e}")))?;
        match (answer.result, answer.error) {
            (Some(raw), None) => Ok(raw.get().to_owned()),
            (_, Some(error)) => Err(ExecError::TargetProtocol(format!(
                "{service}: rpc.discover failed: {error}"
            ))),
            (None, None) => Err(ExecError::TargetProtocol(format!(
                "{service}: rpc.discover answer has neither result nor error"
            ))),
        }
    }

    /// A connection to `service`: the most recently used idle one that is still good, or a
    /// new one.
    async fn checkout(&self, service: &str) -> Result<Link, ExecError> {
        let pooled = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let links = idle.get_mut(service);
            let mut found = None;
            if let Some(links) = links {
                while let Some(mut link) = links.pop() {
                    if link.ready_now() {
                        found = Some(link);
                        break;
                    }
                }
            }
            found
        };
        match pooled {
            Some(link) => Ok(link),
            None => Link::open(&self.socket_dir, &self.own, service).await,
        }
    }

    /// Puts a connection whose exchange is complete back in the pool.
    fn checkin(&self, service: &str, mut link: Link) {
        if !link.reusable() {
            return;
        }
        let now = Instant::now();
        link.idle_since = now;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let links = idle.entry(service.to_owned()).or_default();
        // Oldest first (links go back at the end): the expired ones are a prefix.
        let expired = links.partition_point(|l| now.duration_since(l.idle_since) > POOL_IDLE);
        links.drain(..expired);
        if links.len() < POOL_MAX_IDLE {
            links.push(link);
        }
    }

    /// One HTTP exchange: POST the body to `/rpc`, read the answer under the size cap,
    /// all within `timeout`. A connection goes back to the pool only after a complete
    /// exchange; one dropped mid-call (a timeout, a cancelled run) is closed.
    async fn exchange(
        &self,
        service: &str,
        body: &Value,
        headers: Option<&ForwardHeaders>,
        timeout: Duration,
    ) -> Result<Bytes, ExecError> {
        let host =
            HeaderValue::from_str(service).map_err(|e| ExecError::Internal(format!("building target request: {e}")))?;
        let mut request = Request::post("/rpc")
            .header(header::HOST, host)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json");
        if let Some(h) = headers {
            request = request
                .header("x-hero-context", h.context)
                .header("x-hero-run-id", &h.run_id)
                .header("traceparent", &h.traceparent);
            if let Some(claims) = &h.claims {
                request = request.header("x-hero-claims", claims);
            }
            if let Some(user) = &h.user {
                request = request.header("x-hero-user", user);
            }
        }
        let payload = serde_json::to_vec(body).map_err(|e| ExecError::Internal(e.to_string()))?;
        let request = request
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| ExecError::Internal(format!("building target request: {e}")))?;

        let exchange = async {
            let mut link = self.checkout(service).await?;
            let lost = |why: String| {
                ExecError::TargetUnavailable(format!("{service}: connection lost before an answer: {why}"))
            };
            let sent = link.send.send_request(request);
            let response = link
                .drive(Box::pin(sent))
                .await
                .map_err(lost)?
                .map_err(|e| lost(root_cause(&e)))?;
            let status = response.status();
            let collect = Limited::new(response.into_body(), self.max_response_bytes).collect();
            let body = link
                .drive(Box::pin(collect))
                .await
                .map_err(|why| ExecError::TargetProtocol(format!("{service}: answer cut short: {why}")))?
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        ExecError::TargetProtocol(format!(
                            "{service}: answer exceeds {} bytes",
                            self.max_response_bytes
                        ))
                    } else {
                        ExecError::TargetProtocol(format!("{service}: answer cut short: {e}"))
                    }
                })?
                .to_bytes();
            self.checkin(service, link);
            if body.is_empty() {
                return Err(ExecError::TargetProtocol(format!(
                    "{service}: empty answer (HTTP {status})"
                )));
            }
            Ok(body)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ExecError::TargetTimeout(format!(
                "{service} did not answer within {} ms",
                timeout.as_millis()
            ))),
        }
    }
}

/// Interprets a target's answer: its result (kept byte for byte), its own error, or a
/// protocol error.
fn parse_answer(service: &str, bytes: &[u8]) -> Result<Box<RawValue>, ExecError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        result: Option<Box<RawValue>>,
        error: Option<Value>,
    }
    let garbage = |why: &str| ExecError::TargetProtocol(format!("{service}: {why}"));
    let answer: Answer =
        serde_json::from_slice(bytes).map_err(|_| garbage("answer is not a JSON-RPC response object"))?;
    match (answer.result, answer.error) {
        (Some(result), _) => Ok(result),
        (None, Some(Value::Object(mut error))) => {
            let code = error.get("code").and_then(Value::as_i64);
            match (code, error.remove("message")) {
                (Some(code), Some(Value::String(message))) => Err(ExecError::Target {
                    code,
                    message,
                    data: error.remove("data").map(Box::new),
                }),
                _ => Err(garbage("error object lacks an integer code or a string message")),
            }
        }
        _ => Err(garbage("answer has neither result nor error")),
    }
}

/// The innermost error message (hyper-util wraps the interesting io::Error).
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified() {
        let ok = parse_answer("s", br#"{"jsonrpc":"2.0","id":1,"result": {"b":1,  "a":2}}"#).unwrap();
        assert_eq!(ok.get(), r#"{"b":1,  "a":2}"#, "results pass through byte for byte");
        let err = parse_answer(
            "s",
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":7,"message":"m","data":[1]}}"#,
        )
        .unwrap_err();
        assert!(matches!(err, ExecError::Target { code: 7, .. }));
        for garbage in [&b"<html>"[..], b"[1]", b"{}", br#"{"error":{"code":"x"}}"#] {
            assert_eq!(parse_answer("s", garbage).unwrap_err().code(), -32022);
        }
    }
}
