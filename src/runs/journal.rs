//! The run journal (DESIGN section 8): an append-only file a run's record is written to on
//! the calling task, with one `write`, before its call is forwarded and before its answer
//! goes out. Once `write` returns the kernel has the bytes, so they survive the executor
//! being killed, as SQLite's WAL with `synchronous=NORMAL` did; the writer thread folds the
//! same records into SQLite in batches behind it. The journal is emptied whenever all it
//! holds is folded, and under steady load it is written in segments of a few MiB, each
//! deleted once folded, so it stays bounded. At start-up, whatever it still holds is folded
//! before anything else (a torn last record, from a kill in the middle of a `write`, is
//! discarded).
//!
//! A record is `[length: u32 LE][crc32 of the payload: u32 LE][payload]`, the payload an
//! [`Entry`] as JSON.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::store::Changes;
use super::{Run, RunStatus};

/// A segment is sealed, and a new one started, once it holds this much; a sealed segment
/// is deleted once everything in it is folded. (The current one is emptied whenever it is
/// all folded.) So under steady load the journal stays bounded.
const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

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

/// The journal: the segment records are appended to (`<path>`), and sealed segments
/// (`<path>.<n>`) still holding records the writer has not folded.
pub(super) struct Journal {
    path: PathBuf,
    state: Mutex<Segments>,
}

struct Segments {
    file: File,
    /// The number of the segment being appended to.
    current: u64,
    records: u64,
    folded: u64,
    bytes: u64,
    /// Sealed segments by number: records, and records folded.
    sealed: BTreeMap<u64, (u64, u64)>,
}

impl Journal {
    /// Opens (creating) the journal at `path`, and returns what it and its sealed segments
    /// still hold, in order. The caller folds them, then calls [`Journal::folded_all`].
    pub fn open(path: &Path) -> std::io::Result<(Self, Vec<Entry>)> {
        let mut entries = Vec::new();
        let mut last = 0;
        for (number, sealed) in sealed_segments(path) {
            entries.extend(decode(&std::fs::read(&sealed)?, &sealed));
            last = number;
        }
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        entries.extend(decode(&bytes, path));
        let journal = Self {
            path: path.to_owned(),
            state: Mutex::new(Segments {
                file,
                current: last + 1,
                records: 0,
                folded: 0,
                bytes: bytes.len() as u64,
                sealed: BTreeMap::new(),
            }),
        };
        Ok((journal, entries))
    }

    /// Empties the journal once what [`Journal::open`] returned is folded.
    pub fn folded_all(&self) -> std::io::Result<()> {
        let mut state = self.lock();
        for (_, sealed) in sealed_segments(&self.path) {
            std::fs::remove_file(sealed)?;
        }
        state.file.set_len(0)?;
        state.bytes = 0;
        Ok(())
    }

    /// Appends one record with one `write`; returns the segment it went to (for
    /// [`Journal::folded`]). A failed write is cut off again, so no torn record stays in
    /// front of later ones.
    pub fn append(&self, entry: &EntryRef<'_>) -> std::io::Result<u64> {
        let payload = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        if payload.len() > MAX_RECORD {
            return Err(std::io::Error::other(format!(
                "a run record of {} bytes exceeds the journal's limit of {MAX_RECORD}",
                payload.len()
            )));
        }
        let mut record = Vec::with_capacity(payload.len() + 8);
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        record.extend_from_slice(&payload);
        let mut state = self.lock();
        if let Err(e) = state.file.write_all(&record) {
            let good = state.bytes;
            let _ = state.file.set_len(good);
            return Err(e);
        }
        state.records += 1;
        state.bytes += record.len() as u64;
        let segment = state.current;
        if state.bytes >= SEGMENT_BYTES {
            self.seal(&mut state)?;
        }
        Ok(segment)
    }

    /// Starts a new segment: the current one is renamed to `<path>.<n>` and kept until
    /// everything in it is folded.
    fn seal(&self, state: &mut Segments) -> std::io::Result<()> {
        let sealed = sealed_path(&self.path, state.current);
        std::fs::rename(&self.path, &sealed)?;
        state.file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.path)?;
        if state.folded < state.records {
            state.sealed.insert(state.current, (state.records, state.folded));
        } else {
            std::fs::remove_file(sealed)?;
        }
        state.current += 1;
        (state.records, state.folded, state.bytes) = (0, 0, 0);
        Ok(())
    }

    /// Notes that `count` records of `segment` are in SQLite. A sealed segment all folded is
    /// deleted; the current one all folded is emptied (records are appended under the same
    /// lock, so none can slip in between the check and the cut).
    pub fn folded(&self, segment: u64, count: u64) -> std::io::Result<()> {
        let mut state = self.lock();
        if segment == state.current {
            state.folded += count;
            if state.folded == state.records && state.bytes > 0 {
                state.file.set_len(0)?;
                (state.records, state.folded, state.bytes) = (0, 0, 0);
            }
            return Ok(());
        }
        let done = match state.sealed.get_mut(&segment) {
            Some((records, folded)) => {
                *folded += count;
                *folded >= *records
            }
            None => false,
        };
        if done {
            state.sealed.remove(&segment);
            std::fs::remove_file(sealed_path(&self.path, segment))?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Segments> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn sealed_path(path: &Path, number: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{number}"));
    PathBuf::from(name)
}

/// The sealed segments beside `path`, by number.
fn sealed_segments(path: &Path) -> Vec<(u64, PathBuf)> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            let number = file.strip_prefix(&prefix)?.parse().ok()?;
            Some((number, e.path()))
        })
        .collect();
    found.sort();
    found
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
            trace: None,
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
        assert_eq!(journal.append(&transition).unwrap(), 1, "segment 1");
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
        journal.folded_all().unwrap();
        let segment = journal.append(&EntryRef::insert(&run("c"))).unwrap();
        journal.append(&EntryRef::insert(&run("d"))).unwrap();
        journal.folded(segment, 1).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 0, "one record still unfolded");
        journal.folded(segment, 1).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn sealed_segments_are_replayed_in_order_and_deleted_once_folded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.journal");
        let (journal, _) = Journal::open(&path).unwrap();
        let mut big = run("x");
        big.input = Some(format!("\"{}\"", "y".repeat(600_000)));
        let mut segments = Vec::new();
        for i in 0..8 {
            big.id = format!("r{i}");
            segments.push(journal.append(&EntryRef::insert(&big)).unwrap());
        }
        assert!(segments[7] > segments[0], "segments rolled: {segments:?}");
        assert!(!sealed_segments(&path).is_empty());
        drop(journal);
        let (journal, entries) = Journal::open(&path).unwrap();
        let ids: Vec<String> = entries
            .iter()
            .map(|e| match e {
                Entry::Insert { run, .. } => run.id.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, (0..8).map(|i| format!("r{i}")).collect::<Vec<_>>());
        journal.folded_all().unwrap();
        assert!(sealed_segments(&path).is_empty());
        // Sealed while running: deleted once its records are folded.
        let first = journal.append(&EntryRef::insert(&big)).unwrap();
        for _ in 0..7 {
            journal.append(&EntryRef::insert(&big)).unwrap();
        }
        assert!(sealed_segments(&path).iter().any(|(n, _)| *n == first));
        let in_first = 7; // 600 KB records: a segment of 4 MiB seals after the seventh
        journal.folded(first, in_first).unwrap();
        assert!(
            !sealed_segments(&path).iter().any(|(n, _)| *n == first),
            "deleted once folded"
        );
    }
}
