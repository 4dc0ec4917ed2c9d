//! `GET /api/v1/events` (DESIGN section 14): server-sent events of run changes, filtered
//! to what the caller may see ([`access::may_see`]), on `rest.sock` and `ui.sock`.
//!
//! - `event: run`: a run was created or changed status (a summary: id, capability, status,
//!   who asked, times; the record itself is `GET /api/v1/runs/{id}`).
//! - `event: approval`: a run now waits for an approval this caller may give.
//! - `event: lagged`: this stream fell behind and missed some; read the list again.
//!
//! Streams are bounded ([`MAX_STREAMS`] in all, [`MAX_STREAMS_PER_PRINCIPAL`] each), last
//! at most [`MAX_STREAM_LIFE`] (`EventSource` reconnects by itself) and end when the
//! executor stops.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use crate::AppState;
use crate::access;
use crate::error::ExecError;
use crate::error::render::problem;
use crate::intent::Caller;
use crate::runs::{Run, RunStatus};

/// Event streams open at once, in all.
pub const MAX_STREAMS: usize = 256;
/// Event streams open at once per principal (per human behind the console's relay).
pub const MAX_STREAMS_PER_PRINCIPAL: usize = 16;
/// How long one stream lasts before the server ends it.
pub const MAX_STREAM_LIFE: Duration = Duration::from_secs(3600);

/// Live run changes, as `text/event-stream`.
#[utoipa::path(get, path = "/api/v1/events", tag = "runs",
    responses((status = 200, description = "Server-sent events: `run` (a run changed), `approval` (a run waits for you), `lagged`", content_type = "text/event-stream"),
              (status = 429, description = "Too many event streams open", body = super::Problem, content_type = "application/problem+json")))]
pub async fn stream(State(state): State<AppState>, caller: Option<Extension<Caller>>) -> Response {
    let Some(Extension(caller)) = caller else {
        return problem(&ExecError::Unauthenticated("this endpoint needs an identity".into()));
    };
    // Counted per principal, whatever users it names; per human only behind the console's
    // relay (where every human shares the relay's identity).
    let key = match caller.relayed {
        true => access::actor(&caller),
        false => caller.principal.id.clone(),
    };
    let slot = match state.event_streams.open(&key) {
        Ok(slot) => slot,
        Err(error) => return problem(&error),
    };
    let events = events(state, caller, slot);
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn events(state: AppState, caller: Caller, slot: StreamSlot) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut changes = state.dispatcher.runs().subscribe();
    let mut stopping = state.stopping.subscribe();
    let deadline = tokio::time::Instant::now() + MAX_STREAM_LIFE;
    async_stream(move |tx| async move {
        let _slot = slot;
        loop {
            // Ends as soon as the client is gone, the executor stops or the stream is old.
            let change = tokio::select! {
                change = changes.recv() => change,
                _ = tx.closed() => return,
                _ = stopping.wait_for(|stop| *stop) => return,
                _ = tokio::time::sleep_until(deadline) => return,
            };
            let id = match change {
                Ok(change) => change.id,
                Err(RecvError::Lagged(missed)) => {
                    let event = Event::default()
                        .event("lagged")
                        .data(json!({ "missed": missed }).to_string());
                    if !deliver(&tx, event, deadline).await {
                        return;
                    }
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            // The change is committed before it is announced: read it as it is now.
            let Ok(Some(run)) = state.dispatcher.runs().get_committed(&id).await else {
                continue;
            };
            for event in announce(&caller, &run) {
                if !deliver(&tx, event, deadline).await {
                    return;
                }
            }
        }
    })
}

/// Sends one event; `false` when the client is gone or has not read for [`STALL`] (a
/// client that stops reading does not keep its task and slot).
async fn deliver(tx: &tokio::sync::mpsc::Sender<Event>, event: Event, deadline: tokio::time::Instant) -> bool {
    let until = deadline.min(tokio::time::Instant::now() + STALL);
    matches!(tokio::time::timeout_at(until, tx.send(event)).await, Ok(Ok(())))
}

/// How long a stream may leave its events unread before the server ends it.
const STALL: Duration = Duration::from_secs(30);

/// What `caller` is told of a change to `run`: nothing unless it may see it.
fn announce(caller: &Caller, run: &Run) -> Vec<Event> {
    if !access::may_see(caller, run) {
        return Vec::new();
    }
    let summary = json!({
        "id": run.id,
        "name": run.name,
        "status": run.status,
        "principal": run.principal,
        "chain": run.chain,
        "surface": run.surface,
        "approvers": run.approvers,
        "approver": run.approver,
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "expires_at": run.expires_at,
        "console": crate::console::run_path(&run.id),
    })
    .to_string();
    let mut events = vec![Event::default().event("run").id(run.id.clone()).data(summary.clone())];
    if run.status == RunStatus::AwaitingApproval && access::may_decide(caller, run).is_ok() {
        events.push(Event::default().event("approval").id(run.id.clone()).data(summary));
    }
    events
}

/// A stream made by a task that sends into a small channel (the task ends when the
/// client goes away: its next send fails).
fn async_stream<F, Fut>(task: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(task(tx));
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|event| (Ok(event), rx)) })
}

/// The open event streams, in all and per caller.
#[derive(Default)]
pub struct EventStreams {
    open: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// One open stream; closing it frees the slot.
pub struct StreamSlot {
    streams: std::sync::Arc<EventStreams>,
    who: String,
}

impl EventStreams {
    /// A slot for `who`, or why not.
    pub fn open(self: &std::sync::Arc<Self>, who: &str) -> Result<StreamSlot, ExecError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = open.values().sum();
        let mine = open.get(who).copied().unwrap_or(0);
        if total >= MAX_STREAMS {
            return Err(ExecError::TooMany(format!(
                "{MAX_STREAMS} event streams are open; close one"
            )));
        }
        if mine >= MAX_STREAMS_PER_PRINCIPAL {
            return Err(ExecError::TooMany(format!(
                "{who} has {MAX_STREAMS_PER_PRINCIPAL} event streams open; close one"
            )));
        }
        *open.entry(who.to_owned()).or_default() += 1;
        Ok(StreamSlot {
            streams: self.clone(),
            who: who.to_owned(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.who) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.who);
            }
        }
    }
}
