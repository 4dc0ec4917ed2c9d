//! The client-side subcommands (`keygen`, `keys`, `call`): thin wrappers over
//! [`crate::client`], printing for people.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use http::HeaderMap;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Command, KeysAction, PolicyAction, RunsAction, SigningArgs};
use crate::client::{Client, ClientError, Signer, hero_headers};
use crate::identity::signature::{private_key_pem, public_key_pem};

/// Runs a client command against the daemon whose sockets are under `socket_dir`.
pub async fn run(command: &Command, socket_dir: &Path) -> Result<(), String> {
    let rpc_sock = socket_dir.join(crate::SERVICE_NAME).join("rpc.sock");
    match command {
        Command::Keygen { out, force } => keygen(out, *force),
        Command::Keys { action, auth } => keys(&client(&rpc_sock, auth).await?, action).await,
        Command::Mcp { auth, direct_tools } => {
            let signer = match (&auth.key, &auth.keyid) {
                (Some(key), Some(keyid)) => Some(Signer::load(key, keyid.clone()).map_err(show)?),
                _ => None,
            };
            crate::mcp_bridge::run_stdio_bridge(&rpc_sock, signer, *direct_tools).await
        }
        Command::Runs { action, auth } => runs(&client(&rpc_sock, auth).await?, action).await,
        Command::Policy { action, auth } => policy(&client(&rpc_sock, auth).await?, action).await,
        Command::Call {
            capability,
            params,
            auth,
            context,
            claims,
            user,
        } => {
            let headers = hero_headers(*context, claims.as_deref(), user.as_deref()).map_err(show)?;
            call(&client(&rpc_sock, auth).await?, capability, params.as_deref(), headers).await
        }
    }
}

async fn keys(client: &Client, action: &KeysAction) -> Result<(), String> {
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

async fn policy(client: &Client, action: &PolicyAction) -> Result<(), String> {
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
async fn call(client: &Client, capability: &str, params: Option<&str>, headers: HeaderMap) -> Result<(), String> {
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
            return Err(format!(
                "held for approval as run {run_id}; an approver runs `hero_executor runs approve {run_id}`, \
                 and `hero_executor runs wait {run_id}` collects the result"
            ));
        }
        other => other.map_err(show)?,
    };
    println!("{}", serde_json::to_string_pretty(&result).unwrap_or_default());
    Ok(())
}

async fn runs(client: &Client, action: &RunsAction) -> Result<(), String> {
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
            limit,
            inbox,
            json,
        } => {
            let inbox = inbox.then_some(true);
            let page = rpc(
                "runs.list",
                json!({"status": status, "capability": capability, "principal": principal, "limit": limit,
                       "inbox": inbox}),
            )
            .await?;
            let runs = page["runs"].as_array().map(Vec::as_slice).unwrap_or_default();
            if *json {
                print_json(&page);
            } else {
                print_runs(runs);
            }
        }
        RunsAction::Show { run_id } => print_json(&rpc("runs.get", json!({ "run_id": run_id })).await?),
        RunsAction::Wait { run_id, timeout_ms } => {
            print_json(&rpc("runs.wait", json!({ "run_id": run_id, "timeout_ms": timeout_ms })).await?)
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
async fn client(rpc_sock: &Path, auth: &SigningArgs) -> Result<Client, String> {
    let mut client = Client::new(rpc_sock);
    if let (Some(key), Some(keyid)) = (&auth.key, &auth.keyid) {
        client = client.with_signer(Signer::load(key, keyid.clone()).map_err(show)?);
    }
    client.trust_published_key().await.map_err(show)
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

fn show(e: ClientError) -> String {
    e.to_string()
}
