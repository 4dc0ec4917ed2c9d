//! The client-side subcommands (`keygen`, `keys`, `call`): thin wrappers over
//! [`crate::client`], printing for people.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use http::HeaderMap;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{CatalogAction, Command, KeysAction, PolicyAction, RunsAction, ScriptAction, SigningArgs, SourcesAction};
use crate::client::{Client, ClientError, Signer, hero_headers};
use crate::identity::signature::{private_key_pem, public_key_pem};

/// A client command that did not succeed: what to print, and the exit code a script can
/// act on (README, "Exit codes").
#[derive(Debug)]
pub struct Failed {
    pub code: u8,
    pub message: String,
}

/// Exit codes of the client commands.
pub mod exit {
    /// Anything else: the executor is unreachable, a file cannot be read, ...
    pub const OTHER: u8 = 1;
    /// The call is held for a human's approval (or a waited-for run is still pending).
    pub const HELD: u8 = 3;
    /// Denied: by policy, an approver's rejection, an expiry, a cancellation.
    pub const DENIED: u8 = 4;
    /// The input is invalid: params, names, a run or key that does not exist, a conflict.
    pub const INVALID: u8 = 5;
    /// The target failed: unavailable, timed out, answered garbage, or its own error.
    pub const TARGET: u8 = 6;
    /// Not authenticated: no acceptable signature, or a key not enrolled or revoked.
    pub const UNAUTHENTICATED: u8 = 7;
}

impl From<String> for Failed {
    fn from(message: String) -> Self {
        Self {
            code: exit::OTHER,
            message,
        }
    }
}

impl From<&str> for Failed {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

/// Runs a client command against the daemon whose sockets are under `socket_dir`.
pub async fn run(command: &Command, socket_dir: &Path) -> Result<(), Failed> {
    let rpc_sock = socket_dir.join(crate::SERVICE_NAME).join("rpc.sock");
    match command {
        Command::Keygen { out, force } => {
            let out = match out {
                Some(out) => out.clone(),
                None => default_key_path()?,
            };
            Ok(keygen(&out, *force)?)
        }
        Command::Keys { action, auth } => keys(&client(&rpc_sock, auth).await?, action).await,
        Command::Mcp { auth, direct_tools } => {
            let signer = match (&auth.key, &auth.keyid) {
                (Some(key), Some(keyid)) => Some(Signer::load(key, keyid.clone()).map_err(show)?),
                _ => None,
            };
            Ok(crate::mcp_bridge::run_stdio_bridge(&rpc_sock, signer, *direct_tools).await?)
        }
        Command::Catalog { action, auth } => catalog(&client(&rpc_sock, auth).await?, action).await,
        Command::Runs { action, auth } => runs(&client(&rpc_sock, auth).await?, action).await,
        Command::Policy { action, auth } => policy(&client(&rpc_sock, auth).await?, action).await,
        Command::Sources { action, auth } => sources(&client(&rpc_sock, auth).await?, action).await,
        Command::Script { action, auth } => script(&client(&rpc_sock, auth).await?, action).await,
        Command::Call {
            capability,
            params,
            auth,
            context,
            claims,
            user,
            idempotency_key,
        } => {
            let mut headers = hero_headers(*context, claims.as_deref(), user.as_deref()).map_err(show)?;
            if let Some(key) = idempotency_key {
                let value = http::HeaderValue::from_str(key)
                    .map_err(|_| Failed::from("--idempotency-key must be visible ASCII"))?;
                headers.insert("idempotency-key", value);
            }
            call(&client(&rpc_sock, auth).await?, capability, params.as_deref(), headers).await
        }
    }
}

async fn keys(client: &Client, action: &KeysAction) -> Result<(), Failed> {
    match action {
        KeysAction::Add {
            keyid,
            public_key,
            claims,
            contexts,
            note,
        } => {
            let public_key = read_public_key(public_key)?;
            let params = json!({"keyid": keyid, "public_key": public_key, "claims": claims,
                                "contexts": contexts, "note": note});
            let key = client
                .rpc("keys.add", crate::jsonrpc::without_nulls(params), HeaderMap::new())
                .await
                .map_err(show)?;
            println!(
                "enrolled {} with claims {}",
                key["keyid"].as_str().unwrap_or_default(),
                key["claims"]
            );
        }
        KeysAction::List => {
            let listed = client
                .rpc("keys.list", json!({}), HeaderMap::new())
                .await
                .map_err(show)?;
            print_keys(listed["keys"].as_array().map(Vec::as_slice).unwrap_or_default());
        }
        KeysAction::Revoke { keyid } => {
            client
                .rpc("keys.revoke", json!({ "keyid": keyid }), HeaderMap::new())
                .await
                .map_err(show)?;
            println!("revoked {keyid}");
        }
    }
    Ok(())
}

async fn script(client: &Client, action: &ScriptAction) -> Result<(), Failed> {
    let (method, params) = match action {
        ScriptAction::Run {
            file,
            args,
            timeout_ms,
            idempotency_key,
        } => {
            let source = match file.to_str() {
                Some("-") => {
                    let mut text = String::new();
                    std::io::stdin().read_to_string(&mut text).map(|_| text)
                }
                _ => std::fs::read_to_string(file),
            }
            .map_err(|e| Failed {
                code: exit::OTHER,
                message: format!("cannot read {}: {e}", file.display()),
            })?;
            let args = args
                .as_deref()
                .map(serde_json::from_str::<Value>)
                .transpose()
                .map_err(|e| Failed {
                    code: exit::INVALID,
                    message: format!("--args is not JSON: {e}"),
                })?;
            let params =
                json!({"source": source, "args": args, "timeout_ms": timeout_ms, "idempotency_key": idempotency_key});
            ("script.run", crate::jsonrpc::without_nulls(params))
        }
        ScriptAction::Interface { service, language } => (
            "catalog.interface",
            crate::jsonrpc::without_nulls(json!({"service": service, "language": language})),
        ),
    };
    let value = client.rpc(method, params, HeaderMap::new()).await.map_err(show)?;
    if let ScriptAction::Interface { .. } = action {
        print!("{}", value["interface"].as_str().unwrap_or_default());
        return Ok(());
    }
    println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
    // A script that did not succeed says so in the exit code, as a call would.
    match value["status"].as_str() {
        Some("awaiting_approval") => Err(Failed {
            code: exit::HELD,
            message: format!(
                "held for approval: run {}",
                value["held_run_id"].as_str().unwrap_or("?")
            ),
        }),
        Some("failed") => Err(Failed {
            code: exit::INVALID,
            message: format!(
                "the script failed: {}",
                value["error"]["message"].as_str().unwrap_or("?")
            ),
        }),
        _ => Ok(()),
    }
}

async fn sources(client: &Client, action: &SourcesAction) -> Result<(), Failed> {
    let (method, params) = match action {
        SourcesAction::List => ("sources.list", json!({})),
        SourcesAction::Accept { name, fingerprint } => (
            "sources.accept",
            crate::jsonrpc::without_nulls(json!({"name": name, "fingerprint": fingerprint})),
        ),
        SourcesAction::Reload => ("sources.reload", json!({})),
    };
    let value = client.rpc(method, params, HeaderMap::new()).await.map_err(show)?;
    println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
    Ok(())
}

async fn policy(client: &Client, action: &PolicyAction) -> Result<(), Failed> {
    let value = match action {
        PolicyAction::Check => client.rpc("policy.check", json!({}), HeaderMap::new()).await,
        PolicyAction::Explain {
            capability,
            for_keyid,
            claims,
            context,
        } => {
            let params = json!({"capability": capability, "keyid": for_keyid, "claims": claims, "context": context});
            client
                .rpc(
                    "policy.explain",
                    crate::jsonrpc::without_nulls(params),
                    HeaderMap::new(),
                )
                .await
        }
        PolicyAction::Reload => client.rpc("policy.reload", json!({}), HeaderMap::new()).await,
    }
    .map_err(show)?;
    println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
    Ok(())
}

/// `call`: one capability; a held call says how to approve and collect it.
async fn call(client: &Client, capability: &str, params: Option<&str>, headers: HeaderMap) -> Result<(), Failed> {
    let params = match params {
        None => json!({}),
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("reading stdin: {e}"))?;
            parse_json(&text)?
        }
        Some(text) => parse_json(text)?,
    };
    let result = match client.rpc(capability, params, headers).await {
        Err(ClientError::Rpc {
            code: -32010,
            data: Some(data),
            ..
        }) => {
            let run_id = data["run_id"].as_str().unwrap_or_default();
            return Err(Failed {
                code: exit::HELD,
                message: format!(
                    "held for approval as run {run_id}; an approver runs `hero_executor runs approve {run_id}`, \
                     and `hero_executor runs wait {run_id}` collects the result"
                ),
            });
        }
        other => other.map_err(show)?,
    };
    println!("{}", serde_json::to_string_pretty(&result).unwrap_or_default());
    Ok(())
}

async fn runs(client: &Client, action: &RunsAction) -> Result<(), Failed> {
    let rpc = |method: &'static str, params: Value| async move {
        client
            .rpc(method, crate::jsonrpc::without_nulls(params), HeaderMap::new())
            .await
            .map_err(show)
    };
    match action {
        RunsAction::List {
            status,
            capability,
            principal,
            since,
            cursor,
            limit,
            inbox,
            json,
        } => {
            let inbox = inbox.then_some(true);
            let since = since.as_deref().map(since_ms).transpose()?;
            let page = rpc(
                "runs.list",
                json!({"status": status, "capability": capability, "principal": principal, "limit": limit,
                       "inbox": inbox, "since": since, "cursor": cursor}),
            )
            .await?;
            let runs = page["runs"].as_array().map(Vec::as_slice).unwrap_or_default();
            if *json {
                print_json(&page);
            } else {
                print_runs(runs);
            }
            if let Some(next) = page["next_cursor"].as_str() {
                eprintln!("more runs: add --cursor {next}");
            }
        }
        RunsAction::Show { run_id } => print_json(&rpc("runs.get", json!({ "run_id": run_id })).await?),
        RunsAction::Wait { run_id, timeout_ms } => {
            let run = rpc("runs.wait", json!({ "run_id": run_id, "timeout_ms": timeout_ms })).await?;
            print_json(&run);
            // A script waiting for a run learns how it ended from the exit code.
            let code = match run["status"].as_str().unwrap_or_default() {
                "succeeded" => return Ok(()),
                "awaiting_approval" | "running" => exit::HELD,
                "denied" | "rejected" | "expired" | "cancelled" => exit::DENIED,
                _ => exit::TARGET,
            };
            return Err(Failed {
                code,
                message: format!("run {run_id} is {}", run["status"].as_str().unwrap_or("unknown")),
            });
        }
        RunsAction::Approve { run_id, note } => {
            let run = rpc("runs.approve", json!({ "run_id": run_id, "note": note })).await?;
            println!(
                "approved {run_id} ({}): now {}",
                run["name"].as_str().unwrap_or_default(),
                run["status"].as_str().unwrap_or_default()
            );
        }
        RunsAction::Reject { run_id, reason } => {
            rpc("runs.reject", json!({ "run_id": run_id, "reason": reason })).await?;
            println!("rejected {run_id}");
        }
        RunsAction::Cancel { run_id } => {
            rpc("runs.cancel", json!({ "run_id": run_id })).await?;
            println!("cancelled {run_id}");
        }
        RunsAction::Prune {
            older_than_secs,
            status,
        } => {
            let pruned = rpc(
                "runs.prune",
                json!({ "older_than_s": older_than_secs, "status": status }),
            )
            .await?;
            println!("deleted {} runs", pruned["deleted"]);
        }
    }
    Ok(())
}

fn print_runs(runs: &[Value]) {
    println!(
        "{:<36}  {:<24} {:<17} {:<20} {:>6} {:>9}",
        "ID", "NAME", "STATUS", "PRINCIPAL", "AGE", "DURATION"
    );
    for run in runs {
        let age = ago(run["created_at"].as_i64().unwrap_or_default() / 1000);
        let duration = run["duration_ms"]
            .as_i64()
            .map_or("-".to_owned(), |ms| format!("{ms}ms"));
        println!(
            "{:<36}  {:<24} {:<17} {:<20} {:>6} {:>9}",
            run["id"].as_str().unwrap_or_default(),
            run["name"].as_str().unwrap_or_default(),
            run["status"].as_str().unwrap_or_default(),
            run["principal"].as_str().unwrap_or_default(),
            age.trim_end_matches(" ago"),
            duration
        );
    }
}

fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// A client of rpc.sock that signs with `--key` (if given) and verifies every response
/// against the key the daemon publishes.
async fn client(rpc_sock: &Path, auth: &SigningArgs) -> Result<Client, Failed> {
    let mut client = Client::new(rpc_sock);
    if let (Some(key), Some(keyid)) = (&auth.key, &auth.keyid) {
        client = client.with_signer(Signer::load(key, keyid.clone()).map_err(show)?);
    }
    client.trust_published_key().await.map_err(show)
}

/// `~/hero/var/keys/hero_executor.pem` (the directory made, mode 0700): keys live outside
/// any checkout, where they cannot be committed by accident.
fn default_key_path() -> Result<PathBuf, String> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or("$HOME is not set: give --out")?;
    let dir = PathBuf::from(home).join("hero/var/keys");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir.join("hero_executor.pem"))
}

fn keygen(out: &Path, force: bool) -> Result<(), String> {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let private = private_key_pem(&key).map_err(|e| e.0)?;
    let public = public_key_pem(&key.verifying_key());
    let public_path = PathBuf::from(format!("{}.pub", out.display()));
    write_new(out, private.as_bytes(), 0o600, force)?;
    write_new(&public_path, public.as_bytes(), 0o644, force)?;
    let fingerprint = hex::encode(Sha256::digest(key.verifying_key().as_bytes()));
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "agent".into());
    let keyid = format!("{user}-{}", &fingerprint[..8]);
    println!("private key: {} (mode 0600)", out.display());
    println!("public key:  {}", public_path.display());
    print!("{public}");
    println!("suggested keyid: {keyid}");
    println!(
        "enrol it:    hero_executor keys add {keyid} {} --claims <claims>",
        public_path.display()
    );
    Ok(())
}

fn write_new(path: &Path, contents: &[u8], mode: u32, force: bool) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => format!("{} exists; use --force to overwrite", path.display()),
        _ => format!("cannot write {}: {e}", path.display()),
    })?;
    file.write_all(contents)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A public key argument: a file holding one, or the key itself (PEM or base64).
fn read_public_key(arg: &str) -> Result<String, String> {
    let path = Path::new(arg);
    if !arg.starts_with("-----BEGIN") && path.is_file() {
        return std::fs::read_to_string(path).map_err(|e| format!("cannot read {arg}: {e}"));
    }
    Ok(arg.to_owned())
}

fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("params are not JSON: {e}"))
}

fn print_keys(keys: &[Value]) {
    println!(
        "{:<24} {:<32} {:<12} {:<20} NOTE",
        "KEYID", "CLAIMS", "CONTEXTS", "STATUS"
    );
    for key in keys {
        let list = |v: &Value| match v.as_array() {
            Some(items) => items
                .iter()
                .map(|i| i.to_string().trim_matches('"').to_owned())
                .collect::<Vec<_>>()
                .join(","),
            None => "any".to_owned(),
        };
        let status = match key["revoked_at"].as_i64() {
            Some(at) => format!("revoked {}", ago(at)),
            None => format!("added {}", ago(key["created_at"].as_i64().unwrap_or_default())),
        };
        println!(
            "{:<24} {:<32} {:<12} {:<20} {}",
            key["keyid"].as_str().unwrap_or_default(),
            list(&key["claims"]),
            list(&key["contexts"]),
            status,
            key["note"].as_str().unwrap_or_default()
        );
    }
}

/// "3m ago" style age of a Unix timestamp.
fn ago(at: i64) -> String {
    let secs = (crate::now_unix() - at).max(0);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// A client error, with the exit code its JSON-RPC code stands for.
fn show(e: ClientError) -> Failed {
    let code = match &e {
        ClientError::Rpc { code, .. } => match *code {
            -32001 | -32005 => exit::UNAUTHENTICATED,
            -32002 | -32011 => exit::DENIED,
            -32010 => exit::HELD,
            -32600 | -32601 | -32602 | -32003 | -32004 | -32700 => exit::INVALID,
            -32603 | -32029 => exit::OTHER,
            _ => exit::TARGET,
        },
        _ => exit::OTHER,
    };
    Failed {
        code,
        message: e.to_string(),
    }
}

/// `--since`: Unix milliseconds, or a time ago (`30s`, `10m`, `2h`, `7d`).
fn since_ms(text: &str) -> Result<i64, Failed> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let invalid = || Failed {
        code: exit::INVALID,
        message: format!("--since {text:?}: use Unix milliseconds or a time ago such as 30s, 10m, 2h, 7d"),
    };
    // The unit is the last character (which may be any character a user typed).
    let at = text.char_indices().last().map_or(0, |(i, _)| i);
    let (number, unit) = text.split_at(at);
    let seconds: i64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(invalid()),
    };
    let count: i64 = number.parse().map_err(|_| invalid())?;
    Ok(crate::runs::now_ms() - count.saturating_mul(seconds).saturating_mul(1000))
}

/// `hero_executor catalog ...`: the capabilities the caller may run.
async fn catalog(client: &Client, action: &CatalogAction) -> Result<(), Failed> {
    let rpc = |method: &'static str, params: Value| async move {
        client
            .rpc(method, crate::jsonrpc::without_nulls(params), HeaderMap::new())
            .await
            .map_err(show)
    };
    let listed = match action {
        CatalogAction::Describe { capability } => {
            print_json(&rpc("catalog.describe", json!({ "capability": capability })).await?);
            return Ok(());
        }
        CatalogAction::List { service } => rpc("catalog.list", json!({ "service": service })).await?,
        CatalogAction::Search { query, service, limit } => {
            rpc(
                "catalog.search",
                json!({"query": query, "service": service, "limit": limit}),
            )
            .await?
        }
    };
    println!("{:<40} {:<14} SUMMARY", "CAPABILITY", "SIDE EFFECT");
    for cap in listed["capabilities"].as_array().into_iter().flatten() {
        println!(
            "{:<40} {:<14} {}",
            cap["name"].as_str().unwrap_or_default(),
            cap["x-hero-intent"]["side_effect_class"].as_str().unwrap_or("-"),
            cap["summary"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_milliseconds_or_a_time_ago_and_refuses_the_rest() {
        assert_eq!(since_ms("1700000000000").unwrap(), 1_700_000_000_000);
        let ago = crate::runs::now_ms() - since_ms("2h").unwrap();
        assert!((7_199_000..=7_201_000).contains(&ago), "{ago}");
        // A unit of several bytes is refused, not a panic.
        for bad in ["5µ", "µ", "", "5x", "h"] {
            assert_eq!(since_ms(bad).map_err(|f| f.code), Err(exit::INVALID), "{bad:?}");
        }
    }
}
