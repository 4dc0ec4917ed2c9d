//! Command-line interface (clap). `main.rs` turns it into a [`Config`] and runs.

mod run;

pub use run::{Failed, run};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config, LogFormat, UnsignedLocal};

/// hero_executor: the secure execution gateway of a HERO node.
///
/// With no subcommand, runs the daemon in the foreground.
#[derive(Debug, Parser)]
#[command(name = "hero_executor", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Register with hero_proc, start under it, and wait until /health answers (idempotent)
    #[arg(long, conflicts_with_all = ["stop", "info"])]
    pub start: bool,

    /// Stop through hero_proc, or signal the instance holding the lock file, and wait
    #[arg(long, conflicts_with = "info")]
    pub stop: bool,

    /// Print the service description (name, version, binary, sockets, protocols) as TOML
    #[arg(long)]
    pub info: bool,

    /// How long --start and --stop wait, in seconds
    #[arg(long, default_value_t = 10)]
    pub start_timeout_secs: u64,

    /// Hero socket directory [default: $HERO_SOCKET_DIR, $PATH_SOCKET, ~/hero/var/sockets]
    #[arg(long, global = true)]
    pub socket_dir: Option<PathBuf>,

    /// Data directory [default: $HERO_EXECUTOR_DATA, ~/hero/var/hero_executor]
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,

    /// Also listen on TCP (e.g. 127.0.0.1:9944); signatures are always required there
    #[arg(long, env = "HERO_EXECUTOR_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Serve GET /metrics (and /health) on this TCP address for scrapers, with no
    /// authentication: bind it where only they reach (e.g. 127.0.0.1:9464)
    #[arg(long, env = "HERO_EXECUTOR_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Send traces over OTLP/HTTP to this collector (e.g. http://127.0.0.1:4318;
    /// /v1/traces is appended). Off when unset
    #[arg(long, env = "HERO_EXECUTOR_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// Also send every finished run to the OTLP collector as a log record (/v1/logs);
    /// needs --otlp-endpoint
    #[arg(long, env = "HERO_EXECUTOR_OTLP_RUNS", value_parser = clap::builder::BoolishValueParser::new())]
    pub otlp_runs: bool,

    /// Log format
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "HERO_EXECUTOR_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Per-call timeout for forwarded calls, in milliseconds
    #[arg(long, default_value_t = 30_000, env = "HERO_EXECUTOR_CALL_TIMEOUT_MS")]
    pub call_timeout_ms: u64,

    /// Largest accepted request body, in bytes
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest JSON-RPC batch
    #[arg(long, default_value_t = 100)]
    pub max_batch: usize,

    /// Unsigned calls over a Unix socket: `owner` trusts the daemon's own uid, `off` requires signatures
    #[arg(long, value_enum, default_value_t = UnsignedLocal::Owner, env = "HERO_EXECUTOR_UNSIGNED_LOCAL")]
    pub unsigned_local: UnsignedLocal,

    /// Periodic catalog refresh, in seconds (the socket directory is also watched)
    #[arg(long, default_value_t = 30)]
    pub catalog_refresh_secs: u64,

    /// How long in-flight calls may take to finish on SIGTERM/SIGINT, in seconds
    #[arg(long, default_value_t = 10)]
    pub drain_timeout_secs: u64,

    /// Request signatures older than this (their `created`) are refused, in seconds
    #[arg(long, default_value_t = 300)]
    pub signature_max_age_secs: u64,

    /// Policy file (TOML); reloaded on SIGHUP and `policy.reload` [default: embedded]
    #[arg(long, env = "HERO_EXECUTOR_POLICY")]
    pub policy: Option<PathBuf>,

    /// Sources file (TOML): OpenAPI services and MCP servers as targets; reloaded on SIGHUP
    /// and `sources.reload`
    #[arg(long, env = "HERO_EXECUTOR_SOURCES")]
    pub sources: Option<PathBuf>,

    /// How long a call held for approval waits before it expires, in seconds
    #[arg(long, default_value_t = 3600)]
    pub approval_ttl_secs: u64,

    /// Params and results larger than this are not stored on runs (their hash is), in bytes
    #[arg(long, default_value_t = 64 * 1024)]
    pub run_payload_cap_bytes: usize,

    /// Final runs older than this are pruned, in days (0 keeps them forever)
    #[arg(long, default_value_t = 30)]
    pub runs_retention_days: u64,

    /// Requests per second per principal (0: unlimited)
    #[arg(long, default_value_t = 1000.0)]
    pub rate_limit_rps: f64,

    /// Burst of requests a principal may send above its rate
    #[arg(long, default_value_t = 2000.0)]
    pub rate_limit_burst: f64,

    /// Requests in flight across all listeners; more are shed with 503
    #[arg(long, default_value_t = 1024)]
    pub max_concurrent: usize,

    /// Requests in flight for one peer (process or TCP address) and claimed identity; more are shed with 503
    #[arg(long, default_value_t = 256)]
    pub max_concurrent_per_peer: usize,

    /// A host name the console (ui.sock) answers to besides localhost, 127.0.0.1 and [::1]
    /// (e.g. the name a node's router serves it under); repeat or comma-separate
    #[arg(long = "ui-host", env = "HERO_EXECUTOR_UI_HOSTS", value_delimiter = ',')]
    pub ui_hosts: Vec<String>,

    /// A request body must arrive within this after its headers, in seconds (else 408)
    #[arg(long, default_value_t = 10)]
    pub body_read_timeout_secs: u64,

    /// MCP sessions open at once, in all
    #[arg(long, default_value_t = 1024)]
    pub mcp_max_sessions: usize,

    /// MCP sessions open at once per principal (and user)
    #[arg(long, default_value_t = 32)]
    pub mcp_max_sessions_per_principal: usize,

    /// An MCP session unused this long is closed, in seconds
    #[arg(long, default_value_t = 600)]
    pub mcp_session_idle_secs: u64,

    /// MCP event streams (GET /mcp) open at once
    #[arg(long, default_value_t = 256)]
    pub mcp_max_streams: usize,

    /// An MCP event stream is ended after this long, in seconds (the client opens another)
    #[arg(long, default_value_t = 3600)]
    pub mcp_stream_max_secs: u64,

    /// Largest `rpc.discover` document accepted from a service, in bytes
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub max_spec_bytes: usize,

    /// Most methods served per service (the rest are skipped with a warning)
    #[arg(long, default_value_t = 10_000)]
    pub max_methods_per_service: usize,

    /// Async worker threads [default: one per core less one, at least one]
    #[arg(long, env = "HERO_EXECUTOR_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,

    /// Calls in flight to one target service; more wait within their timeout
    #[arg(long, default_value_t = 64)]
    pub max_per_target: usize,

    /// Rhai operations one script may run (script.run)
    #[arg(long, default_value_t = 1_000_000)]
    pub script_max_operations: u64,

    /// Capability calls one script may make
    #[arg(long, default_value_t = 100)]
    pub script_max_calls: usize,

    /// A script's wall time when the caller names none, in milliseconds
    #[arg(long, default_value_t = 10_000)]
    pub script_timeout_ms: u64,

    /// The longest wall time a caller may ask for a script, in milliseconds
    #[arg(long, default_value_t = 60_000)]
    pub script_max_timeout_ms: u64,

    /// Scripts running at once (each holds a thread); more wait their turn
    #[arg(long, default_value_t = 4)]
    pub script_max_concurrent: usize,

    /// Require a `nonce` on request signatures (replays are refused)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub require_nonce: bool,
}

impl Cli {
    /// The daemon flags that reproduce `config` and these options, with absolute paths: what
    /// `--start` asks hero_proc to run.
    pub fn daemon_args(&self, config: &Config) -> Vec<String> {
        let absolute = |p: &std::path::Path| {
            std::path::absolute(p)
                .unwrap_or_else(|_| p.to_owned())
                .display()
                .to_string()
        };
        let mut args = vec![
            "--socket-dir".to_owned(),
            absolute(&config.socket_dir),
            "--data-dir".to_owned(),
            absolute(&config.data_dir),
            "--log-format".to_owned(),
            format!("{:?}", self.log_format).to_lowercase(),
            "--call-timeout-ms".to_owned(),
            self.call_timeout_ms.to_string(),
            "--max-body-bytes".to_owned(),
            self.max_body_bytes.to_string(),
            "--max-batch".to_owned(),
            self.max_batch.to_string(),
            "--unsigned-local".to_owned(),
            format!("{:?}", self.unsigned_local).to_lowercase(),
            "--catalog-refresh-secs".to_owned(),
            self.catalog_refresh_secs.to_string(),
            "--drain-timeout-secs".to_owned(),
            self.drain_timeout_secs.to_string(),
            "--signature-max-age-secs".to_owned(),
            self.signature_max_age_secs.to_string(),
            "--require-nonce".to_owned(),
            self.require_nonce.to_string(),
            "--approval-ttl-secs".to_owned(),
            self.approval_ttl_secs.to_string(),
            "--run-payload-cap-bytes".to_owned(),
            self.run_payload_cap_bytes.to_string(),
            "--runs-retention-days".to_owned(),
            self.runs_retention_days.to_string(),
            "--rate-limit-rps".to_owned(),
            self.rate_limit_rps.to_string(),
            "--rate-limit-burst".to_owned(),
            self.rate_limit_burst.to_string(),
            "--max-concurrent".to_owned(),
            self.max_concurrent.to_string(),
            "--max-per-target".to_owned(),
            self.max_per_target.to_string(),
            "--max-concurrent-per-peer".to_owned(),
            self.max_concurrent_per_peer.to_string(),
            "--body-read-timeout-secs".to_owned(),
            self.body_read_timeout_secs.to_string(),
            "--mcp-max-sessions".to_owned(),
            self.mcp_max_sessions.to_string(),
            "--mcp-max-sessions-per-principal".to_owned(),
            self.mcp_max_sessions_per_principal.to_string(),
            "--mcp-session-idle-secs".to_owned(),
            self.mcp_session_idle_secs.to_string(),
            "--mcp-max-streams".to_owned(),
            self.mcp_max_streams.to_string(),
            "--mcp-stream-max-secs".to_owned(),
            self.mcp_stream_max_secs.to_string(),
            "--max-spec-bytes".to_owned(),
            self.max_spec_bytes.to_string(),
            "--max-methods-per-service".to_owned(),
            self.max_methods_per_service.to_string(),
        ];
        if let Some(listen) = self.listen {
            args.extend(["--listen".to_owned(), listen.to_string()]);
        }
        if let Some(metrics) = self.metrics_listen {
            args.extend(["--metrics-listen".to_owned(), metrics.to_string()]);
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            args.extend(["--otlp-endpoint".to_owned(), endpoint.clone()]);
        }
        if self.otlp_runs {
            args.push("--otlp-runs".to_owned());
        }
        if let Some(workers) = self.workers {
            args.extend(["--workers".to_owned(), workers.to_string()]);
        }
        if let Some(policy) = &self.policy {
            args.extend(["--policy".to_owned(), absolute(policy)]);
        }
        if let Some(sources) = &self.sources {
            args.extend(["--sources".to_owned(), absolute(sources)]);
        }
        for host in &self.ui_hosts {
            args.extend(["--ui-host".to_owned(), host.clone()]);
        }
        args
    }

    /// The daemon configuration these flags describe.
    pub fn config(&self) -> Result<Config, String> {
        let socket_dir = config::default_socket_dir(self.socket_dir.as_deref())?;
        let data_dir = config::default_data_dir(self.data_dir.as_deref())?;
        let mut config = Config::new(socket_dir, data_dir);
        config.listen = self.listen;
        config.metrics_listen = self.metrics_listen;
        if self.otlp_runs && self.otlp_endpoint.is_none() {
            return Err("--otlp-runs needs --otlp-endpoint (where to send the runs)".into());
        }
        config.otlp = self
            .otlp_endpoint
            .as_deref()
            .map(|endpoint| crate::telemetry::OtlpConfig::new(endpoint, self.otlp_runs))
            .transpose()?;
        config.core.call_timeout = Duration::from_millis(self.call_timeout_ms.max(1));
        config.core.approval_ttl = Duration::from_secs(self.approval_ttl_secs.max(1));
        config.core.payload_cap = self.run_payload_cap_bytes;
        config.core.retention =
            (self.runs_retention_days > 0).then(|| Duration::from_secs(self.runs_retention_days * 86_400));
        config.policy = self.policy.clone();
        config.sources = self.sources.clone();
        config.rate_limit = (self.rate_limit_rps.max(0.0), self.rate_limit_burst.max(1.0));
        config.max_concurrent = self.max_concurrent.max(1);
        config.max_per_target = self.max_per_target.max(1);
        config.scripts = crate::script::ScriptLimits {
            max_operations: self.script_max_operations.max(1),
            max_calls: self.script_max_calls,
            default_timeout: Duration::from_millis(self.script_timeout_ms.clamp(1, self.script_max_timeout_ms.max(1))),
            max_timeout: Duration::from_millis(self.script_max_timeout_ms.max(1)),
            max_concurrent: self.script_max_concurrent.max(1),
            ..config.scripts
        };
        config.max_concurrent_per_peer = self.max_concurrent_per_peer.max(1);
        config.body_read_timeout = Duration::from_secs(self.body_read_timeout_secs.max(1));
        config.ui_hosts = self
            .ui_hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        config.mcp = crate::adapters::mcp::McpLimits {
            max_sessions: self.mcp_max_sessions.max(1),
            max_sessions_per_principal: self.mcp_max_sessions_per_principal.max(1),
            session_idle: Duration::from_secs(self.mcp_session_idle_secs.max(1)),
            max_streams: self.mcp_max_streams.max(1),
            stream_max: Duration::from_secs(self.mcp_stream_max_secs.max(1)),
        };
        config.spec_limits.max_bytes = self.max_spec_bytes.max(1024);
        config.spec_limits.max_methods = self.max_methods_per_service.max(1);
        config.max_body_bytes = self.max_body_bytes;
        config.max_batch = self.max_batch.max(1);
        config.unsigned_local = self.unsigned_local;
        config.catalog_refresh = Duration::from_secs(self.catalog_refresh_secs.max(1));
        config.drain_timeout = Duration::from_secs(self.drain_timeout_secs);
        config.signatures.max_age = Duration::from_secs(self.signature_max_age_secs.max(1));
        config.signatures.require_nonce = self.require_nonce;

        Ok(config)
    }
}

/// Client-side commands; they talk to a running daemon over its sockets.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate an Ed25519 key pair for signing requests (PKCS#8 PEM, mode 0600)
    Keygen {
        /// Where to write the private key; the public key goes to `<out>.pub` [default: ~/hero/var/keys/hero_executor.pem, outside any checkout]
        #[arg(long)]
        out: Option<PathBuf>,
        /// Overwrite an existing file
        #[arg(long)]
        force: bool,
    },
    /// Manage the keys the daemon accepts (needs the executor.admin claim)
    Keys {
        #[command(subcommand)]
        action: KeysAction,
        #[command(flatten)]
        auth: SigningArgs,
    },
    /// Inspect and decide runs
    Runs {
        #[command(subcommand)]
        action: RunsAction,
        #[command(flatten)]
        auth: SigningArgs,
    },
    /// Check and explain the policy (needs executor.admin)
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
        #[command(flatten)]
        auth: SigningArgs,
    },
    /// Run agent scripts (Rhai): many calls in one go, each decided and recorded
    Script {
        #[command(subcommand)]
        action: ScriptAction,
        #[command(flatten)]
        auth: SigningArgs,
    },
    /// List, accept and reload the sources beyond hero_* (needs executor.admin)
    Sources {
        #[command(subcommand)]
        action: SourcesAction,
        #[command(flatten)]
        auth: SigningArgs,
    },
    /// Serve MCP on stdin/stdout for an LLM runtime, forwarding every request to the daemon
    /// (signed with --key); logs go to stderr only
    Mcp {
        #[command(flatten)]
        auth: SigningArgs,
        /// List each capability as its own tool instead of the meta-tools
        #[arg(long)]
        direct_tools: bool,
    },
    /// Call a capability (or one of the executor's own methods) and print its result
    Call {
        /// `<service>.<method>`, e.g. `echo.echo`
        capability: String,
        /// Params as JSON (`-` reads stdin)
        params: Option<String>,
        #[command(flatten)]
        auth: SigningArgs,
        /// X-Hero-Context
        #[arg(long)]
        context: Option<u64>,
        /// X-Hero-Claims: narrow the key's claims to these (comma list)
        #[arg(long)]
        claims: Option<String>,
        /// X-Hero-User: act on behalf of this user (needs executor.impersonate)
        #[arg(long)]
        user: Option<String>,
        /// Idempotency-Key: a retry with the same key (and params) gets the first call's outcome
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Find and describe the capabilities you may run
    Catalog {
        #[command(subcommand)]
        action: CatalogAction,
        #[command(flatten)]
        auth: SigningArgs,
    },
}

/// `hero_executor catalog ...`
#[derive(Debug, Subcommand)]
pub enum CatalogAction {
    /// List every capability you may run
    List {
        /// Only this service
        #[arg(long)]
        service: Option<String>,
    },
    /// Search capabilities by words in their name or description
    Search {
        /// Words to look for, e.g. "book search"
        query: String,
        /// Only this service
        #[arg(long)]
        service: Option<String>,
        /// At most this many results (1-200)
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Show one capability: params and result schemas, x-hero-intent, what policy decides
    Describe {
        /// `<service>.<method>`
        capability: String,
    },
}

/// `hero_executor runs ...`
#[derive(Debug, Subcommand)]
pub enum RunsAction {
    /// List runs, newest first
    List {
        /// Only runs with this status: awaiting_approval, running, succeeded, failed, timed_out, denied, rejected, expired, cancelled, interrupted
        #[arg(long)]
        status: Option<String>,
        /// Only runs of this capability (`<service>.<method>`)
        #[arg(long)]
        capability: Option<String>,
        /// Only runs of this principal (others' runs need executor.admin)
        #[arg(long)]
        principal: Option<String>,
        /// Only runs created since: Unix milliseconds, or a time ago such as 30s, 10m, 2h, 7d
        #[arg(long)]
        since: Option<String>,
        /// Continue after this run id (the `next` a previous page printed)
        #[arg(long)]
        cursor: Option<String>,
        /// Rows per page (1-1000)
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only the runs waiting for an approval you may give (your inbox)
        #[arg(long)]
        inbox: bool,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show one run in full
    Show { run_id: String },
    /// Wait until a run is final, then show it
    Wait {
        run_id: String,
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
    },
    /// Approve a held run (needs one of its approver claims; not your own run)
    Approve {
        run_id: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Reject a held run
    Reject {
        run_id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Cancel a held run
    Cancel { run_id: String },
    /// Delete final runs older than a given age (needs executor.admin)
    Prune {
        #[arg(long, default_value_t = 30 * 86_400)]
        older_than_secs: u64,
        #[arg(long)]
        status: Option<String>,
    },
}

/// `hero_executor policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyAction {
    /// List policy patterns that match no capability in the catalog
    Check,
    /// Explain the decision for a capability (for you, or for an enrolled --for-keyid)
    Explain {
        capability: String,
        #[arg(long = "for-keyid")]
        for_keyid: Option<String>,
        #[arg(long, value_delimiter = ',')]
        claims: Option<Vec<String>>,
        #[arg(long)]
        context: Option<u64>,
    },
    /// Reload the daemon's policy file (an invalid file keeps the running policy)
    Reload,
}

/// `hero_executor script ...`
#[derive(Debug, Subcommand)]
pub enum ScriptAction {
    /// Run a script file (`-` reads stdin) and print its result
    Run {
        file: PathBuf,
        /// JSON bound to `args` in the script
        #[arg(long)]
        args: Option<String>,
        /// Wall time in milliseconds (default and maximum: the daemon's --script-* flags)
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Run again with the same key once a held call is approved: calls already made
        /// are answered from their runs
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Print the interface scripts call (what you may run), in rhai, typescript or python
    Interface {
        /// Only this service
        #[arg(long)]
        service: Option<String>,
        /// rhai (the default), typescript or python
        #[arg(long)]
        language: Option<String>,
    },
}

/// `hero_executor sources ...`
#[derive(Debug, Subcommand)]
pub enum SourcesAction {
    /// Each source: status, fingerprint, operations, and those new since it was accepted
    List,
    /// Accept what a source serves now: its new operations become callable
    Accept {
        name: String,
        /// The fingerprint you reviewed in `sources list` (refused if it changed since)
        #[arg(long)]
        fingerprint: Option<String>,
    },
    /// Reload the sources file (an invalid file keeps the running sources)
    Reload,
}

/// `hero_executor keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Enrol a public key under a keyid
    Add {
        keyid: String,
        /// A public key file (PEM), PEM text, or base64 of the raw 32 bytes
        public_key: String,
        /// Claims ceiling, comma separated (`*` = full trust)
        #[arg(long, value_delimiter = ',', required = true)]
        claims: Vec<String>,
        /// Contexts the key may act in, comma separated (default: any)
        #[arg(long, value_delimiter = ',')]
        contexts: Option<Vec<u64>>,
        #[arg(long)]
        note: Option<String>,
    },
    /// List enrolled keys
    List,
    /// Revoke a key
    Revoke { keyid: String },
}

/// How a client command signs its requests. Without `--key`, requests are unsigned and
/// accepted only from the daemon's own uid.
#[derive(Debug, Clone, Args)]
pub struct SigningArgs {
    /// Private key (PKCS#8 PEM) to sign with
    #[arg(long, global = true, env = "HERO_EXECUTOR_KEY", requires = "keyid")]
    pub key: Option<PathBuf>,
    /// The keyid the key is enrolled under
    #[arg(long, global = true, env = "HERO_EXECUTOR_KEYID", requires = "key")]
    pub keyid: Option<String>,
}
