//! `runs.*`: the record of every execution. Principals see and cancel their own runs;
//! approvers see and decide the runs waiting for them; `executor.admin` sees everything,
//! cancels any run and prunes (the rules are in [`crate::access`]).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::access;
use crate::dispatch::Dispatcher;
use crate::error::ExecError;
use crate::intent::{Caller, Claims};
use crate::runs::RunStatus;
use crate::runs::store::{ListFilter, Viewer};

/// `runs.list`: newest first.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsList {
    pub status: Option<String>,
    pub capability: Option<String>,
    pub principal: Option<String>,
    /// Unix milliseconds.
    pub since: Option<i64>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
    /// Only the runs waiting for an approval the caller may give (its inbox).
    pub inbox: Option<bool>,
    /// Statuses to leave out (e.g. `["denied"]` on a noisy node).
    pub hide: Option<Vec<String>>,
}

/// `runs.get`, `runs.cancel`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRef {
    pub run_id: String,
}

/// `runs.wait`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsWait {
    pub run_id: String,
    pub timeout_ms: Option<u64>,
}

/// `runs.approve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approve {
    pub run_id: String,
    pub note: Option<String>,
}

/// `runs.reject`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reject {
    pub run_id: String,
    pub reason: Option<String>,
}

/// `runs.prune`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsPrune {
    pub older_than_s: Option<u64>,
    pub status: Option<String>,
}

/// The longest `runs.wait` may block.
const MAX_WAIT: Duration = Duration::from_secs(600);

pub(super) async fn list(d: &Dispatcher, caller: &Caller, p: RunsList) -> Result<Value, ExecError> {
    let filter = list_filter(caller, &p)?;
    let (runs, next) = d.runs().list(filter).await?;
    let runs: Vec<Value> = runs.iter().map(|run| access::view(caller, run)).collect();
    Ok(json!({ "runs": runs, "next_cursor": next }))
}

/// The store's filter for `runs.list` as `caller`: what it asked for, within what it may see.
pub fn list_filter(caller: &Caller, p: &RunsList) -> Result<ListFilter, ExecError> {
    let admin = access::is_admin(caller);
    if let Some(other) = &p.principal
        && !admin
        && *other != caller.principal.id
    {
        return Err(ExecError::Denied(format!(
            "listing {other}'s runs needs the {} claim",
            access::ADMIN_CLAIM
        )));
    }
    let viewer = Viewer {
        principal: caller.principal.id.clone(),
        user: caller.user.clone(),
        approver_claims: match &caller.claims {
            Claims::All => None,
            Claims::Only(set) => Some(set.iter().cloned().collect()),
        },
        actor: access::actor(caller),
        relayed: caller.relayed,
    };
    let inbox = p.inbox.unwrap_or(false);
    let filter = ListFilter {
        status: p.status.as_deref().map(status).transpose()?,
        capability: p.capability.clone(),
        principal: p.principal.clone(),
        since: p.since,
        limit: p.limit.unwrap_or(50),
        cursor: p.cursor.clone(),
        // An admin sees every run; others their own and those waiting for them.
        seen_by: (!admin).then(|| viewer.clone()),
        inbox: inbox.then_some(viewer),
        hide: p.hide.iter().flatten().map(|s| status(s)).collect::<Result<_, _>>()?,
    };
    if !(1..=1000).contains(&filter.limit) {
        return Err(ExecError::invalid_params("limit must be between 1 and 1000"));
    }
    Ok(filter)
}

pub(super) async fn wait(d: &Dispatcher, caller: &Caller, p: RunsWait) -> Result<Value, ExecError> {
    d.visible_run(caller, &p.run_id).await.map_err(|f| f.error)?;
    let timeout = Duration::from_millis(p.timeout_ms.unwrap_or(30_000)).min(MAX_WAIT);
    let run = d.runs().wait(&p.run_id, timeout).await?;
    // An approver sees a run only while it waits, and the one who decided it all but its
    // outcome.
    if !access::may_see(caller, &run) {
        return Err(ExecError::NotFound(format!("no run {}", p.run_id)));
    }
    Ok(access::view(caller, &run))
}

pub(super) async fn prune(d: &Dispatcher, caller: &Caller, p: RunsPrune) -> Result<Value, ExecError> {
    access::require_admin(caller, "runs.prune")?;
    let older = Duration::from_secs(p.older_than_s.unwrap_or(30 * 24 * 3600));
    let before = crate::runs::now_ms() - older.as_millis() as i64;
    let status = p.status.as_deref().map(status).transpose()?;
    Ok(json!({ "deleted": d.runs().prune(before, status).await? }))
}

fn status(text: &str) -> Result<RunStatus, ExecError> {
    RunStatus::parse(text).ok_or_else(|| {
        let known: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
        ExecError::invalid_params(format!("unknown status {text:?} (known: {})", known.join(", ")))
    })
}
