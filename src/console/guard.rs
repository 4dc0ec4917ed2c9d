//! What a browser needs on top of the layers every surface passes: security headers on
//! every answer, and for every state change a same-origin check and an anti-CSRF token.
//!
//! The token is an HMAC, under a key made at start-up, of who the caller is (principal,
//! human, claims and context): a page can only be acted on as the viewer it was rendered
//! for, and a restart invalidates every open form (the page says to reload). Another
//! origin cannot read a page, so it cannot learn the token; a browser that sends `Origin`
//! or `Sec-Fetch-Site` is refused on those alone.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use sha2::Sha256;

use crate::AppState;
use crate::intent::Caller;
use crate::limits::BufferedBody;

/// The console's Content-Security-Policy: its own script and stylesheet, nothing inline,
/// nothing from elsewhere, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The key the anti-CSRF tokens are made with.
pub struct CsrfKey([u8; 32]);

impl CsrfKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut key = [0; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self(key)
    }

    fn mac(&self, caller: &Caller) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        let who = format!(
            "{}\n{}\n{}\n{}",
            caller.principal.id,
            caller.user.as_deref().unwrap_or_default(),
            caller.claims,
            caller.context
        );
        mac.update(who.as_bytes());
        mac
    }

    /// The token for forms rendered for `caller`.
    pub fn token(&self, caller: &Caller) -> String {
        hex::encode(self.mac(caller).finalize().into_bytes())
    }

    /// Whether `token` was made for `caller` (compared in constant time).
    fn verify(&self, caller: &Caller, token: &str) -> bool {
        hex::decode(token).is_ok_and(|bytes| self.mac(caller).verify_slice(&bytes).is_ok())
    }
}

/// Security headers on every console answer.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: &'static str, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(headers, "content-security-policy", CSP);
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "x-frame-options", "DENY");
    // Not `no-referrer`: with it a browser sends `Origin: null` on its own form posts.
    set(headers, "referrer-policy", "same-origin");
    set(headers, "cross-origin-opener-policy", "same-origin");
    set(headers, "cross-origin-resource-policy", "same-origin");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, "cache-control", "no-store");
    }
    response
}

/// Refuses a request addressed to a host the console does not answer to (a DNS rebinding
/// page would read every run as the owner), a state change or an event stream from another
/// origin, and a state change without the viewer's token.
pub async fn protect(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Err(why) = known_host(request.headers(), &state.config.ui_hosts) {
        tracing::warn!(path = %request.uri().path(), reason = %why, "console: unknown host refused");
        return refused(&state, &why);
    }
    let reading = matches!(*request.method(), Method::GET | Method::HEAD);
    if reading && request.uri().path() != "/api/v1/events" {
        return next.run(request).await;
    }
    if let Err(why) = same_origin(request.headers()) {
        tracing::warn!(path = %request.uri().path(), reason = %why, "console: cross-origin request refused");
        return refused(&state, &why);
    }
    if reading {
        return next.run(request).await;
    }
    let Some(caller) = request.extensions().get::<Caller>() else {
        return refused(&state, "this request has no identity");
    };
    let token = request.extensions().get::<BufferedBody>().and_then(|body| {
        form_urlencoded::parse(&body.0)
            .find(|(name, _)| name == "csrf")
            .map(|(_, value)| value.into_owned())
    });
    match token {
        Some(token) if state.csrf.verify(caller, &token) => next.run(request).await,
        Some(_) => refused(
            &state,
            "the form's token is not valid for you (the executor restarted, or the page was made for \
             someone else): reload the page and try again",
        ),
        None => refused(&state, "the request carries no anti-CSRF token"),
    }
}

/// The `Host` must be a loopback name or one of `--ui-host` (any port).
fn known_host(headers: &HeaderMap, extra: &[String]) -> Result<(), String> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    }
    .to_ascii_lowercase();
    match ["localhost", "127.0.0.1", "::1"].contains(&name.as_str()) || extra.contains(&name) {
        true => Ok(()),
        false => Err(format!(
            "the console does not answer to the host {host:?}: use localhost, or start the executor with --ui-host {name}"
        )),
    }
}

/// `Origin` must name this host; without it, `Sec-Fetch-Site` (if sent) must say same-origin.
fn same_origin(headers: &HeaderMap) -> Result<(), String> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("(not ASCII)");
        let ours = host.is_some_and(|host| {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
        });
        return match ours {
            true => Ok(()),
            false => Err(format!(
                "a request from origin {origin} may not change anything here (cross-origin)"
            )),
        };
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        None | Some("same-origin" | "none") => Ok(()),
        Some(site) => Err(format!("a {site} request may not change anything here (cross-origin)")),
    }
}

fn refused(state: &AppState, why: &str) -> Response {
    state.views.refusal(StatusCode::FORBIDDEN, "Refused", why, "/runs")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn origins() {
        let host = ("host", "127.0.0.1:8090");
        assert!(same_origin(&headers(&[host, ("origin", "http://127.0.0.1:8090")])).is_ok());
        assert!(same_origin(&headers(&[host])).is_ok(), "curl sends neither");
        assert!(same_origin(&headers(&[host, ("sec-fetch-site", "same-origin")])).is_ok());
        for bad in [
            &[host, ("origin", "http://127.0.0.1:8091")][..],
            &[host, ("origin", "null")],
            &[host, ("origin", "http://127.0.0.1:8090.evil.example")],
            &[("origin", "http://127.0.0.1:8090")],
            &[host, ("sec-fetch-site", "cross-site")],
            &[host, ("sec-fetch-site", "same-site")],
        ] {
            assert!(same_origin(&headers(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_known_hosts() {
        let ok = |host: &'static str| known_host(&headers(&[("host", host)]), &["ops.example".into()]).is_ok();
        for good in [
            "localhost",
            "localhost:8090",
            "127.0.0.1:8090",
            "[::1]:8090",
            "ops.example:443",
            "LOCALHOST",
        ] {
            assert!(ok(good), "{good}");
        }
        for bad in [
            "attacker.example:8090",
            "127.0.0.1.nip.io",
            "evil.example",
            "[::2]:80",
            "",
        ] {
            assert!(!ok(bad), "{bad}");
        }
    }

    #[test]
    fn tokens_are_per_viewer() {
        let key = CsrfKey::generate();
        let owner = crate::intent::Principal::local_owner(1);
        let caller = |user: Option<&str>| Caller {
            principal: owner.clone(),
            context: 0,
            claims: crate::intent::Claims::All,
            user: user.map(str::to_owned),
            request_id: String::new(),
            traceparent: None,
            relayed: false,
        };
        let token = key.token(&caller(Some("carol")));
        assert!(key.verify(&caller(Some("carol")), &token));
        assert!(!key.verify(&caller(Some("mallory")), &token));
        assert!(!key.verify(&caller(None), &token));
        assert!(!key.verify(&caller(Some("carol")), "00"));
        assert!(!CsrfKey::generate().verify(&caller(Some("carol")), &token));
    }
}
