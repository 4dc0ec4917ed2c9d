//! MCP client side: a transport that signs every request to the daemon's `/mcp` (RFC 9421,
//! with the library's [`Signer`]), and `hero_executor mcp`, a stdio MCP server an LLM
//! runtime launches, which forwards every request to the daemon through that transport.
//!
//! The signing transport wraps rmcp's Unix-socket client: it serializes each message the
//! way that client does (`serde_json::to_string`), signs those bytes, and passes the
//! `Content-Digest` / `Signature-Input` / `Signature` headers along as custom headers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientJsonRpcMessage, InitializeResult, ListToolsResult,
    PaginatedRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext, RunningService};
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError, StreamableHttpPostResponse,
};
use rmcp::transport::{StreamableHttpClientTransport, UnixSocketHttpClient};
use rmcp::{ClientHandler, ErrorData as McpError, Peer, RoleClient, RoleServer, ServerHandler, ServiceExt};
use sse_stream::{Error as SseError, Sse};

use crate::client::Signer;

/// rmcp's Unix-socket HTTP client, with every request signed.
#[derive(Clone)]
pub struct SigningUnixClient {
    inner: UnixSocketHttpClient,
    signer: Option<Arc<Signer>>,
}

type Error = <UnixSocketHttpClient as StreamableHttpClient>::Error;

impl SigningUnixClient {
    /// A client of the daemon's `rpc.sock`; unsigned (owner) when `signer` is `None`.
    pub fn new(socket: &Path, signer: Option<Signer>) -> Self {
        Self {
            inner: UnixSocketHttpClient::new(&socket.to_string_lossy(), "http://localhost/mcp"),
            signer: signer.map(Arc::new),
        }
    }

    fn sign(&self, method: Method, uri: &str, headers: &mut HashMap<HeaderName, HeaderValue>, body: &[u8]) {
        let Some(signer) = &self.signer else { return };
        let Ok(uri) = uri.parse::<Uri>() else { return };
        let mut map: HeaderMap = headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Err(e) = signer.sign(&method, &uri, &mut map, body, crate::now_unix()) {
            tracing::error!(error = %e, "cannot sign an MCP request");
            return;
        }
        for name in ["content-digest", "signature-input", "signature"] {
            if let Some(value) = map.get(name) {
                headers.insert(HeaderName::from_static(name), value.clone());
            }
        }
    }
}

impl StreamableHttpClient for SigningUnixClient {
    type Error = Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        mut custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        // The same bytes the inner client will send.
        let body = serde_json::to_string(&message).unwrap_or_default();
        self.sign(Method::POST, &uri, &mut custom_headers, body.as_bytes());
        self.inner
            .post_message(uri, message, session_id, auth_header, custom_headers)
            .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        mut custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        self.sign(Method::DELETE, &uri, &mut custom_headers, b"");
        self.inner
            .delete_session(uri, session_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        mut custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        self.sign(Method::GET, &uri, &mut custom_headers, b"");
        self.inner
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
            .await
    }
}

/// Connects an MCP client to the daemon at `socket` (`rpc.sock`), meta-tools or direct tools.
pub async fn connect<H: ClientHandler>(
    socket: &Path,
    signer: Option<Signer>,
    direct_tools: bool,
    handler: H,
) -> Result<RunningService<RoleClient, H>, String> {
    let uri = if direct_tools {
        "http://localhost/mcp?tools=direct"
    } else {
        "http://localhost/mcp"
    };
    let transport = StreamableHttpClientTransport::with_client(
        SigningUnixClient::new(socket, signer),
        StreamableHttpClientTransportConfig::with_uri(uri),
    );
    handler
        .serve(transport)
        .await
        .map_err(|e| format!("MCP handshake with the executor failed: {e}"))
}

/// `hero_executor mcp`: serves MCP on stdin/stdout and forwards to the daemon. Logs go to
/// stderr only; stdout carries the protocol.
pub async fn run_stdio_bridge(socket: &Path, signer: Option<Signer>, direct_tools: bool) -> Result<(), String> {
    let downstream: Arc<Mutex<Option<Peer<RoleServer>>>> = Arc::default();
    let upstream = connect(
        socket,
        signer,
        direct_tools,
        Upstream {
            downstream: downstream.clone(),
        },
    )
    .await?;
    // Present the daemon's capabilities, name and instructions as the bridge's own.
    let info = upstream.peer().peer_info().map(|i| {
        let mut result = InitializeResult::new(i.capabilities.clone());
        if let Some(server) = &i.server_info {
            result = result.with_server_info(server.clone());
        }
        if let Some(instructions) = &i.instructions {
            result = result.with_instructions(instructions.clone());
        }
        result
    });
    let bridge = Bridge {
        upstream: upstream.peer().clone(),
        info,
        downstream,
    };
    let running = bridge
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| format!("MCP on stdio failed: {e}"))?;
    let _ = running.waiting().await;
    let _ = upstream.cancel().await;
    Ok(())
}

/// The daemon side of the bridge: passes tool-list changes on to the LLM runtime.
struct Upstream {
    downstream: Arc<Mutex<Option<Peer<RoleServer>>>>,
}

impl ClientHandler for Upstream {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let peer = self.downstream.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(peer) = peer {
            let _ = peer.notify_tool_list_changed().await;
        }
    }
}

/// The runtime side of the bridge: every request goes to the daemon.
#[derive(Clone)]
struct Bridge {
    upstream: Peer<RoleClient>,
    info: Option<InitializeResult>,
    downstream: Arc<Mutex<Option<Peer<RoleServer>>>>,
}

fn upstream_error(e: impl std::fmt::Display) -> McpError {
    McpError::internal_error(format!("the executor: {e}"), None)
}

impl ServerHandler for Bridge {
    fn get_info(&self) -> InitializeResult {
        self.info
            .clone()
            .unwrap_or_else(|| InitializeResult::new(Default::default()))
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        self.downstream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(context.peer.clone());
        self.upstream.list_tools(request).await.map_err(upstream_error)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        self.downstream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(context.peer.clone());
        self.upstream
            .call_tool(request)
            .await
            .map(Into::into)
            .map_err(upstream_error)
    }
}
