//! Prometheus metrics (`GET /metrics`, OpenMetrics text; DESIGN section 14).
//!
//! Every label value comes from a fixed set or from the catalog: a capability that is not
//! in the catalog when it is counted is counted as `unknown`, so a caller inventing names
//! cannot add label values. Gauges (approvals pending, catalog size, run store lag) are
//! read when a scrape asks.

use std::sync::Arc;

use axum::extract::State;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::catalog::Snapshot;
use crate::error::ExecError;
use crate::policy::Verdict;
use crate::runs::RunStatus;

/// The content type of `GET /metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The label a capability outside the catalog is counted under.
pub const UNKNOWN: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    surface: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    capability: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CapabilityLabel {
    capability: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DroppedLabels {
    signal: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Which surface a request came in on, from its socket and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Rpc,
    Rest,
    Mcp,
    Events,
    Console,
    /// `/health`, `/metrics`, discovery documents.
    Hero,
    /// Anything else (answered 404 or 405).
    Other,
}

impl Surface {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rpc => "rpc",
            Self::Rest => "rest",
            Self::Mcp => "mcp",
            Self::Events => "events",
            Self::Console => "console",
            Self::Hero => "hero",
            Self::Other => "other",
        }
    }

    /// The surface of a request for `path` on a socket that serves the console (`ui`) or not.
    pub fn of(path: &str, ui: bool) -> Self {
        match path {
            "/rpc" => Self::Rpc,
            "/mcp" => Self::Mcp,
            "/api/v1/events" => Self::Events,
            "/health" | "/metrics" | "/openrpc.json" | "/openapi.json" | "/.well-known/heroservice.json" => Self::Hero,
            p if p.starts_with("/api/v1/") => Self::Rest,
            _ if ui => Self::Console,
            _ => Self::Other,
        }
    }
}

/// Why a signature was refused: a fixed set (see `identity::verify::failure_reason`).
pub const SIGNATURE_REASONS: [&str; 9] = [
    "malformed",
    "unknown_key",
    "revoked_key",
    "algorithm",
    "coverage",
    "digest",
    "expired",
    "replayed",
    "bad_signature",
];

/// The executor's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    calls: Family<CallLabels, Counter>,
    durations: Family<CapabilityLabel, Histogram, fn() -> Histogram>,
    upstream_errors: Family<CodeLabel, Counter>,
    decisions: Family<VerdictLabel, Counter>,
    signature_failures: Family<ReasonLabel, Counter>,
    rate_limited: Counter,
    shed: Counter,
    approvals_pending: Gauge,
    catalog_services: Gauge,
    catalog_capabilities: Gauge,
    store_lag: Gauge,
    otlp_dropped: Family<DroppedLabels, Counter>,
}

fn duration_buckets() -> Histogram {
    // 0.25 ms to about 8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hero_executor");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests answered, by surface and HTTP status",
            requests.clone(),
        );
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "calls",
            "Capability calls by how they ended: succeeded, failed, timed_out, denied, held, rejected, expired, cancelled",
            calls.clone(),
        );
        let durations = Family::<CapabilityLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_buckets as fn() -> Histogram,
        );
        registry.register(
            "call_duration_seconds",
            "Time a forwarded call took, from forwarding to its answer",
            durations.clone(),
        );
        let upstream_errors = Family::<CodeLabel, Counter>::default();
        registry.register(
            "upstream_errors",
            "Forwarded calls that failed at the target: -32020 unavailable, -32021 timed out, -32022 protocol, target (its own error)",
            upstream_errors.clone(),
        );
        let decisions = Family::<VerdictLabel, Counter>::default();
        registry.register("policy_decisions", "Policy decisions by verdict", decisions.clone());
        let signature_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "signature_failures",
            "Signed requests refused, by reason",
            signature_failures.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "rate_limited",
            "Requests refused by a principal's rate limit",
            rate_limited.clone(),
        );
        let shed = Counter::default();
        registry.register("shed", "Requests shed at the concurrency limit (503)", shed.clone());
        let approvals_pending = Gauge::default();
        registry.register(
            "approvals_pending",
            "Runs waiting for an approval",
            approvals_pending.clone(),
        );
        let catalog_services = Gauge::default();
        registry.register("catalog_services", "Services in the catalog", catalog_services.clone());
        let catalog_capabilities = Gauge::default();
        registry.register(
            "catalog_capabilities",
            "Capabilities in the catalog",
            catalog_capabilities.clone(),
        );
        let store_lag = Gauge::default();
        registry.register(
            "run_store_lag",
            "Run records journaled but not yet folded into SQLite",
            store_lag.clone(),
        );
        let otlp_dropped = Family::<DroppedLabels, Counter>::default();
        registry.register(
            "otlp_dropped",
            "Spans and run records that did not reach the OTLP collector: queue_full (turned away at once) or export_failed",
            otlp_dropped.clone(),
        );
        registry.register(
            "build",
            "The executor's version",
            Info::new(vec![("version".to_owned(), crate::VERSION.to_owned())]),
        );
        Self {
            registry,
            requests,
            calls,
            durations,
            upstream_errors,
            decisions,
            signature_failures,
            rate_limited,
            shed,
            approvals_pending,
            catalog_services,
            catalog_capabilities,
            store_lag,
            otlp_dropped,
        }
    }

    /// A request answered with `status`.
    pub fn request(&self, surface: Surface, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                surface: surface.as_str(),
                status,
            })
            .inc();
    }

    /// A call that ended as `status` (or was held), counted under `capability`'s label.
    pub fn call(&self, capability: String, status: RunStatus) {
        if status == RunStatus::Running {
            return;
        }
        let outcome = outcome(status);
        self.calls.get_or_create(&CallLabels { capability, outcome }).inc();
    }

    /// A forwarded call that took `seconds` and ended with `error` (if it failed).
    pub fn forwarded(&self, capability: &str, seconds: f64, error: Option<&ExecError>) {
        self.durations
            .get_or_create(&CapabilityLabel {
                capability: capability.to_owned(),
            })
            .observe(seconds);
        let code = match error {
            Some(ExecError::TargetUnavailable(_)) => "-32020",
            Some(ExecError::TargetTimeout(_)) => "-32021",
            Some(ExecError::TargetProtocol(_)) => "-32022",
            Some(ExecError::Target { .. }) => "target",
            _ => return,
        };
        self.upstream_errors.get_or_create(&CodeLabel { code }).inc();
    }

    /// A policy decision.
    pub fn decision(&self, verdict: Verdict) {
        let verdict = match verdict {
            Verdict::Allow => "allow",
            Verdict::RequireApproval => "require_approval",
            Verdict::Deny => "deny",
        };
        self.decisions.get_or_create(&VerdictLabel { verdict }).inc();
    }

    /// A signature refused for `reason` (one of [`SIGNATURE_REASONS`]).
    pub fn signature_failure(&self, reason: &'static str) {
        debug_assert!(SIGNATURE_REASONS.contains(&reason));
        self.signature_failures.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// `n` spans or run records (`signal`) that will not reach the collector.
    pub fn otlp_dropped(&self, signal: &'static str, reason: &'static str, n: u64) {
        self.otlp_dropped
            .get_or_create(&DroppedLabels { signal, reason })
            .inc_by(n);
    }

    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    pub fn shed(&self) {
        self.shed.inc();
    }

    /// The OpenMetrics text, with the gauges set from what the caller read just now.
    pub fn render(&self, now: Readings) -> String {
        self.approvals_pending.set(now.approvals_pending as i64);
        self.catalog_services.set(now.catalog_services as i64);
        self.catalog_capabilities.set(now.catalog_capabilities as i64);
        self.store_lag.set(now.store_lag as i64);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// How a call that reached `status` is named in metrics and spans (`held` while it waits).
pub fn outcome(status: RunStatus) -> &'static str {
    match status {
        RunStatus::AwaitingApproval => "held",
        other => other.as_str(),
    }
}

/// The gauges' values at a scrape.
#[derive(Debug, Default, Clone, Copy)]
pub struct Readings {
    pub approvals_pending: u64,
    pub catalog_services: usize,
    pub catalog_capabilities: usize,
    pub store_lag: u64,
}

/// `name` if it is a capability in `snapshot`, else [`UNKNOWN`].
pub fn capability_label(snapshot: &Snapshot, name: &str) -> String {
    let known = name.split_once('.').is_some_and(|(service, method)| {
        snapshot
            .services
            .get(service)
            .is_some_and(|spec| spec.capabilities.contains_key(method))
    });
    if known { name.to_owned() } else { UNKNOWN.to_owned() }
}

/// What [`count_requests`] counts into, for a socket that serves the console (`ui`) or not.
#[derive(Clone)]
pub struct Observed {
    pub metrics: Arc<Metrics>,
    pub ui: bool,
    /// With `--otlp-endpoint`: a span per request too.
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
}

/// Counts every request by surface (from its path and whether the socket serves the
/// console) and the status it was answered with; traces it when telemetry is on.
pub async fn count_requests(
    State(observed): State<Observed>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let surface = Surface::of(request.uri().path(), observed.ui);
    let response = match &observed.telemetry {
        None => next.run(request).await,
        Some(telemetry) => crate::telemetry::traced(telemetry, surface, request, next).await,
    };
    observed.metrics.request(surface, response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openmetrics_with_fixed_labels() {
        let metrics = Metrics::new();
        metrics.request(Surface::Rpc, 200);
        metrics.call("echo.echo".into(), RunStatus::Succeeded);
        metrics.call(UNKNOWN.into(), RunStatus::Denied);
        metrics.call("echo.echo".into(), RunStatus::AwaitingApproval);
        metrics.forwarded("echo.echo", 0.001, Some(&ExecError::TargetTimeout("t".into())));
        metrics.decision(Verdict::RequireApproval);
        metrics.signature_failure("replayed");
        let text = metrics.render(Readings {
            approvals_pending: 2,
            ..Readings::default()
        });
        for line in [
            r#"hero_executor_requests_total{surface="rpc",status="200"} 1"#,
            r#"hero_executor_calls_total{capability="echo.echo",outcome="succeeded"} 1"#,
            r#"hero_executor_calls_total{capability="unknown",outcome="denied"} 1"#,
            r#"hero_executor_calls_total{capability="echo.echo",outcome="held"} 1"#,
            r#"hero_executor_upstream_errors_total{code="-32021"} 1"#,
            r#"hero_executor_policy_decisions_total{verdict="require_approval"} 1"#,
            r#"hero_executor_signature_failures_total{reason="replayed"} 1"#,
            "hero_executor_approvals_pending 2",
            "hero_executor_call_duration_seconds_count{capability=\"echo.echo\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(text.contains("hero_executor_build_info{version="), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn surfaces() {
        assert_eq!(Surface::of("/rpc", false), Surface::Rpc);
        assert_eq!(Surface::of("/api/v1/runs", false), Surface::Rest);
        assert_eq!(Surface::of("/api/v1/events", true), Surface::Events);
        assert_eq!(Surface::of("/runs/x", true), Surface::Console);
        assert_eq!(Surface::of("/runs/x", false), Surface::Other);
        assert_eq!(Surface::of("/metrics", false), Surface::Hero);
    }
}
