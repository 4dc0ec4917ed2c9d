//! JSON-RPC client for target services over `$HERO_SOCKET_DIR/<service>/rpc.sock`.
//!
//! One pooled hyper client for every target: the URI authority names the service and the
//! connector maps it to the service's socket, so keep-alive connections are pooled per
//! service. Every call has a deadline and an answer-size cap; a dropped call drops its
//! connection instead of returning it to the pool.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
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

/// Connects `http://<service>/...` to `<socket_dir>/<service>/rpc.sock`, when that socket
/// may be called at all ([`socket`]).
#[derive(Clone)]
struct UnixConnector {
    socket_dir: Arc<PathBuf>,
    own: Arc<OwnSockets>,
}

impl tower::Service<Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let service = uri.host().unwrap_or_default().to_owned();
        let (dir, own) = (self.socket_dir.clone(), self.own.clone());
        Box::pin(async move {
            let refused = |why: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why);
            // Names are validated before a URI is built; the path is checked before it is used.
            let (path, id) = own.target(&dir, &service).map_err(refused)?;
            let stream = UnixStream::connect(&path).await?;
            socket::check_peer(&stream, &path, id).map_err(refused)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// The pooled client for every target service.
#[derive(Clone)]
pub struct Upstream {
    client: Client<UnixConnector, Full<Bytes>>,
    max_response_bytes: usize,
    /// Calls in flight per target, so one slow service cannot take every connection.
    per_target: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>>,
    max_per_target: usize,
}

impl Upstream {
    /// A client for services under `socket_dir`.
    pub fn new(socket_dir: PathBuf, max_response_bytes: usize, own: OwnSockets) -> Self {
        let connector = UnixConnector {
            socket_dir: Arc::new(socket_dir),
            own: Arc::new(own),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(connector);
        Self {
            client,
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
        let slots = self.target_slots(service);
        let _slot = tokio::time::timeout(timeout, slots.acquire_owned())
            .await
            .map_err(|_| {
                ExecError::TargetTimeout(format!(
                    "{service} already has {} calls in flight; none finished within {} ms",
                    self.max_per_target,
                    timeout.as_millis()
                ))
            })?
            .map_err(|_| ExecError::Internal("target limiter closed".into()))?;
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

    /// One HTTP exchange: POST the body to `/rpc`, read the answer under the size cap,
    /// all within `timeout`.
    async fn exchange(
        &self,
        service: &str,
        body: &Value,
        headers: Option<&ForwardHeaders>,
        timeout: Duration,
    ) -> Result<Bytes, ExecError> {
        let uri: Uri = format!("http://{service}/rpc")
            .parse()
            .map_err(|e| ExecError::Internal(format!("building target URI: {e}")))?;
        let mut request = Request::post(uri)
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
            let response = self.client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    ExecError::TargetUnavailable(format!("{service}: cannot connect: {}", root_cause(&e)))
                } else {
                    ExecError::TargetUnavailable(format!(
                        "{service}: connection lost before an answer: {}",
                        root_cause(&e)
                    ))
                }
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), self.max_response_bytes)
                .collect()
                .await
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
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
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
