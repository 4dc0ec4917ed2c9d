//! Policy (DESIGN section 7): claims-based, default deny, most restrictive wins, explained.
//!
//! A TOML file (`load`) of `[[grant]]`s (holding a claim unlocks capabilities) and
//! `[[guard]]`s (escalate to `require_approval` or `deny`, whatever the grants say).
//!
//! Decision, in order: a matching deny guard -> deny; no grant covers the capability ->
//! deny; a matching approval guard -> require_approval; else allow. Full trust (`*`) holds
//! every grant but is still subject to guards. Grants look at the caller's effective
//! (narrowed) claims; a guard's `claims` condition looks at the principal's own claims
//! (its ceiling), so dropping a claim with `X-Hero-Claims` never dodges a guard.
//!
//! An allow is a [`Permit`], which only this module mints: at call time
//! ([`Policy::decide`]) and at approval time ([`Policy::decide_approved`]), so nothing is
//! forwarded without a fresh decision.
//!
//! Rules are indexed by the service their patterns name (`pattern`), so a decision only
//! looks at the rules that can match its capability's service (and those whose first
//! segment is a wildcard): a decision under 1,000 rules costs about as much as under ten.

mod load;
mod pattern;

use serde::{Deserialize, Serialize};

use crate::catalog::HeroIntent;
use crate::catalog::spec::{Idempotency, SideEffect};
use crate::intent::Claims;
pub use pattern::Pattern;
use pattern::RuleIndex;

/// The policy used when no `--policy` file is given.
pub const DEFAULT_POLICY: &str = include_str!("../default_policy.toml");

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

/// Who is asking, as policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub principal: &'a str,
    /// Effective claims: the ceiling narrowed by `X-Hero-Claims`. Grants look at these.
    pub claims: &'a Claims,
    /// The principal's own claims. Guard conditions on claims look at these.
    pub ceiling: &'a Claims,
    pub context: u64,
}

/// The outcome of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    RequireApproval,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::RequireApproval => "require_approval",
            Self::Deny => "deny",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Allow, Self::RequireApproval, Self::Deny]
            .into_iter()
            .find(|v| v.as_str() == text)
    }
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

/// Why a decision came out as it did.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
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

impl Explanation {
    /// The rule and reason as one line, for the run record.
    pub fn record(&self) -> String {
        let Some(rule) = &self.rule else {
            return self.reason.clone();
        };
        let tag = format!("{} #{} (line {})", rule.kind, rule.index, rule.line);
        // An allow's reason names its grant already.
        match self.reason.contains(&tag) {
            true => self.reason.clone(),
            false => format!("{tag}: {}", self.reason),
        }
    }
}

/// Proof that policy allowed one capability. Only this module makes one, so a call cannot
/// be forwarded without a decision that allowed it.
#[derive(Debug)]
pub struct Permit {
    capability: String,
    explanation: Explanation,
}

impl Permit {
    /// The capability this permit allows.
    pub fn capability(&self) -> &str {
        &self.capability
    }

    pub fn explanation(&self) -> &Explanation {
        &self.explanation
    }
}

/// A decision: an allow carries the [`Permit`] that forwarding needs.
#[derive(Debug)]
pub enum Decision {
    Allow(Permit),
    RequireApproval(Explanation),
    Deny(Explanation),
}

impl Decision {
    pub fn explanation(&self) -> &Explanation {
        match self {
            Self::Allow(permit) => &permit.explanation,
            Self::RequireApproval(e) | Self::Deny(e) => e,
        }
    }

    pub fn verdict(&self) -> Verdict {
        self.explanation().verdict
    }
}

/// The guards that matched a capability, folded.
#[derive(Default)]
struct GuardMatches {
    matched: Vec<MatchedRule>,
    deny: Option<(MatchedRule, Option<String>)>,
    approval: Option<(MatchedRule, Vec<String>, Option<String>)>,
}

impl Policy {
    /// Decides whether `subject` may run `capability` (whose intent is `intent`).
    pub fn decide(&self, subject: Subject<'_>, capability: &str, intent: &HeroIntent) -> Decision {
        let explanation = self.explain(subject, capability, intent);
        match explanation.verdict {
            Verdict::Allow => Decision::Allow(Permit {
                capability: capability.to_owned(),
                explanation,
            }),
            Verdict::RequireApproval => Decision::RequireApproval(explanation),
            Verdict::Deny => Decision::Deny(explanation),
        }
    }

    /// Decides a held call again when `approver` approves it: the policy in force must still
    /// let the subject run it, and an approval guard that still applies must name one of the
    /// approver's claims. Answers `RequireApproval` (with the approvers it needs) when the
    /// approver holds none of them.
    pub fn decide_approved(
        &self,
        subject: Subject<'_>,
        capability: &str,
        intent: &HeroIntent,
        approver: &Claims,
    ) -> Decision {
        let mut explanation = self.explain(subject, capability, intent);
        match explanation.verdict {
            Verdict::Deny => Decision::Deny(explanation),
            Verdict::RequireApproval if !explanation.approvers.iter().any(|c| approver.holds(c)) => {
                Decision::RequireApproval(explanation)
            }
            Verdict::RequireApproval | Verdict::Allow => {
                if explanation.verdict == Verdict::RequireApproval {
                    explanation.reason = format!("approved: {}", explanation.reason);
                }
                explanation.verdict = Verdict::Allow;
                Decision::Allow(Permit {
                    capability: capability.to_owned(),
                    explanation,
                })
            }
        }
    }

    /// The decision for `subject` and every rule that matched, without a permit.
    pub fn explain(&self, subject: Subject<'_>, capability: &str, intent: &HeroIntent) -> Explanation {
        let GuardMatches {
            mut matched,
            deny,
            approval,
        } = self.guards_matching(subject, capability, intent);
        let grant = self.grants_matching(subject, capability, &mut matched);
        let rule = |verdict, reason, rule, approvers| Explanation {
            verdict,
            reason,
            rule,
            approvers,
            matched: matched.clone(),
        };
        if let Some((guard, reason)) = deny {
            let reason = reason
                .unwrap_or_else(|| format!("{capability} is denied by guard #{} (line {})", guard.index, guard.line));
            return rule(Verdict::Deny, reason, Some(guard), Vec::new());
        }
        if grant.is_none() && !matches!(subject.claims, Claims::All) {
            let reason = format!(
                "no grant covers {capability} for principal {} with claims {}",
                subject.principal, subject.claims
            );
            return rule(Verdict::Deny, reason, None, Vec::new());
        }
        if let Some((guard, mut approvers, reason)) = approval {
            approvers.sort();
            approvers.dedup();
            let reason = reason.unwrap_or_else(|| {
                let who = approvers.join(" or ");
                format!(
                    "{capability} needs approval by a holder of {who} (guard #{})",
                    guard.index
                )
            });
            return rule(Verdict::RequireApproval, reason, Some(guard), approvers);
        }
        let reason = match &grant {
            Some(g) => format!("allowed by grant #{} (line {})", g.index, g.line),
            None => "allowed: full trust holds every grant".to_owned(),
        };
        rule(Verdict::Allow, reason, grant, Vec::new())
    }

    fn guards_matching(&self, subject: Subject<'_>, capability: &str, intent: &HeroIntent) -> GuardMatches {
        let mut found = GuardMatches::default();
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
            found.matched.push(rule.clone());
            match (guard.effect, &mut found.approval) {
                (Effect::Deny, _) if found.deny.is_none() => found.deny = Some((rule, guard.reason.clone())),
                (Effect::Deny, _) => {}
                (Effect::RequireApproval, None) => {
                    found.approval = Some((rule, guard.approvers.clone(), guard.reason.clone()))
                }
                // Several approval guards: any of their approvers may approve.
                (Effect::RequireApproval, Some((_, approvers, _))) => approvers.extend(guard.approvers.iter().cloned()),
            }
        }
        found
    }

    /// The first grant that covers `capability` for the subject's effective claims; every
    /// matching grant is added to `matched`.
    fn grants_matching(
        &self,
        subject: Subject<'_>,
        capability: &str,
        matched: &mut Vec<MatchedRule>,
    ) -> Option<MatchedRule> {
        let mut first = None;
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
                first.get_or_insert(rule);
            }
        }
        first
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

    /// Every rule in force, grants then guards, each with its line in the file.
    pub fn rules(&self) -> Vec<MatchedRule> {
        let grants = self.grants.iter().enumerate().map(|(i, g)| MatchedRule {
            kind: "grant",
            index: i + 1,
            line: g.line,
            summary: format!("claim {} -> {}", g.claim, patterns_text(&g.capabilities)),
        });
        let guards = self.guards.iter().enumerate().map(|(i, g)| MatchedRule {
            kind: "guard",
            index: i + 1,
            line: g.line,
            summary: g.summary(),
        });
        grants.chain(guards).collect()
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
                .is_none_or(|l| l.iter().any(|c| subject.ceiling.holds(c)))
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
