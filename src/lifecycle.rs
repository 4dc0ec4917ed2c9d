//! `--start`, `--stop` and `--info` (DESIGN section 10): running under hero_proc, or
//! stopping a foreground instance found through its lock file.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::hero_proc::{self, HeroProc};
use crate::server;

/// `--info`: the service description, as TOML, for tools that register services themselves.
pub fn info(config: &Config) -> String {
    #[derive(serde::Serialize)]
    struct Info {
        name: &'static str,
        version: &'static str,
        description: &'static str,
        binary: String,
        socket_dir: String,
        data_dir: String,
        sockets: Sockets,
        protocols: Protocols,
    }
    #[derive(serde::Serialize)]
    struct Sockets {
        rpc: String,
        rest: String,
        ui: String,
    }
    #[derive(serde::Serialize)]
    struct Protocols {
        rpc: Vec<&'static str>,
        rest: Vec<&'static str>,
        ui: Vec<&'static str>,
    }
    let info = Info {
        name: crate::SERVICE_NAME,
        version: crate::VERSION,
        description: "The secure execution gateway of a HERO node",
        binary: binary().display().to_string(),
        socket_dir: config.socket_dir.display().to_string(),
        data_dir: config.data_dir.display().to_string(),
        sockets: Sockets {
            rpc: config.rpc_socket().display().to_string(),
            rest: config.rest_socket().display().to_string(),
            ui: config.ui_socket().display().to_string(),
        },
        protocols: Protocols {
            rpc: vec!["openrpc", "mcp"],
            rest: vec!["rest"],
            ui: vec!["ui"],
        },
    };
    toml::to_string(&info).unwrap_or_default()
}

fn binary() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from(crate::SERVICE_NAME))
}

/// Whether our rpc.sock answers `/health`.
pub async fn healthy(config: &Config) -> bool {
    let Ok(stream) = tokio::net::UnixStream::connect(config.rpc_socket()).await else {
        return false;
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
    else {
        return false;
    };
    tokio::spawn(conn);
    let request = http::Request::get("/health")
        .header(http::header::HOST, "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new());
    match request {
        Ok(request) => sender
            .send_request(request)
            .await
            .is_ok_and(|r| r.status().is_success()),
        Err(_) => false,
    }
}

/// `--start`: registers with hero_proc, starts under it, waits for `/health`. Idempotent.
/// `args` are the daemon flags to run with (socket dir, data dir, policy, ...).
pub async fn start(config: &Config, args: &[String], timeout: Duration) -> Result<String, String> {
    if healthy(config).await {
        return Ok(format!("hero_executor is already running: {}", where_(config)));
    }
    let hero_proc = HeroProc::find(&config.socket_dir).ok_or_else(|| {
        format!(
            "hero_proc is not running (no {}); start hero_proc first, or run hero_executor in the foreground",
            config.socket_dir.join("hero_proc/rpc.sock").display()
        )
    })?;
    let spec = hero_proc::service_spec(config, &binary(), args);
    hero_proc
        .set(&spec)
        .await
        .map_err(|e| format!("hero_proc refused service.set: {e}"))?;
    hero_proc
        .start()
        .await
        .map_err(|e| format!("hero_proc refused service.start: {e}"))?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if healthy(config).await {
            return Ok(format!("hero_executor is running under hero_proc: {}", where_(config)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "hero_executor did not answer /health on {} within {} s; see hero_proc's logs for the service",
        config.rpc_socket().display(),
        timeout.as_secs()
    ))
}

/// `--stop`: through hero_proc when it is there, else SIGTERM to the pid in the lock file;
/// waits until the instance is gone.
pub async fn stop(config: &Config, timeout: Duration) -> Result<String, String> {
    if let Some(hero_proc) = HeroProc::find(&config.socket_dir) {
        hero_proc
            .stop()
            .await
            .map_err(|e| format!("hero_proc refused service.stop: {e}"))?;
        wait_until_down(config, timeout).await?;
        return Ok("hero_executor stopped (through hero_proc)".to_owned());
    }
    let Some(pid) = server::running_pid(config) else {
        return Ok("hero_executor is not running".to_owned());
    };
    let target = rustix::process::Pid::from_raw(pid).ok_or_else(|| format!("invalid pid {pid} in the lock file"))?;
    rustix::process::kill_process(target, rustix::process::Signal::TERM)
        .map_err(|e| format!("cannot signal pid {pid}: {e}"))?;
    let deadline = Instant::now() + timeout;
    while server::running_pid(config).is_some() {
        if Instant::now() >= deadline {
            return Err(format!("pid {pid} did not stop within {} s", timeout.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(format!("hero_executor stopped (pid {pid})"))
}

async fn wait_until_down(config: &Config, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while healthy(config).await {
        if Instant::now() >= deadline {
            return Err(format!("hero_executor still answers after {} s", timeout.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn where_(config: &Config) -> String {
    format!(
        "rpc {}, rest {}, console {}",
        config.rpc_socket().display(),
        config.rest_socket().display(),
        config.ui_socket().display()
    )
}
