//! Identity: who is asking (DESIGN section 6).
//!
//! The identity layer resolves every request, except the open discovery routes, to a
//! verified [`Principal`] and inserts it into the request extensions. Resolution order:
//! (1) an HTTP message signature ([`verify`]): verified against the key registry, or
//! refused; never downgraded; (2) an unsigned request over a Unix socket from a trusted
//! peer uid; (3) otherwise 401 with an `Accept-Signature` header saying what to sign.

pub mod context;
pub mod registry;
pub mod respond;
pub mod signature;
pub mod verify;

use axum::extract::connect_info::ConnectInfo;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use http::HeaderValue;
use tower::{Layer, Service};

use crate::AppState;
use crate::config::UnsignedLocal;
use crate::error::ExecError;
use crate::error::render::reject;
use crate::intent::Principal;
use crate::limits::BufferedBody;

/// The transport peer of a connection, captured when it is accepted (see `server`).
#[derive(Debug, Clone)]
pub enum Peer {
    /// A Unix-socket peer; `uid` and `pid` from SO_PEERCRED (absent if the kernel would not say).
    Unix { uid: Option<u32>, pid: Option<i32> },
    /// A TCP peer.
    Tcp(std::net::SocketAddr),
}

/// What to sign, per RFC 9421 section 5.1, sent with every 401.
pub const ACCEPT_SIGNATURE: &str =
    r#"sig1=("@method" "@path" "@query" "content-digest");created;expires;nonce;keyid;alg="ed25519""#;

/// Routes anyone may call without an identity.
pub fn is_open_route(path: &str) -> bool {
    matches!(
        path,
        "/health" | "/.well-known/heroservice.json" | "/openrpc.json" | "/openapi.json"
    )
}

/// The identity layer (see the module docs): a configurable tower layer over the key
/// registry, the signature rules and the trusted-peer setting in [`AppState`].
#[derive(Clone)]
pub struct IdentityLayer {
    state: AppState,
}

impl IdentityLayer {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for IdentityLayer {
    type Service = Identity<S>;

    fn layer(&self, inner: S) -> Identity<S> {
        Identity {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The identity service: resolves the principal, or answers 401/403 itself.
#[derive(Clone)]
pub struct Identity<S> {
    inner: S,
    state: AppState,
}

impl<S> Service<Request> for Identity<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        // Verification is synchronous (keys are in memory): decide before taking the inner service.
        if let Err(error) = authenticate(&self.state, &mut request) {
            return Box::pin(std::future::ready(Ok(refuse(&request, error))));
        }
        // The inner service was driven to readiness; hand that one to the call (tower idiom).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(request))
    }
}

/// Answers a request that identity refused; a 401 says what to sign (`Accept-Signature`).
pub fn refuse<B>(request: &http::Request<B>, error: ExecError) -> Response {
    let mut response = reject(request, error);
    if response.status() == http::StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert("accept-signature", HeaderValue::from_static(ACCEPT_SIGNATURE));
    }
    response
}

/// What can be decided about who is asking from the request head alone, before its body is
/// read: an unsigned request from a peer that is not trusted, or a signature by a key that
/// is not enrolled, revoked or stale, is refused without waiting for a body. Returns who the
/// request claims to be (the keyid, or the trusted peer), to count its slots by.
pub fn precheck<B>(state: &AppState, request: &mut http::Request<B>) -> Result<String, ExecError> {
    let headers = request.headers();
    if headers.contains_key("signature") || headers.contains_key("signature-input") {
        let (keyid, parsed) = state
            .verifier
            .precheck(headers, crate::now_unix())
            .inspect_err(|e| count_signature_failure(state, e))?;
        request.extensions_mut().insert(parsed);
        return Ok(keyid);
    }
    let peer = request.extensions().get::<ConnectInfo<Peer>>().map(|c| c.0.clone());
    // An untrusted peer's open `rpc.discover` is answered from its short body by the
    // admission's early refusal (`limits`), never from a slot others need.
    resolve_unsigned(state.config.unsigned_local, state.own_uid, peer).map(|principal| principal.id)
}

/// Inserts the verified [`Principal`] (and [`verify::VerifiedSignature`]) into the request, or
/// says why not. The principal's rate limit is applied here, after the signature verified
/// and before its nonce is remembered: a refused request costs no slot of the replay cache.
fn authenticate(state: &AppState, request: &mut Request) -> Result<(), ExecError> {
    if is_open_route(request.uri().path()) || is_open_rpc_call(request) {
        return Ok(());
    }
    let signed = request.headers().contains_key("signature") || request.headers().contains_key("signature-input");
    if !signed {
        let peer = request.extensions().get::<ConnectInfo<Peer>>().map(|c| c.0.clone());
        let principal = resolve_unsigned(state.config.unsigned_local, state.own_uid, peer)?;
        rate_limited(state, &principal.id)?;
        request.extensions_mut().insert(principal);
        return Ok(());
    }
    // A signature is verified or refused; it never falls back to the peer identity.
    let body = request
        .extensions()
        .get::<BufferedBody>()
        .map(|b| b.0.clone())
        .unwrap_or_default();
    let now = crate::now_unix();
    let parsed = request.extensions().get::<verify::Parsed>();
    let verified = state
        .verifier
        .verify(request.method(), request.uri(), request.headers(), &body, now, parsed)
        .inspect_err(|e| count_signature_failure(state, e))?;
    rate_limited(state, &verified.principal.id)?;
    state
        .verifier
        .remember(&verified, now)
        .inspect_err(|e| count_signature_failure(state, e))?;
    request.extensions_mut().insert(verified.signature);
    request.extensions_mut().insert(verified.principal);
    Ok(())
}

/// Counts a refused signature under its reason.
fn count_signature_failure(state: &AppState, error: &ExecError) {
    if let Some(reason) = verify::failure_reason(error) {
        state.metrics.signature_failure(reason);
    }
}

/// Takes one token of `principal`'s rate.
fn rate_limited(state: &AppState, principal: &str) -> Result<(), ExecError> {
    state.rate_limiter.check(principal, 1).map_err(|retry_after_s| {
        state.metrics.rate_limited();
        ExecError::RateLimited { retry_after_s }
    })
}

/// Step 2 of identity resolution: an unsigned request is trusted only from the daemon's
/// own uid over a Unix socket, and only while `unsigned_local = owner`.
fn resolve_unsigned(unsigned_local: UnsignedLocal, own_uid: u32, peer: Option<Peer>) -> Result<Principal, ExecError> {
    match peer {
        Some(Peer::Unix { uid: Some(uid), .. }) if unsigned_local == UnsignedLocal::Owner && uid == own_uid => {
            Ok(Principal::local_owner(uid))
        }
        Some(Peer::Unix { uid, .. }) => Err(ExecError::Unauthenticated(match unsigned_local {
            UnsignedLocal::Owner => format!(
                "unsigned calls are accepted only from the daemon's own uid ({}); peer uid is {}: sign the request",
                own_uid,
                uid.map_or("unknown".to_owned(), |u| u.to_string())
            ),
            UnsignedLocal::Off => "unsigned calls are disabled (unsigned_local = off): sign the request".into(),
        })),
        Some(Peer::Tcp(_)) => Err(ExecError::Unauthenticated(
            "calls over TCP must carry an HTTP message signature (RFC 9421)".into(),
        )),
        None => Err(ExecError::Unauthenticated("no transport identity".into())),
    }
}

/// `rpc.discover` is open: a single JSON-RPC request for it needs no identity.
fn is_open_rpc_call(request: &Request) -> bool {
    if request.uri().path() != "/rpc" {
        return false;
    }
    #[derive(serde::Deserialize)]
    struct MethodOnly<'a> {
        #[serde(borrow)]
        method: &'a str,
    }
    request
        .extensions()
        .get::<BufferedBody>()
        .and_then(|b| serde_json::from_slice::<MethodOnly<'_>>(&b.0).ok())
        .is_some_and(|r| r.method == "rpc.discover")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_uid_is_trusted_unsigned() {
        let unix = |uid| {
            Some(Peer::Unix {
                uid: Some(uid),
                pid: None,
            })
        };
        let owner = resolve_unsigned(UnsignedLocal::Owner, 1000, unix(1000)).unwrap();
        assert_eq!(owner, Principal::local_owner(1000));
        for (mode, peer) in [
            (UnsignedLocal::Owner, unix(1001)),
            (UnsignedLocal::Owner, Some(Peer::Unix { uid: None, pid: None })),
            (UnsignedLocal::Off, unix(1000)),
            (UnsignedLocal::Owner, Some(Peer::Tcp(([127, 0, 0, 1], 9).into()))),
            (UnsignedLocal::Owner, None),
        ] {
            assert_eq!(
                resolve_unsigned(mode, 1000, peer.clone()).unwrap_err().code(),
                -32001,
                "{mode:?} {peer:?}"
            );
        }
    }
}
