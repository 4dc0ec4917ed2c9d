//! Building the run record of an intent (DESIGN section 8).

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::intent::{Claims, Intent};
use crate::policy::Explanation;
use crate::runs::{Run, RunStatus, now_ms};

/// The params of an intent as stored: their JSON text, and the sha-256 of their canonical
/// form (object members sorted), so the same params in another order are the same input.
pub(crate) struct Input {
    pub text: String,
    pub sha256: String,
}

impl Input {
    pub fn of(params: Option<&Value>) -> Self {
        let params = params.unwrap_or(&Value::Null);
        let text = serde_json::to_string(params).unwrap_or_default();
        let mut hasher = Sha256::new();
        canonical(params, &mut hasher);
        Self {
            text,
            sha256: hex::encode(hasher.finalize()),
        }
    }
}

/// Feeds `value` as JSON to `hasher`, object members in key order.
fn canonical(value: &Value, hasher: &mut Sha256) {
    match value {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.cmp(b.0));
            hasher.update(b"{");
            for (i, (key, member)) in members.into_iter().enumerate() {
                if i > 0 {
                    hasher.update(b",");
                }
                hasher.update(Value::String(key.clone()).to_string().as_bytes());
                hasher.update(b":");
                canonical(member, hasher);
            }
            hasher.update(b"}");
        }
        Value::Array(items) => {
            hasher.update(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    hasher.update(b",");
                }
                canonical(item, hasher);
            }
            hasher.update(b"]");
        }
        scalar => hasher.update(scalar.to_string().as_bytes()),
    }
}

/// A new run for `intent`, decided as `explanation` says; status `running` until the caller
/// sets it. Params over `cap` bytes are kept only as their hash.
pub(crate) fn new_run(intent: &Intent, explanation: &Explanation, input: Input, cap: usize) -> Run {
    let caller = &intent.caller;
    let stored = input.text.len() <= cap;
    let id = intent
        .run_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    tracing::Span::current().record("run_id", tracing::field::display(&id));
    Run {
        id,
        parent_id: intent.parent_id.clone(),
        replay_of: None,
        name: intent.capability.to_string(),
        surface: intent.surface,
        principal: caller.principal.id.clone(),
        chain: caller.chain(),
        context: caller.context,
        claims: claims_list(&caller.claims),
        service: intent.capability.service.clone(),
        method: intent.capability.method.clone(),
        input_sha256: input.sha256,
        input: stored.then_some(input.text),
        input_truncated: !stored,
        idempotency_key: intent.idempotency_key.clone(),
        decision: explanation.verdict,
        rule: Some(explanation.record()),
        approvers: explanation.approvers.clone(),
        status: RunStatus::Running,
        result: None,
        result_truncated: false,
        error: None,
        approver: None,
        decision_note: None,
        cancelled_by: None,
        trace: caller.traceparent.clone(),
        created_at: now_ms(),
        started_at: None,
        finished_at: None,
        expires_at: None,
    }
}

/// Claims as a run records them (`["*"]` for full trust).
pub(super) fn claims_list(claims: &Claims) -> Vec<String> {
    match claims {
        Claims::All => vec!["*".to_owned()],
        Claims::Only(set) => set.iter().cloned().collect(),
    }
}

/// Claims from a run's record.
pub(super) fn claims_of(list: &[String]) -> Claims {
    match list {
        [all] if all == "*" => Claims::All,
        list => Claims::Only(list.iter().cloned().collect()),
    }
}
