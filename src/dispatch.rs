//! The core dispatcher: the one place every surface sends its calls.
//!
//! [`Dispatcher::call`] takes any JSON-RPC method name: the executor's own methods
//! (reserved namespaces) are answered by [`crate::methods`], everything else is a
//! capability and goes through [`Dispatcher::execute`]: catalog lookup, params
//! validation, then forwarding with headers derived from the intent.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::catalog::{Catalog, Lookup};
use crate::error::ExecError;
use crate::identity::registry::Registry;

use crate::intent::{Caller, CapabilityName, Intent, Outcome, Surface};
use crate::methods;
use crate::upstream::{ForwardHeaders, Upstream};

/// Routes intents to the executor's own methods or to target services.
pub struct Dispatcher {
    catalog: Arc<Catalog>,
    registry: Arc<Registry>,
    upstream: Upstream,
    call_timeout: Duration,
}

impl Dispatcher {
    /// A dispatcher over `catalog`, forwarding through `upstream`.
    pub fn new(catalog: Arc<Catalog>, registry: Arc<Registry>, upstream: Upstream, call_timeout: Duration) -> Self {
        Self {
            catalog,
            registry,
            upstream,
            call_timeout,
        }
    }

    /// The key registry (managed through `keys.*`).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The catalog this dispatcher resolves capabilities in.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
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
        self.execute(intent).await.map_err(|e| match e {
            ExecError::NotFound(what) => ExecError::MethodNotFound(what),
            other => other,
        })
    }

    /// Runs one capability on its target service.
    pub async fn execute(&self, intent: Intent) -> Outcome {
        let CapabilityName { service, method } = &intent.capability;
        let capability = match self.catalog.lookup(service, method).await {
            Lookup::Found(capability) => capability,
            Lookup::UnknownMethod | Lookup::UnknownService => {
                return Err(ExecError::NotFound(format!("no capability {}", intent.capability)));
            }
            Lookup::Unavailable(why) => return Err(ExecError::TargetUnavailable(why)),
        };
        capability.validate(intent.params.as_ref())?;
        let caller = &intent.caller;
        let headers = ForwardHeaders {
            context: caller.context,
            claims: caller.claims.header_value(),
            user: caller.user.clone(),
            run_id: uuid::Uuid::now_v7().to_string(),
            traceparent: child_traceparent(caller.traceparent.as_deref()),
        };
        tracing::debug!(capability = %capability.name, run_id = %headers.run_id, "forwarding");
        self.upstream
            .call(service, method, intent.params.as_ref(), &headers, self.call_timeout)
            .await
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
