//! The executor's SQLite database: one file in the data dir, WAL mode, bundled SQLite,
//! migrations embedded and applied in order at open. Every call runs on a blocking
//! thread, never on the async runtime.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

/// Schema migrations; `PRAGMA user_version` records how many have been applied.
const MIGRATIONS: &[&str] = &[
    // 1: the key registry (DESIGN section 6).
    "CREATE TABLE keys (
        keyid       TEXT PRIMARY KEY,
        public_key  BLOB NOT NULL,
        claims      TEXT NOT NULL,
        contexts    TEXT,
        note        TEXT,
        created_at  INTEGER NOT NULL,
        revoked_at  INTEGER
    ) STRICT;",
    // 2: runs (DESIGN section 8). Ids are UUIDv7, so id order is creation order.
    "CREATE TABLE runs (
        id               TEXT PRIMARY KEY,
        parent_id        TEXT,
        name             TEXT NOT NULL,
        surface          TEXT NOT NULL,
        principal        TEXT NOT NULL,
        chain            TEXT NOT NULL,
        context          INTEGER NOT NULL,
        claims           TEXT NOT NULL,
        service          TEXT NOT NULL,
        method           TEXT NOT NULL,
        input_sha256     TEXT NOT NULL,
        input            TEXT,
        input_truncated  INTEGER NOT NULL DEFAULT 0,
        idempotency_key  TEXT,
        decision         TEXT NOT NULL,
        rule             TEXT,
        approvers        TEXT NOT NULL,
        status           TEXT NOT NULL,
        result           TEXT,
        result_truncated INTEGER NOT NULL DEFAULT 0,
        error            TEXT,
        approver         TEXT,
        decision_note    TEXT,
        created_at       INTEGER NOT NULL,
        started_at       INTEGER,
        finished_at      INTEGER,
        expires_at       INTEGER
    ) STRICT;
    CREATE INDEX runs_by_status ON runs(status, id);
    CREATE INDEX runs_by_name ON runs(name, id);
    CREATE INDEX runs_by_principal ON runs(principal, id);
    CREATE UNIQUE INDEX runs_idempotency ON runs(principal, idempotency_key) WHERE idempotency_key IS NOT NULL;",
    // 3: idempotency keys scoped by principal, user and capability, and bound only by a call
    // that was forwarded or held (a refusal does not use a key up); a retry is a run of its
    // own pointing at the first (`replay_of`); who cancelled a run.
    "ALTER TABLE runs ADD COLUMN on_behalf_of TEXT;
    ALTER TABLE runs ADD COLUMN replay_of TEXT;
    ALTER TABLE runs ADD COLUMN cancelled_by TEXT;
    UPDATE runs SET on_behalf_of = json_extract(chain, '$[1]');
    DROP INDEX runs_idempotency;
    CREATE UNIQUE INDEX runs_idempotency ON runs(principal, COALESCE(on_behalf_of, ''), name, idempotency_key)
        WHERE idempotency_key IS NOT NULL AND replay_of IS NULL AND (started_at IS NOT NULL OR expires_at IS NOT NULL);",
    // 4: the call's W3C trace context, so an approved call's span links to the held one's.
    "ALTER TABLE runs ADD COLUMN trace TEXT;",
];

/// A database failure. Details are logged; callers see an internal error.
#[derive(Debug, thiserror::Error)]
#[error("database: {0}")]
pub struct DbError(String);

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError(e.to_string())
    }
}

/// A shared connection to the executor's database.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on a blocking thread.
    pub async fn call<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn).map_err(DbError::from)
        })
        .await
        .map_err(|e| DbError(format!("database task failed: {e}")))?
    }

    /// Opens a second connection to the same file (for a dedicated writer thread).
    pub fn open_writer(path: &Path) -> Result<Connection, DbError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // After a checkpoint lets the WAL restart, a larger file is cut back to this.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(conn)
    }

    /// Runs `f` with the connection on the current thread (start-up only).
    pub fn call_blocking<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, DbError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(DbError::from)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    let applied: usize = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if applied > MIGRATIONS.len() {
        return Err(DbError(format!(
            "the database has schema version {applied}, newer than this build knows ({}); use a newer hero_executor",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}
