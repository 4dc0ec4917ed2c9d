//! `runs.*`: the record of every execution. Principals see and cancel their own runs;
//! approvers decide held runs; `executor.admin` sees everything and prunes.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{ADMIN_CLAIM, parse, require_admin};
use crate::dispatch::Dispatcher;
use crate::error::{ExecError, Failure};
use crate::intent::Caller;
use crate::runs::RunStatus;
use crate::runs::store::ListFilter;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    status: Option<String>,
    capability: Option<String>,
    principal: Option<String>,
    /// Unix milliseconds.
    since: Option<i64>,
    limit: Option<usize>,
    cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunParams {
    run_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitParams {
    run_id: String,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveParams {
    run_id: String,
    note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectParams {
    run_id: String,
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PruneParams {
    older_than_s: Option<u64>,
    status: Option<String>,
}

/// The longest `runs.wait` may block.
const MAX_WAIT: Duration = Duration::from_secs(600);

pub(super) async fn handle(
    d: &Dispatcher,
    caller: &Caller,
    method: &str,
    params: Option<Value>,
) -> Result<Option<Value>, Failure> {
    Ok(Some(match method {
        "runs.list" => {
            let p: ListParams = parse(method, params)?;
            let admin = caller.claims.holds(ADMIN_CLAIM);
            let principal = match p.principal {
                Some(other) if !admin && other != caller.principal.id => {
                    return Err(
                        ExecError::Denied(format!("listing {other}'s runs needs the {ADMIN_CLAIM} claim")).into(),
                    );
                }
                Some(principal) => Some(principal),
                None if admin => None,
                None => Some(caller.principal.id.clone()),
            };
            let filter = ListFilter {
                status: p.status.as_deref().map(status).transpose()?,
                capability: p.capability,
                principal,
                since: p.since,
                limit: p.limit.unwrap_or(50),
                cursor: p.cursor,
            };
            if !(1..=1000).contains(&filter.limit) {
                return Err(ExecError::invalid_params("limit must be between 1 and 1000").into());
            }
            let (runs, next) = d.runs().list(filter).await?;
            json!({ "runs": runs.iter().map(|r| r.to_json()).collect::<Vec<_>>(), "next_cursor": next })
        }
        "runs.get" => {
            let p: RunParams = parse(method, params)?;
            d.visible_run(caller, &p.run_id).await?.to_json()
        }
        "runs.wait" => {
            let p: WaitParams = parse(method, params)?;
            d.visible_run(caller, &p.run_id).await?;
            let timeout = Duration::from_millis(p.timeout_ms.unwrap_or(30_000)).min(MAX_WAIT);
            d.runs().wait(&p.run_id, timeout).await?.to_json()
        }
        "runs.approve" => {
            let p: ApproveParams = parse(method, params)?;
            d.approve(caller, &p.run_id, p.note).await?.to_json()
        }
        "runs.reject" => {
            let p: RejectParams = parse(method, params)?;
            d.reject(caller, &p.run_id, p.reason).await?.to_json()
        }
        "runs.cancel" => {
            let p: RunParams = parse(method, params)?;
            d.cancel(caller, &p.run_id).await?.to_json()
        }
        "runs.prune" => {
            require_admin(caller, method)?;
            let p: PruneParams = parse(method, params)?;
            let older = Duration::from_secs(p.older_than_s.unwrap_or(30 * 24 * 3600));
            let before = crate::runs::now_ms() - older.as_millis() as i64;
            let status = p.status.as_deref().map(status).transpose()?;
            json!({ "deleted": d.runs().prune(before, status).await? })
        }
        _ => return Ok(None),
    }))
}

fn status(text: &str) -> Result<RunStatus, Failure> {
    RunStatus::parse(text).ok_or_else(|| {
        let known: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
        ExecError::invalid_params(format!("unknown status {text:?} (known: {})", known.join(", "))).into()
    })
}
