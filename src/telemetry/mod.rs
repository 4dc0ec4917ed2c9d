//! OpenTelemetry over OTLP/HTTP (DESIGN section 14). Off unless `--otlp-endpoint` is set;
//! when off nothing here exists and a request or call pays a few `Option` checks.
//!
//! Spans: one per request (server), one per capability call (its run id, capability,
//! principal, decision and outcome), one per forwarded call (client, the call's child). A
//! caller's `traceparent` is continued, and the forwarded call carries the upstream span's.
//! An approved call's span is linked to the span of the call that was held. With
//! `--otlp-runs` each run's final state is also one log record, carrying its call's trace.
//!
//! Spans are made with the SDK's tracer. As each ends it is encoded and queued by
//! [`otlp`]'s processor, on the thread that ended it; one thread per signal sends the
//! queue to the collector. A queue holds at most 8,192 (`OTEL_BSP_MAX_QUEUE_SIZE`): past
//! that, and for every batch the collector does not take, spans and records are counted
//! in `/metrics` as dropped. A slow or absent collector never holds a call up.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span as SdkSpan};

use crate::error::ExecError;
use crate::intent::Caller;
use crate::metrics::Metrics;
use crate::policy::Verdict;
use crate::runs::{Run, RunStatus};

mod otlp;

/// Spans (and, separately, run records) waiting for export at most; past this they are
/// dropped and counted.
const QUEUE: usize = 8192;
/// A queue is sent as soon as it holds this many (one request carries all that is queued:
/// more, up to [`QUEUE`], after a slow export).
const EXPORT_BATCH: usize = 512;
/// How long a batch may wait before it is sent.
const EXPORT_DELAY: Duration = Duration::from_secs(2);
/// How long one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and what to export, and the export's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The collector's base URL (`http(s)://host:port[/prefix]`); `/v1/traces` and
    /// `/v1/logs` are appended, as `OTEL_EXPORTER_OTLP_ENDPOINT` would be.
    pub endpoint: String,
    /// Also export every final run as a log record.
    pub runs: bool,
    /// Spans (and run records) queued at most.
    pub queue: usize,
    /// How long a batch may wait before it is sent.
    pub delay: Duration,
    /// How long one export request may take.
    pub timeout: Duration,
    /// Headers sent with every trace export (an API key): from
    /// `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, or else `OTEL_EXPORTER_OTLP_HEADERS`. Values
    /// are marked sensitive, so they are not shown when the configuration is.
    pub trace_headers: http::HeaderMap,
    /// The same for run records: `OTEL_EXPORTER_OTLP_LOGS_HEADERS`, or else the general ones.
    pub log_headers: http::HeaderMap,
}

impl OtlpConfig {
    /// Checks the endpoint: an absolute `http` or `https` URL with a host, no query. The
    /// bounds are ours unless the OpenTelemetry SDK variables set them, as they would in
    /// any SDK: `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_SCHEDULE_DELAY` (ms) and
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` (ms); headers as [`OtlpConfig::trace_headers`] says.
    pub fn new(endpoint: &str, runs: bool) -> Result<Self, String> {
        let trimmed = endpoint.trim().trim_end_matches('/');
        let uri: http::Uri = trimmed
            .parse()
            .map_err(|e| format!("--otlp-endpoint {endpoint:?} is not a URL: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none_or(str::is_empty) {
            return Err(format!(
                "--otlp-endpoint {endpoint:?} must be an http:// or https:// URL with a host (e.g. http://127.0.0.1:4318)"
            ));
        }
        if uri.query().is_some() {
            return Err(format!("--otlp-endpoint {endpoint:?} must not have a query"));
        }
        // It is logged and put on a command line: credentials belong in a header.
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(
                "--otlp-endpoint must not carry credentials (user:password@): set OTEL_EXPORTER_OTLP_HEADERS".into(),
            );
        }
        if ["/v1/traces", "/v1/logs"].iter().any(|p| trimmed.ends_with(p)) {
            return Err(format!(
                "--otlp-endpoint {endpoint:?} is the collector's base URL: leave out /v1/traces or /v1/logs (they are appended)"
            ));
        }
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok());
        Ok(Self {
            endpoint: trimmed.to_owned(),
            runs,
            queue: env("OTEL_BSP_MAX_QUEUE_SIZE").map_or(QUEUE, |n| n.max(1) as usize),
            delay: env("OTEL_BSP_SCHEDULE_DELAY").map_or(EXPORT_DELAY, Duration::from_millis),
            timeout: env("OTEL_EXPORTER_OTLP_TIMEOUT").map_or(EXPORT_TIMEOUT, Duration::from_millis),
            trace_headers: env_headers("TRACES")?,
            log_headers: env_headers("LOGS")?,
        })
    }

    fn signal_url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint)
    }
}

/// The headers `OTEL_EXPORTER_OTLP_{signal}_HEADERS`, or else `OTEL_EXPORTER_OTLP_HEADERS`,
/// ask for, as the OpenTelemetry SDKs read them.
fn env_headers(signal: &str) -> Result<http::HeaderMap, String> {
    let specific = format!("OTEL_EXPORTER_OTLP_{signal}_HEADERS");
    for name in [specific.as_str(), "OTEL_EXPORTER_OTLP_HEADERS"] {
        if let Ok(text) = std::env::var(name) {
            return parse_headers(&text).map_err(|e| format!("{name}: {e}"));
        }
    }
    Ok(http::HeaderMap::new())
}

/// `name=value` pairs separated by commas, each value percent-decoded. An error names the
/// entry or header, never a value (it may be a key).
fn parse_headers(text: &str) -> Result<http::HeaderMap, String> {
    let mut headers = http::HeaderMap::new();
    for (n, entry) in text.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
        let Some((name, value)) = entry.split_once('=') else {
            return Err(format!("entry {} is not name=value", n + 1));
        };
        let name = name.trim();
        let header = http::HeaderName::try_from(name).map_err(|_| format!("{name:?} is not a header name"))?;
        let decoded = percent_encoding::percent_decode_str(value.trim())
            .decode_utf8()
            .map_err(|_| format!("the value of {name} is not UTF-8 once percent-decoded"))?;
        let mut value = http::HeaderValue::try_from(decoded.as_ref())
            .map_err(|_| format!("the value of {name} cannot be sent in a header"))?;
        value.set_sensitive(true);
        headers.append(header, value);
    }
    Ok(headers)
}

/// The tracer, and the run logger when `--otlp-runs` is on.
pub struct Telemetry {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    runs: Option<(SdkLoggerProvider, SdkLogger)>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("runs", &self.runs.is_some()).finish()
    }
}

impl Telemetry {
    /// Builds the exporters and starts their batch threads. Nothing is sent until there is
    /// something to send; a collector that is down only makes exports fail (counted).
    pub fn start(config: &OtlpConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let resource = Resource::builder()
            .with_service_name("hero_executor")
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let queue = |path: &str, headers: &http::HeaderMap, signal: &'static str| {
            let collector = otlp::Collector::new(config.signal_url(path), headers.clone(), config.timeout)?;
            otlp::Queue::start(
                collector,
                signal,
                config.queue,
                EXPORT_BATCH,
                config.delay,
                metrics.clone(),
            )
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(otlp::SpanQueue(queue("/v1/traces", &config.trace_headers, "spans")?))
            // A caller that asked for no sampling (flags 00) is not traced further.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .with_resource(resource.clone())
            .build();
        let tracer = provider.tracer_with_scope(scope());
        let runs = match config.runs {
            false => None,
            true => {
                let provider = SdkLoggerProvider::builder()
                    .with_log_processor(otlp::RecordQueue(queue("/v1/logs", &config.log_headers, "runs")?))
                    .with_resource(resource)
                    .build();
                let logger = provider.logger_with_scope(scope());
                Some((provider, logger))
            }
        };
        Ok(Self { tracer, provider, runs })
    }

    /// Sends what is queued and stops the batch threads (blocks: call it off the async
    /// workers). Bounded by the exporters' own timeouts.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "OTLP trace export did not shut down cleanly");
        }
        if let Some((provider, _)) = &self.runs
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "OTLP run export did not shut down cleanly");
        }
    }

    /// Whether final runs are exported as log records.
    pub fn exports_runs(&self) -> bool {
        self.runs.is_some()
    }

    /// Starts the span of one request, continuing `traceparent` when the caller sent one.
    pub fn request(
        &self,
        surface: &'static str,
        method: &http::Method,
        path: &str,
        traceparent: Option<&str>,
    ) -> Traced {
        // An invented method is `_OTHER` (OpenTelemetry's HTTP conventions): neither a span
        // name nor an attribute value a caller chooses.
        let method = match *method {
            http::Method::GET => "GET",
            http::Method::POST => "POST",
            http::Method::PUT => "PUT",
            http::Method::DELETE => "DELETE",
            http::Method::HEAD => "HEAD",
            http::Method::OPTIONS => "OPTIONS",
            http::Method::PATCH => "PATCH",
            _ => "_OTHER",
        };
        let span = self
            .tracer
            .span_builder(request_name(method, surface))
            .with_kind(SpanKind::Server)
            .with_attributes(with_room(
                [
                    KeyValue::new("hero.endpoint", surface),
                    KeyValue::new("http.request.method", method),
                    KeyValue::new("url.path", clip(path).to_owned()),
                ],
                3,
            ))
            .start_with_context(&self.tracer, &parent(traceparent));
        Traced::new(span)
    }

    /// Starts the span of one capability call. `label` names it (a catalog name or
    /// `unknown`, so invented names do not become span names); the asked name is an
    /// attribute.
    pub fn call(&self, caller: &Caller, surface: &'static str, asked: &str, label: &str) -> Traced {
        self.call_span(
            caller.traceparent.as_deref(),
            caller_attributes(caller, surface, asked),
            label,
            None,
        )
    }

    /// Starts the span of an approved call: a child of the approver's request, linked to
    /// the span of the call that was held (`run.trace`).
    pub fn approved(&self, approver: &Caller, run: &Run) -> Traced {
        let mut attributes = vec![
            KeyValue::new("hero.capability", run.name.clone()),
            KeyValue::new("hero.principal", run.principal.clone()),
            KeyValue::new("hero.context", run.context as i64),
            KeyValue::new("hero.surface", run.surface.as_str()),
            KeyValue::new("hero.run_id", run.id.clone()),
            KeyValue::new("hero.decision", Verdict::RequireApproval.as_str()),
            KeyValue::new("hero.approver", crate::access::actor(approver)),
        ];
        if let Some(user) = run.chain.get(1) {
            attributes.push(KeyValue::new("hero.user", user.clone()));
        }
        let held = run.trace.as_deref().and_then(span_context);
        self.call_span(approver.traceparent.as_deref(), attributes, &run.name, held)
    }

    fn call_span(
        &self,
        parent_trace: Option<&str>,
        attributes: Vec<KeyValue>,
        label: &str,
        held: Option<SpanContext>,
    ) -> Traced {
        let mut builder = self
            .tracer
            .span_builder(format!("call {label}"))
            .with_kind(SpanKind::Internal)
            .with_attributes(attributes);
        if let Some(held) = held {
            builder = builder.with_links(vec![Link::with_context(held)]);
        }
        Traced::new(builder.start_with_context(&self.tracer, &parent(parent_trace)))
    }

    /// Starts the span of a forwarded call, a child of its call's span.
    pub fn upstream(&self, call: &Traced, service: &str, method: &str, run_id: &str) -> Traced {
        let parent = Context::new().with_remote_span_context(call.context.clone());
        let span = self
            .tracer
            .span_builder(format!("forward {service}.{method}"))
            .with_kind(SpanKind::Client)
            .with_attributes(with_room(
                [
                    KeyValue::new("rpc.system", "jsonrpc"),
                    KeyValue::new("rpc.service", service.to_owned()),
                    KeyValue::new("rpc.method", method.to_owned()),
                    KeyValue::new("hero.run_id", run_id.to_owned()),
                ],
                1,
            ))
            .start_with_context(&self.tracer, &parent);
        Traced::new(span)
    }

    /// Queues `run` (final) as one log record; never blocks. Params and results are left
    /// out (they can be large and are the caller's data); their digest is in.
    pub fn export_run(&self, run: &Run) {
        let Some((_, logger)) = &self.runs else { return };
        let mut record = logger.create_log_record();
        let at = |ms: i64| UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
        record.set_timestamp(at(run.finished_at.unwrap_or(run.created_at)));
        record.set_observed_timestamp(SystemTime::now());
        record.set_event_name("hero.run");
        let (severity, text) = severity(run.status);
        record.set_severity_number(severity);
        record.set_severity_text(text);
        record.set_body(AnyValue::String(
            format!("run {} {} {}", run.id, run.name, run.status.as_str()).into(),
        ));
        record.add_attributes(run_attributes(run));
        if let Some(context) = run.trace.as_deref().and_then(span_context) {
            record.set_trace_context(context.trace_id(), context.span_id(), Some(context.trace_flags()));
        }
        logger.emit(record);
    }
}

/// Longest free text (a path, an error message, a note) put in a span or record, in bytes:
/// a caller or a target cannot make every export carry megabytes.
const MAX_TEXT: usize = 1024;

/// An error's message as exported: clipped, and for invalid params (whose message quotes the
/// caller's values) only what kind of error it was, since params stay out of exports.
fn exportable(code: Option<i64>, message: &str) -> &str {
    match code {
        Some(crate::error::code::INVALID_PARAMS) => "invalid params (the values are not exported)",
        _ => clip(message),
    }
}

/// `text` cut to at most [`MAX_TEXT`] bytes, at a character boundary.
fn clip(text: &str) -> &str {
    if text.len() <= MAX_TEXT {
        return text;
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("hero_executor")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// A request span's name, `METHOD surface`: the usual ones without making a string.
fn request_name(method: &'static str, surface: &'static str) -> std::borrow::Cow<'static, str> {
    match (method, surface) {
        ("POST", "rpc") => "POST rpc".into(),
        ("POST", "rest") => "POST rest".into(),
        ("GET", "rest") => "GET rest".into(),
        ("POST", "mcp") => "POST mcp".into(),
        ("GET", "console") => "GET console".into(),
        ("POST", "console") => "POST console".into(),
        _ => format!("{method} {surface}").into(),
    }
}

/// A span's first attributes, with room for the `room` it is given later (so they are not
/// moved to a larger vector on the call's path).
fn with_room<const N: usize>(first: [KeyValue; N], room: usize) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(N + room);
    attributes.extend(first);
    attributes
}

fn caller_attributes(caller: &Caller, surface: &'static str, asked: &str) -> Vec<KeyValue> {
    // Later: user, decision, run id, outcome, error code.
    let mut attributes = with_room(
        [
            KeyValue::new("hero.capability", asked.to_owned()),
            KeyValue::new("hero.principal", caller.principal.id.clone()),
            KeyValue::new("hero.context", caller.context as i64),
            KeyValue::new("hero.surface", surface),
        ],
        5,
    );
    if let Some(user) = &caller.user {
        attributes.push(KeyValue::new("hero.user", user.clone()));
    }
    attributes
}

fn severity(status: RunStatus) -> (Severity, &'static str) {
    match status {
        RunStatus::Succeeded | RunStatus::Running | RunStatus::AwaitingApproval => (Severity::Info, "INFO"),
        RunStatus::Denied | RunStatus::Rejected | RunStatus::Expired | RunStatus::Cancelled => (Severity::Warn, "WARN"),
        RunStatus::Failed | RunStatus::TimedOut | RunStatus::Interrupted => (Severity::Error, "ERROR"),
    }
}

/// The fields of a run record, as `hero.*` log attributes.
fn run_attributes(run: &Run) -> Vec<(&'static str, AnyValue)> {
    let text = |s: &str| AnyValue::String(clip(s).to_owned().into());
    let list = |items: &[String]| AnyValue::ListAny(Box::new(items.iter().map(|s| text(s)).collect()));
    let mut attributes = vec![
        ("hero.run_id", text(&run.id)),
        ("hero.capability", text(&run.name)),
        ("hero.status", text(run.status.as_str())),
        ("hero.surface", text(run.surface.as_str())),
        ("hero.principal", text(&run.principal)),
        ("hero.chain", list(&run.chain)),
        ("hero.context", AnyValue::Int(run.context as i64)),
        ("hero.claims", list(&run.claims)),
        ("hero.decision", text(run.decision.as_str())),
        ("hero.input_sha256", text(&run.input_sha256)),
        ("hero.created_at_ms", AnyValue::Int(run.created_at)),
    ];
    let optional = [
        ("hero.user", run.chain.get(1).cloned()),
        ("hero.parent_id", run.parent_id.clone()),
        ("hero.replay_of", run.replay_of.clone()),
        ("hero.rule", run.rule.clone()),
        ("hero.approver", run.approver.clone()),
        ("hero.decision_note", run.decision_note.clone()),
        ("hero.cancelled_by", run.cancelled_by.clone()),
    ];
    attributes.extend(optional.into_iter().filter_map(|(k, v)| Some((k, text(&v?)))));
    if !run.approvers.is_empty() {
        attributes.push(("hero.approvers", list(&run.approvers)));
    }
    for (key, value) in [
        ("hero.started_at_ms", run.started_at),
        ("hero.finished_at_ms", run.finished_at),
        ("hero.duration_ms", run.duration_ms()),
    ] {
        if let Some(value) = value {
            attributes.push((key, AnyValue::Int(value)));
        }
    }
    if let Some(error) = &run.error {
        if let Some(code) = error["code"].as_i64() {
            attributes.push(("hero.error.code", AnyValue::Int(code)));
        }
        if let Some(message) = error["message"].as_str() {
            attributes.push(("hero.error.message", text(exportable(error["code"].as_i64(), message))));
        }
    }
    attributes
}

/// A started span and its context (to parent children and to send as `traceparent`).
pub struct Traced {
    span: SdkSpan,
    context: SpanContext,
}

impl Traced {
    fn new(span: SdkSpan) -> Self {
        let context = span.span_context().clone();
        Self { span, context }
    }

    /// This span as a W3C `traceparent`.
    pub fn traceparent(&self) -> String {
        let context = &self.context;
        let mut text = [0u8; 55];
        text[..3].copy_from_slice(b"00-");
        hex_into(&mut text[3..35], &context.trace_id().to_bytes());
        text[35] = b'-';
        hex_into(&mut text[36..52], &context.span_id().to_bytes());
        text[52] = b'-';
        hex_into(&mut text[53..], &[context.trace_flags().to_u8()]);
        String::from_utf8_lossy(&text).into_owned()
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        self.span.set_attribute(KeyValue::new(key, value));
    }

    /// Ends a request's span with the status it was answered with.
    pub fn end_request(mut self, status: u16, principal: Option<&str>, request_id: Option<&str>) {
        self.set("http.response.status_code", i64::from(status));
        if let Some(principal) = principal {
            self.set("hero.principal", principal.to_owned());
        }
        if let Some(id) = request_id {
            // The id the executor's log lines carry (a caller may send its own).
            self.set("hero.request_id", clip(id).to_owned());
        }
        if status >= 500 {
            self.span.set_status(Status::error(format!("answered {status}")));
        }
        self.span.end();
    }

    /// Ends a call's span with how the call ended.
    pub fn end_call(mut self, status: RunStatus, error: Option<&ExecError>) {
        let outcome = crate::metrics::outcome(status);
        self.set("hero.outcome", outcome);
        self.end_with(matches!(status, RunStatus::Failed | RunStatus::TimedOut), error);
    }

    /// Ends a forwarded call's span: an error if the target did not answer with a result.
    pub fn end_upstream(self, error: Option<&ExecError>) {
        self.end_with(error.is_some(), error);
    }

    fn end_with(mut self, failed: bool, error: Option<&ExecError>) {
        if let Some(error) = error {
            self.set("hero.error.code", error.code());
        }
        if failed {
            let message = error.map_or_else(
                || "failed".to_owned(),
                |e| exportable(Some(e.code()), &e.to_string()).to_owned(),
            );
            self.span.set_status(Status::error(message));
        }
        self.span.end();
    }
}

/// The context to start a span in: the caller's remote span, or none (a new trace).
fn parent(traceparent: Option<&str>) -> Context {
    match traceparent.and_then(span_context) {
        Some(remote) => Context::new().with_remote_span_context(remote),
        None => Context::new(),
    }
}

/// The span context a W3C `traceparent` names, if it is well formed and valid. Read (and
/// written, [`Traced::traceparent`]) by hand: the ids' `from_hex` and `Display` cost more
/// than making the span (three of each per call).
fn span_context(traceparent: &str) -> Option<SpanContext> {
    let text = traceparent.as_bytes();
    if text.len() != 55 || text[2] != b'-' || text[35] != b'-' || text[52] != b'-' {
        return None;
    }
    let (mut trace, mut span, mut flags) = ([0u8; 16], [0u8; 8], [0u8; 1]);
    unhex(&text[3..35], &mut trace)?;
    unhex(&text[36..52], &mut span)?;
    unhex(&text[53..55], &mut flags)?;
    let context = SpanContext::new(
        TraceId::from_bytes(trace),
        SpanId::from_bytes(span),
        TraceFlags::new(flags[0]),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// `bytes` as lowercase hex into `text` (twice as long).
fn hex_into(text: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in text.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

fn unhex(text: &[u8], out: &mut [u8]) -> Option<()> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    for (pair, byte) in text.chunks_exact(2).zip(out) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

/// Marks a request whose span the telemetry layer started: the Caller continues this
/// span's trace (not the header's span, which is the request span's parent).
#[derive(Debug, Clone)]
pub struct RequestTrace(pub String);

/// Who a request was from, left on the response for the request's span.
#[derive(Debug, Clone)]
pub struct AnsweredFor(pub String);

/// Answers `request` inside its own span (`metrics::count_requests` calls this when
/// telemetry is on).
pub async fn traced(
    telemetry: &Telemetry,
    surface: crate::metrics::Surface,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let surface = surface.as_str();
    let traceparent = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| crate::dispatch::valid_traceparent(v));
    let span = telemetry.request(surface, request.method(), request.uri().path(), traceparent);
    request.extensions_mut().insert(RequestTrace(span.traceparent()));
    let response = next.run(request).await;
    let principal = response.extensions().get::<AnsweredFor>().map(|a| a.0.as_str());
    let request_id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok());
    span.end_request(response.status().as_u16(), principal, request_id);
    response
}

/// reqwest is built without a default TLS provider (DESIGN section 11): installs ring.
/// Fails only if one is installed already, which is as good.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        let ok = OtlpConfig::new("http://127.0.0.1:4318/", false).unwrap();
        assert_eq!(ok.signal_url("/v1/traces"), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(
            OtlpConfig::new("https://collector.example/otlp", true)
                .unwrap()
                .signal_url("/v1/logs"),
            "https://collector.example/otlp/v1/logs"
        );
        for bad in [
            "",
            "127.0.0.1:4318",
            "ftp://host",
            "http://",
            "http://h/?a=b",
            "unix:/tmp/x",
            "http://h:4318/v1/traces",
            "https://user:secret@collector.example",
        ] {
            assert!(OtlpConfig::new(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn free_text_is_clipped_at_a_character_boundary() {
        let long = "é".repeat(MAX_TEXT);
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_TEXT && clipped.len() >= MAX_TEXT - 1);
        assert!(clipped.chars().all(|c| c == 'é'));
        assert_eq!(clip("short"), "short");
    }

    #[test]
    fn traceparents_round_trip() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = span_context(text).unwrap();
        assert_eq!(context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(context.is_sampled());
        assert!(span_context("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        ] {
            assert!(span_context(bad).is_none(), "{bad}");
        }
        let span = Traced {
            span: opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .build()
                .tracer("t")
                .start_with_context("s", &parent(Some(text))),
            context: context.clone(),
        };
        assert_eq!(span.traceparent(), text);
    }

    #[test]
    fn request_names_are_method_and_surface() {
        for (method, surface) in [
            ("POST", "rpc"),
            ("GET", "console"),
            ("DELETE", "rest"),
            ("_OTHER", "other"),
        ] {
            assert_eq!(request_name(method, surface), format!("{method} {surface}"));
        }
    }

    #[test]
    fn headers_are_name_value_pairs_with_decoded_values() {
        let headers = parse_headers(" api-key = a%3Db%2Cc , x-tenant=t1,,").unwrap();
        assert_eq!(headers["api-key"], "a=b,c");
        assert_eq!(headers["x-tenant"], "t1");
        assert!(headers["api-key"].is_sensitive());
        assert!(!format!("{headers:?}").contains("a=b"));
        assert!(parse_headers("").unwrap().is_empty());
        for (bad, error) in [
            ("api-key", "entry 1 is not name=value"),
            ("a=1,bad name=2", "\"bad name\" is not a header name"),
            ("k=%ff", "the value of k is not UTF-8 once percent-decoded"),
            ("k=line%0Abreak", "the value of k cannot be sent in a header"),
        ] {
            assert_eq!(parse_headers(bad).unwrap_err(), error, "{bad}");
        }
    }
}
