//! Following the PBX's configuration: inotify (through `notify`) on the
//! directories of every file discovery read, debounced, so an edit takes effect
//! within a fraction of a second and a burst of writes is read once.

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Quiet time after the last change before the tree is read again: editors
/// write a file in several steps, and FreePBX rewrites a dozen files at once.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

pub struct ConfigWatcher {
    watcher: RecommendedWatcher,
    events: mpsc::UnboundedReceiver<PathBuf>,
    dirs: BTreeSet<PathBuf>,
    /// Changes seen but not yet reported: kept here so that [`Self::changed`]
    /// is cancellation-safe inside `select!` (a tick may drop it mid-debounce).
    pending: Vec<PathBuf>,
}

impl ConfigWatcher {
    pub fn new() -> notify::Result<ConfigWatcher> {
        let (tx, events) = mpsc::unbounded_channel();
        let watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                // Reading a file is an event too (open, close-after-read):
                // rediscovery itself would trigger the next one, forever.
                Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => {}
                Ok(event) => {
                    for path in event.paths {
                        let _ = tx.send(path);
                    }
                }
                Err(e) => warn!(error = %e, "config watcher error"),
            })?;
        Ok(ConfigWatcher {
            watcher,
            events,
            dirs: BTreeSet::new(),
            pending: Vec::new(),
        })
    }

    /// Watches the directories holding `files` (and `roots`), so new files
    /// matching an include glob, renames and editors' replace-by-rename are all
    /// seen. Directories no longer needed are dropped. True when a directory
    /// was newly watched: an edit there between the read and now was missed,
    /// so the caller reads again.
    pub fn follow(&mut self, roots: &[&Path], files: &[PathBuf]) -> bool {
        let mut wanted: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        wanted.extend(roots.iter().map(|r| r.to_path_buf()));
        wanted.retain(|d| d.is_dir());
        for gone in self.dirs.difference(&wanted).cloned().collect::<Vec<_>>() {
            let _ = self.watcher.unwatch(&gone);
            self.dirs.remove(&gone);
        }
        let mut added = false;
        for dir in wanted {
            if !self.dirs.contains(&dir) {
                match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        debug!(dir = %dir.display(), "watching");
                        self.dirs.insert(dir);
                        added = true;
                    }
                    Err(e) => warn!(dir = %dir.display(), error = %e, "cannot watch"),
                }
            }
        }
        added
    }

    /// Waits for a change, then for [`DEBOUNCE`] of quiet. Returns the paths
    /// that changed. Cancellation-safe: what was received before a cancel is
    /// reported by the next call.
    pub async fn changed(&mut self) -> Vec<PathBuf> {
        if self.pending.is_empty() {
            match self.events.recv().await {
                Some(p) => self.pending.push(p),
                None => std::future::pending().await,
            }
        }
        while let Ok(Some(p)) = tokio::time::timeout(DEBOUNCE, self.events.recv()).await {
            self.pending.push(p);
        }
        let mut paths = std::mem::take(&mut self.pending);
        paths.sort();
        paths.dedup();
        paths
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_survives_a_cancelled_wait() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pjsip.conf");
        std::fs::write(&file, "[a]\n").unwrap();
        let mut w = ConfigWatcher::new().unwrap();
        w.follow(&[], std::slice::from_ref(&file));
        std::fs::write(&file, "[b]\n").unwrap();
        // Cancelled in the middle of the debounce, as a daemon tick does.
        tokio::select! {
            _ = w.changed() => panic!("the debounce should still be running"),
            _ = tokio::time::sleep(DEBOUNCE / 3) => {}
        }
        let paths = tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .expect("the change was lost");
        assert!(paths.contains(&file), "{paths:?}");
    }
}
