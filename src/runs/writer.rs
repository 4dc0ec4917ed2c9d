//! The run writer: one thread owns a connection and commits whatever has queued up in one
//! transaction (group commit). A write is either journaled (already in the run journal, so
//! nobody waits for it: the writer folds it into SQLite behind the calls) or acknowledged
//! after its commit (decisions that need the database's answer, and barriers that reads
//! take so they see everything queued before them). A second thread checkpoints the WAL
//! into the database file beside it (see `checkpoint_loop`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, Transaction, params};
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};

use super::RunStatus;
use super::journal::{Entry, Journal};
use super::row::{COLUMNS, from_row};
use super::store::{Changes, RunEvent};
use crate::runs::Run;

/// One write, in the order it was queued.
pub(super) enum Op {
    Insert(Box<Run>),
    Transition {
        id: String,
        from: Vec<RunStatus>,
        to: RunStatus,
        changes: Box<Changes>,
    },
    ExpireDue {
        now: i64,
    },
    Prune {
        before: i64,
        status: Option<RunStatus>,
    },
    /// Nothing: acknowledged once everything queued before it is committed.
    Barrier,
}

/// What one write did: rows changed, and the status changes to broadcast.
#[derive(Default)]
pub(super) struct Applied {
    rows: usize,
    events: Vec<RunEvent>,
}

/// A write and who waits for its commit (the rows it changed, or why it failed); `None`
/// for a journaled write, which nobody waits for.
pub(super) struct Job {
    pub op: Op,
    pub done: Option<oneshot::Sender<Result<usize, String>>>,
    /// The journal segment a journaled write is in.
    pub segment: u64,
}

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;

/// How long a loaded writer waits for more writes to share a commit (and for the ends of
/// the calls it folds to join their inserts).
const LINGER: Duration = Duration::from_micros(1000);

/// A commit of at least this many writes means load: the next one lingers.
const LINGER_AFTER: usize = 4;

/// How long the writer waits before trying a failed commit again.
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// How often the checkpoint thread looks for new commits to copy into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// A WAL of at least this many frames (4 KiB pages) is restarted from its beginning.
const RESTART_FRAMES: i64 = 1000;

/// What the writer and the checkpoint thread share.
#[derive(Default)]
pub(super) struct WalState {
    /// Commits so far.
    commits: AtomicU64,
    /// The checkpoint thread asks the writer to finish a checkpoint so the WAL restarts.
    restart: AtomicBool,
}

/// Copies committed WAL frames into the database file whenever there were new commits.
///
/// PASSIVE: it never blocks the writer (nor readers). But the writer keeps appending while
/// it copies, so under steady load it never copies *everything*, and SQLite only restarts
/// the WAL from its beginning after a complete checkpoint (measured: the WAL grew by 50
/// MB/s). So once the WAL is [`RESTART_FRAMES`] long, it asks the writer to checkpoint
/// between two commits: by then only the frames of the last few milliseconds are left to
/// copy, and the writer's next transaction restarts the WAL. Ends when the writer has ended.
pub(super) fn checkpoint_loop(conn: &Connection, wal: &Arc<WalState>) {
    let mut seen = 0;
    // The writer thread holds the other reference while it runs.
    while Arc::strong_count(wal) > 1 {
        std::thread::sleep(CHECKPOINT_EVERY);
        let now = wal.commits.load(Ordering::Relaxed);
        if now == seen {
            continue;
        }
        seen = now;
        match checkpoint(conn) {
            Ok(frames) if frames >= RESTART_FRAMES => wal.restart.store(true, Ordering::Relaxed),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; retried later"),
        }
    }
    let _ = checkpoint(conn);
}

/// Merges the end of a journaled call into its run's insert when both are in one batch: one
/// row written once instead of inserted, then updated (the journal already holds both, so
/// nothing is lost by folding them together). The end is left a barrier, so its place in
/// the batch (and its acknowledgement count) stays.
fn coalesce(batch: &mut [Job]) {
    let mut inserted: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for i in 0..batch.len() {
        if batch[i].done.is_some() {
            // A decision on the run comes between: keep the order as it was.
            if let Op::Transition { id, .. } = &batch[i].op {
                inserted.remove(id);
            }
            continue;
        }
        match &batch[i].op {
            Op::Insert(run) => {
                inserted.insert(run.id.clone(), i);
            }
            Op::Transition { id, from, .. } => {
                let Some(&at) = inserted.get(id) else { continue };
                let Op::Insert(run) = &batch[at].op else { continue };
                if !from.contains(&run.status) {
                    continue;
                }
                let Op::Transition { to, changes, .. } = std::mem::replace(&mut batch[i].op, Op::Barrier) else {
                    continue;
                };
                if let Op::Insert(run) = &mut batch[at].op {
                    run.end(to, *changes);
                }
            }
            _ => {}
        }
    }
}

/// A PASSIVE checkpoint; returns how many frames the WAL holds.
fn checkpoint(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(1))
}

/// What the writer shares with the store about journaled writes.
pub(super) struct Folding {
    pub journal: Arc<Journal>,
    /// Journaled writes queued and not yet folded (reads wait for them when there are any).
    pub pending: Arc<AtomicU64>,
    /// Told of every run that reached a final status, once it is committed.
    pub export: Option<super::store::RunSink>,
}

pub(super) fn writer_loop(
    conn: &mut Connection,
    rx: mpsc::Receiver<Job>,
    events: broadcast::Sender<RunEvent>,
    wal: &Arc<WalState>,
    folding: &Folding,
) {
    let mut last = 0;
    let mut unfinished = Unfinished::new();
    // Journaled writes whose commit failed: tried again first, never dropped.
    let mut retry: Vec<Job> = Vec::new();
    loop {
        let mut batch = std::mem::take(&mut retry);
        if batch.is_empty() {
            match rx.recv() {
                Ok(first) => batch.push(first),
                Err(_) => break,
            }
        }
        // Whatever queued up meanwhile shares the commit. Under load (the last commit
        // carried several writes) the writer also waits a little for more: a commit costs
        // about the same for one write as for ten (the same few pages are written to the
        // WAL), and that wait is shorter than a commit. A lone caller never waits.
        if last >= LINGER_AFTER {
            std::thread::sleep(LINGER);
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        last = batch.len();
        coalesce(&mut batch);
        match commit(conn, &batch, wal) {
            Ok(results) => {
                // Exported before anyone waiting is answered: a flush (shutdown) that returns
                // has every final run it waited for with the exporter.
                if let Some(export) = &folding.export {
                    export_finals(conn, export, finals(&batch, &results, &mut unfinished));
                }
                settle(batch, results, &events, folding);
            }
            Err(e) => {
                // Decisions get the error; journaled writes stay queued (and stay in the
                // journal, which keeps what is not folded) and are tried again shortly.
                tracing::error!(error = %e, "run store commit failed; journaled writes are retried");
                for job in batch {
                    match job.done {
                        Some(done) => drop(done.send(Err(e.to_string()))),
                        None => retry.push(job),
                    }
                }
                std::thread::sleep(RETRY_AFTER);
            }
        }
        // Between commits, after the answers went out (checkpoint_loop says why).
        if wal.restart.swap(false, Ordering::Relaxed)
            && let Err(e) = checkpoint(conn)
        {
            tracing::warn!(error = %e, "WAL checkpoint failed; retried later");
        }
    }
}

/// Applies a batch in one transaction; each write's own result, or the commit's failure.
fn commit(conn: &mut Connection, batch: &[Job], wal: &WalState) -> rusqlite::Result<Vec<Result<Applied, String>>> {
    let tx = conn.transaction()?;
    let results: Vec<Result<Applied, String>> = batch
        .iter()
        .map(|job| apply(&tx, &job.op).map_err(|e| e.to_string()))
        .collect();
    tx.commit()?;
    wal.commits.fetch_add(1, Ordering::Relaxed);
    Ok(results)
}

/// After a commit: broadcasts what changed, answers who waits, and tells the journal
/// which of its records are folded. A journaled write that failed on its own (not the
/// commit) cannot succeed later either: it is logged and counted as folded.
fn settle(
    batch: Vec<Job>,
    results: Vec<Result<Applied, String>>,
    events: &broadcast::Sender<RunEvent>,
    folding: &Folding,
) {
    let mut folded: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    for (job, result) in batch.into_iter().zip(results) {
        let result = result.map(|applied| {
            for event in applied.events {
                let _ = events.send(event);
            }
            applied.rows
        });
        match job.done {
            Some(done) => drop(done.send(result)),
            None => {
                *folded.entry(job.segment).or_default() += 1;
                folding.pending.fetch_sub(1, Ordering::SeqCst);
                if let Err(e) = result {
                    tracing::error!(error = %e, "a journaled run write failed to fold");
                }
            }
        }
    }
    for (segment, count) in folded {
        if let Err(e) = folding.journal.folded(segment, count) {
            tracing::warn!(error = %e, journal = %folding.journal.path().display(), "cannot trim the run journal");
        }
    }
}

/// A run a commit made final: the record itself when the batch had it whole, else its id.
enum Final {
    Run(Box<Run>),
    Id(String),
}

/// Runs inserted and not final yet, kept (without their params and result, which are not
/// exported) while runs are exported: a run that ends in a later commit is exported from
/// here, with the transition applied as the store applied it to the row, rather than read
/// back. At most [`UNFINISHED_KEPT`]: past that the oldest is let go (run ids are UUIDv7,
/// ordered by time), since a run that never ends here (its caller went away mid-call, or
/// it waits long for approval) must not keep its place; a run not here is read.
type Unfinished = std::collections::BTreeMap<String, Run>;

/// Unfinished runs kept for export at most (a few hundred bytes each).
pub(super) const UNFINISHED_KEPT: usize = 4096;

/// The runs a committed batch made final; `unfinished` follows the batch.
fn finals(batch: &[Job], results: &[Result<Applied, String>], unfinished: &mut Unfinished) -> Vec<Final> {
    let mut finals = Vec::new();
    for (job, result) in batch.iter().zip(results) {
        let Ok(applied) = result else { continue };
        match &job.op {
            Op::Insert(run) if applied.rows > 0 && !run.status.is_final() => {
                if unfinished.len() >= UNFINISHED_KEPT {
                    unfinished.pop_first();
                }
                let kept = Run {
                    input: None,
                    result: None,
                    ..(**run).clone()
                };
                unfinished.insert(run.id.clone(), kept);
            }
            Op::Transition { id, to, changes, .. } if applied.rows > 0 => {
                if let Some(run) = unfinished.get_mut(id) {
                    run.end(
                        *to,
                        super::store::Changes {
                            result: None,
                            error: changes.error.clone(),
                            approver: changes.approver.clone(),
                            decision_note: changes.decision_note.clone(),
                            cancelled_by: changes.cancelled_by.clone(),
                            ..**changes
                        },
                    );
                }
            }
            _ => {}
        }
        for event in applied.events.iter().filter(|e| e.status.is_final()) {
            let kept = unfinished.remove(&event.id);
            finals.push(match (&job.op, kept) {
                (Op::Insert(run), _) if run.id == event.id => Final::Run(run.clone()),
                (Op::Transition { .. }, Some(run)) if run.status == event.status => Final::Run(Box::new(run)),
                _ => Final::Id(event.id.clone()),
            });
        }
    }
    finals
}

/// Hands the final runs to the exporter, reading those the batch did not carry whole.
fn export_finals(conn: &Connection, export: &super::store::RunSink, finals: Vec<Final>) {
    for item in finals {
        let run = match item {
            Final::Run(run) => *run,
            Final::Id(id) => {
                let read = conn
                    .prepare_cached(&format!("SELECT {COLUMNS} FROM runs WHERE id = ?1"))
                    .and_then(|mut stmt| stmt.query_row([&id], from_row));
                match read {
                    Ok(run) => run,
                    Err(e) => {
                        tracing::warn!(error = %e, run_id = %id, "cannot read a final run to export it");
                        continue;
                    }
                }
            }
        };
        export(&run);
    }
}

fn apply(tx: &Transaction<'_>, op: &Op) -> rusqlite::Result<Applied> {
    match op {
        Op::Insert(run) => insert(tx, run, false),
        Op::Barrier => Ok(Applied::default()),
        Op::Transition { id, from, to, changes } => transition(tx, id, from, *to, changes),
        Op::ExpireDue { now } => expire_due(tx, *now),
        Op::Prune { before, status } => prune(tx, *before, *status),
    }
}

/// Inserts a run; `replaying` ignores one already there (folded before a restart).
fn insert(tx: &Transaction<'_>, run: &Run, replaying: bool) -> rusqlite::Result<Applied> {
    let verb = if replaying { "INSERT OR IGNORE" } else { "INSERT" };
    tx.prepare_cached(&format!(
        "{verb} INTO runs (id, parent_id, name, surface, principal, chain, context, claims, service, method,
             input_sha256, input, input_truncated, idempotency_key, decision, rule, approvers, status, result,
             result_truncated, error, approver, decision_note, created_at, started_at, finished_at, expires_at,
             on_behalf_of, replay_of, cancelled_by, trace)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20,
             ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31)"
    ))?
    .execute(params![
        run.id,
        run.parent_id,
        run.name,
        run.surface.as_str(),
        run.principal,
        serde_json::to_string(&run.chain).unwrap_or_default(),
        run.context as i64,
        run.claims.join(","),
        run.service,
        run.method,
        run.input_sha256,
        run.input,
        run.input_truncated,
        run.idempotency_key,
        run.decision.as_str(),
        run.rule,
        serde_json::to_string(&run.approvers).unwrap_or_default(),
        run.status.as_str(),
        run.result,
        run.result_truncated,
        run.error.as_ref().map(Value::to_string),
        run.approver,
        run.decision_note,
        run.created_at,
        run.started_at,
        run.finished_at,
        run.expires_at,
        run.chain.get(1),
        run.replay_of,
        run.cancelled_by,
        run.trace,
    ])?;
    Ok(Applied {
        rows: 1,
        events: vec![RunEvent {
            id: run.id.clone(),
            status: run.status,
        }],
    })
}

/// Moves run `id` from one of `from` to `to`, setting what `changes` sets.
fn transition(
    tx: &Transaction<'_>,
    id: &str,
    from: &[RunStatus],
    to: RunStatus,
    changes: &Changes,
) -> rusqlite::Result<Applied> {
    let from: Vec<String> = from.iter().map(|s| format!("'{}'", s.as_str())).collect();
    let changed = tx
        .prepare_cached(&format!(
            "UPDATE runs SET status = ?2,
                   started_at = COALESCE(?3, started_at), finished_at = COALESCE(?4, finished_at),
                   result = COALESCE(?5, result), result_truncated = (result_truncated OR ?6),
                   error = COALESCE(?7, error), approver = COALESCE(?8, approver),
                   decision_note = COALESCE(?9, decision_note), cancelled_by = COALESCE(?10, cancelled_by)
                 WHERE id = ?1 AND status IN ({})",
            from.join(",")
        ))?
        .execute(params![
            id,
            to.as_str(),
            changes.started_at,
            changes.finished_at,
            changes.result,
            changes.result_truncated,
            changes.error.as_ref().map(Value::to_string),
            changes.approver,
            changes.decision_note,
            changes.cancelled_by,
        ])?;
    Ok(Applied {
        rows: changed,
        events: match changed {
            0 => Vec::new(),
            _ => vec![RunEvent {
                id: id.to_owned(),
                status: to,
            }],
        },
    })
}

fn expire_due(tx: &Transaction<'_>, now: i64) -> rusqlite::Result<Applied> {
    let mut stmt = tx.prepare_cached(
        "UPDATE runs SET status = 'expired', finished_at = ?1
             WHERE status = 'awaiting_approval' AND expires_at <= ?1 RETURNING id",
    )?;
    let events: Vec<RunEvent> = stmt
        .query_map([now], |r| r.get::<_, String>(0))?
        .map(|id| {
            id.map(|id| RunEvent {
                id,
                status: RunStatus::Expired,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Applied {
        rows: events.len(),
        events,
    })
}

fn prune(tx: &Transaction<'_>, before: i64, status: Option<RunStatus>) -> rusqlite::Result<Applied> {
    let finals: Vec<String> = RunStatus::ALL
        .iter()
        .filter(|s| s.is_final() && status.is_none_or(|wanted| wanted == **s))
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    let deleted = tx.execute(
        &format!(
            "DELETE FROM runs WHERE created_at < ?1 AND status IN ({})",
            finals.join(",")
        ),
        [before],
    )?;
    Ok(Applied {
        rows: deleted,
        events: Vec::new(),
    })
}

/// Folds what the journal still held at start-up, in one transaction, before anything else
/// is written: inserts already folded before the restart are ignored, and a transition
/// already made finds its run no longer in `from`.
pub(super) fn fold_journal(conn: &mut Connection, entries: Vec<Entry>) -> rusqlite::Result<usize> {
    let tx = conn.transaction()?;
    let count = entries.len();
    for entry in entries {
        match entry {
            Entry::Insert { run, input, result } => {
                insert(&tx, &Entry::into_run(run, input, result), true)?;
            }
            Entry::Transition { id, from, to, changes } => {
                transition(&tx, &id, &from, to, &changes)?;
            }
        }
    }
    tx.commit()?;
    Ok(count)
}
