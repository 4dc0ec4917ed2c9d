//! The catalog: every capability reachable on this node (DESIGN section 9).
//!
//! A capability is `<service>.<method>` of any `<socket_dir>/<service>/rpc.sock` that
//! answers `rpc.discover`. Readers take a cheap snapshot (`Arc`); a refresh builds a
//! new snapshot off to the side and swaps it in. Specs whose fingerprint did not change
//! are reused without re-parsing.

mod aggregate;
mod parse;
mod schema;
pub mod spec;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::upstream::Upstream;
use crate::upstream::socket::{OwnSockets, is_target_name};
pub use spec::{Capability, HeroIntent, ServiceSpec, SpecLimits};

/// A consistent view of the catalog at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Services that answered `rpc.discover`, by name.
    pub services: BTreeMap<String, Arc<ServiceSpec>>,
    /// Services with a socket that did not answer usable discovery, and why.
    pub unavailable: BTreeMap<String, String>,
    /// Services that were in the catalog and left it; calls to them get -32020.
    pub departed: BTreeSet<String>,
    /// Bumped whenever the set of capabilities changes.
    pub generation: u64,
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Arc<Capability>),
    /// The service is known but has no such method.
    UnknownMethod,
    /// Nothing by that name has ever been seen.
    UnknownService,
    /// The service exists (socket present, or seen before) but cannot be reached.
    Unavailable(String),
}

/// What a refresh changed.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RefreshReport {
    pub services: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unavailable: BTreeMap<String, String>,
    pub capabilities: usize,
}

/// The live catalog.
pub struct Catalog {
    upstream: Upstream,
    socket_dir: PathBuf,
    /// The executor's own sockets, never discovered as a target.
    own: Arc<OwnSockets>,
    /// What one service's spec may cost.
    limits: SpecLimits,
    discover_timeout: Duration,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Serializes publishing (not probing): two refreshes never race to swap snapshots.
    /// Holds, per service, when the look behind its published finding began.
    publish_lock: tokio::sync::Mutex<HashMap<String, u64>>,
    /// Counts looks at the socket directory (refreshes), to order their findings.
    looks: std::sync::atomic::AtomicU64,
    /// Services whose probe failed, not probed again until their back-off passes.
    backoff: Backoff,
    /// One parse per service at a time, and the spec each parsed last.
    parsing: Parsing,
    changes: tokio::sync::watch::Sender<u64>,
    /// Names the sources file declares: published by [`Catalog::publish_source`], never
    /// probed as hero sockets (a socket of that name is ignored with a warning).
    sources: RwLock<BTreeSet<String>>,
}

impl Catalog {
    /// An empty catalog over `socket_dir`; call [`Catalog::refresh`] to fill it.
    pub fn new(upstream: Upstream, socket_dir: PathBuf, discover_timeout: Duration, own: OwnSockets) -> Self {
        Self {
            upstream,
            socket_dir,
            own: Arc::new(own),
            limits: SpecLimits::default(),
            discover_timeout,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            publish_lock: tokio::sync::Mutex::new(HashMap::new()),
            looks: std::sync::atomic::AtomicU64::new(0),
            backoff: Backoff::default(),
            parsing: Parsing::default(),
            changes: tokio::sync::watch::channel(0).0,
            sources: RwLock::new(BTreeSet::new()),
        }
    }

    /// Bounds what one service's spec may cost (default [`SpecLimits::default`]).
    pub fn with_spec_limits(mut self, limits: SpecLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A receiver that sees the generation whenever the set of capabilities changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Finds a capability. A miss on a service whose socket exists triggers discovery of
    /// that service first, so a call right after a service starts does not race the watcher.
    pub async fn lookup(&self, service: &str, method: &str) -> Lookup {
        let found = lookup_in(&self.snapshot(), service, method);
        if matches!(found, Lookup::Found(_) | Lookup::UnknownMethod)
            || self.is_source(service)
            || !self.socket_path(service).exists()
        {
            return found;
        }
        self.refresh_only(&[service.to_owned()]).await;
        lookup_in(&self.snapshot(), service, method)
    }

    /// Whether `name` is declared by the sources file.
    pub fn is_source(&self, name: &str) -> bool {
        self.sources.read().unwrap_or_else(|p| p.into_inner()).contains(name)
    }

    /// The names the sources file declares now.
    pub fn set_source_names(&self, names: &[String]) {
        *self.sources.write().unwrap_or_else(|p| p.into_inner()) = names.iter().cloned().collect();
    }

    /// Publishes a source's capabilities (`Ok`), why it serves none now (`Err`), or its
    /// removal (`None`).
    pub async fn publish_source(&self, name: &str, spec: Option<Result<Arc<ServiceSpec>, String>>) {
        self.update(|services, unavailable, _| {
            services.remove(name);
            unavailable.remove(name);
            match spec {
                Some(Ok(spec)) => drop(services.insert(name.to_owned(), spec)),
                Some(Err(why)) => drop(unavailable.insert(name.to_owned(), why)),
                None => {}
            }
        })
        .await;
    }

    fn socket_path(&self, service: &str) -> PathBuf {
        self.socket_dir.join(service).join("rpc.sock")
    }

    /// Rediscovers every service under the socket directory.
    pub async fn refresh(&self) -> RefreshReport {
        self.refresh_inner(None).await
    }

    /// Rediscovers only the named services, keeping the rest of the catalog as it is.
    pub async fn refresh_only(&self, services: &[String]) -> RefreshReport {
        self.refresh_inner(Some(services)).await
    }

    /// Probes the candidates (all of the socket directory, or `only` these) without holding
    /// any lock, and publishes each probe's finding onto the latest snapshot as it comes in:
    /// a service that never answers delays nobody but its own entry. On a miss (`only`), a
    /// service whose probe failed is not probed again until its back-off passes (1 s,
    /// doubling up to a minute), so calls to a service that never answers do not each wait.
    async fn refresh_inner(&self, only: Option<&[String]>) -> RefreshReport {
        // Findings are ordered by when their look began: an older one never overwrites a
        // newer one that was published first.
        let started = self.looks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let old = self.snapshot();
        let mut candidates: Vec<String> = match only {
            Some(names) => names.iter().filter(|n| is_target_name(n)).cloned().collect(),
            None => self.scan_socket_dir().await,
        };
        candidates.retain(|name| {
            let source = self.is_source(name);
            if source && only.is_none() {
                tracing::warn!(service = %name, "a hero socket has the name of a declared source; ignored");
            }
            !source
        });
        if only.is_none() {
            // Gone since the last look (a service published meanwhile by a miss stays).
            self.update(|services, unavailable, published| {
                for name in old.services.keys().chain(old.unavailable.keys()) {
                    if self.is_source(name) {
                        continue; // published by the sources, not by looking at sockets
                    }
                    if !candidates.contains(name) && published.get(name).is_none_or(|at| *at < started) {
                        services.remove(name);
                        unavailable.remove(name);
                        published.insert(name.clone(), started);
                    }
                }
            })
            .await;
        }
        let previous = &old;
        let mut probes: futures::stream::FuturesUnordered<_> = candidates
            .iter()
            .filter(|name| only.is_none() || self.backoff.due(name))
            .map(|name| async move { (name, self.probe(name, previous.services.get(name)).await) })
            .collect();
        while let Some((name, result)) = futures::StreamExt::next(&mut probes).await {
            let result = match result {
                Ok(spec) => {
                    self.backoff.succeeded(name);
                    Some(Ok(spec))
                }
                Err(why) if self.socket_path(name).exists() => {
                    tracing::warn!(service = %name, error = %why, "service not added to the catalog");
                    self.backoff.failed(name);
                    Some(Err(why))
                }
                Err(_) => None,
            };
            self.update(|services, unavailable, published| {
                if published.get(name).is_some_and(|at| *at > started) {
                    return; // a newer look at this service was published meanwhile
                }
                published.insert(name.clone(), started);
                services.remove(name);
                unavailable.remove(name);
                match result {
                    Some(Ok(spec)) => drop(services.insert(name.clone(), spec)),
                    Some(Err(why)) => drop(unavailable.insert(name.clone(), why)),
                    None => {}
                }
            })
            .await;
        }
        let now = self.snapshot();
        diff(&old, &now.services, &now.unavailable)
    }

    /// Applies `change` to the latest snapshot's services (and to when each service's
    /// published finding was looked at), and publishes the result.
    async fn update(
        &self,
        change: impl FnOnce(
            &mut BTreeMap<String, Arc<ServiceSpec>>,
            &mut BTreeMap<String, String>,
            &mut HashMap<String, u64>,
        ),
    ) {
        let mut published = self.publish_lock.lock().await;
        let latest = self.snapshot();
        let (mut services, mut unavailable) = (latest.services.clone(), latest.unavailable.clone());
        change(&mut services, &mut unavailable, &mut published);
        // Only services that exist (or were just seen to be gone) are remembered.
        published.retain(|name, _| {
            services.contains_key(name) || unavailable.contains_key(name) || latest.services.contains_key(name)
        });
        self.publish(&latest, services, unavailable);
    }

    /// Swaps in the next snapshot and tells subscribers when the capabilities changed.
    fn publish(
        &self,
        latest: &Snapshot,
        services: BTreeMap<String, Arc<ServiceSpec>>,
        unavailable: BTreeMap<String, String>,
    ) {
        let report = diff(latest, &services, &unavailable);
        let mut departed: BTreeSet<String> = latest.departed.clone();
        departed.extend(report.removed.iter().cloned());
        departed.retain(|name| !services.contains_key(name));
        let changed = !report.added.is_empty() || !report.removed.is_empty() || !report.changed.is_empty();
        let generation = latest.generation + u64::from(changed);
        let next = Snapshot {
            services,
            unavailable,
            departed,
            generation,
        };
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        if changed {
            tracing::info!(
                added = ?report.added, removed = ?report.removed, changed = ?report.changed,
                capabilities = report.capabilities, "catalog changed"
            );
            self.changes.send_replace(generation);
        }
    }

    /// Names of subdirectories that hold a socket that may be called as a target
    /// ([`OwnSockets::target`]). A second name for a socket passes this look at the files,
    /// but not discovery: the connection's check that the listener is bound at that very
    /// path refuses it ([`crate::upstream::socket::check_peer`]).
    async fn scan_socket_dir(&self) -> Vec<String> {
        let (dir, own) = (self.socket_dir.clone(), self.own.clone());
        let scan = move || -> Vec<String> {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return Vec::new();
            };
            let mut names = Vec::new();
            for name in entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
            {
                match own.target(&dir, &name) {
                    Ok(_) => names.push(name),
                    Err(why) if is_target_name(&name) && dir.join(&name).join("rpc.sock").exists() => {
                        tracing::warn!(service = %name, %why, "not a target");
                    }
                    Err(_) => {}
                }
            }
            names.sort();
            names
        };
        tokio::task::spawn_blocking(scan).await.unwrap_or_default()
    }

    /// Discovers one service, reusing the previous parse when the spec is unchanged.
    async fn probe(&self, name: &str, previous: Option<&Arc<ServiceSpec>>) -> Result<Arc<ServiceSpec>, String> {
        let raw = self
            .upstream
            .discover(name, self.discover_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let fingerprint = hex::encode(Sha256::digest(raw.as_bytes()));
        if let Some(previous) = previous.filter(|p| p.fingerprint == fingerprint) {
            return Ok(previous.clone());
        }
        // One parse of a service at a time, and none of a spec just parsed: two refreshes
        // racing (the watch and a `catalog.refresh`) must not each build a large catalog.
        let turn = self.parsing.turn(name);
        let _turn = turn.lock().await;
        if let Some(parsed) = self.parsing.recent(name, &fingerprint) {
            return Ok(parsed);
        }
        let (service, limits) = (name.to_owned(), self.limits);
        // Parsing and compiling schemas is CPU work: keep it off the async threads.
        let parsed = tokio::task::spawn_blocking(move || spec::parse_service(&service, &raw, fingerprint, &limits))
            .await
            .map_err(|e| format!("parser task failed: {e}"))??;
        for warning in &parsed.warnings {
            tracing::warn!(service = %name, %warning, "method skipped or degraded");
        }
        let parsed = Arc::new(parsed);
        self.parsing.keep(name, &parsed);
        Ok(parsed)
    }
}

/// Per service: a lock its parses take turns on, and the spec it parsed last (so a parse
/// that waited its turn reuses what the one before it built).
#[derive(Default)]
struct Parsing {
    services: Mutex<HashMap<String, ParseTurn>>,
}

/// A service's parse lock, and the spec it parsed last (while the catalog holds it).
type ParseTurn = (Arc<tokio::sync::Mutex<()>>, Option<Weak<ServiceSpec>>);

impl Parsing {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ParseTurn>> {
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn turn(&self, service: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.lock().entry(service.to_owned()).or_default().0.clone()
    }

    /// The spec last parsed for `service`, if it is still held and has this fingerprint.
    fn recent(&self, service: &str, fingerprint: &str) -> Option<Arc<ServiceSpec>> {
        let services = self.lock();
        let spec = services.get(service)?.1.as_ref()?.upgrade()?;
        (spec.fingerprint == fingerprint).then_some(spec)
    }

    fn keep(&self, service: &str, spec: &Arc<ServiceSpec>) {
        self.lock().entry(service.to_owned()).or_default().1 = Some(Arc::downgrade(spec));
    }
}

/// Per service, when its probe may run again after failing: 1 s, doubling up to a minute.
#[derive(Default)]
struct Backoff {
    services: Mutex<HashMap<String, (Instant, Duration)>>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MOST: Duration = Duration::from_secs(60);

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Duration)>> {
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn due(&self, service: &str) -> bool {
        self.lock()
            .get(service)
            .is_none_or(|(until, _)| Instant::now() >= *until)
    }

    fn failed(&self, service: &str) {
        let mut services = self.lock();
        let delay = services
            .get(service)
            .map_or(Self::FIRST, |(_, delay)| (*delay * 2).min(Self::MOST));
        services.insert(service.to_owned(), (Instant::now() + delay, delay));
    }

    fn succeeded(&self, service: &str) {
        self.lock().remove(service);
    }
}

fn lookup_in(snapshot: &Snapshot, service: &str, method: &str) -> Lookup {
    match snapshot.services.get(service) {
        Some(spec) => match spec.capabilities.get(method) {
            Some(cap) => Lookup::Found(cap.clone()),
            None => Lookup::UnknownMethod,
        },
        None => match snapshot.unavailable.get(service) {
            Some(why) => Lookup::Unavailable(why.clone()),
            None if snapshot.departed.contains(service) => {
                Lookup::Unavailable(format!("{service} left the catalog (its socket is gone)"))
            }
            None => Lookup::UnknownService,
        },
    }
}

fn diff(
    old: &Snapshot,
    services: &BTreeMap<String, Arc<ServiceSpec>>,
    unavailable: &BTreeMap<String, String>,
) -> RefreshReport {
    let mut report = RefreshReport {
        services: services.keys().cloned().collect(),
        unavailable: unavailable.clone(),
        capabilities: services.values().map(|s| s.capabilities.len()).sum(),
        ..RefreshReport::default()
    };
    for (name, spec) in services {
        match old.services.get(name) {
            None => report.added.push(name.clone()),
            Some(prev) if prev.fingerprint != spec.fingerprint => report.changed.push(name.clone()),
            Some(_) => {}
        }
    }
    report.removed = old
        .services
        .keys()
        .filter(|name| !services.contains_key(*name))
        .cloned()
        .collect();
    report
}

impl Snapshot {
    /// Every capability, in name order.
    pub fn capabilities(&self) -> impl Iterator<Item = &Arc<Capability>> {
        self.services.values().flat_map(|s| s.capabilities.values())
    }

    /// Capabilities matching `query`, best first: name matches rank above description
    /// matches; every term must match somewhere.
    pub fn search(
        &self,
        query: &str,
        service: Option<&str>,
        limit: usize,
        visible: impl Fn(&Capability) -> bool,
    ) -> Vec<Arc<Capability>> {
        let terms: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
        let in_scope = |cap: &&Arc<Capability>| service.is_none_or(|s| cap.service == s) && visible(cap);
        if terms.is_empty() {
            return self.capabilities().filter(in_scope).take(limit).cloned().collect();
        }
        let mut scored: Vec<(u32, &Arc<Capability>)> = self
            .capabilities()
            .filter(in_scope)
            .filter_map(|cap| score(cap, &terms).map(|s| (s, cap)))
            .collect();
        scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.name.cmp(&b.1.name)));
        scored.into_iter().take(limit).map(|(_, cap)| cap.clone()).collect()
    }

    /// The aggregated OpenRPC document of the given capabilities (prefixed names).
    pub fn openrpc<'a>(&self, caps: impl Iterator<Item = &'a Arc<Capability>>) -> serde_json::Value {
        aggregate::document(self, caps)
    }
}

/// Relevance of one capability for all `terms`, or `None` if a term matches nothing.
fn score(cap: &Capability, terms: &[String]) -> Option<u32> {
    let (name, text) = (&cap.search_name, &cap.search_text);
    let mut total = 0;
    for term in terms {
        let in_name = if name == term {
            1000
        } else if name.split('.').any(|seg| seg == term) {
            400
        } else if name.starts_with(term.as_str()) {
            300
        } else if name.contains(term.as_str()) {
            200
        } else {
            0
        };
        let in_text = if text.contains(term.as_str()) { 10 } else { 0 };
        if in_name + in_text == 0 {
            return None;
        }
        total += in_name + in_text;
    }
    Some(total)
}
