//! Approvals (DESIGN sections 7-8): a held run is approved or rejected by a principal
//! holding one of its guard's approver claims, never by anyone in its own chain.
//!
//! An approval is a second decision, not a bypass: the held call is decided again as it
//! would be now (the caller's key still enrolled and not revoked, its context still
//! allowed, the capability still in the catalog, the params valid against its current
//! schema, and the policy in force), and only a fresh allow mints the permit that forwards
//! it. A failed check ends the run (`denied` or `failed`, with the reason) and nothing
//! reaches the target. An approved call runs in the background; its caller collects the
//! result with `runs.wait`. Pending approvals live in the database: they survive a
//! restart, and they expire.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::task::AbortHandle;

use super::Dispatcher;
use super::forward::{Call, child_traceparent, forward_headers};
use super::record::claims_of;
use crate::access;
use crate::access::actor;
use crate::catalog::Lookup;
use crate::error::{ExecError, Failure};
use crate::intent::{Caller, Principal};
use crate::policy::{Decision, Permit, Subject};
use crate::runs::store::Changes;
use crate::runs::{Run, RunStatus, now_ms};

/// Approved runs executing in the background, by run id, so they can be cancelled.
pub(super) type Running = Arc<Mutex<HashMap<String, AbortHandle>>>;

/// What deciding a held call again came to.
enum Redecided {
    /// Allowed: forward it with this permit.
    Allowed(Box<(Permit, Call, Option<Value>)>),
    /// The approver holds none of the claims the policy in force asks for; the run waits on.
    NotThisApprover(ExecError),
    /// The call may no longer run: the run ends with this status and error.
    Refused(RunStatus, ExecError),
}

impl Dispatcher {
    /// Approves a held run: decides it again and, if allowed, starts it. Returns the run as
    /// it is now (`running`); a refusal ends the run and is returned as the error.
    pub async fn approve(&self, caller: &Caller, run_id: &str, note: Option<String>) -> Result<Run, Failure> {
        let run = self.pending(caller, run_id).await?;
        let mut changes = Changes {
            approver: Some(actor(caller)),
            decision_note: note,
            ..Changes::default()
        };
        let (permit, mut call, params) = match self.redecide(&run, caller).await {
            Redecided::Allowed(allowed) => *allowed,
            Redecided::NotThisApprover(error) => return Err(Failure::with_run(error, run_id)),
            Redecided::Refused(status, error) => {
                tracing::info!(%run_id, approver = %actor(caller), %error, "approval refused by a fresh decision");
                changes.finished_at = Some(now_ms());
                changes.error = Some(error.to_jsonrpc(None));
                self.conclude(&run, status, changes).await?;
                return Err(Failure::with_run(error, run_id));
            }
        };
        changes.started_at = Some(now_ms());
        self.conclude(&run, RunStatus::Running, changes).await?;
        // The approved call's span: the approver's request is its parent, the held call's
        // span its link.
        call.span = self.forwarder.telemetry.as_ref().map(|t| t.approved(caller, &run));
        tracing::info!(%run_id, approver = %actor(caller), capability = %run.name, "approved");
        // The answer is the run as approved, read before the call can produce a result.
        let approved = self.existing(run_id).await;
        self.start_approved(permit, call, params);
        approved
    }

    /// Rejects a held run.
    pub async fn reject(&self, caller: &Caller, run_id: &str, reason: Option<String>) -> Result<Run, Failure> {
        let run = self.pending(caller, run_id).await?;
        let changes = Changes {
            finished_at: Some(now_ms()),
            approver: Some(actor(caller)),
            decision_note: reason,
            ..Changes::default()
        };
        self.conclude(&run, RunStatus::Rejected, changes).await?;
        tracing::info!(%run_id, by = %actor(caller), "rejected");
        self.existing(run_id).await
    }

    /// Cancels a run that is waiting for approval, or an approved run still executing.
    /// Principals cancel their own runs; `executor.admin` cancels any. The run records who.
    pub async fn cancel(&self, caller: &Caller, run_id: &str) -> Result<Run, Failure> {
        let run = self.visible_run(caller, run_id).await?;
        if !access::may_cancel(caller, &run) {
            return Err(Failure::with_run(
                ExecError::Denied(format!(
                    "cancelling another principal's run needs the {} claim",
                    access::ADMIN_CLAIM
                )),
                run_id,
            ));
        }
        let changes = Changes {
            finished_at: Some(now_ms()),
            cancelled_by: Some(actor(caller)),
            ..Changes::default()
        };
        let from = match run.status {
            RunStatus::AwaitingApproval => RunStatus::AwaitingApproval,
            RunStatus::Running => {
                let handle = self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(run_id);
                let Some(handle) = handle else {
                    let error = ExecError::Conflict(format!(
                        "run {run_id} is running on its caller's connection; close it to cancel"
                    ));
                    return Err(Failure::with_run(error, run_id));
                };
                handle.abort();
                RunStatus::Running
            }
            _ => return Err(already_decided(run_id, Some(run))),
        };
        if !self
            .runs()
            .transition(run_id, &[from], RunStatus::Cancelled, changes)
            .await?
        {
            return Err(already_decided(run_id, self.runs().get(run_id).await?));
        }
        self.count(&run.name, RunStatus::Cancelled);
        self.existing(run_id).await
    }

    /// A run the caller may see ([`access::may_see`]). Others are "not found".
    pub async fn visible_run(&self, caller: &Caller, run_id: &str) -> Result<Run, Failure> {
        match self.runs().get(run_id).await? {
            Some(run) if access::may_see(caller, &run) => Ok(run),
            _ => Err(ExecError::NotFound(format!("no run {run_id}")).into()),
        }
    }

    /// A run waiting for approval that `caller` may decide.
    async fn pending(&self, caller: &Caller, run_id: &str) -> Result<Run, Failure> {
        // Only who may see the run, or may decide runs like it, learns that it exists (an
        // approver is told that a run it could have decided was decided already).
        let run = match self.runs().get(run_id).await? {
            Some(run) if access::may_see(caller, &run) || access::holds_approver_claim(caller, &run) => run,
            _ => return Err(ExecError::NotFound(format!("no run {run_id}")).into()),
        };
        access::may_decide(caller, &run).map_err(|e| Failure::with_run(e, run_id))?;
        if run.status == RunStatus::AwaitingApproval && run.expires_at.is_some_and(|at| at <= now_ms()) {
            for name in self.runs().expire_due().await? {
                self.count(&name, RunStatus::Expired);
            }
            let error = ExecError::Conflict(format!("run {run_id} expired before a decision"));
            return Err(Failure::with_run(error, run_id));
        }
        if run.status != RunStatus::AwaitingApproval {
            return Err(already_decided(run_id, Some(run)));
        }
        Ok(run)
    }

    /// Decides a held call again, as of now, with `approver`'s approval.
    async fn redecide(&self, run: &Run, approver: &Caller) -> Redecided {
        let refused = |status, error| Redecided::Refused(status, error);
        let principal = match self.principal_now(run) {
            Ok(principal) => principal,
            Err(error) => return refused(RunStatus::Denied, error),
        };
        // Never more than the key holds now, whatever the run recorded.
        let claims = principal.ceiling.narrow(Some(&claims_of(&run.claims)));
        // As when the call came in: through the console's relay, the peer's own claims name
        // the human (identity::context); elsewhere the claims the request narrowed to.
        let may_name = match run.surface {
            crate::intent::Surface::Console => &principal.ceiling,
            _ => &claims,
        };
        if run.chain.len() > 1 && !may_name.holds(access::IMPERSONATE_CLAIM) {
            let error = ExecError::Denied(format!("{} may no longer act for a user", principal.id));
            return refused(RunStatus::Denied, error);
        }
        let capability = match self.catalog.lookup(&run.service, &run.method).await {
            Lookup::Found(capability) if capability.pending => {
                let error = ExecError::Denied(super::execute::not_accepted(&capability));
                return refused(RunStatus::Denied, error);
            }
            Lookup::Found(capability) => capability,
            Lookup::Unavailable(why) => return refused(RunStatus::Failed, ExecError::TargetUnavailable(why)),
            Lookup::UnknownMethod | Lookup::UnknownService => {
                let error = ExecError::NotFound(format!("{} is no longer in the catalog", run.name));
                return refused(RunStatus::Failed, error);
            }
        };
        let subject = Subject {
            principal: &principal.id,
            claims: &claims,
            ceiling: &principal.ceiling,
            context: run.context,
        };
        let decision = self
            .policy()
            .decide_approved(subject, &run.name, &capability.intent, &approver.claims);
        self.metrics.decision(decision.verdict());
        let permit = match decision {
            Decision::Allow(permit) => permit,
            Decision::Deny(explanation) => return refused(RunStatus::Denied, ExecError::Denied(explanation.reason)),
            Decision::RequireApproval(explanation) => {
                return Redecided::NotThisApprover(ExecError::Denied(format!(
                    "approving run {} now needs one of the claims {}; {} holds {}",
                    run.id,
                    explanation.approvers.join(", "),
                    approver.principal.id,
                    approver.claims
                )));
            }
        };
        let params = run
            .input
            .as_deref()
            .and_then(|text| serde_json::from_str::<Value>(text).ok())
            .filter(|p| !p.is_null());
        let size = run.input.as_deref().map_or(0, str::len);
        if let Err(error) = self.validate(&capability, params.as_ref(), size).await {
            return refused(RunStatus::Failed, error);
        }
        // The target sees the held call's trace continued.
        let headers = forward_headers(
            &claims,
            run.context,
            run.chain.get(1).cloned(),
            &run.id,
            child_traceparent(run.trace.as_deref()),
        );
        let call = Call {
            run_id: run.id.clone(),
            capability,
            headers,
            span: None,
        };
        Redecided::Allowed(Box::new((permit, call, params)))
    }

    /// The principal of a held run as it stands now: its key still enrolled and not revoked
    /// (or the local owner still trusted), and the run's context still allowed.
    fn principal_now(&self, run: &Run) -> Result<Principal, ExecError> {
        let principal = match &self.config.local_owner {
            Some(owner) if owner.id == run.principal => owner.clone(),
            _ => match self.registry.get(&run.principal) {
                Some(key) if key.revoked_at.is_none() => key.principal(),
                Some(_) => return Err(ExecError::Denied(format!("the key {} was revoked", run.principal))),
                None => {
                    return Err(ExecError::Denied(format!(
                        "{} is no longer a trusted principal",
                        run.principal
                    )));
                }
            },
        };
        if let Some(allowed) = &principal.contexts
            && !allowed.contains(&run.context)
        {
            return Err(ExecError::Denied(format!(
                "{} may no longer act in context {}",
                principal.id, run.context
            )));
        }
        Ok(principal)
    }

    /// Moves a held run to `status`, or says it was decided by someone else first.
    async fn conclude(&self, run: &Run, status: RunStatus, changes: Changes) -> Result<(), Failure> {
        let run_id = run.id.as_str();
        let moved = self
            .runs()
            .transition(run_id, &[RunStatus::AwaitingApproval], status, changes)
            .await?;
        match moved {
            true => {
                self.count(&run.name, status);
                Ok(())
            }
            false => Err(already_decided(run_id, self.runs().get(run_id).await?)),
        }
    }

    /// A run that was just written.
    async fn existing(&self, run_id: &str) -> Result<Run, Failure> {
        self.runs()
            .get(run_id)
            .await?
            .ok_or_else(|| Failure::with_run(ExecError::Internal(format!("run {run_id} vanished")), run_id))
    }

    /// Runs an approved call in the background; its caller collects it with `runs.wait`.
    fn start_approved(&self, permit: Permit, call: Call, params: Option<Value>) {
        let forwarder = self.forwarder.clone();
        let running = self.running.clone();
        let run_id = call.run_id.clone();
        // Registered under the lock the task takes to unregister, so it cannot end first.
        let mut handles = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let task = tokio::spawn({
            let run_id = run_id.clone();
            async move {
                let _ = forwarder.forward(permit, call, params.as_ref()).await;
                running.lock().unwrap_or_else(|p| p.into_inner()).remove(&run_id);
            }
        });
        handles.insert(run_id, task.abort_handle());
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
                    Ok(names) if names.is_empty() => {}
                    Ok(names) => {
                        for name in &names {
                            this.count(name, RunStatus::Expired);
                        }
                        tracing::info!(runs = names.len(), "pending approvals expired");
                    }
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

fn already_decided(run_id: &str, run: Option<Run>) -> Failure {
    let status = run.map_or("gone", |r| r.status.as_str());
    Failure::with_run(ExecError::Conflict(format!("run {run_id} is already {status}")), run_id)
}
