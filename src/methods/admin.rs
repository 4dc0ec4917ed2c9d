//! `keys.*` and `policy.*`: administration, for holders of `executor.admin`.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{NoParams, parse, require_admin};
use crate::catalog::HeroIntent;
use crate::dispatch::Dispatcher;
use crate::error::{ExecError, Failure, ParamError};
use crate::identity::registry::NewKey;
use crate::intent::{Caller, CapabilityName, Claims};
use crate::policy::Subject;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeParams {
    keyid: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainParams {
    capability: String,
    claims: Option<Vec<String>>,
    context: Option<u64>,
    keyid: Option<String>,
}

pub(super) async fn handle(
    d: &Dispatcher,
    caller: &Caller,
    method: &str,
    params: Option<Value>,
) -> Result<Option<Value>, Failure> {
    if !super::METHODS.contains(&method) {
        return Ok(None);
    }
    require_admin(caller, method)?;
    Ok(Some(match method {
        "keys.list" => {
            let _: NoParams = parse(method, params)?;
            json!({ "keys": d.registry().list().iter().map(|k| k.to_json()).collect::<Vec<_>>() })
        }
        "keys.add" => {
            let new: NewKey = parse(method, params)?;
            d.registry().add(new).await?.to_json()
        }
        "keys.revoke" => {
            let p: RevokeParams = parse(method, params)?;
            d.registry().revoke(&p.keyid).await?.to_json()
        }
        "policy.get" => {
            let _: NoParams = parse(method, params)?;
            let policy = d.policy();
            json!({ "source": policy.source, "rules": policy.rule_count(), "text": policy.text })
        }
        "policy.explain" => {
            let p: ExplainParams = parse(method, params)?;
            CapabilityName::parse(&p.capability).map_err(ExecError::invalid_params)?;
            let (principal, ceiling) = match &p.keyid {
                Some(keyid) => {
                    let key = d
                        .registry()
                        .get(keyid)
                        .ok_or_else(|| ExecError::NotFound(format!("no key {keyid}")))?;
                    (keyid.clone(), key.claims.clone())
                }
                None => (caller.principal.id.clone(), caller.claims.clone()),
            };
            let requested = p
                .claims
                .map(|c| Claims::parse(&c.join(",")))
                .transpose()
                .map_err(ExecError::invalid_params)?;
            let claims = match (&p.keyid, requested) {
                (Some(_), requested) => ceiling.narrow(requested.as_ref()),
                (None, Some(requested)) => requested,
                (None, None) => ceiling,
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
                context: p.context.unwrap_or(0),
            };
            let decision = d.policy().decide(subject, &p.capability, &intent);
            json!({
                "capability": p.capability,
                "principal": principal,
                "claims": claims,
                "context": subject.context,
                "in_catalog": known.is_some(),
                "x-hero-intent": intent,
                "decision": decision,
            })
        }
        "policy.check" => {
            let _: NoParams = parse(method, params)?;
            let snapshot = d.catalog().snapshot();
            let names: Vec<&str> = snapshot.capabilities().map(|c| c.name.as_str()).collect();
            let policy = d.policy();
            json!({
                "source": policy.source,
                "capabilities": names.len(),
                "unmatched": policy.unmatched_patterns(names.iter().copied()),
            })
        }
        "policy.reload" => {
            let _: NoParams = parse(method, params)?;
            match d.reload_policy() {
                Ok(policy) => json!({ "source": policy.source, "rules": policy.rule_count() }),
                Err(errors) => {
                    return Err(ExecError::InvalidParams {
                        message: format!(
                            "the policy file has {} error(s); the running policy is unchanged: {}",
                            errors.len(),
                            errors[0]
                        ),
                        details: errors
                            .into_iter()
                            .map(|message| ParamError {
                                pointer: String::new(),
                                message,
                            })
                            .collect(),
                    }
                    .into());
                }
            }
        }
        _ => return Ok(None),
    }))
}
