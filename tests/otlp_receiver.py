"""An OTLP/HTTP receiver for tests/otlp.rs: decodes what the executor exports with the
OpenTelemetry project's own protobuf classes (PyPI `opentelemetry-proto`) and prints one
JSON line per span and per log record on stdout, with the `api-key` header its request
carried.

Listens on 127.0.0.1 at a port the OS picks and prints `listening <port>` first. Answers
POST /v1/traces and /v1/logs (Content-Type application/x-protobuf) with the matching
empty Export*ServiceResponse; anything else gets 404, and a body that does not decode 400
(and a line saying so, so the test sees it).
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


def value(v):
    """An OTLP AnyValue as plain JSON."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def emit(record):
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def spans(body, api_key):
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.ParseFromString(body)
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                emit({
                    "type": "span",
                    "api_key": api_key,
                    "resource": resource,
                    "scope": scope_spans.scope.name,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "name": span.name,
                    "kind": trace_pb2.Span.SpanKind.Name(span.kind),
                    "attributes": attributes(span.attributes),
                    "links": [{"trace_id": l.trace_id.hex(), "span_id": l.span_id.hex()} for l in span.links],
                    "status": trace_pb2.Status.StatusCode.Name(span.status.code),
                    "status_message": span.status.message,
                    "start": span.start_time_unix_nano,
                    "end": span.end_time_unix_nano,
                })
    return trace_service_pb2.ExportTraceServiceResponse()


def logs(body, api_key):
    request = logs_service_pb2.ExportLogsServiceRequest()
    request.ParseFromString(body)
    for resource_logs in request.resource_logs:
        resource = attributes(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                emit({
                    "type": "log",
                    "api_key": api_key,
                    "resource": resource,
                    "scope": scope_logs.scope.name,
                    "event_name": record.event_name,
                    "time": record.time_unix_nano,
                    "severity_number": record.severity_number,
                    "severity_text": record.severity_text,
                    "body": value(record.body),
                    "attributes": attributes(record.attributes),
                    "trace_id": record.trace_id.hex(),
                    "span_id": record.span_id.hex(),
                })
    return logs_service_pb2.ExportLogsServiceResponse()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        decode = {"/v1/traces": spans, "/v1/logs": logs}.get(self.path)
        if decode is None:
            return self.answer(404, b"")
        if self.headers.get("Content-Type") != "application/x-protobuf":
            emit({"type": "error", "error": f"content type {self.headers.get('Content-Type')}"})
            return self.answer(415, b"")
        try:
            response = decode(body, self.headers.get("api-key"))
        except Exception as e:  # a body that is not the message: say so
            emit({"type": "error", "error": f"{self.path}: {e}"})
            return self.answer(400, b"")
        self.answer(200, response.SerializeToString())

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    emit_line = f"listening {server.server_address[1]}\n"
    sys.stdout.write(emit_line)
    sys.stdout.flush()
    server.serve_forever()
