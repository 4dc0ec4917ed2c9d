//! Signed responses (DESIGN section 6): the executor's own Ed25519 key signs the
//! response to every signed request, covering `@status`, `content-type`,
//! `content-digest` and the request's `@method`, `@path` and signature (`;req`), so a
//! caller can prove what the executor answered to which request.
//!
//! A request authenticated by its socket peer (the owner's uid, no signature) has no
//! signature to bind the answer to; its answer is signed (without the `;req` components)
//! only when it asks with an `Accept-Signature` header (RFC 9421 section 5.1), as
//! [`crate::client::Client`] does when it knows the executor's key. Signing was a tenth of
//! an unsigned call's CPU, so it is not spent on answers nobody checks (README, Decisions).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{SigningKey, VerifyingKey};
use http::HeaderValue;
use sha2::{Digest, Sha256};

use super::signature::{self, MessageView};
use super::verify::VerifiedSignature;
use crate::AppState;
use crate::intent::Principal;

/// The signature label of every response signature.
pub const RESPONSE_LABEL: &str = "hero_executor";

/// The executor's own signing key, kept in the data dir (mode 0600).
pub struct ServerKey {
    pub keyid: String,
    signing: SigningKey,
}

impl ServerKey {
    /// Loads `<data_dir>/executor_ed25519.pem`, generating it on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, String> {
        let path = data_dir.join("executor_ed25519.pem");
        let signing = if path.exists() {
            let pem = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| format!("{} is not an Ed25519 PKCS#8 key: {e}", path.display()))?
        } else {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let pem = signature::private_key_pem(&key).map_err(|e| e.0)?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            file.write_all(pem.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            tracing::info!(path = %path.display(), "generated the executor's signing key");
            key
        };
        Ok(Self::from_signing_key(signing))
    }

    /// Wraps a key; the keyid is derived from the public key.
    pub fn from_signing_key(signing: SigningKey) -> Self {
        let fingerprint = hex::encode(Sha256::digest(signing.verifying_key().as_bytes()));
        Self {
            keyid: format!("hero_executor:{}", &fingerprint[..16]),
            signing,
        }
    }

    /// Signs an answer: sets its `Content-Digest`, then `Signature-Input` and `Signature`
    /// (label `hero_executor`) covering `@status`, `content-type` (when set),
    /// `content-digest` and, when the request was signed with `request_label`, the
    /// request's `@method`, `@path` and that signature (`;req`).
    pub fn sign_answer(
        &self,
        request: &MessageView<'_>,
        request_label: Option<&str>,
        answer: &mut http::response::Parts,
        body: &[u8],
    ) -> Result<(), signature::SigError> {
        let digest = signature::content_digest(body);
        answer.headers.insert(
            "content-digest",
            HeaderValue::from_str(&digest).expect("base64 is visible ASCII"),
        );
        let mut components = vec!["\"@status\"".to_owned()];
        if answer.headers.contains_key(http::header::CONTENT_TYPE) {
            components.push("\"content-type\"".to_owned());
        }
        components.push("\"content-digest\"".to_owned());
        if let Some(label) = request_label {
            components.push("\"@method\";req".to_owned());
            components.push("\"@path\";req".to_owned());
            components.push(format!("\"signature\";req;key=\"{label}\""));
        }
        let refs: Vec<&str> = components.iter().map(String::as_str).collect();
        let inner = signature::params_inner_list(&refs, crate::now_unix(), None, None, &self.keyid)?;
        let params_line = signature::serialize_inner_list(&inner)?;
        let answer_view = MessageView {
            headers: &answer.headers,
            status: Some(answer.status.as_u16()),
            ..*request
        };
        let base = signature::signature_base(&answer_view, Some(request), &inner.items, &params_line)?;
        let sig = signature::sign_ed25519(&self.signing, &base);
        let header = |value: String| {
            HeaderValue::from_str(&value).map_err(|_| signature::SigError("unencodable signature header".into()))
        };
        answer
            .headers
            .insert("signature-input", header(format!("{RESPONSE_LABEL}={params_line}"))?);
        answer.headers.insert(
            "signature",
            header(format!("{RESPONSE_LABEL}={}", signature::byte_sequence(&sig)))?,
        );
        Ok(())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// `{keyid, alg, public_key_pem}`, as published in `heroservice.json`.
    pub fn description(&self) -> serde_json::Value {
        serde_json::json!({
            "keyid": self.keyid,
            "alg": "ed25519",
            "public_key_pem": signature::public_key_pem(&self.verifying_key()),
        })
    }
}

/// The request header that asks for a signed answer to an unsigned request.
pub const ACCEPT_SIGNATURE: &str = "accept-signature";

/// Signs the responses of authenticated requests (those that carry a [`Principal`]) that
/// were signed or ask for a signature.
pub async fn sign_response(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let verified = request.extensions().get::<VerifiedSignature>().cloned();
    let wanted = verified.is_some() || request.headers().contains_key(ACCEPT_SIGNATURE);
    if !wanted || request.extensions().get::<Principal>().is_none() {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let uri = request.uri().clone();
    let request_headers = match verified {
        Some(_) => request.headers().clone(),
        None => Default::default(),
    };
    let response = next.run(request).await;
    // A long-lived event stream (MCP's GET /mcp) cannot be buffered to be signed.
    let streaming = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if streaming && method == http::Method::GET {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        tracing::error!("could not read a response body to sign it");
        return crate::error::render::reject_path(
            uri.path(),
            crate::error::ExecError::Internal("unreadable response body".into()),
        );
    };
    let request = MessageView {
        method: &method,
        uri: &uri,
        headers: &request_headers,
        scheme: "http",
        status: None,
    };
    let label = verified.as_ref().map(|v| v.label.as_str());
    if let Err(e) = state.server_key.sign_answer(&request, label, &mut parts, &bytes) {
        tracing::error!(error = %e, "could not sign a response");
    }
    Response::from_parts(parts, Body::from(bytes))
}
