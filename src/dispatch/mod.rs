//! The core dispatcher: the one place a capability call goes, from every surface.
//!
//! [`Dispatcher::execute`] (in `execute`): catalog lookup, a [`Decision`] by policy, a Run
//! record, params validation, then forwarding (`forward`). Forwarding needs the [`Permit`]
//! of an allow, which only policy mints (at call time, and again at approval time in
//! `approvals`), so a call cannot reach a target without a decision that allowed it.
//! What each caller may see of the catalog is cached in `visibility`.
//!
//! [`Permit`]: crate::policy::Permit

mod approvals;
mod execute;
mod forward;
mod record;
mod visibility;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;

use crate::catalog::{Capability, Catalog, HeroIntent, Snapshot};
use crate::error::ExecError;
use crate::identity::registry::Registry;
use crate::intent::{Caller, Principal};
use crate::metrics::Metrics;
use crate::policy::{Decision, Explanation, Policy, Subject};
use crate::runs::RunStatus;
use crate::runs::store::RunStore;
use crate::telemetry::{Telemetry, Traced};
use crate::upstream::Upstream;
pub(crate) use execute::MAX_IDEMPOTENCY_KEY;
use forward::Forwarder;
pub use forward::valid_traceparent;
pub(crate) use record::{Input, new_run};

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
    /// The trusted local peer (`uid:<n>`), while unsigned local calls are trusted: an
    /// approval checks that the principal of a held run is still trusted.
    pub local_owner: Option<Principal>,
}

/// Routes intents, under policy, to target services.
pub struct Dispatcher {
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    /// The policy in force, and what it lets each subject see (replaced together).
    policy: RwLock<(Arc<Policy>, Arc<VisibilityCache>)>,
    policy_path: Option<PathBuf>,
    forwarder: Forwarder,
    running: approvals::Running,
    /// Validations of large params run on blocking threads, this many at once.
    validations: Arc<tokio::sync::Semaphore>,
    config: CoreConfig,
    /// Sources beyond hero_* (`--sources`), when declared.
    sources: Option<crate::sources::Sources>,
    /// What a script may cost, and the scripts that may run at once.
    script_limits: crate::script::ScriptLimits,
    script_slots: Arc<tokio::sync::Semaphore>,
    /// The per-principal rate limiter of the surfaces: a script's calls count against it.
    rate_limiter: Option<Arc<crate::limits::RateLimiter>>,
}

/// Params larger than this (as JSON text) are validated on a blocking thread.
const VALIDATE_INLINE_BYTES: usize = 16 * 1024;

/// Large validations at once; more wait their turn.
const MAX_BLOCKING_VALIDATIONS: usize = 2;

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
        let metrics = Arc::new(Metrics::new());
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
                metrics: metrics.clone(),
                telemetry: None,
            },
            metrics,
            running: Default::default(),
            validations: Arc::new(tokio::sync::Semaphore::new(MAX_BLOCKING_VALIDATIONS)),
            config,
            sources: None,
            script_limits: Default::default(),
            script_slots: Arc::new(tokio::sync::Semaphore::new(
                crate::script::ScriptLimits::default().max_concurrent,
            )),
            rate_limiter: None,
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

    /// Counts into `metrics` (the ones `GET /metrics` renders) instead of its own.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.forwarder.metrics = metrics.clone();
        self.metrics = metrics;
        self
    }

    /// Traces calls over OTLP (`--otlp-endpoint`).
    pub fn with_telemetry(mut self, telemetry: Option<Arc<Telemetry>>) -> Self {
        self.forwarder.telemetry = telemetry;
        self
    }

    /// Serves the capabilities of `sources` (`--sources`).
    pub fn with_sources(mut self, sources: crate::sources::Sources) -> Self {
        self.sources = Some(sources);
        self
    }

    /// Bounds scripts (`script.run`) by `limits`.
    pub fn with_script_limits(mut self, limits: crate::script::ScriptLimits) -> Self {
        self.script_slots = Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent.max(1)));
        self.script_limits = limits;
        self
    }

    /// Counts calls made by scripts against `limiter` (the surfaces' per-principal one).
    pub fn with_rate_limiter(mut self, limiter: Arc<crate::limits::RateLimiter>) -> Self {
        self.rate_limiter = Some(limiter);
        self
    }

    /// Takes one call of `principal`'s rate (a call a script makes), or says when to retry.
    pub fn rate_limit(&self, principal: &str) -> Result<(), ExecError> {
        match &self.rate_limiter {
            Some(limiter) => limiter
                .check(principal, 1)
                .map_err(|retry_after_s| ExecError::RateLimited { retry_after_s }),
            None => Ok(()),
        }
    }

    /// What a script may cost.
    pub fn script_limits(&self) -> crate::script::ScriptLimits {
        self.script_limits
    }

    /// Turns of the scripts running at once.
    pub fn script_slots(&self) -> Arc<tokio::sync::Semaphore> {
        self.script_slots.clone()
    }

    /// Params and results larger than this are not stored on a run.
    pub fn payload_cap(&self) -> usize {
        self.config.payload_cap
    }

    /// The sources beyond hero_*, when a sources file is in use.
    pub fn sources(&self) -> Option<&crate::sources::Sources> {
        self.sources.as_ref()
    }

    /// The metrics calls are counted in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Counts a call of `name` that ended as `status` (or was held): under its name if the
    /// catalog has it, else as `unknown`.
    fn count(&self, name: &str, status: RunStatus) {
        let label = crate::metrics::capability_label(&self.catalog.snapshot(), name);
        self.metrics.call(label, status);
    }

    /// A call that ended (or was held) before forwarding: counted, and its span ended.
    fn ended(&self, name: &str, status: RunStatus, error: Option<&ExecError>, span: Option<Traced>) {
        self.count(name, status);
        if let Some(span) = span {
            span.end_call(status, error);
        }
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

    /// Whether `principal` is the trusted local owner (while unsigned local calls are trusted).
    pub fn is_local_owner(&self, principal: &str) -> bool {
        self.config
            .local_owner
            .as_ref()
            .is_some_and(|owner| owner.id == principal)
    }

    /// How policy decides `capability` for `caller`.
    pub fn decide(&self, caller: &Caller, capability: &str, intent: &HeroIntent) -> Decision {
        self.policy().decide(subject(caller), capability, intent)
    }

    /// Why policy decides `capability` for `caller` as it does.
    pub fn explain(&self, caller: &Caller, capability: &str, intent: &HeroIntent) -> Explanation {
        self.policy().explain(subject(caller), capability, intent)
    }

    /// Checks params against the capability's schema. Small params are checked here (the
    /// `regex` engine makes every check linear); large ones on a blocking thread, a few at a
    /// time, so a large body never holds an async worker that other callers need.
    pub async fn validate(
        &self,
        capability: &Arc<Capability>,
        params: Option<&Value>,
        size: usize,
    ) -> Result<(), ExecError> {
        if size <= VALIDATE_INLINE_BYTES {
            return capability.validate(params);
        }
        // The turn goes with the work: a caller that hangs up does not free it early.
        let turn = self
            .validations
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ExecError::Internal("validation pool closed".into()))?;
        let (capability, params) = (capability.clone(), params.cloned());
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            capability.validate(params.as_ref())
        })
        .await
        .map_err(|e| ExecError::Internal(format!("validation task failed: {e}")))?
    }

    /// Every capability of `snapshot` that `caller` may see, decided once per subject,
    /// catalog generation and policy.
    pub fn visible(&self, caller: &Caller, snapshot: &Snapshot) -> Arc<Visible> {
        let (policy, cache) = self.policy.read().unwrap_or_else(|p| p.into_inner()).clone();
        cache.get(&policy, caller, snapshot)
    }
}

/// The caller as policy sees it.
fn subject(caller: &Caller) -> Subject<'_> {
    Subject {
        principal: &caller.principal.id,
        claims: &caller.claims,
        ceiling: &caller.principal.ceiling,
        context: caller.context,
    }
}
