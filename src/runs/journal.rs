//! The run journal (DESIGN section 8): an append-only file a run's record is written to on
//! the calling task, with one `write`, before its call is forwarded and before its answer
//! goes out. Once `write` returns the kernel has the bytes, so they survive the executor
//! being killed, as SQLite's WAL with `synchronous=NORMAL` did; the writer thread folds the
//! same records into SQLite in batches behind it, and the journal is emptied whenever all
//! it holds is folded. At start-up, whatever it still holds is folded before anything else
//! (a torn last record, from a kill in the middle of a `write`, is discarded).
//!
//! A record is `[length: u32 LE][crc32 of the payload: u32 LE][payload]`, the payload an
//! [`Entry`] as JSON.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::store::Changes;
use super::{Run, RunStatus};

/// The journal is emptied once it holds at least this much, all folded.
const TRUNCATE_AT: u64 = 4 * 1024 * 1024;

/// Largest record read back (a run's params and result are capped well below).
const MAX_RECORD: usize = 64 * 1024 * 1024;

/// One journaled write.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Entry {
    /// A new run, with its params and result text (which the API form of a run leaves out).
    Insert {
        run: Box<Run>,
        input: Option<String>,
        result: Option<String>,
    },
    /// A run left `from` for `to`.
    Transition {
        id: String,
        from: Vec<RunStatus>,
        to: RunStatus,
        changes: Box<Changes>,
    },
}

/// An [`Entry`] to write, borrowed (the same JSON).
#[derive(Debug, Serialize)]
pub(super) enum EntryRef<'a> {
    Insert {
        run: &'a Run,
        input: &'a Option<String>,
        result: &'a Option<String>,
    },
    Transition {
        id: &'a str,
        from: &'a [RunStatus],
        to: RunStatus,
        changes: &'a Changes,
    },
}

impl<'a> EntryRef<'a> {
    /// The record of `run` as inserted.
    pub fn insert(run: &'a Run) -> Self {
        Self::Insert {
            run,
            input: &run.input,
            result: &run.result,
        }
    }
}

impl Entry {
    /// The run back, with its params and result.
    pub fn into_run(run: Box<Run>, input: Option<String>, result: Option<String>) -> Box<Run> {
        let mut run = run;
        run.input = input;
        run.result = result;
        run
    }
}

/// The journal file and what was appended to it.
pub(super) struct Journal {
    path: PathBuf,
    file: Mutex<Appended>,
}

struct Appended {
    file: File,
    /// Records appended since the journal was last emptied.
    records: u64,
    bytes: u64,
}

impl Journal {
    /// Opens (creating) the journal at `path`, and returns what it still holds, in order.
    pub fn open(path: &Path) -> std::io::Result<(Self, Vec<Entry>)> {
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let entries = decode(&bytes, path);
        let journal = Self {
            path: path.to_owned(),
            file: Mutex::new(Appended {
                file,
                records: 0,
                bytes: bytes.len() as u64,
            }),
        };
        Ok((journal, entries))
    }

    /// Appends one record with one `write`; returns how many records the journal holds.
    pub fn append(&self, entry: &EntryRef<'_>) -> std::io::Result<u64> {
        let payload = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        let mut record = Vec::with_capacity(payload.len() + 8);
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        record.extend_from_slice(&payload);
        let mut appended = self.lock();
        appended.file.write_all(&record)?;
        appended.records += 1;
        appended.bytes += record.len() as u64;
        Ok(appended.records)
    }

    /// Empties the journal if everything it holds (`folded` records since it was last
    /// emptied) is in SQLite and it has grown large; returns whether it did. Records are
    /// appended under the same lock, so none can slip in between the check and the cut.
    pub fn empty_if_folded(&self, folded: u64, force: bool) -> std::io::Result<bool> {
        let mut appended = self.lock();
        if appended.records != folded || (!force && appended.bytes < TRUNCATE_AT) {
            return Ok(false);
        }
        appended.file.set_len(0)?;
        appended.records = 0;
        appended.bytes = 0;
        Ok(true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Appended> {
        self.file.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The entries of a journal's bytes, up to the first record that is torn or corrupt.
fn decode(mut bytes: &[u8], path: &Path) -> Vec<Entry> {
    let mut entries = Vec::new();
    while !bytes.is_empty() {
        let Some((entry, rest)) = next_record(bytes) else {
            tracing::warn!(
                journal = %path.display(),
                discarded_bytes = bytes.len(),
                "the journal ends in a torn or corrupt record; it is discarded"
            );
            break;
        };
        entries.push(entry);
        bytes = rest;
    }
    entries
}

fn next_record(bytes: &[u8]) -> Option<(Entry, &[u8])> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let payload = bytes.get(8..8 + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let entry = serde_json::from_slice(payload).ok()?;
    Some((entry, &bytes[8 + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intent::Surface;
    use crate::policy::Verdict;

    fn run(id: &str) -> Run {
        Run {
            id: id.to_owned(),
            parent_id: None,
            replay_of: None,
            name: "echo.echo".into(),
            surface: Surface::Openrpc,
            principal: "p".into(),
            chain: vec!["p".into()],
            context: 0,
            claims: vec!["*".into()],
            service: "echo".into(),
            method: "echo".into(),
            input_sha256: "0".repeat(64),
            input: Some(r#"{"message":"hi"}"#.into()),
            input_truncated: false,
            idempotency_key: None,
            decision: Verdict::Allow,
            rule: None,
            approvers: vec![],
            status: RunStatus::Running,
            result: None,
            result_truncated: false,
            error: None,
            approver: None,
            decision_note: None,
            cancelled_by: None,
            created_at: 1,
            started_at: Some(1),
            finished_at: None,
            expires_at: None,
        }
    }

    #[test]
    fn records_come_back_in_order_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.journal");
        let (journal, old) = Journal::open(&path).unwrap();
        assert!(old.is_empty());
        journal.append(&EntryRef::insert(&run("a"))).unwrap();
        let done = Changes {
            result: Some("{}".into()),
            ..Changes::default()
        };
        let transition = EntryRef::Transition {
            id: "a",
            from: &[RunStatus::Running],
            to: RunStatus::Succeeded,
            changes: &done,
        };
        assert_eq!(journal.append(&transition).unwrap(), 2);
        journal.append(&EntryRef::insert(&run("b"))).unwrap();
        drop(journal);
        // A kill in the middle of the last write: its record is cut short.
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 5]).unwrap();
        let (journal, entries) = Journal::open(&path).unwrap();
        assert_eq!(entries.len(), 2, "the torn third record is discarded");
        match &entries[0] {
            Entry::Insert { run, input, .. } => {
                assert_eq!(run.id, "a");
                assert_eq!(input.as_deref(), Some(r#"{"message":"hi"}"#), "params survive");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            &entries[1],
            Entry::Transition {
                to: RunStatus::Succeeded,
                ..
            }
        ));
        // A flipped byte is corruption, not a record.
        let mut corrupt = full.clone();
        corrupt[10] ^= 0xff;
        std::fs::write(&path, &corrupt).unwrap();
        assert!(Journal::open(&path).unwrap().1.is_empty());
        // Emptied only once everything appended is folded.
        journal.append(&EntryRef::insert(&run("c"))).unwrap();
        assert!(!journal.empty_if_folded(0, true).unwrap());
        assert!(journal.empty_if_folded(1, true).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
