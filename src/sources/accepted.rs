//! What an admin accepted of each source: its spec (or tool list) fingerprint and a digest
//! of every operation in it. An operation that is not in the accepted set, or whose digest
//! changed (a new method, other params, another intent), is listed as new and refused
//! until `sources.accept`. Kept in `<data_dir>/sources-accepted.json`, written whole to a
//! temporary file and renamed into place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One source's accepted state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    pub fingerprint: String,
    /// Operation name -> digest of its definition.
    pub operations: BTreeMap<String, String>,
    /// Unix milliseconds.
    pub accepted_at: i64,
    /// Who accepted it (`sources file` for the first version seen).
    pub accepted_by: String,
}

/// The accepted state of every source, on disk.
pub struct AcceptedStore {
    path: PathBuf,
    sources: Mutex<BTreeMap<String, Accepted>>,
}

impl AcceptedStore {
    /// Opens (or starts) the store in `data_dir`. An unreadable file is an error: starting
    /// over would accept whatever the sources serve now.
    pub fn open(data_dir: &Path) -> Result<Self, String> {
        let path = data_dir.join("sources-accepted.json");
        let sources = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{} is not a valid acceptance record: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(Self {
            path,
            sources: Mutex::new(sources),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Accepted>> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, source: &str) -> Option<Accepted> {
        self.lock().get(source).cloned()
    }

    /// Records `accepted` for `source` and writes the file.
    pub fn set(&self, source: &str, accepted: Accepted) -> Result<(), String> {
        let mut sources = self.lock();
        let mut next = sources.clone();
        next.insert(source.to_owned(), accepted);
        write_atomically(&self.path, &serde_json::to_vec_pretty(&next).unwrap_or_default())?;
        *sources = next;
        Ok(())
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_reopen_and_refuses_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = AcceptedStore::open(dir.path()).unwrap();
        let accepted = Accepted {
            fingerprint: "f".into(),
            operations: [("op".to_owned(), "d".to_owned())].into(),
            accepted_at: 1,
            accepted_by: "me".into(),
        };
        store.set("pets", accepted.clone()).unwrap();
        assert_eq!(AcceptedStore::open(dir.path()).unwrap().get("pets"), Some(accepted));
        std::fs::write(dir.path().join("sources-accepted.json"), "{").unwrap();
        assert!(AcceptedStore::open(dir.path()).is_err());
    }
}
