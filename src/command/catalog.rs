//! `catalog.*`: what the caller may run. Results only show capabilities the caller's
//! policy lets it run (possibly after approval).

use serde::Deserialize;
use serde_json::{Value, json};

use super::Describe;
use crate::access;
use crate::dispatch::Dispatcher;
use crate::error::ExecError;
use crate::intent::{Caller, CapabilityName, is_service_name};
use crate::policy::Verdict;

/// `catalog.list`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogList {
    pub service: Option<String>,
}

/// `catalog.search`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSearch {
    pub query: String,
    pub service: Option<String>,
    pub limit: Option<usize>,
}

/// `catalog.interface`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogInterface {
    pub service: Option<String>,
    /// `rhai` (default), `typescript`, `python`.
    pub language: Option<String>,
}

pub(super) fn interface(d: &Dispatcher, caller: &Caller, p: CatalogInterface) -> Result<Value, ExecError> {
    use crate::script::interface::{Language, render};
    check_service(p.service.as_deref())?;
    let language = match p.language.as_deref() {
        None => Language::Rhai,
        Some(text) => Language::parse(text).ok_or_else(|| {
            ExecError::invalid_params(format!(
                "catalog.interface: unknown language {text:?} (rhai, typescript, python)"
            ))
        })?,
    };
    let snapshot = d.catalog().snapshot();
    let visible = d.visible(caller, &snapshot);
    let caps: Vec<&crate::catalog::Capability> = snapshot
        .capabilities()
        .filter(|c| p.service.as_deref().is_none_or(|s| s == c.service) && visible.contains(c))
        .map(|c| c.as_ref())
        .collect();
    let text = render(&caps, language);
    Ok(json!({"language": p.language.as_deref().unwrap_or("rhai"), "capabilities": caps.len(), "interface": text}))
}

pub(super) fn list(d: &Dispatcher, caller: &Caller, p: CatalogList) -> Result<Value, ExecError> {
    check_service(p.service.as_deref())?;
    let snapshot = d.catalog().snapshot();
    let wanted = |name: &str| p.service.as_deref().is_none_or(|s| s == name);
    let visible = d.visible(caller, &snapshot);
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
    let unavailable: serde_json::Map<String, Value> = match access::is_admin(caller) {
        true => snapshot
            .unavailable
            .iter()
            .filter(|(name, _)| wanted(name))
            .map(|(name, why)| (name.clone(), Value::String(why.clone())))
            .collect(),
        false => Default::default(),
    };
    Ok(json!({ "services": services, "capabilities": capabilities, "unavailable": unavailable }))
}

pub(super) fn search(d: &Dispatcher, caller: &Caller, p: CatalogSearch) -> Result<Value, ExecError> {
    check_service(p.service.as_deref())?;
    let limit = p.limit.unwrap_or(20);
    if !(1..=200).contains(&limit) {
        return Err(ExecError::invalid_params("limit must be between 1 and 200"));
    }
    let snapshot = d.catalog().snapshot();
    let visible = d.visible(caller, &snapshot);
    let found: Vec<Value> = snapshot
        .search(&p.query, p.service.as_deref(), limit, |c| visible.contains(c))
        .iter()
        .map(|c| c.summary_json())
        .collect();
    Ok(json!({ "capabilities": found }))
}

pub(super) fn describe(d: &Dispatcher, caller: &Caller, p: Describe) -> Result<Value, ExecError> {
    let name = CapabilityName::parse(&p.capability).map_err(ExecError::invalid_params)?;
    let snapshot = d.catalog().snapshot();
    // One decision: it hides what the caller may not run, and explains the rest.
    let (cap, explanation) = snapshot
        .services
        .get(&name.service)
        .and_then(|s| s.capabilities.get(&name.method))
        .map(|c| (c, d.explain(caller, &c.name, &c.intent)))
        .filter(|(_, explanation)| explanation.verdict != Verdict::Deny)
        .ok_or_else(|| ExecError::NotFound(format!("no capability {name}")))?;
    let mut described = cap.describe_json();
    described["policy"] = serde_json::to_value(explanation).unwrap_or_default();
    Ok(described)
}

pub(super) fn openrpc(d: &Dispatcher, caller: &Caller) -> Value {
    let snapshot = d.catalog().snapshot();
    let visible = d.visible(caller, &snapshot);
    snapshot.openrpc(snapshot.capabilities().filter(|c| visible.contains(c)))
}

fn check_service(service: Option<&str>) -> Result<(), ExecError> {
    match service {
        Some(s) if !is_service_name(s) => Err(ExecError::invalid_params(format!("invalid service name {s:?}"))),
        _ => Ok(()),
    }
}
