//! Reading a policy file: TOML into compiled rules. A bad file is refused whole, with every
//! error and its line (`FILE:LINE: problem`), never partly applied.

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::pattern::{Pattern, RuleIndex};
use super::{DEFAULT_POLICY, Effect, Grant, Guard, Policy};
use crate::catalog::spec::{Idempotency, SideEffect};
use crate::toml_file::FileErrors;

type Errors<'a> = FileErrors<'a>;

impl Errors<'_> {
    /// Compiles a rule's `capabilities`; an empty list and bad patterns are errors.
    fn patterns(&mut self, list: &Spanned<Vec<Spanned<String>>>, line: usize) -> Vec<Pattern> {
        if list.get_ref().is_empty() {
            self.push(line, "capabilities is empty");
        }
        let mut out = Vec::new();
        for p in list.get_ref() {
            match Pattern::parse(p.get_ref()) {
                Ok(p) => out.push(p),
                Err(e) => {
                    let at = self.line_of(p.span().start);
                    self.push(at, e);
                }
            }
        }
        out
    }

    /// A list of enum values, each checked against `known`.
    fn enum_list(
        &mut self,
        values: Option<Vec<String>>,
        known: &[&str],
        what: &str,
        line: usize,
    ) -> Option<Vec<String>> {
        for v in values.iter().flatten() {
            if !known.contains(&v.as_str()) {
                self.push(line, format!("unknown {what} {v:?} (known: {})", known.join(", ")));
            }
        }
        values
    }
}

impl Policy {
    /// Compiles `text`; `source` names it in errors (`FILE:LINE: problem`).
    pub fn parse(text: &str, source: &str) -> Result<Self, Vec<String>> {
        let mut errors = Errors::new(source, text);
        let raw: RawPolicy = errors.read(false)?;
        let grants: Vec<Grant> = raw.grant.into_iter().map(|g| grant(g, &mut errors)).collect();
        let guards: Vec<Guard> = raw.guard.into_iter().map(|g| guard(g, &mut errors)).collect();
        if !errors.list.is_empty() {
            return Err(errors.list);
        }
        Ok(Self {
            source: source.to_owned(),
            text: text.to_owned(),
            grants_by_service: RuleIndex::new(grants.iter().map(|g| g.capabilities.as_slice())),
            guards_by_service: RuleIndex::new(guards.iter().map(|g| g.capabilities.as_slice())),
            grants,
            guards,
        })
    }

    /// Loads `path`, or the embedded default when `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, Vec<String>> {
        match path {
            None => Self::parse(DEFAULT_POLICY, "embedded default policy"),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
                Self::parse(&text, &path.display().to_string())
            }
        }
    }
}

fn grant(g: Spanned<RawGrant>, errors: &mut Errors<'_>) -> Grant {
    let line = errors.line_of(g.span().start);
    let g = g.into_inner();
    let capabilities = errors.patterns(&g.capabilities, line);
    if g.claim.trim().is_empty() || g.claim.contains(',') {
        errors.push(line, "claim must be one non-empty claim name");
    }
    Grant {
        claim: g.claim,
        capabilities,
        line,
    }
}

fn guard(g: Spanned<RawGuard>, errors: &mut Errors<'_>) -> Guard {
    let line = errors.line_of(g.span().start);
    let g = g.into_inner();
    let capabilities = errors.patterns(&g.capabilities, line);
    let side_effect = errors
        .enum_list(
            g.side_effect,
            &["read", "mutate-self", "mutate-others", "admin"],
            "side_effect",
            line,
        )
        .map(|vs| vs.iter().map(|v| SideEffect::parse(v)).collect());
    let idempotency = errors
        .enum_list(
            g.idempotency,
            &["safe", "replay-safe", "replay-unsafe"],
            "idempotency",
            line,
        )
        .map(|vs| vs.iter().map(|v| Idempotency::parse(v)).collect());
    if g.effect == Effect::RequireApproval && g.approvers.as_ref().is_none_or(Vec::is_empty) {
        errors.push(line, "a require_approval guard needs approvers (claims)");
    }
    if g.effect == Effect::Deny && g.approvers.is_some() {
        errors.push(line, "a deny guard has no approvers");
    }
    Guard {
        capabilities,
        side_effect,
        idempotency,
        contexts: g.contexts,
        principals: g.principals,
        claims: g.claims,
        effect: g.effect,
        approvers: g.approvers.unwrap_or_default(),
        reason: g.reason,
        line,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    grant: Vec<Spanned<RawGrant>>,
    #[serde(default)]
    guard: Vec<Spanned<RawGuard>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    claim: String,
    capabilities: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuard {
    capabilities: Spanned<Vec<Spanned<String>>>,
    side_effect: Option<Vec<String>>,
    idempotency: Option<Vec<String>>,
    contexts: Option<Vec<u64>>,
    principals: Option<Vec<String>>,
    claims: Option<Vec<String>>,
    effect: Effect,
    approvers: Option<Vec<String>>,
    reason: Option<String>,
}
