//! Keeps the catalog fresh: a watch on the socket directory (a service's socket appears
//! or disappears) plus a periodic refresh for anything a watch cannot see (a service
//! restarted with a new spec on the same socket).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Catalog;

/// Events arriving within this window are folded into one refresh.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Runs until the returned handle is aborted (the server aborts it at shutdown).
pub fn spawn(catalog: Arc<Catalog>, socket_dir: PathBuf, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        // Keep the watcher alive for as long as the task runs.
        let _watcher = watch_dir(&socket_dir, tx);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick fires at once; the server refreshed already
        loop {
            tokio::select! {
                Some(()) = rx.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = ticker.tick() => {}
            }
            catalog.refresh().await;
        }
    })
}

/// Watches `dir` recursively; sends a unit for every event that may change the set of
/// services. Returns `None` (periodic refresh only) if the platform refuses the watch.
fn watch_dir(dir: &Path, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    let own = dir.join(crate::SERVICE_NAME);
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if !matches!(
            event.kind,
            EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(notify::event::ModifyKind::Name(_))
        ) {
            return;
        }
        if event.paths.iter().any(|p| !p.starts_with(&own)) {
            let _ = tx.send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the socket directory; relying on periodic refresh");
            return None;
        }
    };
    if let Err(e) = watcher.watch(dir, RecursiveMode::Recursive) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the socket directory; relying on periodic refresh");
        return None;
    }
    Some(watcher)
}
