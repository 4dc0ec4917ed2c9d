//! Runs (DESIGN section 8): every intent on every surface becomes a Run, denied ones too.
//!
//! [`Run`] is the record; [`store::RunStore`] keeps it in SQLite, written by one thread
//! with group commit (`writer`), read off the async threads (`row` maps the columns).

mod journal;
mod row;
pub mod store;
mod writer;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::intent::Surface;
use crate::policy::Verdict;

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    AwaitingApproval,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Denied,
    Rejected,
    Expired,
    Cancelled,
    /// Was running when the executor stopped; set at start-up.
    Interrupted,
}

impl RunStatus {
    pub const ALL: [RunStatus; 10] = [
        Self::AwaitingApproval,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::TimedOut,
        Self::Denied,
        Self::Rejected,
        Self::Expired,
        Self::Cancelled,
        Self::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingApproval => "awaiting_approval",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Denied => "denied",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether nothing more will happen to the run.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::AwaitingApproval | Self::Running)
    }
}

/// One recorded execution.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// UUIDv7: sorts by creation time.
    pub id: String,
    pub parent_id: Option<String>,
    /// For a retry under an idempotency key: the run whose outcome it was answered with.
    pub replay_of: Option<String>,
    /// The capability, `<service>.<method>`.
    pub name: String,
    pub surface: Surface,
    /// The signer (first of `chain`).
    pub principal: String,
    /// `[signer, user]`.
    pub chain: Vec<String>,
    pub context: u64,
    /// Effective claims (`["*"]` for full trust).
    pub claims: Vec<String>,
    pub service: String,
    pub method: String,
    pub input_sha256: String,
    /// The params as JSON text, when within the storage cap.
    #[serde(skip)]
    pub input: Option<String>,
    pub input_truncated: bool,
    pub idempotency_key: Option<String>,
    /// What policy decided when the call came in.
    pub decision: Verdict,
    /// The policy rule that decided, and why.
    pub rule: Option<String>,
    /// Claims that may approve (`require_approval` only).
    pub approvers: Vec<String>,
    pub status: RunStatus,
    /// The result as JSON text, when within the storage cap.
    #[serde(skip)]
    pub result: Option<String>,
    pub result_truncated: bool,
    /// The JSON-RPC error object, for runs that failed.
    pub error: Option<Value>,
    /// Who approved or rejected.
    pub approver: Option<String>,
    pub decision_note: Option<String>,
    /// Who cancelled the run, when it was cancelled.
    pub cancelled_by: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// When a pending approval expires.
    pub expires_at: Option<i64>,
    /// The call's W3C `traceparent`: its own span's with `--otlp-endpoint`, else the
    /// caller's (if it sent one). An approved call's span links to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

impl Run {
    /// Applies a transition to `to` with `changes` to this record (as the store's
    /// transition would to its row).
    pub(crate) fn end(&mut self, to: RunStatus, changes: store::Changes) {
        self.status = to;
        self.started_at = changes.started_at.or(self.started_at);
        self.finished_at = changes.finished_at.or(self.finished_at);
        self.result = changes.result.or(self.result.take());
        self.result_truncated |= changes.result_truncated;
        self.error = changes.error.or(self.error.take());
        self.approver = changes.approver.or(self.approver.take());
        self.decision_note = changes.decision_note.or(self.decision_note.take());
        self.cancelled_by = changes.cancelled_by.or(self.cancelled_by.take());
    }

    /// Wall time from start to finish, in milliseconds.
    pub fn duration_ms(&self) -> Option<i64> {
        Some(self.finished_at? - self.started_at?)
    }

    /// The JSON form the API answers with (params and result included when stored).
    pub fn to_json(&self) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        let parse = |text: &Option<String>| text.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok());
        value["params"] = parse(&self.input).unwrap_or(Value::Null);
        value["result"] = parse(&self.result).unwrap_or(Value::Null);
        value["duration_ms"] = self.duration_ms().into();
        value
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
