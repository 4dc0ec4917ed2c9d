//! Policy (DESIGN section 7): claims-based, default deny, most restrictive wins, explained.
//!
//! A TOML file of `[[grant]]`s (holding a claim unlocks capabilities) and `[[guard]]`s
//! (escalate to `require_approval` or `deny`, whatever the grants say). Patterns are
//! compiled at load; a bad file is refused whole, with every error and its line.
//!
//! Decision, in order: a matching deny guard -> deny; no grant covers the capability ->
//! deny; a matching approval guard -> require_approval; else allow. Full trust (`*`) holds
//! every grant but is still subject to guards.
//!
//! Rules are indexed by the service their patterns name, so a decision only looks at the
//! rules that can match its capability's service (and those whose first segment is a
//! wildcard): a decision under 1,000 rules costs about as much as under ten.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::catalog::HeroIntent;
use crate::catalog::spec::{Idempotency, SideEffect};
use crate::intent::Claims;

/// The policy used when no `--policy` file is given.
pub const DEFAULT_POLICY: &str = include_str!("default_policy.toml");

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Where it came from (a path, or "embedded default").
    pub source: String,
    /// The text it was compiled from.
    pub text: String,
    grants: Vec<Grant>,
    guards: Vec<Guard>,
    grants_by_service: RuleIndex,
    guards_by_service: RuleIndex,
}

/// Rule positions by the first segment of their patterns, in rule order.
#[derive(Debug, Clone, Default)]
struct RuleIndex {
    by_service: HashMap<String, Vec<usize>>,
    /// Rules with a pattern whose first segment is a wildcard: candidates for every capability.
    any: Vec<usize>,
}

impl RuleIndex {
    fn new<'a>(rules: impl Iterator<Item = &'a [Pattern]>) -> Self {
        let mut index = Self::default();
        for (i, patterns) in rules.enumerate() {
            let mut services: Vec<&str> = Vec::new();
            for pattern in patterns {
                match pattern.segments.first() {
                    Some(Segment::Literal(service)) => services.push(service),
                    _ => {
                        index.any.push(i);
                        services.clear();
                        break;
                    }
                }
            }
            services.sort_unstable();
            services.dedup();
            for service in services {
                index.by_service.entry(service.to_owned()).or_default().push(i);
            }
        }
        index
    }

    /// Positions of the rules that may match `capability`, ascending.
    fn candidates(&self, capability: &str) -> impl Iterator<Item = usize> + '_ {
        let service = capability.split('.').next().unwrap_or_default();
        let named = self.by_service.get(service).map_or(&[][..], Vec::as_slice);
        let (mut a, mut b) = (named.iter().peekable(), self.any.iter().peekable());
        std::iter::from_fn(move || match (a.peek(), b.peek()) {
            (Some(&&x), Some(&&y)) if x <= y => a.next().copied(),
            (Some(_), Some(_)) | (None, Some(_)) => b.next().copied(),
            (Some(_), None) => a.next().copied(),
            (None, None) => None,
        })
    }
}

#[derive(Debug, Clone)]
struct Grant {
    claim: String,
    capabilities: Vec<Pattern>,
    line: usize,
}

#[derive(Debug, Clone)]
struct Guard {
    capabilities: Vec<Pattern>,
    side_effect: Option<Vec<SideEffect>>,
    idempotency: Option<Vec<Idempotency>>,
    contexts: Option<Vec<u64>>,
    principals: Option<Vec<String>>,
    claims: Option<Vec<String>>,
    effect: Effect,
    approvers: Vec<String>,
    reason: Option<String>,
    line: usize,
}

/// What a guard does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    RequireApproval,
    Deny,
}

/// A capability pattern: dot segments; `*` as a middle segment matches exactly one segment,
/// a trailing `*` one or more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Rest,
}

impl Pattern {
    /// Parses a pattern; partial wildcards (`me*`) and empty segments are errors.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('.').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            segments.push(match *part {
                "" => return Err(format!("pattern {text:?} has an empty segment")),
                "*" if last => Segment::Rest,
                "*" => Segment::One,
                p if p.contains('*') => {
                    return Err(format!(
                        "pattern {text:?}: partial wildcards like {p:?} are not supported"
                    ));
                }
                p => Segment::Literal(p.to_owned()),
            });
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// Whether the capability `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let mut parts = name.split('.');
        for segment in &self.segments {
            match segment {
                Segment::Rest => return parts.next().is_some(),
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(lit) => {
                    if parts.next() != Some(lit.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Who is asking, as policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub principal: &'a str,
    pub claims: &'a Claims,
    pub context: u64,
}

/// The outcome of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    RequireApproval,
    Deny,
}

/// One rule that matched, for `policy.explain` and the run record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MatchedRule {
    /// `grant` or `guard`.
    pub kind: &'static str,
    /// 1-based position among rules of its kind.
    pub index: usize,
    /// Line in the policy file.
    pub line: usize,
    /// What the rule says, in short.
    pub summary: String,
}

/// A decision and why.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// A sentence a caller can read.
    pub reason: String,
    /// The rule that decided, if any.
    pub rule: Option<MatchedRule>,
    /// Claims that may approve (for `require_approval`).
    pub approvers: Vec<String>,
    /// Every rule that matched.
    pub matched: Vec<MatchedRule>,
}

impl Policy {
    /// Compiles `text`; `source` names it in errors (`FILE:LINE: problem`).
    pub fn parse(text: &str, source: &str) -> Result<Self, Vec<String>> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(s.start)).unwrap_or(1);
            vec![format!("{source}:{line}: {}", e.message())]
        })?;
        let mut errors = Vec::new();
        let patterns = |list: &Spanned<Vec<Spanned<String>>>, line: usize, errors: &mut Vec<String>| {
            if list.get_ref().is_empty() {
                errors.push(format!("{source}:{line}: capabilities is empty"));
            }
            list.get_ref()
                .iter()
                .filter_map(|p| match Pattern::parse(p.get_ref()) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        errors.push(format!("{source}:{}: {e}", line_of(p.span().start)));
                        None
                    }
                })
                .collect::<Vec<_>>()
        };
        let mut grants = Vec::new();
        for g in raw.grant {
            let line = line_of(g.span().start);
            let g = g.into_inner();
            let capabilities = patterns(&g.capabilities, line, &mut errors);
            if g.claim.trim().is_empty() || g.claim.contains(',') {
                errors.push(format!("{source}:{line}: claim must be one non-empty claim name"));
            }
            grants.push(Grant {
                claim: g.claim,
                capabilities,
                line,
            });
        }
        let mut guards = Vec::new();
        for g in raw.guard {
            let line = line_of(g.span().start);
            let g = g.into_inner();
            let capabilities = patterns(&g.capabilities, line, &mut errors);
            let mut enum_list = |values: Option<Vec<String>>, known: &[&str], what: &str| {
                values.inspect(|vs| {
                    for v in vs {
                        if !known.contains(&v.as_str()) {
                            errors.push(format!(
                                "{source}:{line}: unknown {what} {v:?} (known: {})",
                                known.join(", ")
                            ));
                        }
                    }
                })
            };
            let side_effect = enum_list(
                g.side_effect,
                &["read", "mutate-self", "mutate-others", "admin"],
                "side_effect",
            )
            .map(|vs| vs.iter().map(|v| SideEffect::parse(v)).collect());
            let idempotency = enum_list(g.idempotency, &["safe", "replay-safe", "replay-unsafe"], "idempotency")
                .map(|vs| vs.iter().map(|v| Idempotency::parse(v)).collect());
            if g.effect == Effect::RequireApproval && g.approvers.as_ref().is_none_or(Vec::is_empty) {
                errors.push(format!(
                    "{source}:{line}: a require_approval guard needs approvers (claims)"
                ));
            }
            if g.effect == Effect::Deny && g.approvers.is_some() {
                errors.push(format!("{source}:{line}: a deny guard has no approvers"));
            }
            guards.push(Guard {
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
            });
        }
        if !errors.is_empty() {
            return Err(errors);
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

    /// Decides whether `subject` may run `capability` (whose intent is `intent`).
    pub fn decide(&self, subject: Subject<'_>, capability: &str, intent: &HeroIntent) -> Decision {
        let mut matched = Vec::new();
        let mut deny: Option<(MatchedRule, Option<String>)> = None;
        let mut approval: Option<(MatchedRule, Vec<String>, Option<String>)> = None;
        for i in self.guards_by_service.candidates(capability) {
            let guard = &self.guards[i];
            if !guard.applies(subject, capability, intent) {
                continue;
            }
            let rule = MatchedRule {
                kind: "guard",
                index: i + 1,
                line: guard.line,
                summary: guard.summary(),
            };
            matched.push(rule.clone());
            match guard.effect {
                Effect::Deny if deny.is_none() => deny = Some((rule, guard.reason.clone())),
                Effect::RequireApproval => match &mut approval {
                    None => approval = Some((rule, guard.approvers.clone(), guard.reason.clone())),
                    // Several approval guards: any of their approvers may approve.
                    Some((_, approvers, _)) => approvers.extend(guard.approvers.iter().cloned()),
                },
                Effect::Deny => {}
            }
        }
        let mut grant: Option<MatchedRule> = None;
        for i in self.grants_by_service.candidates(capability) {
            let g = &self.grants[i];
            if subject.claims.holds(&g.claim) && g.capabilities.iter().any(|p| p.matches(capability)) {
                let rule = MatchedRule {
                    kind: "grant",
                    index: i + 1,
                    line: g.line,
                    summary: format!("claim {} -> {}", g.claim, patterns_text(&g.capabilities)),
                };
                matched.push(rule.clone());
                grant.get_or_insert(rule);
            }
        }
        let full_trust = matches!(subject.claims, Claims::All);
        if let Some((rule, reason)) = deny {
            return Decision {
                verdict: Verdict::Deny,
                reason: reason
                    .unwrap_or_else(|| format!("{capability} is denied by guard #{} (line {})", rule.index, rule.line)),
                rule: Some(rule),
                approvers: Vec::new(),
                matched,
            };
        }
        if grant.is_none() && !full_trust {
            return Decision {
                verdict: Verdict::Deny,
                reason: format!(
                    "no grant covers {capability} for principal {} with claims {}",
                    subject.principal, subject.claims
                ),
                rule: None,
                approvers: Vec::new(),
                matched,
            };
        }
        if let Some((rule, mut approvers, reason)) = approval {
            approvers.sort();
            approvers.dedup();
            return Decision {
                verdict: Verdict::RequireApproval,
                reason: reason.unwrap_or_else(|| {
                    format!(
                        "{capability} needs approval by a holder of {} (guard #{})",
                        approvers.join(" or "),
                        rule.index
                    )
                }),
                rule: Some(rule),
                approvers,
                matched,
            };
        }
        Decision {
            verdict: Verdict::Allow,
            reason: match &grant {
                Some(rule) => format!("allowed by grant #{} (line {})", rule.index, rule.line),
                None => "allowed: full trust holds every grant".to_owned(),
            },
            rule: grant,
            approvers: Vec::new(),
            matched,
        }
    }

    /// Patterns that match no capability among `names` (`policy.check`).
    pub fn unmatched_patterns<'a>(&self, names: impl Iterator<Item = &'a str> + Clone) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut check = |kind: &str, index: usize, line: usize, patterns: &[Pattern]| {
            for p in patterns {
                if !names.clone().any(|n| p.matches(n)) {
                    out.push(serde_json::json!({"kind": kind, "index": index, "line": line, "pattern": p.as_str()}));
                }
            }
        };
        for (i, g) in self.grants.iter().enumerate() {
            check("grant", i + 1, g.line, &g.capabilities);
        }
        for (i, g) in self.guards.iter().enumerate() {
            check("guard", i + 1, g.line, &g.capabilities);
        }
        out
    }

    /// Every claim that may approve something.
    pub fn approver_claims(&self) -> Vec<&str> {
        let mut claims: Vec<&str> = self
            .guards
            .iter()
            .flat_map(|g| g.approvers.iter().map(String::as_str))
            .collect();
        claims.sort_unstable();
        claims.dedup();
        claims
    }

    /// How many rules the policy has.
    pub fn rule_count(&self) -> usize {
        self.grants.len() + self.guards.len()
    }
}

impl Guard {
    fn applies(&self, subject: Subject<'_>, capability: &str, intent: &HeroIntent) -> bool {
        self.capabilities.iter().any(|p| p.matches(capability))
            && self
                .side_effect
                .as_ref()
                .is_none_or(|l| l.contains(&intent.side_effect_class))
            && self
                .idempotency
                .as_ref()
                .is_none_or(|l| l.contains(&intent.idempotency))
            && self.contexts.as_ref().is_none_or(|l| l.contains(&subject.context))
            && self
                .principals
                .as_ref()
                .is_none_or(|l| l.iter().any(|p| p == subject.principal))
            && self
                .claims
                .as_ref()
                .is_none_or(|l| l.iter().any(|c| subject.claims.holds(c)))
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "{} {}",
            match self.effect {
                Effect::Deny => "deny",
                Effect::RequireApproval => "require_approval",
            },
            patterns_text(&self.capabilities)
        );
        if let Some(l) = &self.side_effect {
            s.push_str(&format!(
                " side_effect={}",
                l.iter().map(|v| v.as_str()).collect::<Vec<_>>().join("|")
            ));
        }
        if let Some(l) = &self.idempotency {
            s.push_str(&format!(
                " idempotency={}",
                l.iter().map(|v| v.as_str()).collect::<Vec<_>>().join("|")
            ));
        }
        if let Some(l) = &self.contexts {
            s.push_str(&format!(" contexts={l:?}"));
        }
        if let Some(l) = &self.principals {
            s.push_str(&format!(" principals={}", l.join("|")));
        }
        if let Some(l) = &self.claims {
            s.push_str(&format!(" claims={}", l.join("|")));
        }
        s
    }
}

fn patterns_text(patterns: &[Pattern]) -> String {
    patterns.iter().map(Pattern::as_str).collect::<Vec<_>>().join(", ")
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pattern() -> impl Strategy<Value = String> {
        let segment = prop::sample::select(vec!["a", "b", "c", "*"]);
        prop::collection::vec(segment, 1..4).prop_map(|s| s.join("."))
    }

    proptest! {
        /// The index never hides a rule that matches: every matching rule is a candidate,
        /// and candidates come in rule order (first deny, first grant keep their meaning).
        #[test]
        fn the_rule_index_offers_every_matching_rule_in_order(
            rules in prop::collection::vec(prop::collection::vec(pattern(), 1..4), 0..12),
            capability in prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "d"]), 2..4),
        ) {
            let capability = capability.join(".");
            let rules: Vec<Vec<Pattern>> = rules
                .iter()
                .map(|r| r.iter().filter_map(|p| Pattern::parse(p).ok()).collect())
                .collect();
            let index = RuleIndex::new(rules.iter().map(Vec::as_slice));
            let candidates: Vec<usize> = index.candidates(&capability).collect();
            prop_assert!(candidates.windows(2).all(|w| w[0] < w[1]), "{candidates:?}");
            for (i, patterns) in rules.iter().enumerate() {
                if patterns.iter().any(|p| p.matches(&capability)) {
                    prop_assert!(candidates.contains(&i), "rule {i} {patterns:?} matches {capability}");
                }
            }
        }
    }
}
