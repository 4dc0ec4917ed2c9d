//! Every call, from every surface, as one typed [`Command`] (DESIGN section 3).
//!
//! As mini-redis does with `Command::from_frame` / `apply`: the OpenRPC adapter parses a
//! JSON-RPC method and its params once ([`Command::parse`]); REST and MCP build the same
//! commands from their own requests; [`Command::apply`] runs any of them in one `match`.
//! So a check written once (the reserved namespaces, `executor.admin`, approver claims,
//! all in [`crate::access`]) holds on every surface.
//!
//! The executor's own methods (reserved namespaces) are answered here; a capability goes
//! to [`Dispatcher::execute`] (policy, run, validation, forwarding). Every method is
//! documented in `openrpc.json`; a test checks [`METHODS`] against it.

mod admin;
mod catalog;
mod runs;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;

pub use crate::identity::registry::NewKey;
pub use admin::{Explain, KeyRef, SourceRef};
pub use catalog::{CatalogInterface, CatalogList, CatalogSearch};
pub use runs::{Approve, Reject, RunRef, RunsList, RunsPrune, RunsWait, list_filter};

use crate::access;
use crate::dispatch::Dispatcher;
use crate::error::ExecError;
use crate::intent::{Caller, CapabilityName, Intent, Outcome, Surface};
use crate::jsonrpc::raw;

/// Every method of the executor's own.
pub const METHODS: &[&str] = &[
    "rpc.discover",
    "execute",
    "catalog.list",
    "catalog.search",
    "catalog.describe",
    "catalog.refresh",
    "catalog.openrpc",
    "catalog.interface",
    "script.run",
    "runs.list",
    "runs.get",
    "runs.wait",
    "runs.approve",
    "runs.reject",
    "runs.cancel",
    "runs.prune",
    "policy.get",
    "policy.explain",
    "policy.check",
    "policy.reload",
    "sources.list",
    "sources.accept",
    "sources.reload",
    "keys.list",
    "keys.add",
    "keys.revoke",
];

/// One call to the executor, whatever surface it came in through.
#[derive(Debug)]
pub enum Command {
    /// `rpc.discover`: the executor's own OpenRPC document.
    Discover,
    /// A capability of a target: by method name, `execute`, REST or an MCP tool.
    Execute(Execute),
    CatalogList(CatalogList),
    CatalogSearch(CatalogSearch),
    CatalogDescribe(Describe),
    CatalogRefresh,
    CatalogOpenrpc,
    CatalogInterface(CatalogInterface),
    ScriptRun(crate::script::ScriptRun),
    RunsList(RunsList),
    RunsGet(RunRef),
    RunsWait(RunsWait),
    RunsApprove(Approve),
    RunsReject(Reject),
    RunsCancel(RunRef),
    RunsPrune(RunsPrune),
    PolicyGet,
    PolicyExplain(Explain),
    PolicyCheck,
    PolicyReload,
    SourcesList,
    SourcesAccept(SourceRef),
    SourcesReload,
    KeysList,
    KeysAdd(NewKey),
    KeysRevoke(KeyRef),
}

/// Run a capability (`execute`, or a capability called by its method name).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Execute {
    pub capability: String,
    pub params: Option<Value>,
    pub idempotency_key: Option<String>,
    /// Called by its method name (JSON-RPC): an unknown capability is then an unknown method.
    #[serde(skip)]
    pub by_method: bool,
}

impl Execute {
    /// A capability called by its name, with no idempotency key.
    pub fn new(capability: impl Into<String>, params: Option<Value>) -> Self {
        Self {
            capability: capability.into(),
            params,
            idempotency_key: None,
            by_method: false,
        }
    }
}

/// `catalog.describe`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Describe {
    pub capability: String,
}

/// For methods that take no params.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

impl Command {
    /// Parses a JSON-RPC call. A method outside the reserved namespaces is a capability.
    pub fn parse(method: &str, params: Option<Value>) -> Result<Self, ExecError> {
        let none = |command: Self| parse::<NoParams>(method, params.clone()).map(|_| command);
        Ok(match method {
            "rpc.discover" => Self::Discover,
            "execute" => Self::Execute(parse(method, params)?),
            "catalog.list" => Self::CatalogList(parse(method, params)?),
            "catalog.search" => Self::CatalogSearch(parse(method, params)?),
            "catalog.describe" => Self::CatalogDescribe(parse(method, params)?),
            "catalog.refresh" => none(Self::CatalogRefresh)?,
            "catalog.openrpc" => none(Self::CatalogOpenrpc)?,
            "catalog.interface" => Self::CatalogInterface(parse(method, params)?),
            "script.run" => Self::ScriptRun(parse(method, params)?),
            "runs.list" => Self::RunsList(parse(method, params)?),
            "runs.get" => Self::RunsGet(parse(method, params)?),
            "runs.wait" => Self::RunsWait(parse(method, params)?),
            "runs.approve" => Self::RunsApprove(parse(method, params)?),
            "runs.reject" => Self::RunsReject(parse(method, params)?),
            "runs.cancel" => Self::RunsCancel(parse(method, params)?),
            "runs.prune" => Self::RunsPrune(parse(method, params)?),
            "policy.get" => none(Self::PolicyGet)?,
            "policy.explain" => Self::PolicyExplain(parse(method, params)?),
            "policy.check" => none(Self::PolicyCheck)?,
            "policy.reload" => none(Self::PolicyReload)?,
            "sources.list" => none(Self::SourcesList)?,
            "sources.accept" => Self::SourcesAccept(parse(method, params)?),
            "sources.reload" => none(Self::SourcesReload)?,
            "keys.list" => none(Self::KeysList)?,
            "keys.add" => Self::KeysAdd(parse(method, params)?),
            "keys.revoke" => Self::KeysRevoke(parse(method, params)?),
            reserved if access::is_reserved(reserved) => {
                let shown: String = reserved.chars().take(64).collect();
                return Err(ExecError::MethodNotFound(format!(
                    "the executor has no method {shown:?}"
                )));
            }
            capability => {
                CapabilityName::parse(capability).map_err(ExecError::MethodNotFound)?;
                Self::Execute(Execute {
                    capability: capability.to_owned(),
                    params,
                    idempotency_key: None,
                    by_method: true,
                })
            }
        })
    }

    /// Applies an `Idempotency-Key` header: only a capability call takes one, and a key in
    /// the params must be the same.
    pub fn with_idempotency_key(mut self, key: Option<String>) -> Result<Self, ExecError> {
        let Some(key) = key else { return Ok(self) };
        match &mut self {
            Self::Execute(execute) => match &execute.idempotency_key {
                Some(other) if *other != key => Err(ExecError::InvalidRequest(
                    "the Idempotency-Key header and the idempotency_key param differ".into(),
                )),
                _ => {
                    execute.idempotency_key = Some(key);
                    Ok(self)
                }
            },
            _ => Err(ExecError::InvalidRequest(
                "Idempotency-Key applies only to a capability call".into(),
            )),
        }
    }

    /// Runs the command as `caller`. The one place every call is answered.
    pub async fn apply(self, d: &Dispatcher, caller: &Caller, surface: Surface) -> Outcome {
        let outcome = self.answer(d, caller, surface).await;
        if let Err(failure) = &outcome {
            crate::error::note(&failure.error);
        }
        outcome
    }

    async fn answer(self, d: &Dispatcher, caller: &Caller, surface: Surface) -> Outcome {
        let span = tracing::Span::current();
        span.record("call", tracing::field::display(self.name()));
        if let Self::RunsGet(RunRef { run_id })
        | Self::RunsCancel(RunRef { run_id })
        | Self::RunsWait(RunsWait { run_id, .. })
        | Self::RunsApprove(Approve { run_id, .. })
        | Self::RunsReject(Reject { run_id, .. }) = &self
        {
            span.record("run_id", tracing::field::display(run_id));
        }
        let value = match self {
            Self::Discover => return discover(),
            Self::Execute(execute) => return run(d, caller, surface, execute).await,
            Self::CatalogList(p) => catalog::list(d, caller, p)?,
            Self::CatalogSearch(p) => catalog::search(d, caller, p)?,
            Self::CatalogDescribe(p) => catalog::describe(d, caller, p)?,
            Self::CatalogRefresh => serde_json::to_value(d.catalog().refresh().await).unwrap_or_default(),
            Self::CatalogOpenrpc => catalog::openrpc(d, caller),
            Self::CatalogInterface(p) => catalog::interface(d, caller, p)?,
            Self::ScriptRun(p) => crate::script::run(d, caller, surface, p).await?,
            Self::RunsList(p) => runs::list(d, caller, p).await?,
            Self::RunsGet(p) => access::view(caller, &d.visible_run(caller, &p.run_id).await?),
            Self::RunsWait(p) => runs::wait(d, caller, p).await?,
            Self::RunsApprove(p) => d.approve(caller, &p.run_id, p.note).await?.to_json(),
            Self::RunsReject(p) => d.reject(caller, &p.run_id, p.reason).await?.to_json(),
            Self::RunsCancel(p) => d.cancel(caller, &p.run_id).await?.to_json(),
            Self::RunsPrune(p) => runs::prune(d, caller, p).await?,
            Self::PolicyGet => admin::policy_get(d, caller)?,
            Self::PolicyExplain(p) => admin::explain(d, caller, p)?,
            Self::PolicyCheck => admin::policy_check(d, caller)?,
            Self::PolicyReload => admin::policy_reload(d, caller)?,
            Self::SourcesList => admin::sources_list(d, caller).await?,
            Self::SourcesAccept(p) => admin::sources_accept(d, caller, p).await?,
            Self::SourcesReload => admin::sources_reload(d, caller).await?,
            Self::KeysList => admin::keys_list(d, caller)?,
            Self::KeysAdd(p) => admin::keys_add(d, caller, p).await?,
            Self::KeysRevoke(p) => admin::keys_revoke(d, caller, p).await?,
        };
        Ok(raw(&value))
    }
}

impl Command {
    /// The method or capability, for the request's log line.
    fn name(&self) -> &str {
        match self {
            Self::Discover => "rpc.discover",
            Self::Execute(e) => &e.capability,
            Self::CatalogList(_) => "catalog.list",
            Self::CatalogSearch(_) => "catalog.search",
            Self::CatalogDescribe(_) => "catalog.describe",
            Self::CatalogRefresh => "catalog.refresh",
            Self::CatalogOpenrpc => "catalog.openrpc",
            Self::CatalogInterface(_) => "catalog.interface",
            Self::ScriptRun(_) => "script.run",
            Self::RunsList(_) => "runs.list",
            Self::RunsGet(_) => "runs.get",
            Self::RunsWait(_) => "runs.wait",
            Self::RunsApprove(_) => "runs.approve",
            Self::RunsReject(_) => "runs.reject",
            Self::RunsCancel(_) => "runs.cancel",
            Self::RunsPrune(_) => "runs.prune",
            Self::PolicyGet => "policy.get",
            Self::PolicyExplain(_) => "policy.explain",
            Self::PolicyCheck => "policy.check",
            Self::PolicyReload => "policy.reload",
            Self::SourcesList => "sources.list",
            Self::SourcesAccept(_) => "sources.accept",
            Self::SourcesReload => "sources.reload",
            Self::KeysList => "keys.list",
            Self::KeysAdd(_) => "keys.add",
            Self::KeysRevoke(_) => "keys.revoke",
        }
    }
}

/// `rpc.discover`: the embedded `openrpc.json` as the result, byte for byte.
pub fn discover() -> Outcome {
    RawValue::from_string(crate::OPENRPC_JSON.trim().to_owned())
        .map_err(|e| ExecError::Internal(format!("embedded openrpc.json is not JSON: {e}")).into())
}

/// A capability call: never one of the executor's own names, whichever surface built it.
async fn run(d: &Dispatcher, caller: &Caller, surface: Surface, e: Execute) -> Outcome {
    run_within(d, caller, surface, e, None).await
}

/// `execute`; `within` names the run this call is part of and the id its own run gets (a
/// script's call).
pub(crate) async fn run_within(
    d: &Dispatcher,
    caller: &Caller,
    surface: Surface,
    e: Execute,
    within: Option<(String, String)>,
) -> Outcome {
    let invalid = |message: String| match e.by_method {
        true => ExecError::MethodNotFound(message),
        false => ExecError::invalid_params(message),
    };
    if access::is_reserved(&e.capability) {
        return Err(invalid(format!(
            "{} is one of the executor's own methods: call it directly",
            e.capability
        ))
        .into());
    }
    let capability = CapabilityName::parse(&e.capability).map_err(invalid)?;
    let intent = Intent {
        caller: caller.clone(),
        capability,
        params: e.params.filter(|p| !p.is_null()),
        surface,
        idempotency_key: e.idempotency_key,
        parent_id: within.as_ref().map(|(parent, _)| parent.clone()),
        run_id: within.map(|(_, run)| run),
    };
    let outcome = d.execute(intent).await;
    if !e.by_method {
        return outcome;
    }
    // Called directly as a method, an unknown capability is an unknown method.
    outcome.map_err(|mut f| {
        if let ExecError::NotFound(what) = f.error {
            f.error = ExecError::MethodNotFound(what);
        }
        f
    })
}

/// Reads by-name params into `T`; absent params are an empty object.
fn parse<T: DeserializeOwned>(method: &str, params: Option<Value>) -> Result<T, ExecError> {
    let params = match params {
        None => Value::Object(Default::default()),
        Some(obj @ Value::Object(_)) => obj,
        Some(_) => {
            return Err(ExecError::invalid_params(format!(
                "{method} takes its params by name (an object)"
            )));
        }
    };
    serde_json::from_value(params).map_err(|e| ExecError::invalid_params(format!("{method}: {e}")))
}
