//! `make bench`: what the executor costs on top of a direct call.
//!
//! Starts the example service and the executor (release builds) on temp-dir sockets, then
//! drives C concurrent keep-alive clients for D seconds in each configuration:
//!
//! - `a`: directly to the example service (the floor);
//! - `b`: through the executor, unsigned owner calls;
//! - `c`: through the executor, signed calls (one Ed25519 signature per request, one
//!   verification and one response signature in the executor);
//! - `d`: signed calls under a policy of 1,000 rules;
//! - `e`: MCP `tools/call` of the `execute` meta-tool through `/mcp` (Streamable HTTP),
//!   unsigned owner calls;
//! - `o`: `b` with `--otlp-endpoint` pointed at a collector in this process that takes
//!   every export (three spans per call are encoded and sent);
//! - `r`: `o` with `--otlp-runs` too (and a log record per run);
//! - `k`: `r` with a collector that accepts connections and never answers;
//! - `p`: the anchor, a plain reverse proxy on a Unix socket in front of the example
//!   service, with as many workers as the executor has: nginx when it is on PATH, else
//!   haproxy (`apt-get install nginx haproxy`); skipped when neither is.
//!
//! Every call through the executor is recorded as a run (runs are always on). By default
//! every configuration runs at `--clients` (32) and `a`, `p`, `b`, `c` again at one
//! client. Prints a table and writes JSON (`bench-results/bench.json`): requests/s,
//! latency percentiles, errors, CPU per request of the middle hop (executor or proxy) and
//! of the service (from /proc), the hop's peak RSS, each row's throughput as a ratio of
//! `a` and of the proxy at the same concurrency, its CPU per request as a ratio of the
//! proxy's, and its p50 added over `a`. Last, it holds `--idle` (10,000) keep-alive
//! connections to the executor, one call made on each, and reports its RSS, and how many
//! answer a second call.
//!
//! After the table, `o`, `r` and `k` are compared with `b` (the OTLP cost), with what the
//! collector received and what the executor counted as dropped.
//!
//! Then (`--scripts N`, default 200; 0 skips) one client does N rounds of ten `echo.echo`
//! calls: once as ten separate JSON-RPC calls, once as one `script.run` whose script makes
//! the ten calls; wall time and executor CPU per round, and their ratio.
//!
//! `cargo run --release --example bench -- [--clients 32] [--duration 10] [--configs a,p,b,c,d,e,o,r,k] [--single a,p,b,c] [--out FILE]`

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use hero_executor::client::Signer;
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;

struct Args {
    clients: usize,
    duration: Duration,
    configs: Vec<char>,
    /// Configurations run again with one client.
    single: Vec<char>,
    /// Idle keep-alive connections held at the end (0: skipped).
    idle: usize,
    /// Rounds of ten calls, separate and as one script (0: skipped).
    scripts: usize,
    out: PathBuf,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        clients: 32,
        duration: Duration::from_secs(10),
        configs: vec!['a', 'p', 'b', 'c', 'd', 'e', 'o', 'r', 'k'],
        single: vec!['a', 'p', 'b', 'c'],
        idle: 10_000,
        scripts: 200,
        out: PathBuf::from("bench-results/bench.json"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--clients" => a.clients = value()?.parse().map_err(|e| format!("--clients: {e}"))?,
            "--duration" => {
                a.duration = Duration::from_secs_f64(value()?.parse().map_err(|e| format!("--duration: {e}"))?)
            }
            "--configs" => a.configs = value()?.split(',').filter_map(|c| c.chars().next()).collect(),
            "--single" => a.single = value()?.split(',').filter_map(|c| c.chars().next()).collect(),
            "--idle" => a.idle = value()?.parse().map_err(|e| format!("--idle: {e}"))?,
            "--scripts" => a.scripts = value()?.parse().map_err(|e| format!("--scripts: {e}"))?,
            "--out" => a.out = value()?.into(),
            "-h" | "--help" => {
                return Err(
                    "bench [--clients C] [--duration SECONDS] [--configs a,p,b,c,d,e,o,r,k] [--single a,p,b,c] [--idle N] [--scripts N] [--out FILE]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// A child process that is killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / rustix::param::clock_ticks_per_second() as f64
}

/// Context switches (voluntary and not) a process's threads have made so far.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Peak resident set size of a process, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let dir = exe.parent().expect("examples dir");
    if name == "hero_executor" {
        dir.parent().expect("profile dir").join(name)
    } else {
        dir.join(name)
    }
}

async fn wait_for(sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::UnixStream::connect(sock).await.is_err() {
        assert!(Instant::now() < deadline, "{} did not come up", sock.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One configuration's measurements.
#[derive(Debug, serde::Serialize)]
struct Row {
    config: char,
    clients: usize,
    what: String,
    requests: usize,
    errors: usize,
    rps: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    max_us: u64,
    /// CPU per request of the middle hop (the executor or the proxy).
    hop_cpu_us_per_req: Option<f64>,
    service_cpu_us_per_req: f64,
    /// Context switches per request of the middle hop's threads.
    hop_switches_per_req: Option<f64>,
    hop_peak_rss_mib: Option<f64>,
    ratio_to_a: Option<f64>,
    /// Throughput as a ratio of the proxy's at the same concurrency.
    ratio_to_proxy: Option<f64>,
    /// CPU per request as a ratio of the proxy's at the same concurrency.
    cpu_ratio_to_proxy: Option<f64>,
    /// p50 added over a direct call at the same concurrency.
    added_p50_us: Option<i64>,
    /// `o`, `r`, `k`: spans and run records the executor dropped (its `/metrics`), and export
    /// requests and bytes the collector received during the run.
    otlp: Option<serde_json::Value>,
}

/// How a configuration's requests are made.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `POST /rpc`, one JSON-RPC call.
    Rpc,
    /// MCP over `/mcp`: a session per client, then `tools/call` of `execute`.
    Mcp,
}

/// One request of a client: its latency, or `None` when it failed.
async fn one_call(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
    body: &Bytes,
    extra: &[(&'static str, String)],
    signer: Option<&Signer>,
) -> Result<(u64, bool, Option<String>), ()> {
    let uri: Uri = path.parse().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(http::header::HOST, HeaderValue::from_static("localhost"));
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in extra {
        headers.insert(*name, HeaderValue::from_str(value).unwrap());
    }
    if let Some(signer) = signer {
        signer
            .sign(&Method::POST, &uri, &mut headers, body, hero_executor::now_unix())
            .expect("sign");
    }
    let mut request = Request::post(uri).body(Full::new(body.clone())).unwrap();
    *request.headers_mut() = headers;
    let started = Instant::now();
    sender.ready().await.map_err(|_| ())?;
    let response = sender.send_request(request).await.map_err(|_| ())?;
    let ok = response.status().is_success();
    let session = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let latency = started.elapsed().as_micros() as u64;
    let text = String::from_utf8_lossy(&body);
    let good = ok && text.contains("\"result\"") && !text.contains("\"isError\":true");
    Ok((latency, good, session))
}

/// Opens an MCP session on `sender`; returns the headers its calls carry.
async fn mcp_session(sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>) -> Vec<(&'static str, String)> {
    let accept = ("accept", "application/json, text/event-stream".to_owned());
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}});
    let (_, _, session) = one_call(
        sender,
        "/mcp",
        &Bytes::from(init.to_string()),
        std::slice::from_ref(&accept),
        None,
    )
    .await
    .expect("initialize");
    let headers = vec![
        accept,
        ("mcp-session-id", session.expect("a session id")),
        ("mcp-protocol-version", "2025-06-18".to_owned()),
    ];
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let _ = one_call(sender, "/mcp", &Bytes::from(initialized.to_string()), &headers, None).await;
    headers
}

/// Drives `clients` keep-alive connections for `duration`; returns latencies (us) and errors.
async fn drive(
    sock: PathBuf,
    clients: usize,
    duration: Duration,
    method: &'static str,
    signer: Option<Arc<Signer>>,
    mode: Mode,
) -> (Vec<u64>, usize) {
    let body = Bytes::from(
        match mode {
            Mode::Rpc => json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": {"message": "hello"}}),
            Mode::Mcp => json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "execute", "arguments": {"capability": method, "params": {"message": "hello"}}}}),
        }
        .to_string(),
    );
    let deadline = Instant::now() + duration;
    let tasks = (0..clients).map(|_| {
        let (sock, body, signer) = (sock.clone(), body.clone(), signer.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            let mut errors = 0;
            let stream = tokio::net::UnixStream::connect(&sock).await.expect("connect");
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            let (path, extra) = match mode {
                Mode::Rpc => ("/rpc", Vec::new()),
                Mode::Mcp => ("/mcp", mcp_session(&mut sender).await),
            };
            while Instant::now() < deadline {
                match one_call(&mut sender, path, &body, &extra, signer.as_deref()).await {
                    Ok((latency, good, _)) => {
                        latencies.push(latency);
                        errors += usize::from(!good);
                    }
                    Err(()) => {
                        errors += 1;
                        break;
                    }
                }
            }
            if mode == Mode::Mcp {
                // Closed, so the next round's sessions fit under the per-principal cap.
                let mut close = Request::delete("/mcp").body(Full::new(Bytes::new())).unwrap();
                close
                    .headers_mut()
                    .insert(http::header::HOST, HeaderValue::from_static("localhost"));
                for (name, value) in &extra {
                    close.headers_mut().insert(*name, HeaderValue::from_str(value).unwrap());
                }
                if sender.ready().await.is_ok() {
                    let _ = sender.send_request(close).await;
                }
            }
            (latencies, errors)
        })
    });
    let mut all = Vec::new();
    let mut errors = 0;
    for task in futures::future::join_all(tasks).await {
        let (l, e) = task.expect("client task");
        all.extend(l);
        errors += e;
    }
    (all, errors)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A policy of `n` rules: grants and guards for other claims and services, plus the grant
/// the benchmark's key needs (placed last, so matching walks every rule).
fn big_policy(n: usize) -> String {
    let mut text = String::new();
    for i in 0..n - 1 {
        match i % 2 {
            0 => text.push_str(&format!("[[grant]]\nclaim = \"team{i}\"\ncapabilities = [\"svc{i}.*\", \"shared.m{i}\"]\n\n")),
            _ => text.push_str(&format!(
                "[[guard]]\ncapabilities = [\"svc{i}.admin.*\"]\nside_effect = [\"admin\"]\neffect = \"require_approval\"\napprovers = [\"ops{i}\"]\n\n"
            )),
        }
    }
    text.push_str("[[grant]]\nclaim = \"bench\"\ncapabilities = [\"echo.*\"]\n");
    text
}

/// What every configuration shares: the temp dir, the example service, the bench key.
struct Setup {
    tmp: tempfile::TempDir,
    sockets: PathBuf,
    echo: Proc,
    echo_sock: PathBuf,
    key: SigningKey,
    policy_path: PathBuf,
    /// An OTLP/HTTP collector that takes every export (`o`), and what it received.
    collector: (std::net::SocketAddr, Arc<Received>),
    /// One that accepts connections and never answers (`k`).
    stuck: std::net::SocketAddr,
}

/// Export requests and bytes an OTLP collector received.
#[derive(Default)]
struct Received {
    requests: AtomicU64,
    bytes: AtomicU64,
}

/// Answers every POST with 200 and an empty body (an empty Export*ServiceResponse is the
/// empty protobuf message), counting requests and bytes.
async fn collector() -> std::io::Result<(std::net::SocketAddr, Arc<Received>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let received = Arc::new(Received::default());
    let counts = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counts = counts.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let counts = counts.clone();
                    async move {
                        let size = match request.into_body().collect().await {
                            Ok(body) => body.to_bytes().len() as u64,
                            Err(_) => 0,
                        };
                        counts.requests.fetch_add(1, Ordering::Relaxed);
                        counts.bytes.fetch_add(size, Ordering::Relaxed);
                        let mut response = hyper::Response::new(Full::new(Bytes::new()));
                        response
                            .headers_mut()
                            .insert("content-type", HeaderValue::from_static("application/x-protobuf"));
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, received))
}

/// Accepts connections and holds them, reading and answering nothing.
async fn stuck_collector() -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    Ok(addr)
}

/// Where one configuration sends its requests, and the process in the middle (if any).
struct Target {
    what: String,
    sock: PathBuf,
    method: &'static str,
    signer: Option<Arc<Signer>>,
    mode: Mode,
    hop: Option<Proc>,
}

/// The executor's async workers by default (one per core less one), which the proxy
/// anchor gets too.
fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// Starts nginx (or haproxy) as a plain reverse proxy on a Unix socket in front of the
/// example service; `None` when neither is on PATH.
async fn proxy(s: &Setup) -> Result<Option<Target>, Box<dyn std::error::Error>> {
    let dir = s.tmp.path().join("proxy");
    std::fs::create_dir_all(&dir)?;
    let sock = dir.join("proxy.sock");
    // A proxy killed by the previous round leaves its socket file behind.
    let _ = std::fs::remove_file(&sock);
    let (echo, listen) = (s.echo_sock.display(), sock.display());
    let (name, mut command) = if let Ok(nginx) = which("nginx") {
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off; master_process off; worker_processes {w}; pid {d}/nginx.pid; error_log stderr error;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; keepalive_requests 10000000;\n\
                   upstream echo {{ server unix:{echo}; keepalive 128; keepalive_requests 10000000; }}\n\
                   server {{ listen unix:{listen}; location / {{ proxy_pass http://echo;\n\
                     proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; }} }} }}\n",
                w = workers(),
                d = dir.display()
            ),
        )?;
        let mut command = Command::new(nginx);
        command.arg("-c").arg(&conf).arg("-p").arg(&dir);
        ("nginx", command)
    } else if let Ok(haproxy) = which("haproxy") {
        let conf = dir.join("haproxy.cfg");
        std::fs::write(
            &conf,
            format!(
                "global\n  nbthread {w}\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
                 frontend f\n  bind unix@{listen}\n  default_backend b\nbackend b\n  http-reuse always\n  server s unix@{echo}\n",
                w = workers()
            ),
        )?;
        let mut command = Command::new(haproxy);
        command.arg("-f").arg(&conf).arg("-db");
        ("haproxy", command)
    } else {
        return Ok(None);
    };
    let hop = Proc(command.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
    wait_for(&sock).await;
    Ok(Some(Target {
        what: format!("{name}, plain reverse proxy ({} worker)", workers()),
        sock,
        method: "echo",
        signer: None,
        mode: Mode::Rpc,
        hop: Some(hop),
    }))
}

/// A program on PATH.
fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .ok_or(())
}

/// Starts what configuration `config` measures.
async fn target(config: char, s: &Setup) -> Result<Option<Target>, Box<dyn std::error::Error>> {
    let what = match config {
        'a' => {
            return Ok(Some(Target {
                what: "direct to the example service".into(),
                sock: s.echo_sock.clone(),
                method: "echo",
                signer: None,
                mode: Mode::Rpc,
                hop: None,
            }));
        }
        'p' => return proxy(s).await,
        'b' => "executor, unsigned owner calls",
        'c' => "executor, signed calls",
        'd' => "executor, signed, 1,000-rule policy",
        'e' => "executor, MCP tools/call (execute)",
        'o' => "executor, unsigned, OTLP spans",
        'r' => "executor, unsigned, OTLP spans + runs",
        'k' => "executor, unsigned, OTLP to a stuck collector",
        other => return Err(format!("unknown configuration {other}").into()),
    };
    // A fresh data dir each time (a configuration may run at several concurrencies).
    let mut command = executor_command(s, config)?;
    if config == 'd' {
        command.arg("--policy").arg(&s.policy_path);
    }
    let collector = match config {
        'o' | 'r' => Some(s.collector.0),
        'k' => Some(s.stuck),
        _ => None,
    };
    if let Some(addr) = collector {
        command.arg("--otlp-endpoint").arg(format!("http://{addr}"));
    }
    if matches!(config, 'r' | 'k') {
        command.arg("--otlp-runs");
    }
    let hop = Proc(command.spawn()?);
    let rpc_sock = s.sockets.join("hero_executor/rpc.sock");
    wait_for(&rpc_sock).await;
    let signer = match config {
        'c' | 'd' => {
            let owner = hero_executor::client::Client::new(&rpc_sock);
            let public = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                s.key.verifying_key().as_bytes(),
            );
            owner
                .rpc(
                    "keys.add",
                    json!({"keyid": "bench", "public_key": public, "claims": ["bench", "agent"]}),
                    HeaderMap::new(),
                )
                .await?;
            Some(Arc::new(Signer::new("bench", s.key.clone())))
        }
        _ => None,
    };
    Ok(Some(Target {
        what: what.into(),
        sock: rpc_sock,
        method: "echo.echo",
        signer,
        mode: if config == 'e' { Mode::Mcp } else { Mode::Rpc },
        hop: Some(hop),
    }))
}

/// Measures one configuration at `clients`.
async fn measure(
    config: char,
    clients: usize,
    duration: Duration,
    s: &Setup,
) -> Result<Option<Row>, Box<dyn std::error::Error>> {
    let Some(target) = target(config, s).await? else {
        eprintln!(
            "configuration {config}: neither nginx nor haproxy is installed (apt-get install nginx haproxy); skipped"
        );
        return Ok(None);
    };
    let (sock, method, signer, mode) = (target.sock.clone(), target.method, target.signer.clone(), target.mode);
    // Warm up (connections, pools, caches), then measure.
    drive(
        sock.clone(),
        clients,
        Duration::from_millis(500),
        method,
        signer.clone(),
        mode,
    )
    .await;
    let hop_pid = target.hop.as_ref().map(|p| p.0.id());
    let cpu_before = (hop_pid.map(cpu_seconds), cpu_seconds(s.echo.0.id()));
    let switches_before = hop_pid.map(context_switches);
    let exported_before = received(&s.collector.1);
    let started = Instant::now();
    let (mut latencies, errors) = drive(sock.clone(), clients, duration, method, signer, mode).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = (hop_pid.map(cpu_seconds), cpu_seconds(s.echo.0.id()));
    let switches_after = hop_pid.map(context_switches);
    let otlp = match config {
        'o' | 'r' | 'k' => {
            let exported = received(&s.collector.1);
            let dropped = otlp_dropped(&sock).await;
            Some(json!({
                "dropped": dropped,
                "collector_requests": exported.0 - exported_before.0,
                "collector_bytes": exported.1 - exported_before.1,
            }))
        }
        _ => None,
    };
    latencies.sort_unstable();
    let requests = latencies.len();
    let per_req = |before: f64, after: f64| (after - before) / requests.max(1) as f64 * 1e6;
    let row = Row {
        config,
        clients,
        what: target.what.clone(),
        requests,
        errors,
        rps: requests as f64 / elapsed,
        p50_us: percentile(&latencies, 0.50),
        p90_us: percentile(&latencies, 0.90),
        p99_us: percentile(&latencies, 0.99),
        max_us: latencies.last().copied().unwrap_or(0),
        hop_cpu_us_per_req: cpu_before.0.zip(cpu_after.0).map(|(b, a)| per_req(b, a)),
        service_cpu_us_per_req: per_req(cpu_before.1, cpu_after.1),
        hop_switches_per_req: switches_before
            .zip(switches_after)
            .map(|(b, a)| a.saturating_sub(b) as f64 / requests.max(1) as f64),
        hop_peak_rss_mib: hop_pid.map(peak_rss_mib),
        ratio_to_a: None,
        ratio_to_proxy: None,
        cpu_ratio_to_proxy: None,
        added_p50_us: None,
        otlp,
    };
    drop(target);
    for socket in ["hero_executor/rpc.sock", "hero_executor/rest.sock"] {
        let _ = std::fs::remove_file(s.sockets.join(socket));
    }
    Ok(Some(row))
}

fn received(r: &Received) -> (u64, u64) {
    (r.requests.load(Ordering::Relaxed), r.bytes.load(Ordering::Relaxed))
}

/// `hero_executor_otlp_dropped_total` by signal and reason, from the executor's /metrics.
async fn otlp_dropped(rpc_sock: &Path) -> serde_json::Value {
    let client = hero_executor::client::Client::new(rpc_sock);
    let Ok(reply) = client.send(Method::GET, "/metrics", HeaderMap::new(), Vec::new()).await else {
        return json!("metrics unavailable");
    };
    let text = String::from_utf8_lossy(&reply.body);
    let mut dropped = serde_json::Map::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("hero_executor_otlp_dropped_total{"))
    {
        if let Some((labels, value)) = line.split_once("} ") {
            let key = labels
                .trim_start_matches("hero_executor_otlp_dropped_total{")
                .replace('"', "");
            dropped.insert(key, json!(value.parse::<f64>().unwrap_or(0.0)));
        }
    }
    json!(dropped)
}

/// The executor on the bench's sockets with a fresh data dir (named after `config`), no
/// rate limit and quiet logs: what every configuration starts from.
fn executor_command(s: &Setup, config: char) -> Result<Command, Box<dyn std::error::Error>> {
    let data = tempfile::Builder::new()
        .prefix(&format!("data-{config}-"))
        .tempdir_in(s.tmp.path())?
        .keep();
    let mut command = Command::new(binary("hero_executor"));
    command
        .arg("--socket-dir")
        .arg(&s.sockets)
        .arg("--data-dir")
        .arg(&data)
        .args(["--rate-limit-rps", "0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(command)
}

/// Ten calls as ten JSON-RPC requests vs one `script.run` making them, `rounds` times each,
/// from one client: wall time and executor CPU per round.
async fn script_rounds(rounds: usize, s: &Setup) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let hop = Proc(executor_command(s, 's')?.spawn()?);
    let rpc_sock = s.sockets.join("hero_executor/rpc.sock");
    wait_for(&rpc_sock).await;
    let client = hero_executor::client::Client::new(&rpc_sock);
    let source = "let n = 0; for i in 0..10 { let r = echo::echo(#{message: `m${i}`}); if r.ok { n += 1; } } n";
    let separate = || async {
        for i in 0..10 {
            let r = client
                .rpc("echo.echo", json!({"message": format!("m{i}")}), HeaderMap::new())
                .await;
            assert!(r.is_ok(), "{r:?}");
        }
    };
    let scripted = || async {
        let r = client
            .rpc("script.run", json!({"source": source}), HeaderMap::new())
            .await
            .expect("script.run");
        assert_eq!(r["value"], 10, "{r}");
    };
    // Warm up both, then measure each.
    for _ in 0..20 {
        separate().await;
        scripted().await;
    }
    let pid = hop.0.id();
    let (cpu, started) = (cpu_seconds(pid), Instant::now());
    for _ in 0..rounds {
        separate().await;
    }
    let separate_us = started.elapsed().as_secs_f64() / rounds as f64 * 1e6;
    let separate_cpu = (cpu_seconds(pid) - cpu) / rounds as f64 * 1e6;
    let (cpu, started) = (cpu_seconds(pid), Instant::now());
    for _ in 0..rounds {
        scripted().await;
    }
    let script_us = started.elapsed().as_secs_f64() / rounds as f64 * 1e6;
    let script_cpu = (cpu_seconds(pid) - cpu) / rounds as f64 * 1e6;
    drop(hop);
    for socket in [
        "hero_executor/rpc.sock",
        "hero_executor/rest.sock",
        "hero_executor/ui.sock",
    ] {
        let _ = std::fs::remove_file(s.sockets.join(socket));
    }
    println!();
    println!("10 calls, one client, {rounds} rounds (executor CPU from /proc):");
    println!("  10 separate JSON-RPC calls: {separate_us:>8.0} µs per round, {separate_cpu:>8.0} µs executor CPU");
    println!("  one script.run of 10 calls: {script_us:>8.0} µs per round, {script_cpu:>8.0} µs executor CPU");
    println!(
        "  script / separate: {:.2}x wall time, {:.2}x executor CPU",
        script_us / separate_us,
        script_cpu / separate_cpu
    );
    Ok(json!({
        "rounds": rounds,
        "separate_us_per_round": separate_us, "separate_cpu_us_per_round": separate_cpu,
        "script_us_per_round": script_us, "script_cpu_us_per_round": script_cpu,
    }))
}

/// The cost of OTLP export: each `o`, `r` and `k` row against the `b` row measured last
/// before it at the same concurrency (run `--configs b,o,b,o,b,o` for several pairs: the
/// machine drifts between runs more than within a pair), and the median of each
/// configuration's pairs.
fn print_otlp(rows: &[Row]) {
    let mut ratios: std::collections::BTreeMap<(char, usize), Vec<(f64, f64)>> = Default::default();
    for (i, row) in rows
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r.config, 'o' | 'r' | 'k'))
    {
        let Some(base) = rows[..i]
            .iter()
            .rev()
            .find(|r| r.config == 'b' && r.clients == row.clients)
        else {
            continue;
        };
        let cpu = row
            .hop_cpu_us_per_req
            .zip(base.hop_cpu_us_per_req)
            .map(|(own, b)| own / b);
        let rps = row.rps / base.rps;
        ratios
            .entry((row.config, row.clients))
            .or_default()
            .push((rps, cpu.unwrap_or(f64::NAN)));
        println!(
            "OTLP {} at C={}: {rps:.2}x the calls/s of the b before it, {}x its CPU per call, p50 {} vs {} us; {}",
            row.config,
            row.clients,
            cpu.map_or("-".to_owned(), |c| format!("{c:.2}")),
            row.p50_us,
            base.p50_us,
            row.otlp.as_ref().map_or(String::new(), ToString::to_string)
        );
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for ((config, clients), pairs) in ratios.into_iter().filter(|(_, p)| p.len() > 1) {
        let n = pairs.len();
        let (rps, cpu): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
        println!(
            "OTLP {config} at C={clients}, median of {n} pairs: {:.2}x the calls/s of b, {:.2}x its CPU per call",
            median(rps),
            median(cpu)
        );
    }
}

/// Opens `n` keep-alive connections to the executor, one call on each, and holds them
/// idle; returns the executor's RSS (MiB) before and while they are held, and how many
/// of them answered a second call afterwards.
async fn idle_connections(n: usize, s: &Setup) -> Result<(f64, f64, usize), Box<dyn std::error::Error>> {
    let target = target('b', s).await?.expect("the executor");
    let pid = target.hop.as_ref().expect("a process").0.id();
    let rss = |pid: u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    let before = rss(pid);
    let body = Bytes::from(
        json!({"jsonrpc": "2.0", "id": 1, "method": "echo.echo", "params": {"message": "idle"}}).to_string(),
    );
    let mut senders = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = tokio::net::UnixStream::connect(&target.sock).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        one_call(&mut sender, "/rpc", &body, &[], None)
            .await
            .map_err(|_| "a first call failed")?;
        senders.push(sender);
    }
    let held = rss(pid);
    let mut answered = 0;
    for sender in &mut senders {
        if let Ok((_, true, _)) = one_call(sender, "/rpc", &body, &[], None).await {
            answered += 1;
        }
    }
    drop(senders);
    drop(target);
    for socket in ["hero_executor/rpc.sock", "hero_executor/rest.sock"] {
        let _ = std::fs::remove_file(s.sockets.join(socket));
    }
    Ok((before, held, answered))
}

/// Fills each row's ratios against `a` and the proxy at the same concurrency.
fn ratios(rows: &mut [Row]) {
    let find = |rows: &[Row], config: char, clients: usize| {
        rows.iter()
            .find(|r| r.config == config && r.clients == clients)
            .map(|r| (r.rps, r.hop_cpu_us_per_req, r.p50_us))
    };
    let anchors: Vec<_> = rows
        .iter()
        .map(|r| (find(rows, 'a', r.clients), find(rows, 'p', r.clients)))
        .collect();
    for (row, (direct, proxy)) in rows.iter_mut().zip(anchors) {
        row.ratio_to_a = direct.map(|(rps, _, _)| row.rps / rps);
        row.added_p50_us = direct.map(|(_, _, p50)| row.p50_us as i64 - p50 as i64);
        row.ratio_to_proxy = proxy.map(|(rps, _, _)| row.rps / rps);
        row.cpu_ratio_to_proxy = proxy
            .and_then(|(_, cpu, _)| cpu)
            .zip(row.hop_cpu_us_per_req)
            .map(|(proxy, own)| own / proxy);
    }
}

fn print(rows: &[Row], duration: Duration) {
    println!(
        "{} s per configuration, {} cores; hop = the executor or the proxy",
        duration.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<2} {:>3} {:<40} {:>8} {:>7} {:>6} {:>6} {:>6} {:>5} {:>9} {:>8} {:>6} {:>6} {:>5} {:>8} {:>8} {:>7}",
        "",
        "C",
        "configuration",
        "req/s",
        "p50us",
        "p90us",
        "p99us",
        "+p50",
        "errs",
        "hop_cpuus",
        "svc_cpu",
        "cs/req",
        "rss",
        "vs_a",
        "vs_proxy",
        "cpu/prx",
        "max_us"
    );
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_owned(), |v| format!("{v:.prec$}"));
    for r in rows {
        println!(
            "{:<2} {:>3} {:<40} {:>8.0} {:>7} {:>6} {:>6} {:>6} {:>5} {:>9} {:>8.1} {:>6} {:>6} {:>5} {:>8} {:>8} {:>7}",
            r.config,
            r.clients,
            r.what,
            r.rps,
            r.p50_us,
            r.p90_us,
            r.p99_us,
            r.added_p50_us.map_or("-".to_owned(), |v| v.to_string()),
            r.errors,
            opt(r.hop_cpu_us_per_req, 1),
            r.service_cpu_us_per_req,
            opt(r.hop_switches_per_req, 2),
            opt(r.hop_peak_rss_mib, 1),
            opt(r.ratio_to_a, 2),
            opt(r.ratio_to_proxy, 2),
            opt(r.cpu_ratio_to_proxy, 2),
            r.max_us
        );
    }
}

/// Raises this process's open-file limit to its hard limit (children inherit it), for the
/// idle connections; returns the limit in force.
fn raise_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let files = raise_file_limit();
    let tmp = tempfile::tempdir()?;
    let sockets = tmp.path().join("sockets");
    let echo = Proc(
        Command::new(binary("echo_service"))
            .args(["--name", "echo", "--socket-dir"])
            .arg(&sockets)
            .stdout(Stdio::null())
            .spawn()?,
    );
    let echo_sock = sockets.join("echo/rpc.sock");
    wait_for(&echo_sock).await;
    let policy_path = tmp.path().join("policy-1000.toml");
    std::fs::write(&policy_path, big_policy(1000))?;
    let setup = Setup {
        tmp,
        sockets,
        echo,
        echo_sock,
        key: SigningKey::from_bytes(&[42; 32]),
        policy_path,
        collector: collector().await?,
        stuck: stuck_collector().await?,
    };
    let mut runs: Vec<(char, usize)> = args.configs.iter().map(|c| (*c, args.clients)).collect();
    if args.clients != 1 {
        runs.extend(args.single.iter().map(|c| (*c, 1)));
    }
    let mut rows = Vec::new();
    for (config, clients) in runs {
        if let Some(row) = measure(config, clients, args.duration, &setup).await? {
            rows.push(row);
        }
    }
    ratios(&mut rows);
    print(&rows, args.duration);
    print_otlp(&rows);
    let scripts = match args.scripts {
        0 => None,
        rounds => Some(script_rounds(rounds, &setup).await?),
    };
    let idle = match args.idle {
        0 => None,
        // The client ends are here, the server ends in the executor: each process needs n.
        n if (n as u64) + 256 > files => {
            println!(
                "{n} idle connections need {} open files in each process; the limit is {files}: skipped",
                n + 256
            );
            None
        }
        n => {
            let (before, held, answered) = idle_connections(n, &setup).await?;
            println!(
                "{n} idle keep-alive connections: executor RSS {before:.1} MiB before, {held:.1} MiB while held; \
                 {answered} of {n} answered a second call"
            );
            Some(json!({"connections": n, "rss_before_mib": before, "rss_held_mib": held, "answered": answered}))
        }
    };
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let report = json!({"clients": args.clients, "duration_s": args.duration.as_secs_f64(), "rows": rows, "idle": idle, "scripts": scripts});
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    println!("written to {}", args.out.display());
    Ok(())
}
