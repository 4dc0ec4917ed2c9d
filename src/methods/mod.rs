//! The executor's own JSON-RPC methods (reserved namespaces, DESIGN section 3), governed
//! by built-in rules rather than grants (DESIGN section 7): any authenticated principal may
//! discover and search the catalog (filtered to what it may run) and manage its own runs;
//! approvers decide held runs; everything else needs the `executor.admin` claim.
//!
//! Every method here is documented in `openrpc.json`; a test checks the two lists
//! against each other.

mod admin;
mod catalog;
mod runs;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::dispatch::Dispatcher;
use crate::error::{ExecError, Failure};
use crate::intent::{Caller, CapabilityName, Intent, Outcome, Surface};
use crate::jsonrpc::raw;

/// First segments no target service may use.
pub const RESERVED_NAMESPACES: &[&str] = &["rpc", "execute", "catalog", "runs", "policy", "keys", "executor"];

/// Every method this module answers.
pub const METHODS: &[&str] = &[
    "rpc.discover",
    "execute",
    "catalog.list",
    "catalog.search",
    "catalog.describe",
    "catalog.refresh",
    "catalog.openrpc",
    "runs.list",
    "runs.get",
    "runs.wait",
    "runs.approve",
    "runs.reject",
    "runs.cancel",
    "runs.prune",
    "policy.get",
    "policy.explain",
    "policy.check",
    "policy.reload",
    "keys.list",
    "keys.add",
    "keys.revoke",
];

/// The claim that lets a principal manage keys, policy, and every run.
pub const ADMIN_CLAIM: &str = "executor.admin";

/// Whether `method` belongs to the executor rather than to a target service.
pub fn is_reserved(method: &str) -> bool {
    let first = method.split('.').next().unwrap_or_default();
    RESERVED_NAMESPACES.contains(&first)
}

/// `rpc.discover`: the embedded `openrpc.json` as the result, byte for byte.
pub fn discover() -> Outcome {
    RawValue::from_string(crate::OPENRPC_JSON.trim().to_owned())
        .map_err(|e| ExecError::Internal(format!("embedded openrpc.json is not JSON: {e}")).into())
}

/// Answers one of the executor's own methods.
pub async fn handle(d: &Dispatcher, caller: &Caller, surface: Surface, method: &str, params: Option<Value>) -> Outcome {
    let (namespace, _) = method.split_once('.').unwrap_or((method, ""));
    let value = match namespace {
        "rpc" if method == "rpc.discover" => return discover(),
        "execute" if method == "execute" => return execute(d, caller, surface, params).await,
        "catalog" => catalog::handle(d, caller, method, params).await?,
        "runs" => runs::handle(d, caller, method, params).await?,
        "policy" | "keys" => admin::handle(d, caller, method, params).await?,
        _ => None,
    };
    match value {
        Some(value) => Ok(raw(&value)),
        None => Err(ExecError::MethodNotFound(format!("the executor has no method {method:?}")).into()),
    }
}

/// Params of `execute`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecuteParams {
    capability: String,
    params: Option<Value>,
    idempotency_key: Option<String>,
}

async fn execute(d: &Dispatcher, caller: &Caller, surface: Surface, params: Option<Value>) -> Outcome {
    let p: ExecuteParams = parse("execute", params)?;
    let capability = CapabilityName::parse(&p.capability).map_err(ExecError::invalid_params)?;
    if is_reserved(&p.capability) {
        return Err(ExecError::invalid_params(format!(
            "{} is one of the executor's own methods: call it directly",
            p.capability
        ))
        .into());
    }
    let intent = Intent {
        caller: caller.clone(),
        capability,
        params: p.params,
        surface,
        idempotency_key: p.idempotency_key,
    };
    d.execute(intent).await
}

/// Built-in rule: `executor.admin` (full trust holds it).
fn require_admin(caller: &Caller, method: &str) -> Result<(), ExecError> {
    if caller.claims.holds(ADMIN_CLAIM) {
        return Ok(());
    }
    Err(ExecError::Denied(format!(
        "{method} needs the {ADMIN_CLAIM} claim; {} holds {}",
        caller.principal.id, caller.claims
    )))
}

/// For methods that take no params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// Reads by-name params into `T`; absent params are an empty object.
fn parse<T: DeserializeOwned>(method: &str, params: Option<Value>) -> Result<T, Failure> {
    let params = match params {
        None => Value::Object(Default::default()),
        Some(obj @ Value::Object(_)) => obj,
        Some(_) => {
            return Err(ExecError::invalid_params(format!("{method} takes its params by name (an object)")).into());
        }
    };
    serde_json::from_value(params).map_err(|e| ExecError::invalid_params(format!("{method}: {e}")).into())
}
