//! hero_executor: the secure execution gateway of a HERO node.
//!
//! # Layout
//!
//! A request flows through these files, top to bottom:
//!
//! - [`server`]: binds the Unix sockets (and optional TCP), the lock file; the accept loop
//!   with its connection limits; graceful shutdown.
//! - `finish` (in this file): the tower layers every request passes, in order:
//!   - [`limits`]: admission before any body is read (the identity checks the head allows,
//!     slots per peer and in all, shed at once), the body buffered once under the size
//!     limit and the read deadline;
//!   - [`identity`]: who is asking ([`intent::Principal`]: a verified signature, else the
//!     trusted local peer); [`identity::respond`] signs the answer;
//!   - the rate limit per principal (in the identity layer, before a nonce is remembered);
//!     [`identity::context`]: hero context, claims and user, combined into an
//!     [`intent::Caller`].
//! - [`adapters`]: OpenRPC, REST and MCP translate the wire protocol into a typed
//!   [`command::Command`], and nothing else.
//! - [`command`]: every call from every surface, parsed once and applied in one `match`;
//!   the executor's own methods are answered there, under the built-in rules of
//!   [`access`] (reserved names, `executor.admin`, approvers).
//! - [`dispatch`]: the core for a capability: [`catalog`] lookup, a [`policy`] decision
//!   (an allow is a `Permit`), a [`runs`] record (journaled on the calling task, folded
//!   into SQLite behind), params validation, then [`upstream`]
//!   forwarding; approvals (decided again) in `dispatch::approvals`, what each caller may
//!   see of the catalog in `dispatch::visibility`.
//! - [`catalog`]: discovery of `<socket_dir>/<service>/rpc.sock` services.
//! - [`error`], [`jsonrpc`], [`intent`]: the types that travel between them, and
//!   [`error::render`], which answers an error in each surface's shape; [`db`]: SQLite.
//!
//! Beside the pipeline: [`cli`] (the command line and its client commands), [`client`] (the signing
//! client), [`mcp_bridge`] (`hero_executor mcp`), [`lifecycle`] and [`hero_proc`]
//! (`--start` / `--stop` / `--info`), [`config`].

#![forbid(unsafe_code)]

pub mod access;
pub mod adapters;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod command;
pub mod config;
pub mod console;
pub mod db;
pub mod dispatch;
pub mod error;
pub mod hero_proc;
pub mod human;
pub mod identity;
pub mod intent;
pub mod jsonrpc;
pub mod lifecycle;
pub mod limits;
pub mod mcp_bridge;
pub mod metrics;
pub mod policy;
pub mod runs;
pub mod script;
pub mod server;
pub mod sources;
pub mod telemetry;
mod toml_file;
pub mod upstream;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::Response;
use http::Request;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use adapters::hero::SocketKind;
use catalog::Catalog;
use config::Config;
use dispatch::Dispatcher;
use error::ExecError;
use identity::registry::Registry;
use identity::respond::ServerKey;
use identity::verify::Verifier;
use intent::Principal;
use policy::Policy;
use runs::store::RunStore;
use upstream::Upstream;

/// The service name in the hero socket convention.
pub const SERVICE_NAME: &str = "hero_executor";

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The executor's own OpenRPC document, embedded at build time and served byte for byte.
pub const OPENRPC_JSON: &str = include_str!("../openrpc.json");

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Shared state of every router: one `Arc`, so the clones every request makes (a layer's
/// state, an extractor's) cost one reference count, not one per part.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Shared {
    pub config: Arc<Config>,
    pub dispatcher: Arc<Dispatcher>,
    /// Verifies request signatures against the key registry.
    pub verifier: Arc<Verifier>,
    /// Signs responses.
    pub server_key: Arc<ServerKey>,
    /// The daemon's effective uid: unsigned local peers with this uid are the owner.
    pub own_uid: u32,
    /// Per-principal token buckets.
    pub rate_limiter: Arc<limits::RateLimiter>,
    /// Requests in flight across every listener.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Requests in flight per peer and claimed identity.
    pub admission: Arc<limits::Admission>,
    /// Who opened each MCP session (shared by every listener that serves `/mcp`).
    pub mcp_sessions: adapters::mcp::Sessions,
    /// The open `GET /api/v1/events` streams.
    pub event_streams: Arc<adapters::rest::events::EventStreams>,
    /// The console's templates.
    pub views: console::Views,
    /// The key of the console's anti-CSRF tokens (made at start-up).
    pub csrf: console::CsrfKey,
    /// Counters and gauges of `GET /metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// OTLP export of spans and runs (`--otlp-endpoint`).
    pub telemetry: Option<Arc<telemetry::Telemetry>>,
    /// Set when the daemon begins to stop: long-lived answers (event streams) end.
    pub stopping: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    /// Opens the database in the data dir (which must exist: [`server::bind`] creates it),
    /// loads the key registry and the executor's key, and builds the core.
    pub fn new(config: Config) -> Result<Self, String> {
        let db_path = config.data_dir.join("hero_executor.db");
        let db = db::Db::open(&db_path).map_err(|e| format!("{}: {e}", db_path.display()))?;
        let registry = Arc::new(Registry::load(db.clone()).map_err(|e| e.to_string())?);
        let metrics = Arc::new(metrics::Metrics::new());
        let telemetry = match &config.otlp {
            Some(otlp) => {
                let started = telemetry::Telemetry::start(otlp, metrics.clone())?;
                tracing::info!(endpoint = %otlp.endpoint, runs = otlp.runs, "exporting traces over OTLP/HTTP");
                Some(Arc::new(started))
            }
            None => None,
        };
        let export = telemetry.clone().filter(|t| t.exports_runs()).map(|t| {
            let sink: runs::store::RunSink = Arc::new(move |run: &runs::Run| t.export_run(run));
            sink
        });
        let runs = Arc::new(
            RunStore::open_exporting(&db_path, db, export).map_err(|e| format!("{}: {e}", db_path.display()))?,
        );
        let server_key = Arc::new(ServerKey::load_or_create(&config.data_dir)?);
        let policy = Policy::load(config.policy.as_deref()).map_err(|errors| errors.join("\n"))?;
        let own = upstream::OwnSockets {
            paths: vec![config.rpc_socket(), config.rest_socket(), config.ui_socket()],
        };
        let upstream = Upstream::new(config.socket_dir.clone(), config.max_response_bytes, own.clone())
            .with_target_limit(config.max_per_target);
        let catalog = Arc::new(
            Catalog::new(
                upstream.clone(),
                config.socket_dir.clone(),
                config.discover_timeout,
                own,
            )
            .with_spec_limits(config.spec_limits),
        );
        let sources = sources::Sources::open(
            config.sources.clone(),
            catalog.clone(),
            &config.data_dir,
            config.socket_dir.clone(),
            config.spec_limits,
            config.max_response_bytes,
        )
        .map_err(|errors| errors.join("\n"))?;
        let own_uid = rustix::process::geteuid().as_raw();
        let mcp = config.mcp;
        let core = dispatch::CoreConfig {
            local_owner: (config.unsigned_local == config::UnsignedLocal::Owner)
                .then(|| Principal::local_owner(own_uid)),
            ..config.core.clone()
        };
        let rate_limiter = Arc::new(limits::RateLimiter::new(config.rate_limit.0, config.rate_limit.1));
        let dispatcher = Arc::new(
            Dispatcher::new(
                catalog,
                registry.clone(),
                runs,
                upstream,
                policy,
                config.policy.clone(),
                core,
            )
            .with_metrics(metrics.clone())
            .with_telemetry(telemetry.clone())
            .with_sources(sources)
            .with_script_limits(config.scripts)
            .with_rate_limiter(rate_limiter.clone()),
        );
        Ok(Self(Arc::new(Shared {
            verifier: Arc::new(Verifier::new(registry, config.signatures.clone())),
            rate_limiter,
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent)),
            admission: Arc::new(limits::Admission::new(config.max_concurrent_per_peer)),
            config: Arc::new(config),
            dispatcher,
            server_key,
            own_uid,
            mcp_sessions: adapters::mcp::Sessions::new(mcp),
            event_streams: Arc::default(),
            views: console::Views::new(),
            csrf: console::CsrfKey::generate(),
            metrics,
            telemetry,
            stopping: tokio::sync::watch::Sender::new(false),
        })))
    }
}

/// The router of `rpc.sock`: OpenRPC (`POST /rpc`, `GET /openrpc.json`), MCP (`/mcp`) and hero endpoints.
pub fn rpc_router(state: AppState) -> Router {
    let routes = adapters::hero::routes(SocketKind::Rpc)
        .route("/metrics", axum::routing::get(adapters::hero::metrics))
        .merge(adapters::openrpc::routes())
        .merge(adapters::mcp::routes(&state, false));
    finish(routes, state, false)
}

/// The router of `rest.sock`: REST under `/api/v1`, `GET /openapi.json` and hero endpoints.
pub fn rest_router(state: AppState) -> Router {
    finish(
        adapters::hero::routes(SocketKind::Rest).merge(adapters::rest::routes()),
        state,
        false,
    )
}

/// The router of `ui.sock`: the operator console (pages, their actions, live events) and
/// hero endpoints. The peer in front of it (a node's router) names the human with
/// `X-Hero-User` and narrows the claims with `X-Hero-Claims`.
pub fn ui_router(state: AppState) -> Router {
    let routes = adapters::hero::routes(SocketKind::Ui).merge(console::routes(&state));
    finish(routes, state, true).layer(from_fn(console::relay_for_humans))
}

/// The router of the optional TCP listener: OpenRPC, MCP and REST together.
pub fn tcp_router(state: AppState) -> Router {
    let routes = adapters::hero::routes(SocketKind::Rpc)
        .merge(adapters::openrpc::routes())
        .merge(adapters::mcp::routes(&state, true))
        .merge(adapters::rest::routes());
    finish(routes, state, false)
}

/// The router of `--metrics-listen`: `GET /metrics` and `/health` only, unauthenticated,
/// at most a few scrapes at once.
pub fn metrics_router(state: AppState) -> Router {
    use axum::routing::get;
    let scrapes = Arc::new(tokio::sync::Semaphore::new(4));
    let limited = move |request: axum::extract::Request, next: axum::middleware::Next| {
        let scrapes = scrapes.clone();
        async move {
            match scrapes.try_acquire() {
                Ok(_slot) => next.run(request).await,
                Err(_) => error::render::reject_path("/metrics", ExecError::Overloaded),
            }
        }
    };
    let counted = metrics::Observed {
        metrics: state.metrics.clone(),
        ui: false,
        telemetry: None,
    };
    Router::new()
        .route("/metrics", get(adapters::hero::metrics_open))
        .route("/health", get(adapters::hero::health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn(limited))
        .layer(from_fn_with_state(counted, metrics::count_requests))
        .with_state(state)
}

/// Adds the fallbacks and the layer stack every request passes (outermost first), and
/// binds the state.
/// `ui` says whether the socket serves the console (for the requests' surface label).
fn finish(routes: Router<AppState>, state: AppState, ui: bool) -> Router {
    let observed = metrics::Observed {
        metrics: state.metrics.clone(),
        ui,
        telemetry: state.telemetry.clone(),
    };
    let stack = ServiceBuilder::new()
        // Every request is counted by surface and status, whatever answered it, and with
        // --otlp-endpoint has a span (continuing the caller's traceparent).
        .layer(from_fn_with_state(observed, metrics::count_requests))
        // An id for every request, taken from `x-request-id` or made up; first, so every
        // log line below (and the response) carries it.
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        // One span per request with that id, and one line when it is answered: who (the
        // keyid or peer, and the human), what (the method or capability), how it ended (the
        // code and why) and its run, recorded into the span by the layers and the core.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<Body>| {
                    let id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        path = %request.uri().path(),
                        request_id = %id,
                        principal = tracing::field::Empty,
                        user = tracing::field::Empty,
                        call = tracing::field::Empty,
                        run_id = tracing::field::Empty,
                        code = tracing::field::Empty,
                        error = tracing::field::Empty,
                    )
                })
                .on_request(())
                .on_failure(())
                .on_response(answered),
        )
        // A panic becomes a 500 in JSON, and the daemon keeps serving.
        .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            error::render::reject_path("/", ExecError::Internal("handler panicked".into()))
        }))
        // Admission before any buffering: identity checks the head allows, then a slot of the
        // peer's and one of all, or 503 at once; health checks always pass.
        .layer(from_fn_with_state(state.clone(), limits::admit))
        // Bodies are buffered once under the size limit and the read deadline.
        .layer(from_fn_with_state(state.clone(), limits::buffer_body))
        // Who is asking: needs the buffered body (open rpc.discover, content digests). Applies
        // the principal's rate limit before a signature's nonce is remembered.
        .layer(identity::IdentityLayer::new(state.clone()))
        // Answers to signed (or Accept-Signature) requests are signed, including rejections
        // from the layers below.
        .layer(from_fn_with_state(state.clone(), identity::respond::sign_response))
        // Hero context and claims narrow the verified principal into a Caller.
        .layer(from_fn(identity::context::hero_context));
    routes
        // Bodies are limited once, by `limits::buffer_body` (`--max-body-bytes`), not by
        // axum's own 2 MiB default for extractors.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(stack)
        .with_state(state)
}

/// The one line per request (its span carries the rest): a server error is a warning.
fn answered<B>(response: &http::Response<B>, latency: std::time::Duration, _: &tracing::Span) {
    let status = response.status().as_u16();
    let ms = latency.as_secs_f64() * 1000.0;
    match status {
        500.. => tracing::warn!(status, latency_ms = format_args!("{ms:.1}"), "answered"),
        _ => tracing::info!(status, latency_ms = format_args!("{ms:.1}"), "answered"),
    }
}

async fn not_found(request: axum::extract::Request) -> Response {
    let path = request.uri().path();
    error::render::reject_path(path, ExecError::NotFound(format!("no route {path}")))
}

async fn method_not_allowed(request: axum::extract::Request) -> Response {
    let path = request.uri().path();
    let error = ExecError::HttpMethodNotAllowed(format!("{} is not allowed on {path}", request.method()));
    error::render::reject_path(path, error)
}
