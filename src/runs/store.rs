//! The run store: SQLite (WAL, bundled). Writes go to the writer thread (`writer`: group
//! commit, and a checkpoint thread beside it); every write is acknowledged after its
//! commit, so an answer is never sent before its run is on disk. Reads use the shared
//! connection on blocking threads. Status changes are broadcast for `runs.wait`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rusqlite::{OptionalExtension, params};
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};

use super::journal::{EntryRef, Journal};
use super::row::{COLUMNS, from_row, uuid_v7_floor};
use super::writer::{Folding, Job, Op, WalState, checkpoint_loop, fold_journal, writer_loop};
use super::{Run, RunStatus, now_ms};
use crate::db::{Db, DbError};
use crate::error::ExecError;

/// Told, on the writer thread, of each run that reached a final status (after its commit),
/// without its params and result when it ended in a later commit than it began (they are
/// not exported). Must not block: `--otlp-runs` queues the record for export.
pub type RunSink = Arc<dyn Fn(&Run) + Send + Sync>;

/// A run changed status.
#[derive(Debug, Clone)]
pub struct RunEvent {
    pub id: String,
    pub status: RunStatus,
}

/// Fields set by a status transition (unset fields are left as they are).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Changes {
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub result: Option<String>,
    pub result_truncated: bool,
    pub error: Option<Value>,
    pub approver: Option<String>,
    pub decision_note: Option<String>,
    pub cancelled_by: Option<String>,
}

/// Filters of `runs.list`. Results are newest first.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<RunStatus>,
    pub capability: Option<String>,
    pub principal: Option<String>,
    /// Unix milliseconds.
    pub since: Option<i64>,
    pub limit: usize,
    /// The last id of the previous page.
    pub cursor: Option<String>,
    /// Only runs this viewer may see: its own, and those waiting for an approval it may give.
    pub seen_by: Option<Viewer>,
    /// Only runs waiting for an approval this viewer may give, not its own.
    pub inbox: Option<Viewer>,
    /// Leave out runs with these statuses (the console's "hide denied").
    pub hide: Vec<RunStatus>,
}

/// Who lists runs, as the visibility rules of `crate::access` see it.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub principal: String,
    /// The user the principal acts for: then only that user's runs are its own.
    pub user: Option<String>,
    /// Claims that may approve (`None`: any, full trust).
    pub approver_claims: Option<Vec<String>>,
    /// How the viewer is recorded as an approver: it sees the runs it decided.
    pub actor: String,
    /// Relayed for a human (`Caller::relayed`): the human is compared, not the relay.
    pub relayed: bool,
}

/// The run store.
pub struct RunStore {
    writer: mpsc::Sender<Job>,
    reader: Db,
    events: broadcast::Sender<RunEvent>,
    journal: Arc<Journal>,
    /// Journaled writes not yet folded into SQLite.
    pending: Arc<AtomicU64>,
    health: Health,
}

/// The last answer of [`RunStore::healthy`] and when it was read (Unix ms).
#[derive(Debug)]
struct Health {
    ok: std::sync::atomic::AtomicBool,
    checked_at: std::sync::atomic::AtomicI64,
}

fn internal(e: impl std::fmt::Display) -> ExecError {
    ExecError::Internal(format!("run store: {e}"))
}

impl RunStore {
    /// Opens the store over the database at `path` (already migrated through `reader`),
    /// marks runs left `running` by a previous process as `interrupted`, and starts the
    /// writer thread.
    pub fn open(path: &Path, reader: Db) -> Result<Self, DbError> {
        Self::open_exporting(path, reader, None)
    }

    /// [`RunStore::open`], telling `export` of every run that becomes final.
    pub fn open_exporting(path: &Path, reader: Db, export: Option<RunSink>) -> Result<Self, DbError> {
        let mut conn = Db::open_writer(path)?;
        let io_error = |e: std::io::Error| DbError::from(rusqlite::Error::ToSqlConversionFailure(Box::new(e)));
        // What the last process journaled but did not fold comes first.
        let (journal, unfolded) = Journal::open(&path.with_extension("journal")).map_err(io_error)?;
        if !unfolded.is_empty() {
            let folded = fold_journal(&mut conn, unfolded)?;
            tracing::info!(records = folded, "run journal folded");
        }
        journal.folded_all().map_err(io_error)?;
        let journal = Arc::new(journal);
        let interrupted = conn.execute(
            "UPDATE runs SET status = 'interrupted', finished_at = ?1 WHERE status = 'running'",
            params![now_ms()],
        )?;
        if interrupted > 0 {
            tracing::warn!(
                runs = interrupted,
                "runs left running by the previous process are now interrupted"
            );
        }
        // SQLite would checkpoint on the committing connection, stalling every queued write
        // behind a checkpoint's fsyncs; the checkpoint thread does it beside the writer.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = Db::open_writer(path)?;
        let wal = Arc::new(WalState::default());
        let (tx, rx) = mpsc::channel::<Job>();
        let (events, _) = broadcast::channel(1024);
        let sender = events.clone();
        let shared = wal.clone();
        let pending = Arc::new(AtomicU64::new(0));
        let folding = Folding {
            journal: journal.clone(),
            pending: pending.clone(),
            export,
        };
        std::thread::Builder::new()
            .name("run-writer".into())
            .spawn(move || writer_loop(&mut conn, rx, sender, &shared, &folding))
            .map_err(io_error)?;
        std::thread::Builder::new()
            .name("run-checkpoint".into())
            .spawn(move || checkpoint_loop(&checkpointer, &wal))
            .map_err(io_error)?;
        Ok(Self {
            writer: tx,
            reader,
            events,
            journal,
            pending,
            health: Health {
                ok: std::sync::atomic::AtomicBool::new(true),
                checked_at: std::sync::atomic::AtomicI64::new(0),
            },
        })
    }

    /// Queues a write journaled in `segment` for the writer to fold; nobody waits for it.
    fn fold_later(&self, op: Op, segment: u64) -> Result<(), ExecError> {
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.writer
            .send(Job {
                op,
                done: None,
                segment,
            })
            .map_err(|_| internal("the writer thread stopped"))
    }

    /// Waits until every run write queued so far is committed.
    pub async fn flush(&self) -> Result<(), ExecError> {
        self.settled().await
    }

    /// Waits until every journaled write queued so far is in SQLite, so a read sees every
    /// run whose call was answered.
    async fn settled(&self) -> Result<(), ExecError> {
        if self.pending.load(Ordering::SeqCst) > 0 {
            self.write(Op::Barrier).await?;
        }
        Ok(())
    }

    /// Queues a write and waits for its commit; returns the rows it changed.
    async fn write(&self, op: Op) -> Result<usize, ExecError> {
        let (done, wait) = oneshot::channel();
        self.writer
            .send(Job {
                op,
                done: Some(done),
                segment: 0,
            })
            .map_err(|_| internal("the writer thread stopped"))?;
        wait.await
            .map_err(|_| internal("the writer thread stopped"))?
            .map_err(internal)
    }

    /// Records a new run. A run that binds an idempotency key is written to SQLite before
    /// this returns (fails with -32004 if the key is taken); any other is journaled.
    pub async fn insert(&self, run: Run) -> Result<(), ExecError> {
        let binds_key = run.idempotency_key.is_some()
            && run.replay_of.is_none()
            && (run.started_at.is_some() || run.expires_at.is_some());
        if !binds_key {
            // On the calling task, one `write`: the kernel has it once this returns.
            let segment = self.journal.append(&EntryRef::insert(&run)).map_err(internal)?;
            return self.fold_later(Op::Insert(Box::new(run)), segment);
        }
        let key = run.idempotency_key.clone();
        self.write(Op::Insert(Box::new(run)))
            .await
            .map_err(|e| match (&e, key) {
                (ExecError::Internal(msg), Some(key)) if msg.contains("UNIQUE") => {
                    ExecError::Conflict(format!("idempotency key {key:?} is being used by another call"))
                }
                _ => e,
            })?;
        Ok(())
    }

    /// Moves run `id` from one of `from` to `to`; `false` if it was not in one of `from`.
    pub async fn transition(
        &self,
        id: &str,
        from: &[RunStatus],
        to: RunStatus,
        changes: Changes,
    ) -> Result<bool, ExecError> {
        let op = Op::Transition {
            id: id.to_owned(),
            from: from.to_vec(),
            to,
            changes: Box::new(changes),
        };
        Ok(self.write(op).await? > 0)
    }

    /// Records how a running call ended (journaled: the forwarder does not need to know
    /// whether the run was still `running`, e.g. cancelled meanwhile).
    pub fn finish(&self, id: &str, to: RunStatus, changes: Changes) -> Result<(), ExecError> {
        let from = [RunStatus::Running];
        let entry = EntryRef::Transition {
            id,
            from: &from,
            to,
            changes: &changes,
        };
        let segment = self.journal.append(&entry).map_err(internal)?;
        let op = Op::Transition {
            id: id.to_owned(),
            from: from.to_vec(),
            to,
            changes: Box::new(changes),
        };
        self.fold_later(op, segment)
    }

    /// Marks pending approvals whose deadline passed as `expired`; returns the capability
    /// of each (read just before: one decided in between is still named).
    pub async fn expire_due(&self) -> Result<Vec<String>, ExecError> {
        let now = now_ms();
        let due = self
            .reader
            .call(move |conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT name FROM runs WHERE status = 'awaiting_approval' AND expires_at <= ?1")?;
                let names = stmt.query_map([now], |r| r.get::<_, String>(0))?;
                names.collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(internal)?;
        if due.is_empty() {
            return Ok(due);
        }
        self.write(Op::ExpireDue { now }).await?;
        Ok(due)
    }

    /// Runs waiting for an approval, as SQLite has them now.
    pub async fn pending_approvals(&self) -> Result<u64, ExecError> {
        self.reader
            .call(|conn| {
                conn.prepare_cached("SELECT COUNT(*) FROM runs WHERE status = 'awaiting_approval'")?
                    .query_row([], |r| r.get::<_, u64>(0))
            })
            .await
            .map_err(internal)
    }

    /// Whether the database answers a read. `/health` is open and never shed, so the read
    /// is made at most once a second and its answer shared: a flood of health checks
    /// does not queue on the connection the calls read through.
    pub async fn healthy(&self) -> bool {
        let now = now_ms();
        let checked = self.health.checked_at.load(Ordering::Relaxed);
        let claimed = now - checked >= 1000
            && self
                .health
                .checked_at
                .compare_exchange(checked, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        if claimed {
            let ok = self
                .reader
                .call(|conn| conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)))
                .await
                .is_ok();
            self.health.ok.store(ok, Ordering::Relaxed);
        }
        self.health.ok.load(Ordering::Relaxed)
    }

    /// Journaled writes not yet folded into SQLite.
    pub fn lag(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Deletes final runs created before `before` (Unix ms), optionally of one status.
    pub async fn prune(&self, before: i64, status: Option<RunStatus>) -> Result<usize, ExecError> {
        if status.is_some_and(|s| !s.is_final()) {
            return Err(ExecError::invalid_params("only final runs can be pruned"));
        }
        self.write(Op::Prune { before, status }).await
    }

    /// One run.
    pub async fn get(&self, id: &str) -> Result<Option<Run>, ExecError> {
        self.settled().await?;
        self.get_committed(id).await
    }

    /// The first run of `capability` that a principal, on behalf of `user`, started with an
    /// idempotency key (not a replay of it), if any. Keys are scoped by all four, and only a
    /// call that was forwarded or held for approval binds one (a refusal does not).
    pub async fn by_idempotency_key(
        &self,
        principal: &str,
        user: Option<&str>,
        capability: &str,
        key: &str,
    ) -> Result<Option<Run>, ExecError> {
        self.settled().await?;
        let scope = [principal, user.unwrap_or_default(), capability, key].map(str::to_owned);
        self.reader
            .call(move |conn| {
                let sql = format!(
                    "SELECT {COLUMNS} FROM runs WHERE principal = ?1 AND COALESCE(on_behalf_of, '') = ?2
                     AND name = ?3 AND idempotency_key = ?4 AND replay_of IS NULL
                     AND (started_at IS NOT NULL OR expires_at IS NOT NULL)"
                );
                conn.query_row(&sql, scope, from_row).optional()
            })
            .await
            .map_err(internal)
    }

    /// Runs matching `filter`, newest first, and the cursor of the next page.
    pub async fn list(&self, filter: ListFilter) -> Result<(Vec<Run>, Option<String>), ExecError> {
        self.settled().await?;
        let limit = filter.limit.clamp(1, 1000);
        let mut runs = self
            .reader
            .call(move |conn| {
                let (clauses, args) = where_clause(&filter, true);
                let sql = format!(
                    "SELECT {COLUMNS} FROM runs WHERE {clauses} ORDER BY id DESC LIMIT {}",
                    limit + 1
                );
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt.query_map(rusqlite::params_from_iter(args), from_row)?;
                rows.collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(internal)?;
        let next = if runs.len() > limit {
            runs.truncate(limit);
            runs.last().map(|r| r.id.clone())
        } else {
            None
        };
        Ok((runs, next))
    }

    /// How many runs match `filter` (its status, cursor and limit aside), per status.
    pub async fn counts(&self, filter: ListFilter) -> Result<Vec<(RunStatus, u64)>, ExecError> {
        self.settled().await?;
        let counted = self
            .reader
            .call(move |conn| {
                let (clauses, args) = where_clause(&filter, false);
                let sql = format!("SELECT status, COUNT(*) FROM runs WHERE {clauses} GROUP BY status");
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt.query_map(rusqlite::params_from_iter(args), |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, u64>(1)?))
                })?;
                rows.collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(internal)?;
        Ok(RunStatus::ALL
            .into_iter()
            .filter_map(|status| {
                let n = counted.iter().find(|(s, _)| s == status.as_str())?.1;
                Some((status, n))
            })
            .collect())
    }

    /// Every change of a run's status (and every new run), once it is in SQLite.
    pub fn subscribe(&self) -> broadcast::Receiver<RunEvent> {
        self.events.subscribe()
    }

    /// One run as SQLite has it now, without waiting for journaled writes (for a reader
    /// told by [`RunStore::subscribe`] that it changed, which is committed already).
    pub async fn get_committed(&self, id: &str) -> Result<Option<Run>, ExecError> {
        let id = id.to_owned();
        self.reader
            .call(move |conn| {
                conn.query_row(&format!("SELECT {COLUMNS} FROM runs WHERE id = ?1"), [id], from_row)
                    .optional()
            })
            .await
            .map_err(internal)
    }

    /// Waits until run `id` is final or `timeout` passes; returns it as it is then.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Run, ExecError> {
        // Subscribe before reading, so a change between the two is not missed.
        let mut events = self.events.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let run = self
                .get(id)
                .await?
                .ok_or_else(|| ExecError::NotFound(format!("no run {id}")))?;
            if run.status.is_final() {
                return Ok(run);
            }
            loop {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Err(_) => {
                        return self
                            .get(id)
                            .await?
                            .ok_or_else(|| ExecError::NotFound(format!("no run {id}")));
                    }
                    Ok(Ok(event)) if event.id == id => break,
                    Ok(Ok(_)) => continue,
                    // Missed events: read the run again.
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) => return Err(internal("the run store closed")),
                }
            }
        }
    }
}

/// The `WHERE` clauses of `filter` and their arguments; `paged` adds the status and cursor.
fn where_clause(filter: &ListFilter, paged: bool) -> (String, Vec<rusqlite::types::Value>) {
    let mut sql = "1=1".to_owned();
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut add = |clause: &str, value: rusqlite::types::Value| {
        args.push(value);
        sql.push_str(&format!(" AND {clause} ?{}", args.len()));
    };
    if let Some(status) = filter.status.filter(|_| paged) {
        add("status =", status.as_str().to_owned().into());
    }
    // Each status once, however often it was asked for.
    for hidden in RunStatus::ALL.iter().filter(|s| filter.hide.contains(s)) {
        add("status !=", hidden.as_str().to_owned().into());
    }
    if let Some(capability) = &filter.capability {
        add("name =", capability.clone().into());
    }
    if let Some(principal) = &filter.principal {
        add("principal =", principal.clone().into());
    }
    if let Some(since) = filter.since {
        // Ids are UUIDv7: their text order is creation order, to the millisecond.
        add("id >=", uuid_v7_floor(since).into());
    }
    if let Some(cursor) = filter.cursor.as_ref().filter(|_| paged) {
        add("id <", cursor.clone().into());
    }
    if let Some(viewer) = &filter.seen_by {
        args.push(viewer.principal.clone().into());
        let mut own = format!("principal = ?{}", args.len());
        if let Some(user) = &viewer.user {
            args.push(user.clone().into());
            own = format!("({own} AND on_behalf_of = ?{})", args.len());
        }
        let waiting = waiting_for(&viewer.approver_claims, &mut args);
        args.push(viewer.actor.clone().into());
        sql.push_str(&format!(" AND ({own} OR {waiting} OR approver = ?{})", args.len()));
    }
    if let Some(viewer) = &filter.inbox {
        // Not its own (`crate::access::is_own`): a human is compared with the runs'
        // principals and users; a principal acting as itself with every identity.
        args.push(viewer.principal.clone().into());
        let p = args.len();
        let others = match viewer.user.as_ref().filter(|_| viewer.relayed) {
            Some(user) => {
                args.push(user.clone().into());
                let u = args.len();
                format!(
                    "principal != ?{u} AND COALESCE(on_behalf_of, '') != ?{u} \
                     AND NOT (principal = ?{p} AND on_behalf_of IS NULL)"
                )
            }
            None => {
                let mut ids = vec![format!("?{p}")];
                if let Some(user) = &viewer.user {
                    args.push(user.clone().into());
                    ids.push(format!("?{}", args.len()));
                }
                let ids = ids.join(",");
                format!("principal NOT IN ({ids}) AND COALESCE(on_behalf_of, '') NOT IN ({ids})")
            }
        };
        let waiting = waiting_for(&viewer.approver_claims, &mut args);
        sql.push_str(&format!(" AND {others} AND {waiting}"));
    }
    (sql, args)
}

/// SQL for "waiting for an approval one of these claims may give" (`None`: any claim),
/// with the claims appended to `args`.
fn waiting_for(claims: &Option<Vec<String>>, args: &mut Vec<rusqlite::types::Value>) -> String {
    let Some(claims) = claims else {
        return "status = 'awaiting_approval'".to_owned();
    };
    let mut marks = Vec::new();
    for claim in claims {
        args.push(claim.clone().into());
        marks.push(format!("?{}", args.len()));
    }
    format!(
        "(status = 'awaiting_approval' AND EXISTS (SELECT 1 FROM json_each(runs.approvers) WHERE value IN ({})))",
        if marks.is_empty() {
            "NULL".to_owned()
        } else {
            marks.join(",")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn run(i: usize) -> Run {
        Run {
            id: uuid::Uuid::now_v7().to_string(),
            parent_id: None,
            replay_of: None,
            cancelled_by: None,
            trace: None,
            name: format!("svc{}.m", i % 20),
            surface: crate::intent::Surface::Openrpc,
            principal: format!("agent{}", i % 50),
            chain: vec![format!("agent{}", i % 50)],
            context: 0,
            claims: vec!["agent".into()],
            service: format!("svc{}", i % 20),
            method: "m".into(),
            input_sha256: "0".repeat(64),
            input: Some("x".repeat(500)),
            input_truncated: false,
            idempotency_key: None,
            decision: crate::policy::Verdict::Allow,
            rule: None,
            approvers: vec![],
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

    /// A store in `dir` whose exporter collects what it is handed.
    fn exporting(dir: &std::path::Path) -> (RunStore, Arc<std::sync::Mutex<Vec<Run>>>) {
        let path = dir.join("runs.db");
        let exported = Arc::new(std::sync::Mutex::new(Vec::<Run>::new()));
        let sink: RunSink = {
            let exported = exported.clone();
            Arc::new(move |run: &Run| exported.lock().unwrap().push(run.clone()))
        };
        let store = RunStore::open_exporting(&path, Db::open(&path).unwrap(), Some(sink)).unwrap();
        (store, exported)
    }

    /// Every run that reaches a final status is handed to the exporter once, as the store
    /// has it (params and result aside): inserted final, ended in a later commit (journaled
    /// or not), approved then ended, cancelled, expired, and a transition that did not apply.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exported_runs_are_the_stored_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (store, exported) = exporting(dir.path());
        let mut ids = Vec::new();

        let denied = Run {
            status: RunStatus::Denied,
            finished_at: Some(now_ms()),
            ..run(1)
        };
        ids.push(denied.id.clone());
        store.insert(denied).await.unwrap();

        let ended = run(2);
        ids.push(ended.id.clone());
        store.insert(ended.clone()).await.unwrap();
        let started = Changes {
            started_at: Some(now_ms()),
            ..Changes::default()
        };
        // Not running yet as far as this transition asks: it does not apply.
        let refused = store
            .transition(
                &ended.id,
                &[RunStatus::AwaitingApproval],
                RunStatus::Rejected,
                Changes::default(),
            )
            .await
            .unwrap();
        assert!(!refused);
        let failed = Changes {
            finished_at: Some(now_ms() + 5),
            error: Some(serde_json::json!({"code": 7, "message": "target failed"})),
            result: Some("{}".into()),
            ..started.clone()
        };
        store.finish(&ended.id, RunStatus::Failed, failed).unwrap();

        let held = Run {
            status: RunStatus::AwaitingApproval,
            expires_at: Some(now_ms() + 60_000),
            approvers: vec!["owner".into()],
            ..run(3)
        };
        ids.push(held.id.clone());
        store.insert(held.clone()).await.unwrap();
        let approved = Changes {
            approver: Some("owner".into()),
            decision_note: Some("fine".into()),
            ..started.clone()
        };
        assert!(
            store
                .transition(&held.id, &[RunStatus::AwaitingApproval], RunStatus::Running, approved)
                .await
                .unwrap()
        );
        let done = Changes {
            finished_at: Some(now_ms() + 9),
            result: Some("{\"ok\":true}".into()),
            ..Changes::default()
        };
        assert!(
            store
                .transition(&held.id, &[RunStatus::Running], RunStatus::Succeeded, done)
                .await
                .unwrap()
        );

        let cancelled = run(4);
        ids.push(cancelled.id.clone());
        store.insert(cancelled.clone()).await.unwrap();
        let by = Changes {
            cancelled_by: Some("owner".into()),
            finished_at: Some(now_ms()),
            ..Changes::default()
        };
        assert!(
            store
                .transition(&cancelled.id, &[RunStatus::Running], RunStatus::Cancelled, by)
                .await
                .unwrap()
        );

        let due = Run {
            status: RunStatus::AwaitingApproval,
            expires_at: Some(now_ms() - 1),
            ..run(5)
        };
        ids.push(due.id.clone());
        store.insert(due).await.unwrap();
        // The insert is journaled; expiry reads SQLite.
        store.flush().await.unwrap();
        assert_eq!(store.expire_due().await.unwrap().len(), 1);

        store.flush().await.unwrap();
        let exported = exported.lock().unwrap().clone();
        assert_eq!(exported.len(), ids.len(), "each final run once: {exported:#?}");
        for id in &ids {
            let stored = store.get(id).await.unwrap().expect("stored");
            assert!(stored.status.is_final(), "{stored:?}");
            let out = exported.iter().find(|r| &r.id == id).expect("exported");
            let aside = |run: &Run| Run {
                input: None,
                result: None,
                ..run.clone()
            };
            assert_eq!(
                serde_json::to_value(aside(out)).unwrap(),
                serde_json::to_value(aside(&stored)).unwrap()
            );
        }
        // Those that ended in a later commit came from the writer's memory, not a read
        // (which has the params); the one inserted final and the expired one have them.
        let from_memory: Vec<bool> = ids
            .iter()
            .map(|id| exported.iter().find(|r| &r.id == id).unwrap().input.is_none())
            .collect();
        assert_eq!(from_memory, [false, true, true, true, false]);
    }

    /// The runs kept for export are bounded: past the bound the oldest is let go, and is
    /// read back when it ends; the newest is still exported from memory.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_kept_for_export_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (store, exported) = exporting(dir.path());
        let runs: Vec<Run> = (0..=super::super::writer::UNFINISHED_KEPT).map(run).collect();
        for chunk in runs.chunks(256) {
            futures::future::join_all(chunk.iter().map(|r| store.insert(r.clone())))
                .await
                .into_iter()
                .collect::<Result<Vec<()>, _>>()
                .unwrap();
        }
        // The first in id order (UUIDv7: time order) is the one let go.
        let ids = runs.iter().map(|r| &r.id);
        let (oldest, newest) = (ids.clone().min().unwrap(), ids.max().unwrap());
        for id in [oldest, newest] {
            let done = Changes {
                finished_at: Some(now_ms()),
                ..Changes::default()
            };
            assert!(
                store
                    .transition(id, &[RunStatus::Running], RunStatus::Succeeded, done)
                    .await
                    .unwrap()
            );
        }
        store.flush().await.unwrap();
        let exported = exported.lock().unwrap().clone();
        let input = |id: &str| exported.iter().find(|r| r.id == id).expect("exported").input.is_some();
        assert!(input(oldest), "the oldest was let go and read back");
        assert!(!input(newest), "the newest came from memory");
    }

    /// Under steady writes the WAL is checkpointed and restarted, not grown without end (a
    /// PASSIVE checkpoint beside a busy writer never completes on its own).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_bounded_under_steady_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.db");
        let store = Arc::new(RunStore::open(&path, Db::open(&path).unwrap()).unwrap());
        // 30,000 runs: about 440 MB of WAL frames here if the WAL were never restarted; with
        // restarts it holds what about 100 ms of writes add (27 MB at 12,000 runs/s, debug
        // build), under the 64 MiB journal_size_limit. Bounded in time too.
        const RUNS: usize = 30_000;
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let writers = (0..32).map(|_| {
            let (store, count) = (store.clone(), count.clone());
            tokio::spawn(async move {
                while count.fetch_add(1, Ordering::Relaxed) < RUNS && tokio::time::Instant::now() < deadline {
                    let run = run(count.load(Ordering::Relaxed));
                    let id = run.id.clone();
                    store.insert(run).await.unwrap();
                    let done = Changes {
                        result: Some("y".repeat(500)),
                        ..Changes::default()
                    };
                    store
                        .transition(&id, &[RunStatus::Running], RunStatus::Succeeded, done)
                        .await
                        .unwrap();
                }
            })
        });
        for writer in futures::future::join_all(writers).await {
            writer.unwrap();
        }
        let wal = std::fs::metadata(dir.path().join("runs.db-wal")).unwrap().len();
        assert!(wal < 64 << 20, "WAL of {wal} bytes after {RUNS} runs");
    }
}
