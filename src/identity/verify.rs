//! Verifying a signed request (DESIGN section 6): which components must be covered,
//! freshness, nonce replay, the body digest, and the key registry.

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, Method, Uri};

use super::registry::{KeyEntry, Registry};
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

/// The signature headers of a request as [`Verifier::precheck`] parsed them, kept in the
/// request so the full verification does not parse them again.
#[derive(Debug, Clone)]
pub struct Parsed(Arc<Vec<signature::ParsedSignature>>);

/// A request whose signature verified, and whose nonce is not yet remembered.
#[derive(Debug)]
pub struct Verified {
    pub principal: Principal,
    pub signature: VerifiedSignature,
    nonce: Option<Nonce>,
}

/// A nonce to remember: its keyed hash, and until when.
#[derive(Debug, Clone, Copy)]
struct Nonce {
    key: u64,
    expires: i64,
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

/// Why a signed request was refused, as a metric label ([`crate::metrics::SIGNATURE_REASONS`]),
/// read from the refusal this module made; `None` for what is not about the signature.
pub fn failure_reason(error: &ExecError) -> Option<&'static str> {
    Some(match error {
        ExecError::UnknownKey(msg) if msg.contains("revoked") => "revoked_key",
        ExecError::UnknownKey(_) => "unknown_key",
        ExecError::Unauthenticated(msg) => {
            let has = |word: &str| msg.contains(word);
            if has("replayed") {
                "replayed"
            } else if has("stale") || has("future") || has("expired") {
                "expired"
            } else if has("alg ") {
                "algorithm"
            } else if has("must cover") {
                "coverage"
            } else if has("igest") {
                "digest"
            } else if has("does not verify") {
                "bad_signature"
            } else {
                "malformed"
            }
        }
        _ => return None,
    })
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

    /// The checks a signature passes before its body is read: it parses, names an enrolled
    /// key that is not revoked, and its parameters are fresh. Returns the keyid it claims
    /// (not yet proven: [`Verifier::verify`] does that with the body).
    pub fn precheck(&self, headers: &HeaderMap, now: i64) -> Result<(String, Parsed), ExecError> {
        let signatures = self.parse(headers)?;
        let (s, key) = self.first_enrolled(&signatures)?;
        self.check_params(s, now)?;
        Ok((key.keyid.clone(), Parsed(Arc::new(signatures))))
    }

    fn parse(&self, headers: &HeaderMap) -> Result<Vec<signature::ParsedSignature>, ExecError> {
        let input = joined(headers, "signature-input")?;
        let sig = joined(headers, "signature")?;
        signature::parse_signatures(&input, &sig, self.rules.max_signatures).map_err(|e| unauth(e.0))
    }

    /// The first signature by an enrolled key (the one that counts), and the key; a revoked
    /// or unknown key is a failed signature.
    fn first_enrolled<'s>(
        &self,
        signatures: &'s [signature::ParsedSignature],
    ) -> Result<(&'s signature::ParsedSignature, Arc<KeyEntry>), ExecError> {
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
        Ok((s, key))
    }

    /// Verifies the request's signature at time `now` (Unix seconds); `body` is the whole body.
    /// `parsed` is what [`Verifier::precheck`] parsed of the same headers, if it ran.
    pub fn verify(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
        parsed: Option<&Parsed>,
    ) -> Result<Verified, ExecError> {
        let owned;
        let signatures: &[signature::ParsedSignature] = match parsed {
            Some(parsed) => &parsed.0,
            None => {
                owned = self.parse(headers)?;
                &owned
            }
        };
        let (s, key) = self.first_enrolled(signatures)?;
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
        // A replay is refused here; the nonce is remembered only once the request is also
        // within its principal's rate ([`Verifier::remember`]), so refused requests cost no slot.
        let nonce = match &s.nonce {
            Some(nonce) => {
                let mut replay = self.replay.lock().unwrap_or_else(|p| p.into_inner());
                let max_age = self.rules.max_age.as_secs() as i64;
                // Kept one second longer than the signature can be accepted (`now - created >
                // max_age` is stale), so no nonce is forgotten while its signature still counts.
                Some(replay.check(&key.keyid, nonce, created + max_age + 1, now)?)
            }
            None => None,
        };
        Ok(Verified {
            principal: key.principal(),
            signature: VerifiedSignature {
                label: s.label.clone(),
                keyid: key.keyid.clone(),
            },
            nonce,
        })
    }

    /// Remembers the nonce of a verified request, so it cannot be replayed; fails if the
    /// same nonce was remembered meanwhile, or the cache is full (fail closed).
    pub fn remember(&self, verified: &Verified, now: i64) -> Result<(), ExecError> {
        let Some(nonce) = verified.nonce else {
            return Ok(());
        };
        let mut replay = self.replay.lock().unwrap_or_else(|p| p.into_inner());
        replay.insert(nonce, now, self.rules.replay_capacity)
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
    /// Forgets nonces whose signatures can no longer be accepted.
    fn prune(&mut self, now: i64) {
        while let Some((expiry, _)) = self.order.front() {
            if *expiry > now {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.seen.remove(&key);
            }
        }
    }

    /// The nonce of `keyid`, to remember until `expires`, if it was not used yet.
    fn check(&mut self, keyid: &str, nonce: &str, expires: i64, now: i64) -> Result<Nonce, ExecError> {
        self.prune(now);
        let key = self.hasher.hash_one((keyid, nonce));
        if self.seen.contains(&key) {
            return Err(unauth("replayed signature: this nonce was already used"));
        }
        Ok(Nonce { key, expires })
    }

    fn insert(&mut self, nonce: Nonce, now: i64, capacity: usize) -> Result<(), ExecError> {
        self.prune(now);
        let Nonce { key, expires } = nonce;
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
        let remember = |cache: &mut ReplayCache, keyid: &str, nonce: &str, expires: i64, now: i64, cap: usize| {
            let ticket = cache.check(keyid, nonce, expires, now)?;
            cache.insert(ticket, now, cap)
        };
        remember(&mut cache, "k", "n1", 100, 0, 10).unwrap();
        assert!(remember(&mut cache, "k", "n1", 100, 50, 10).is_err(), "replay");
        remember(&mut cache, "other", "n1", 100, 50, 10).unwrap();
        assert!(
            remember(&mut cache, "k", "n1", 200, 99, 10).is_err(),
            "kept until it expires"
        );
        remember(&mut cache, "k", "n1", 200, 100, 10).unwrap(); // expired and pruned: usable again
        let mut full = ReplayCache::default();
        remember(&mut full, "k", "a", 100, 0, 1).unwrap();
        assert!(
            remember(&mut full, "k", "b", 100, 0, 1).is_err(),
            "fail closed when full"
        );
        // Checked but not remembered (refused later, e.g. rate limited): usable again.
        let mut cache = ReplayCache::default();
        cache.check("k", "n", 100, 0).unwrap();
        remember(&mut cache, "k", "n", 100, 1, 10).unwrap();
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
