//! Agent scripts (DESIGN section 13): `script.run` runs a Rhai script as its caller, in a
//! sandbox (`sandbox`), and every capability it calls goes through the dispatcher like any
//! other call: policy, validation, runs, idempotency, rate limits, with the caller's
//! principal, context and claims, as a child run of the script's own run. A script cannot
//! set hero headers: it names a capability and params, nothing else.
//! `catalog.interface` (`interface`) is what a model reads to write one.

pub mod interface;
mod sandbox;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::dispatch::Dispatcher;
use crate::error::ExecError;
use crate::intent::{Caller, CapabilityName, Intent, Surface};
use crate::runs::{Run, RunStatus, now_ms};
use sandbox::CallRequest;

/// What one script may cost; every field has a safe default.
#[derive(Debug, Clone, Copy)]
pub struct ScriptLimits {
    pub max_source_bytes: usize,
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_string_bytes: usize,
    pub max_array_len: usize,
    pub max_map_len: usize,
    /// Capability calls per script.
    pub max_calls: usize,
    /// Wall time when the caller names none, and the most it may name.
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    /// Captured `print`/`debug` output.
    pub max_output_bytes: usize,
    /// Scripts running at once; more wait their turn (each holds a blocking thread).
    pub max_concurrent: usize,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        Self {
            max_source_bytes: 256 * 1024,
            max_operations: 1_000_000,
            max_call_levels: 32,
            max_string_bytes: 1024 * 1024,
            max_array_len: 10_000,
            max_map_len: 10_000,
            max_calls: 100,
            default_timeout: Duration::from_secs(10),
            max_timeout: Duration::from_secs(60),
            max_output_bytes: 64 * 1024,
            max_concurrent: 4,
        }
    }
}

/// `script.run`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptRun {
    /// The Rhai source.
    pub source: String,
    /// Bound to `args` in the script.
    pub args: Option<Value>,
    pub timeout_ms: Option<u64>,
    /// Each call the script makes gets `<key>/<n>` (its n-th call): run again with the
    /// same key, calls already made are answered from their runs (a held one, once
    /// approved, with its outcome) instead of running twice.
    pub idempotency_key: Option<String>,
}

/// Runs a script as `caller`; the answer is its value, output, calls and totals.
pub async fn run(d: &Dispatcher, caller: &Caller, surface: Surface, request: ScriptRun) -> Result<Value, ExecError> {
    let limits = d.script_limits();
    if request.source.len() > limits.max_source_bytes {
        return Err(ExecError::invalid_params(format!(
            "script.run: the source is {} bytes; at most {}",
            request.source.len(),
            limits.max_source_bytes
        )));
    }
    // Each call's key is `<key>/<n>`: room for the suffix within a call's own bound.
    let max_key = crate::dispatch::MAX_IDEMPOTENCY_KEY - 8;
    if let Some(key) = &request.idempotency_key
        && (key.is_empty() || key.len() > max_key)
    {
        return Err(ExecError::invalid_params(format!(
            "idempotency_key is 1-{max_key} bytes"
        )));
    }
    if request.timeout_ms == Some(0) {
        return Err(ExecError::invalid_params("timeout_ms is at least 1"));
    }
    let timeout = request
        .timeout_ms
        .map_or(limits.default_timeout, Duration::from_millis)
        .min(limits.max_timeout);
    let args = request.args.clone().unwrap_or(Value::Null);
    // The services and methods the caller may see become `svc::method(...)` functions.
    let snapshot = d.catalog().snapshot();
    let visible = d.visible(caller, &snapshot);
    let mut services: std::collections::BTreeMap<String, Vec<(String, String)>> = Default::default();
    for cap in snapshot.capabilities().filter(|c| visible.contains(c)) {
        services
            .entry(cap.service.clone())
            .or_default()
            .push((interface::function_name(&cap.method), cap.name.clone()));
    }
    // A turn among the scripts running at once, within the script's own time. It is held
    // by the script's thread, so a caller that goes away does not free it early.
    let started = Instant::now();
    let deadline = started + timeout;
    let turn = tokio::time::timeout(timeout, d.script_slots().acquire_owned())
        .await
        .map_err(|_| {
            ExecError::TooMany(format!(
                "{} scripts are running; none finished in time",
                limits.max_concurrent
            ))
        })?
        .map_err(|_| ExecError::Internal("script limiter closed".into()))?;
    // The source is kept whole (it is bounded); the args as any params are.
    let parent = script_run(caller, surface, &request, limits.max_source_bytes + d.payload_cap());
    let parent_id = parent.id.clone();
    d.runs().insert(parent).await?;
    let cancelled = Arc::new(AtomicBool::new(false));
    // A caller that goes away stops its script.
    struct Cancel(Arc<AtomicBool>);
    impl Drop for Cancel {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _cancel = Cancel(cancelled.clone());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<CallRequest>(1);
    let source = request.source.clone();
    let flag = cancelled.clone();
    let services: Vec<(String, Vec<(String, String)>)> = services.into_iter().collect();
    let mut sandbox = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        sandbox::execute(&source, args, &limits, deadline, flag, tx, services)
    });
    let mut calls = Vec::new();
    let ended = loop {
        tokio::select! {
            Some(call) = rx.recv() => {
                let run_id = uuid::Uuid::now_v7().to_string();
                calls.push((call.capability.clone(), run_id.clone()));
                let outcome = child(d, caller, surface, &parent_id, &run_id, &call, request.idempotency_key.as_deref()).await;
                // The run that answered (a replay is a run of its own; its id is the one made).
                let answered_by = outcome.as_ref().err().and_then(|f| f.run_id.clone()).unwrap_or(run_id);
                if let Some(last) = calls.last_mut() {
                    last.1 = answered_by.clone();
                }
                let _ = call.reply.send((answered_by, outcome));
            }
            joined = &mut sandbox => break joined.map_err(|e| ExecError::Internal(format!("script task failed: {e}")))?,
            _ = tokio::time::sleep_until((deadline + Duration::from_millis(100)).into()), if !cancelled.load(Ordering::Relaxed) => {
                cancelled.store(true, Ordering::Relaxed);
            }
        }
    };
    let wall_ms = started.elapsed().as_millis() as u64;
    let mut children = Vec::new();
    for (capability, run_id) in &calls {
        let status = d.runs().get(run_id).await.ok().flatten().map(|r| r.status);
        let status = status.map_or("unknown", |s| s.as_str());
        children.push(json!({"capability": capability, "run_id": run_id, "status": status}));
    }
    let (status, error) = match (&ended.held, &ended.value) {
        (Some(_), _) => (RunStatus::AwaitingApproval, None),
        (None, Ok(_)) => (RunStatus::Succeeded, None),
        (None, Err(why)) if ended.limited => (
            RunStatus::Failed,
            Some(json!({"code": crate::error::code::INVALID_PARAMS, "message": why, "limit": true})),
        ),
        (None, Err(why)) => (
            RunStatus::Failed,
            Some(json!({"code": crate::error::code::INVALID_PARAMS, "message": why})),
        ),
    };
    let answer = json!({
        "run_id": parent_id,
        "status": status.as_str(),
        "value": ended.value.as_ref().ok(),
        "error": &error,
        "held_run_id": ended.held,
        "output": ended.output,
        "output_truncated": ended.output_truncated,
        "calls": children,
        "totals": {"calls": calls.len(), "wall_ms": wall_ms, "operations": ended.operations},
    });
    // The script's run ends with what it answered (a held script is over: run it again).
    let final_status = match status {
        RunStatus::AwaitingApproval => RunStatus::Succeeded,
        other => other,
    };
    let text = answer.to_string();
    let stored = text.len() <= d.payload_cap();
    let changes = crate::runs::store::Changes {
        finished_at: Some(now_ms()),
        result: stored.then_some(text),
        result_truncated: !stored,
        error,
        ..Default::default()
    };
    d.runs().finish(&parent_id, final_status, changes)?;
    Ok(answer)
}

/// One call the script made, as a child run of the script's.
async fn child(
    d: &Dispatcher,
    caller: &Caller,
    surface: Surface,
    parent_id: &str,
    run_id: &str,
    call: &CallRequest,
    key: Option<&str>,
) -> crate::intent::Outcome {
    // Each call counts against the caller's rate, as if it came in on its own.
    d.rate_limit(&caller.principal.id)?;
    let call = crate::command::Execute {
        capability: call.capability.clone(),
        params: call.params.clone(),
        idempotency_key: key.map(|k| format!("{k}/{}", call.index)),
        by_method: false,
    };
    let within = Some((parent_id.to_owned(), run_id.to_owned()));
    crate::command::run_within(d, caller, surface, call, within).await
}

/// The script's own run: `script.run`, decided allow (each call it makes is decided).
fn script_run(caller: &Caller, surface: Surface, request: &ScriptRun, cap: usize) -> Run {
    let intent = Intent {
        caller: caller.clone(),
        capability: CapabilityName {
            service: "script".to_owned(),
            method: "run".to_owned(),
        },
        params: None,
        surface,
        // The key is its calls' (`<key>/<n>`); a script may run again under it, so its
        // own run does not bind it.
        idempotency_key: None,
        parent_id: None,
        run_id: None,
    };
    let allowed = crate::policy::Explanation {
        verdict: crate::policy::Verdict::Allow,
        reason: "scripts run as their caller; each call they make is decided".to_owned(),
        rule: None,
        approvers: Vec::new(),
        matched: Vec::new(),
    };
    let input = json!({"source": request.source, "args": request.args, "idempotency_key": request.idempotency_key});
    let mut run = crate::dispatch::new_run(&intent, &allowed, crate::dispatch::Input::of(Some(&input)), cap);
    run.started_at = Some(run.created_at);
    run
}
