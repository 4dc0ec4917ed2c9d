//! Hero context (DESIGN section 6): `X-Hero-Context`, `X-Hero-Claims`, `X-Hero-User` and
//! `traceparent` are parsed once, combined with the verified [`Principal`], and inserted
//! as a [`Caller`] for the adapters. Malformed headers are a 400 in the surface's shape.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderMap;
use tower_http::request_id::RequestId;

use crate::dispatch::valid_traceparent;
use crate::error::ExecError;
use crate::error::render::reject;
use crate::intent::{Caller, Claims, Principal};

use crate::access::IMPERSONATE_CLAIM;
use crate::telemetry::{AnsweredFor, RequestTrace};

/// Builds the [`Caller`] for requests that carry a principal.
pub async fn hero_context(mut request: Request, next: Next) -> Response {
    let Some(principal) = request.extensions().get::<Principal>().cloned() else {
        return next.run(request).await; // open route: nobody to describe
    };
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // The relay is the trusted local peer of `ui.sock` (the node's router): a signed key
    // there is an ordinary caller, not a relay whose humans it may name at will.
    let relay = request.extensions().get::<HumanRelay>().is_some()
        && request
            .extensions()
            .get::<crate::identity::verify::VerifiedSignature>()
            .is_none();
    match caller(principal, request.headers(), request_id, relay) {
        Ok(mut caller) => {
            let span = tracing::Span::current();
            span.record("principal", tracing::field::display(&caller.principal.id));
            if let Some(user) = &caller.user {
                span.record("user", tracing::field::display(user));
            }
            // With --otlp-endpoint the request has a span (the caller's traceparent is its
            // parent): calls continue that span.
            let traced = request.extensions().get::<RequestTrace>().map(|t| t.0.clone());
            let principal = traced.is_some().then(|| caller.principal.id.clone());
            if traced.is_some() {
                caller.traceparent = traced;
            }
            request.extensions_mut().insert(caller);
            let mut response = next.run(request).await;
            if let Some(principal) = principal {
                response.extensions_mut().insert(AnsweredFor(principal));
            }
            response
        }
        Err(error) => reject(&request, error),
    }
}

/// Marks a request to a socket whose peer names the human it relays (`ui.sock`: a node's
/// router in front of the console; only the unsigned trusted peer is such a relay). There `X-Hero-User` needs the impersonation claim in
/// the peer's ceiling, not in the claims it narrowed the request to: a router hands the
/// console a human with only that human's claims.
#[derive(Debug, Clone, Copy)]
pub struct HumanRelay;

fn caller(principal: Principal, headers: &HeaderMap, request_id: String, relay: bool) -> Result<Caller, ExecError> {
    let context = match single(headers, "x-hero-context")? {
        None => 0,
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map_err(|_| ExecError::InvalidRequest(format!("X-Hero-Context must be an unsigned integer, got {v:?}")))?,
    };
    if let Some(allowed) = &principal.contexts
        && !allowed.contains(&context)
    {
        return Err(ExecError::NotEnrolled(format!(
            "{} may not act in context {context} (allowed: {})",
            principal.id,
            allowed.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        )));
    }
    let requested = single(headers, "x-hero-claims")?
        .map(|v| Claims::parse(v).map_err(|e| ExecError::InvalidRequest(format!("X-Hero-Claims: {e}"))))
        .transpose()?;
    let claims = principal.ceiling.narrow(requested.as_ref());
    let user = match single(headers, "x-hero-user")? {
        None => None,
        Some(user) => {
            let user = user.trim();
            if user.is_empty() || user.len() > 256 || !user.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ExecError::InvalidRequest(
                    "X-Hero-User must be 1-256 printable ASCII characters".into(),
                ));
            }
            let may_name = if relay { &principal.ceiling } else { &claims };
            if !may_name.holds(IMPERSONATE_CLAIM) {
                return Err(ExecError::Denied(format!(
                    "X-Hero-User needs the {IMPERSONATE_CLAIM} claim, which {} does not hold",
                    principal.id
                )));
            }
            Some(user.to_owned())
        }
    };
    // An invalid traceparent is dropped, not an error (W3C trace context says restart the trace).
    let traceparent = single(headers, "traceparent")?
        .filter(|v| valid_traceparent(v))
        .map(str::to_owned);
    let relayed = relay && user.is_some();
    Ok(Caller {
        principal,
        context,
        claims,
        user,
        request_id,
        traceparent,
        relayed,
    })
}

/// A header that may appear at most once, as visible ASCII.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, ExecError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ExecError::InvalidRequest(format!(
            "header {name} must appear at most once"
        )));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| ExecError::InvalidRequest(format!("header {name} is not visible ASCII")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn parses_and_narrows() {
        let owner = Principal::local_owner(1);
        let c = caller(
            owner.clone(),
            &headers(&[("x-hero-context", "7"), ("x-hero-claims", "a,b")]),
            "r".into(),
            false,
        )
        .unwrap();
        assert_eq!(c.context, 7);
        assert_eq!(c.claims, Claims::parse("a,b").unwrap());
        assert_eq!(
            caller(owner.clone(), &HeaderMap::new(), "r".into(), false)
                .unwrap()
                .context,
            0
        );
        for bad in [
            &[("x-hero-context", "-1")][..],
            &[("x-hero-context", "abc")],
            &[("x-hero-context", "1"), ("x-hero-context", "2")],
            &[("x-hero-claims", "a b")],
        ] {
            assert_eq!(
                caller(owner.clone(), &headers(bad), "r".into(), false)
                    .unwrap_err()
                    .code(),
                -32600,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn impersonation_needs_the_claim() {
        let owner = Principal::local_owner(1);
        let c = caller(owner.clone(), &headers(&[("x-hero-user", "alice")]), "r".into(), false).unwrap();
        assert_eq!(c.chain(), vec!["uid:1".to_owned(), "alice".to_owned()]);
        // Narrowing the claims away also removes the right to impersonate.
        let narrowed = headers(&[("x-hero-user", "alice"), ("x-hero-claims", "agent")]);
        let err = caller(owner.clone(), &narrowed, "r".into(), false).unwrap_err();
        assert_eq!(err.code(), -32002);
        // A relay (the console's router) names the human with the human's claims only.
        let c = caller(owner, &narrowed, "r".into(), true).unwrap();
        assert_eq!(
            (c.user.as_deref(), c.claims.to_string()),
            (Some("alice"), "agent".into())
        );
        let agent = Principal {
            ceiling: Claims::parse("agent").unwrap(),
            ..Principal::local_owner(2)
        };
        let err = caller(agent, &headers(&[("x-hero-user", "alice")]), "r".into(), true).unwrap_err();
        assert_eq!(
            err.code(),
            -32002,
            "a relay without the claim in its ceiling names nobody"
        );
    }
}
