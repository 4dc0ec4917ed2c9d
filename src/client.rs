//! A small client for the executor over a Unix socket: it signs requests (RFC 9421,
//! Ed25519) with a local key, and verifies the executor's signed responses against the
//! key the executor publishes. The CLI, the examples and the tests all use it, so they
//! exercise the same code a user's agent would.

use std::path::{Path, PathBuf};

use base64::Engine;
use bytes::Bytes;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{SigningKey, VerifyingKey};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rand::RngCore;
use serde_json::{Value, json};
use tokio::net::UnixStream;

use crate::identity::respond::RESPONSE_LABEL;
use crate::identity::signature::{self, MessageView, SigError};
use crate::identity::verify::required_components;

/// The `Accept-Signature` (RFC 9421 section 5.1) a client that checks answers sends: the
/// components of the executor's answer signature to an unsigned request.
const ACCEPT_SIGNATURE_VALUE: &str = r#"hero_executor=("@status" "content-type" "content-digest")"#;

/// What can go wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the executor at {}: {source}", socket.display())]
    Connect { socket: PathBuf, source: std::io::Error },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("key: {0}")]
    Key(String),
    #[error("signature: {0}")]
    Signature(#[from] SigError),
    #[error("the executor's answer is not valid: {0}")]
    Protocol(String),
    #[error("error {code}: {message}{}", data.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Rpc {
        code: i64,
        message: String,
        data: Option<Value>,
    },
}

/// Signs requests with one Ed25519 key enrolled under `keyid`.
pub struct Signer {
    pub keyid: String,
    key: SigningKey,
}

impl Signer {
    pub fn new(keyid: impl Into<String>, key: SigningKey) -> Self {
        Self {
            keyid: keyid.into(),
            key,
        }
    }

    /// Loads a PKCS#8 PEM private key (as written by `hero_executor keygen`).
    pub fn load(path: &Path, keyid: impl Into<String>) -> Result<Self, ClientError> {
        let pem = std::fs::read_to_string(path).map_err(|e| ClientError::Key(format!("{}: {e}", path.display())))?;
        let key = SigningKey::from_pkcs8_pem(&pem)
            .map_err(|e| ClientError::Key(format!("{} is not an Ed25519 PKCS#8 PEM key: {e}", path.display())))?;
        Ok(Self::new(keyid, key))
    }

    /// The public half, to enrol.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Adds `Content-Digest` (when there is a body), `Signature-Input` and `Signature`,
    /// covering everything the executor requires, with a fresh nonce. Label `sig1`.
    pub fn sign(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &mut HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<(), SigError> {
        if !body.is_empty() {
            let digest = signature::content_digest(body);
            headers.insert(
                "content-digest",
                HeaderValue::from_str(&digest).expect("base64 is visible ASCII"),
            );
        }
        let components: Vec<String> = required_components(uri, headers, body)
            .into_iter()
            .map(|c| format!("\"{c}\""))
            .collect();
        let refs: Vec<&str> = components.iter().map(String::as_str).collect();
        let mut nonce = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let nonce = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(nonce);
        let inner = signature::params_inner_list(&refs, now, None, Some(&nonce), &self.keyid)?;
        let params_line = signature::serialize_inner_list(&inner)?;
        let view = MessageView::request(method, uri, headers);
        let base = signature::signature_base(&view, None, &inner.items, &params_line)?;
        let sig = signature::sign_ed25519(&self.key, &base);
        let value = |s: String| HeaderValue::from_str(&s).map_err(|_| SigError("unencodable signature header".into()));
        headers.insert("signature-input", value(format!("sig1={params_line}"))?);
        headers.insert("signature", value(format!("sig1={}", signature::byte_sequence(&sig)))?);
        Ok(())
    }
}

/// An HTTP answer from the executor.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Whether the response signature was checked against the executor's published key.
    pub verified: bool,
}

/// A client of one executor socket.
pub struct Client {
    socket: PathBuf,
    signer: Option<Signer>,
    executor_key: Option<VerifyingKey>,
}

impl Client {
    /// A client of `socket` (rpc.sock or rest.sock); unsigned until [`Client::with_signer`].
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            signer: None,
            executor_key: None,
        }
    }

    /// Signs every request with `signer`.
    pub fn with_signer(mut self, signer: Signer) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Verifies every response against this executor key.
    pub fn with_executor_key(mut self, key: VerifyingKey) -> Self {
        self.executor_key = Some(key);
        self
    }

    /// Reads the executor's signing key from its `heroservice.json`, and verifies every
    /// response against it from then on.
    pub async fn trust_published_key(mut self) -> Result<Self, ClientError> {
        let reply = self
            .send(
                Method::GET,
                "/.well-known/heroservice.json",
                HeaderMap::new(),
                Vec::new(),
            )
            .await?;
        let info: Value = serde_json::from_slice(&reply.body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let pem = info["signing_key"]["public_key_pem"]
            .as_str()
            .ok_or_else(|| ClientError::Protocol("heroservice.json has no signing_key".into()))?;
        self.executor_key = Some(signature::parse_public_key(pem)?);
        Ok(self)
    }

    /// Sends one request (signed if there is a signer), and checks the response signature
    /// if an executor key is known.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        mut headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<Reply, ClientError> {
        let uri: Uri = path
            .parse()
            .map_err(|e| ClientError::Http(format!("bad path {path}: {e}")))?;
        headers.insert(http::header::HOST, HeaderValue::from_static("localhost"));
        if !body.is_empty() && !headers.contains_key(http::header::CONTENT_TYPE) {
            headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if self.executor_key.is_some() {
            // Unsigned requests get a signed answer only when they ask (signed ones always do).
            headers.insert(
                crate::identity::respond::ACCEPT_SIGNATURE,
                HeaderValue::from_static(ACCEPT_SIGNATURE_VALUE),
            );
        }
        if let Some(signer) = &self.signer {
            signer.sign(&method, &uri, &mut headers, &body, crate::now_unix())?;
        }
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                socket: self.socket.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(conn);
        let mut request = Request::builder().method(method.clone()).uri(uri.clone());
        if let Some(h) = request.headers_mut() {
            *h = headers.clone();
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        let mut reply = Reply {
            status: parts.status,
            headers: parts.headers,
            body,
            verified: false,
        };
        // Requests that fail authentication are answered unsigned (there is nobody to bind
        // the answer to); such an error is passed on unverified. A success is always signed.
        let unsigned_rejection = !reply.headers.contains_key("signature") && !reply.status.is_success();
        if let Some(key) = &self.executor_key
            && !crate::identity::is_open_route(uri.path())
            && !unsigned_rejection
        {
            let request = MessageView::request(&method, &uri, &headers);
            verify_response(key, &request, &reply)?;
            reply.verified = true;
        }
        Ok(reply)
    }

    /// Calls one JSON-RPC method on rpc.sock; returns its result or its error.
    pub async fn rpc(&self, method: &str, params: Value, headers: HeaderMap) -> Result<Value, ClientError> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let reply = self
            .send(
                Method::POST,
                "/rpc",
                headers,
                serde_json::to_vec(&body).unwrap_or_default(),
            )
            .await?;
        let answer: Value = serde_json::from_slice(&reply.body).map_err(|e| {
            ClientError::Protocol(format!(
                "HTTP {}: {e}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            ))
        })?;
        if let Some(error) = answer.get("error") {
            return Err(ClientError::Rpc {
                code: error["code"].as_i64().unwrap_or_default(),
                message: error["message"].as_str().unwrap_or_default().to_owned(),
                data: error.get("data").cloned(),
            });
        }
        answer
            .get("result")
            .cloned()
            .ok_or_else(|| ClientError::Protocol("the answer has neither result nor error".into()))
    }
}

/// Checks an executor response: its `Content-Digest` matches the body, and its
/// `hero_executor` signature verifies with `key`, covering the status, the digest and,
/// when the request was signed, the request's method, path and signature.
pub fn verify_response(key: &VerifyingKey, request: &MessageView<'_>, reply: &Reply) -> Result<(), SigError> {
    let header = |name: &str| {
        reply
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| SigError(format!("the response has no {name} header")))
    };
    signature::verify_content_digest(header("content-digest")?, &reply.body)?;
    let signatures = signature::parse_signatures(header("signature-input")?, header("signature")?, 8)?;
    let s = signatures
        .iter()
        .find(|s| s.label == RESPONSE_LABEL)
        .ok_or_else(|| SigError(format!("the response has no {RESPONSE_LABEL} signature")))?;
    for required in ["@status", "content-digest"] {
        if !s.covers(required) {
            return Err(SigError(format!("the response signature does not cover {required}")));
        }
    }
    if request.headers.contains_key("signature") {
        let binds = s.components.iter().any(|c| {
            matches!(&c.bare_item, sfv::BareItem::String(n) if n.as_str() == "signature")
                && c.params.keys().any(|k| k.as_str() == "req")
        });
        if !binds {
            return Err(SigError(
                "the response signature is not bound to the request's signature".into(),
            ));
        }
    }
    let view = MessageView {
        method: request.method,
        uri: request.uri,
        headers: &reply.headers,
        scheme: "http",
        status: Some(reply.status.as_u16()),
    };
    let base = signature::signature_base(&view, Some(request), &s.components, &s.params_line)?;
    signature::verify_ed25519(key, &base, &s.signature)
}

/// `X-Hero-*` headers for a call.
pub fn hero_headers(context: Option<u64>, claims: Option<&str>, user: Option<&str>) -> Result<HeaderMap, ClientError> {
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| -> Result<(), ClientError> {
        let value = HeaderValue::from_str(&value).map_err(|_| ClientError::Http(format!("invalid {name} value")))?;
        headers.insert(name, value);
        Ok(())
    };
    if let Some(context) = context {
        set("x-hero-context", context.to_string())?;
    }
    if let Some(claims) = claims {
        set("x-hero-claims", claims.to_owned())?;
    }
    if let Some(user) = user {
        set("x-hero-user", user.to_owned())?;
    }
    Ok(headers)
}
