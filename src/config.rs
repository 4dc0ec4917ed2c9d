//! Paths, limits and defaults. Built from the CLI in `main.rs`, or directly by tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Who may call without a signature over a Unix socket (DESIGN section 6, step 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UnsignedLocal {
    /// Peers with the daemon's own uid get full trust (hero convention).
    Owner,
    /// Every request must be signed (hardened setups).
    Off,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything the daemon needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// `$HERO_SOCKET_DIR`: where every hero service keeps `<name>/rpc.sock`.
    pub socket_dir: PathBuf,
    /// `$HERO_EXECUTOR_DATA`: database, signing key, policy.
    pub data_dir: PathBuf,
    /// Optional TCP listener for remote callers (signatures always required there).
    pub listen: Option<SocketAddr>,
    /// Optional TCP listener that serves only `GET /metrics` and `/health`, unauthenticated.
    pub metrics_listen: Option<SocketAddr>,
    /// OpenTelemetry export (`--otlp-endpoint`, `--otlp-runs`); off when `None`.
    pub otlp: Option<crate::telemetry::OtlpConfig>,
    /// Timeout for `rpc.discover` on a target while building the catalog.
    pub discover_timeout: Duration,
    /// Largest request body accepted on any surface.
    pub max_body_bytes: usize,
    /// Largest answer accepted from a target.
    pub max_response_bytes: usize,
    /// A request's headers must arrive within this.
    pub header_read_timeout: Duration,
    /// A request's body must arrive within this (after its headers).
    pub body_read_timeout: Duration,
    /// Largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// Largest JSON-RPC batch.
    pub max_batch: usize,
    /// Unsigned local callers policy.
    pub unsigned_local: UnsignedLocal,
    /// Periodic catalog refresh interval (besides the directory watch).
    pub catalog_refresh: Duration,
    /// How long in-flight calls may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// Request signature freshness and replay rules.
    pub signatures: crate::identity::verify::SignatureRules,
    /// Requests per second per principal (0: unlimited), and the burst allowed.
    pub rate_limit: (f64, f64),
    /// Requests in flight across all listeners; more are shed with 503.
    pub max_concurrent: usize,
    /// Requests in flight for one peer and claimed identity; more are shed with 503.
    pub max_concurrent_per_peer: usize,
    /// Host names the console answers to besides the loopback ones (DNS rebinding).
    pub ui_hosts: Vec<String>,
    /// MCP sessions and event streams.
    pub mcp: crate::adapters::mcp::McpLimits,
    /// What one service's spec may cost.
    pub spec_limits: crate::catalog::SpecLimits,
    /// Calls in flight to one target service; more wait (within their timeout).
    pub max_per_target: usize,
    /// Policy file (`None`: the embedded default).
    pub policy: Option<PathBuf>,
    /// Sources file: OpenAPI services and MCP servers as targets (`None`: none).
    pub sources: Option<PathBuf>,
    /// What one agent script may cost (`script.run`).
    pub scripts: crate::script::ScriptLimits,
    /// Call timeout, approval expiry, run storage limits.
    pub core: crate::dispatch::CoreConfig,
}

impl Config {
    /// A config with every default, for the given directories.
    pub fn new(socket_dir: impl Into<PathBuf>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            socket_dir: socket_dir.into(),
            data_dir: data_dir.into(),
            listen: None,
            metrics_listen: None,
            otlp: None,
            discover_timeout: Duration::from_secs(5),
            max_body_bytes: 4 * 1024 * 1024,
            max_response_bytes: 16 * 1024 * 1024,
            max_batch: 100,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            unsigned_local: UnsignedLocal::Owner,
            catalog_refresh: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            signatures: Default::default(),
            policy: None,
            sources: None,
            scripts: Default::default(),
            rate_limit: (1000.0, 2000.0),
            max_concurrent: 1024,
            max_concurrent_per_peer: 256,
            ui_hosts: Vec::new(),
            mcp: Default::default(),
            spec_limits: Default::default(),
            max_per_target: 64,
            core: crate::dispatch::CoreConfig {
                call_timeout: Duration::from_secs(30),
                approval_ttl: Duration::from_secs(3600),
                payload_cap: 64 * 1024,
                retention: Some(Duration::from_secs(30 * 24 * 3600)),
                local_owner: None,
            },
        }
    }

    /// `<socket_dir>/hero_executor`.
    pub fn own_socket_dir(&self) -> PathBuf {
        self.socket_dir.join(crate::SERVICE_NAME)
    }

    /// `<socket_dir>/hero_executor/rpc.sock`.
    pub fn rpc_socket(&self) -> PathBuf {
        self.own_socket_dir().join("rpc.sock")
    }

    /// `<socket_dir>/hero_executor/rest.sock`.
    pub fn rest_socket(&self) -> PathBuf {
        self.own_socket_dir().join("rest.sock")
    }

    /// `<socket_dir>/hero_executor/ui.sock` (the operator console).
    pub fn ui_socket(&self) -> PathBuf {
        self.own_socket_dir().join("ui.sock")
    }
}

/// Resolves the socket dir: flag, then `$HERO_SOCKET_DIR`, then `$PATH_SOCKET`, then
/// `~/hero/var/sockets`.
pub fn default_socket_dir(flag: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(dir) = flag {
        return Ok(dir.to_owned());
    }
    for var in ["HERO_SOCKET_DIR", "PATH_SOCKET"] {
        if let Some(dir) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(dir));
        }
    }
    home_subdir("hero/var/sockets", "--socket-dir or HERO_SOCKET_DIR")
}

/// Resolves the data dir: flag, then `$HERO_EXECUTOR_DATA`, then `~/hero/var/hero_executor`.
pub fn default_data_dir(flag: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(dir) = flag {
        return Ok(dir.to_owned());
    }
    if let Some(dir) = std::env::var_os("HERO_EXECUTOR_DATA").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    home_subdir("hero/var/hero_executor", "--data-dir or HERO_EXECUTOR_DATA")
}

fn home_subdir(sub: &str, alternative: &str) -> Result<PathBuf, String> {
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(sub)),
        None => Err(format!("$HOME is not set: use {alternative}")),
    }
}
