//! OTLP/HTTP with protobuf bodies: each span or run record is written into the wire format
//! of the OpenTelemetry protocol's messages as it ends, on the thread that ends it, and
//! appended to its signal's queue; one thread per signal wraps what is queued as one
//! `ExportTraceServiceRequest` (or `ExportLogsServiceRequest`) and posts it.
//!
//! The SDK's way, its batch processor in front of `opentelemetry-otlp`, moved each span
//! through a channel to the export thread, converted it there into `opentelemetry-proto`'s
//! generated structs (a new `String` for every attribute key and value, the batch grouped
//! in a hash map) and let prost size every nested message once per level it is nested in:
//! 1.26x the machine instructions of a call without tracing, against a target of 1.10x
//! (README Decisions). Here a span is written once, in one pass, while it is still in the
//! cache of the thread that made it, and freed there. The bytes are checked against
//! `opentelemetry-proto`'s own conversion in the tests below, and decoded by the
//! OpenTelemetry project's Python classes in `tests/otlp.rs`.

use std::io::Read as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry::logs::{AnyValue, Severity};
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceFlags};
use opentelemetry::{InstrumentationScope, Key, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};

use crate::metrics::Metrics;

/// A collector's answer read at most (it is an `Export*ServiceResponse`, a few bytes).
const MAX_ANSWER: u64 = 64 * 1024;

/// Where one signal is posted, and how.
#[derive(Debug)]
pub(super) struct Collector {
    client: reqwest::blocking::Client,
    url: String,
    headers: http::HeaderMap,
    timeout: Duration,
}

impl Collector {
    /// A client for `url` with `headers` on every request. The blocking client starts its
    /// own runtime, which may not be built on an async worker: it is built on a thread of
    /// its own (as `opentelemetry-otlp` does).
    pub(super) fn new(url: String, mut headers: http::HeaderMap, timeout: Duration) -> Result<Self, String> {
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-protobuf"),
        );
        super::install_crypto_provider();
        let client = std::thread::spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(timeout)
                .user_agent(concat!("hero_executor/", env!("CARGO_PKG_VERSION")))
                .build()
        })
        .join()
        .map_err(|_| "building the OTLP HTTP client panicked".to_owned())?
        .map_err(|e| format!("the OTLP HTTP client: {e}"))?;
        Ok(Self {
            client,
            url,
            headers,
            timeout,
        })
    }

    /// Posts one encoded request; an error unless the collector answers 2xx. Blocks (the
    /// batch processors call exporters on their own threads).
    fn post(&self, body: Vec<u8>) -> OTelSdkResult {
        let failed = |e: String| OTelSdkError::InternalFailure(e);
        let mut response = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .body(body)
            .send()
            .map_err(|e| failed(format!("OTLP export to {}: {e}", self.url)))?;
        // Read (bounded) so the connection can be used again.
        let _ = std::io::copy(&mut (&mut response).take(MAX_ANSWER), &mut std::io::sink());
        match response.status() {
            status if status.is_success() => Ok(()),
            status => Err(failed(format!(
                "OTLP export to {}: the collector answered {status}",
                self.url
            ))),
        }
    }
}

/// The resource every request carries, encoded once.
#[derive(Debug, Default)]
struct EncodedResource {
    message: Vec<u8>,
    schema_url: String,
}

impl EncodedResource {
    fn of(resource: &Resource) -> Self {
        let mut message = Vec::new();
        for (key, value) in resource.iter() {
            nested(&mut message, 1, |b| key_value(b, key, value));
        }
        Self {
            message,
            schema_url: resource.schema_url().unwrap_or_default().to_owned(),
        }
    }
}

/// Where a queue's spans or records wait for their thread, and the bounds.
#[derive(Debug)]
pub(super) struct Queue {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Shared {
    state: Mutex<State>,
    /// `state.count`, readable without the lock: a full queue turns items away before
    /// they are encoded.
    queued: AtomicUsize,
    /// The export thread waits on it: a batch is ready, a flush was asked for, or stop.
    ready: Condvar,
    /// Flushes wait on it for the export thread to have sent what was queued.
    sent: Condvar,
    collector: Collector,
    signal: &'static str,
    capacity: usize,
    batch: usize,
    delay: Duration,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct State {
    /// Encoded items, each a whole `spans` (or `log_records`) field of the scope's message.
    items: Vec<u8>,
    count: usize,
    /// The buffer the export thread gave back, to be the next `items`.
    spare: Vec<u8>,
    resource: Arc<EncodedResource>,
    /// The instrumentation scope of every item, encoded when the first came.
    scope: Option<Arc<(Vec<u8>, String)>>,
    flushes_asked: u64,
    flushes_done: u64,
    stopping: bool,
}

/// A buffer a thread encodes one item into before it takes the queue's lock.
const SCRATCH_KEPT: usize = 64 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Queue {
    /// Starts the thread that posts `signal`'s batches to `collector`: when `batch` items
    /// are queued or the first has waited `delay`. Past `capacity` items (a collector that
    /// is slow or down) new ones are dropped and counted.
    pub(super) fn start(
        collector: Collector,
        signal: &'static str,
        capacity: usize,
        batch: usize,
        delay: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            queued: AtomicUsize::new(0),
            ready: Condvar::new(),
            sent: Condvar::new(),
            collector,
            signal,
            capacity: capacity.max(1),
            batch: batch.clamp(1, capacity.max(1)),
            delay,
            metrics,
        });
        let exporting = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("otlp-{signal}"))
            .spawn(move || exporting.run())
            .map_err(|e| format!("starting the OTLP {signal} thread: {e}"))?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues one item, written by `encode` (a whole field of the scope's message), from
    /// `scope`. Every item of a queue is from the same scope: the executor's.
    fn add(&self, scope: &InstrumentationScope, encode: impl FnOnce(&mut Vec<u8>)) {
        if self.shared.queued.load(Ordering::Relaxed) >= self.shared.capacity {
            self.shared.metrics.otlp_dropped(self.shared.signal, "queue_full", 1);
            return;
        }
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            encode(scratch);
            let shared = &self.shared;
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.count >= shared.capacity || state.stopping {
                drop(state);
                shared.metrics.otlp_dropped(shared.signal, "queue_full", 1);
            } else {
                if state.scope.is_none() {
                    let mut encoded = Vec::new();
                    instrumentation_scope(&mut encoded, scope);
                    let schema_url = scope.schema_url().unwrap_or_default().to_owned();
                    state.scope = Some(Arc::new((encoded, schema_url)));
                }
                state.items.extend_from_slice(scratch);
                state.count += 1;
                shared.queued.store(state.count, Ordering::Relaxed);
                let full = state.count == shared.batch;
                drop(state);
                if full {
                    shared.ready.notify_one();
                }
            }
            if scratch.capacity() > SCRATCH_KEPT {
                *scratch = Vec::new();
            }
        });
    }

    fn set_resource(&self, resource: &Resource) {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner()).resource = Arc::new(EncodedResource::of(resource));
    }

    /// Waits (at most `timeout`) until what was queued before the call has been sent.
    fn flush(&self, timeout: Duration) -> OTelSdkResult {
        let shared = &self.shared;
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.flushes_asked += 1;
        let asked = state.flushes_asked;
        shared.ready.notify_one();
        let (_state, waited) = shared
            .sent
            .wait_timeout_while(state, timeout, |s| s.flushes_done < asked && !s.stopping)
            .unwrap_or_else(|e| e.into_inner());
        match waited.timed_out() {
            true => Err(OTelSdkError::Timeout(timeout)),
            false => Ok(()),
        }
    }

    /// Sends what is queued and stops the thread; bounded by the collector's timeout.
    fn shutdown(&self) -> OTelSdkResult {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner()).stopping = true;
        self.shared.ready.notify_one();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        match thread.map(std::thread::JoinHandle::join) {
            None => Err(OTelSdkError::AlreadyShutdown),
            Some(Ok(())) => Ok(()),
            Some(Err(_)) => Err(OTelSdkError::InternalFailure(format!(
                "the OTLP {} thread panicked",
                self.shared.signal
            ))),
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // Not joined here: a drop must not wait for a collector.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner()).stopping = true;
        self.shared.ready.notify_one();
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("signal", &self.signal)
            .field("url", &self.collector.url)
            .finish()
    }
}

impl Shared {
    /// The export thread: waits for a batch, a flush, the delay or stop; sends what is
    /// queued as one request; counts what the collector did not take.
    fn run(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let deadline = Instant::now() + self.delay;
            while state.count < self.batch && !state.stopping && state.flushes_done == state.flushes_asked {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                state = self
                    .ready
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let spare = std::mem::take(&mut state.spare);
            let mut items = std::mem::replace(&mut state.items, spare);
            let count = std::mem::take(&mut state.count);
            self.queued.store(0, Ordering::Relaxed);
            let (resource, scope) = (state.resource.clone(), state.scope.clone());
            let (flushes, stopping) = (state.flushes_asked, state.stopping);
            drop(state);
            if let Some(scope) = scope.filter(|_| count > 0) {
                let body = request(&resource, &scope.0, &scope.1, &items);
                if let Err(error) = self.collector.post(body) {
                    tracing::debug!(signal = self.signal, count, %error, "OTLP export failed");
                    self.metrics.otlp_dropped(self.signal, "export_failed", count as u64);
                }
            }
            items.clear();
            state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if items.capacity() <= 2 * self.batch * 1024 {
                state.spare = items;
            }
            state.flushes_done = flushes;
            self.sent.notify_all();
            if stopping && state.count == 0 {
                return;
            }
        }
    }
}

/// The span processor: each span is encoded and queued as it ends.
#[derive(Debug)]
pub(super) struct SpanQueue(pub(super) Queue);

impl SpanProcessor for SpanQueue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        // A span is 128 bytes to 16 KiB: two bytes for its length.
        let encode = |b: &mut Vec<u8>| nested_sized(b, 2, 2, |b| encode_span(b, &span));
        self.0.add(&span.instrumentation_scope, encode);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.flush(self.0.shared.collector.timeout)
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.0.shutdown()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// The log processor: each run record is encoded and queued as it is emitted.
#[derive(Debug)]
pub(super) struct RecordQueue(pub(super) Queue);

impl LogProcessor for RecordQueue {
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        self.0.add(scope, |b| nested(b, 2, |b| encode_record(b, record)));
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.flush(self.0.shared.collector.timeout)
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.0.shutdown()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// One `ExportTraceServiceRequest` (or `ExportLogsServiceRequest`: their fields have the
/// same numbers) around `items`: one resource, one scope. The lengths are worked out
/// first, so the items are copied once.
fn request(resource: &EncodedResource, scope: &[u8], scope_schema: &str, items: &[u8]) -> Vec<u8> {
    let field = |len: usize| 1 + varint_len(len as u64) + len;
    let text = |s: &str| if s.is_empty() { 0 } else { field(s.len()) };
    let scoped = field(scope.len()) + items.len() + text(scope_schema);
    let resourced = field(resource.message.len()) + field(scoped) + text(&resource.schema_url);
    let mut b = Vec::with_capacity(field(resourced));
    tag(&mut b, 1, LEN);
    varint(&mut b, resourced as u64);
    bytes_always(&mut b, 1, &resource.message);
    tag(&mut b, 2, LEN);
    varint(&mut b, scoped as u64);
    bytes_always(&mut b, 1, scope);
    b.extend_from_slice(items);
    string(&mut b, 3, scope_schema);
    string(&mut b, 3, &resource.schema_url);
    debug_assert_eq!(b.len(), field(resourced));
    b
}

/// One `Span` (opentelemetry/proto/trace/v1/trace.proto).
fn encode_span(b: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    bytes(b, 1, &context.trace_id().to_bytes());
    bytes(b, 2, &context.span_id().to_bytes());
    string(b, 3, &context.trace_state().header());
    if span.parent_span_id != SpanId::INVALID {
        bytes(b, 4, &span.parent_span_id.to_bytes());
    }
    string(b, 5, &span.name);
    let kind = match span.span_kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    uint(b, 6, kind);
    fixed64(b, 7, nanos(span.start_time));
    fixed64(b, 8, nanos(span.end_time));
    attributes(b, 9, &span.attributes);
    uint(b, 10, span.dropped_attributes_count.into());
    for event in span.events.iter() {
        nested(b, 11, |b| {
            fixed64(b, 1, nanos(event.timestamp));
            string(b, 2, &event.name);
            attributes(b, 3, &event.attributes);
            uint(b, 4, event.dropped_attributes_count.into());
        });
    }
    uint(b, 12, span.events.dropped_count.into());
    for link in span.links.iter() {
        let context = &link.span_context;
        nested(b, 13, |b| {
            bytes(b, 1, &context.trace_id().to_bytes());
            bytes(b, 2, &context.span_id().to_bytes());
            string(b, 3, &context.trace_state().header());
            attributes(b, 4, &link.attributes);
            uint(b, 5, link.dropped_attributes_count.into());
            fixed32(b, 6, span_flags(context.is_remote(), context.trace_flags()));
        });
    }
    uint(b, 14, span.links.dropped_count.into());
    nested(b, 15, |b| match &span.status {
        Status::Unset => {}
        Status::Ok => uint(b, 3, 1),
        Status::Error { description } => {
            string(b, 2, description);
            uint(b, 3, 2);
        }
    });
    fixed32(b, 16, span_flags(span.parent_span_is_remote, context.trace_flags()));
}

/// `SpanFlags`: the W3C trace flags, and whether the parent (or linked) context is remote.
fn span_flags(remote: bool, flags: TraceFlags) -> u32 {
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    u32::from(flags.to_u8()) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 }
}

/// One `LogRecord` (opentelemetry/proto/logs/v1/logs.proto).
fn encode_record(b: &mut Vec<u8>, record: &SdkLogRecord) {
    fixed64(b, 1, record.timestamp().map_or(0, nanos));
    uint(b, 2, record.severity_number().map_or(0, severity_number));
    string(b, 3, record.severity_text().unwrap_or_default());
    if let Some(body) = record.body() {
        nested(b, 5, |b| any_value(b, body));
    }
    for (key, value) in record.attributes_iter() {
        nested(b, 6, |b| {
            string(b, 1, key.as_str());
            nested(b, 2, |b| any_value(b, value));
        });
    }
    if let Some(context) = record.trace_context() {
        fixed32(b, 8, context.trace_flags.map_or(0, |f| u32::from(f.to_u8())));
        bytes(b, 9, &context.trace_id.to_bytes());
        bytes(b, 10, &context.span_id.to_bytes());
    }
    fixed64(b, 11, record.observed_timestamp().map_or(0, nanos));
    string(b, 12, record.event_name().unwrap_or_default());
}

/// `SeverityNumber`: TRACE 1 to FATAL4 24, in the order the API declares them.
fn severity_number(severity: Severity) -> u64 {
    severity as u64
}

/// An `InstrumentationScope`. (A log record's `target` would rename it; the executor sets
/// none.)
fn instrumentation_scope(b: &mut Vec<u8>, scope: &InstrumentationScope) {
    string(b, 1, scope.name());
    string(b, 2, scope.version().unwrap_or_default());
    for attribute in scope.attributes() {
        nested(b, 3, |b| key_value(b, &attribute.key, &attribute.value));
    }
}

fn attributes(b: &mut Vec<u8>, field: u32, attributes: &[KeyValue]) {
    for attribute in attributes {
        nested(b, field, |b| key_value(b, &attribute.key, &attribute.value));
    }
}

/// A `KeyValue` of a span, resource or scope attribute.
fn key_value(b: &mut Vec<u8>, key: &Key, value: &Value) {
    string(b, 1, key.as_str());
    nested(b, 2, |b| attribute_value(b, value));
}

/// The `AnyValue` of an attribute. One of its fields is always written, even when it is
/// the field's default: that is how a oneof says which it holds.
fn attribute_value(b: &mut Vec<u8>, value: &Value) {
    use opentelemetry::Array;
    let list = |b: &mut Vec<u8>, each: &mut dyn FnMut(&mut Vec<u8>)| nested(b, 5, |b| each(b));
    match value {
        Value::String(s) => always_string(b, 1, s.as_str()),
        Value::Bool(v) => always_varint(b, 2, u64::from(*v)),
        Value::I64(v) => always_varint(b, 3, *v as u64),
        Value::F64(v) => always_double(b, 4, *v),
        Value::Array(Array::String(items)) => list(b, &mut |b| {
            for item in items {
                nested(b, 1, |b| always_string(b, 1, item.as_str()));
            }
        }),
        Value::Array(Array::Bool(items)) => list(b, &mut |b| {
            for item in items {
                nested(b, 1, |b| always_varint(b, 2, u64::from(*item)));
            }
        }),
        Value::Array(Array::I64(items)) => list(b, &mut |b| {
            for item in items {
                nested(b, 1, |b| always_varint(b, 3, *item as u64));
            }
        }),
        Value::Array(Array::F64(items)) => list(b, &mut |b| {
            for item in items {
                nested(b, 1, |b| always_double(b, 4, *item));
            }
        }),
        // Kinds a later API adds: as text rather than lost.
        other => always_string(b, 1, &other.to_string()),
    }
}

/// The `AnyValue` of a log record's body or attribute.
fn any_value(b: &mut Vec<u8>, value: &AnyValue) {
    match value {
        AnyValue::String(s) => always_string(b, 1, s.as_str()),
        AnyValue::Boolean(v) => always_varint(b, 2, u64::from(*v)),
        AnyValue::Int(v) => always_varint(b, 3, *v as u64),
        AnyValue::Double(v) => always_double(b, 4, *v),
        AnyValue::ListAny(items) => nested(b, 5, |b| {
            for item in items.iter() {
                nested(b, 1, |b| any_value(b, item));
            }
        }),
        AnyValue::Map(map) => nested(b, 6, |b| {
            for (key, item) in map.iter() {
                nested(b, 1, |b| {
                    string(b, 1, key.as_str());
                    nested(b, 2, |b| any_value(b, item));
                });
            }
        }),
        AnyValue::Bytes(bytes) => bytes_always(b, 7, bytes),
        // Kinds a later API adds: as text rather than lost.
        other => always_string(b, 1, &format!("{other:?}")),
    }
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
}

// The protocol buffers wire format (protobuf.dev/programming-guides/encoding): fields
// whose value is the default are left out, as proto3 encoders do.

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

fn varint(b: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        b.push(value as u8 | 0x80);
        value >>= 7;
    }
    b.push(value as u8);
}

fn tag(b: &mut Vec<u8>, field: u32, wire: u32) {
    varint(b, u64::from(field << 3 | wire));
}

fn uint(b: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        always_varint(b, field, value);
    }
}

fn always_varint(b: &mut Vec<u8>, field: u32, value: u64) {
    tag(b, field, VARINT);
    varint(b, value);
}

fn fixed64(b: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        tag(b, field, FIXED64);
        b.extend_from_slice(&value.to_le_bytes());
    }
}

fn always_double(b: &mut Vec<u8>, field: u32, value: f64) {
    tag(b, field, FIXED64);
    b.extend_from_slice(&value.to_le_bytes());
}

fn fixed32(b: &mut Vec<u8>, field: u32, value: u32) {
    if value != 0 {
        tag(b, field, FIXED32);
        b.extend_from_slice(&value.to_le_bytes());
    }
}

fn bytes(b: &mut Vec<u8>, field: u32, value: &[u8]) {
    if !value.is_empty() {
        tag(b, field, LEN);
        varint(b, value.len() as u64);
        b.extend_from_slice(value);
    }
}

fn string(b: &mut Vec<u8>, field: u32, value: &str) {
    bytes(b, field, value.as_bytes());
}

fn always_string(b: &mut Vec<u8>, field: u32, value: &str) {
    bytes_always(b, field, value.as_bytes());
}

/// A bytes field or a message whose presence counts, written even when empty.
fn bytes_always(b: &mut Vec<u8>, field: u32, value: &[u8]) {
    tag(b, field, LEN);
    varint(b, value.len() as u64);
    b.extend_from_slice(value);
}

fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// A message field: `body` writes the message, then its length is put in front of it.
/// One byte is kept for the length; a longer one moves the message up by what it needs.
fn nested(b: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    nested_sized(b, field, 1, body);
}

/// [`nested`] keeping `kept` bytes for the length (a span's takes two: 128 bytes to 16 KiB).
fn nested_sized(b: &mut Vec<u8>, field: u32, kept: usize, body: impl FnOnce(&mut Vec<u8>)) {
    tag(b, field, LEN);
    let at = b.len();
    b.resize(at + kept, 0);
    body(b);
    let len = b.len() - at - kept;
    let (mut prefix, mut n, mut rest) = ([0u8; 10], 0, len as u64);
    while rest >= 0x80 {
        prefix[n] = rest as u8 | 0x80;
        rest >>= 7;
        n += 1;
    }
    prefix[n] = rest as u8;
    n += 1;
    if n == kept {
        b[at..at + kept].copy_from_slice(&prefix[..n]);
    } else {
        b.splice(at..at + kept, prefix[..n].iter().copied());
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _};
    use opentelemetry::trace::{Event, Link, SpanContext, TraceId, TraceState};
    use opentelemetry::{Array, StringValue};
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::logs::tonic::group_logs_by_resource_and_scope;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::logs::LogBatch;
    use opentelemetry_sdk::logs::SdkLoggerProvider;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message as _;

    use super::*;

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_service_name("hero_executor")
            .with_attribute(KeyValue::new("service.version", "0.1.0"))
            .with_attribute(KeyValue::new("host.cores", 2))
            .with_schema_url([], "https://opentelemetry.io/schemas/1.30.0")
            .build()
    }

    fn scope() -> InstrumentationScope {
        InstrumentationScope::builder("hero_executor")
            .with_version("0.1.0")
            .with_attributes([KeyValue::new("scope.kind", "test")])
            .build()
    }

    fn context(trace: u128, span: u64, flags: u8, remote: bool) -> SpanContext {
        let state = TraceState::from_key_value([("vendor", "x")]).unwrap();
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::new(flags),
            remote,
            state,
        )
    }

    /// Every kind of attribute value, including defaults (a oneof must still say which it
    /// holds) and strings whose lengths cross the one-byte length boundary.
    fn every_value() -> Vec<KeyValue> {
        vec![
            KeyValue::new("s", "text"),
            KeyValue::new("empty", ""),
            KeyValue::new("s127", "a".repeat(120)),
            KeyValue::new("s128", "é".repeat(64)),
            KeyValue::new("long", "x".repeat(20_000)),
            KeyValue::new("t", true),
            KeyValue::new("f", false),
            KeyValue::new("zero", 0_i64),
            KeyValue::new("negative", -42_i64),
            KeyValue::new("max", i64::MAX),
            KeyValue::new("pi", 3.25_f64),
            KeyValue::new("nought", 0.0_f64),
            KeyValue::new(
                "strings",
                Value::Array(Array::String(vec![StringValue::from("a"), "".into()])),
            ),
            KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("ints", Value::Array(Array::I64(vec![0, -1, 300]))),
            KeyValue::new("floats", Value::Array(Array::F64(vec![0.5, -0.0]))),
            KeyValue::new("none", Value::Array(Array::I64(vec![]))),
        ]
    }

    fn span(n: u64, scope: InstrumentationScope) -> SpanData {
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(1_763_000_000_000 + ms);
        let mut events = SpanEvents::default();
        events
            .events
            .push(Event::new("retry", at(n + 1), vec![KeyValue::new("attempt", 2)], 1));
        events.dropped_count = 3;
        let mut links = SpanLinks::default();
        links
            .links
            .push(Link::new(context(7, 8, 0, true), vec![KeyValue::new("held", "r1")], 0));
        links.dropped_count = 1;
        SpanData {
            span_context: context(0x4bf92f3577b34da6a3ce929d0e0e4736, 100 + n, 1, false),
            parent_span_id: if n.is_multiple_of(2) {
                SpanId::from(99)
            } else {
                SpanId::INVALID
            },
            parent_span_is_remote: n.is_multiple_of(4),
            span_kind: [
                SpanKind::Server,
                SpanKind::Internal,
                SpanKind::Client,
                SpanKind::Producer,
                SpanKind::Consumer,
            ][n as usize % 5]
                .clone(),
            name: Cow::Owned(format!("call echo.echo {n}")),
            start_time: at(n),
            end_time: at(n + 5),
            attributes: if n == 0 {
                every_value()
            } else {
                vec![KeyValue::new("n", n as i64)]
            },
            dropped_attributes_count: n as u32,
            events,
            links,
            status: match n % 3 {
                0 => Status::Unset,
                1 => Status::Ok,
                _ => Status::error(format!("failed {n}")),
            },
            instrumentation_scope: scope,
        }
    }

    #[test]
    fn spans_are_encoded_as_the_sdk_would_encode_them() {
        let resource = resource();
        let batch: Vec<SpanData> = (0..12).map(|n| span(n, scope())).collect();
        let mut items = Vec::new();
        for span in &batch {
            nested_sized(&mut items, 2, 2, |b| encode_span(b, span));
        }
        let encoded = request(&EncodedResource::of(&resource), &scope_of(&scope()), "", &items);
        let ours = ExportTraceServiceRequest::decode(&encoded[..]).expect("decodes");
        let theirs = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &ResourceAttributesWithSchema::from(&resource)),
        };
        assert_eq!(ours, theirs);
        assert_eq!(ours.resource_spans[0].scope_spans[0].spans.len(), 12);
    }

    #[test]
    fn log_records_are_encoded_as_the_sdk_would_encode_them() {
        let resource = resource();
        let provider = SdkLoggerProvider::builder().build();
        let logger = provider.logger_with_scope(scope());
        let mut full = logger.create_log_record();
        full.set_timestamp(UNIX_EPOCH + Duration::from_millis(1_763_000_000_123));
        full.set_observed_timestamp(UNIX_EPOCH + Duration::from_millis(1_763_000_000_456));
        full.set_event_name("hero.run");
        full.set_severity_number(Severity::Warn);
        full.set_severity_text("WARN");
        full.set_body(AnyValue::String("run r1 echo.echo denied".into()));
        let map: std::collections::HashMap<Key, AnyValue> = [
            (Key::from("code"), AnyValue::Int(-32002)),
            (
                Key::from("nested"),
                AnyValue::ListAny(Box::new(vec![AnyValue::Boolean(false)])),
            ),
        ]
        .into();
        full.add_attributes([
            ("hero.run_id", AnyValue::String("r1".into())),
            ("hero.context", AnyValue::Int(0)),
            ("hero.ratio", AnyValue::Double(0.5)),
            ("hero.ok", AnyValue::Boolean(true)),
            ("hero.chain", AnyValue::ListAny(Box::new(vec!["a".into(), "b".into()]))),
            ("hero.error", AnyValue::Map(Box::new(map))),
            ("hero.digest", AnyValue::Bytes(Box::new(vec![0, 1, 255]))),
            ("hero.note", AnyValue::String("n".repeat(300).into())),
        ]);
        full.set_trace_context(TraceId::from(5), SpanId::from(6), Some(TraceFlags::SAMPLED));
        // The SDK's logger sets the observed time of a record that has none when it emits it.
        let observed = UNIX_EPOCH + Duration::from_millis(1_763_000_000_789);
        let mut bare = logger.create_log_record();
        bare.set_observed_timestamp(observed);
        bare.set_severity_number(Severity::Fatal4);
        let scope = scope();
        let records = [(&full, &scope), (&bare, &scope)];
        let mut items = Vec::new();
        for (record, _) in records {
            nested(&mut items, 2, |b| encode_record(b, record));
        }
        let encoded = request(&EncodedResource::of(&resource), &scope_of(&scope), "", &items);
        let ours = ExportLogsServiceRequest::decode(&encoded[..]).unwrap();
        let theirs = ExportLogsServiceRequest {
            resource_logs: group_logs_by_resource_and_scope(
                &LogBatch::new(&records),
                &ResourceAttributesWithSchema::from(&resource),
            ),
        };
        assert_eq!(ours, theirs);
    }

    fn scope_of(scope: &InstrumentationScope) -> Vec<u8> {
        let mut encoded = Vec::new();
        instrumentation_scope(&mut encoded, scope);
        encoded
    }

    #[test]
    fn a_queue_holds_its_capacity_and_counts_what_it_drops_or_cannot_send() {
        // A collector that takes connections and never answers: each export times out.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let held: Vec<_> = listener.incoming().take(4).collect();
            std::thread::sleep(Duration::from_secs(30));
            drop(held);
        });
        let metrics = Arc::new(Metrics::new());
        let collector = Collector::new(url, http::HeaderMap::new(), Duration::from_millis(500)).unwrap();
        let queue = Queue::start(collector, "spans", 2, 2, Duration::from_secs(60), metrics.clone()).unwrap();
        let scope = scope();
        let add = |n: u64| queue.add(&scope, |b| nested(b, 2, |b| encode_span(b, &span(n, scope.clone()))));
        add(0);
        add(1);
        // A full batch wakes the thread, which takes it and waits on the collector.
        for _ in 0..100 {
            if queue.shared.state.lock().unwrap().count == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(queue.shared.state.lock().unwrap().count, 0);
        add(2);
        add(3);
        add(4); // past the capacity of 2
        queue.shutdown().unwrap(); // the queued two are sent (and time out) first
        add(5); // after shutdown
        assert!(matches!(queue.shutdown(), Err(OTelSdkError::AlreadyShutdown)));
        let text = metrics.render(crate::metrics::Readings::default());
        for (reason, n) in [("queue_full", 2), ("export_failed", 4)] {
            let line = format!(r#"hero_executor_otlp_dropped_total{{signal="spans",reason="{reason}"}} {n}"#);
            assert!(text.contains(&line), "{line} in {text}");
        }
    }

    #[test]
    fn lengths_of_every_size_are_written_in_full() {
        for len in [0, 1, 127, 128, 16_383, 16_384, 2_097_152] {
            let mut expected = vec![0x0a];
            varint(&mut expected, len as u64);
            expected.extend(std::iter::repeat_n(7u8, len));
            for kept in 1..=3 {
                let mut b = Vec::new();
                nested_sized(&mut b, 1, kept, |b| b.extend(std::iter::repeat_n(7u8, len)));
                assert_eq!(b, expected, "{len} with {kept} kept");
            }
        }
    }
}
