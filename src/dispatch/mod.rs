//! The core dispatcher: the one place every surface sends its calls.
//!
//! [`Dispatcher::call`] takes any JSON-RPC method name: the executor's own methods
//! (reserved namespaces) are answered by [`crate::methods`]; everything else is a
//! capability and goes through [`Dispatcher::execute`]: catalog lookup, policy decision,
//! a Run record, params validation, then forwarding. Forwarding needs a [`Permit`], which
//! only a policy decision in this module creates, so a call cannot reach a target
//! without one.

mod approvals;
mod visibility;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::catalog::{Capability, Catalog, HeroIntent, Lookup, Snapshot};
use crate::error::{ExecError, Failure};
use crate::identity::registry::Registry;
use crate::intent::{Caller, CapabilityName, Claims, Intent, Outcome, Surface};
use crate::methods;
use crate::policy::{Decision, Policy, Subject, Verdict};
use crate::runs::store::{Changes, RunStore};
use crate::runs::{Run, RunStatus, now_ms};
use crate::upstream::{ForwardHeaders, Upstream};
pub use visibility::{VisibilityCache, Visible};

/// Limits of the core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Default per-call timeout of forwarded calls.
    pub call_timeout: Duration,
    /// How long a call may wait for approval before it expires.
    pub approval_ttl: Duration,
    /// Params and results larger than this are not stored on the run (their hash is).
    pub payload_cap: usize,
    /// Final runs older than this are pruned (`None`: kept).
    pub retention: Option<Duration>,
}

/// Proof that policy allowed a call (directly, or through an approval). Only this module
/// makes one.
pub struct Permit {
    run_id: String,
    capability: Arc<Capability>,
    headers: ForwardHeaders,
}

/// Routes intents to the executor's own methods or, under policy, to target services.
pub struct Dispatcher {
    catalog: Arc<Catalog>,
    registry: Arc<Registry>,
    /// The policy in force, and what it lets each subject see (replaced together).
    policy: RwLock<(Arc<Policy>, Arc<VisibilityCache>)>,
    policy_path: Option<PathBuf>,
    forwarder: Forwarder,
    running: approvals::Running,
    config: CoreConfig,
}

/// What forwarding needs; cheap to clone into a task that runs an approved call.
#[derive(Clone)]
struct Forwarder {
    upstream: Upstream,
    runs: Arc<RunStore>,
    call_timeout: Duration,
    payload_cap: usize,
}

impl Dispatcher {
    /// A dispatcher over its parts; `policy` was loaded from `policy_path` (or is the default).
    pub fn new(
        catalog: Arc<Catalog>,
        registry: Arc<Registry>,
        runs: Arc<RunStore>,
        upstream: Upstream,
        policy: Policy,
        policy_path: Option<PathBuf>,
        config: CoreConfig,
    ) -> Self {
        Self {
            catalog,
            registry,
            policy: RwLock::new((Arc::new(policy), Arc::default())),
            policy_path,
            forwarder: Forwarder {
                upstream,
                runs,
                call_timeout: config.call_timeout,
                payload_cap: config.payload_cap,
            },
            running: Default::default(),
            config,
        }
    }

    /// The catalog this dispatcher resolves capabilities in.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The key registry (managed through `keys.*`).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The run store.
    pub fn runs(&self) -> &Arc<RunStore> {
        &self.forwarder.runs
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// Reloads the policy file. An invalid file leaves the running policy in place and
    /// returns every error.
    pub fn reload_policy(&self) -> Result<Arc<Policy>, Vec<String>> {
        let policy = Arc::new(Policy::load(self.policy_path.as_deref()).inspect_err(|errors| {
            for error in errors {
                tracing::error!(%error, "policy reload refused; the running policy stays");
            }
        })?);
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = (policy.clone(), Arc::default());
        tracing::info!(source = %policy.source, rules = policy.rule_count(), "policy reloaded");
        Ok(policy)
    }

    /// How policy decides `capability` for `caller`.
    pub fn decide(&self, caller: &Caller, capability: &str, intent: &HeroIntent) -> Decision {
        self.policy().decide(subject(caller), capability, intent)
    }

    /// Every capability of `snapshot` that `caller` may see, decided once per subject,
    /// catalog generation and policy.
    pub fn visible(&self, caller: &Caller, snapshot: &Snapshot) -> Arc<Visible> {
        let (policy, cache) = self.policy.read().unwrap_or_else(|p| p.into_inner()).clone();
        cache.get(&policy, caller, snapshot)
    }

    /// Answers one JSON-RPC method call from any surface.
    pub async fn call(&self, caller: &Caller, surface: Surface, method: &str, params: Option<Value>) -> Outcome {
        if methods::is_reserved(method) {
            return methods::handle(self, caller, surface, method, params).await;
        }
        let capability = CapabilityName::parse(method).map_err(ExecError::MethodNotFound)?;
        let intent = Intent {
            caller: caller.clone(),
            capability,
            params,
            surface,
            idempotency_key: None,
        };
        // Called directly as a method, an unknown capability is an unknown method.
        self.execute(intent).await.map_err(|mut f| {
            if let ExecError::NotFound(what) = f.error {
                f.error = ExecError::MethodNotFound(what);
            }
            f
        })
    }

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
        let decision = self.decide(&intent.caller, &name, &meta);
        let input = serde_json::to_string(intent.params.as_ref().unwrap_or(&Value::Null)).unwrap_or_default();
        let input_sha256 = hex::encode(Sha256::digest(input.as_bytes()));

        if let Some(key) = &intent.idempotency_key {
            if key.is_empty() || key.len() > 256 {
                return Err(ExecError::invalid_params("idempotency_key is 1-256 characters").into());
            }
            if let Some(first) = self.runs().by_idempotency_key(&intent.caller.principal.id, key).await? {
                return self.replay(first, &name, &input_sha256).await;
            }
        }

        let mut run = new_run(
            &intent,
            &name,
            &decision,
            input,
            input_sha256,
            self.forwarder.payload_cap,
        );
        let id = run.id.clone();
        // Denied: recorded, and answered without saying whether the capability exists.
        if decision.verdict == Verdict::Deny {
            let error = ExecError::Denied(decision.reason.clone());
            return Err(self.record_refusal(run, RunStatus::Denied, error).await);
        }
        let capability = match lookup {
            Lookup::Found(capability) => capability,
            Lookup::UnknownMethod | Lookup::UnknownService => {
                let error = ExecError::NotFound(format!("no capability {name}"));
                return Err(self.record_refusal(run, RunStatus::Failed, error).await);
            }
            Lookup::Unavailable(why) => {
                return Err(self
                    .record_refusal(run, RunStatus::Failed, ExecError::TargetUnavailable(why))
                    .await);
            }
        };
        if let Err(error) = capability.validate(intent.params.as_ref()) {
            return Err(self.record_refusal(run, RunStatus::Failed, error).await);
        }
        if decision.verdict == Verdict::RequireApproval {
            let expires_at = now_ms() + self.config.approval_ttl.as_millis() as i64;
            run.status = RunStatus::AwaitingApproval;
            run.expires_at = Some(expires_at);
            // The call runs later, so its params are kept whatever their size.
            run.input = Some(serde_json::to_string(intent.params.as_ref().unwrap_or(&Value::Null)).unwrap_or_default());
            run.input_truncated = false;
            self.runs().insert(run).await.map_err(|e| Failure::with_run(e, &id))?;
            tracing::info!(run_id = %id, capability = %name, "held for approval");
            return Err(Failure::with_run(
                ExecError::ApprovalPending {
                    run_id: id.clone(),
                    expires_at,
                },
                id,
            ));
        }
        run.status = RunStatus::Running;
        run.started_at = Some(now_ms());
        // On disk before the target sees the call: if the executor dies mid-call, the run
        // is found `running` at the next start and marked `interrupted`, never lost.
        self.runs().insert(run).await.map_err(|e| Failure::with_run(e, &id))?;
        let permit = Permit {
            headers: forward_headers(
                &intent.caller.claims,
                intent.caller.context,
                intent.caller.user.clone(),
                &id,
                intent.caller.traceparent.as_deref(),
            ),
            run_id: id,
            capability,
        };
        self.forwarder.forward(permit, intent.params.as_ref()).await
    }

    /// Records a run that ends before forwarding, and returns the failure to answer with.
    async fn record_refusal(&self, mut run: Run, status: RunStatus, error: ExecError) -> Failure {
        let id = run.id.clone();
        run.status = status;
        run.finished_at = Some(now_ms());
        run.error = Some(error.to_jsonrpc(None));
        if let Err(e) = self.runs().insert(run).await {
            return Failure::with_run(e, id);
        }
        Failure::with_run(error, id)
    }

    /// A retry with an idempotency key already used: the first run's outcome, never a second
    /// execution; a different input under the same key is a conflict.
    async fn replay(&self, first: Run, name: &str, input_sha256: &str) -> Outcome {
        let id = first.id.clone();
        if first.name != name || first.input_sha256 != input_sha256 {
            let error = ExecError::Conflict(format!(
                "idempotency key {:?} was used for a different call (run {id})",
                first.idempotency_key.as_deref().unwrap_or_default()
            ));
            return Err(Failure::with_run(error, id));
        }
        let run = match first.status {
            RunStatus::Running => self.runs().wait(&id, self.config.call_timeout).await?,
            _ => first,
        };
        outcome_of(&run)
    }
}

impl Forwarder {
    /// Forwards a permitted call and records how it ended.
    async fn forward(&self, permit: Permit, params: Option<&Value>) -> Outcome {
        let Permit {
            run_id,
            capability,
            headers,
        } = permit;
        tracing::debug!(capability = %capability.name, %run_id, "forwarding");
        let outcome = self
            .upstream
            .call(
                &capability.service,
                &capability.method,
                params,
                &headers,
                self.call_timeout,
            )
            .await;
        let (status, changes) = match &outcome {
            Ok(result) => {
                let stored = result.get().len() <= self.payload_cap;
                (
                    RunStatus::Succeeded,
                    Changes {
                        result: stored.then(|| result.get().to_owned()),
                        result_truncated: !stored,
                        ..Changes::default()
                    },
                )
            }
            Err(error) => (
                match error {
                    ExecError::TargetTimeout(_) => RunStatus::TimedOut,
                    _ => RunStatus::Failed,
                },
                Changes {
                    error: Some(error.to_jsonrpc(None)),
                    ..Changes::default()
                },
            ),
        };
        let changes = Changes {
            finished_at: Some(now_ms()),
            ..changes
        };
        if let Err(e) = self
            .runs
            .transition(&run_id, &[RunStatus::Running], status, changes)
            .await
        {
            return Err(Failure::with_run(e, run_id));
        }
        outcome.map_err(|e| Failure::with_run(e, run_id))
    }
}

/// The outcome a final (or pending) run stands for.
fn outcome_of(run: &Run) -> Outcome {
    let id = run.id.clone();
    let fail = |error: ExecError| Err(Failure::with_run(error, &id));
    match run.status {
        RunStatus::Succeeded => match &run.result {
            Some(text) => RawValue::from_string(text.clone())
                .map_err(|e| Failure::with_run(ExecError::Internal(e.to_string()), &id)),
            None => fail(ExecError::Conflict(format!(
                "run {id} succeeded, but its result was too large to keep"
            ))),
        },
        RunStatus::AwaitingApproval => fail(ExecError::ApprovalPending {
            run_id: id.clone(),
            expires_at: run.expires_at.unwrap_or_default(),
        }),
        RunStatus::Rejected => fail(ExecError::ApprovalRefused(format!("run {id} was rejected"))),
        RunStatus::Expired => fail(ExecError::ApprovalRefused(format!("run {id} expired before approval"))),
        RunStatus::Running => fail(ExecError::TargetTimeout(format!("run {id} is still running"))),
        _ => {
            let error = run.error.clone().unwrap_or_default();
            fail(ExecError::Target {
                code: error["code"].as_i64().unwrap_or(crate::error::code::INTERNAL_ERROR),
                message: error["message"].as_str().unwrap_or("the run failed").to_owned(),
                data: error.get("data").cloned().map(Box::new),
            })
        }
    }
}

fn subject(caller: &Caller) -> Subject<'_> {
    Subject {
        principal: &caller.principal.id,
        claims: &caller.claims,
        context: caller.context,
    }
}

fn new_run(intent: &Intent, name: &str, decision: &Decision, input: String, input_sha256: String, cap: usize) -> Run {
    let caller = &intent.caller;
    let stored = input.len() <= cap;
    Run {
        id: uuid::Uuid::now_v7().to_string(),
        parent_id: None,
        name: name.to_owned(),
        surface: serde_json::to_value(intent.surface)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        principal: caller.principal.id.clone(),
        chain: caller.chain(),
        context: caller.context,
        claims: match &caller.claims {
            Claims::All => vec!["*".to_owned()],
            Claims::Only(set) => set.iter().cloned().collect(),
        },
        service: intent.capability.service.clone(),
        method: intent.capability.method.clone(),
        input_sha256,
        input: stored.then_some(input),
        input_truncated: !stored,
        idempotency_key: intent.idempotency_key.clone(),
        decision: match decision.verdict {
            Verdict::Allow => "allow",
            Verdict::RequireApproval => "require_approval",
            Verdict::Deny => "deny",
        }
        .to_owned(),
        rule: Some(match &decision.rule {
            Some(rule) => format!(
                "{} #{} (line {}): {}",
                rule.kind, rule.index, rule.line, decision.reason
            ),
            None => decision.reason.clone(),
        }),
        approvers: decision.approvers.clone(),
        status: RunStatus::Running,
        result: None,
        result_truncated: false,
        error: None,
        approver: None,
        decision_note: None,
        created_at: now_ms(),
        started_at: None,
        finished_at: None,
        expires_at: None,
    }
}

/// Headers of a forwarded call, all derived from the intent (never copied from the caller).
fn forward_headers(
    claims: &Claims,
    context: u64,
    user: Option<String>,
    run_id: &str,
    traceparent: Option<&str>,
) -> ForwardHeaders {
    ForwardHeaders {
        context,
        claims: claims.header_value(),
        user,
        run_id: run_id.to_owned(),
        traceparent: child_traceparent(traceparent),
    }
}

/// A W3C `traceparent` for the forwarded call: the caller's trace with a new span id, or a
/// new trace when the caller sent none.
fn child_traceparent(parent: Option<&str>) -> String {
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    match parent.and_then(|p| p.split('-').nth(1).zip(p.split('-').nth(3))) {
        Some((trace_id, flags)) => format!("00-{trace_id}-{span}-{flags}"),
        None => format!("00-{}-{span}-01", uuid::Uuid::new_v4().simple()),
    }
}

/// Whether `value` is a well-formed version-00 `traceparent`.
pub fn valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && parts[1] != "0".repeat(32)
        && hex(parts[2], 16)
        && parts[2] != "0".repeat(16)
        && hex(parts[3], 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_continues_the_callers_trace() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(valid_traceparent(parent));
        let child = child_traceparent(Some(parent));
        assert!(valid_traceparent(&child), "{child}");
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_ne!(child, parent);
        assert!(valid_traceparent(&child_traceparent(None)));
        assert!(!valid_traceparent("00-xyz-00f067aa0ba902b7-01"));
    }
}
