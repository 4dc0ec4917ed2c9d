//! What rmcp's Streamable HTTP transport leaves to us:
//! - a session is used, streamed or deleted only by the principal (and user) that opened it
//!   (rmcp accepts any holder of the session id);
//! - sessions are capped, in all and per principal, and expire when idle (rmcp's
//!   keep-alive), so `initialize` in a loop cannot grow memory without bound;
//! - `GET /mcp` event streams are counted and end after a maximum time;
//! - a body that is not JSON is a JSON-RPC parse error (HTTP 400, -32700).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use http::{Method, StatusCode};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::access::actor;
use crate::error::ExecError;
use crate::error::render::jsonrpc_error;
use crate::intent::Caller;
use crate::limits::BufferedBody;

/// The header naming a Streamable HTTP session.
const SESSION_HEADER: &str = "mcp-session-id";

/// Bounds on MCP sessions and streams.
#[derive(Debug, Clone, Copy)]
pub struct McpLimits {
    /// Sessions open at once, in all.
    pub max_sessions: usize,
    /// Sessions open at once per principal (and user).
    pub max_sessions_per_principal: usize,
    /// A session unused this long is closed.
    pub session_idle: Duration,
    /// `GET /mcp` event streams open at once.
    pub max_streams: usize,
    /// An event stream is ended after this long (the client may open another).
    pub stream_max: Duration,
}

impl Default for McpLimits {
    fn default() -> Self {
        Self {
            max_sessions: 1024,
            max_sessions_per_principal: 32,
            session_idle: Duration::from_secs(600),
            max_streams: 256,
            stream_max: Duration::from_secs(3600),
        }
    }
}

/// The live MCP sessions (one manager for every listener) and who opened each.
#[derive(Clone)]
pub struct Sessions {
    manager: Arc<LocalSessionManager>,
    owners: Arc<Mutex<HashMap<String, Owner>>>,
    /// Event streams open per principal.
    streams_by: Arc<Mutex<HashMap<String, usize>>>,
    /// Held while an `initialize` is counted and answered, so caps are not raced past.
    opening: Arc<tokio::sync::Mutex<()>>,
    streams: Arc<Semaphore>,
    limits: McpLimits,
}

impl Sessions {
    pub fn new(limits: McpLimits) -> Self {
        let mut manager = LocalSessionManager::default();
        manager.session_config.keep_alive = Some(limits.session_idle);
        Self {
            manager: Arc::new(manager),
            owners: Arc::default(),
            streams_by: Arc::default(),
            opening: Arc::default(),
            streams: Arc::new(Semaphore::new(limits.max_streams)),
            limits,
        }
    }

    /// The session manager rmcp's transport keeps its sessions in.
    pub fn manager(&self) -> Arc<LocalSessionManager> {
        self.manager.clone()
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<String, Owner>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets sessions rmcp has closed (deleted, or idle past the keep-alive); returns how
    /// many are open in all and for `owner`.
    async fn count(&self, principal: &str) -> (usize, usize) {
        let live = self.manager.sessions.read().await;
        let mut owners = self.owners();
        owners.retain(|id, _| live.contains_key(id.as_str()));
        let mine = owners.values().filter(|o| o.principal == principal).count();
        (owners.len(), mine)
    }

    /// Why `principal` may not open another session, if it may not (whatever users it
    /// acts for: the cap is the principal's).
    async fn refuse_opening(&self, principal: &str) -> Option<String> {
        let (all, mine) = self.count(principal).await;
        if mine >= self.limits.max_sessions_per_principal {
            return Some(format!(
                "{principal} has {mine} MCP sessions open (at most {}): close one (DELETE /mcp)",
                self.limits.max_sessions_per_principal
            ));
        }
        (all >= self.limits.max_sessions)
            .then(|| format!("{all} MCP sessions are open (at most {})", self.limits.max_sessions))
    }
}

/// The `/mcp` middleware: checks the body, the session's owner and the caps before rmcp
/// sees the request, learns owners from the answers that open sessions, and bounds
/// event streams.
pub async fn guard(State(sessions): State<Sessions>, request: Request, next: Next) -> Response {
    if request.method() == Method::POST
        && let Some(body) = request.extensions().get::<BufferedBody>()
        && let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body.0)
    {
        return jsonrpc_error(&ExecError::Parse(e.to_string()), &Value::Null, StatusCode::BAD_REQUEST);
    }
    // The owner is the principal and the user it acts for; caps count the principal.
    let Some(caller) = request.extensions().get::<Caller>() else {
        let error = ExecError::Unauthenticated("MCP needs an identity".into());
        return jsonrpc_error(&error, &Value::Null, StatusCode::UNAUTHORIZED);
    };
    let (owner, principal) = (actor(caller), caller.principal.id.clone());
    let session = request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match session {
        Some(session) => in_session(&sessions, &owner, &principal, &session, request, next).await,
        None if request.method() == Method::POST => open(&sessions, owner, principal, request, next).await,
        None => next.run(request).await,
    }
}

/// A request without a session id: an `initialize`, counted against the caps.
async fn open(sessions: &Sessions, owner: String, principal: String, request: Request, next: Next) -> Response {
    let _opening = sessions.opening.lock().await;
    if let Some(why) = sessions.refuse_opening(&principal).await {
        tracing::info!(%owner, %why, "MCP session refused");
        return too_many(why);
    }
    let response = next.run(request).await;
    if let Some(opened) = response.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()) {
        sessions.owners().insert(
            opened.to_owned(),
            Owner {
                actor: owner,
                principal,
            },
        );
    }
    response
}

/// A request in a session: only its owner's; a `GET` stream is counted (in all and per
/// principal) and time-limited.
async fn in_session(
    sessions: &Sessions,
    owner: &str,
    principal: &str,
    session: &str,
    request: Request,
    next: Next,
) -> Response {
    let known = sessions.owners().get(session).map(|o| o.actor.clone());
    if known.as_deref() != Some(owner) {
        // Another's session (or none) is answered as rmcp answers an unknown session.
        let error = ExecError::NotFound("no such MCP session".into());
        return jsonrpc_error(&error, &Value::Null, StatusCode::NOT_FOUND);
    }
    match *request.method() {
        Method::DELETE => {
            let response = next.run(request).await;
            if response.status().is_success() {
                sessions.owners().remove(session);
            }
            response
        }
        Method::GET => {
            let Some(mine) = StreamSlot::take(sessions, principal) else {
                return too_many(format!(
                    "{principal} has {} MCP event streams open",
                    sessions.limits.max_streams_per_principal()
                ));
            };
            let Ok(permit) = sessions.streams.clone().try_acquire_owned() else {
                return too_many(format!("{} MCP event streams are open", sessions.limits.max_streams));
            };
            let response = next.run(request).await;
            // The stream holds its slot until it ends, and ends by its deadline at the latest.
            let deadline = tokio::time::sleep(sessions.limits.stream_max);
            response.map(|body| {
                let stream = body.into_data_stream().take_until(deadline).map(move |frame| {
                    let _held = (&permit, &mine);
                    frame
                });
                Body::from_stream(stream)
            })
        }
        _ => next.run(request).await,
    }
}

/// Who opened a session: the principal and user (`actor`), and the principal alone.
#[derive(Debug, Clone)]
struct Owner {
    actor: String,
    principal: String,
}

impl McpLimits {
    /// Event streams one principal may hold: an eighth of all, at least one.
    fn max_streams_per_principal(&self) -> usize {
        (self.max_streams / 8).max(1)
    }
}

/// One principal's event stream, counted while it lives.
struct StreamSlot {
    by: Arc<Mutex<HashMap<String, usize>>>,
    principal: String,
}

impl StreamSlot {
    fn take(sessions: &Sessions, principal: &str) -> Option<Self> {
        let mut by = sessions.streams_by.lock().unwrap_or_else(|p| p.into_inner());
        let open = by.entry(principal.to_owned()).or_default();
        if *open >= sessions.limits.max_streams_per_principal() {
            return None;
        }
        *open += 1;
        Some(Self {
            by: sessions.streams_by.clone(),
            principal: principal.to_owned(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut by = self.by.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = by.get_mut(&self.principal) {
            *open -= 1;
            if *open == 0 {
                by.remove(&self.principal);
            }
        }
    }
}

fn too_many(why: String) -> Response {
    let mut response = jsonrpc_error(&ExecError::TooMany(why), &Value::Null, StatusCode::TOO_MANY_REQUESTS);
    response.headers_mut().insert(http::header::RETRY_AFTER, 1.into());
    response
}
