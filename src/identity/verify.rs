//! Verifying a signed request (DESIGN section 6): which components must be covered,
//! freshness, nonce replay, the body digest, and the key registry.

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, Method, Uri};

use super::registry::Registry;
use super::signature::{self, MessageView};
use crate::error::ExecError;
use crate::intent::Principal;

/// Freshness and replay rules for request signatures.
#[derive(Debug, Clone)]
pub struct SignatureRules {
    /// Signatures whose `created` is older than this are stale (default 300 s).
    pub max_age: Duration,
    /// How far in the future `created` may be (clock skew, default 30 s).
    pub future_skew: Duration,
    /// Whether `nonce` is required (default yes; nonces are remembered for `max_age`).
    pub require_nonce: bool,
    /// Most signatures accepted in one `Signature-Input`.
    pub max_signatures: usize,
    /// Most nonces remembered at once; when full, new signatures are refused (fail closed).
    /// Nonces are kept for `max_age`, so this bounds the sustained rate of signed requests
    /// (default: 1,000,000 per 300 s, 3,333/s, in about 30 MB).
    pub replay_capacity: usize,
}

impl Default for SignatureRules {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(300),
            future_skew: Duration::from_secs(30),
            require_nonce: true,
            max_signatures: 8,
            replay_capacity: 1_000_000,
        }
    }
}

/// The verified signature of a request, kept so the response can be bound to it.
#[derive(Debug, Clone)]
pub struct VerifiedSignature {
    pub label: String,
    pub keyid: String,
}

/// Verifies request signatures against the key registry.
pub struct Verifier {
    registry: Arc<Registry>,
    rules: SignatureRules,
    replay: Mutex<ReplayCache>,
}

fn unauth(msg: impl Into<String>) -> ExecError {
    ExecError::Unauthenticated(msg.into())
}

impl Verifier {
    pub fn new(registry: Arc<Registry>, rules: SignatureRules) -> Self {
        Self {
            registry,
            replay: Mutex::new(ReplayCache::default()),
            rules,
        }
    }

    /// The registry this verifier trusts.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Verifies the request's signature at time `now` (Unix seconds); `body` is the whole body.
    pub fn verify(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<(Principal, VerifiedSignature), ExecError> {
        let input = joined(headers, "signature-input")?;
        let sig = joined(headers, "signature")?;
        let signatures =
            signature::parse_signatures(&input, &sig, self.rules.max_signatures).map_err(|e| unauth(e.0))?;
        // The first signature by an enrolled key is the one that counts.
        let Some((s, key)) = signatures.iter().find_map(|s| {
            s.keyid
                .as_deref()
                .and_then(|k| self.registry.get(k))
                .map(|key| (s, key))
        }) else {
            let keyids: Vec<&str> = signatures.iter().filter_map(|s| s.keyid.as_deref()).collect();
            return Err(match keyids.is_empty() {
                true => unauth("the signature has no keyid parameter"),
                false => ExecError::UnknownKey(format!("keyid {} is not enrolled", keyids.join(", "))),
            });
        };
        if key.revoked_at.is_some() {
            return Err(ExecError::UnknownKey(format!("key {} was revoked", key.keyid)));
        }
        let created = self.check_params(s, now)?;
        for required in required_components(uri, headers, body) {
            if !s.covers(&required) {
                return Err(unauth(format!("the signature must cover {required:?}")));
            }
        }
        if let Some(digest) = headers.get("content-digest") {
            let digest = digest
                .to_str()
                .map_err(|_| unauth("Content-Digest is not visible ASCII"))?;
            signature::verify_content_digest(digest, body).map_err(|e| unauth(e.0))?;
        }
        let view = MessageView::request(method, uri, headers);
        let base = signature::signature_base(&view, None, &s.components, &s.params_line).map_err(|e| unauth(e.0))?;
        signature::verify_ed25519(&key.public_key, &base, &s.signature).map_err(|e| unauth(e.0))?;
        // Only a verified signature may use up a slot in the replay cache.
        if let Some(nonce) = &s.nonce {
            let mut replay = self.replay.lock().unwrap_or_else(|p| p.into_inner());
            let max_age = self.rules.max_age.as_secs() as i64;
            replay.insert(&key.keyid, nonce, created + max_age, now, self.rules.replay_capacity)?;
        }
        Ok((
            key.principal(),
            VerifiedSignature {
                label: s.label.clone(),
                keyid: key.keyid.clone(),
            },
        ))
    }

    /// The signature parameters' rules: `alg`, freshness (`created`, `expires`) and `nonce`.
    /// Returns `created`.
    fn check_params(&self, s: &signature::ParsedSignature, now: i64) -> Result<i64, ExecError> {
        if let Some(alg) = &s.alg
            && alg != "ed25519"
        {
            return Err(unauth(format!("alg {alg:?} is not accepted: only ed25519")));
        }
        let created = s
            .created
            .ok_or_else(|| unauth("the signature has no created parameter"))?;
        let max_age = self.rules.max_age.as_secs() as i64;
        if now - created > max_age {
            return Err(unauth(format!(
                "the signature is stale: created {}s ago (max {max_age}s)",
                now - created
            )));
        }
        if created - now > self.rules.future_skew.as_secs() as i64 {
            return Err(unauth(format!(
                "the signature is from the future: created in {}s",
                created - now
            )));
        }
        if let Some(expires) = s.expires
            && expires <= now
        {
            return Err(unauth("the signature has expired"));
        }
        if self.rules.require_nonce && s.nonce.is_none() {
            return Err(unauth("the signature has no nonce parameter"));
        }
        Ok(created)
    }
}

/// What every request signature must cover: `@method`, `@path`, `@query` when there is
/// one, `content-digest` when there is a body, every `x-hero-*` header present, and
/// `idempotency-key` when present (it decides whether a call runs or is answered from
/// an earlier one, so nobody on the way may add or change it).
pub fn required_components(uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Vec<String> {
    let mut required = vec!["@method".to_owned(), "@path".to_owned()];
    if uri.query().is_some() {
        required.push("@query".to_owned());
    }
    if !body.is_empty() {
        required.push("content-digest".to_owned());
    }
    let mut hero: Vec<String> = headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("x-hero-"))
        .map(str::to_owned)
        .collect();
    hero.sort();
    hero.dedup();
    required.extend(hero);
    if headers.contains_key("idempotency-key") {
        required.push("idempotency-key".to_owned());
    }
    required
}

/// A header's field lines joined with ", " (RFC 9110 section 5.3).
fn joined(headers: &HeaderMap, name: &str) -> Result<String, ExecError> {
    let values: Result<Vec<&str>, _> = headers.get_all(name).iter().map(|v| v.to_str()).collect();
    let values = values.map_err(|_| unauth(format!("{name} is not visible ASCII")))?;
    if values.is_empty() {
        return Err(unauth(format!("{name} is missing")));
    }
    Ok(values.join(", "))
}

/// Nonces seen within `max_age`, bounded. A nonce is remembered as a 64-bit keyed hash
/// (SipHash, random key per process) of its keyid and value: about 30 bytes per nonce with
/// the set's and the queue's overhead, where the two owned strings it replaced cost about
/// 250. A collision can only refuse a fresh signature as a replay (never accept a replay),
/// and cannot be aimed at without the key.
#[derive(Default)]
struct ReplayCache {
    hasher: std::hash::RandomState,
    seen: HashSet<u64>,
    /// Insertion order with expiry, for pruning.
    order: VecDeque<(i64, u64)>,
}

impl ReplayCache {
    fn insert(&mut self, keyid: &str, nonce: &str, expires: i64, now: i64, capacity: usize) -> Result<(), ExecError> {
        while let Some((expiry, _)) = self.order.front() {
            if *expiry > now {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.seen.remove(&key);
            }
        }
        let key = self.hasher.hash_one((keyid, nonce));
        if self.seen.contains(&key) {
            return Err(unauth("replayed signature: this nonce was already used"));
        }
        if self.seen.len() >= capacity {
            return Err(unauth(
                "too many signatures in flight to remember their nonces; retry shortly",
            ));
        }
        self.seen.insert(key);
        self.order.push_back((expires, key));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_cache_remembers_then_forgets() {
        let mut cache = ReplayCache::default();
        cache.insert("k", "n1", 100, 0, 10).unwrap();
        assert!(cache.insert("k", "n1", 100, 50, 10).is_err(), "replay");
        cache.insert("other", "n1", 100, 50, 10).unwrap();
        cache.insert("k", "n1", 200, 100, 10).unwrap(); // expired and pruned: usable again
        let mut full = ReplayCache::default();
        full.insert("k", "a", 100, 0, 1).unwrap();
        assert!(full.insert("k", "b", 100, 0, 1).is_err(), "fail closed when full");
    }

    #[test]
    fn coverage_rules() {
        let mut headers = HeaderMap::new();
        headers.insert("x-hero-context", "1".parse().unwrap());
        headers.insert("x-hero-claims", "a".parse().unwrap());
        let uri: Uri = "/rpc?x=1".parse().unwrap();
        assert_eq!(
            required_components(&uri, &headers, b"{}"),
            [
                "@method",
                "@path",
                "@query",
                "content-digest",
                "x-hero-claims",
                "x-hero-context"
            ]
        );
        assert_eq!(
            required_components(&"/rpc".parse().unwrap(), &HeaderMap::new(), b""),
            ["@method", "@path"]
        );
    }
}
