//! Approvals (DESIGN sections 7-8): a held run is approved or rejected by a principal
//! holding one of its guard's approver claims, never by its own principal. Approving runs
//! the call in the background; the original caller collects the result with `runs.wait`.
//! Pending approvals live in the database, so they survive a restart; they expire.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::AbortHandle;

use super::{Dispatcher, Permit, forward_headers};
use crate::catalog::Lookup;
use crate::error::{ExecError, Failure};
use crate::intent::{Caller, Claims};
use crate::methods::ADMIN_CLAIM;
use crate::runs::store::Changes;
use crate::runs::{Run, RunStatus, now_ms};

/// Approved runs executing in the background, by run id, so they can be cancelled.
pub(super) type Running = Arc<Mutex<HashMap<String, AbortHandle>>>;

impl Dispatcher {
    /// Approves a held run and starts it. Returns the run as it is now (`running`).
    pub async fn approve(&self, caller: &Caller, run_id: &str, note: Option<String>) -> Result<Run, Failure> {
        let run = self.pending(caller, run_id).await?;
        let changes = Changes {
            started_at: Some(now_ms()),
            approver: Some(caller.principal.id.clone()),
            decision_note: note,
            ..Changes::default()
        };
        if !self
            .runs()
            .transition(run_id, &[RunStatus::AwaitingApproval], RunStatus::Running, changes)
            .await?
        {
            return Err(already_decided(run_id, self.runs().get(run_id).await?));
        }
        tracing::info!(%run_id, approver = %caller.principal.id, capability = %run.name, "approved");
        self.start_approved(run);
        Ok(self
            .runs()
            .get(run_id)
            .await?
            .unwrap_or_else(|| unreachable_run(run_id)))
    }

    /// Rejects a held run.
    pub async fn reject(&self, caller: &Caller, run_id: &str, reason: Option<String>) -> Result<Run, Failure> {
        self.pending(caller, run_id).await?;
        let changes = Changes {
            finished_at: Some(now_ms()),
            approver: Some(caller.principal.id.clone()),
            decision_note: reason,
            ..Changes::default()
        };
        if !self
            .runs()
            .transition(run_id, &[RunStatus::AwaitingApproval], RunStatus::Rejected, changes)
            .await?
        {
            return Err(already_decided(run_id, self.runs().get(run_id).await?));
        }
        tracing::info!(%run_id, by = %caller.principal.id, "rejected");
        Ok(self
            .runs()
            .get(run_id)
            .await?
            .unwrap_or_else(|| unreachable_run(run_id)))
    }

    /// Cancels a run that is waiting for approval, or an approved run still executing.
    /// Principals cancel their own runs; `executor.admin` cancels any.
    pub async fn cancel(&self, caller: &Caller, run_id: &str) -> Result<Run, Failure> {
        let run = self.visible_run(caller, run_id).await?;
        let changes = Changes {
            finished_at: Some(now_ms()),
            ..Changes::default()
        };
        let cancelled = match run.status {
            RunStatus::AwaitingApproval => {
                self.runs()
                    .transition(run_id, &[RunStatus::AwaitingApproval], RunStatus::Cancelled, changes)
                    .await?
            }
            RunStatus::Running => {
                let handle = self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(run_id);
                let Some(handle) = handle else {
                    return Err(Failure::with_run(
                        ExecError::Conflict(format!(
                            "run {run_id} is running on its caller's connection; close it to cancel"
                        )),
                        run_id,
                    ));
                };
                handle.abort();
                self.runs()
                    .transition(run_id, &[RunStatus::Running], RunStatus::Cancelled, changes)
                    .await?
            }
            _ => false,
        };
        if !cancelled {
            return Err(already_decided(run_id, self.runs().get(run_id).await?));
        }
        Ok(self
            .runs()
            .get(run_id)
            .await?
            .unwrap_or_else(|| unreachable_run(run_id)))
    }

    /// A run the caller may see: its own, or any for `executor.admin`. Others are "not found".
    pub async fn visible_run(&self, caller: &Caller, run_id: &str) -> Result<Run, Failure> {
        let run = self.runs().get(run_id).await?;
        match run {
            Some(run)
                if run.principal == caller.principal.id
                    || caller.claims.holds(ADMIN_CLAIM)
                    || is_approver(caller, &run) =>
            {
                Ok(run)
            }
            _ => Err(ExecError::NotFound(format!("no run {run_id}")).into()),
        }
    }

    /// A run waiting for approval that `caller` may decide.
    async fn pending(&self, caller: &Caller, run_id: &str) -> Result<Run, Failure> {
        let run = self
            .runs()
            .get(run_id)
            .await?
            .ok_or_else(|| ExecError::NotFound(format!("no run {run_id}")))?;
        if !is_approver(caller, &run) {
            let error = match run.approvers.is_empty() {
                true => ExecError::Conflict(format!("run {run_id} does not wait for approval")),
                false => ExecError::Denied(format!(
                    "deciding run {run_id} needs one of the claims {}; {} holds {}",
                    run.approvers.join(", "),
                    caller.principal.id,
                    caller.claims
                )),
            };
            return Err(Failure::with_run(error, run_id));
        }
        if run.principal == caller.principal.id {
            return Err(Failure::with_run(
                ExecError::Denied("nobody approves their own run".into()),
                run_id,
            ));
        }
        if run.status == RunStatus::AwaitingApproval && run.expires_at.is_some_and(|at| at <= now_ms()) {
            self.runs().expire_due().await?;
            return Err(Failure::with_run(
                ExecError::Conflict(format!("run {run_id} expired before a decision")),
                run_id,
            ));
        }
        if run.status != RunStatus::AwaitingApproval {
            return Err(already_decided(run_id, Some(run)));
        }
        Ok(run)
    }

    /// Runs an approved call in the background; its caller collects it with `runs.wait`.
    fn start_approved(&self, run: Run) {
        let forwarder = self.forwarder.clone();
        let catalog = self.catalog.clone();
        let running = self.running.clone();
        let run_id = run.id.clone();
        let task = tokio::spawn({
            let running = running.clone();
            async move {
                let params = run
                    .input
                    .as_deref()
                    .and_then(|text| serde_json::from_str(text).ok())
                    .filter(|p: &serde_json::Value| !p.is_null());
                let claims = match run.claims.as_slice() {
                    [all] if all == "*" => Claims::All,
                    list => Claims::Only(list.iter().cloned().collect()),
                };
                let headers = forward_headers(&claims, run.context, run.chain.get(1).cloned(), &run.id, None);
                match catalog.lookup(&run.service, &run.method).await {
                    Lookup::Found(capability) => {
                        let permit = Permit {
                            run_id: run.id.clone(),
                            capability,
                            headers,
                        };
                        let _ = forwarder.forward(permit, params.as_ref()).await;
                    }
                    _ => {
                        let error = ExecError::TargetUnavailable(format!("{} is no longer in the catalog", run.name));
                        let changes = Changes {
                            finished_at: Some(now_ms()),
                            error: Some(error.to_jsonrpc(None)),
                            ..Changes::default()
                        };
                        let _ = forwarder
                            .runs
                            .transition(&run.id, &[RunStatus::Running], RunStatus::Failed, changes)
                            .await;
                    }
                }
                running.lock().unwrap_or_else(|p| p.into_inner()).remove(&run.id);
            }
        });
        running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run_id, task.abort_handle());
    }

    /// Expires overdue approvals every second and prunes old runs every hour.
    pub fn spawn_housekeeping(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last_prune = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                match this.runs().expire_due().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(runs = n, "pending approvals expired"),
                    Err(e) => tracing::warn!(error = %e, "expiring approvals failed"),
                }
                if let Some(retention) = this.config.retention
                    && last_prune.elapsed() >= Duration::from_secs(3600)
                {
                    last_prune = tokio::time::Instant::now();
                    let before = now_ms() - retention.as_millis() as i64;
                    match this.runs().prune(before, None).await {
                        Ok(n) if n > 0 => tracing::info!(runs = n, "old runs pruned"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "pruning runs failed"),
                    }
                }
            }
        })
    }
}

fn is_approver(caller: &Caller, run: &Run) -> bool {
    run.approvers.iter().any(|claim| caller.claims.holds(claim))
}

fn already_decided(run_id: &str, run: Option<Run>) -> Failure {
    let status = run.map_or("gone", |r| r.status.as_str());
    Failure::with_run(ExecError::Conflict(format!("run {run_id} is already {status}")), run_id)
}

fn unreachable_run(run_id: &str) -> Run {
    panic!("run {run_id} vanished right after it was written")
}
