//! OpenTelemetry over OTLP/HTTP (DESIGN section 14). Off unless `--otlp-endpoint` is set;
//! when off nothing here exists and a request or call pays a few `Option` checks.
//!
//! Spans: one per request (server), one per capability call (its run id, capability,
//! principal, decision and outcome), one per forwarded call (client, the call's child). A
//! caller's `traceparent` is continued, and the forwarded call carries the upstream span's.
//! An approved call's span is linked to the span of the call that was held. With
//! `--otlp-runs` each run's final state is also one log record, carrying its call's trace.
//!
//! Spans and run records are written straight into OTLP's protobuf messages by [`otlp`]: a
//! span's attributes as they are set, the rest as it ends, on the thread that ends it;
//! one thread per signal sends the queue to the collector. A queue holds at most 8,192
//! (`OTEL_BSP_MAX_QUEUE_SIZE`): past that, and for every batch the collector does not
//! take, spans and records are counted in `/metrics` as dropped. A slow or absent
//! collector never holds a call up.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use crate::error::ExecError;
use crate::intent::Caller;
use crate::metrics::Metrics;
use crate::policy::Verdict;
use crate::runs::{Run, RunStatus};

use otlp::{Attributes, Kind, SpanContext};

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
    /// Resource attributes from `OTEL_RESOURCE_ATTRIBUTES` (`host.name=node7,...`), which
    /// every span and record carries; `service.name` and `service.version` are the
    /// executor's whatever it says.
    pub resource: Vec<(String, String)>,
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
            resource: match std::env::var("OTEL_RESOURCE_ATTRIBUTES") {
                Ok(text) => pairs(&text).map_err(|e| format!("OTEL_RESOURCE_ATTRIBUTES: {e}"))?,
                Err(_) => Vec::new(),
            },
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

/// Headers from `name=value` pairs ([`pairs`]), their values marked sensitive. An error
/// names the entry or header, never a value (it may be a key).
fn parse_headers(text: &str) -> Result<http::HeaderMap, String> {
    let mut headers = http::HeaderMap::new();
    for (name, value) in pairs(text)? {
        let header = http::HeaderName::try_from(&name).map_err(|_| format!("{name:?} is not a header name"))?;
        let mut value = http::HeaderValue::try_from(value)
            .map_err(|_| format!("the value of {name} cannot be sent in a header"))?;
        value.set_sensitive(true);
        headers.append(header, value);
    }
    Ok(headers)
}

/// `name=value` pairs separated by commas, names and values trimmed and each value
/// percent-decoded, as the OpenTelemetry SDKs read their `*_HEADERS` and
/// `OTEL_RESOURCE_ATTRIBUTES` variables. An error names the entry or name, never a value.
fn pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for (n, entry) in text.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
        let Some((name, value)) = entry.split_once('=') else {
            return Err(format!("entry {} is not name=value", n + 1));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("entry {} has no name", n + 1));
        }
        let decoded = percent_encoding::percent_decode_str(value.trim())
            .decode_utf8()
            .map_err(|_| format!("the value of {name} is not UTF-8 once percent-decoded"))?;
        pairs.push((name.to_owned(), decoded.into_owned()));
    }
    Ok(pairs)
}

/// The span queue, and the run record queue when `--otlp-runs` is on.
pub struct Telemetry {
    spans: Arc<otlp::Queue>,
    runs: Option<otlp::Queue>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("runs", &self.runs.is_some()).finish()
    }
}

/// Where a span starts: a new trace, a caller's span (another process's) or one of ours.
#[derive(Clone, Copy)]
enum Parent {
    None,
    Remote(SpanContext),
    Local(SpanContext),
}

impl Parent {
    /// The caller's span a `traceparent` names, if it is well formed and valid.
    fn of(traceparent: Option<&str>) -> Self {
        traceparent.and_then(span_context).map_or(Parent::None, Parent::Remote)
    }
}

impl Telemetry {
    /// Starts the queues and their threads. Nothing is sent until there is something to
    /// send; a collector that is down only makes exports fail (counted).
    pub fn start(config: &OtlpConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let version = env!("CARGO_PKG_VERSION");
        let mut resource = config.resource.clone();
        resource.extend(
            [
                ("service.name", "hero_executor"),
                ("service.version", version),
                ("telemetry.sdk.name", "hero_executor"),
                ("telemetry.sdk.language", "rust"),
                ("telemetry.sdk.version", version),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        let envelope = Arc::new(otlp::Envelope::new(&resource, "hero_executor", version));
        let queue = |path: &str, headers: &http::HeaderMap, signal: &'static str| {
            let collector = otlp::Collector::new(config.signal_url(path), headers.clone(), config.timeout)?;
            otlp::Queue::start(
                collector,
                envelope.clone(),
                signal,
                config.queue,
                EXPORT_BATCH,
                config.delay,
                metrics.clone(),
            )
        };
        let spans = Arc::new(queue("/v1/traces", &config.trace_headers, "spans")?);
        let runs = match config.runs {
            false => None,
            true => Some(queue("/v1/logs", &config.log_headers, "runs")?),
        };
        Ok(Self { spans, runs })
    }

    /// Sends what is queued and stops the export threads (blocks: call it off the async
    /// workers). Bounded by the exports' own timeouts.
    pub fn shutdown(&self) {
        for queue in std::iter::once(&*self.spans).chain(&self.runs) {
            if let Err(e) = queue.shutdown() {
                tracing::warn!(error = %e, "OTLP export did not shut down cleanly");
            }
        }
    }

    /// Whether final runs are exported as log records.
    pub fn exports_runs(&self) -> bool {
        self.runs.is_some()
    }

    /// Starts a span under `parent`. A caller that sampled its trace out (flags 00) is not
    /// recorded (parent-based sampling), but its children still get span ids of their own,
    /// so the trace is passed on, unsampled.
    fn begin(
        &self,
        parent: Parent,
        name: Cow<'static, str>,
        kind: Kind,
        attributes: Attributes,
        link: Option<SpanContext>,
    ) -> Traced {
        let (trace, flags, parent) = match parent {
            Parent::None => (random_id(), 1, None),
            Parent::Remote(p) => (p.trace, p.flags, Some((p.span, true))),
            Parent::Local(p) => (p.trace, p.flags, Some((p.span, false))),
        };
        let context = SpanContext {
            trace,
            span: random_id(),
            flags,
        };
        let recording = context.sampled().then(|| Recording {
            queue: self.spans.clone(),
            span: otlp::Span {
                context,
                parent,
                name,
                kind,
                start: otlp::now(),
                attributes,
                link,
                error: None,
            },
        });
        Traced { context, recording }
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
        // Room for these and the three set when it ends.
        let mut attributes = Attributes::of_span(192 + path.len().min(MAX_TEXT));
        attributes.text("hero.endpoint", surface);
        attributes.text("http.request.method", method);
        attributes.text("url.path", path);
        let name = request_name(method, surface);
        self.begin(Parent::of(traceparent), name, Kind::Server, attributes, None)
    }

    /// Starts the span of one capability call. `label` names it (a catalog name or
    /// `unknown`, so invented names do not become span names); the asked name is an
    /// attribute.
    pub fn call(&self, caller: &Caller, surface: &'static str, asked: &str, label: &str) -> Traced {
        // Room for these and the decision, run id, outcome and error code set later.
        let mut attributes = Attributes::of_span(320 + asked.len().min(MAX_TEXT));
        attributes.text("hero.capability", asked);
        attributes.text("hero.principal", &caller.principal.id);
        attributes.int("hero.context", caller.context as i64);
        attributes.text("hero.surface", surface);
        if let Some(user) = &caller.user {
            attributes.text("hero.user", user);
        }
        let parent = Parent::of(caller.traceparent.as_deref());
        self.begin(parent, format!("call {label}").into(), Kind::Internal, attributes, None)
    }

    /// Starts the span of an approved call: a child of the approver's request, linked to
    /// the span of the call that was held (`run.trace`).
    pub fn approved(&self, approver: &Caller, run: &Run) -> Traced {
        let mut attributes = Attributes::of_span(512);
        attributes.text("hero.capability", &run.name);
        attributes.text("hero.principal", &run.principal);
        attributes.int("hero.context", run.context as i64);
        attributes.text("hero.surface", run.surface.as_str());
        attributes.text("hero.run_id", &run.id);
        attributes.text("hero.decision", Verdict::RequireApproval.as_str());
        attributes.text("hero.approver", &crate::access::actor(approver));
        if let Some(user) = run.chain.get(1) {
            attributes.text("hero.user", user);
        }
        let held = run.trace.as_deref().and_then(span_context);
        let parent = Parent::of(approver.traceparent.as_deref());
        let name = format!("call {}", run.name).into();
        self.begin(parent, name, Kind::Internal, attributes, held)
    }

    /// Starts the span of a forwarded call, a child of its call's span.
    pub fn upstream(&self, call: &Traced, service: &str, method: &str, run_id: &str) -> Traced {
        let mut attributes = Attributes::of_span(160 + service.len() + method.len());
        attributes.text("rpc.system", "jsonrpc");
        attributes.text("rpc.service", service);
        attributes.text("rpc.method", method);
        attributes.text("hero.run_id", run_id);
        let name = format!("forward {service}.{method}").into();
        self.begin(Parent::Local(call.context), name, Kind::Client, attributes, None)
    }

    /// Queues `run` (final) as one log record; never blocks. Params and results are left
    /// out (they can be large and are the caller's data); their digest is in.
    pub fn export_run(&self, run: &Run) {
        let Some(queue) = &self.runs else { return };
        let at = |ms: i64| (ms.max(0) as u64).saturating_mul(1_000_000);
        queue.add_record(&otlp::Record {
            time: at(run.finished_at.unwrap_or(run.created_at)),
            observed: otlp::now(),
            severity: severity(run.status),
            event_name: "hero.run",
            body: &["run", &run.id, &run.name, run.status.as_str()],
            trace: run.trace.as_deref().and_then(span_context),
            attributes: run_attributes(run),
        });
    }
}

/// A span or trace id: random, and never all zeroes (which means "none").
fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let mut id = [0; N];
        rand::Rng::fill(&mut rand::thread_rng(), &mut id[..]);
        if id != [0; N] {
            return id;
        }
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

/// `SeverityNumber` (INFO 9, WARN 13, ERROR 17) and its text.
fn severity(status: RunStatus) -> (u64, &'static str) {
    match status {
        RunStatus::Succeeded | RunStatus::Running | RunStatus::AwaitingApproval => (9, "INFO"),
        RunStatus::Denied | RunStatus::Rejected | RunStatus::Expired | RunStatus::Cancelled => (13, "WARN"),
        RunStatus::Failed | RunStatus::TimedOut | RunStatus::Interrupted => (17, "ERROR"),
    }
}

/// The fields of a run record, as `hero.*` log attributes.
fn run_attributes(run: &Run) -> Attributes {
    let mut attributes = Attributes::of_record(1024);
    attributes.text("hero.run_id", &run.id);
    attributes.text("hero.capability", &run.name);
    attributes.text("hero.status", run.status.as_str());
    attributes.text("hero.surface", run.surface.as_str());
    attributes.text("hero.principal", &run.principal);
    attributes.texts("hero.chain", &run.chain);
    attributes.int("hero.context", run.context as i64);
    attributes.texts("hero.claims", &run.claims);
    attributes.text("hero.decision", run.decision.as_str());
    attributes.text("hero.input_sha256", &run.input_sha256);
    attributes.int("hero.created_at_ms", run.created_at);
    for (key, value) in [
        ("hero.user", run.chain.get(1)),
        ("hero.parent_id", run.parent_id.as_ref()),
        ("hero.replay_of", run.replay_of.as_ref()),
        ("hero.rule", run.rule.as_ref()),
        ("hero.approver", run.approver.as_ref()),
        ("hero.decision_note", run.decision_note.as_ref()),
        ("hero.cancelled_by", run.cancelled_by.as_ref()),
    ] {
        if let Some(value) = value {
            attributes.text(key, value);
        }
    }
    if !run.approvers.is_empty() {
        attributes.texts("hero.approvers", &run.approvers);
    }
    for (key, value) in [
        ("hero.started_at_ms", run.started_at),
        ("hero.finished_at_ms", run.finished_at),
        ("hero.duration_ms", run.duration_ms()),
    ] {
        if let Some(value) = value {
            attributes.int(key, value);
        }
    }
    if let Some(error) = &run.error {
        let code = error["code"].as_i64();
        if let Some(code) = code {
            attributes.int("hero.error.code", code);
        }
        if let Some(message) = error["message"].as_str() {
            attributes.text("hero.error.message", exportable(code, message));
        }
    }
    attributes
}

/// A span being recorded, and the queue it goes to when it ends.
struct Recording {
    queue: Arc<otlp::Queue>,
    span: otlp::Span,
}

/// A started span (ended when it is dropped, if not before) and its context, to parent
/// children and to send as `traceparent`.
pub struct Traced {
    context: SpanContext,
    /// None when the trace is sampled out: nothing is recorded.
    recording: Option<Recording>,
}

/// A value a span's attribute is set to.
pub enum Value<'a> {
    Text(&'a str),
    Int(i64),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(text: &'a str) -> Self {
        Value::Text(text)
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(text: &'a String) -> Self {
        Value::Text(text)
    }
}

impl From<i64> for Value<'_> {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl Traced {
    /// This span as a W3C `traceparent`.
    pub fn traceparent(&self) -> String {
        let context = &self.context;
        let mut text = [0u8; 55];
        text[..3].copy_from_slice(b"00-");
        hex_into(&mut text[3..35], &context.trace);
        text[35] = b'-';
        hex_into(&mut text[36..52], &context.span);
        text[52] = b'-';
        hex_into(&mut text[53..], &[context.flags]);
        // Hex digits and dashes: always ASCII.
        std::str::from_utf8(&text).unwrap_or_default().to_owned()
    }

    pub fn set<'a>(&mut self, key: &'static str, value: impl Into<Value<'a>>) {
        if let Some(recording) = &mut self.recording {
            let attributes = &mut recording.span.attributes;
            match value.into() {
                Value::Text(text) => attributes.text(key, text),
                Value::Int(n) => attributes.int(key, n),
            }
        }
    }

    fn fail(&mut self, description: impl FnOnce() -> String) {
        if let Some(recording) = &mut self.recording {
            recording.span.error = Some(description());
        }
    }

    /// Ends a request's span with the status it was answered with.
    pub fn end_request(mut self, status: u16, principal: Option<&str>, request_id: Option<&str>) {
        self.set("http.response.status_code", i64::from(status));
        if let Some(principal) = principal {
            self.set("hero.principal", principal);
        }
        if let Some(id) = request_id {
            // The id the executor's log lines carry (a caller may send its own).
            self.set("hero.request_id", id);
        }
        if status >= 500 {
            self.fail(|| format!("answered {status}"));
        }
    }

    /// Ends a call's span with how the call ended.
    pub fn end_call(mut self, status: RunStatus, error: Option<&ExecError>) {
        self.set("hero.outcome", crate::metrics::outcome(status));
        self.end_with(matches!(status, RunStatus::Failed | RunStatus::TimedOut), error);
    }

    /// Ends a forwarded call's span: an error if the target did not answer with a result.
    pub fn end_upstream(mut self, error: Option<&ExecError>) {
        self.end_with(error.is_some(), error);
    }

    fn end_with(&mut self, failed: bool, error: Option<&ExecError>) {
        if let Some(error) = error {
            self.set("hero.error.code", error.code());
        }
        if failed {
            self.fail(|| {
                error.map_or_else(
                    || "failed".to_owned(),
                    |e| exportable(Some(e.code()), &e.to_string()).to_owned(),
                )
            });
        }
    }
}

impl Drop for Traced {
    /// Ends the span: every `end_*` ends it here, and so does a call whose future is
    /// dropped half way (its caller went away).
    fn drop(&mut self) {
        if let Some(recording) = self.recording.take() {
            recording.queue.add_span(&recording.span, otlp::now());
        }
    }
}

/// The span context a W3C `traceparent` names, if it is well formed and valid. Read (and
/// written, [`Traced::traceparent`]) by hand, three of each per call.
fn span_context(traceparent: &str) -> Option<SpanContext> {
    let text = traceparent.as_bytes();
    if text.len() != 55 || text[2] != b'-' || text[35] != b'-' || text[52] != b'-' {
        return None;
    }
    let (mut trace, mut span, mut flags) = ([0u8; 16], [0u8; 8], [0u8; 1]);
    unhex(&text[3..35], &mut trace)?;
    unhex(&text[36..52], &mut span)?;
    unhex(&text[53..55], &mut flags)?;
    let valid = trace != [0; 16] && span != [0; 8];
    valid.then_some(SpanContext {
        trace,
        span,
        flags: flags[0],
    })
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
        assert_eq!(context.trace, 0x4bf92f3577b34da6a3ce929d0e0e4736_u128.to_be_bytes());
        assert_eq!(context.span, 0x00f067aa0ba902b7_u64.to_be_bytes());
        assert!(context.sampled());
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
            context,
            recording: None,
        };
        assert_eq!(span.traceparent(), text);
    }

    fn telemetry() -> Telemetry {
        let config = OtlpConfig::new("http://127.0.0.1:9", false).unwrap();
        Telemetry::start(&config, Arc::new(Metrics::new())).unwrap()
    }

    #[test]
    fn spans_continue_their_parents_and_a_sampled_out_trace_is_passed_on_unsampled() {
        let telemetry = telemetry();
        let post = http::Method::POST;
        let root = telemetry.request("rpc", &post, "/rpc", None);
        let recorded = root.recording.as_ref().expect("a new trace is sampled");
        assert_eq!((recorded.span.parent, root.context.flags), (None, 1));
        let child = telemetry.upstream(&root, "echo", "echo", "r1");
        assert_eq!(child.context.trace, root.context.trace);
        assert_ne!(child.context.span, root.context.span);
        let recorded = child.recording.as_ref().unwrap();
        assert_eq!(recorded.span.parent, Some((root.context.span, false)));
        assert_eq!(recorded.span.kind, Kind::Client);

        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let continued = telemetry.request("rpc", &post, "/rpc", Some(caller));
        assert!(
            continued
                .traceparent()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        let parent = continued.recording.as_ref().unwrap().span.parent;
        assert_eq!(parent, Some((0x00f067aa0ba902b7_u64.to_be_bytes(), true)));

        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let out = telemetry.request("rpc", &post, "/rpc", Some(unsampled));
        assert!(out.recording.is_none());
        let passed = out.traceparent();
        assert!(passed.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && passed.ends_with("-00"));
        assert_ne!(passed, unsampled, "a span id of its own");
        let under = telemetry.upstream(&out, "echo", "echo", "r1");
        assert!(under.recording.is_none() && under.traceparent().ends_with("-00"));

        // An invalid traceparent starts a new trace.
        let fresh = telemetry.request("rpc", &post, "/rpc", Some("00-0000-bad"));
        assert!(fresh.recording.as_ref().unwrap().span.parent.is_none());
    }

    #[test]
    fn resource_attributes_are_name_value_pairs() {
        assert_eq!(
            pairs("host.name=node%207, deployment.environment = prod").unwrap(),
            [("host.name", "node 7"), ("deployment.environment", "prod")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(pairs("=x").unwrap_err(), "entry 1 has no name");
        assert_eq!(pairs("a=1,b").unwrap_err(), "entry 2 is not name=value");
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
