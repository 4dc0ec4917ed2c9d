//! MCP sources: a stdio server the executor starts and supervises (restarted with back-off
//! when it exits), or a Streamable HTTP server; each tool becomes a method of an OpenRPC
//! document the catalog parses like any service's.
//!
//! A stdio child gets a clean environment: `PATH`, `HOME`, `LANG`, `LC_ALL`, `TZ` and
//! `TMPDIR` from the executor, then the source's `env` and `secret_env` (resolved at each
//! start). It never inherits the executor's environment, which holds other sources' secrets.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};
use rmcp::model::{CallToolRequestParams, ClientJsonRpcMessage};
use rmcp::service::{NotificationContext, ServiceError};
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError, StreamableHttpPostResponse,
};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, Peer, RoleClient, ServiceExt};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};

use super::file::{Auth, Kind, SourceDef};
use super::secret::Redactor;
use crate::catalog::spec::{HeroIntent, Idempotency, SideEffect};
use crate::error::{ExecError, code};

/// The first restart waits this long; each failure doubles it, up to [`MOST_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MOST_BACKOFF: Duration = Duration::from_secs(60);
/// A server up this long is healthy again: its next restart waits [`FIRST_BACKOFF`].
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// How long the handshake and a tool listing may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest line of a child's stderr logged.
const MAX_LOG_LINE: usize = 512;
/// What a child inherits from the executor's environment.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// What the supervisor reports: the tool list (as JSON) when connected, or why not.
/// The supervisor waits for each report to be published before it goes on, so reports
/// arrive in order and a new connection serves calls only once its tools are published.
pub type OnTools = Arc<dyn Fn(Result<Vec<Value>, String>) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Most tools (and pages of them) read from one server.
const MAX_TOOLS: usize = 10_000;
const MAX_TOOL_PAGES: usize = 100;

/// A connected (or reconnecting) MCP server.
pub struct McpTarget {
    def: SourceDef,
    peer: RwLock<Result<Peer<RoleClient>, String>>,
    restarts: AtomicU64,
    stop: watch::Sender<bool>,
    max_response_bytes: usize,
    /// The secret values the running child was started with (redacted even once rotated).
    spawned: RwLock<Redactor>,
    /// The running child's process group, killed whole when the connection ends.
    group: std::sync::Mutex<Option<u32>>,
}

impl std::fmt::Debug for McpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpTarget").field("source", &self.def.name).finish()
    }
}

impl McpTarget {
    /// Starts connecting (and supervising) in the background; `on_tools` hears every tool
    /// list and every disconnection.
    pub fn start(def: SourceDef, max_response_bytes: usize, on_tools: OnTools) -> Arc<Self> {
        let target = Arc::new(Self {
            def,
            peer: RwLock::new(Err("connecting".to_owned())),
            restarts: AtomicU64::new(0),
            stop: watch::channel(false).0,
            max_response_bytes,
            spawned: RwLock::new(Redactor::default()),
            group: std::sync::Mutex::new(None),
        });
        tokio::spawn(target.clone().supervise(on_tools));
        target
    }

    /// Stops the supervisor and disconnects (a stdio child is killed).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// The connection's state and the restarts so far, for `sources.list`.
    pub fn status(&self) -> Value {
        let restarts = self.restarts.load(Ordering::Relaxed);
        match &*self.peer.read().unwrap_or_else(|p| p.into_inner()) {
            Ok(_) => json!({"connected": true, "restarts": restarts}),
            Err(why) => json!({"connected": false, "error": why, "restarts": restarts}),
        }
    }

    fn set_peer(&self, peer: Result<Peer<RoleClient>, String>) {
        *self.peer.write().unwrap_or_else(|p| p.into_inner()) = peer;
    }

    async fn supervise(self: Arc<Self>, on_tools: OnTools) {
        let mut stop = self.stop.subscribe();
        let mut delay = FIRST_BACKOFF;
        loop {
            if *stop.borrow() {
                return;
            }
            let started = Instant::now();
            let (changed_tx, mut changed) = mpsc::unbounded_channel();
            let why = match tokio::time::timeout(CONNECT_TIMEOUT, self.connect(Listener { changed: changed_tx })).await
            {
                Err(_) => "the MCP handshake did not finish in time".to_owned(),
                Ok(Err(why)) => why,
                Ok(Ok(running)) => {
                    let peer = running.peer().clone();
                    let token = running.cancellation_token();
                    // Calls reach the new connection only once its tools are published.
                    on_tools(self.list_tools(&peer).await).await;
                    self.set_peer(Ok(peer.clone()));
                    let waiting = running.waiting();
                    tokio::pin!(waiting);
                    loop {
                        tokio::select! {
                            _ = stop.changed() => {
                                token.cancel();
                                let _ = waiting.await;
                                self.kill_group();
                                return;
                            }
                            Some(()) = changed.recv() => {
                                while changed.try_recv().is_ok() {} // a burst is listed once
                                on_tools(self.list_tools(&peer).await).await;
                            }
                            _ = &mut waiting => break,
                        }
                    }
                    "the MCP server went away".to_owned()
                }
            };
            self.kill_group();
            let why = self.redactor().text(&why);
            if started.elapsed() >= HEALTHY_AFTER {
                delay = FIRST_BACKOFF;
            }
            let why = format!("{why}; reconnecting in {} s", delay.as_secs());
            tracing::warn!(source = %self.def.name, error = %why, "MCP source down");
            self.set_peer(Err(why.clone()));
            on_tools(Err(why)).await;
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MOST_BACKOFF);
            self.restarts.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn connect(&self, listener: Listener) -> Result<rmcp::service::RunningService<RoleClient, Listener>, String> {
        match &self.def.kind {
            Kind::McpStdio {
                command,
                args,
                env,
                secret_env,
                dir,
            } => {
                let mut cmd = tokio::process::Command::new(command);
                // Its own process group: a server started through a wrapper (sh, npx, uvx)
                // is stopped whole.
                cmd.args(args)
                    .current_dir(dir)
                    .env_clear()
                    .kill_on_drop(true)
                    .process_group(0);
                for key in INHERITED_ENV {
                    if let Some(value) = std::env::var_os(key) {
                        cmd.env(key, value);
                    }
                }
                cmd.envs(env);
                let mut redactor = Redactor::default();
                for (key, reference) in secret_env {
                    let value = reference.resolve()?;
                    redactor.add(&value);
                    cmd.env(key, value);
                }
                *self.spawned.write().unwrap_or_else(|p| p.into_inner()) = redactor.clone();
                let (transport, stderr) = TokioChildProcess::builder(cmd)
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("cannot start {command}: {e}"))?;
                *self.group.lock().unwrap_or_else(|p| p.into_inner()) = transport.id();
                if let Some(stderr) = stderr {
                    tokio::spawn(log_stderr(self.def.name.clone(), stderr, redactor));
                }
                listener
                    .serve(transport)
                    .await
                    .map_err(|e| format!("MCP handshake failed: {e}"))
            }
            Kind::McpHttp { url, headers } => {
                let client = SecretHeaders::new(&self.def.name, url, headers, self.def.auth.clone())?;
                let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
                config.max_sse_event_size = self.max_response_bytes;
                let transport = StreamableHttpClientTransport::with_client(client, config);
                listener
                    .serve(transport)
                    .await
                    .map_err(|e| format!("MCP handshake failed: {e}"))
            }
            Kind::OpenApi { .. } => Err("not an MCP source".to_owned()),
        }
    }

    /// Kills what is left of the child's process group.
    fn kill_group(&self) {
        let group = self.group.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(pid) = group.and_then(|pid| rustix::process::Pid::from_raw(pid as i32)) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }

    /// The secret values this source uses now, and those its child was started with.
    fn redactor(&self) -> Redactor {
        let mut redactor = self.spawned.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Kind::McpStdio { secret_env, .. } = &self.def.kind {
            for value in secret_env.values().filter_map(|r| r.resolve().ok()) {
                redactor.add(&value);
            }
        }
        if let Some(credentials) = self.def.auth.as_ref().and_then(|a| a.resolve().ok()) {
            redactor.extend(&credentials.redactor);
        }
        redactor
    }

    /// The server's tools (paginated, bounded), secrets redacted from their text.
    async fn list_tools(&self, peer: &Peer<RoleClient>) -> Result<Vec<Value>, String> {
        let list = async {
            let mut tools = Vec::new();
            let mut cursor = None;
            for _ in 0..MAX_TOOL_PAGES {
                let mut params = rmcp::model::PaginatedRequestParams::default();
                params.cursor = cursor;
                let page = peer
                    .list_tools(Some(params))
                    .await
                    .map_err(|e| format!("tools/list failed: {e}"))?;
                for tool in &page.tools {
                    tools.push(serde_json::to_value(tool).map_err(|e| e.to_string())?);
                }
                if tools.len() > MAX_TOOLS {
                    return Err(format!("more than {MAX_TOOLS} tools"));
                }
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => return Ok(tools),
                }
            }
            Err(format!("more than {MAX_TOOL_PAGES} pages of tools"))
        };
        let mut tools = tokio::time::timeout(CONNECT_TIMEOUT, list)
            .await
            .map_err(|_| "tools/list did not answer in time".to_owned())??;
        let redactor = self.redactor();
        for tool in &mut tools {
            redactor.value(tool);
        }
        Ok(tools)
    }

    /// Calls one tool. A tool error (`isError`) is a target error; the answer is the tool's
    /// structured content when it has some, else its content blocks.
    pub async fn call(
        &self,
        tool: &str,
        params: Option<&Value>,
        timeout: Duration,
    ) -> Result<Box<RawValue>, ExecError> {
        let source = &self.def.name;
        let peer = self
            .peer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .map_err(|why| ExecError::TargetUnavailable(format!("{source}: {why}")))?;
        let mut request = CallToolRequestParams::new(tool.to_owned());
        request.arguments = Some(params.and_then(Value::as_object).cloned().unwrap_or_default());
        let answer = tokio::time::timeout(timeout, peer.call_tool(request))
            .await
            .map_err(|_| {
                ExecError::TargetTimeout(format!("{source} did not answer within {} ms", timeout.as_millis()))
            })?;
        let redactor = self.redactor();
        let result = match answer {
            Ok(result) => result,
            Err(ServiceError::McpError(error)) => {
                let mut data = error.data.clone();
                if let Some(data) = &mut data {
                    redactor.value(data);
                }
                // A secret left where it cannot be replaced (in a number): no data at all.
                let data = data.filter(|d| !redactor.finds(&d.to_string()));
                return Err(ExecError::Target {
                    code: i64::from(error.code.0),
                    message: redactor.text(&format!("{source}: {}", error.message)),
                    data: data.map(Box::new),
                });
            }
            Err(other) => {
                return Err(ExecError::TargetUnavailable(
                    redactor.text(&format!("{source}: {other}")),
                ));
            }
        };
        let value = serde_json::to_value(&result).map_err(|e| ExecError::Internal(e.to_string()))?;
        let size = serde_json::to_vec(&value).map_or(usize::MAX, |v| v.len());
        if size > self.max_response_bytes {
            return Err(ExecError::TargetProtocol(format!(
                "{source}: answer exceeds {} bytes",
                self.max_response_bytes
            )));
        }
        let content = value.get("content").cloned().unwrap_or(json!([]));
        if value.get("isError").and_then(Value::as_bool) == Some(true) {
            let text: String = content
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|block| block.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n")
                .chars()
                .take(1024)
                .collect();
            let mut data = json!({"content": content});
            redactor.value(&mut data);
            return Err(ExecError::Target {
                code: code::TARGET_ERROR,
                message: redactor.text(&format!("{source}.{tool} failed: {text}")),
                data: Some(Box::new(data)),
            });
        }
        let mut answer = match value.get("structuredContent") {
            Some(structured) if !structured.is_null() => structured.clone(),
            _ => json!({"content": content}),
        };
        redactor.answer(&mut answer)
    }
}

/// Logs a child's stderr, line by line, bounded and with its secrets redacted.
async fn log_stderr(source: String, stderr: tokio::process::ChildStderr, redactor: Redactor) {
    use tokio::io::AsyncReadExt;
    let mut stderr = stderr;
    let mut chunk = [0u8; 4096];
    // At most twice MAX_LOG_LINE bytes of a line are read (the rest is skipped to its
    // newline); MAX_LOG_LINE bytes of it are logged.
    let mut line: Vec<u8> = Vec::new();
    let log = |line: &mut Vec<u8>| {
        // Cut after redacting, and with no start of a secret at the cut: a secret that runs
        // past the bytes kept is never matched whole.
        let (text, _) = redactor.excerpt(&String::from_utf8_lossy(line), MAX_LOG_LINE);
        tracing::info!(source = %source, line = %text, "MCP server stderr");
        line.clear();
    };
    while let Ok(n) = stderr.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        for &byte in &chunk[..n] {
            match byte {
                b'\n' => log(&mut line),
                _ if line.len() < MAX_LOG_LINE * 2 => line.push(byte),
                _ => {}
            }
        }
    }
    if !line.is_empty() {
        log(&mut line);
    }
}

/// Hears the server's notifications: a changed tool list is listed again.
struct Listener {
    changed: mpsc::UnboundedSender<()>,
}

impl ClientHandler for Listener {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.changed.send(());
    }
}

/// reqwest for Streamable HTTP, with the source's headers and its credentials resolved on
/// every request (a rotated secret needs no restart), redirects kept on the server's origin.
#[derive(Clone)]
struct SecretHeaders {
    inner: reqwest::Client,
    headers: HashMap<HeaderName, HeaderValue>,
    auth: Option<Auth>,
}

impl SecretHeaders {
    fn new(
        source: &str,
        url: &reqwest::Url,
        headers: &BTreeMap<String, String>,
        auth: Option<Auth>,
    ) -> Result<Self, String> {
        crate::telemetry::install_crypto_provider();
        let origin = url.origin();
        let source = source.to_owned();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() < 5 && attempt.url().origin() == origin {
                attempt.follow()
            } else {
                attempt.error(format!("{source}: a redirect to another host was refused"))
            }
        });
        let inner = reqwest::Client::builder()
            .no_proxy()
            .redirect(policy)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let headers = headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    HeaderName::from_bytes(k.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect();
        Ok(Self { inner, headers, auth })
    }

    /// The source's headers and credentials, resolved now. A credential that cannot be
    /// resolved is left out: the server refuses the request, and says so.
    fn with_secrets(&self, mut headers: HashMap<HeaderName, HeaderValue>) -> HashMap<HeaderName, HeaderValue> {
        headers.extend(self.headers.clone());
        if let Some(credentials) = self.auth.as_ref().and_then(|a| a.resolve().ok()) {
            headers.extend(credentials.headers);
        }
        headers
    }
}

type HttpError = <reqwest::Client as StreamableHttpClient>::Error;

impl StreamableHttpClient for SecretHeaders {
    type Error = HttpError;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        let headers = self.with_secrets(custom_headers);
        self.inner
            .post_message(uri, message, session_id, auth_header, headers)
            .await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        let headers = self.with_secrets(custom_headers);
        self.inner
            .post_message_with_max_sse_event_size(uri, message, session_id, auth_header, headers, max_sse_event_size)
            .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        let headers = self.with_secrets(custom_headers);
        self.inner.delete_session(uri, session_id, auth_header, headers).await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<
        futures::stream::BoxStream<'static, Result<sse_stream::Sse, sse_stream::Error>>,
        StreamableHttpError<Self::Error>,
    > {
        let headers = self.with_secrets(custom_headers);
        self.inner
            .get_stream(uri, session_id, last_event_id, auth_header, headers)
            .await
    }

    /// The server's own stream (GET) keeps the event cap too (the default forwards to
    /// `get_stream`, which has none).
    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<
        futures::stream::BoxStream<'static, Result<sse_stream::Sse, sse_stream::Error>>,
        StreamableHttpError<Self::Error>,
    > {
        let headers = self.with_secrets(custom_headers);
        self.inner
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                headers,
                max_sse_event_size,
            )
            .await
    }
}

/// A tool list as an OpenRPC document, and each method's tool name on the wire.
pub fn document(def: &SourceDef, tools: &[Value]) -> (Value, BTreeMap<String, String>, Vec<String>) {
    let mut methods = Vec::new();
    let mut schemas = Map::new();
    let mut wire = BTreeMap::new();
    let mut warnings = Vec::new();
    for tool in tools {
        let Some(tool_name) = tool.get("name").and_then(Value::as_str) else {
            warnings.push("a tool without a name; skipped".to_owned());
            continue;
        };
        let name = super::sanitize(tool_name);
        if name.is_empty() || name.len() > 128 || wire.contains_key(&name) {
            let shown: String = tool_name.chars().take(64).collect();
            warnings.push(format!("tool {shown:?}: no usable, distinct name; skipped"));
            continue;
        }
        let mut input = tool.get("inputSchema").cloned().unwrap_or(json!({"type": "object"}));
        lift_defs(&mut input, &name, &mut schemas);
        let required: Vec<&str> = input
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let params: Vec<Value> = input
            .get("properties")
            .and_then(Value::as_object)
            .map(|props| {
                props
                    .iter()
                    .map(|(key, schema)| json!({"name": key, "required": required.contains(&key.as_str()), "schema": schema}))
                    .collect()
            })
            .unwrap_or_default();
        let intent = def
            .overrides
            .get(&name)
            .map_or(derived(tool), |o| o.apply(derived(tool)));
        let mut method = json!({
            "name": name,
            "paramStructure": "by-name",
            "params": params,
            "x-hero-intent": intent,
            "x-hero-mcp": {"tool": tool_name, "annotations": tool.get("annotations")},
        });
        if let Some(text) = tool.get("title").and_then(Value::as_str) {
            method["summary"] = json!(text);
        }
        if let Some(text) = tool.get("description").and_then(Value::as_str) {
            method["description"] = json!(text);
        }
        if let Some(output) = tool.get("outputSchema") {
            let mut output = output.clone();
            lift_defs(&mut output, &name, &mut schemas);
            method["result"] = json!({"name": "result", "schema": output});
        }
        wire.insert(name, tool_name.to_owned());
        methods.push(method);
    }
    let document = json!({
        "openrpc": "1.3.2",
        "info": {"title": def.name, "version": ""},
        "methods": methods,
        "components": {"schemas": schemas},
    });
    (document, wire, warnings)
}

/// A tool's annotations the other way from DESIGN section 5: readOnlyHint -> read/safe;
/// destructiveHint (true unless said otherwise) -> mutate-others, else mutate-self;
/// idempotentHint -> replay-safe.
fn derived(tool: &Value) -> HeroIntent {
    let hint = |key: &str| {
        tool.get("annotations")
            .and_then(|a| a.get(key))
            .and_then(Value::as_bool)
    };
    let (side_effect_class, idempotency) = if hint("readOnlyHint") == Some(true) {
        (SideEffect::Read, Idempotency::Safe)
    } else {
        let side = match hint("destructiveHint") {
            Some(false) => SideEffect::MutateSelf,
            _ => SideEffect::MutateOthers,
        };
        let idem = match hint("idempotentHint") {
            Some(true) => Idempotency::ReplaySafe,
            _ => Idempotency::ReplayUnsafe,
        };
        (side, idem)
    };
    HeroIntent {
        side_effect_class,
        idempotency,
        declared: true,
        ..HeroIntent::UNDECLARED
    }
}

/// Moves a schema's `$defs` (and `definitions`) into the shared components under
/// `<tool>__<name>`, rewriting the references, so tools' definitions cannot collide.
fn lift_defs(schema: &mut Value, tool: &str, schemas: &mut Map<String, Value>) {
    let Some(map) = schema.as_object_mut() else { return };
    let mut moved = Vec::new();
    for key in ["$defs", "definitions"] {
        if let Some(Value::Object(defs)) = map.remove(key) {
            for (name, def) in defs {
                moved.push((format!("#/{key}/{name}"), format!("{tool}__{name}"), def));
            }
        }
    }
    if moved.is_empty() {
        return;
    }
    let renames: Vec<(String, String)> = moved.iter().map(|(from, to, _)| (from.clone(), to.clone())).collect();
    rewrite(schema, &renames);
    for (_, to, mut def) in moved {
        rewrite(&mut def, &renames);
        schemas.insert(to, def);
    }
}

fn rewrite(value: &mut Value, renames: &[(String, String)]) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if key == "$ref"
                    && let Value::String(reference) = child
                    && let Some((from, to)) = renames
                        .iter()
                        .find(|(from, _)| reference == from || reference.starts_with(&format!("{from}/")))
                {
                    *reference = format!("#/components/schemas/{to}{}", &reference[from.len()..]);
                } else {
                    rewrite(child, renames);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite(v, renames)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_become_methods_with_their_intent() {
        let def = SourceDef::for_test("notes");
        let tools = vec![
            json!({"name": "list-notes", "inputSchema": {"type": "object", "properties": {}},
                   "annotations": {"readOnlyHint": true}}),
            json!({"name": "create", "description": "Create a note",
                   "inputSchema": {"type": "object", "required": ["note"], "properties": {"note": {"$ref": "#/$defs/Note"}},
                                   "$defs": {"Note": {"type": "object", "properties": {"text": {"type": "string"}}}}},
                   "annotations": {"destructiveHint": false, "idempotentHint": true}}),
        ];
        let (doc, wire, warnings) = document(&def, &tools);
        assert!(warnings.is_empty());
        assert_eq!(wire["list_notes"], "list-notes");
        let methods = doc["methods"].as_array().unwrap();
        assert_eq!(methods[0]["x-hero-intent"]["side_effect_class"], "read");
        assert_eq!(methods[1]["x-hero-intent"]["side_effect_class"], "mutate-self");
        assert_eq!(methods[1]["x-hero-intent"]["idempotency"], "replay-safe");
        assert_eq!(methods[1]["params"][0]["required"], true);
        assert_eq!(
            methods[1]["params"][0]["schema"]["$ref"],
            "#/components/schemas/create__Note"
        );
        assert!(doc["components"]["schemas"]["create__Note"].is_object());
    }
}
