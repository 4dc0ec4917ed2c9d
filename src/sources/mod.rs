//! Sources beyond hero_* (DESIGN section 12): OpenAPI services and MCP servers declared in
//! a sources file (`--sources FILE`), their operations and tools served as capabilities
//! through the same catalog and dispatcher as any hero service's.
//!
//! - `file`: the TOML, checked whole, every error with its line.
//! - `openapi`, `mcp`: a spec or a tool list as an OpenRPC document (which the catalog
//!   parses like a service's), and how a call is sent.
//! - `secret`: `env:` / `file:` references, resolved when a call is sent; values redacted.
//! - `accepted`: what an admin accepted of each source; operations added or changed since
//!   are listed as new and refused until `sources.accept`.

pub mod accepted;
pub mod file;
pub mod mcp;
pub mod openapi;
pub mod secret;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::catalog::{Catalog, ServiceSpec, SpecLimits};
use crate::error::ExecError;
use accepted::{Accepted, AcceptedStore};
use file::{BaseUrl, Kind, SourceDef};
use mcp::McpTarget;
use openapi::{HttpTarget, Operation};

/// How a source capability's call is sent.
pub enum Route {
    Http { target: Arc<HttpTarget>, op: Operation },
    Mcp { target: Arc<McpTarget>, tool: String },
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http { op, .. } => write!(f, "Route::Http({} {})", op.method, op.path),
            Self::Mcp { tool, .. } => write!(f, "Route::Mcp({tool})"),
        }
    }
}

impl Route {
    /// Sends the call; the answer has every secret the call used replaced. Only the W3C
    /// `traceparent` goes along: hero headers (context, claims, user) stay on the node.
    pub async fn call(
        &self,
        params: Option<&Value>,
        traceparent: &str,
        timeout: Duration,
    ) -> Result<Box<RawValue>, ExecError> {
        match self {
            Self::Http { target, op } => {
                let mut headers = http::HeaderMap::new();
                if let Ok(value) = http::HeaderValue::from_str(traceparent) {
                    headers.insert("traceparent", value);
                }
                target.call(op, params, &headers, timeout).await
            }
            Self::Mcp { target, tool } => target.call(tool, params, timeout).await,
        }
    }
}

/// `[A-Za-z0-9_]` only (other characters become `_`, runs of them one), so a name reads
/// the same in a capability, a policy pattern and an MCP tool list.
pub(crate) fn sanitize(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '_' };
        if c != '_' || !out.ends_with('_') {
            out.push(c);
        }
    }
    out.trim_matches('_').to_owned()
}

/// What one source serves now.
#[derive(Default)]
struct State {
    /// The spec's (or tool list's) fingerprint, once one was read.
    fingerprint: Option<String>,
    /// Digest of each operation's definition.
    digests: BTreeMap<String, String>,
    /// Operations new or changed since the accepted version.
    pending: Vec<String>,
    warnings: Vec<String>,
    /// Why the source serves nothing now, if it does not.
    error: Option<String>,
    /// The last input, kept to rebuild the spec when it is accepted.
    input: Option<Input>,
}

#[derive(Clone)]
enum Input {
    OpenApi {
        fingerprint: String,
        converted: Arc<openapi::Converted>,
    },
    Mcp {
        fingerprint: String,
        tools: Arc<Vec<Value>>,
    },
}

enum Target {
    OpenApi(Arc<HttpTarget>),
    Mcp(Arc<McpTarget>),
}

struct Live {
    def: SourceDef,
    /// Tells a late report from a replaced target apart.
    id: u64,
    target: Target,
    state: State,
}

/// A sources file, checked and with its OpenAPI specs read: ready to apply.
pub struct Prepared {
    defs: Vec<SourceDef>,
    specs: BTreeMap<String, Input>,
}

/// Every declared source, live.
#[derive(Clone)]
pub struct Sources(Arc<Inner>);

struct Inner {
    path: Option<PathBuf>,
    catalog: Arc<Catalog>,
    accepted: AcceptedStore,
    limits: SpecLimits,
    max_response_bytes: usize,
    socket_dir: PathBuf,
    live: tokio::sync::Mutex<BTreeMap<String, Live>>,
    /// One reload at a time, from reading the file to applying it.
    reloading: tokio::sync::Mutex<()>,
    ids: AtomicU64,
    /// The file read at start, applied when the server starts.
    initial: Mutex<Option<Prepared>>,
}

impl Sources {
    /// Reads and checks the sources file (if any); nothing starts until [`Sources::start`].
    pub fn open(
        path: Option<PathBuf>,
        catalog: Arc<Catalog>,
        data_dir: &Path,
        socket_dir: PathBuf,
        limits: SpecLimits,
        max_response_bytes: usize,
    ) -> Result<Self, Vec<String>> {
        let accepted = AcceptedStore::open(data_dir).map_err(|e| vec![e])?;
        let sources = Self(Arc::new(Inner {
            path,
            catalog,
            accepted,
            limits,
            max_response_bytes,
            socket_dir,
            live: Default::default(),
            reloading: Default::default(),
            ids: AtomicU64::new(0),
            initial: Mutex::new(None),
        }));
        let prepared = sources.prepare()?;
        *sources.0.initial.lock().unwrap_or_else(|p| p.into_inner()) = Some(prepared);
        Ok(sources)
    }

    /// Applies the file read at start.
    pub async fn start(&self) {
        let prepared = self.0.initial.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(prepared) = prepared {
            self.apply(prepared).await;
        }
    }

    /// Stops every MCP server.
    pub async fn stop(&self) {
        for live in self.0.live.lock().await.values() {
            if let Target::Mcp(target) = &live.target {
                target.stop();
            }
        }
    }

    /// Reads the file again. An invalid file (or spec) keeps what runs and returns every error.
    pub async fn reload(&self) -> Result<Value, Vec<String>> {
        let _turn = self.0.reloading.lock().await;
        let this = self.clone();
        let prepared = tokio::task::spawn_blocking(move || this.prepare())
            .await
            .map_err(|e| vec![format!("reading the sources failed: {e}")])??;
        let names: Vec<String> = prepared.defs.iter().map(|d| d.name.clone()).collect();
        self.apply(prepared).await;
        tracing::info!(sources = ?names, "sources reloaded");
        Ok(json!({"file": self.file_name(), "sources": names}))
    }

    fn file_name(&self) -> Option<String> {
        self.0.path.as_ref().map(|p| p.display().to_string())
    }

    /// Checks the file and reads every OpenAPI spec; every problem with its line.
    fn prepare(&self) -> Result<Prepared, Vec<String>> {
        let Some(path) = &self.0.path else {
            return Ok(Prepared {
                defs: Vec::new(),
                specs: BTreeMap::new(),
            });
        };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{shown}: {e}")])?;
        let dir = path.parent().unwrap_or(Path::new("/"));
        let defs = file::parse(&text, &shown, dir)?;
        let mut errors = Vec::new();
        let mut specs = BTreeMap::new();
        let snapshot = self.0.catalog.snapshot();
        let own_dir = self.0.socket_dir.join(crate::SERVICE_NAME);
        for def in &defs {
            let at = |problem: String| format!("{shown}:{}: {}: {problem}", def.line, def.name);
            let hero = snapshot.services.get(&def.name).is_some_and(|s| s.source.is_none());
            if hero || self.0.socket_dir.join(&def.name).join("rpc.sock").exists() {
                errors.push(at("a hero service of that name exists on this node".to_owned()));
            }
            if let Kind::OpenApi { spec, base } = &def.kind {
                // A socket under the socket directory is a hero service's (or the executor's
                // own): reached as itself, under its own name and rules, never as a source.
                if let BaseUrl::Unix(socket) = base {
                    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
                    let parent = socket.parent().map(real).unwrap_or_default();
                    let within = |dir: &Path| parent.starts_with(real(dir)) || real(socket).starts_with(real(dir));
                    if within(&self.0.socket_dir) || within(&own_dir) {
                        errors.push(at("base_url is a socket under the hero socket directory".to_owned()));
                    }
                }
                match read_spec(spec, &self.0.limits).and_then(|(fingerprint, value)| {
                    openapi::convert(def, &value).map(|converted| (fingerprint, converted))
                }) {
                    Ok((fingerprint, converted)) => drop(specs.insert(
                        def.name.clone(),
                        Input::OpenApi {
                            fingerprint,
                            converted: Arc::new(converted),
                        },
                    )),
                    Err(why) => errors.push(at(format!("spec {}: {why}", spec.display()))),
                }
            }
        }
        match errors.is_empty() {
            true => Ok(Prepared { defs, specs }),
            false => Err(errors),
        }
    }

    /// Starts what is new, stops what is gone, rebuilds what changed.
    async fn apply(&self, mut prepared: Prepared) {
        let mut live = self.0.live.lock().await;
        let names: Vec<String> = prepared.defs.iter().map(|d| d.name.clone()).collect();
        self.0.catalog.set_source_names(&names);
        let gone: Vec<String> = live.keys().filter(|n| !names.contains(n)).cloned().collect();
        for name in gone {
            if let Some(Live {
                target: Target::Mcp(t), ..
            }) = live.remove(&name)
            {
                t.stop();
            }
            self.0.catalog.publish_source(&name, None).await;
        }
        for def in prepared.defs {
            let name = def.name.clone();
            // Where it stands in the file is not part of what it is.
            let same = live.get(&name).is_some_and(|l| {
                l.def
                    == SourceDef {
                        line: l.def.line,
                        ..def.clone()
                    }
            });
            match &def.kind {
                Kind::OpenApi { base, .. } => {
                    let old = live.get(&name).map(|l| &l.target);
                    if let Some(Target::Mcp(old)) = old {
                        old.stop(); // was an MCP source under this name
                    }
                    let target = match (same, old) {
                        (true, Some(Target::OpenApi(t))) => Ok(t.clone()),
                        _ => HttpTarget::new(&def, base, self.0.max_response_bytes).map(Arc::new),
                    };
                    let input = prepared.specs.remove(&name);
                    let target = match target {
                        Ok(target) => target,
                        Err(why) => {
                            tracing::error!(source = %name, error = %why, "source not served");
                            self.0.catalog.publish_source(&name, Some(Err(why))).await;
                            continue;
                        }
                    };
                    let id = self.0.ids.fetch_add(1, Ordering::Relaxed);
                    let state = State::default();
                    live.insert(
                        name.clone(),
                        Live {
                            def,
                            id,
                            target: Target::OpenApi(target),
                            state,
                        },
                    );
                    self.rebuild(&mut live, &name, input).await;
                }
                Kind::McpStdio { .. } | Kind::McpHttp { .. } if same => {}
                Kind::McpStdio { .. } | Kind::McpHttp { .. } => {
                    if let Some(Live {
                        target: Target::Mcp(old),
                        ..
                    }) = live.remove(&name)
                    {
                        old.stop();
                    }
                    let id = self.0.ids.fetch_add(1, Ordering::Relaxed);
                    let this = self.clone();
                    let source = name.clone();
                    let on_tools: mcp::OnTools = Arc::new(move |tools| {
                        let (this, source) = (this.clone(), source.clone());
                        Box::pin(async move { this.tools_arrived(&source, id, tools).await })
                    });
                    let target = McpTarget::start(def.clone(), self.0.max_response_bytes, on_tools);
                    let state = State {
                        error: Some("connecting".to_owned()),
                        ..State::default()
                    };
                    live.insert(
                        name.clone(),
                        Live {
                            def,
                            id,
                            target: Target::Mcp(target),
                            state,
                        },
                    );
                    self.0
                        .catalog
                        .publish_source(&name, Some(Err("connecting".to_owned())))
                        .await;
                }
            }
        }
    }

    /// A tool list (or a disconnection) from an MCP source's supervisor.
    async fn tools_arrived(&self, name: &str, id: u64, tools: Result<Vec<Value>, String>) {
        let mut live = self.0.live.lock().await;
        if live.get(name).is_none_or(|l| l.id != id) {
            return; // replaced or removed meanwhile
        }
        match tools {
            Ok(mut tools) => {
                tools.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
                let fingerprint = hex::encode(Sha256::digest(serde_json::to_vec(&tools).unwrap_or_default()));
                let input = Input::Mcp {
                    fingerprint,
                    tools: Arc::new(tools),
                };
                self.rebuild(&mut live, name, Some(input)).await;
            }
            Err(why) => {
                if let Some(l) = live.get_mut(name) {
                    l.state.error = Some(why.clone());
                }
                self.0.catalog.publish_source(name, Some(Err(why))).await;
            }
        }
    }

    /// Builds a source's capabilities from `input` (or its last one), marks what is not
    /// accepted, and publishes them.
    async fn rebuild(&self, live: &mut BTreeMap<String, Live>, name: &str, input: Option<Input>) {
        let Some(entry) = live.get_mut(name) else { return };
        let Some(input) = input.or_else(|| entry.state.input.clone()) else {
            return;
        };
        let built = self.build(entry, &input);
        entry.state.input = Some(input);
        let published = match built {
            Ok(spec) => Ok(Arc::new(spec)),
            Err(why) => {
                tracing::warn!(source = %name, error = %why, "source not served");
                entry.state.error = Some(why.clone());
                Err(why)
            }
        };
        self.0.catalog.publish_source(name, Some(published)).await;
    }

    fn build(&self, entry: &mut Live, input: &Input) -> Result<ServiceSpec, String> {
        let def = &entry.def;
        // The document to parse, and for MCP each method's tool name on the wire.
        let (fingerprint, document, draft, mut warnings, wire) = match input {
            Input::OpenApi { fingerprint, converted } => (
                fingerprint.clone(),
                converted.document.clone(),
                converted.draft,
                converted.warnings.clone(),
                BTreeMap::new(),
            ),
            Input::Mcp { fingerprint, tools } => {
                let (doc, wire, warnings) = mcp::document(def, tools);
                (fingerprint.clone(), doc, jsonschema::Draft::Draft202012, warnings, wire)
            }
        };
        let mut spec =
            crate::catalog::spec::parse_document(&def.name, document, fingerprint.clone(), &self.0.limits, draft)?;
        warnings.append(&mut spec.warnings);
        let mut digests = BTreeMap::new();
        for cap in spec.capabilities.values() {
            let method = spec.document["methods"].get(cap.index).cloned().unwrap_or_default();
            let definition = json!([method, cap.params_schema(), cap.result_schema()]);
            let digest = hex::encode(Sha256::digest(serde_json::to_vec(&definition).unwrap_or_default()));
            digests.insert(cap.method.clone(), digest);
        }
        let accepted = match self.0.accepted.get(&def.name) {
            Some(accepted) => accepted,
            None => {
                // The first version seen is the one the admin declared: accepted with the file.
                let first = Accepted {
                    fingerprint: fingerprint.clone(),
                    operations: digests.clone(),
                    accepted_at: crate::runs::now_ms(),
                    accepted_by: "sources file (first version seen)".to_owned(),
                };
                self.0.accepted.set(&def.name, first.clone())?;
                first
            }
        };
        // Compared operation by operation even when the fingerprint is the accepted one: an
        // operation skipped then (and served now) was never accepted.
        let pending: Vec<String> = digests
            .iter()
            .filter(|(op, digest)| accepted.operations.get(*op) != Some(*digest))
            .map(|(op, _)| op.clone())
            .collect();
        for name in def.overrides.keys().filter(|n| !digests.contains_key(*n)) {
            warnings.push(format!("[source.operations.{name}] names no operation of this source"));
        }
        let operations: BTreeMap<String, Operation> = match input {
            Input::OpenApi { converted, .. } => converted
                .operations
                .iter()
                .map(|o| (o.name.clone(), o.clone()))
                .collect(),
            Input::Mcp { .. } => BTreeMap::new(),
        };
        for (method, cap) in spec.capabilities.iter_mut() {
            let Some(cap) = Arc::get_mut(cap) else {
                return Err("internal: a capability is shared before it is published".to_owned());
            };
            let route = match &entry.target {
                Target::OpenApi(target) => operations.get(method).map(|op| Route::Http {
                    target: target.clone(),
                    op: op.clone(),
                }),
                Target::Mcp(target) => wire.get(method).map(|tool| Route::Mcp {
                    target: target.clone(),
                    tool: tool.clone(),
                }),
            };
            // Never a capability without its route: the forwarder would take it for a hero one.
            let route = route.ok_or_else(|| format!("internal: {method} has no route"))?;
            cap.route = Some(Arc::new(route));
            cap.timeout = def.timeout;
            cap.pending = pending.contains(method);
        }
        spec.source = Some(match def.kind {
            Kind::OpenApi { .. } => "openapi",
            _ => "mcp",
        });
        // The catalog tells a change by fingerprint: acceptance changes what is served.
        spec.fingerprint = hex::encode(Sha256::digest(format!("{fingerprint}/{}", pending.join(","))));
        for warning in &warnings {
            tracing::warn!(source = %def.name, %warning, "operation skipped or degraded");
        }
        entry.state = State {
            fingerprint: Some(fingerprint),
            digests,
            pending,
            warnings,
            error: None,
            input: None,
        };
        Ok(spec)
    }

    /// `sources.list`: each source, its status, fingerprints and pending operations.
    pub async fn list(&self) -> Value {
        let live = self.0.live.lock().await;
        let sources: Vec<Value> = live.values().map(|l| self.describe(l)).collect();
        json!({"file": self.file_name(), "sources": sources})
    }

    fn describe(&self, live: &Live) -> Value {
        let def = &live.def;
        let accepted = self.0.accepted.get(&def.name);
        let state = &live.state;
        let status = match (&state.error, state.pending.is_empty()) {
            (Some(_), _) => "unavailable",
            (None, false) => "changed",
            (None, true) => "ok",
        };
        let mut entry = json!({
            "name": def.name,
            "kind": match def.kind { Kind::OpenApi { .. } => "openapi", _ => "mcp" },
            "status": status,
            "error": state.error,
            "fingerprint": state.fingerprint,
            "accepted": accepted.as_ref().map(|a| json!({
                "fingerprint": a.fingerprint, "at": a.accepted_at, "by": a.accepted_by,
            })),
            "operations": state.digests.keys().collect::<Vec<_>>(),
            "pending": state.pending,
            "warnings": state.warnings,
            "auth": def.auth.as_ref().map(file::Auth::describe),
            "timeout_ms": def.timeout.map(|t| t.as_millis() as u64),
        });
        match (&def.kind, &live.target) {
            (Kind::OpenApi { spec, base }, _) => {
                entry["spec"] = json!(spec.display().to_string());
                entry["base_url"] = json!(match base {
                    BaseUrl::Http(url) => url.to_string(),
                    BaseUrl::Unix(path) => format!("unix:{}", path.display()),
                });
            }
            (Kind::McpStdio { command, args, .. }, Target::Mcp(t)) => {
                entry["command"] = json!(command);
                entry["args"] = json!(args);
                entry["connection"] = t.status();
            }
            (Kind::McpHttp { url, .. }, Target::Mcp(t)) => {
                entry["url"] = json!(url.to_string());
                entry["connection"] = t.status();
            }
            _ => {}
        }
        entry
    }

    /// `sources.accept`: what the source serves now becomes what is accepted.
    pub async fn accept(&self, name: &str, fingerprint: Option<&str>, by: &str) -> Result<Value, ExecError> {
        let mut live = self.0.live.lock().await;
        let entry = live
            .get(name)
            .ok_or_else(|| ExecError::NotFound(format!("no source {name:?}")))?;
        let Some(current) = entry.state.fingerprint.clone() else {
            return Err(ExecError::Conflict(format!(
                "source {name} serves nothing yet ({}): nothing to accept",
                entry.state.error.as_deref().unwrap_or("not read")
            )));
        };
        // What the admin reviewed must still be what is served.
        if let Some(reviewed) = fingerprint.filter(|r| *r != current) {
            return Err(ExecError::Conflict(format!(
                "source {name} serves {current} now, not {reviewed}: review sources.list again"
            )));
        }
        let accepted = Accepted {
            fingerprint: current,
            operations: entry.state.digests.clone(),
            accepted_at: crate::runs::now_ms(),
            accepted_by: by.to_owned(),
        };
        self.0.accepted.set(name, accepted).map_err(ExecError::Internal)?;
        let newly: Vec<String> = entry.state.pending.clone();
        tracing::info!(source = %name, accepted_by = %by, operations = ?newly, "source accepted");
        self.rebuild(&mut live, name, None).await;
        let mut described = live.get(name).map(|l| self.describe(l)).unwrap_or_default();
        described["newly_accepted"] = json!(newly);
        Ok(described)
    }
}

/// Reads a spec file (bounded), its fingerprint (sha-256 of the bytes) and its JSON.
fn read_spec(path: &Path, limits: &SpecLimits) -> Result<(String, Value), String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking, so a FIFO at the path is refused below rather than waited on (with the
    // reload lock held). It changes nothing for a regular file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| e.to_string())?;
    if !file.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".to_owned());
    }
    let mut raw = String::new();
    file.take(limits.max_bytes as u64 + 1)
        .read_to_string(&mut raw)
        .map_err(|e| e.to_string())?;
    if raw.len() > limits.max_bytes {
        return Err(format!("the spec exceeds the limit of {} bytes", limits.max_bytes));
    }
    let fingerprint = hex::encode(Sha256::digest(raw.as_bytes()));
    Ok((fingerprint, openapi::parse_text(&raw)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec path that is a FIFO (or a directory) is refused at once, not waited on.
    #[test]
    fn a_spec_that_is_not_a_regular_file_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("spec.fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
        let limits = SpecLimits::default();
        for path in [fifo.as_path(), dir.path()] {
            assert_eq!(read_spec(path, &limits).unwrap_err(), "not a regular file", "{path:?}");
        }
    }
}
