//! Sockets, the single-instance lock, serving, and graceful shutdown (DESIGN section 2).
//!
//! [`bind`] does everything that can fail at start-up (directories, lock, sockets) so the
//! caller can report it plainly; [`run`] takes the bound listeners and a shutdown future,
//! so tests start the real server on temp-dir sockets with no sleeps.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use axum::Router;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::catalog;
use crate::config::Config;
use axum::extract::ConnectInfo;

use crate::identity::Peer;
use crate::{AppState, metrics_router, rest_router, rpc_router, tcp_router, ui_router};

/// Async worker threads when `--workers` is not given: one per core less one, which the run
/// writer thread keeps busy under load; at least one. On the 2-core benchmark machine one
/// worker used 10% less CPU per call than two and answered a lone caller 90 µs sooner
/// (tokio wakes a second worker to look for work on every wake-up; README Performance).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create {what} {}: {source}", path.display())]
    Dir {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("hero_executor is already running on {} (pid {pid}); lock file {}", dir.display(), lock.display())]
    AlreadyRunning { dir: PathBuf, pid: String, lock: PathBuf },
    #[error("cannot use lock file {}: {source}", path.display())]
    Lock { path: PathBuf, source: std::io::Error },
    #[error("cannot bind {}: {source}", path.display())]
    Bind { path: PathBuf, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Tcp {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Listeners bound and the instance lock held; ready to [`run`].
pub struct Bound {
    rpc: UnixListener,
    rest: UnixListener,
    ui: UnixListener,
    tcp: Option<TcpListener>,
    metrics: Option<TcpListener>,
    sockets: Vec<PathBuf>,
    /// Held for the daemon's lifetime: the OS releases it when the process ends.
    _lock: File,
}

impl Bound {
    /// The TCP listener's actual address (useful with port 0).
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The metrics listener's actual address (useful with port 0).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Creates the directories, takes the lock and binds every listener.
pub async fn bind(config: &Config) -> Result<Bound, StartError> {
    let own_dir = config.own_socket_dir();
    make_dir("socket directory", &own_dir, 0o770)?;
    make_dir("data directory", &config.data_dir, 0o700)?;
    let lock = take_lock(&own_dir)?;

    let mut sockets = Vec::new();
    let mut bind_unix = |path: PathBuf| -> Result<UnixListener, StartError> {
        // We hold the lock, so a socket file here is a stale one from a previous run.
        if path.exists() {
            fs::remove_file(&path).map_err(|source| StartError::Bind {
                path: path.clone(),
                source,
            })?;
        }
        let listener = UnixListener::bind(&path).map_err(|source| StartError::Bind {
            path: path.clone(),
            source,
        })?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o660)).map_err(|source| StartError::Bind {
            path: path.clone(),
            source,
        })?;
        sockets.push(path);
        Ok(listener)
    };
    let rpc = bind_unix(config.rpc_socket())?;
    let rest = bind_unix(config.rest_socket())?;
    let ui = bind_unix(config.ui_socket())?;
    let tcp = bind_tcp(config.listen).await?;
    let metrics = bind_tcp(config.metrics_listen).await?;
    Ok(Bound {
        rpc,
        rest,
        ui,
        tcp,
        metrics,
        sockets,
        _lock: lock,
    })
}

/// Binds an optional TCP listener.
async fn bind_tcp(addr: Option<std::net::SocketAddr>) -> Result<Option<TcpListener>, StartError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| StartError::Tcp { addr, source })
}

fn make_dir(what: &'static str, path: &Path, mode: u32) -> Result<(), StartError> {
    let err = |source| StartError::Dir {
        what,
        path: path.to_owned(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(err)?;
    // `mode` only applies to directories we create; probe that we can write here.
    let probe = path.join(".write-probe");
    File::create(&probe).map_err(err)?;
    let _ = fs::remove_file(probe);
    Ok(())
}

/// Takes `<own_dir>/hero_executor.lock` and writes our pid into it.
fn take_lock(own_dir: &Path) -> Result<File, StartError> {
    let path = own_dir.join("hero_executor.lock");
    let lock_err = |source| StartError::Lock {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(lock_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(StartError::AlreadyRunning {
                dir: own_dir.parent().unwrap_or(own_dir).to_owned(),
                pid: pid.trim().to_owned(),
                lock: path,
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(lock_err(e)),
    }
    file.set_len(0).map_err(lock_err)?;
    file.rewind().map_err(lock_err)?;
    writeln!(file, "{}", std::process::id()).map_err(lock_err)?;
    Ok(file)
}

/// The pid of the instance holding the lock on this socket dir, if one is running.
pub fn running_pid(config: &Config) -> Option<i32> {
    let path = config.own_socket_dir().join("hero_executor.lock");
    let mut file = OpenOptions::new().read(true).write(true).open(path).ok()?;
    match file.try_lock() {
        // We got the lock: nobody holds it. Release it at once.
        Ok(()) => None,
        Err(_) => {
            let mut pid = String::new();
            file.read_to_string(&mut pid).ok()?;
            pid.trim().parse().ok()
        }
    }
}

/// How long serving waits for the first catalog refresh.
const FIRST_REFRESH_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves until `shutdown` completes, then stops accepting, lets in-flight calls finish
/// (at most `config.drain_timeout`) and removes the socket files.
pub async fn run(state: AppState, bound: Bound, shutdown: impl Future<Output = ()> + Send) {
    let config = state.config.clone();
    let catalog = state.dispatcher.catalog().clone();
    // Services that answer are published as they answer; one that never does must not keep
    // the daemon from serving (calls discover a service they miss on the spot).
    let first = tokio::spawn({
        let catalog = catalog.clone();
        async move {
            let report = catalog.refresh().await;
            tracing::info!(services = ?report.services, capabilities = report.capabilities, "catalog ready");
        }
    });
    let _ = tokio::time::timeout(FIRST_REFRESH_WAIT, first).await;
    if let Some(sources) = state.dispatcher.sources() {
        sources.start().await;
    }
    let watcher = catalog::watch::spawn(catalog, config.socket_dir.clone(), config.catalog_refresh);
    let housekeeping = state.dispatcher.spawn_housekeeping();
    let reloader = spawn_policy_reloader(state.clone());

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let limits = ConnLimits::from(config.as_ref());
    servers.spawn(serve(bound.rpc, rpc_router(state.clone()), limits, None, stopped()));
    servers.spawn(serve(bound.rest, rest_router(state.clone()), limits, None, stopped()));
    servers.spawn(serve(bound.ui, ui_router(state.clone()), limits, None, stopped()));
    if let Some(tcp) = bound.tcp {
        servers.spawn(serve(tcp, tcp_router(state.clone()), limits, None, stopped()));
    }
    if let Some(metrics) = bound.metrics {
        servers.spawn(serve(
            metrics,
            metrics_router(state.clone()),
            limits,
            Some(METRICS_CONNECTIONS),
            stopped(),
        ));
    }
    tracing::info!(
        rpc = %config.rpc_socket().display(),
        rest = %config.rest_socket().display(),
        console = %config.ui_socket().display(),
        tcp = ?config.listen,
        metrics = ?config.metrics_listen,
        version = crate::VERSION,
        "hero_executor listening"
    );

    shutdown.await;
    tracing::info!(
        drain_timeout_s = config.drain_timeout.as_secs(),
        "shutting down: draining in-flight calls"
    );
    let _ = stop_tx.send(true);
    let _ = state.stopping.send(true);
    let drained = tokio::time::timeout(config.drain_timeout, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("drain timeout reached; dropping the calls still in flight");
        servers.abort_all();
    }
    watcher.abort();
    housekeeping.abort();
    reloader.abort();
    if let Some(sources) = state.dispatcher.sources() {
        sources.stop().await;
    }
    for socket in &bound.sockets {
        let _ = fs::remove_file(socket);
    }
    if let Some(telemetry) = state.telemetry.clone() {
        // Final runs reach the exporter once folded; then what is queued is sent, within
        // the exporters' own timeouts.
        if let Err(e) = state.dispatcher.runs().flush().await {
            tracing::warn!(error = %e, "run store not settled before the last OTLP export");
        }
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    }
    tracing::info!("stopped");
}

/// Per-connection limits for slow or stuck clients.
#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    /// A request's headers must arrive within this (slowloris).
    header_read_timeout: std::time::Duration,
    /// Largest request head (request line and headers), in bytes.
    max_head_bytes: usize,
    /// Most header fields in one request.
    max_headers: usize,
}

impl From<&Config> for ConnLimits {
    fn from(config: &Config) -> Self {
        Self {
            header_read_timeout: config.header_read_timeout,
            max_head_bytes: config.max_header_bytes,
            max_headers: 100,
        }
    }
}

/// A listener the server accepts from: the connection, and who is on the other end.
trait Accept: Send + 'static {
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Io, Peer)>> + Send;
}

impl Accept for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, Peer)> {
        let (stream, _) = UnixListener::accept(self).await?;
        let cred = stream.peer_cred().ok();
        let (uid, pid) = (cred.map(|c| c.uid()), cred.and_then(|c| c.pid()));
        Ok((stream, Peer::Unix { uid, pid }))
    }
}

impl Accept for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, Peer)> {
        let (stream, addr) = TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, Peer::Tcp(addr)))
    }
}

/// Connections the unauthenticated metrics listener holds open at most: past this it stops
/// accepting until one closes, so whoever reaches its port cannot use up the daemon's
/// file descriptors.
const METRICS_CONNECTIONS: usize = 16;

/// Accepts connections until `stop`, serving each with `app` over HTTP/1.1 (keep-alive),
/// then waits for the connections in flight to finish their current requests. With
/// `max_connections`, at most that many at once (the next waits in the listen backlog).
async fn serve<L: Accept>(
    listener: L,
    app: Router,
    limits: ConnLimits,
    max_connections: Option<usize>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_head_bytes)
        .max_headers(limits.max_headers);
    tokio::pin!(stop);
    let slots = max_connections.map(|n| std::sync::Arc::new(tokio::sync::Semaphore::new(n)));
    loop {
        let slot = match &slots {
            None => None,
            Some(slots) => tokio::select! {
                slot = slots.clone().acquire_owned() => slot.ok(),
                _ = &mut stop => break,
            },
        };
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer.clone()));
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Reloads the policy and the sources on SIGHUP; an invalid file keeps what runs (errors
/// are logged).
fn spawn_policy_reloader(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; use policy.reload and sources.reload");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the policy and the sources");
            let _ = state.dispatcher.reload_policy();
            if let Some(sources) = state.dispatcher.sources()
                && let Err(errors) = sources.reload().await
            {
                for error in errors {
                    tracing::error!(%error, "sources reload refused; the running sources stay");
                }
            }
        }
    })
}

/// Completes on SIGTERM or SIGINT.
pub async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
