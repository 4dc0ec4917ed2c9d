//! OpenAPI sources: a spec (3.0 or 3.1, JSON or YAML) turned into an OpenRPC document the
//! catalog parses like any service's, and each operation's call built from its params and
//! sent over HTTP(S) or a Unix socket.
//!
//! Every operation becomes one method: its path, query and header parameters and its JSON
//! request body (under `body`) are the params, the first 2xx JSON response the result.
//! References inside the spec (`#/components/...`) are followed; schemas keep theirs,
//! resolved against the spec's `components.schemas`. OpenAPI 3.0 schemas are JSON Schema
//! draft 4 with `nullable`, which becomes a `"null"` type; 3.1 schemas are 2020-12.

use std::collections::BTreeSet;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::file::{Auth, BaseUrl, SourceDef};
use super::secret::Redactor;
use crate::catalog::spec::{HeroIntent, Idempotency, SideEffect};
use crate::error::{ExecError, code};

/// Longest error excerpt kept from a non-2xx answer, in bytes.
const EXCERPT_BYTES: usize = 1024;

/// Deepest chain of `$ref`s followed to reach a parameter, body or response.
const MAX_REF_DEPTH: usize = 16;

/// Headers a caller never sets through a header parameter: the executor's own, framing,
/// hop-by-hop, and credentials.
const RESERVED_HEADERS: &[&str] = &[
    "accept",
    "content-type",
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "cookie",
    "traceparent",
    "tracestate",
    "expect",
];

/// Where an operation parameter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Path,
    Query,
    Header,
}

/// One operation, ready to be called.
#[derive(Debug, Clone)]
pub struct Operation {
    pub name: String,
    pub method: Method,
    /// The path template (`/pet/{petId}`).
    pub path: String,
    /// (key in the params, name on the wire, where it goes).
    pub params: Vec<(String, String, Location)>,
    /// The params key that holds the JSON request body.
    pub body: Option<String>,
}

/// A spec turned into an OpenRPC document and its operations.
#[derive(Debug)]
pub struct Converted {
    pub document: Value,
    pub operations: Vec<Operation>,
    pub warnings: Vec<String>,
    pub draft: jsonschema::Draft,
}

/// Parses a spec's text: JSON, or YAML.
pub fn parse_text(raw: &str) -> Result<Value, String> {
    if raw.trim_start().starts_with('{') {
        return serde_json::from_str(raw).map_err(|e| format!("the spec is not valid JSON: {e}"));
    }
    serde_norway::from_str(raw).map_err(|e| format!("the spec is not valid YAML: {e}"))
}

/// Converts an OpenAPI document. Fails only when it is not OpenAPI 3.0 or 3.1 at all;
/// operations that cannot be served become warnings.
pub fn convert(def: &SourceDef, spec: &Value) -> Result<Converted, String> {
    let version = spec.get("openapi").and_then(Value::as_str).unwrap_or_default();
    let draft = if version.starts_with("3.0.") || version == "3.0" {
        jsonschema::Draft::Draft4
    } else if version.starts_with("3.1.") || version == "3.1" {
        jsonschema::Draft::Draft202012
    } else {
        return Err(match spec.get("swagger") {
            Some(_) => "Swagger 2.0 is not supported: convert the spec to OpenAPI 3".to_owned(),
            None => format!("not an OpenAPI 3.0 or 3.1 document (openapi: {version:?})"),
        });
    };
    let v30 = draft == jsonschema::Draft::Draft4;
    let paths = spec
        .get("paths")
        .and_then(Value::as_object)
        .ok_or("the spec has no paths object")?;
    let mut schemas = spec
        .pointer("/components/schemas")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if v30 {
        nullable_to_type(&mut schemas);
    }
    let mut methods = Vec::new();
    let mut operations = Vec::new();
    let mut warnings = Vec::new();
    let mut names = BTreeSet::new();
    for (path, item) in paths {
        let item = resolve(spec, item);
        let Some(item) = item.as_object() else { continue };
        let shared: Vec<&Value> = list(item.get("parameters"));
        for verb in ["get", "put", "post", "delete", "options", "head", "patch", "trace"] {
            let Some(op) = item.get(verb) else { continue };
            let method = Method::from_bytes(verb.to_uppercase().as_bytes()).unwrap_or(Method::GET);
            match operation(def, spec, path, method, op, &shared, v30, &mut names) {
                Ok((doc, operation)) => {
                    methods.push(doc);
                    operations.push(operation);
                }
                Err(why) => warnings.push(why),
            }
        }
    }
    let document = json!({
        "openrpc": "1.3.2",
        "info": {
            "title": spec.pointer("/info/title").cloned().unwrap_or(json!(def.name)),
            "version": spec.pointer("/info/version").cloned().unwrap_or(json!("")),
        },
        "methods": methods,
        "components": {"schemas": schemas},
    });
    Ok(Converted {
        document,
        operations,
        warnings,
        draft,
    })
}

/// One operation as an OpenRPC method, and how to call it.
#[allow(clippy::too_many_arguments)]
fn operation(
    def: &SourceDef,
    spec: &Value,
    path: &str,
    method: Method,
    op: &Value,
    shared: &[&Value],
    v30: bool,
    names: &mut BTreeSet<String>,
) -> Result<(Value, Operation), String> {
    let shown = format!("{method} {path}");
    let name = match op.get("operationId").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => super::sanitize(id),
        _ => super::sanitize(&format!("{}_{path}", method.as_str().to_lowercase())),
    };
    if name.is_empty() || name.len() > 128 {
        return Err(format!("{shown}: no usable operation name; skipped"));
    }
    if !names.insert(name.clone()) {
        return Err(format!("{shown}: a second operation named {name}; skipped"));
    }
    // Operation parameters override path-level ones of the same name and location.
    let mut params: Vec<&Value> = list(op.get("parameters"))
        .into_iter()
        .map(|p| resolve(spec, p))
        .collect();
    for p in shared.iter().map(|p| resolve(spec, p)) {
        let same = |q: &&Value| q.get("name") == p.get("name") && q.get("in") == p.get("in");
        if !params.iter().any(same) {
            params.push(p);
        }
    }
    let mut descriptors = Vec::new();
    let mut wire = Vec::new();
    let mut keys = BTreeSet::new();
    for p in params {
        let (Some(pname), Some(place)) = (
            p.get("name").and_then(Value::as_str),
            p.get("in").and_then(Value::as_str),
        ) else {
            return Err(format!("{shown}: a parameter without name or in; skipped"));
        };
        let required = p.get("required").and_then(Value::as_bool).unwrap_or(false) || place == "path";
        let location = match place {
            "path" => Location::Path,
            "query" => Location::Query,
            // Set by the executor itself, never by a caller (OpenAPI ignores them too).
            "header" if RESERVED_HEADERS.contains(&pname.to_lowercase().as_str()) => continue,
            "header" => Location::Header,
            _ if !required => continue,
            other => {
                return Err(format!(
                    "{shown}: required {other} parameter {pname} is not supported; skipped"
                ));
            }
        };
        if !keys.insert(pname.to_owned()) {
            return Err(format!("{shown}: two parameters named {pname}; skipped"));
        }
        let mut schema = p
            .get("schema")
            .or_else(|| {
                p.get("content")
                    .and_then(Value::as_object)
                    .and_then(|c| c.values().next()?.get("schema"))
            })
            .cloned()
            .unwrap_or(json!({}));
        if v30 {
            nullable_to_type(&mut schema);
        }
        // Where it goes is part of what an admin accepts (a digest of the method).
        let mut descriptor = json!({"name": pname, "required": required, "schema": schema, "x-hero-in": place});
        if let Some(text) = p.get("description") {
            descriptor["description"] = text.clone();
        }
        descriptors.push(descriptor);
        wire.push((pname.to_owned(), pname.to_owned(), location));
    }
    let mut body = None;
    if let Some(request) = op.get("requestBody").map(|b| resolve(spec, b)) {
        let required = request.get("required").and_then(Value::as_bool).unwrap_or(false);
        match json_content(request) {
            Some(schema) => {
                let key = ["body", "request_body", "_body"]
                    .into_iter()
                    .find(|k| !keys.contains(*k))
                    .unwrap_or("_body");
                let mut schema = schema.clone();
                if v30 {
                    nullable_to_type(&mut schema);
                }
                let mut descriptor = json!({"name": key, "required": required, "schema": schema});
                if let Some(text) = request.get("description") {
                    descriptor["description"] = text.clone();
                }
                descriptors.push(descriptor);
                body = Some(key.to_owned());
            }
            None if required => return Err(format!("{shown}: its request body is not JSON; skipped")),
            None => {}
        }
    }
    let result = op
        .get("responses")
        .and_then(Value::as_object)
        .and_then(|responses| {
            responses
                .iter()
                .filter(|(status, _)| status.starts_with('2'))
                .find_map(|(_, r)| json_content(resolve(spec, r)).cloned())
        })
        .map(|mut schema| {
            if v30 {
                nullable_to_type(&mut schema);
            }
            json!({"name": "result", "schema": schema})
        });
    let intent = def
        .overrides
        .get(&name)
        .map_or(derived(&method), |o| o.apply(derived(&method)));
    let mut doc = json!({
        "name": name,
        "paramStructure": "by-name",
        "params": descriptors,
        "x-hero-intent": intent,
        "x-hero-http": {"method": method.as_str(), "path": path},
    });
    for key in ["summary", "description"] {
        if let Some(text) = op.get(key).and_then(Value::as_str) {
            doc[key] = json!(text);
        }
    }
    if let Some(result) = result {
        doc["result"] = result;
    }
    let operation = Operation {
        name,
        method,
        path: path.to_owned(),
        params: wire,
        body,
    };
    Ok((doc, operation))
}

/// x-hero-intent from the HTTP method: GET/HEAD read, PUT/DELETE replay-safe mutations,
/// POST/PATCH (and anything else) unsafe ones.
fn derived(method: &Method) -> HeroIntent {
    let (side_effect_class, idempotency) = match *method {
        Method::GET | Method::HEAD | Method::OPTIONS => (SideEffect::Read, Idempotency::Safe),
        Method::PUT | Method::DELETE => (SideEffect::MutateOthers, Idempotency::ReplaySafe),
        _ => (SideEffect::MutateOthers, Idempotency::ReplayUnsafe),
    };
    HeroIntent {
        side_effect_class,
        idempotency,
        declared: true,
        ..HeroIntent::UNDECLARED
    }
}

fn list(value: Option<&Value>) -> Vec<&Value> {
    value
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// Follows `$ref`s within the spec (a bounded chain); an unresolvable one stays as it is.
fn resolve<'a>(spec: &'a Value, mut value: &'a Value) -> &'a Value {
    for _ in 0..MAX_REF_DEPTH {
        let Some(reference) = value.get("$ref").and_then(Value::as_str) else {
            return value;
        };
        match reference.strip_prefix('#').and_then(|pointer| spec.pointer(pointer)) {
            Some(target) => value = target,
            None => return value,
        }
    }
    value
}

/// The schema of a JSON media type in a request body or response.
fn json_content(holder: &Value) -> Option<&Value> {
    let content = holder.get("content")?.as_object()?;
    content
        .iter()
        .find(|(media, _)| {
            let media = media.split(';').next().unwrap_or_default().trim();
            media == "application/json" || media.ends_with("+json") || media == "*/*"
        })
        .map(|(_, m)| m.get("schema").unwrap_or(&Value::Null))
        .filter(|s| !s.is_null())
}

/// OpenAPI 3.0's `nullable: true` as JSON Schema: `"null"` added to the type (and enum).
fn nullable_to_type(value: &mut Value) {
    match value {
        Value::Object(map) => {
            // Only a boolean `nullable` is the keyword (a property may be named so).
            let keyword = matches!(map.get("nullable"), Some(Value::Bool(_)));
            if keyword && map.remove("nullable") == Some(Value::Bool(true)) {
                match map.get_mut("type") {
                    Some(Value::String(t)) => {
                        let t = t.clone();
                        map.insert("type".into(), json!([t, "null"]));
                    }
                    Some(Value::Array(types)) if !types.contains(&json!("null")) => types.push(json!("null")),
                    _ => {}
                }
                if let Some(Value::Array(values)) = map.get_mut("enum")
                    && !values.contains(&Value::Null)
                {
                    values.push(Value::Null);
                }
            }
            map.values_mut().for_each(nullable_to_type);
        }
        Value::Array(items) => items.iter_mut().for_each(nullable_to_type),
        _ => {}
    }
}

/// An OpenAPI source's HTTP client: its own host only, redirects kept there, certificates
/// verified, answers size-capped.
pub struct HttpTarget {
    source: String,
    client: reqwest::Client,
    /// Where paths are appended (`http://localhost` for a Unix socket).
    base: reqwest::Url,
    auth: Option<Auth>,
    max_response_bytes: usize,
}

impl HttpTarget {
    pub fn new(def: &SourceDef, base: &BaseUrl, max_response_bytes: usize) -> Result<Self, String> {
        crate::telemetry::install_crypto_provider();
        let builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("hero_executor/", env!("CARGO_PKG_VERSION")));
        let (builder, base) = match base {
            BaseUrl::Http(url) => {
                let origin = url.origin();
                let source = def.name.clone();
                let policy = reqwest::redirect::Policy::custom(move |attempt| {
                    if attempt.previous().len() >= 5 {
                        attempt.error(format!("{source}: more than 5 redirects"))
                    } else if attempt.url().origin() == origin {
                        attempt.follow()
                    } else {
                        let to = attempt.url().host_str().unwrap_or("?").to_owned();
                        attempt.error(format!("{source}: a redirect to another host ({to}) was refused"))
                    }
                });
                (builder.redirect(policy), url.clone())
            }
            BaseUrl::Unix(path) => (
                builder
                    .unix_socket(path.clone())
                    .redirect(reqwest::redirect::Policy::none()),
                reqwest::Url::parse("http://localhost/").map_err(|e| e.to_string())?,
            ),
        };
        let client = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            source: def.name.clone(),
            client,
            base,
            auth: def.auth.clone(),
            max_response_bytes,
        })
    }

    /// Sends one operation built from `params`, and reads its answer (secrets redacted).
    pub async fn call(
        &self,
        op: &Operation,
        params: Option<&Value>,
        extra: &HeaderMap,
        timeout: Duration,
    ) -> Result<Box<RawValue>, ExecError> {
        // A caller's query parameter never stands beside (or before) the credential's.
        let credential_query = match &self.auth {
            Some(Auth::Query { name, .. }) => Some(name.as_str()),
            _ => None,
        };
        let empty = Map::new();
        let params = params.and_then(Value::as_object).unwrap_or(&empty);
        let mut redactor = Redactor::default();
        let mut url = self.url(op, params)?;
        let mut headers = extra.clone();
        for (key, wire, location) in &op.params {
            let Some(value) = params.get(key).filter(|v| !v.is_null()) else {
                continue;
            };
            match location {
                Location::Path => {}
                Location::Query if credential_query == Some(wire.as_str()) => {
                    return Err(ExecError::invalid_params(format!(
                        "{wire} carries the source's credential; it is not a parameter"
                    )));
                }
                Location::Query => {
                    let mut pairs = url.query_pairs_mut();
                    let values = match value {
                        Value::Array(items) => items.iter().collect(),
                        v => vec![v],
                    };
                    for v in values {
                        pairs.append_pair(wire, &scalar(v));
                    }
                }
                Location::Header => {
                    let name = HeaderName::from_bytes(wire.as_bytes())
                        .map_err(|_| ExecError::invalid_params(format!("{wire} is not a header name")))?;
                    let text = match value {
                        Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join(","),
                        v => scalar(v),
                    };
                    let value = HeaderValue::from_str(&text)
                        .map_err(|_| ExecError::invalid_params(format!("{wire}: not a valid header value")))?;
                    headers.insert(name, value);
                }
            }
        }
        self.authenticate(&mut url, &mut headers, &mut redactor)?;
        if url.query() == Some("") {
            url.set_query(None);
        }
        let mut request = self
            .client
            .request(op.method.clone(), url)
            .headers(headers)
            .timeout(timeout);
        if let Some(body) = op.body.as_ref().and_then(|key| params.get(key)) {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.failed(e, &redactor))?;
        let status = response.status();
        let body = self.read(response, &redactor).await?;
        if !status.is_success() {
            // Redacted whole (as JSON when it is JSON, so escaped forms are found), then cut.
            let text = match serde_json::from_slice::<Value>(&body) {
                Ok(mut value) => {
                    redactor.value(&mut value);
                    value.to_string()
                }
                Err(_) => String::from_utf8_lossy(&body).into_owned(),
            };
            let (excerpt, truncated) = redactor.excerpt(&text, EXCERPT_BYTES);
            return Err(ExecError::Target {
                code: code::TARGET_ERROR,
                message: format!("{}: HTTP {status}", self.source),
                data: Some(Box::new(json!({
                    "status": status.as_u16(),
                    "body": excerpt,
                    "truncated": truncated,
                }))),
            });
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(RawValue::from_string("null".into()).expect("null is JSON"));
        }
        let mut value: Value = serde_json::from_slice(&body).map_err(|_| {
            ExecError::TargetProtocol(format!("{}: the answer (HTTP {status}) is not JSON", self.source))
        })?;
        redactor.answer(&mut value)
    }

    /// The operation's URL: the base, then the path with its parameters escaped.
    fn url(&self, op: &Operation, params: &Map<String, Value>) -> Result<reqwest::Url, ExecError> {
        let mut url = self.base.clone();
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|_| ExecError::Internal("base URL cannot take a path".into()))?;
            segments.pop_if_empty();
            for segment in op.path.split('/').filter(|s| !s.is_empty()) {
                let mut expanded = segment.to_owned();
                for (key, wire, location) in &op.params {
                    let pattern = format!("{{{wire}}}");
                    if *location == Location::Path && expanded.contains(&pattern) {
                        let value = params.get(key).filter(|v| !v.is_null()).ok_or_else(|| {
                            ExecError::invalid_params(format!("{key} is required (a path parameter)"))
                        })?;
                        let text = scalar(value);
                        // Escaped or not, a slash or a dot segment could be decoded and resolved
                        // by the server (or a proxy before it) into another operation's path.
                        if text.is_empty() || text.contains(['/', '\\']) || is_dots(&text) {
                            return Err(ExecError::invalid_params(format!(
                                "{key}: a path parameter is one segment (no /, \\, . or ..)"
                            )));
                        }
                        expanded = expanded.replace(&pattern, &text);
                    }
                }
                let lower = expanded.to_ascii_lowercase();
                if is_dots(&expanded) || lower.contains("%2f") || lower.contains("%5c") {
                    return Err(ExecError::invalid_params(format!("{}: not a path segment", op.name)));
                }
                // `push` escapes `/`, `?`, `#` and `%`: a value stays one segment.
                segments.push(&expanded);
            }
        }
        Ok(url)
    }

    /// Adds the source's credentials, resolved now, and remembers them for redaction.
    fn authenticate(
        &self,
        url: &mut reqwest::Url,
        headers: &mut HeaderMap,
        redactor: &mut Redactor,
    ) -> Result<(), ExecError> {
        let Some(auth) = &self.auth else { return Ok(()) };
        let credentials = auth
            .resolve()
            .map_err(|why| ExecError::TargetUnavailable(format!("{}: {why}", self.source)))?;
        // The credential replaces a header parameter of the same name (appended beside it, a
        // target may read the caller's value first).
        for (name, value) in credentials.headers {
            headers.insert(name, value);
        }
        if let Some((name, value)) = &credentials.query {
            url.query_pairs_mut().append_pair(name, value);
        }
        redactor.extend(&credentials.redactor);
        Ok(())
    }

    /// The body, up to the cap.
    async fn read(&self, mut response: reqwest::Response, redactor: &Redactor) -> Result<Vec<u8>, ExecError> {
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.failed(e, redactor))? {
            if body.len() + chunk.len() > self.max_response_bytes {
                return Err(ExecError::TargetProtocol(format!(
                    "{}: answer exceeds {} bytes",
                    self.source, self.max_response_bytes
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// A transport failure as the executor's error: no URL (it may hold a query secret),
    /// and no secret value.
    fn failed(&self, error: reqwest::Error, redactor: &Redactor) -> ExecError {
        let timeout = error.is_timeout();
        let connect = error.is_connect();
        let redirect = error.is_redirect();
        let mut why = crate::upstream::root_cause(&error.without_url());
        why = redactor.text(&why);
        match () {
            _ if timeout => ExecError::TargetTimeout(format!("{} did not answer in time", self.source)),
            _ if redirect => ExecError::TargetProtocol(why),
            _ if connect => ExecError::TargetUnavailable(format!("{}: cannot connect: {why}", self.source)),
            _ => ExecError::TargetUnavailable(format!("{}: {why}", self.source)),
        }
    }
}

/// `.` or `..` (also percent-encoded), which a server would resolve away.
fn is_dots(segment: &str) -> bool {
    let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
    decoded == "." || decoded == ".."
}

/// A param as text: strings as they are, other values as JSON.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> SourceDef {
        SourceDef::for_test("pets")
    }

    #[test]
    fn operations_become_methods() {
        let spec = parse_text(
            r##"
openapi: 3.0.3
info: {title: t, version: "1"}
paths:
  /pet/{petId}:
    parameters:
      - {name: petId, in: path, required: true, schema: {type: integer}}
    get:
      operationId: getPetById
      summary: Find a pet
      responses:
        "200": {description: ok, content: {application/json: {schema: {$ref: "#/components/schemas/Pet"}}}}
    delete:
      parameters:
        - {name: api_key, in: header, schema: {type: string}}
      responses: {"400": {description: bad}}
  /pet:
    post:
      operationId: add-pet
      requestBody: {$ref: "#/components/requestBodies/Pet"}
      responses: {"200": {description: ok}}
components:
  requestBodies:
    Pet: {required: true, content: {application/json: {schema: {$ref: "#/components/schemas/Pet"}}}}
  schemas:
    Pet: {type: object, required: [name], properties: {name: {type: string, nullable: true}}}
"##,
        )
        .unwrap();
        let converted = convert(&def(), &spec).unwrap();
        assert!(converted.warnings.is_empty(), "{:?}", converted.warnings);
        let names: Vec<&str> = converted.operations.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["getPetById", "delete_pet_petId", "add_pet"]);
        let get = &converted.document["methods"][0];
        assert_eq!(get["x-hero-intent"]["side_effect_class"], "read");
        assert_eq!(get["result"]["schema"]["$ref"], "#/components/schemas/Pet");
        let delete = &converted.document["methods"][1];
        assert_eq!(delete["x-hero-intent"]["idempotency"], "replay-safe");
        assert_eq!(converted.operations[1].params.len(), 2, "path-level and own parameters");
        let add = &converted.document["methods"][2];
        assert_eq!(add["params"][0]["name"], "body");
        assert_eq!(add["params"][0]["required"], true);
        assert_eq!(add["x-hero-intent"]["idempotency"], "replay-unsafe");
        assert_eq!(
            converted.document["components"]["schemas"]["Pet"]["properties"]["name"]["type"],
            json!(["string", "null"])
        );
    }

    /// Over a Unix socket (`unix:` base URL): every kind of credential reaches the target,
    /// and is redacted from what the target echoes; an answer over the cap is refused.
    #[tokio::test]
    async fn credentials_are_sent_and_redacted_and_answers_capped() {
        use axum::routing::get;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let echo = |headers: http::HeaderMap, uri: http::Uri| async move {
            let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_owned());
            let keys: Vec<String> = headers
                .get_all("x-key")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            axum::Json(json!({"authorization": auth, "uri": uri.to_string(), "x-key": keys}))
        };
        let app = axum::Router::new()
            .route("/items/{id}", get(echo))
            .route("/big", get(|| async { "x".repeat(4096) }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let secret = |name: &str, value: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, value).unwrap();
            super::super::secret::SecretRef::File(path)
        };
        let op = Operation {
            name: "get".into(),
            method: Method::GET,
            path: "/items/{id}".into(),
            params: vec![
                ("id".into(), "id".into(), Location::Path),
                ("q".into(), "q".into(), Location::Query),
                ("x-key".into(), "x-key".into(), Location::Header),
            ],
            body: None,
        };
        // `x-key` is also the header credential's name below: a caller cannot send its own.
        let params = json!({"id": "a b?c", "q": ["1", "2"], "x-key": "guess"});
        let auths = [
            (
                Auth::Bearer {
                    token: secret("t", "tok-123456"),
                },
                "tok-123456",
            ),
            (
                Auth::Basic {
                    username: secret("u", "user"),
                    password: secret("p", "pass-987654"),
                },
                "pass-987654",
            ),
            (
                Auth::Query {
                    name: "key".into(),
                    value: secret("k", "qk-55&x"),
                },
                "qk-55&x",
            ),
            (
                Auth::Header {
                    name: HeaderName::from_static("x-key"),
                    value: secret("h", "hk-4242"),
                },
                "hk-4242",
            ),
        ];
        for (auth, value) in auths {
            let def = SourceDef {
                auth: Some(auth),
                ..def()
            };
            let target = HttpTarget::new(&def, &BaseUrl::Unix(socket.clone()), 1024).unwrap();
            let answer = target
                .call(&op, Some(&params), &HeaderMap::new(), Duration::from_secs(5))
                .await
                .unwrap();
            let text = answer.get();
            assert!(text.contains("[redacted]"), "the target saw the credential: {text}");
            assert!(!text.contains(value), "{text}");
            let answer: Value = serde_json::from_str(text).unwrap();
            assert!(
                answer["uri"].as_str().unwrap().starts_with("/items/a%20b%3Fc?q=1&q=2"),
                "{answer}"
            );
            let sent = match def.auth {
                Some(Auth::Header { .. }) => "[redacted]",
                _ => "guess",
            };
            assert_eq!(answer["x-key"], json!([sent]), "only the credential, when it is one");
        }
        for bad in ["../admin", "a/b", "..", "%2e%2e", "a\\b", ""] {
            let target = HttpTarget::new(&def(), &BaseUrl::Unix(socket.clone()), 1024).unwrap();
            let error = target
                .call(
                    &op,
                    Some(&json!({"id": bad})),
                    &HeaderMap::new(),
                    Duration::from_secs(5),
                )
                .await
                .unwrap_err();
            assert_eq!(error.code(), -32602, "{bad:?}: {error}");
        }
        let big = Operation {
            path: "/big".into(),
            params: Vec::new(),
            ..op
        };
        let target = HttpTarget::new(&def(), &BaseUrl::Unix(socket.clone()), 1024).unwrap();
        let error = target
            .call(&big, None, &HeaderMap::new(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(error.code(), -32022, "{error}");
    }

    #[test]
    fn not_openapi_3_is_refused() {
        assert!(
            convert(&def(), &json!({"swagger": "2.0"}))
                .unwrap_err()
                .contains("Swagger 2.0")
        );
        assert!(convert(&def(), &json!({"openapi": "4.0", "paths": {}})).is_err());
    }
}
