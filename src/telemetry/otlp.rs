//! OTLP/HTTP with protobuf bodies: the SDK's finished spans and log records written
//! straight into the wire format of the OpenTelemetry protocol's messages
//! (`ExportTraceServiceRequest`, `ExportLogsServiceRequest`) and posted to the collector.
//!
//! `opentelemetry-otlp` does the same in two steps: it converts each batch into
//! `opentelemetry-proto`'s generated structs (a new `String` for every attribute key and
//! value, the batch grouped in a hash map), then prost encodes them, sizing every nested
//! message once per level it is nested in. For the three spans of a call that was
//! 31,000 machine instructions on the export thread, more than the whole target for
//! tracing (10% of a call, about 25,000). Here each span or record is written once, into
//! one buffer, in a single pass (README Decisions). The bytes are checked against
//! `opentelemetry-proto`'s own conversion in the tests below, and decoded by the
//! OpenTelemetry project's Python classes in `tests/otlp.rs`.

use std::future::Future;
use std::io::Read as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::logs::{AnyValue, Severity};
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceFlags};
use opentelemetry::{InstrumentationScope, Key, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{LogBatch, LogExporter, SdkLogRecord};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

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
    /// its own (as `opentelemetry-otlp` does).
    pub(super) fn new(url: String, mut headers: http::HeaderMap, timeout: Duration) -> Result<Self, String> {
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-protobuf"),
        );
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

/// Exports spans as `ExportTraceServiceRequest`s.
#[derive(Debug)]
pub(super) struct Spans {
    collector: Collector,
    resource: EncodedResource,
}

impl Spans {
    pub(super) fn new(collector: Collector) -> Self {
        Self {
            collector,
            resource: EncodedResource::default(),
        }
    }
}

impl SpanExporter for Spans {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let body = encode_spans(&self.resource, &batch);
        drop(batch);
        std::future::ready(self.collector.post(body))
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = EncodedResource::of(resource);
    }
}

/// Exports log records as `ExportLogsServiceRequest`s.
#[derive(Debug)]
pub(super) struct Records {
    collector: Collector,
    resource: EncodedResource,
}

impl Records {
    pub(super) fn new(collector: Collector) -> Self {
        Self {
            collector,
            resource: EncodedResource::default(),
        }
    }
}

impl LogExporter for Records {
    fn export(&self, batch: LogBatch<'_>) -> impl Future<Output = OTelSdkResult> + Send {
        let body = encode_records(&self.resource, &batch);
        std::future::ready(self.collector.post(body))
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = EncodedResource::of(resource);
    }
}

/// One `ExportTraceServiceRequest`: one `ResourceSpans`, a `ScopeSpans` per run of spans
/// from the same instrumentation scope.
fn encode_spans(resource: &EncodedResource, batch: &[SpanData]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256 + 640 * batch.len());
    nested(&mut buf, 1, |b| {
        nested(b, 1, |b| b.extend_from_slice(&resource.message));
        for group in batch.chunk_by(|x, y| x.instrumentation_scope == y.instrumentation_scope) {
            let scope = &group[0].instrumentation_scope;
            nested(b, 2, |b| {
                nested(b, 1, |b| instrumentation_scope(b, scope, None));
                for span in group {
                    nested(b, 2, |b| encode_span(b, span));
                }
                string(b, 3, scope.schema_url().unwrap_or_default());
            });
        }
        string(b, 3, &resource.schema_url);
    });
    buf
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

/// One `ExportLogsServiceRequest`: one `ResourceLogs`, a `ScopeLogs` per run of records
/// from the same scope (a record's target, when set, names its scope).
fn encode_records(resource: &EncodedResource, batch: &LogBatch<'_>) -> Vec<u8> {
    let records: Vec<(&SdkLogRecord, &InstrumentationScope)> = batch.iter().collect();
    let mut buf = Vec::with_capacity(256 + 1024 * records.len());
    nested(&mut buf, 1, |b| {
        nested(b, 1, |b| b.extend_from_slice(&resource.message));
        for group in records.chunk_by(|x, y| x.1 == y.1 && x.0.target() == y.0.target()) {
            let (first, scope) = group[0];
            nested(b, 2, |b| {
                nested(b, 1, |b| {
                    instrumentation_scope(b, scope, first.target().map(|t| t.as_ref()))
                });
                for (record, _) in group {
                    nested(b, 2, |b| encode_record(b, record));
                }
                string(b, 3, scope.schema_url().unwrap_or_default());
            });
        }
        string(b, 3, &resource.schema_url);
    });
    buf
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

/// An `InstrumentationScope`; `name` replaces the scope's own (a log record's target).
fn instrumentation_scope(b: &mut Vec<u8>, scope: &InstrumentationScope, name: Option<&str>) {
    string(b, 1, name.unwrap_or(scope.name()));
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
        AnyValue::Bytes(bytes) => {
            tag(b, 7, LEN);
            varint(b, bytes.len() as u64);
            b.extend_from_slice(bytes);
        }
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
    tag(b, field, LEN);
    varint(b, value.len() as u64);
    b.extend_from_slice(value.as_bytes());
}

/// A message field: `body` writes the message, then its length is put in front of it.
/// One byte is kept for the length; a longer one moves the message up by what it needs.
fn nested(b: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    tag(b, field, LEN);
    let at = b.len();
    b.push(0);
    body(b);
    let len = b.len() - at - 1;
    if len < 0x80 {
        b[at] = len as u8;
        return;
    }
    let (mut prefix, mut n, mut rest) = ([0u8; 10], 0, len as u64);
    while rest >= 0x80 {
        prefix[n] = rest as u8 | 0x80;
        rest >>= 7;
        n += 1;
    }
    prefix[n] = rest as u8;
    b.splice(at..=at, prefix[..=n].iter().copied());
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
            parent_span_id: if n % 2 == 0 { SpanId::from(99) } else { SpanId::INVALID },
            parent_span_is_remote: n % 4 == 0,
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
        let encoded = encode_spans(&EncodedResource::of(&resource), &batch);
        let ours = ExportTraceServiceRequest::decode(&encoded[..]).expect("decodes");
        let theirs = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &ResourceAttributesWithSchema::from(&resource)),
        };
        assert_eq!(ours, theirs);
        assert_eq!(ours.resource_spans[0].scope_spans[0].spans.len(), 12);
    }

    #[test]
    fn spans_of_other_scopes_get_their_own_scope_spans() {
        let other = InstrumentationScope::builder("other").build();
        let batch = vec![
            span(1, scope()),
            span(2, scope()),
            span(3, other.clone()),
            span(4, scope()),
        ];
        let request =
            ExportTraceServiceRequest::decode(&encode_spans(&EncodedResource::default(), &batch)[..]).unwrap();
        let groups: Vec<(String, usize)> = request.resource_spans[0]
            .scope_spans
            .iter()
            .map(|s| (s.scope.as_ref().unwrap().name.clone(), s.spans.len()))
            .collect();
        assert_eq!(
            groups,
            [
                ("hero_executor".into(), 2),
                ("other".into(), 1),
                ("hero_executor".into(), 1)
            ]
        );
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
        let mut targeted = logger.create_log_record();
        targeted.set_observed_timestamp(observed);
        targeted.set_target("hero_executor::runs");
        targeted.set_severity_number(Severity::Fatal4);
        let scope = scope();
        let records = [(&full, &scope), (&bare, &scope), (&targeted, &scope)];
        let batch = LogBatch::new(&records);
        let ours =
            ExportLogsServiceRequest::decode(&encode_records(&EncodedResource::of(&resource), &batch)[..]).unwrap();
        let theirs = ExportLogsServiceRequest {
            resource_logs: group_logs_by_resource_and_scope(&batch, &ResourceAttributesWithSchema::from(&resource)),
        };
        // The SDK groups through a hash map: compare the groups, not their order.
        let groups = |r: &ExportLogsServiceRequest| {
            let mut groups: Vec<String> = r.resource_logs[0].scope_logs.iter().map(|s| format!("{s:?}")).collect();
            groups.sort();
            groups
        };
        assert_eq!(groups(&ours), groups(&theirs));
        assert_eq!(ours.resource_logs[0].resource, theirs.resource_logs[0].resource);
        assert_eq!(ours.resource_logs[0].schema_url, theirs.resource_logs[0].schema_url);
        assert_eq!(ours.resource_logs[0].scope_logs.len(), 2);
    }

    #[test]
    fn lengths_of_every_size_are_written_in_full() {
        for len in [0, 1, 127, 128, 16_383, 16_384, 2_097_152] {
            let mut b = Vec::new();
            nested(&mut b, 1, |b| b.extend(std::iter::repeat_n(7u8, len)));
            let mut expected = vec![0x0a];
            varint(&mut expected, len as u64);
            expected.extend(std::iter::repeat_n(7u8, len));
            assert_eq!(b, expected, "{len}");
        }
    }
}
