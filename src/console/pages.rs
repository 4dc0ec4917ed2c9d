//! The console's pages (`GET`). Each reads through [`Command`]s as the viewer, so a page
//! shows exactly what the same caller would get over OpenRPC.

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::response::{Redirect, Response};
use http::StatusCode;
use http::request::Parts;
use minijinja::{Value, context};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::access;
use crate::command::{CatalogList, Command, Describe, Explain, RunsList};
use crate::error::ExecError;
use crate::intent::{Caller, Surface};
use crate::runs::{RunStatus, now_ms};

/// Who is looking: the caller the layers made (the peer, narrowed, acting for its human).
pub struct Viewer(pub Caller);

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match parts.extensions.get::<Caller>() {
            Some(caller) => Ok(Self(caller.clone())),
            None => Err(state.views.refusal(
                StatusCode::UNAUTHORIZED,
                "Refused",
                "the console needs an identity",
                "/runs",
            )),
        }
    }
}

/// A page: the layout's context (who, the token, the inbox count) and the page's own.
pub(super) async fn page(state: &AppState, caller: &Caller, name: &str, nav: &str, own: Value) -> Response {
    let inbox = inbox_count(state, caller).await;
    let base = context! {
        nav,
        viewer => access::actor(caller),
        claims => caller.claims.to_string(),
        context => caller.context,
        admin => access::is_admin(caller),
        csrf => state.csrf.token(caller),
        inbox,
        statuses => RunStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    };
    state.views.render(name, context! { ..base, ..own })
}

/// A page answering with an error status (a refused form, a missing run).
pub(super) async fn page_with(
    status: StatusCode,
    state: &AppState,
    caller: &Caller,
    name: &str,
    nav: &str,
    own: Value,
) -> Response {
    let mut response = page(state, caller, name, nav, own).await;
    *response.status_mut() = status;
    response
}

/// Applies a read as the viewer; the JSON result, or the error.
pub(super) async fn read(state: &AppState, caller: &Caller, command: Command) -> Result<serde_json::Value, ExecError> {
    let raw = command
        .apply(&state.dispatcher, caller, Surface::Console)
        .await
        .map_err(|f| f.error)?;
    serde_json::from_str(raw.get()).map_err(|e| ExecError::Internal(format!("{e}")))
}

async fn inbox_count(state: &AppState, caller: &Caller) -> u64 {
    let Ok(filter) = crate::command::list_filter(caller, &inbox_query()) else {
        return 0;
    };
    let counts = state.dispatcher.runs().counts(filter).await.unwrap_or_default();
    counts.iter().map(|(_, n)| n).sum()
}

fn inbox_query() -> RunsList {
    RunsList {
        inbox: Some(true),
        limit: Some(200),
        ..RunsList::default()
    }
}

/// A form field: trimmed, and `None` when empty.
fn some(field: &str) -> Option<String> {
    Some(field.trim().to_owned()).filter(|f| !f.is_empty())
}

pub async fn home() -> Redirect {
    Redirect::to("/runs")
}

/// The filters of the runs page, as the form sends them.
#[derive(Debug, Default, Deserialize)]
pub struct RunsQuery {
    #[serde(default)]
    status: String,
    #[serde(default)]
    capability: String,
    #[serde(default)]
    principal: String,
    /// `1h`, `24h`, `7d`, `30d` or empty (any time).
    #[serde(default)]
    since: String,
    #[serde(default)]
    hide_denied: String,
    #[serde(default)]
    cursor: String,
    pruned: Option<u64>,
}

const PERIODS: &[(&str, i64)] = &[
    ("1h", 3_600_000),
    ("24h", 86_400_000),
    ("7d", 7 * 86_400_000),
    ("30d", 30 * 86_400_000),
];

impl RunsQuery {
    fn to_list(&self) -> Result<RunsList, ExecError> {
        let since = match self.since.as_str() {
            "" => None,
            period => Some(
                PERIODS
                    .iter()
                    .find(|(name, _)| *name == period)
                    .map(|(_, ms)| now_ms() - ms)
                    .ok_or_else(|| {
                        ExecError::invalid_params(format!("unknown period {period:?}: use 1h, 24h, 7d or 30d"))
                    })?,
            ),
        };
        Ok(RunsList {
            status: some(&self.status),
            capability: some(&self.capability),
            principal: some(&self.principal),
            since,
            limit: Some(50),
            cursor: some(&self.cursor),
            inbox: None,
            hide: (!self.hide_denied.is_empty()).then(|| vec!["denied".to_owned()]),
        })
    }
}

/// Runs: newest first, filtered, counted per status, paged.
pub async fn runs(
    State(state): State<AppState>,
    Viewer(caller): Viewer,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let listed = async {
        let list = query.to_list()?;
        let counts = state
            .dispatcher
            .runs()
            .counts(crate::command::list_filter(&caller, &list)?)
            .await?;
        let listed = read(&state, &caller, Command::RunsList(list)).await?;
        Ok::<_, ExecError>((listed, counts))
    }
    .await;
    let filters = context! {
        status => query.status, capability => query.capability, principal => query.principal,
        since => query.since, hide_denied => !query.hide_denied.is_empty(),
    };
    let (runs, next, counts, error) = match listed {
        Ok((listed, counts)) => {
            let counts: Vec<_> = counts
                .iter()
                .map(|(s, n)| json!({"status": s.as_str(), "count": n}))
                .collect();
            (listed["runs"].clone(), listed["next_cursor"].clone(), counts, None)
        }
        Err(e) => (json!([]), json!(null), Vec::new(), Some(e.public_message())),
    };
    let own = context! {
        title => "Runs", runs => Value::from_serialize(&runs), next_cursor => Value::from_serialize(&next),
        counts => Value::from_serialize(&counts), filters, error, pruned => query.pruned,
        total => counts.iter().map(|c| c["count"].as_u64().unwrap_or(0)).sum::<u64>(),
        periods => PERIODS.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
    };
    page(&state, &caller, "runs.html", "runs", own).await
}

/// A run: everything its record holds, and the actions the viewer may take.
pub async fn run(State(state): State<AppState>, Viewer(caller): Viewer, Path(id): Path<String>) -> Response {
    run_page(&state, &caller, &id, None).await
}

/// The run page, with an error from a refused action above it.
pub(super) async fn run_page(state: &AppState, caller: &Caller, id: &str, error: Option<ExecError>) -> Response {
    let run = match state.dispatcher.visible_run(caller, id).await {
        Ok(run) => run,
        Err(f) => {
            let own = context! { title => "Run not found", missing => id, error => f.error.public_message() };
            return page_with(f.error.http_status(), state, caller, "run.html", "runs", own).await;
        }
    };
    let may_decide = run.status == RunStatus::AwaitingApproval && access::may_decide(caller, &run).is_ok();
    let may_cancel =
        matches!(run.status, RunStatus::AwaitingApproval | RunStatus::Running) && access::may_cancel(caller, &run);
    let status = error.as_ref().map_or(StatusCode::OK, ExecError::http_status);
    let own = context! {
        title => format!("Run {}", run.name),
        run => Value::from_serialize(access::view(caller, &run)),
        intent => intent_of(state, &run.name),
        may_decide, may_cancel,
        own => access::is_own(caller, &run),
        error => error.map(|e| e.public_message()),
    };
    page_with(status, state, caller, "run.html", "runs", own).await
}

/// A capability's `x-hero-intent` as the catalog has it now, if it is there.
fn intent_of(state: &AppState, name: &str) -> Value {
    let snapshot = state.dispatcher.catalog().snapshot();
    let (service, method) = name.split_once('.').unwrap_or_default();
    snapshot
        .services
        .get(service)
        .and_then(|s| s.capabilities.get(method))
        .map_or(Value::UNDEFINED, |c| Value::from_serialize(c.intent))
}

/// Approvals: the runs the viewer may decide, with what each will do.
pub async fn approvals(State(state): State<AppState>, Viewer(caller): Viewer) -> Response {
    let (runs, error) = match read(&state, &caller, Command::RunsList(inbox_query())).await {
        Ok(listed) => (listed["runs"].as_array().cloned().unwrap_or_default(), None),
        Err(e) => (Vec::new(), Some(e.public_message())),
    };
    let runs: Vec<_> = runs
        .into_iter()
        .map(|mut run| {
            let name = run["name"].as_str().unwrap_or_default().to_owned();
            run["intent"] = serde_json::to_value(intent_of(&state, &name)).unwrap_or_default();
            run
        })
        .collect();
    let own = context! { title => "Approvals", runs => Value::from_serialize(&runs), error };
    page(&state, &caller, "approvals.html", "approvals", own).await
}

/// Catalog: services with their health, capabilities with intent badges.
pub async fn catalog(State(state): State<AppState>, Viewer(caller): Viewer) -> Response {
    let listed = read(&state, &caller, Command::CatalogList(CatalogList::default())).await;
    let snapshot = state.dispatcher.catalog().snapshot();
    let (services, capabilities, unavailable, error) = match listed {
        Ok(mut listed) => {
            let mut services = listed["services"].as_array().cloned().unwrap_or_default();
            for service in &mut services {
                let name = service["name"].as_str().unwrap_or_default();
                if let Some(spec) = snapshot.services.get(name) {
                    service["title"] = spec.document["info"]["title"].clone();
                    service["description"] = spec.document["info"]["description"].clone();
                    service["version"] = spec.document["info"]["version"].clone();
                }
            }
            (
                services,
                listed["capabilities"].take(),
                listed["unavailable"].take(),
                None,
            )
        }
        Err(e) => (Vec::new(), json!([]), json!({}), Some(e.public_message())),
    };
    let own = context! {
        title => "Catalog",
        services => Value::from_serialize(&services),
        capabilities => Value::from_serialize(&capabilities),
        unavailable => Value::from_serialize(&unavailable),
        error,
    };
    page(&state, &caller, "catalog.html", "catalog", own).await
}

/// A capability: its description, schemas, what policy says, and the "try it" form.
pub async fn capability(State(state): State<AppState>, Viewer(caller): Viewer, Path(name): Path<String>) -> Response {
    capability_page(&state, &caller, &name, TryIt::default()).await
}

/// What the "try it" form holds: what was sent, and what came back.
#[derive(Debug, Default)]
pub(super) struct TryIt {
    pub params: Option<String>,
    pub error: Option<ExecError>,
    pub run_id: Option<String>,
}

pub(super) async fn capability_page(state: &AppState, caller: &Caller, name: &str, tried: TryIt) -> Response {
    let described = read(
        state,
        caller,
        Command::CatalogDescribe(Describe {
            capability: name.to_owned(),
        }),
    )
    .await;
    let capability = match described {
        Ok(capability) => capability,
        Err(e) => {
            let own = context! { title => "Not in the catalog", missing => name, error => e.public_message() };
            return page_with(e.http_status(), state, caller, "capability.html", "catalog", own).await;
        }
    };
    let params = tried.params.unwrap_or_else(|| skeleton(&capability["params_schema"]));
    let status = tried.error.as_ref().map_or(StatusCode::OK, ExecError::http_status);
    let details = match &tried.error {
        Some(ExecError::InvalidParams { details, .. }) => Value::from_serialize(details),
        _ => Value::from(()),
    };
    let own = context! {
        title => name.to_owned(),
        capability => Value::from_serialize(&capability),
        params,
        idempotency_key => uuid::Uuid::new_v4().to_string(),
        error => tried.error.map(|e| e.public_message()),
        details,
        run_id => tried.run_id,
    };
    page_with(status, state, caller, "capability.html", "catalog", own).await
}

/// A starting point for the params: the schema's properties with their defaults or examples.
fn skeleton(schema: &serde_json::Value) -> String {
    let Some(properties) = schema["properties"].as_object() else {
        return "{}".to_owned();
    };
    let fields: serde_json::Map<String, serde_json::Value> = properties
        .iter()
        .map(|(name, s)| {
            let value = s
                .get("default")
                .or_else(|| s["examples"].get(0))
                .cloned()
                .unwrap_or_else(|| match s["type"].as_str() {
                    Some("string") => json!(""),
                    Some("integer" | "number") => json!(0),
                    Some("boolean") => json!(false),
                    Some("array") => json!([]),
                    Some("object") => json!({}),
                    _ => json!(null),
                });
            (name.clone(), value)
        })
        .collect();
    serde_json::to_string_pretty(&fields).unwrap_or_else(|_| "{}".to_owned())
}

/// What the enrol form holds after a refusal, so nothing typed is lost.
#[derive(Debug, Default, serde::Serialize)]
pub(super) struct Enrolling {
    pub keyid: String,
    pub public_key: String,
    pub claims: String,
    pub contexts: String,
    pub note: String,
}

/// Keys: every enrolled key; enrol and revoke (for `executor.admin`).
pub async fn keys(State(state): State<AppState>, Viewer(caller): Viewer) -> Response {
    keys_page(&state, &caller, Enrolling::default(), None).await
}

pub(super) async fn keys_page(
    state: &AppState,
    caller: &Caller,
    form: Enrolling,
    error: Option<ExecError>,
) -> Response {
    let (keys, denied) = match read(state, caller, Command::KeysList).await {
        Ok(listed) => (listed["keys"].clone(), None),
        Err(e) => (json!([]), Some(e.public_message())),
    };
    let status = error.as_ref().map_or(StatusCode::OK, ExecError::http_status);
    let own = context! {
        title => "Keys",
        keys => Value::from_serialize(&keys),
        denied,
        form => Value::from_serialize(&form),
        error => error.map(|e| e.public_message()),
    };
    page_with(status, state, caller, "keys.html", "keys", own).await
}

/// The explain form on the policy page.
#[derive(Debug, Default, Deserialize)]
pub struct ExplainQuery {
    #[serde(default)]
    capability: String,
    #[serde(default)]
    keyid: String,
    #[serde(default)]
    claims: String,
    #[serde(default)]
    context: String,
}

/// Policy: the rules in force (file and line), `check` warnings, `explain`, reload.
pub async fn policy(
    State(state): State<AppState>,
    Viewer(caller): Viewer,
    query: Result<Query<ExplainQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    policy_page(&state, &caller, &query, None).await
}

pub(super) async fn policy_page(
    state: &AppState,
    caller: &Caller,
    query: &ExplainQuery,
    reloaded: Option<Result<serde_json::Value, ExecError>>,
) -> Response {
    let (policy, denied) = match read(state, caller, Command::PolicyGet).await {
        Ok(policy) => (policy, None),
        Err(e) => (json!(null), Some(e.public_message())),
    };
    let check = read(state, caller, Command::PolicyCheck).await.unwrap_or_default();
    let explained = match query.capability.trim() {
        "" => None,
        capability => Some(explain(state, caller, capability, query).await),
    };
    let (explanation, explain_error) = match explained {
        Some(Ok(e)) => (Value::from_serialize(&e), None),
        Some(Err(e)) => (Value::from(()), Some(e.public_message())),
        None => (Value::from(()), None),
    };
    let numbered: Vec<_> = policy["text"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .enumerate()
        .map(|(i, line)| json!({"n": i + 1, "text": line}))
        .collect();
    let status = match &reloaded {
        Some(Err(e)) => e.http_status(),
        _ => StatusCode::OK,
    };
    let (reloaded, reload_error) = match reloaded {
        Some(Ok(r)) => (Value::from_serialize(&r), None),
        Some(Err(e)) => (Value::from(()), Some(e.public_message())),
        None => (Value::from(()), None),
    };
    let own = context! {
        title => "Policy",
        policy => Value::from_serialize(&policy),
        lines => Value::from_serialize(&numbered),
        check => Value::from_serialize(&check),
        denied,
        query => context! { capability => query.capability, keyid => query.keyid, claims => query.claims, context => query.context },
        explanation, explain_error, reloaded, reload_error,
    };
    page_with(status, state, caller, "policy.html", "policy", own).await
}

async fn explain(
    state: &AppState,
    caller: &Caller,
    capability: &str,
    query: &ExplainQuery,
) -> Result<serde_json::Value, ExecError> {
    let context = some(&query.context)
        .map(|c| {
            c.parse::<u64>()
                .map_err(|_| ExecError::invalid_params(format!("context {c:?} is not a number")))
        })
        .transpose()?;
    let explain = Explain {
        capability: capability.to_owned(),
        claims: some(&query.claims).map(|c| c.split(',').map(|c| c.trim().to_owned()).collect()),
        context,
        keyid: some(&query.keyid),
    };
    read(state, caller, Command::PolicyExplain(explain)).await
}
