//! `make bench`: what the executor costs on top of a direct call.
//!
//! Starts the example service and the executor (release builds) on temp-dir sockets, then
//! drives C concurrent keep-alive clients for D seconds in each configuration:
//!
//! - `a`: directly to the example service (the floor);
//! - `b`: through the executor, unsigned owner calls;
//! - `c`: through the executor, signed calls (one Ed25519 signature per request, one
//!   verification and one response signature in the executor);
//! - `d`: signed calls under a policy of 1,000 rules.
//!
//! Every call through the executor is recorded as a run (runs are always on). Prints a
//! table and writes JSON (`bench-results/bench.json`): requests/s, latency percentiles,
//! errors, CPU seconds per request of the executor and the service (from /proc), the
//! executor's peak RSS, and each configuration's throughput as a ratio of `a`.
//!
//! `cargo run --release --example bench -- [--clients 32] [--duration 10] [--configs a,b,c,d] [--out FILE]`

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use hero_executor::client::Signer;
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

struct Args {
    clients: usize,
    duration: Duration,
    configs: Vec<char>,
    out: PathBuf,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        clients: 32,
        duration: Duration::from_secs(10),
        configs: vec!['a', 'b', 'c', 'd'],
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
            "--out" => a.out = value()?.into(),
            "-h" | "--help" => {
                return Err("bench [--clients C] [--duration SECONDS] [--configs a,b,c,d] [--out FILE]".into());
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
    what: &'static str,
    requests: usize,
    errors: usize,
    rps: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    max_us: u64,
    executor_cpu_us_per_req: Option<f64>,
    service_cpu_us_per_req: f64,
    executor_peak_rss_mib: Option<f64>,
    ratio_to_a: Option<f64>,
}

/// Drives `clients` keep-alive connections for `duration`; returns latencies (us) and errors.
async fn drive(
    sock: PathBuf,
    clients: usize,
    duration: Duration,
    method: &'static str,
    signer: Option<Arc<Signer>>,
) -> (Vec<u64>, usize) {
    let body =
        Bytes::from(json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": {"message": "hello"}}).to_string());
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
            let uri: Uri = "/rpc".parse().unwrap();
            while Instant::now() < deadline {
                let mut headers = HeaderMap::new();
                headers.insert(http::header::HOST, HeaderValue::from_static("localhost"));
                headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                if let Some(signer) = &signer {
                    signer
                        .sign(&Method::POST, &uri, &mut headers, &body, hero_executor::now_unix())
                        .expect("sign");
                }
                let mut request = Request::post(uri.clone()).body(Full::new(body.clone())).unwrap();
                *request.headers_mut() = headers;
                let started = Instant::now();
                if sender.ready().await.is_err() {
                    errors += 1;
                    break;
                }
                match sender.send_request(request).await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        let body = response
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        latencies.push(started.elapsed().as_micros() as u64);
                        let answer: Value = serde_json::from_slice(&body).unwrap_or_default();
                        if !ok || answer.get("result").is_none() {
                            errors += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
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
    let key = SigningKey::from_bytes(&[42; 32]);
    let policy_path = tmp.path().join("policy-1000.toml");
    std::fs::write(&policy_path, big_policy(1000))?;

    let mut rows: Vec<Row> = Vec::new();
    for config in &args.configs {
        let (what, executor): (&'static str, Option<Proc>) = match config {
            'a' => ("direct to the example service", None),
            'b' | 'c' | 'd' => {
                let data = tmp.path().join(format!("data-{config}"));
                let mut command = Command::new(binary("hero_executor"));
                command
                    .arg("--socket-dir")
                    .arg(&sockets)
                    .arg("--data-dir")
                    .arg(&data)
                    .args(["--rate-limit-rps", "0"])
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                if *config == 'd' {
                    command.arg("--policy").arg(&policy_path);
                }
                let what = match config {
                    'b' => "executor, unsigned owner calls",
                    'c' => "executor, signed calls",
                    _ => "executor, signed, 1,000-rule policy",
                };
                (what, Some(Proc(command.spawn()?)))
            }
            other => return Err(format!("unknown configuration {other}").into()),
        };
        let rpc_sock = sockets.join("hero_executor/rpc.sock");
        let signer = match (config, &executor) {
            ('c' | 'd', Some(_)) => {
                wait_for(&rpc_sock).await;
                let owner = hero_executor::client::Client::new(&rpc_sock);
                let public = base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    key.verifying_key().as_bytes(),
                );
                owner
                    .rpc(
                        "keys.add",
                        json!({"keyid": "bench", "public_key": public, "claims": ["bench", "agent"]}),
                        HeaderMap::new(),
                    )
                    .await?;
                Some(Arc::new(Signer::new("bench", key.clone())))
            }
            _ => None,
        };
        let (sock, method) = match &executor {
            None => (echo_sock.clone(), "echo"),
            Some(_) => {
                wait_for(&rpc_sock).await;
                (rpc_sock.clone(), "echo.echo")
            }
        };
        // Warm up (connections, pools, caches), then measure.
        drive(
            sock.clone(),
            args.clients,
            Duration::from_millis(500),
            method,
            signer.clone(),
        )
        .await;
        let exec_pid = executor.as_ref().map(|p| p.0.id());
        let cpu_before = (exec_pid.map(cpu_seconds), cpu_seconds(echo.0.id()));
        let started = Instant::now();
        let (mut latencies, errors) = drive(sock, args.clients, args.duration, method, signer).await;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu_after = (exec_pid.map(cpu_seconds), cpu_seconds(echo.0.id()));
        latencies.sort_unstable();
        let requests = latencies.len();
        let per_req = |before: f64, after: f64| (after - before) / requests.max(1) as f64 * 1e6;
        rows.push(Row {
            config: *config,
            what,
            requests,
            errors,
            rps: requests as f64 / elapsed,
            p50_us: percentile(&latencies, 0.50),
            p90_us: percentile(&latencies, 0.90),
            p99_us: percentile(&latencies, 0.99),
            max_us: latencies.last().copied().unwrap_or(0),
            executor_cpu_us_per_req: cpu_before.0.zip(cpu_after.0).map(|(b, a)| per_req(b, a)),
            service_cpu_us_per_req: per_req(cpu_before.1, cpu_after.1),
            executor_peak_rss_mib: exec_pid.map(peak_rss_mib),
            ratio_to_a: None,
        });
        drop(executor);
        let _ = std::fs::remove_file(sockets.join("hero_executor/rpc.sock"));
        let _ = std::fs::remove_file(sockets.join("hero_executor/rest.sock"));
    }
    let base = rows.iter().find(|r| r.config == 'a').map(|r| r.rps);
    for row in &mut rows {
        row.ratio_to_a = base.map(|b| row.rps / b);
    }

    println!(
        "clients {}, {} s per configuration, {} cores",
        args.clients,
        args.duration.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<3} {:<38} {:>9} {:>8} {:>7} {:>7} {:>7} {:>8} {:>6} {:>11} {:>11} {:>8} {:>6}",
        "",
        "configuration",
        "requests",
        "req/s",
        "p50us",
        "p90us",
        "p99us",
        "max_us",
        "errors",
        "exec_cpu_us",
        "svc_cpu_us",
        "rss_mib",
        "vs_a"
    );
    for r in &rows {
        let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_owned(), |v| format!("{v:.prec$}"));
        println!(
            "{:<3} {:<38} {:>9} {:>8.0} {:>7} {:>7} {:>7} {:>8} {:>6} {:>11} {:>11.1} {:>8} {:>6}",
            r.config,
            r.what,
            r.requests,
            r.rps,
            r.p50_us,
            r.p90_us,
            r.p99_us,
            r.max_us,
            r.errors,
            opt(r.executor_cpu_us_per_req, 1),
            r.service_cpu_us_per_req,
            opt(r.executor_peak_rss_mib, 1),
            opt(r.ratio_to_a, 2)
        );
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let report = json!({"clients": args.clients, "duration_s": args.duration.as_secs_f64(), "rows": rows});
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    println!("written to {}", args.out.display());
    Ok(())
}
