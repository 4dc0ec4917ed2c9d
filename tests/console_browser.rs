//! The operator console in a real browser (issue 14, DESIGN section 14): Debian's headless
//! Chromium, driven by selenium from `tests/browser/console.py`, against the real daemon's
//! ui.sock through a TCP forwarder in this test (a browser speaks TCP, the console a Unix
//! socket). It proves that a held call appears in the approver's inbox without a reload and
//! is approved there with a note (the run page shows `succeeded`, the approver and the note,
//! and `runs.get` agrees); that a hostile service description is inert text; and that a
//! form on another origin cannot decide a run, even with a valid token.
//!
//! Needs `chromium` and `chromedriver` (`apt-get install chromium chromium-driver`) and the
//! selenium package (`make python-deps`). Without them the test says why and skips, except
//! under `CI=true`: `.ci/run` installs them, so there their absence is a failure.
//! Screenshots of every page it visits land in `target/tmp/console_browser/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use common::*;
use hero_executor::client::{Client, ClientError};
use http::HeaderMap;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, UnixStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// A service description that must show as text and never run.
const HOSTILE: &str = r#"<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">"#;

/// The capability whose catalog entry carries [`HOSTILE`].
const HOSTILE_CAPABILITY: &str = "shady.lure";

/// The note the approver types in the browser; its markup must stay text too.
const NOTE: &str = r#"checked in the browser: <b>fine</b> & "go""#;

/// The held capability: the example service's counter reset, approved by `ops`.
const HELD: &str = "echo.counter.reset";

/// The longest the driver may stay silent between two messages (Chromium's start included);
/// each of its own browser waits is at most 20 s.
const DRIVER_STEP: Duration = Duration::from_secs(90);

const POLICY: &str = r#"
[[grant]]
claim = "agent"
capabilities = ["echo.*", "shady.*"]

[[guard]]
capabilities = ["echo.counter.reset"]
effect = "require_approval"
approvers = ["ops"]
reason = "resetting the counter needs a holder of ops"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_approves_a_held_call_live_and_neither_hostile_text_nor_another_origin_gets_through() {
    let browser = match find_browser() {
        Ok(browser) => browser,
        Err(why) => return skip(&why),
    };

    // The node: the example service, a service with a hostile description, the real daemon.
    let node = Node::new();
    let _log = DaemonLogOnPanic(&node);
    let _shady = node.serve_stub("shady", shady_service()).await;
    let _echo = node.spawn_echo("echo");
    let policy = node.tmp.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let _daemon = node
        .spawn_daemon(&["--policy", policy.to_str().expect("a UTF-8 temp path")])
        .await;
    let ui = node.socket_dir().join("hero_executor/ui.sock");
    eventually("ui.sock's /health", || async {
        match UnixStream::connect(&ui).await {
            Ok(_) => get(&ui, "/health").await.status == 200,
            Err(_) => false,
        }
    })
    .await;
    let rpc_sock = node.rpc_sock();
    eventually("the catalog to hold echo and shady", || async {
        let names = capability_names(&rpc_sock).await;
        [HELD, HOSTILE_CAPABILITY].iter().all(|c| names.iter().any(|n| n == c))
    })
    .await;
    enrol(&node, "agent", &key(1), &["agent"], None).await;
    let agent = signed_client(&node, "agent", &key(1));

    // Before any browser: the console answers where the contract says it does.
    let root = get(&ui, "/").await;
    assert_eq!(root.status, 303, "GET / on ui.sock: {root:?}");
    assert_eq!(
        root.headers.get("location").and_then(|v| v.to_str().ok()),
        Some("/runs"),
        "GET / redirects to /runs: {root:?}"
    );

    let (addr, forwarder) = forward_tcp_to_unix(ui.clone()).await;
    let url = format!("http://{addr}");
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console_browser");
    let mut driver = Driver::start(&browser, &url, &artifacts);

    // 1. The inbox is open in the browser; only now is the call made, and held.
    let Some(opened) = driver.event("approvals_open").await else {
        return;
    };
    let approved_id = hold(&agent).await;
    driver.send(&approved_id).await;

    // 2. The driver approved it from the browser; a second held call for the CSRF attempt.
    if driver.event("need_csrf_run").await.is_none() {
        return;
    }
    let csrf_id = hold(&agent).await;
    driver.send(&csrf_id).await;
    let report = driver.finish().await;
    forwarder.abort();

    // What the browser saw.
    let seen = &report["approved"];
    assert_eq!(seen["run_id"], approved_id.as_str(), "{report:#}");
    assert_eq!(seen["status"], "succeeded", "{report:#}");
    assert_eq!(seen["note"], NOTE, "the run page shows the note as typed: {report:#}");
    assert_eq!(report["csrf"]["run_id"], csrf_id.as_str(), "{report:#}");
    let heading = report["csrf"]["heading"].as_str().unwrap_or_default();
    assert!(
        heading.contains("Refused"),
        "the cross-origin POST ends on the refusal: {report:#}"
    );

    // What the executor recorded.
    let uid = rustix::process::getuid().as_raw();
    let owner = format!("uid:{uid}");
    let run = run_as_owner(&node, &approved_id).await;
    assert_eq!(run["status"], "succeeded", "the approved run: {run:#}");
    assert_eq!(run["principal"], "agent", "the run is the agent's: {run:#}");
    assert_eq!(
        run["approver"],
        owner.as_str(),
        "the console's viewer approved it: {run:#}"
    );
    assert_eq!(run["decision_note"], NOTE, "the note typed in the browser: {run:#}");
    assert_eq!(
        seen["approver"],
        owner.as_str(),
        "the run page names the approver: {report:#}"
    );

    let refused = run_as_owner(&node, &csrf_id).await;
    assert_eq!(
        refused["status"], "awaiting_approval",
        "a form on another origin decided nothing: {refused:#}"
    );
    assert!(refused["approver"].is_null(), "nobody approved it: {refused:#}");

    // The same refusal without a browser, to see its status code: a foreign Origin with
    // the page's own token is 403.
    let token = csrf_token(&get(&ui, "/approvals").await);
    let body = format!("csrf={token}&decision=approve&note=from+elsewhere");
    let forged = http(
        &ui,
        "POST",
        &format!("/runs/{csrf_id}/decide"),
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("origin", "http://127.0.0.1:1"),
        ],
        body,
    )
    .await;
    assert_eq!(
        forged.status,
        403,
        "a POST from another origin: {}",
        String::from_utf8_lossy(&forged.body)
    );
    let still = run_as_owner(&node, &csrf_id).await;
    assert_eq!(still["status"], "awaiting_approval", "{still:#}");

    eprintln!(
        "console in Chromium: live stream open before the call: {}; narrow window overflow (px): {}; screenshots in {}",
        opened["event_source_open"],
        report["narrow_overflow_px"],
        artifacts.display()
    );
}

// ---- the node ------------------------------------------------------------------------

/// A service whose OpenRPC document describes itself and its one method with [`HOSTILE`].
fn shady_service() -> Router {
    let spec = json!({
        "openrpc": "1.3.2",
        "info": {"title": "shady", "version": "1", "description": HOSTILE},
        "methods": [{
            "name": "lure",
            "summary": HOSTILE,
            "description": HOSTILE,
            "params": [],
            "result": {"name": "r", "schema": {"type": "object"}},
            "x-hero-intent": {"side_effect_class": "read"}
        }]
    });
    Router::new().route(
        "/rpc",
        post(move |body: String| {
            let spec = spec.clone();
            async move {
                let request: Value = serde_json::from_str(&body).unwrap_or_default();
                let answer = match request["method"].as_str() {
                    Some("rpc.discover") => json!({"jsonrpc": "2.0", "id": request["id"], "result": spec}),
                    Some("lure") => json!({"jsonrpc": "2.0", "id": request["id"], "result": {}}),
                    _ => json!({"jsonrpc": "2.0", "id": request["id"],
                                "error": {"code": -32601, "message": "no such method"}}),
                };
                answer.to_string()
            }
        }),
    )
}

/// Prints the daemon's log when the test fails.
struct DaemonLogOnPanic<'a>(&'a Node);

impl Drop for DaemonLogOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- the daemon's log ---\n{}", self.0.daemon_log());
        }
    }
}

/// Makes the held call as the agent (signed, through OpenRPC) and returns its run id.
async fn hold(agent: &Client) -> String {
    match agent.rpc(HELD, json!({}), HeaderMap::new()).await {
        Err(ClientError::Rpc { code: -32010, data, .. }) => data
            .as_ref()
            .and_then(|d| d["run_id"].as_str())
            .unwrap_or_else(|| panic!("-32010 without a run_id: {data:?}"))
            .to_owned(),
        other => panic!("{HELD} should be held for approval (-32010), got {other:?}"),
    }
}

/// `runs.get` as the owner (unsigned, same uid).
async fn run_as_owner(node: &Node, run_id: &str) -> Value {
    let response = rpc(&node.rpc_sock(), "runs.get", json!({ "run_id": run_id })).await;
    assert!(response["result"].is_object(), "runs.get {run_id}: {response}");
    response["result"].clone()
}

/// The `content` of a page's `<meta name="csrf-token">`.
fn csrf_token(page: &Answer) -> String {
    let html = String::from_utf8_lossy(&page.body);
    html.split("<meta")
        .skip(1)
        .filter_map(|tag| tag.split('>').next())
        .find(|tag| tag.contains("csrf-token"))
        .and_then(|tag| tag.split("content=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no <meta name=\"csrf-token\" content=...> on the page: {html}"))
        .to_owned()
}

/// Forwards every TCP connection on a fresh 127.0.0.1 port to `sock`.
async fn forward_tcp_to_unix(sock: PathBuf) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let sock = sock.clone();
            tokio::spawn(async move {
                if let Ok(mut unix) = UnixStream::connect(&sock).await {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                }
            });
        }
    });
    (addr, task)
}

// ---- the browser ---------------------------------------------------------------------

/// Chromium and its driver, found on this machine.
struct Browser {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

/// The browser, or why there is none: each missing piece, with how to install it.
fn find_browser() -> Result<Browser, String> {
    let chromium = executable("HERO_TEST_CHROMIUM", &["chromium", "chromium-browser"]);
    let chromedriver = executable("HERO_TEST_CHROMEDRIVER", &["chromedriver"]);
    let mut missing = Vec::new();
    if chromium.is_none() {
        missing.push("chromium is not installed (apt-get install chromium)".to_owned());
    }
    if chromedriver.is_none() {
        missing.push("chromedriver is not installed (apt-get install chromium-driver)".to_owned());
    }
    match std::process::Command::new("python3")
        .args(["-c", "import selenium"])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(_) => missing.push("the selenium Python package is not installed (make python-deps)".to_owned()),
        Err(e) => missing.push(format!("python3 cannot be started ({e})")),
    }
    match (chromium, chromedriver) {
        (Some(chromium), Some(chromedriver)) if missing.is_empty() => Ok(Browser { chromium, chromedriver }),
        _ => Err(missing.join("; ")),
    }
}

/// `$var` if set, else the first of `names` found executable on `$PATH`.
fn executable(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Some(PathBuf::from(path)).filter(|p| is_executable(p));
    }
    let dirs = std::env::var_os("PATH")?;
    std::env::split_paths(&dirs)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Skips the test saying why, or fails it under `CI=true` (where `.ci/run` installs the browser).
fn skip(why: &str) {
    assert!(
        !std::env::var("CI").is_ok_and(|ci| ci == "true"),
        "CI=true, yet the browser test cannot run: {why}. .ci/run installs chromium, chromium-driver and selenium: see what it printed"
    );
    // Straight to stderr: the test harness would swallow eprintln! of a passing test.
    let line = format!("skipping: {why}\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

/// `tests/browser/console.py`, in its own process group so Chromium goes with it.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Every line it printed, for failure messages.
    said: Vec<String>,
}

/// One message of the driver.
enum Said {
    Event(Value),
    Done(Value),
    Skip(String),
}

impl Driver {
    fn start(browser: &Browser, url: &str, artifacts: &Path) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/console.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("--url")
            .arg(url)
            .arg("--chromium")
            .arg(&browser.chromium)
            .arg("--chromedriver")
            .arg(&browser.chromedriver)
            .args(["--capability", HOSTILE_CAPABILITY, "--payload", HOSTILE, "--note", NOTE])
            .arg("--artifacts")
            .arg(artifacts)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("start python3 tests/browser/console.py");
        let stdin = child.stdin.take().expect("the driver's stdin");
        let stdout = BufReader::new(child.stdout.take().expect("the driver's stdout")).lines();
        Self {
            child,
            stdin,
            stdout,
            said: Vec::new(),
        }
    }

    /// The driver's next JSON message (other lines are kept for failure messages only).
    async fn next(&mut self, waiting_for: &str) -> Said {
        loop {
            let line = match tokio::time::timeout(DRIVER_STEP, self.stdout.next_line()).await {
                Err(_) => panic!(
                    "the browser driver said nothing for {} s while the test waited for {waiting_for}; before, it said:\n{}",
                    DRIVER_STEP.as_secs(),
                    self.said.join("\n")
                ),
                Ok(Err(e)) => panic!("reading the browser driver's output: {e}"),
                Ok(Ok(None)) => {
                    let status = tokio::time::timeout(DRIVER_STEP, self.child.wait()).await;
                    panic!(
                        "the browser driver exited ({status:?}) while the test waited for {waiting_for}; it said:\n{}",
                        self.said.join("\n")
                    )
                }
                Ok(Ok(Some(line))) => line,
            };
            self.said.push(line.clone());
            let Ok(message) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let skipped = message["skip"].as_str().map(str::to_owned);
            break match skipped {
                Some(why) => Said::Skip(why),
                None if message.get("ok").is_some() => Said::Done(message),
                None => Said::Event(message),
            };
        }
    }

    /// Waits for the event `name`; `None` when the driver skipped (selenium is missing).
    async fn event(&mut self, name: &str) -> Option<Value> {
        match self.next(name).await {
            Said::Event(event) if event["event"] == name => Some(event),
            Said::Event(other) => panic!("the browser driver said {other} while the test waited for {name}"),
            Said::Skip(why) => {
                skip(&why);
                None
            }
            Said::Done(report) => panic!("{}", failure(&report, &self.said)),
        }
    }

    /// Sends one line (a run id) to the driver.
    async fn send(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to the browser driver");
        self.stdin.flush().await.expect("flush to the browser driver");
    }

    /// Its final report, once it exited 0 with `"ok": true`.
    async fn finish(mut self) -> Value {
        let report = match self.next("its report").await {
            Said::Done(report) => report,
            Said::Skip(why) => panic!("the browser driver skipped late: {why}"),
            Said::Event(event) => panic!("the browser driver said {event} where its report was due"),
        };
        let status = tokio::time::timeout(DRIVER_STEP, self.child.wait())
            .await
            .expect("the browser driver exits after its report")
            .expect("wait for the browser driver");
        assert!(
            report["ok"] == true && status.success(),
            "{} (exit status {status})",
            failure(&report, &self.said)
        );
        report
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group (python3, chromedriver, Chromium), unless it already exited.
        if let Some(pid) = self.child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// A driver's failure report, readable.
fn failure(report: &Value, said: &[String]) -> String {
    let field = |key: &str| report[key].as_str().unwrap_or_default().to_owned();
    format!(
        "the browser check failed at: {}\n  {}\n  page: {} ({})\n  page text: {}\n  browser console: {}\n  everything the driver said:\n{}",
        field("step"),
        field("error"),
        field("url"),
        field("title"),
        field("text"),
        report["console_log"],
        said.join("\n")
    )
}
