//! Forwarding a permitted call to its target, and recording how it ended.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::catalog::Capability;
use crate::error::{ExecError, Failure};
use crate::intent::{Caller, Claims, Outcome};
use crate::metrics::Metrics;
use crate::policy::Permit;
use crate::runs::store::{Changes, RunStore};
use crate::runs::{Run, RunStatus, now_ms};
use crate::telemetry::{Telemetry, Traced};
use crate::upstream::{ForwardHeaders, Upstream};

/// What forwarding needs; cheap to clone into a task that runs an approved call.
#[derive(Clone)]
pub(super) struct Forwarder {
    pub upstream: Upstream,
    pub runs: Arc<RunStore>,
    pub call_timeout: Duration,
    pub payload_cap: usize,
    pub metrics: Arc<Metrics>,
    /// Spans over OTLP, when `--otlp-endpoint` is set.
    pub telemetry: Option<Arc<Telemetry>>,
}

/// One call to forward: the run it is recorded as, the capability, and the headers.
pub(super) struct Call {
    pub run_id: String,
    pub capability: Arc<Capability>,
    pub headers: ForwardHeaders,
    /// The call's span (with `--otlp-endpoint`): ended with the call; the forwarded call's
    /// own span is its child, and the target is sent that span as `traceparent`.
    pub span: Option<Traced>,
}

impl Forwarder {
    /// Forwards a call that `permit` allows, and records how it ended. The run must be on
    /// disk, `running`, before this is called.
    pub async fn forward(&self, permit: Permit, call: Call, params: Option<&Value>) -> Outcome {
        let Call {
            run_id,
            capability,
            mut headers,
            span,
        } = call;
        let started = std::time::Instant::now();
        let outcome = if permit.capability() == capability.name {
            tracing::debug!(capability = %capability.name, %run_id, "forwarding");
            let upstream = match (&self.telemetry, &span) {
                (Some(telemetry), Some(call)) => {
                    let upstream = telemetry.upstream(call, &capability.service, &capability.method, &run_id);
                    headers.traceparent = upstream.traceparent();
                    Some(upstream)
                }
                _ => None,
            };
            let timeout = capability.timeout.unwrap_or(self.call_timeout);
            let outcome = match &capability.route {
                Some(route) => {
                    // A source's calls in flight are bounded as a hero service's are.
                    let started = std::time::Instant::now();
                    match self.upstream.slot(&capability.service, timeout).await {
                        Ok(_slot) => {
                            let remaining = timeout.saturating_sub(started.elapsed());
                            route.call(params, &headers.traceparent, remaining).await
                        }
                        Err(error) => Err(error),
                    }
                }
                None => {
                    let (service, method) = (&capability.service, &capability.method);
                    self.upstream.call(service, method, params, &headers, timeout).await
                }
            };
            if let Some(upstream) = upstream {
                upstream.end_upstream(outcome.as_ref().err());
            }
            outcome
        } else {
            let (allowed, asked) = (permit.capability(), &capability.name);
            Err(ExecError::Internal(format!(
                "a permit for {allowed} presented for {asked}"
            )))
        };
        // The target's time, not the record's.
        let seconds = started.elapsed().as_secs_f64();
        let status = self
            .record_end(&run_id, outcome.as_deref())
            .map_err(|e| Failure::with_run(e, &run_id))?;
        // The capability came from the catalog: its name is a label value it allows.
        self.metrics
            .forwarded(&capability.name, seconds, outcome.as_ref().err());
        self.metrics.call(capability.name.clone(), status);
        if let Some(span) = span {
            span.end_call(status, outcome.as_ref().err());
        }
        outcome.map_err(|e| Failure::with_run(e, run_id))
    }

    /// Records how a running run ended: its result (up to the storage cap) or its error.
    fn record_end(&self, run_id: &str, outcome: Result<&RawValue, &ExecError>) -> Result<RunStatus, ExecError> {
        let mut changes = Changes {
            finished_at: Some(now_ms()),
            ..Changes::default()
        };
        let status = match outcome {
            Ok(result) => {
                let stored = result.get().len() <= self.payload_cap;
                changes.result = stored.then(|| result.get().to_owned());
                changes.result_truncated = !stored;
                RunStatus::Succeeded
            }
            Err(error) => {
                changes.error = Some(error.to_jsonrpc(None));
                match error {
                    ExecError::TargetTimeout(_) => RunStatus::TimedOut,
                    _ => RunStatus::Failed,
                }
            }
        };
        self.runs.finish(run_id, status, changes)?;
        Ok(status)
    }
}

/// Headers of a forwarded call, all derived from the caller (never copied from its request).
/// `traceparent` is what the target is sent (empty: the forwarded span's, set later).
pub(super) fn forward_headers(
    claims: &Claims,
    context: u64,
    user: Option<String>,
    run_id: &str,
    traceparent: String,
) -> ForwardHeaders {
    ForwardHeaders {
        context,
        claims: claims.header_value(),
        user,
        run_id: run_id.to_owned(),
        traceparent,
    }
}

/// The headers of `caller`'s call recorded as `run_id`. A traced call's `traceparent` is
/// its forwarded span's, set by [`Forwarder::forward`].
pub(super) fn caller_headers(caller: &Caller, run_id: &str, traced: bool) -> ForwardHeaders {
    let traceparent = match traced {
        true => String::new(),
        false => child_traceparent(caller.traceparent.as_deref()),
    };
    forward_headers(&caller.claims, caller.context, caller.user.clone(), run_id, traceparent)
}

/// The outcome a final (or pending) run stands for.
pub(super) fn outcome_of(run: &Run) -> Outcome {
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

/// A W3C `traceparent` for the forwarded call: the caller's trace with a new span id, or a
/// new trace when the caller sent none.
pub(super) fn child_traceparent(parent: Option<&str>) -> String {
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
