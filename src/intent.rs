//! What every surface hands to the core: who is asking ([`Caller`]), what they want
//! ([`Intent`]), and through which protocol ([`Surface`]).

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::Failure;

/// The protocol a request came in through; recorded on every run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Surface {
    Openrpc,
    Rest,
    Mcp,
    /// The operator console on `ui.sock` (its "try it" form).
    Console,
}

impl Surface {
    pub const ALL: [Surface; 4] = [Self::Openrpc, Self::Rest, Self::Mcp, Self::Console];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openrpc => "openrpc",
            Self::Rest => "rest",
            Self::Mcp => "mcp",
            Self::Console => "console",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A set of claims, or full trust (`*`), which holds every claim.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Claims {
    /// Full trust: every claim. Forwarded calls carry no `X-Hero-Claims` header.
    All,
    /// Exactly these claims.
    Only(BTreeSet<String>),
}

impl Claims {
    /// Parses a comma list (`X-Hero-Claims`). `*` alone means full trust.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut set = BTreeSet::new();
        for claim in list.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if claim == "*" {
                return Ok(Self::All);
            }
            if !claim
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
            {
                return Err(format!("invalid claim {claim:?}: use letters, digits, _ - . :"));
            }
            set.insert(claim.to_owned());
        }
        Ok(Self::Only(set))
    }

    /// Whether this set holds `claim`.
    pub fn holds(&self, claim: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(set) => set.contains(claim),
        }
    }

    /// Narrows this ceiling by the claims a request asked for: never widens.
    pub fn narrow(&self, requested: Option<&Claims>) -> Claims {
        match (self, requested) {
            (ceiling, None) => ceiling.clone(),
            (Self::All, Some(req)) => req.clone(),
            (Self::Only(_), Some(Self::All)) => self.clone(),
            (Self::Only(have), Some(Self::Only(want))) => Self::Only(have.intersection(want).cloned().collect()),
        }
    }

    /// The `X-Hero-Claims` value to forward; `None` for full trust (hero convention).
    pub fn header_value(&self) -> Option<String> {
        match self {
            Self::All => None,
            Self::Only(set) => Some(set.iter().cloned().collect::<Vec<_>>().join(",")),
        }
    }
}

impl fmt::Display for Claims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Only(set) if set.is_empty() => f.write_str("(none)"),
            Self::Only(set) => f.write_str(&set.iter().cloned().collect::<Vec<_>>().join(",")),
        }
    }
}

impl Serialize for Claims {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::All => vec!["*"].serialize(s),
            Self::Only(set) => set.serialize(s),
        }
    }
}

/// A verified identity. Only the identity layer creates one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// `uid:<n>` for a trusted local peer, the keyid for a signed request.
    pub id: String,
    /// The most this principal may ever hold.
    pub ceiling: Claims,
    /// Contexts this principal may act in; `None` means any.
    pub contexts: Option<BTreeSet<u64>>,
}

impl Principal {
    /// The trusted local peer (same uid as the daemon): full trust.
    pub fn local_owner(uid: u32) -> Self {
        Self {
            id: format!("uid:{uid}"),
            ceiling: Claims::All,
            contexts: None,
        }
    }
}

/// Who is asking, in which context, with which effective claims.
#[derive(Debug, Clone, Serialize)]
pub struct Caller {
    pub principal: Principal,
    /// `X-Hero-Context` (default 0).
    pub context: u64,
    /// Principal ceiling narrowed by `X-Hero-Claims`.
    pub claims: Claims,
    /// Who the call is on behalf of (`X-Hero-User`, only from impersonating principals).
    pub user: Option<String>,
    /// The request id (from the request-id layer), for logs and tracing.
    pub request_id: String,
    /// The caller's W3C `traceparent`, if valid; forwarded calls continue its trace.
    #[serde(skip)]
    pub traceparent: Option<String>,
    /// Came through a relay that names the human (`ui.sock`): the human, not the relay's
    /// shared identity, is who decides (`access::is_own`).
    #[serde(skip)]
    pub relayed: bool,
}

impl Caller {
    /// The principal chain recorded on runs: `[signer, user]`.
    pub fn chain(&self) -> Vec<String> {
        let mut chain = vec![self.principal.id.clone()];
        chain.extend(self.user.clone());
        chain
    }
}

/// A capability name, `<service>.<method>`, with the service name already validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CapabilityName {
    pub service: String,
    pub method: String,
}

impl CapabilityName {
    /// Splits and validates. Rejects a service name outside `^[a-z][a-z0-9_]*$` before any
    /// path could be built from it.
    pub fn parse(name: &str) -> Result<Self, String> {
        crate::access::check_name(name)?;
        let Some((service, method)) = name.split_once('.') else {
            return Err(format!("{name:?} is not a capability: expected <service>.<method>"));
        };
        if !is_service_name(service) {
            return Err(format!(
                "invalid service name {service:?}: must match ^[a-z][a-z0-9_]*$"
            ));
        }
        if method.is_empty() {
            return Err(format!("{name:?} has an empty method name"));
        }
        Ok(Self {
            service: service.to_owned(),
            method: method.to_owned(),
        })
    }
}

impl fmt::Display for CapabilityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.service, self.method)
    }
}

/// Whether `name` is a valid hero service name (`^[a-z][a-z0-9_]*$`).
pub fn is_service_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z')) && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

/// A normalized request to run one capability on a target service.
#[derive(Debug, Clone)]
pub struct Intent {
    pub caller: Caller,
    pub capability: CapabilityName,
    pub params: Option<Value>,
    pub surface: Surface,
    pub idempotency_key: Option<String>,
    /// The run this call is part of (a script's), recorded as the call's `parent_id`.
    pub parent_id: Option<String>,
    /// The id its run is recorded under, when the caller chose it (a script, to know it).
    pub run_id: Option<String>,
}

/// The result of an intent: the target's result exactly as it sent it, or why there is none
/// (with the run it was recorded as, when there is one).
pub type Outcome = Result<Box<RawValue>, Failure>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        for ok in ["hero_agent", "a", "x9_"] {
            assert!(is_service_name(ok), "{ok}");
        }
        for bad in ["", "9a", "Hero", "a-b", "..", "a/b", "_a", "é"] {
            assert!(!is_service_name(bad), "{bad}");
        }
        assert!(CapabilityName::parse("../etc.passwd").is_err());
        assert!(CapabilityName::parse("noservice").is_err());
        let cap = CapabilityName::parse("hero_agent.chat.send").unwrap();
        assert_eq!((cap.service.as_str(), cap.method.as_str()), ("hero_agent", "chat.send"));
    }

    #[test]
    fn claims_only_narrow() {
        let ceiling = Claims::parse("agent,ops").unwrap();
        let asked = Claims::parse("ops,admin").unwrap();
        assert_eq!(ceiling.narrow(Some(&asked)), Claims::parse("ops").unwrap());
        assert_eq!(ceiling.narrow(Some(&Claims::All)), ceiling);
        assert_eq!(Claims::All.narrow(Some(&asked)), asked);
        assert_eq!(Claims::All.narrow(None), Claims::All);
        assert_eq!(Claims::All.header_value(), None);
        assert!(Claims::parse("a b").is_err());
    }
}
