//! The executor's own JSON-RPC methods (reserved namespaces, DESIGN section 3).
//!
//! Every method here is documented in `openrpc.json`; a test checks the two lists
//! against each other.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::dispatch::Dispatcher;
use crate::error::ExecError;
use crate::identity::registry::NewKey;
use crate::intent::{Caller, CapabilityName, Intent, Outcome, Surface, is_service_name};
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
    "keys.list",
    "keys.add",
    "keys.revoke",
];

/// The claim that lets a principal manage keys and the executor itself.
pub const ADMIN_CLAIM: &str = "executor.admin";

/// Whether `method` belongs to the executor rather than to a target service.
pub fn is_reserved(method: &str) -> bool {
    let first = method.split('.').next().unwrap_or_default();
    RESERVED_NAMESPACES.contains(&first)
}

/// `rpc.discover`: the embedded `openrpc.json` as the result, byte for byte.
pub fn discover() -> Outcome {
    RawValue::from_string(crate::OPENRPC_JSON.trim().to_owned())
        .map_err(|e| ExecError::Internal(format!("embedded openrpc.json is not JSON: {e}")))
}

/// Answers one of the executor's own methods.
pub async fn handle(d: &Dispatcher, caller: &Caller, surface: Surface, method: &str, params: Option<Value>) -> Outcome {
    match method {
        "rpc.discover" => discover(),
        "execute" => {
            let p: ExecuteParams = parse(method, params)?;
            let capability = CapabilityName::parse(&p.capability).map_err(ExecError::invalid_params)?;
            if is_reserved(&p.capability) {
                return Err(ExecError::invalid_params(format!(
                    "{} is one of the executor's own methods: call it directly",
                    p.capability
                )));
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
        "catalog.list" => {
            let p: ListParams = parse(method, params)?;
            if let Some(service) = &p.service
                && !is_service_name(service)
            {
                return Err(ExecError::invalid_params(format!("invalid service name {service:?}")));
            }
            let snapshot = d.catalog().snapshot();
            let wanted = |name: &str| p.service.as_deref().is_none_or(|s| s == name);
            let capabilities: Vec<Value> = snapshot
                .capabilities()
                .filter(|c| wanted(&c.service))
                .map(|c| c.summary_json())
                .collect();
            let services: Vec<Value> = snapshot
                .services
                .values()
                .filter(|s| wanted(&s.name))
                .map(|s| {
                    json!({
                        "name": s.name,
                        "capabilities": s.capabilities.len(),
                        "fingerprint": s.fingerprint,
                        "warnings": s.warnings,
                    })
                })
                .collect();
            let unavailable: serde_json::Map<String, Value> = snapshot
                .unavailable
                .iter()
                .filter(|(name, _)| wanted(name))
                .map(|(name, why)| (name.clone(), Value::String(why.clone())))
                .collect();
            Ok(raw(
                &json!({ "services": services, "capabilities": capabilities, "unavailable": unavailable }),
            ))
        }
        "catalog.search" => {
            let p: SearchParams = parse(method, params)?;
            let limit = p.limit.unwrap_or(20);
            if !(1..=200).contains(&limit) {
                return Err(ExecError::invalid_params("limit must be between 1 and 200"));
            }
            let found: Vec<Value> = d
                .catalog()
                .snapshot()
                .search(&p.query, p.service.as_deref(), limit)
                .iter()
                .map(|c| c.summary_json())
                .collect();
            Ok(raw(&json!({ "capabilities": found })))
        }
        "catalog.describe" => {
            let p: DescribeParams = parse(method, params)?;
            let name = CapabilityName::parse(&p.capability).map_err(ExecError::invalid_params)?;
            let snapshot = d.catalog().snapshot();
            let cap = snapshot
                .services
                .get(&name.service)
                .and_then(|s| s.capabilities.get(&name.method))
                .ok_or_else(|| ExecError::NotFound(format!("no capability {name}")))?;
            Ok(raw(&cap.describe_json()))
        }
        "catalog.refresh" => {
            let _: NoParams = parse(method, params)?;
            Ok(raw(&d.catalog().refresh().await))
        }
        "catalog.openrpc" => {
            let _: NoParams = parse(method, params)?;
            let snapshot = d.catalog().snapshot();
            Ok(raw(&snapshot.openrpc(snapshot.capabilities())))
        }
        "keys.list" => {
            require_admin(caller, method)?;
            let _: NoParams = parse(method, params)?;
            let keys: Vec<Value> = d.registry().list().iter().map(|k| k.to_json()).collect();
            Ok(raw(&json!({ "keys": keys })))
        }
        "keys.add" => {
            require_admin(caller, method)?;
            let new: NewKey = parse(method, params)?;
            Ok(raw(&d.registry().add(new).await?.to_json()))
        }
        "keys.revoke" => {
            require_admin(caller, method)?;
            let p: RevokeParams = parse(method, params)?;
            Ok(raw(&d.registry().revoke(&p.keyid).await?.to_json()))
        }
        _ => Err(ExecError::MethodNotFound(format!(
            "the executor has no method {method:?}"
        ))),
    }
}

/// Built-in rule: managing keys needs the `executor.admin` claim (full trust holds it).
fn require_admin(caller: &Caller, method: &str) -> Result<(), ExecError> {
    if caller.claims.holds(ADMIN_CLAIM) {
        return Ok(());
    }
    Err(ExecError::Denied(format!(
        "{method} needs the {ADMIN_CLAIM} claim; {} holds {}",
        caller.principal.id, caller.claims
    )))
}

/// Params of `keys.revoke`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeParams {
    keyid: String,
}

/// Params of `execute`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecuteParams {
    capability: String,
    params: Option<Value>,
    idempotency_key: Option<String>,
}

/// Params of `catalog.list`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    service: Option<String>,
}

/// Params of `catalog.search`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchParams {
    query: String,
    service: Option<String>,
    limit: Option<usize>,
}

/// Params of `catalog.describe`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DescribeParams {
    capability: String,
}

/// For methods that take no params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// Reads by-name params into `T`; absent params are an empty object.
fn parse<T: DeserializeOwned>(method: &str, params: Option<Value>) -> Result<T, ExecError> {
    let params = match params {
        None => Value::Object(Default::default()),
        Some(obj @ Value::Object(_)) => obj,
        Some(_) => {
            return Err(ExecError::invalid_params(format!(
                "{method} takes its params by name (an object)"
            )));
        }
    };
    serde_json::from_value(params).map_err(|e| ExecError::invalid_params(format!("{method}: {e}")))
}
