//! The operator console on `ui.sock` (DESIGN section 14): server-rendered pages for the
//! humans who oversee agents (runs, a run, the approvals inbox, the catalog with a "try
//! it" form, keys, policy), live through `GET /api/v1/events`.
//!
//! The console is another surface, not another core: every page reads and every form acts
//! through the same [`Command`]s the OpenRPC surface parses, as the caller the layers
//! made. That caller is the peer on `ui.sock` (in a node, the router that authenticated
//! the human) narrowed by `X-Hero-Claims`, acting for `X-Hero-User` ([`relay_for_humans`]),
//! so the built-in rules and policy decide for the human exactly as for an agent.
//!
//! - [`view`]: the templates (embedded, escaped by default) and the filters they use.
//! - [`guard`]: what a browser needs on top: the security headers (a strict CSP), the
//!   same-origin check and the anti-CSRF token of every state change.
//! - [`pages`]: the `GET` pages; [`actions`]: the `POST` forms.

mod actions;
mod guard;
mod pages;
mod view;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::Response;
use axum::routing::{get, post};

use crate::AppState;
use crate::identity::context::HumanRelay;

pub use guard::CsrfKey;
pub use view::Views;

/// Where the console shows run `id` (relative to `ui.sock`); held calls name it.
pub fn run_path(id: &str) -> String {
    format!("/runs/{id}")
}

/// The console's routes (without the hero endpoints, which [`crate::ui_router`] adds).
pub fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(pages::home))
        .route("/runs", get(pages::runs))
        .route("/runs/prune", post(actions::prune))
        .route("/runs/{id}", get(pages::run))
        .route("/runs/{id}/decide", post(actions::decide))
        .route("/runs/{id}/cancel", post(actions::cancel))
        .route("/approvals", get(pages::approvals))
        .route("/catalog", get(pages::catalog))
        .route("/catalog/refresh", post(actions::refresh_catalog))
        .route("/catalog/{capability}", get(pages::capability))
        .route("/catalog/{capability}/try", post(actions::try_it))
        .route("/keys", get(pages::keys).post(actions::enrol))
        .route("/keys/{keyid}/revoke", post(actions::revoke))
        .route("/policy", get(pages::policy))
        .route("/policy/reload", post(actions::reload_policy))
        .route("/static/console.css", get(view::stylesheet))
        .route("/static/console.js", get(view::script))
        .route("/favicon.ico", get(|| async { http::StatusCode::NO_CONTENT }))
        .route("/api/v1/events", get(crate::adapters::rest::events::stream))
        .layer(from_fn_with_state(state.clone(), guard::protect))
        .layer(from_fn(guard::security_headers))
}

/// Marks every request to `ui.sock` as relayed for a human (see [`HumanRelay`]).
pub async fn relay_for_humans(mut request: Request, next: Next) -> Response {
    request.extensions_mut().insert(HumanRelay);
    next.run(request).await
}
