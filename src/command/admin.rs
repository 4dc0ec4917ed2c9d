//! `keys.*` and `policy.*`: administration, for holders of `executor.admin`.

use serde::Deserialize;
use serde_json::{Value, json};

use super::NewKey;
use crate::access::require_admin;
use crate::catalog::HeroIntent;
use crate::dispatch::Dispatcher;
use crate::error::{ExecError, ParamError};
use crate::intent::{Caller, CapabilityName, Claims};
use crate::policy::Subject;

/// `keys.revoke`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRef {
    pub keyid: String,
}

/// `policy.explain`: how policy decides `capability` for a key (or the caller), with claims
/// and a context.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Explain {
    pub capability: String,
    pub claims: Option<Vec<String>>,
    pub context: Option<u64>,
    pub keyid: Option<String>,
}

pub(super) fn keys_list(d: &Dispatcher, caller: &Caller) -> Result<Value, ExecError> {
    require_admin(caller, "keys.list")?;
    Ok(json!({ "keys": d.registry().list().iter().map(|k| k.to_json()).collect::<Vec<_>>() }))
}

pub(super) async fn keys_add(d: &Dispatcher, caller: &Caller, new: NewKey) -> Result<Value, ExecError> {
    require_admin(caller, "keys.add")?;
    Ok(d.registry().add(new).await?.to_json())
}

pub(super) async fn keys_revoke(d: &Dispatcher, caller: &Caller, p: KeyRef) -> Result<Value, ExecError> {
    require_admin(caller, "keys.revoke")?;
    Ok(d.registry().revoke(&p.keyid).await?.to_json())
}

pub(super) fn policy_get(d: &Dispatcher, caller: &Caller) -> Result<Value, ExecError> {
    require_admin(caller, "policy.get")?;
    let policy = d.policy();
    Ok(json!({
        "source": policy.source,
        "rules": policy.rule_count(),
        "text": policy.text,
        "in_force": policy.rules(),
    }))
}

pub(super) fn explain(d: &Dispatcher, caller: &Caller, p: Explain) -> Result<Value, ExecError> {
    require_admin(caller, "policy.explain")?;
    CapabilityName::parse(&p.capability).map_err(ExecError::invalid_params)?;
    let (principal, ceiling) = match &p.keyid {
        Some(keyid) => {
            let key = d
                .registry()
                .get(keyid)
                .ok_or_else(|| ExecError::NotFound(format!("no key {keyid}")))?;
            (keyid.clone(), key.claims.clone())
        }
        None => (caller.principal.id.clone(), caller.principal.ceiling.clone()),
    };
    let requested = p
        .claims
        .map(|c| Claims::parse(&c.join(",")))
        .transpose()
        .map_err(ExecError::invalid_params)?;
    let claims = match (&p.keyid, requested) {
        (Some(_), requested) => ceiling.narrow(requested.as_ref()),
        (None, Some(requested)) => requested,
        (None, None) => caller.claims.clone(),
    };
    let snapshot = d.catalog().snapshot();
    let (service, method_name) = p.capability.split_once('.').unwrap_or_default();
    let known = snapshot
        .services
        .get(service)
        .and_then(|s| s.capabilities.get(method_name));
    let intent = known.map_or(HeroIntent::UNDECLARED, |c| c.intent);
    let subject = Subject {
        principal: &principal,
        claims: &claims,
        ceiling: &ceiling,
        context: p.context.unwrap_or(0),
    };
    let explanation = d.policy().explain(subject, &p.capability, &intent);
    Ok(json!({
        "capability": p.capability,
        "principal": principal,
        "claims": claims,
        "context": subject.context,
        "in_catalog": known.is_some(),
        "x-hero-intent": intent,
        "decision": explanation,
    }))
}

pub(super) fn policy_check(d: &Dispatcher, caller: &Caller) -> Result<Value, ExecError> {
    require_admin(caller, "policy.check")?;
    let snapshot = d.catalog().snapshot();
    let names: Vec<&str> = snapshot.capabilities().map(|c| c.name.as_str()).collect();
    let policy = d.policy();
    Ok(json!({
        "source": policy.source,
        "capabilities": names.len(),
        "unmatched": policy.unmatched_patterns(names.iter().copied()),
    }))
}

pub(super) fn policy_reload(d: &Dispatcher, caller: &Caller) -> Result<Value, ExecError> {
    require_admin(caller, "policy.reload")?;
    match d.reload_policy() {
        Ok(policy) => Ok(json!({ "source": policy.source, "rules": policy.rule_count() })),
        Err(errors) => Err(refused("the policy file", "the running policy", errors)),
    }
}

/// A reload refused: every error of the file, as invalid-params details.
fn refused(what: &str, kept: &str, errors: Vec<String>) -> ExecError {
    ExecError::InvalidParams {
        message: format!(
            "{what} has {} error(s); {kept} is unchanged: {}",
            errors.len(),
            errors.first().map_or("", String::as_str)
        ),
        details: errors
            .into_iter()
            .map(|message| ParamError {
                pointer: String::new(),
                message,
            })
            .collect(),
    }
}

/// `sources.accept`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRef {
    pub name: String,
    /// The fingerprint the admin reviewed (`sources.list`): refused if it is no longer served.
    pub fingerprint: Option<String>,
}

fn sources(d: &Dispatcher) -> Result<&crate::sources::Sources, ExecError> {
    d.sources()
        .ok_or_else(|| ExecError::NotFound("no sources: start the executor with --sources FILE".into()))
}

pub(super) async fn sources_list(d: &Dispatcher, caller: &Caller) -> Result<Value, ExecError> {
    require_admin(caller, "sources.list")?;
    Ok(sources(d)?.list().await)
}

pub(super) async fn sources_accept(d: &Dispatcher, caller: &Caller, p: SourceRef) -> Result<Value, ExecError> {
    require_admin(caller, "sources.accept")?;
    sources(d)?
        .accept(&p.name, p.fingerprint.as_deref(), &caller.principal.id)
        .await
}

pub(super) async fn sources_reload(d: &Dispatcher, caller: &Caller) -> Result<Value, ExecError> {
    require_admin(caller, "sources.reload")?;
    sources(d)?
        .reload()
        .await
        .map_err(|errors| refused("the sources file", "what runs", errors))
}
