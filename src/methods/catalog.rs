//! `catalog.*`: what the caller may run. Results only show capabilities the caller's
//! policy lets it run (possibly after approval).

use serde::Deserialize;
use serde_json::{Value, json};

use super::{NoParams, parse};
use crate::dispatch::Dispatcher;
use crate::error::{ExecError, Failure};
use crate::intent::{Caller, CapabilityName, is_service_name};
use crate::policy::Verdict;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    service: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchParams {
    query: String,
    service: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DescribeParams {
    capability: String,
}

pub(super) async fn handle(
    d: &Dispatcher,
    caller: &Caller,
    method: &str,
    params: Option<Value>,
) -> Result<Option<Value>, Failure> {
    let snapshot = d.catalog().snapshot();
    let visible = || d.visible(caller, &snapshot);
    Ok(Some(match method {
        "catalog.list" => {
            let p: ListParams = parse(method, params)?;
            check_service(p.service.as_deref())?;
            let wanted = |name: &str| p.service.as_deref().is_none_or(|s| s == name);
            let visible = visible();
            let capabilities: Vec<Value> = snapshot
                .capabilities()
                .filter(|c| wanted(&c.service) && visible.contains(c))
                .map(|c| c.summary_json())
                .collect();
            // Services are listed when the caller may run at least one of their capabilities.
            let services: Vec<Value> = snapshot
                .services
                .values()
                .filter(|s| wanted(&s.name) && s.capabilities.values().any(|c| visible.contains(c)))
                .map(|s| {
                    json!({
                        "name": s.name,
                        "capabilities": s.capabilities.values().filter(|c| visible.contains(c)).count(),
                        "fingerprint": s.fingerprint,
                        "warnings": s.warnings,
                    })
                })
                .collect();
            let unavailable: serde_json::Map<String, Value> = match caller.claims.holds(super::ADMIN_CLAIM) {
                true => snapshot
                    .unavailable
                    .iter()
                    .filter(|(name, _)| wanted(name))
                    .map(|(name, why)| (name.clone(), Value::String(why.clone())))
                    .collect(),
                false => Default::default(),
            };
            json!({ "services": services, "capabilities": capabilities, "unavailable": unavailable })
        }
        "catalog.search" => {
            let p: SearchParams = parse(method, params)?;
            check_service(p.service.as_deref())?;
            let limit = p.limit.unwrap_or(20);
            if !(1..=200).contains(&limit) {
                return Err(ExecError::invalid_params("limit must be between 1 and 200").into());
            }
            let visible = visible();
            let found: Vec<Value> = snapshot
                .search(&p.query, p.service.as_deref(), limit, |c| visible.contains(c))
                .iter()
                .map(|c| c.summary_json())
                .collect();
            json!({ "capabilities": found })
        }
        "catalog.describe" => {
            let p: DescribeParams = parse(method, params)?;
            let name = CapabilityName::parse(&p.capability).map_err(ExecError::invalid_params)?;
            // One decision: it hides what the caller may not run, and explains the rest.
            let (cap, decision) = snapshot
                .services
                .get(&name.service)
                .and_then(|s| s.capabilities.get(&name.method))
                .map(|c| (c, d.decide(caller, &c.name, &c.intent)))
                .filter(|(_, decision)| decision.verdict != Verdict::Deny)
                .ok_or_else(|| ExecError::NotFound(format!("no capability {name}")))?;
            let mut described = cap.describe_json();
            described["policy"] = serde_json::to_value(decision).unwrap_or_default();
            described
        }
        "catalog.refresh" => {
            let _: NoParams = parse(method, params)?;
            serde_json::to_value(d.catalog().refresh().await).unwrap_or_default()
        }
        "catalog.openrpc" => {
            let _: NoParams = parse(method, params)?;
            let visible = visible();
            snapshot.openrpc(snapshot.capabilities().filter(|c| visible.contains(c)))
        }
        _ => return Ok(None),
    }))
}

fn check_service(service: Option<&str>) -> Result<(), Failure> {
    match service {
        Some(s) if !is_service_name(s) => Err(ExecError::invalid_params(format!("invalid service name {s:?}")).into()),
        _ => Ok(()),
    }
}
