//! Which capabilities a caller may see, per catalog generation: `catalog.*` and MCP tool
//! lists show only what policy lets the caller run, and deciding that for every capability
//! of a large catalog on every listing costs a policy decision each (`make microbench`:
//! 2.8 ms for 10,000 capabilities under 1,000 rules, 207 ms before rules were indexed by
//! service). The answer only changes with the caller's
//! subject (principal, claims, context), the catalog generation and the policy, so it is
//! computed once per subject and kept until one of them changes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::catalog::{Capability, Snapshot};
use crate::intent::{Caller, Claims};
use crate::policy::{Policy, Verdict};

/// Subjects remembered at once; the cache starts over when it is full.
const MAX_SUBJECTS: usize = 256;

/// The capabilities of one catalog generation one subject may see.
#[derive(Debug)]
pub struct Visible {
    names: HashSet<String>,
}

impl Visible {
    pub fn contains(&self, capability: &Capability) -> bool {
        self.names.contains(&capability.name)
    }
}

#[derive(PartialEq, Eq, Hash)]
struct Key {
    generation: u64,
    principal: String,
    claims: Claims,
    context: u64,
}

/// Visible sets by subject, for one policy (the dispatcher starts a new cache when the
/// policy is reloaded).
#[derive(Default)]
pub struct VisibilityCache {
    sets: Mutex<HashMap<Key, Arc<Visible>>>,
}

impl VisibilityCache {
    /// What `caller` may see in `snapshot` under `policy`.
    pub fn get(&self, policy: &Policy, caller: &Caller, snapshot: &Snapshot) -> Arc<Visible> {
        let key = Key {
            generation: snapshot.generation,
            principal: caller.principal.id.clone(),
            claims: caller.claims.clone(),
            context: caller.context,
        };
        if let Some(found) = self.lock().get(&key) {
            return found.clone();
        }
        let subject = super::subject(caller);
        let names = snapshot
            .capabilities()
            .filter(|c| policy.explain(subject, &c.name, &c.intent).verdict != Verdict::Deny)
            .map(|c| c.name.clone())
            .collect();
        let visible = Arc::new(Visible { names });
        let mut sets = self.lock();
        // Entries of older generations are never asked for again.
        sets.retain(|k, _| k.generation >= snapshot.generation);
        if sets.len() >= MAX_SUBJECTS {
            sets.clear();
        }
        sets.insert(key, visible.clone());
        visible
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Visible>>> {
        self.sets.lock().unwrap_or_else(|p| p.into_inner())
    }
}
