//! Capability patterns (`hero_books.*`, `*.search`), and the index of rules by the service
//! their patterns name, so a decision only looks at rules that can match.

use std::collections::HashMap;

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

/// Rule positions by the first segment of their patterns, in rule order.
#[derive(Debug, Clone, Default)]
pub(super) struct RuleIndex {
    by_service: HashMap<String, Vec<usize>>,
    /// Rules with a pattern whose first segment is a wildcard: candidates for every capability.
    any: Vec<usize>,
}

impl RuleIndex {
    pub(super) fn new<'a>(rules: impl Iterator<Item = &'a [Pattern]>) -> Self {
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
    pub(super) fn candidates(&self, capability: &str) -> impl Iterator<Item = usize> + '_ {
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
