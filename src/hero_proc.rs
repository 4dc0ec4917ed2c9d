//! The hero_proc wire format (DESIGN section 10), kept in one place so it can follow
//! hero_proc's API as it evolves: JSON-RPC over HTTP on `<socket_dir>/hero_proc/rpc.sock`.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::Config;
use crate::error::ExecError;
use crate::upstream::Upstream;

/// The service name hero_proc knows us by.
pub const SERVICE: &str = crate::SERVICE_NAME;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A client of hero_proc.
pub struct HeroProc {
    upstream: Upstream,
}

impl HeroProc {
    /// A client of the hero_proc under `socket_dir`, if its socket exists.
    pub fn find(socket_dir: &Path) -> Option<Self> {
        socket_dir.join("hero_proc/rpc.sock").exists().then(|| Self {
            upstream: Upstream::new(socket_dir.to_owned(), 1024 * 1024, Default::default()),
        })
    }

    /// `service.set`: registers (or updates) how to run the executor.
    pub async fn set(&self, spec: &Value) -> Result<Value, ExecError> {
        self.upstream
            .call_plain("hero_proc", "service.set", Some(spec), TIMEOUT)
            .await
    }

    /// `service.start {name}`.
    pub async fn start(&self) -> Result<Value, ExecError> {
        self.upstream
            .call_plain("hero_proc", "service.start", Some(&json!({ "name": SERVICE })), TIMEOUT)
            .await
    }

    /// `service.stop {name}`.
    pub async fn stop(&self) -> Result<Value, ExecError> {
        self.upstream
            .call_plain("hero_proc", "service.stop", Some(&json!({ "name": SERVICE })), TIMEOUT)
            .await
    }
}

/// The `service.set` payload: one process action running this binary with `args`, killing
/// whatever holds our sockets first, health-checked through our rpc.sock.
pub fn service_spec(config: &Config, binary: &Path, args: &[String]) -> Value {
    let mut script = vec![binary.display().to_string()];
    script.extend(args.iter().cloned());
    json!({
        "name": SERVICE,
        "actions": [{
            "name": SERVICE,
            "interpreter": "exec",
            "script": script.join(" "),
            "env": {
                "HERO_SOCKET_DIR": config.socket_dir.display().to_string(),
                "HERO_EXECUTOR_DATA": config.data_dir.display().to_string(),
            },
            "is_process": true,
            "kill_other": { "socket": [config.rpc_socket().display().to_string(), config.rest_socket().display().to_string(), config.ui_socket().display().to_string()] },
            "health_checks": [{ "openrpc_socket": config.rpc_socket().display().to_string() }],
        }],
    })
}
