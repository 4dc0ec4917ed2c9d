//! Running one capability: decide, record, validate, forward (or hold for approval); and
//! idempotent retries, which are decided like a new call before they are answered.

use crate::catalog::{HeroIntent, Lookup};
use crate::error::{ExecError, Failure};
use crate::intent::{Intent, Outcome};
use crate::policy::{Decision, Verdict};
use crate::runs::{Run, RunStatus, now_ms};

use super::forward::{Call, caller_headers, outcome_of};
use super::record::{Input, new_run};
use super::{Dispatcher, subject};
use crate::telemetry::Traced;

/// Longest idempotency key, in bytes.
pub(crate) const MAX_IDEMPOTENCY_KEY: usize = 256;

impl Dispatcher {
    /// Runs one capability: decide, record, validate, forward (or hold for approval).
    pub async fn execute(&self, intent: Intent) -> Outcome {
        let name = intent.capability.to_string();
        let lookup = self
            .catalog
            .lookup(&intent.capability.service, &intent.capability.method)
            .await;
        let meta = match &lookup {
            Lookup::Found(capability) => capability.intent,
            _ => HeroIntent::UNDECLARED,
        };
        let decision = self.policy().decide(subject(&intent.caller), &name, &meta);
        self.metrics.decision(decision.verdict());
        // With --otlp-endpoint: the call's span, ended wherever the call ends.
        let span = self.forwarder.telemetry.as_ref().map(|t| {
            let label = crate::metrics::capability_label(&self.catalog.snapshot(), &name);
            let mut span = t.call(&intent.caller, intent.surface.as_str(), &name, &label);
            span.set("hero.decision", decision.verdict().as_str());
            span
        });
        let input = Input::of(intent.params.as_ref());
        let size = input.text.len();
        if let Some(key) = &intent.idempotency_key {
            if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
                return Err(ExecError::invalid_params("idempotency_key is 1-256 bytes").into());
            }
            let caller = &intent.caller;
            let first = self
                .runs()
                .by_idempotency_key(&caller.principal.id, caller.user.as_deref(), &name, key)
                .await?;
            if let Some(first) = first {
                return self.replay(&intent, first, decision, input, span).await;
            }
        }
        let mut run = new_run(&intent, decision.explanation(), input, self.forwarder.payload_cap);
        let span = traced(span, &mut run);
        let id = run.id.clone();
        // Denied: recorded, and answered without saying whether the capability exists.
        let permit = match decision {
            Decision::Deny(explanation) => {
                let error = ExecError::Denied(explanation.reason);
                return Err(self.record_refusal(run, RunStatus::Denied, error, span).await);
            }
            Decision::RequireApproval(_) => None,
            Decision::Allow(permit) => Some(permit),
        };
        let capability = match lookup {
            Lookup::Found(capability) if capability.pending => {
                let error = ExecError::Denied(not_accepted(&capability));
                return Err(self.record_refusal(run, RunStatus::Denied, error, span).await);
            }
            Lookup::Found(capability) => capability,
            Lookup::UnknownMethod | Lookup::UnknownService => {
                let error = ExecError::NotFound(format!("no capability {name}"));
                return Err(self.record_refusal(run, RunStatus::Failed, error, span).await);
            }
            Lookup::Unavailable(why) => {
                let error = ExecError::TargetUnavailable(why);
                return Err(self.record_refusal(run, RunStatus::Failed, error, span).await);
            }
        };
        if let Err(error) = self.validate(&capability, intent.params.as_ref(), size).await {
            return Err(self.record_refusal(run, RunStatus::Failed, error, span).await);
        }
        let Some(permit) = permit else {
            return Err(self.hold(run, &intent, span).await);
        };
        run.status = RunStatus::Running;
        run.started_at = Some(now_ms());
        // On disk before the target sees the call: if the executor dies mid-call, the run
        // is found `running` at the next start and marked `interrupted`, never lost.
        self.runs().insert(run).await.map_err(|e| Failure::with_run(e, &id))?;
        let call = Call {
            headers: caller_headers(&intent.caller, &id, span.is_some()),
            run_id: id,
            capability,
            span,
        };
        self.forwarder.forward(permit, call, intent.params.as_ref()).await
    }

    /// Records a call held for approval; returns the -32010 to answer with.
    async fn hold(&self, mut run: Run, intent: &Intent, span: Option<Traced>) -> Failure {
        let id = run.id.clone();
        let expires_at = now_ms() + self.config.approval_ttl.as_millis() as i64;
        run.status = RunStatus::AwaitingApproval;
        run.expires_at = Some(expires_at);
        // The call runs later, so its params are kept whatever their size.
        run.input = Some(Input::of(intent.params.as_ref()).text);
        run.input_truncated = false;
        let name = run.name.clone();
        if let Err(e) = self.runs().insert(run).await {
            return Failure::with_run(e, id);
        }
        self.ended(&name, RunStatus::AwaitingApproval, None, span);
        Failure::with_run(
            ExecError::ApprovalPending {
                run_id: id.clone(),
                expires_at,
            },
            id,
        )
    }

    /// Records a run that ends before forwarding, and returns the failure to answer with.
    async fn record_refusal(&self, mut run: Run, status: RunStatus, error: ExecError, span: Option<Traced>) -> Failure {
        let id = run.id.clone();
        run.status = status;
        run.finished_at = Some(now_ms());
        run.error = Some(error.to_jsonrpc(None));
        self.ended(&run.name, status, Some(&error), span);
        if let Err(e) = self.runs().insert(run).await {
            return Failure::with_run(e, id);
        }
        Failure::with_run(error, id)
    }

    /// A retry under an idempotency key already used by this principal, user and
    /// capability. Decided like a new call first: a caller that may no longer run the
    /// capability does not get its stored outcome. Then the first run's outcome, never a
    /// second execution; a different input under the same key is a conflict. The retry is
    /// recorded as a run of its own that points at the first (`replay_of`).
    async fn replay(
        &self,
        intent: &Intent,
        first: Run,
        decision: Decision,
        input: Input,
        span: Option<Traced>,
    ) -> Outcome {
        let mut run = new_run(intent, decision.explanation(), input, 0);
        run.replay_of = Some(first.id.clone());
        let mut span = traced(span, &mut run);
        if let Some(span) = &mut span {
            span.set("hero.replay_of", &first.id);
        }
        if let Decision::Deny(explanation) = &decision {
            let error = ExecError::Denied(explanation.reason.clone());
            return Err(self.record_refusal(run, RunStatus::Denied, error, span).await);
        }
        let key = first.idempotency_key.as_deref().unwrap_or_default();
        if first.context != run.context {
            let error = ExecError::Conflict(format!(
                "idempotency key {key:?} was used in context {} (run {})",
                first.context, first.id
            ));
            return Err(self.record_refusal(run, RunStatus::Failed, error, span).await);
        }
        if first.input_sha256 != run.input_sha256 {
            let error = ExecError::Conflict(format!(
                "idempotency key {key:?} was used for a different call (run {})",
                first.id
            ));
            return Err(self.record_refusal(run, RunStatus::Failed, error, span).await);
        }
        // An outcome that needed no approval is not handed out once the call needs one.
        if decision.verdict() == Verdict::RequireApproval && first.decision != Verdict::RequireApproval {
            let error = ExecError::Conflict(format!(
                "idempotency key {key:?} belongs to a call made without approval, and {} now needs approval: \
                 retry with a new key",
                first.name
            ));
            return Err(self.record_refusal(run, RunStatus::Failed, error, span).await);
        }
        let first = match first.status {
            RunStatus::Running => self.runs().wait(&first.id, self.config.call_timeout).await?,
            _ => first,
        };
        let outcome = outcome_of(&first);
        run.status = match (&outcome, first.status.is_final()) {
            (_, true) => first.status,
            (Ok(_), false) => RunStatus::Succeeded,
            (Err(_), false) => RunStatus::Failed,
        };
        run.error = outcome.as_ref().err().map(|f| f.error.to_jsonrpc(f.run_id.as_deref()));
        run.started_at = Some(run.created_at);
        run.finished_at = Some(now_ms());
        let id = run.id.clone();
        let (name, status) = (run.name.clone(), run.status);
        self.runs().insert(run).await.map_err(|e| Failure::with_run(e, id))?;
        self.ended(&name, status, outcome.as_ref().err().map(|f| &f.error), span);
        outcome
    }
}

/// Tells a call's span which run records it, and records the span's trace on the run.
fn traced(span: Option<Traced>, run: &mut Run) -> Option<Traced> {
    let mut span = span?;
    span.set("hero.run_id", &run.id);
    run.trace = Some(span.traceparent());
    Some(span)
}

/// Why a source capability that is new since its source was accepted is refused.
pub(super) fn not_accepted(capability: &crate::catalog::Capability) -> String {
    format!(
        "{} is new in source {} since an admin accepted it: refused until an admin runs sources.accept {{\"name\": \"{}\"}}",
        capability.name, capability.service, capability.service
    )
}
