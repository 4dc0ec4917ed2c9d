//! The console's forms (`POST`). Each passed [`super::guard::protect`] (same origin, the
//! viewer's token) and acts through a [`Command`] as the viewer. A success redirects
//! (303) to the page that shows it; a refusal renders the form again with the reason and
//! everything that was typed.

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::pages::{self, Enrolling, ExplainQuery, TryIt, Viewer, read};
use crate::AppState;
use crate::command::{Approve, Command, Execute, KeyRef, NewKey, Reject, RunRef, RunsPrune};
use crate::error::ExecError;
use crate::intent::Surface;

/// A form that did not parse: which field, in the console's shape.
fn form<T>(form: Result<Form<T>, FormRejection>) -> Result<T, ExecError> {
    form.map(|Form(f)| f)
        .map_err(|e| ExecError::InvalidRequest(format!("the form is not valid: {}", e.body_text())))
}

fn see(path: String) -> Response {
    Redirect::to(&path).into_response()
}

/// Approve or reject, with a note.
#[derive(Debug, Deserialize)]
pub struct Decide {
    decision: String,
    #[serde(default)]
    note: String,
}

pub async fn decide(
    State(state): State<AppState>,
    Viewer(caller): Viewer,
    Path(id): Path<String>,
    decide: Result<Form<Decide>, FormRejection>,
) -> Response {
    let acted = async {
        let decide = form(decide)?;
        let note = Some(decide.note.trim().to_owned()).filter(|n| !n.is_empty());
        let command = match decide.decision.as_str() {
            "approve" => Command::RunsApprove(Approve {
                run_id: id.clone(),
                note,
            }),
            "reject" => Command::RunsReject(Reject {
                run_id: id.clone(),
                reason: note,
            }),
            other => {
                return Err(ExecError::InvalidRequest(format!(
                    "decision must be approve or reject, not {other:?}"
                )));
            }
        };
        read(&state, &caller, command).await
    }
    .await;
    match acted {
        Ok(_) => see(super::run_path(&id)),
        Err(error) => pages::run_page(&state, &caller, &id, Some(error)).await,
    }
}

pub async fn cancel(State(state): State<AppState>, Viewer(caller): Viewer, Path(id): Path<String>) -> Response {
    match read(&state, &caller, Command::RunsCancel(RunRef { run_id: id.clone() })).await {
        Ok(_) => see(super::run_path(&id)),
        Err(error) => pages::run_page(&state, &caller, &id, Some(error)).await,
    }
}

/// The prune shortcut: final runs older than so many days, of one status or all.
#[derive(Debug, Deserialize)]
pub struct Prune {
    older_than_days: String,
    #[serde(default)]
    status: String,
}

pub async fn prune(
    State(state): State<AppState>,
    Viewer(caller): Viewer,
    prune: Result<Form<Prune>, FormRejection>,
) -> Response {
    let pruned = async {
        let prune = form(prune)?;
        let days: u64 = prune.older_than_days.trim().parse().map_err(|_| {
            ExecError::invalid_params(format!(
                "older than {:?} days: give a whole number",
                prune.older_than_days
            ))
        })?;
        let status = Some(prune.status.trim().to_owned()).filter(|s| !s.is_empty());
        let command = Command::RunsPrune(RunsPrune {
            older_than_s: Some(days.saturating_mul(86_400)),
            status,
        });
        read(&state, &caller, command).await
    }
    .await;
    match pruned {
        Ok(done) => see(format!("/runs?pruned={}", done["deleted"].as_u64().unwrap_or(0))),
        Err(error) => state
            .views
            .refusal(error.http_status(), "Not pruned", &error.public_message(), "/runs"),
    }
}

/// "Try it": params as JSON text, and the key that makes a resubmitted form a replay.
#[derive(Debug, Deserialize)]
pub struct Try {
    params: String,
    idempotency_key: String,
}

pub async fn try_it(
    State(state): State<AppState>,
    Viewer(caller): Viewer,
    Path(name): Path<String>,
    tried: Result<Form<Try>, FormRejection>,
) -> Response {
    let tried = match form(tried) {
        Ok(tried) => tried,
        Err(error) => {
            return pages::capability_page(
                &state,
                &caller,
                &name,
                TryIt {
                    error: Some(error),
                    ..TryIt::default()
                },
            )
            .await;
        }
    };
    let params = match tried.params.trim() {
        "" => Ok(None),
        text => serde_json::from_str::<serde_json::Value>(text)
            .map(Some)
            .map_err(|e| ExecError::invalid_params(format!("the params are not JSON: {e}"))),
    };
    let params = match params {
        Ok(params) => params,
        Err(error) => {
            let kept = TryIt {
                params: Some(tried.params),
                error: Some(error),
                run_id: None,
            };
            return pages::capability_page(&state, &caller, &name, kept).await;
        }
    };
    let key = Some(tried.idempotency_key.trim().to_owned()).filter(|k| !k.is_empty());
    let execute = Execute {
        idempotency_key: key.clone(),
        ..Execute::new(name.clone(), params)
    };
    let outcome = Command::Execute(execute)
        .apply(&state.dispatcher, &caller, Surface::Console)
        .await;
    let run_id = match outcome {
        Ok(_) => match key {
            // The run the key bound: where the result is shown.
            Some(key) => state
                .dispatcher
                .runs()
                .by_idempotency_key(&caller.principal.id, caller.user.as_deref(), &name, &key)
                .await
                .ok()
                .flatten()
                .map(|run| run.id),
            None => None,
        },
        Err(failure) => match failure.error {
            // A held call: its run page shows it waiting, and later how it ended.
            ExecError::ApprovalPending { run_id, .. } => Some(run_id),
            // Invalid params, or a refusal before any run (not in the catalog): beside the
            // form, with what was typed (and the run, if one was recorded).
            error if failure.run_id.is_none() || matches!(error, ExecError::InvalidParams { .. }) => {
                let kept = TryIt {
                    params: Some(tried.params),
                    error: Some(error),
                    run_id: failure.run_id,
                };
                return pages::capability_page(&state, &caller, &name, kept).await;
            }
            // It ran (or was denied) and has a run: the run page says everything.
            _ => failure.run_id,
        },
    };
    match run_id {
        Some(id) => see(super::run_path(&id)),
        None => see("/runs".to_owned()),
    }
}

/// The enrol form: as `keys.add` takes it, with claims and contexts as comma lists.
#[derive(Debug, Deserialize)]
pub struct Enrol {
    keyid: String,
    public_key: String,
    #[serde(default)]
    claims: String,
    #[serde(default)]
    contexts: String,
    #[serde(default)]
    note: String,
}

pub async fn enrol(
    State(state): State<AppState>,
    Viewer(caller): Viewer,
    enrol: Result<Form<Enrol>, FormRejection>,
) -> Response {
    let enrol = match form(enrol) {
        Ok(enrol) => enrol,
        Err(error) => return pages::keys_page(&state, &caller, Enrolling::default(), Some(error)).await,
    };
    let list = |text: &str| -> Vec<String> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let contexts: Result<Option<Vec<u64>>, ExecError> = match list(&enrol.contexts) {
        empty if empty.is_empty() => Ok(None),
        contexts => contexts
            .iter()
            .map(|c| {
                c.parse::<u64>()
                    .map_err(|_| ExecError::invalid_params(format!("context {c:?} is not a number")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
    };
    let added = match contexts {
        Ok(contexts) => {
            let new = NewKey {
                keyid: enrol.keyid.trim().to_owned(),
                public_key: enrol.public_key.trim().to_owned(),
                claims: list(&enrol.claims),
                contexts,
                note: Some(enrol.note.trim().to_owned()).filter(|n| !n.is_empty()),
            };
            read(&state, &caller, Command::KeysAdd(new)).await
        }
        Err(e) => Err(e),
    };
    match added {
        Ok(_) => see("/keys".to_owned()),
        Err(error) => {
            let kept = Enrolling {
                keyid: enrol.keyid,
                public_key: enrol.public_key,
                claims: enrol.claims,
                contexts: enrol.contexts,
                note: enrol.note,
            };
            pages::keys_page(&state, &caller, kept, Some(error)).await
        }
    }
}

pub async fn revoke(State(state): State<AppState>, Viewer(caller): Viewer, Path(keyid): Path<String>) -> Response {
    match read(&state, &caller, Command::KeysRevoke(KeyRef { keyid })).await {
        Ok(_) => see("/keys".to_owned()),
        Err(error) => pages::keys_page(&state, &caller, Enrolling::default(), Some(error)).await,
    }
}

pub async fn reload_policy(State(state): State<AppState>, Viewer(caller): Viewer) -> Response {
    let reloaded = read(&state, &caller, Command::PolicyReload).await;
    pages::policy_page(&state, &caller, &ExplainQuery::default(), Some(reloaded)).await
}

pub async fn refresh_catalog(State(state): State<AppState>, Viewer(caller): Viewer) -> Response {
    match read(&state, &caller, Command::CatalogRefresh).await {
        Ok(_) => see("/catalog".to_owned()),
        Err(error) => state.views.refusal(
            error.http_status(),
            "Not refreshed",
            &error.public_message(),
            "/catalog",
        ),
    }
}
