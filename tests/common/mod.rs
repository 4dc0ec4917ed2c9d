//! Shared test harness: a temp-dir HERO node with the real executor (in-process or as
//! a process), the real example service as a child process, in-process stub services,
//! and a small HTTP/1.1 client over Unix sockets. Nothing here uses a fixed path or port,
//! `$HOME`, or sleeps as synchronisation: waits poll a condition under a deadline.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use bytes::Bytes;
use hero_executor::config::Config;
use hero_executor::{AppState, server};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::UnixStream;

/// How long any wait in the tests may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A temp-dir node: `<tmp>/sockets` and `<tmp>/data`.
pub struct Node {
    pub tmp: TempDir,
}

impl Node {
    pub fn new() -> Self {
        Self {
            tmp: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.tmp.path().join("sockets")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    /// A config with defaults for this node, quick periodic refresh disabled (the watch works).
    pub fn config(&self) -> Config {
        Config::new(self.socket_dir(), self.data_dir())
    }

    pub fn rpc_sock(&self) -> PathBuf {
        self.socket_dir().join("hero_executor/rpc.sock")
    }

    pub fn rest_sock(&self) -> PathBuf {
        self.socket_dir().join("hero_executor/rest.sock")
    }

    /// Starts the executor in this process; stops it when the handle drops.
    pub async fn start(&self, config: Config) -> Executor {
        let bound = server::bind(&config).await.expect("bind");
        let tcp = bound.tcp_addr();
        let metrics = bound.metrics_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let state = AppState::new(config).expect("state");
        let task = tokio::spawn(server::run(state, bound, async {
            let _ = rx.await;
        }));
        Executor {
            stop: Some(tx),
            task: Some(task),
            tcp,
            metrics,
        }
    }

    /// Starts the example service as a child process named `name`; waits until it listens.
    pub fn spawn_echo(&self, name: &str) -> ChildGuard {
        let mut child = Command::new(example_binary("echo_service"))
            .args(["--name", name, "--socket-dir"])
            .arg(self.socket_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn echo_service");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the ready line");
        assert!(line.contains("listening"), "echo_service did not start: {line:?}");
        ChildGuard(child)
    }

    /// Serves `router` as the hero service `name` on `<socket_dir>/<name>/rpc.sock`.
    pub async fn serve_stub(&self, name: &str, router: Router) -> tokio::task::JoinHandle<()> {
        let dir = self.socket_dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rpc.sock");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        })
    }
}

/// The in-process executor.
pub struct Executor {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    pub tcp: Option<std::net::SocketAddr>,
    /// The `--metrics-listen` address, when configured.
    pub metrics: Option<std::net::SocketAddr>,
}

impl Executor {
    /// Stops it and waits until it has drained and removed its sockets.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Kills the child process when dropped.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Sends SIGTERM.
    pub fn terminate(&self) {
        signal(self.0.id(), rustix::process::Signal::TERM);
    }

    /// Waits for the process to exit, within the deadline.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "process {} did not exit", self.0.id());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
    rustix::process::kill_process(pid, sig).expect("kill");
}

/// Path of a compiled example (cargo builds examples next to the test binaries).
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().and_then(Path::parent).expect("target dir");
    let path = target.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --examples` (make test does)",
        path.display()
    );
    path
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }
}

/// One HTTP/1.1 request over a Unix socket, on a fresh connection.
pub async fn http(sock: &Path, method: &str, path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Answer {
    let stream = UnixStream::connect(sock)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut request = Request::builder().method(method).uri(path).header("host", "localhost");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = sender
        .send_request(request.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// `GET path`.
pub async fn get(sock: &Path, path: &str) -> Answer {
    http(sock, "GET", path, &[], Bytes::new()).await
}

/// `POST /rpc` with a JSON body and headers; returns the answer.
pub async fn post_rpc(sock: &Path, body: &Value, headers: &[(&str, &str)]) -> Answer {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    http(sock, "POST", "/rpc", &all, serde_json::to_vec(body).unwrap()).await
}

/// Calls one JSON-RPC method and returns the whole response object.
pub async fn rpc(sock: &Path, method: &str, params: Value) -> Value {
    rpc_with(sock, method, params, &[]).await
}

/// Like [`rpc`], with extra headers.
pub async fn rpc_with(sock: &Path, method: &str, params: Value, headers: &[(&str, &str)]) -> Value {
    let answer = post_rpc(
        sock,
        &json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}),
        headers,
    )
    .await;
    answer.json()
}

/// The error code of a JSON-RPC response, panicking if it succeeded.
pub fn error_code(response: &Value) -> i64 {
    response["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an error, got {response}"))
}

/// Polls `check` until it returns true, failing after the deadline.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Capability names currently in the catalog.
pub async fn capability_names(sock: &Path) -> Vec<String> {
    let response = rpc(sock, "catalog.list", json!({})).await;
    response["result"]["capabilities"]
        .as_array()
        .unwrap_or_else(|| panic!("catalog.list failed: {response}"))
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

impl Node {
    /// Starts the real `hero_executor` binary on this node; stderr goes to `<tmp>/daemon.log`.
    /// Waits until `/health` answers on rpc.sock.
    pub async fn spawn_daemon(&self, extra: &[&str]) -> ChildGuard {
        let child = self.daemon_command(extra).spawn().expect("spawn hero_executor");
        let guard = ChildGuard(child);
        let sock = self.rpc_sock();
        eventually("the daemon's /health", || async {
            match UnixStream::connect(&sock).await {
                Ok(_) => get(&sock, "/health").await.status == 200,
                Err(_) => false,
            }
        })
        .await;
        guard
    }

    /// The command line of the real binary for this node, not yet started.
    pub fn daemon_command(&self, extra: &[&str]) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("daemon.log"))
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_hero_executor"));
        command
            .arg("--socket-dir")
            .arg(self.socket_dir())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(extra)
            .env_remove("HERO_SOCKET_DIR")
            .env_remove("PATH_SOCKET")
            .env_remove("HERO_EXECUTOR_DATA")
            .stdout(Stdio::null())
            .stderr(log);
        command
    }

    /// What the daemon logged so far.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("daemon.log")).unwrap_or_default()
    }
}

/// A deterministic test key.
pub fn key(seed: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

/// The base64 of a key's raw public half.
pub fn b64_public(key: &ed25519_dalek::SigningKey) -> String {
    base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        key.verifying_key().as_bytes(),
    )
}

/// Enrols a key as the owner (unsigned, same uid).
pub async fn enrol(
    node: &Node,
    keyid: &str,
    key: &ed25519_dalek::SigningKey,
    claims: &[&str],
    contexts: Option<&[u64]>,
) {
    let mut params = json!({"keyid": keyid, "public_key": b64_public(key), "claims": claims});
    if let Some(contexts) = contexts {
        params["contexts"] = json!(contexts);
    }
    let response = rpc(&node.rpc_sock(), "keys.add", params).await;
    assert!(response.get("result").is_some(), "keys.add: {response}");
}

/// A client of rpc.sock signing as `keyid`.
pub fn signed_client(node: &Node, keyid: &str, key: &ed25519_dalek::SigningKey) -> hero_executor::client::Client {
    hero_executor::client::Client::new(node.rpc_sock())
        .with_signer(hero_executor::client::Signer::new(keyid, key.clone()))
}

/// A node with the example service, an agent (`agent`, key 1) and an approver (`ops`, key 2),
/// both signing; tests add their own calls in an `impl Setup`.
pub struct Setup {
    pub node: Node,
    pub _echo: ChildGuard,
    pub agent: hero_executor::client::Client,
    pub ops: hero_executor::client::Client,
}

pub async fn setup(node: Node, configure: impl FnOnce(&mut hero_executor::config::Config)) -> (Setup, Executor) {
    let echo = node.spawn_echo("echo");
    let mut config = node.config();
    configure(&mut config);
    let executor = node.start(config).await;
    enrol(&node, "agent", &key(1), &["agent"], None).await;
    enrol(&node, "ops", &key(2), &["ops"], None).await;
    let agent = signed_client(&node, "agent", &key(1));
    let ops = signed_client(&node, "ops", &key(2));
    (
        Setup {
            node,
            _echo: echo,
            agent,
            ops,
        },
        executor,
    )
}
