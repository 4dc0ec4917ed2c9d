//! OTLP/HTTP with protobuf bodies: each span or run record is written into the wire format
//! of the OpenTelemetry protocol's messages as it ends, on the thread that ends it, and
//! appended to its signal's queue; one thread per signal wraps what is queued as one
//! `ExportTraceServiceRequest` (or `ExportLogsServiceRequest`) and posts it.
//!
//! A span's attributes are written into its message as they are set, so a span is a few
//! ids, times and one buffer, and ending it is copying that buffer into the queue. The
//! OpenTelemetry SDK's way (a `KeyValue` of reference-counted strings per attribute, a
//! `Context` per span, a batch processor and `opentelemetry-otlp` converting each span into
//! generated structs on the export thread) cost a call 1.26x the machine instructions of a
//! call without tracing, against a target of 1.10x (README Decisions). The bytes are
//! decoded by prost into `opentelemetry-proto`'s structs in the tests below, and by the
//! OpenTelemetry project's Python classes in `tests/otlp.rs`.

use std::borrow::Cow;
use std::io::Read as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::metrics::Metrics;

/// A collector's answer read at most (it is an `Export*ServiceResponse`, a few bytes).
const MAX_ANSWER: u64 = 64 * 1024;

/// Where one signal is posted, and how.
#[derive(Debug)]
pub(super) struct Collector {
    client: reqwest::blocking::Client,
    url: String,
    headers: http::HeaderMap,
}

impl Collector {
    /// A client for `url` with `headers` on every request. The blocking client starts its
    /// own runtime, which may not be built on an async worker: it is built on a thread of
    /// its own.
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
        Ok(Self { client, url, headers })
    }

    /// Posts one encoded request; an error unless the collector answers 2xx. Blocks (it
    /// runs on the signal's own thread).
    fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let mut response = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .body(body)
            .send()
            .map_err(|e| format!("OTLP export to {}: {e}", self.url))?;
        // Read (bounded) so the connection can be used again.
        let _ = std::io::copy(&mut (&mut response).take(MAX_ANSWER), &mut std::io::sink());
        match response.status() {
            status if status.is_success() => Ok(()),
            status => Err(format!("OTLP export to {}: the collector answered {status}", self.url)),
        }
    }
}

/// What every request of both signals carries around its items: the `Resource` (who sends)
/// and the `InstrumentationScope` (what made them), encoded once at start.
#[derive(Debug)]
pub(super) struct Envelope {
    resource: Vec<u8>,
    scope: Vec<u8>,
}

impl Envelope {
    /// A resource with `attributes` (later ones win over earlier ones with the same key) and
    /// the scope `name` at `version`.
    pub(super) fn new(attributes: &[(String, String)], name: &str, version: &str) -> Self {
        let mut resource = Vec::new();
        for (n, (key, value)) in attributes.iter().enumerate() {
            if attributes[n + 1..].iter().all(|(later, _)| later != key) {
                key_value(&mut resource, 1, key, |b| always_string(b, 1, value));
            }
        }
        let mut scope = Vec::new();
        string(&mut scope, 1, name);
        string(&mut scope, 2, version);
        Self { resource, scope }
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
    /// The export thread waits on it: a first item, a batch is ready, or stop.
    ready: Condvar,
    collector: Collector,
    envelope: Arc<Envelope>,
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
    stopping: bool,
}

/// A buffer a thread encodes one item into before it takes the queue's lock.
const SCRATCH_KEPT: usize = 64 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Queue {
    /// Starts the thread that posts `signal`'s batches to `collector`, in `envelope`: when
    /// `batch` items are queued or the first has waited `delay`. Past `capacity` items (a
    /// collector that is slow or down) new ones are dropped and counted.
    pub(super) fn start(
        collector: Collector,
        envelope: Arc<Envelope>,
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
            collector,
            envelope,
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

    /// Queues one item, written by `encode` (a whole field of the scope's message).
    fn add(&self, encode: impl FnOnce(&mut Vec<u8>)) {
        if self.shared.queued.load(Ordering::Relaxed) >= self.shared.capacity {
            self.shared.metrics.otlp_dropped(self.shared.signal, "queue_full", 1);
            return;
        }
        let mut encode = Some(encode);
        let kept = SCRATCH.try_with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.clear();
            if let Some(encode) = encode.take() {
                encode(&mut scratch);
            }
            self.append(&scratch);
            if scratch.capacity() > SCRATCH_KEPT {
                *scratch = Vec::new();
            }
        });
        // A span ended while its thread is being torn down (its scratch buffer is gone).
        if let (Err(_), Some(encode)) = (kept, encode) {
            let mut bytes = Vec::new();
            encode(&mut bytes);
            self.append(&bytes);
        }
    }

    /// Appends one encoded item, unless the queue is full or stopping (then it is counted as
    /// dropped). The first item of a batch wakes the export thread to time the batch.
    fn append(&self, item: &[u8]) {
        let shared = &self.shared;
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.count >= shared.capacity || state.stopping {
            drop(state);
            shared.metrics.otlp_dropped(shared.signal, "queue_full", 1);
            return;
        }
        state.items.extend_from_slice(item);
        state.count += 1;
        shared.queued.store(state.count, Ordering::Relaxed);
        let wake = state.count == 1 || state.count == shared.batch;
        drop(state);
        if wake {
            shared.ready.notify_one();
        }
    }

    /// Queues a span that ended at `end` (ns since the epoch).
    pub(super) fn add_span(&self, span: &Span, end: u64) {
        // A span is 128 bytes to 16 KiB: two bytes for its length.
        self.add(|b| nested_sized(b, 2, 2, |b| encode_span(b, span, end)));
    }

    /// Queues a log record.
    pub(super) fn add_record(&self, record: &Record<'_>) {
        self.add(|b| nested_sized(b, 2, 2, |b| encode_record(b, record)));
    }

    /// Sends what is queued and stops the thread; bounded by the collector's timeout.
    pub(super) fn shutdown(&self) -> Result<(), String> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner()).stopping = true;
        self.shared.ready.notify_one();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        match thread.map(std::thread::JoinHandle::join) {
            None => Err(format!("the OTLP {} queue was shut down already", self.shared.signal)),
            Some(Ok(())) => Ok(()),
            Some(Err(_)) => Err(format!("the OTLP {} thread panicked", self.shared.signal)),
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
    /// The export thread: waits for a first item, then for a batch, the delay or stop;
    /// sends what is queued as one request; counts what the collector did not take.
    fn run(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            // Idle until there is something to send: no wake-ups on an idle node, and no
            // spinning when the delay is 0.
            while state.count == 0 && !state.stopping {
                state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            let deadline = Instant::now() + self.delay;
            while state.count < self.batch && !state.stopping {
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
            let stopping = state.stopping;
            drop(state);
            if count > 0
                && let Err(error) = self.collector.post(request(&self.envelope, &items))
            {
                tracing::debug!(signal = self.signal, count, %error, "OTLP export failed");
                self.metrics.otlp_dropped(self.signal, "export_failed", count as u64);
            }
            items.clear();
            state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if items.capacity() <= 2 * self.batch * 1024 {
                state.spare = items;
            }
            if stopping && state.count == 0 {
                return;
            }
        }
    }
}

/// One `ExportTraceServiceRequest` (or `ExportLogsServiceRequest`: their fields have the
/// same numbers) around `items`: one resource, one scope. The lengths are worked out
/// first, so the items are copied once.
fn request(envelope: &Envelope, items: &[u8]) -> Vec<u8> {
    let field = |len: usize| 1 + varint_len(len as u64) + len;
    let scoped = field(envelope.scope.len()) + items.len();
    let resourced = field(envelope.resource.len()) + field(scoped);
    let mut b = Vec::with_capacity(field(resourced));
    tag(&mut b, 1, LEN);
    varint(&mut b, resourced as u64);
    bytes_always(&mut b, 1, &envelope.resource);
    tag(&mut b, 2, LEN);
    varint(&mut b, scoped as u64);
    bytes_always(&mut b, 1, &envelope.scope);
    b.extend_from_slice(items);
    debug_assert_eq!(b.len(), field(resourced));
    b
}

/// A span's place in its trace, as W3C trace context carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SpanContext {
    pub(super) trace: [u8; 16],
    pub(super) span: [u8; 8],
    pub(super) flags: u8,
}

impl SpanContext {
    /// Whether the trace is sampled (flag 01): only sampled spans are recorded.
    pub(super) fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// A span's kind, numbered as `Span.SpanKind` numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// A span being recorded.
#[derive(Debug)]
pub(super) struct Span {
    pub(super) context: SpanContext,
    /// Its parent's span id, and whether the parent is another process's (a caller's
    /// `traceparent`).
    pub(super) parent: Option<([u8; 8], bool)>,
    pub(super) name: Cow<'static, str>,
    pub(super) kind: Kind,
    /// When it started, in ns since the epoch.
    pub(super) start: u64,
    pub(super) attributes: Attributes,
    /// A span of an earlier request it is linked to (an approved call's held call).
    pub(super) link: Option<SpanContext>,
    /// Set when it failed: the status's description.
    pub(super) error: Option<String>,
}

/// A log record (a run's final state).
#[derive(Debug)]
pub(super) struct Record<'a> {
    /// When it happened and when it was seen, in ns since the epoch.
    pub(super) time: u64,
    pub(super) observed: u64,
    /// `SeverityNumber` and its text.
    pub(super) severity: (u64, &'static str),
    pub(super) event_name: &'static str,
    /// The body, a string: these parts with a space between each two.
    pub(super) body: &'a [&'a str],
    /// The span it happened in.
    pub(super) trace: Option<SpanContext>,
    pub(super) attributes: Attributes,
}

/// Attributes, written into the wire format as they are set: a run of `KeyValue` fields.
/// Strings are clipped to [`super::MAX_TEXT`] bytes, so no caller or target can make an
/// export carry megabytes.
#[derive(Debug)]
pub(super) struct Attributes {
    /// The field number of the attributes in the message they go in.
    field: u32,
    bytes: Vec<u8>,
}

impl Attributes {
    /// A span's (`Span.attributes`), with room for `capacity` bytes.
    pub(super) fn of_span(capacity: usize) -> Self {
        Self {
            field: 9,
            bytes: Vec::with_capacity(capacity),
        }
    }

    /// A log record's (`LogRecord.attributes`).
    pub(super) fn of_record(capacity: usize) -> Self {
        Self {
            field: 6,
            bytes: Vec::with_capacity(capacity),
        }
    }

    pub(super) fn text(&mut self, key: &str, value: &str) {
        key_value(&mut self.bytes, self.field, key, |b| {
            always_string(b, 1, super::clip(value))
        });
    }

    pub(super) fn int(&mut self, key: &str, value: i64) {
        key_value(&mut self.bytes, self.field, key, |b| always_varint(b, 3, value as u64));
    }

    /// A list of strings (an `ArrayValue`).
    pub(super) fn texts(&mut self, key: &str, values: &[String]) {
        key_value(&mut self.bytes, self.field, key, |b| {
            nested(b, 5, |b| {
                for value in values {
                    nested(b, 1, |b| always_string(b, 1, super::clip(value)));
                }
            });
        });
    }
}

/// One `Span` (opentelemetry/proto/trace/v1/trace.proto) that ended at `end`.
fn encode_span(b: &mut Vec<u8>, span: &Span, end: u64) {
    bytes(b, 1, &span.context.trace);
    bytes(b, 2, &span.context.span);
    if let Some((parent, _)) = &span.parent {
        bytes(b, 4, parent);
    }
    string(b, 5, &span.name);
    uint(b, 6, span.kind as u64);
    fixed64(b, 7, span.start);
    fixed64(b, 8, end);
    b.extend_from_slice(&span.attributes.bytes);
    if let Some(link) = &span.link {
        nested(b, 13, |b| {
            bytes(b, 1, &link.trace);
            bytes(b, 2, &link.span);
            fixed32(b, 6, span_flags(true, link.flags));
        });
    }
    nested(b, 15, |b| {
        if let Some(description) = &span.error {
            string(b, 2, super::clip(description));
            uint(b, 3, 2); // STATUS_CODE_ERROR
        }
    });
    let remote = span.parent.is_some_and(|(_, remote)| remote);
    fixed32(b, 16, span_flags(remote, span.context.flags));
}

/// `SpanFlags`: the W3C trace flags, and whether the parent (or linked) context is remote.
fn span_flags(remote: bool, flags: u8) -> u32 {
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    u32::from(flags) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 }
}

/// One `LogRecord` (opentelemetry/proto/logs/v1/logs.proto).
fn encode_record(b: &mut Vec<u8>, record: &Record<'_>) {
    fixed64(b, 1, record.time);
    uint(b, 2, record.severity.0);
    string(b, 3, record.severity.1);
    nested(b, 5, |b| {
        nested(b, 1, |b| {
            for (n, part) in record.body.iter().enumerate() {
                if n > 0 {
                    b.push(b' ');
                }
                b.extend_from_slice(super::clip(part).as_bytes());
            }
        });
    });
    b.extend_from_slice(&record.attributes.bytes);
    if let Some(context) = &record.trace {
        fixed32(b, 8, u32::from(context.flags));
        bytes(b, 9, &context.trace);
        bytes(b, 10, &context.span);
    }
    fixed64(b, 11, record.observed);
    string(b, 12, record.event_name);
}

/// A `KeyValue` field: `key`, and the `AnyValue` that `value` writes.
fn key_value(b: &mut Vec<u8>, field: u32, key: &str, value: impl FnOnce(&mut Vec<u8>)) {
    nested(b, field, |b| {
        string(b, 1, key);
        nested(b, 2, value);
    });
}

/// Now, in ns since the epoch.
pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

// The protocol buffers wire format (protobuf.dev/programming-guides/encoding): fields
// whose value is the default are left out, as proto3 encoders do. An `AnyValue`'s one
// field is always written, even when it is the default: that is how a oneof says which
// it holds.

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
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status, span, status};
    use prost::Message as _;

    use super::*;

    fn envelope() -> Envelope {
        let attributes = [
            ("service.name", "someone else"),
            ("host.name", "node7"),
            ("service.name", "hero_executor"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        Envelope::new(&attributes, "hero_executor", "0.1.0")
    }

    fn text(key: &str, value: &str) -> KeyValue {
        let value = any_value::Value::StringValue(value.to_owned());
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        }
    }

    fn int(key: &str, value: i64) -> KeyValue {
        let value = any_value::Value::IntValue(value);
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        }
    }

    fn texts(key: &str, values: &[&str]) -> KeyValue {
        let values = values
            .iter()
            .map(|v| AnyValue {
                value: Some(any_value::Value::StringValue((*v).to_owned())),
            })
            .collect();
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue { values })),
            }),
            ..KeyValue::default()
        }
    }

    fn resource() -> Resource {
        Resource {
            attributes: vec![text("host.name", "node7"), text("service.name", "hero_executor")],
            ..Resource::default()
        }
    }

    fn scope() -> InstrumentationScope {
        InstrumentationScope {
            name: "hero_executor".into(),
            version: "0.1.0".into(),
            ..InstrumentationScope::default()
        }
    }

    fn context(trace: u8, span: u8, flags: u8) -> SpanContext {
        SpanContext {
            trace: [trace; 16],
            span: [span; 8],
            flags,
        }
    }

    /// Every kind of value the executor writes, including defaults (a oneof must still say
    /// which it holds), strings whose lengths cross the one-byte length boundary, and one
    /// past the clipping length.
    fn every_value() -> (Attributes, Vec<KeyValue>) {
        let mut ours = Attributes::of_span(16);
        let mut theirs = Vec::new();
        let long = "x".repeat(20_000);
        for (key, value) in [
            ("s", "text"),
            ("empty", ""),
            ("s127", &*"a".repeat(120)),
            ("s128", &*"é".repeat(64)),
            ("long", &*long),
        ] {
            ours.text(key, value);
            theirs.push(text(key, super::super::clip(value)));
        }
        assert_eq!(super::super::clip(&long).len(), super::super::MAX_TEXT);
        for (key, value) in [("zero", 0), ("negative", -42), ("max", i64::MAX)] {
            ours.int(key, value);
            theirs.push(int(key, value));
        }
        ours.texts("chain", &["a".to_owned(), String::new()]);
        theirs.push(texts("chain", &["a", ""]));
        ours.texts("none", &[]);
        theirs.push(texts("none", &[]));
        (ours, theirs)
    }

    fn span(n: u8) -> (Span, opentelemetry_proto::tonic::trace::v1::Span) {
        let (attributes, expected) = match n {
            0 => every_value(),
            _ => {
                let mut ours = Attributes::of_span(0);
                ours.int("n", n.into());
                (ours, vec![int("n", n.into())])
            }
        };
        let parent = match n % 3 {
            0 => None,
            1 => Some(([99; 8], true)),
            _ => Some(([98; 8], false)),
        };
        let kind = [Kind::Server, Kind::Internal, Kind::Client][usize::from(n % 3)];
        let link = (n % 2 == 1).then(|| context(7, 8, 0));
        let error = (n % 4 == 2).then(|| format!("failed {n}"));
        let flags = if n == 5 { 3 } else { 1 };
        let start = 1_763_000_000_000_000_000 + u64::from(n);
        let ours = Span {
            context: context(0x4b, 100 + n, flags),
            parent,
            name: format!("call echo.echo {n}").into(),
            kind,
            start,
            attributes,
            link,
            error: error.clone(),
        };
        let remote = parent.is_some_and(|(_, remote)| remote);
        let theirs = opentelemetry_proto::tonic::trace::v1::Span {
            trace_id: vec![0x4b; 16],
            span_id: vec![100 + n; 8],
            parent_span_id: parent.map_or(vec![], |(id, _)| id.to_vec()),
            name: format!("call echo.echo {n}"),
            kind: kind as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + 5,
            attributes: expected,
            links: link
                .map(|l| span::Link {
                    trace_id: l.trace.to_vec(),
                    span_id: l.span.to_vec(),
                    flags: 0x300,
                    ..span::Link::default()
                })
                .into_iter()
                .collect(),
            status: Some(match error {
                Some(message) => Status {
                    message,
                    code: status::StatusCode::Error as i32,
                },
                None => Status::default(),
            }),
            flags: u32::from(flags) | 0x100 | if remote { 0x200 } else { 0 },
            ..Default::default()
        };
        (ours, theirs)
    }

    #[test]
    fn spans_decode_as_the_opentelemetry_protocol_says() {
        let mut items = Vec::new();
        let mut expected = Vec::new();
        for n in 0..12 {
            let (ours, theirs) = span(n);
            nested_sized(&mut items, 2, 2, |b| encode_span(b, &ours, ours.start + 5));
            expected.push(theirs);
        }
        let encoded = request(&envelope(), &items);
        let decoded = ExportTraceServiceRequest::decode(&encoded[..]).expect("decodes");
        let theirs = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope()),
                    spans: expected,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        assert_eq!(decoded, theirs);
    }

    #[test]
    fn log_records_decode_as_the_opentelemetry_protocol_says() {
        let mut attributes = Attributes::of_record(64);
        attributes.text("hero.run_id", "r1");
        attributes.int("hero.context", 0);
        attributes.texts("hero.chain", &["a".to_owned(), "b".to_owned()]);
        attributes.text("hero.note", &"n".repeat(300));
        let full = Record {
            time: 1_763_000_000_123_000_000,
            observed: 1_763_000_000_456_000_000,
            severity: (13, "WARN"),
            event_name: "hero.run",
            body: &["run", "r1", "echo.echo", "denied"],
            trace: Some(context(5, 6, 1)),
            attributes,
        };
        let bare = Record {
            time: 0,
            observed: 7,
            severity: (24, ""),
            event_name: "",
            body: &[],
            trace: None,
            attributes: Attributes::of_record(0),
        };
        let mut items = Vec::new();
        for record in [&full, &bare] {
            nested_sized(&mut items, 2, 2, |b| encode_record(b, record));
        }
        let encoded = request(&envelope(), &items);
        let decoded = ExportLogsServiceRequest::decode(&encoded[..]).unwrap();
        let body = |s: &str| {
            Some(AnyValue {
                value: Some(any_value::Value::StringValue(s.to_owned())),
            })
        };
        let theirs = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(resource()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope()),
                    log_records: vec![
                        LogRecord {
                            time_unix_nano: full.time,
                            observed_time_unix_nano: full.observed,
                            severity_number: 13,
                            severity_text: "WARN".into(),
                            body: body("run r1 echo.echo denied"),
                            attributes: vec![
                                text("hero.run_id", "r1"),
                                int("hero.context", 0),
                                texts("hero.chain", &["a", "b"]),
                                text("hero.note", &"n".repeat(300)),
                            ],
                            flags: 1,
                            trace_id: vec![5; 16],
                            span_id: vec![6; 8],
                            event_name: "hero.run".into(),
                            ..LogRecord::default()
                        },
                        LogRecord {
                            observed_time_unix_nano: 7,
                            severity_number: 24,
                            body: body(""),
                            ..LogRecord::default()
                        },
                    ],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        assert_eq!(decoded, theirs);
    }

    /// A collector that takes `connections` and never answers: each export times out after
    /// `timeout`.
    fn never_answering(connections: usize, timeout: Duration) -> Collector {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let held: Vec<_> = listener.incoming().take(connections).collect();
            std::thread::sleep(Duration::from_secs(30));
            drop(held);
        });
        Collector::new(url, http::HeaderMap::new(), timeout).unwrap()
    }

    #[test]
    fn a_queue_holds_its_capacity_and_counts_what_it_drops_or_cannot_send() {
        let metrics = Arc::new(Metrics::new());
        let collector = never_answering(4, Duration::from_millis(500));
        let envelope = Arc::new(envelope());
        let queue = Queue::start(
            collector,
            envelope,
            "spans",
            2,
            2,
            Duration::from_secs(60),
            metrics.clone(),
        )
        .unwrap();
        let add = |n: u8| {
            let span = span(n).0;
            queue.add_span(&span, span.start + 5);
        };
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
        assert!(queue.shutdown().unwrap_err().contains("shut down already"));
        let text = metrics.render(crate::metrics::Readings::default());
        for (reason, n) in [("queue_full", 2), ("export_failed", 4)] {
            let line = format!(r#"hero_executor_otlp_dropped_total{{signal="spans",reason="{reason}"}} {n}"#);
            assert!(text.contains(&line), "{line} in {text}");
        }
    }

    /// With no delay each item is sent as it comes, and an idle export thread sleeps
    /// rather than spins (`OTEL_BSP_SCHEDULE_DELAY=0`).
    #[test]
    fn a_queue_without_delay_sends_at_once_and_sleeps_when_idle() {
        let metrics = Arc::new(Metrics::new());
        let collector = never_answering(1, Duration::from_millis(300));
        let queue = Queue::start(collector, Arc::new(envelope()), "idle", 8, 8, Duration::ZERO, metrics).unwrap();
        let span = span(1).0;
        queue.add_span(&span, span.start + 5);
        for _ in 0..100 {
            if queue.shared.state.lock().unwrap().count == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            queue.shared.state.lock().unwrap().count,
            0,
            "taken without waiting for a batch"
        );
        // The export times out after 300 ms; then the thread has nothing to do for a second.
        std::thread::sleep(Duration::from_millis(1300));
        let ticks = || -> u64 {
            for task in std::fs::read_dir("/proc/self/task").unwrap() {
                let dir = task.unwrap().path();
                if std::fs::read_to_string(dir.join("comm")).unwrap_or_default().trim() == "otlp-idle" {
                    let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
                    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
                    return fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
                }
            }
            panic!("no otlp-idle thread");
        };
        let before = ticks();
        std::thread::sleep(Duration::from_millis(500));
        // A spinning thread would use about 50 ticks of the 500 ms (100 a second).
        assert!(
            ticks() - before <= 5,
            "the idle export thread used {} ticks",
            ticks() - before
        );
        queue.shutdown().unwrap();
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
