//! The key registry (DESIGN section 6): `keyid` -> Ed25519 public key, claims ceiling,
//! allowed contexts, revocation. Stored in SQLite; served from memory, so verifying a
//! signature never waits on the database.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use ed25519_dalek::VerifyingKey;
use serde_json::{Value, json};

use super::signature::{parse_public_key, public_key_pem};
use crate::db::Db;
use crate::error::ExecError;
use crate::intent::{Claims, Principal};

/// One enrolled key.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub keyid: String,
    pub public_key: VerifyingKey,
    /// The most a request signed with this key may hold.
    pub claims: Claims,
    /// Contexts this key may act in; `None` means any.
    pub contexts: Option<BTreeSet<u64>>,
    pub note: Option<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl KeyEntry {
    /// The principal a verified signature by this key stands for.
    pub fn principal(&self) -> Principal {
        Principal {
            id: self.keyid.clone(),
            ceiling: self.claims.clone(),
            contexts: self.contexts.clone(),
        }
    }

    /// The form `keys.list` and `keys.add` answer with.
    pub fn to_json(&self) -> Value {
        json!({
            "keyid": self.keyid,
            "public_key_pem": public_key_pem(&self.public_key),
            "claims": self.claims,
            "contexts": self.contexts,
            "note": self.note,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "revoked": self.revoked_at.is_some(),
        })
    }
}

/// What `keys.add` asks for.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub keyid: String,
    /// PEM SubjectPublicKeyInfo, or base64 of the raw 32 bytes.
    pub public_key: String,
    pub claims: Vec<String>,
    pub contexts: Option<Vec<u64>>,
    pub note: Option<String>,
}

/// Every enrolled key, cached in memory.
pub struct Registry {
    db: Db,
    cache: RwLock<HashMap<String, Arc<KeyEntry>>>,
}

impl Registry {
    /// Loads every key from the database.
    pub fn load(db: Db) -> Result<Self, crate::db::DbError> {
        let rows = db.call_blocking(|conn| {
            let mut stmt =
                conn.prepare("SELECT keyid, public_key, claims, contexts, note, created_at, revoked_at FROM keys")?;
            let rows = stmt.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, Vec<u8>>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, Option<String>>(4)?,
                    row.get::<_, i64>(5)?,
                    row.get::<_, Option<i64>>(6)?,
                ))
            })?;
            rows.collect::<Result<Vec<_>, _>>()
        })?;
        let mut cache = HashMap::new();
        for (keyid, raw, claims, contexts, note, created_at, revoked_at) in rows {
            let entry = (|| {
                let raw: [u8; 32] = raw.try_into().ok()?;
                Some(KeyEntry {
                    keyid: keyid.clone(),
                    public_key: VerifyingKey::from_bytes(&raw).ok()?,
                    claims: Claims::parse(&claims).ok()?,
                    contexts: contexts.map(|c| c.split(',').filter_map(|n| n.parse().ok()).collect()),
                    note,
                    created_at,
                    revoked_at,
                })
            })();
            match entry {
                Some(entry) => {
                    cache.insert(keyid, Arc::new(entry));
                }
                None => tracing::error!(%keyid, "unreadable key in the registry; ignored"),
            }
        }
        Ok(Self {
            db,
            cache: RwLock::new(cache),
        })
    }

    /// The key with this id, revoked or not.
    pub fn get(&self, keyid: &str) -> Option<Arc<KeyEntry>> {
        self.cache.read().unwrap_or_else(|p| p.into_inner()).get(keyid).cloned()
    }

    /// Every key, by keyid.
    pub fn list(&self) -> Vec<Arc<KeyEntry>> {
        let mut keys: Vec<_> = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        keys.sort_by(|a, b| a.keyid.cmp(&b.keyid));
        keys
    }

    /// Enrols a key. A keyid is never reused, even after revocation (-32004).
    pub async fn add(&self, new: NewKey) -> Result<Arc<KeyEntry>, ExecError> {
        validate_keyid(&new.keyid)?;
        let public_key = parse_public_key(&new.public_key).map_err(|e| ExecError::invalid_params(e.0))?;
        let claims = Claims::parse(&new.claims.join(",")).map_err(ExecError::invalid_params)?;
        if new.claims.iter().any(|c| c.contains(',') || c.trim().is_empty()) {
            return Err(ExecError::invalid_params(
                "each claim is one non-empty name without commas",
            ));
        }
        if new.note.as_ref().is_some_and(|n| n.len() > 1024) {
            return Err(ExecError::invalid_params("note is at most 1024 bytes"));
        }
        let entry = KeyEntry {
            keyid: new.keyid,
            public_key,
            claims,
            contexts: new.contexts.map(|c| c.into_iter().collect()),
            note: new.note,
            created_at: crate::now_unix(),
            revoked_at: None,
        };
        if self.get(&entry.keyid).is_some() {
            return Err(ExecError::Conflict(format!(
                "keyid {} is already enrolled",
                entry.keyid
            )));
        }
        let row = entry.clone();
        let inserted = self
            .db
            .call(move |conn| {
                conn.execute(
                    "INSERT OR IGNORE INTO keys (keyid, public_key, claims, contexts, note, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    rusqlite::params![
                        row.keyid,
                        row.public_key.as_bytes().to_vec(),
                        row.claims.to_string(),
                        row.contexts
                            .map(|c| c.iter().map(u64::to_string).collect::<Vec<_>>().join(",")),
                        row.note,
                        row.created_at,
                    ],
                )
            })
            .await
            .map_err(|e| ExecError::Internal(e.to_string()))?;
        if inserted == 0 {
            return Err(ExecError::Conflict(format!(
                "keyid {} is already enrolled",
                entry.keyid
            )));
        }
        let entry = Arc::new(entry);
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.keyid.clone(), entry.clone());
        tracing::info!(keyid = %entry.keyid, claims = %entry.claims, "key enrolled");
        Ok(entry)
    }

    /// Revokes a key; signatures by it are refused from now on. Revoking twice is a no-op.
    pub async fn revoke(&self, keyid: &str) -> Result<Arc<KeyEntry>, ExecError> {
        let current = self
            .get(keyid)
            .ok_or_else(|| ExecError::NotFound(format!("no key {keyid}")))?;
        if current.revoked_at.is_some() {
            return Ok(current);
        }
        let now = crate::now_unix();
        let id = keyid.to_owned();
        self.db
            .call(move |conn| {
                conn.execute(
                    "UPDATE keys SET revoked_at = ?1 WHERE keyid = ?2",
                    rusqlite::params![now, id],
                )
            })
            .await
            .map_err(|e| ExecError::Internal(e.to_string()))?;
        let revoked = Arc::new(KeyEntry {
            revoked_at: Some(now),
            ..(*current).clone()
        });
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(keyid.to_owned(), revoked.clone());
        tracing::info!(%keyid, "key revoked");
        Ok(revoked)
    }
}

/// Keyids: 1-128 characters of `A-Z a-z 0-9 . _ : @ -`, starting with a letter or digit.
pub fn validate_keyid(keyid: &str) -> Result<(), ExecError> {
    // `uid:<n>` names the trusted local peer: a key may not pass for it.
    if keyid.starts_with("uid:") {
        return Err(ExecError::invalid_params(format!(
            "invalid keyid {keyid:?}: uid:<n> names the local owner, not a key"
        )));
    }
    let ok = (1..=128).contains(&keyid.len())
        && keyid.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && keyid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ExecError::invalid_params(format!(
            "invalid keyid {keyid:?}: 1-128 characters of letters, digits and . _ : @ -"
        )))
    }
}
