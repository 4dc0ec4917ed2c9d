//! MCP surface (DESIGN section 5): Streamable HTTP at `/mcp` on rpc.sock and the TCP
//! listener, on the official Rust SDK (`rmcp`). The identity layer runs first; each tool
//! call reads the verified [`Caller`] from the HTTP request parts rmcp hands to handlers,
//! and goes through the same dispatcher (policy, runs) as every other surface.
//!
//! Default tools are a few meta-tools (`search`, `describe`, `execute`, `run_status`, and
//! `approve`/`reject` for approvers), so a large catalog does not flood a model's context.
//! `/mcp?tools=direct` lists each capability the caller may run as its own tool.

use std::sync::{Arc, Mutex};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, InitializeRequestParams,
    InitializeResult, ListToolsResult, PaginatedRequestParams, ServerCapabilities, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::catalog::Capability;
use crate::catalog::spec::{Idempotency, SideEffect};
use crate::command::{Approve, CatalogSearch, Command, Describe, Execute, Reject, RunsWait};
use crate::error::{ExecError, Failure};
use crate::intent::{Caller, CapabilityName, Surface};

mod sessions;

pub use sessions::{McpLimits, Sessions};

/// Tools per `tools/list` page in direct mode.
const PAGE: usize = 50;

/// `/mcp` (GET, POST, DELETE: Streamable HTTP). `remote` is for the TCP listener.
pub fn routes(state: &AppState, remote: bool) -> axum::Router<AppState> {
    axum::Router::new()
        .route_service("/mcp", service(state.clone(), remote))
        .layer(axum::middleware::from_fn_with_state(
            state.mcp_sessions.clone(),
            sessions::guard,
        ))
}

/// The `/mcp` service: one [`McpServer`] per MCP session.
///
/// rmcp checks `Host` against loopback names to stop DNS rebinding from a local browser.
/// The TCP listener requires signatures, which a rebinding page cannot make, so the check
/// is off there and remote callers may use their own host names.
pub fn service(state: AppState, remote: bool) -> StreamableHttpService<McpServer, LocalSessionManager> {
    let mut config = StreamableHttpServerConfig::default();
    if remote {
        config = config.disable_allowed_hosts();
    }
    config.max_request_body_bytes = state.config.max_body_bytes;
    let manager = state.mcp_sessions.manager();
    StreamableHttpService::new(move || Ok(McpServer::new(state.clone())), manager, config)
}

/// The MCP server of one session, bound to the principal that opened it.
#[derive(Clone)]
pub struct McpServer {
    state: AppState,
    principal: Arc<Mutex<Option<String>>>,
    /// Dropped with the last clone of this server, i.e. when the session ends.
    _alive: Arc<tokio::sync::oneshot::Sender<()>>,
    /// Resolves when the session ends; taken by the one task that watches the catalog.
    ended: Arc<Mutex<Option<tokio::sync::oneshot::Receiver<()>>>>,
}

impl McpServer {
    fn new(state: AppState) -> Self {
        let (alive, ended) = tokio::sync::oneshot::channel();
        Self {
            state,
            principal: Arc::default(),
            _alive: Arc::new(alive),
            ended: Arc::new(Mutex::new(Some(ended))),
        }
    }

    /// The verified caller of this request; a session stays with the principal that opened it.
    fn caller(&self, ctx: &RequestContext<RoleServer>) -> Result<(Caller, bool), McpError> {
        let parts = ctx.extensions.get::<http::request::Parts>();
        let caller = parts
            .and_then(|p| p.extensions.get::<Caller>())
            .cloned()
            .ok_or_else(|| McpError::invalid_request("no verified identity on this request", None))?;
        let direct = parts
            .and_then(|p| p.uri.query())
            .is_some_and(|q| q.split('&').any(|kv| kv == "tools=direct"));
        let mut bound = self.principal.lock().unwrap_or_else(|p| p.into_inner());
        match bound.as_deref() {
            None => *bound = Some(caller.principal.id.clone()),
            Some(owner) if owner != caller.principal.id => {
                return Err(McpError::invalid_request(
                    "this MCP session belongs to another principal",
                    None,
                ));
            }
            Some(_) => {}
        }
        Ok((caller, direct))
    }
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new(crate::SERVICE_NAME, crate::VERSION))
        .with_instructions(
            "hero_executor runs capabilities of the services on this HERO node under policy. \
                 Use `search` to find a capability, `describe` to see its params, `execute` to run it. \
                 A call may be held for a human's approval: then `run_status` waits for its outcome.",
        )
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        self.caller(&context)?;
        context.peer.set_peer_info(request.clone());
        // Tell the client when the set of capabilities changes, for as long as the session
        // lives: the task ends when the session's server is dropped (closed or expired).
        let peer = context.peer.clone();
        let mut changes = self.state.dispatcher.catalog().subscribe();
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut ended) = ended {
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = &mut ended => break,
                        changed = changes.changed() => {
                            if changed.is_err() || peer.notify_tool_list_changed().await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
        self.negotiate_initialize(&request)
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let (caller, direct) = self.caller(&context)?;
        if !direct {
            let mut tools = meta_tools(&self.state, &caller);
            tools.extend(status_tools(&self.state, &caller));
            return Ok(ListToolsResult::with_all_items(tools));
        }
        let snapshot = self.state.dispatcher.catalog().snapshot();
        let may_see = self.state.dispatcher.visible(&caller, &snapshot);
        let visible: Vec<&Arc<Capability>> = snapshot.capabilities().filter(|c| may_see.contains(c)).collect();
        let start = match request.and_then(|r| r.cursor) {
            None => 0,
            Some(cursor) => cursor
                .parse::<usize>()
                .map_err(|_| McpError::invalid_params("invalid cursor", None))?,
        };
        let mut tools: Vec<Tool> = visible.iter().skip(start).take(PAGE).map(|c| direct_tool(c)).collect();
        // Held calls are collected (and decided) with these, in direct mode too.
        if start == 0 {
            tools.extend(status_tools(&self.state, &caller));
        }
        let mut result = ListToolsResult::with_all_items(tools);
        if start + PAGE < visible.len() {
            result.next_cursor = Some((start + PAGE).to_string());
        }
        Ok(result)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        use tracing::Instrument;
        use tracing::field::Empty;
        // rmcp runs tools on the session's task, outside the HTTP request's span: one span
        // and one line per tool call, with the MCP request id.
        let span = tracing::info_span!("mcp", mcp_id = %context.id, tool = %request.name,
            principal = Empty, user = Empty, call = Empty, run_id = Empty, code = Empty, error = Empty);
        async move {
            let response = self.tool(request, context).await;
            match &response {
                Ok(_) => tracing::info!("tool answered"),
                Err(e) => tracing::info!(code = e.code.0, error = %e.message, "tool refused"),
            }
            response
        }
        .instrument(span)
        .await
    }
}

impl McpServer {
    async fn tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let (caller, direct) = self.caller(&context)?;
        let span = tracing::Span::current();
        span.record("principal", tracing::field::display(&caller.principal.id));
        if let Some(user) = &caller.user {
            span.record("user", tracing::field::display(user));
        }
        let args = Value::Object(request.arguments.clone().unwrap_or_default());
        let key = context
            .extensions
            .get::<http::request::Parts>()
            .map(|parts| super::openrpc::idempotency_key(&parts.headers))
            .transpose()
            .map(Option::flatten);
        let command = match direct {
            true => direct_command(&self.state, &caller, &request.name, args),
            false => meta_command(&request.name, args),
        }
        // An `Idempotency-Key` header applies to a capability call (other tools ignore it).
        .and_then(|command| match (command, key?) {
            (command @ Command::Execute(_), key) => command.with_idempotency_key(key),
            (command, _) => Ok(command),
        });
        let outcome = match command {
            Ok(command) => command.apply(&self.state.dispatcher, &caller, Surface::Mcp).await,
            Err(error) => Err(error.into()),
        };
        Ok(match outcome {
            Ok(result) => success(serde_json::from_str(result.get()).unwrap_or(Value::Null)),
            Err(f) => failure(f),
        }
        .into())
    }
}

/// The command a meta-tool call stands for.
fn meta_command(tool: &str, args: Value) -> Result<Command, ExecError> {
    let text = |key: &str| args.get(key).and_then(Value::as_str).map(str::to_owned);
    let required =
        |key: &str| text(key).ok_or_else(|| ExecError::invalid_params(format!("{tool} needs {key} (a string)")));
    Ok(match tool {
        "search" => Command::CatalogSearch(CatalogSearch {
            query: required("query")?,
            service: None,
            limit: Some(args.get("limit").and_then(Value::as_u64).unwrap_or(10) as usize),
        }),
        "describe" => Command::CatalogDescribe(Describe {
            capability: required("capability")?,
        }),
        "execute" => Command::Execute(Execute {
            idempotency_key: text("idempotency_key"),
            ..Execute::new(required("capability")?, args.get("params").cloned())
        }),
        // Checked as the JSON-RPC methods check them (a malformed field is an error, not
        // left out).
        "interface" => Command::parse("catalog.interface", Some(args.clone()))?,
        "run_script" => Command::parse("script.run", Some(args.clone()))?,
        other => return status_command(other, &args).unwrap_or_else(|| Err(no_tool(other))),
    })
}

/// The tools of both modes: `run_status`, and `approve` / `reject` for approvers.
fn status_command(tool: &str, args: &Value) -> Option<Result<Command, ExecError>> {
    if !matches!(tool, "run_status" | "approve" | "reject") {
        return None;
    }
    let text = |key: &str| args.get(key).and_then(Value::as_str).map(str::to_owned);
    let Some(run_id) = text("run_id") else {
        return Some(Err(ExecError::invalid_params(format!(
            "{tool} needs run_id (a string)"
        ))));
    };
    Some(Ok(match tool {
        "run_status" => Command::RunsWait(RunsWait {
            run_id,
            timeout_ms: Some(args.get("wait_ms").and_then(Value::as_u64).unwrap_or(0)),
        }),
        "approve" => Command::RunsApprove(Approve {
            run_id,
            note: text("note"),
        }),
        _ => Command::RunsReject(Reject {
            run_id,
            reason: text("reason"),
        }),
    }))
}

/// The command a direct-mode tool call stands for. A tool the caller may see runs its
/// capability; any other name that is a capability name is executed too, so policy answers
/// a capability the caller may not see exactly as one that does not exist (denied).
fn direct_command(state: &AppState, caller: &Caller, tool: &str, args: Value) -> Result<Command, ExecError> {
    if let Some(command) = status_command(tool, &args) {
        return command;
    }
    let snapshot = state.dispatcher.catalog().snapshot();
    let visible = state.dispatcher.visible(caller, &snapshot);
    let capability = snapshot
        .capabilities()
        .filter(|c| visible.contains(c))
        .find(|c| tool_name(&c.name) == tool)
        .map(|c| c.name.clone());
    match capability {
        Some(name) => Ok(Command::Execute(Execute::new(name, Some(args)))),
        None if CapabilityName::parse(tool).is_ok() => Ok(Command::Execute(Execute::new(tool, Some(args)))),
        None => Err(no_tool(tool)),
    }
}

fn no_tool(name: &str) -> ExecError {
    ExecError::NotFound(format!("no tool {name}"))
}

fn success(value: Value) -> CallToolResult {
    let text = serde_json::to_string_pretty(&value).unwrap_or_default();
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    // structuredContent is an object; other results are wrapped.
    result.structured_content = Some(match value {
        Value::Object(_) => value,
        other => json!({ "result": other }),
    });
    result
}

/// A held call is a normal result (the model should wait, not retry); errors are tool errors.
fn failure(f: Failure) -> CallToolResult {
    if let ExecError::ApprovalPending { run_id, expires_at } = &f.error {
        return success(json!({
            "status": "awaiting_approval",
            "run_id": run_id,
            "expires_at": expires_at,
            "console": crate::console::run_path(run_id),
            "next": "call run_status with this run_id and wait_ms to wait for the outcome",
        }));
    }
    let error = f.error.to_jsonrpc(f.run_id.as_deref());
    let mut result = CallToolResult::error(vec![ContentBlock::text(format!(
        "error {}: {}",
        f.error.code(),
        f.error.public_message()
    ))]);
    result.structured_content = Some(json!({ "error": error }));
    result
}

fn schema(value: Value) -> Arc<Map<String, Value>> {
    Arc::new(value.as_object().cloned().unwrap_or_default())
}

/// The meta-tools this caller may use; `execute` names the services it can reach.
fn meta_tools(state: &AppState, caller: &Caller) -> Vec<Tool> {
    let snapshot = state.dispatcher.catalog().snapshot();
    let visible = state.dispatcher.visible(caller, &snapshot);
    let services: Vec<&str> = snapshot
        .services
        .values()
        .filter(|s| s.capabilities.values().any(|c| visible.contains(c)))
        .map(|s| s.name.as_str())
        .collect();
    let services = match services.is_empty() {
        true => "none yet".to_owned(),
        false => services.join(", "),
    };
    let read = ToolAnnotations::new().read_only(true).idempotent(true);
    vec![
        Tool::new(
            "search",
            "Find capabilities (service methods) you may run, by words in their name or description. \
             Start here when you do not know the exact capability name. To make many calls in one go, \
             read `interface` and write a script for `run_script`.",
            schema(json!({"type": "object", "properties": {
                "query": {"type": "string", "description": "words to look for, e.g. 'book search'"},
                "limit": {"type": "integer", "minimum": 1, "maximum": 200, "description": "at most this many (default 10)"}},
                "required": ["query"]})),
        )
        .with_annotations(read.clone()),
        Tool::new(
            "describe",
            "Show one capability in full: what it does, its params as JSON Schema, its result, and whether \
             calling it needs approval. Use before execute when unsure of the params. For many capabilities \
             at once, as script functions, use `interface`.",
            schema(json!({"type": "object", "properties": {
                "capability": {"type": "string", "description": "<service>.<method>, as returned by search"}},
                "required": ["capability"]})),
        )
        .with_annotations(read.clone()),
        Tool::new(
            "interface",
            "Every capability you may run as one line each (function, typed params, result, description, \
             intent), in Rhai (default), typescript or python syntax: what a run_script script calls.",
            schema(json!({"type": "object", "properties": {
                "service": {"type": "string", "description": "only this service"},
                "language": {"enum": ["rhai", "typescript", "python"]}}})),
        )
        .with_annotations(read),
        Tool::new(
            "run_script",
            "Run a Rhai script that makes many calls in one go, as you (every call is decided by policy and \
             recorded as a run). Call capabilities as svc::method(#{...}) or invoke(\"svc.method\", #{...}); each \
             returns #{ok, result, run_id} or #{ok: false, error, run_id}. A call held for approval ends the \
             script with status awaiting_approval; run it again with the same idempotency_key once approved. \
             `args` holds the args given; print() output is returned.",
            schema(json!({"type": "object", "properties": {
                "source": {"type": "string", "description": "the Rhai script; its last expression is its value"},
                "args": {"description": "any JSON, bound to `args` in the script"},
                "timeout_ms": {"type": "integer", "minimum": 1},
                "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 200}},
                "required": ["source"]})),
        )
        .with_annotations(ToolAnnotations::new().destructive(true).open_world(true)),
        Tool::new(
            "execute",
            format!(
                "Run a capability with params. Services you can reach: {services}. Some calls are held for a \
                 human's approval: the result then has status awaiting_approval and a run_id to pass to run_status."
            ),
            schema(json!({"type": "object", "properties": {
                "capability": {"type": "string", "description": "<service>.<method>"},
                "params": {"type": "object", "description": "the capability's params, by name (see describe)"},
                "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 256,
                    "description": "a retry with the same key gets the first call's outcome instead of running again"}},
                "required": ["capability"]})),
        )
        .with_annotations(ToolAnnotations::new().destructive(true).open_world(true)),
    ]
}

/// `run_status`, and `approve` / `reject` for holders of an approver claim: in both modes.
fn status_tools(state: &AppState, caller: &Caller) -> Vec<Tool> {
    let read = ToolAnnotations::new().read_only(true).idempotent(true);
    let mut tools = vec![
        Tool::new(
            "run_status",
            "Get the status and outcome of a run (a call held for approval, or any earlier call), waiting up \
             to wait_ms for it to finish.",
            schema(json!({"type": "object", "properties": {
                "run_id": {"type": "string"},
                "wait_ms": {"type": "integer", "minimum": 0, "maximum": 600000, "description": "how long to wait for a final status (default 0)"}},
                "required": ["run_id"]})),
        )
        .with_annotations(read),
    ];
    let approver = state
        .dispatcher
        .policy()
        .approver_claims()
        .iter()
        .any(|c| caller.claims.holds(c));
    if approver {
        let decide = |verb: &str, extra: &str| {
            json!({"type": "object", "properties": {
                "run_id": {"type": "string", "description": format!("the held run to {verb}")},
                extra: {"type": "string"}}, "required": ["run_id"]})
        };
        tools.push(Tool::new(
            "approve",
            "Approve a call that is waiting for approval (you hold an approver claim). It then runs. You cannot \
             approve your own calls.",
            schema(decide("approve", "note")),
        ));
        tools.push(Tool::new(
            "reject",
            "Reject a call that is waiting for approval.",
            schema(decide("reject", "reason")),
        ));
    }
    tools
}

/// A capability as its own tool: schemas from the service's spec, hints from `x-hero-intent`.
fn direct_tool(capability: &Capability) -> Tool {
    let description = match (&capability.summary, &capability.description) {
        (Some(s), Some(d)) => format!("{s}. {d}"),
        (Some(s), None) => s.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => format!("{} on {}", capability.method, capability.service),
    };
    let intent = &capability.intent;
    let annotations = ToolAnnotations::new()
        .read_only(intent.side_effect_class == SideEffect::Read)
        .destructive(matches!(
            intent.side_effect_class,
            SideEffect::MutateOthers | SideEffect::Admin
        ))
        .idempotent(matches!(
            intent.idempotency,
            Idempotency::Safe | Idempotency::ReplaySafe
        ));
    let mut tool = Tool::new(
        tool_name(&capability.name),
        description,
        schema(capability.params_schema()),
    )
    .with_annotations(annotations)
    .with_title(capability.name.clone());
    if let Some(output) = output_schema(capability) {
        tool = tool.with_raw_output_schema(schema(output));
    }
    tool
}

/// The result schema as an MCP `outputSchema` (which must describe an object): a top-level
/// `$ref` into the service's components is resolved, and the components it reaches kept.
fn output_schema(capability: &Capability) -> Option<Value> {
    let mut result = capability.result_schema()?;
    if let Some(name) = result
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
    {
        let components = result.get("components").cloned();
        result = components.as_ref()?.get("schemas")?.get(name)?.clone();
        if let Some(components) = components {
            result["components"] = components;
        }
    }
    (result.get("type").and_then(Value::as_str) == Some("object")).then_some(result)
}

/// A capability's MCP tool name: within `[A-Za-z0-9_.-]{1,128}`, deterministically.
pub fn tool_name(capability: &str) -> String {
    let mapped: String = capability
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if mapped.len() <= 128 && mapped == capability {
        return mapped;
    }
    // Changed or too long: keep it unique with a short hash of the original name.
    use sha2::Digest;
    let hash = hex::encode(&sha2::Sha256::digest(capability.as_bytes())[..4]);
    let keep = mapped.chars().take(128 - 9).collect::<String>();
    format!("{keep}-{hash}")
}

#[cfg(test)]
mod tests {
    use super::tool_name;

    #[test]
    fn tool_names_follow_the_mcp_rule() {
        assert_eq!(tool_name("echo.counter.add"), "echo.counter.add");
        let odd = tool_name("svc.path/with spaces");
        assert!(
            odd.starts_with("svc.path_with_spaces-") && odd.len() == "svc.path_with_spaces-".len() + 8,
            "{odd}"
        );
        assert_ne!(tool_name("svc.a/b"), tool_name("svc.a_b"), "mapping keeps names unique");
        let long = tool_name(&format!("svc.{}", "x".repeat(300)));
        assert_eq!(long.len(), 128);
        assert!(
            long.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        );
    }
}
