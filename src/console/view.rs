//! The console's templates, embedded in the binary and compiled once at start-up.
//!
//! Every template is `.html`, so minijinja escapes every value it prints: a description,
//! a param or an error from a service or a caller is text, never markup. Nothing is ever
//! marked safe. Times are RFC 3339 for people (with a relative form beside them).

use axum::response::{IntoResponse, Response};
use http::header;
use minijinja::{Environment, Value};

use crate::human;
use crate::runs::now_ms;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("macros.html", include_str!("templates/macros.html")),
    ("runs.html", include_str!("templates/runs.html")),
    ("run.html", include_str!("templates/run.html")),
    ("approvals.html", include_str!("templates/approvals.html")),
    ("catalog.html", include_str!("templates/catalog.html")),
    ("capability.html", include_str!("templates/capability.html")),
    ("keys.html", include_str!("templates/keys.html")),
    ("policy.html", include_str!("templates/policy.html")),
    ("refused.html", include_str!("templates/refused.html")),
];

const STYLESHEET: &str = include_str!("static/console.css");
const SCRIPT: &str = include_str!("static/console.js");

/// The compiled templates.
pub struct Views {
    env: Environment<'static>,
}

impl Default for Views {
    fn default() -> Self {
        Self::new()
    }
}

impl Views {
    /// Compiles the embedded templates (a broken one is a bug: it is logged, and its pages
    /// answer 500).
    pub fn new() -> Self {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            if let Err(e) = env.add_template(name, source) {
                tracing::error!(template = name, error = %e, "console template does not compile");
            }
        }
        env.add_filter("time", |ms: Option<i64>| {
            ms.map_or_else(|| "—".to_owned(), human::rfc3339)
        });
        env.add_filter("ago", |ms: Option<i64>| {
            ms.map_or_else(|| "—".to_owned(), |ms| human::relative(ms, now_ms()))
        });
        env.add_filter("duration", |ms: Option<i64>| {
            ms.map_or_else(|| "—".to_owned(), |ms| human::duration(ms.max(0) as u64))
        });
        env.add_filter("pretty", |value: Value| {
            serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string())
        });
        env.add_filter("label", |status: String| status.replace('_', " "));
        env.add_filter("segment", |text: String| segment(&text));
        Self { env }
    }

    /// Renders `name` as an HTML answer; a template error is logged and answered 500 with a
    /// short page, never a panic.
    pub fn render(&self, name: &str, context: Value) -> Response {
        match self.env.get_template(name).and_then(|t| t.render(context)) {
            Ok(page) => html(page),
            Err(e) => {
                tracing::error!(template = name, error = %e, "console template failed");
                let page = "<!doctype html><title>Console error</title><p>This page could not be rendered; \
                            the executor's log says why.";
                (http::StatusCode::INTERNAL_SERVER_ERROR, html(page.to_owned())).into_response()
            }
        }
    }
}

/// `text` as one URL path segment: everything but the unreserved characters
/// percent-encoded, so a service's method name like `x/../../runs/…/cancel?` stays one
/// segment of the page it belongs to.
pub fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Views {
    /// A short page saying why something was refused, with a way back.
    pub fn refusal(&self, status: http::StatusCode, title: &str, reason: &str, back: &str) -> Response {
        let mut page = self.render("refused.html", minijinja::context! { title, reason, back });
        if page.status().is_success() {
            *page.status_mut() = status;
        }
        page
    }
}

/// An HTML answer.
pub fn html(page: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

pub async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", STYLESHEET)
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")],
        body,
    )
        .into_response()
}
