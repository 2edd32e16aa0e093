//! Wake-ups from the kernel's file events, through `notify`.
//!
//! Events are hints, never facts: they say "look at this path soon". The tailer's own
//! `stat` sweep is the source of truth, so a lost, merged or reordered event costs latency,
//! never data. One non-recursive watch per directory sees its files being written,
//! created, renamed and deleted, and survives the rotation of any of them. All of notify
//! stays in this file, so that moving to another version touches nothing else.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// What the events received so far ask for.
#[derive(Debug, Default)]
pub struct Hints {
    /// Paths written to.
    pub written: HashSet<PathBuf>,
    /// Something was created, renamed or removed (or events were lost): look for files.
    pub rescan: bool,
    /// Events may have been lost (a queue overflow, a watcher error, a watched directory
    /// gone): sweep every file now.
    pub lost: bool,
}

pub struct Wakeups {
    watcher: RecommendedWatcher,
    events: Receiver<notify::Result<notify::Event>>,
    watched: HashSet<PathBuf>,
    /// Directories that could not be watched, so the failure is logged once.
    failed: HashSet<PathBuf>,
    pending: Hints,
}

impl Wakeups {
    /// Starts the OS watcher. `None` when the platform refuses (then only the sweep runs).
    pub fn new() -> Option<Self> {
        let (tx, events) = channel();
        let watcher = notify::recommended_watcher(move |event| {
            // The receiver is gone only when the tailer is dropped; nothing to do then.
            let _ = tx.send(event);
        });
        match watcher {
            Ok(watcher) => Some(Self {
                watcher,
                events,
                watched: HashSet::new(),
                failed: HashSet::new(),
                pending: Hints::default(),
            }),
            Err(error) => {
                tracing::warn!(%error, "Cannot watch files for changes; polling only.");
                None
            }
        }
    }

    /// Watches exactly `dirs` (adding and removing watches as needed). Returns how many
    /// directories could not be watched.
    pub fn sync(&mut self, dirs: &HashSet<PathBuf>) -> usize {
        let gone: Vec<PathBuf> = self.watched.difference(dirs).cloned().collect();
        for dir in gone {
            // The directory may already be gone with its watch; that is fine.
            let _ = self.watcher.unwatch(&dir);
            self.watched.remove(&dir);
        }
        let mut failures = 0;
        for dir in dirs {
            if self.watched.contains(dir) {
                continue;
            }
            match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.failed.remove(dir);
                    self.watched.insert(dir.clone());
                }
                Err(error) => {
                    failures += 1;
                    if self.failed.insert(dir.clone()) {
                        tracing::warn!(
                            dir = %dir.display(),
                            %error,
                            "Cannot watch a directory; its files are polled instead."
                        );
                    }
                }
            }
        }
        failures
    }

    /// Waits up to `timeout` for an event. Returns whether one arrived.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        match self.events.recv_timeout(timeout) {
            Ok(event) => {
                self.note(event);
                true
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => false,
        }
    }

    /// Takes every hint received so far.
    pub fn take(&mut self) -> Hints {
        while let Ok(event) = self.events.try_recv() {
            self.note(event);
        }
        std::mem::take(&mut self.pending)
    }

    fn note(&mut self, event: notify::Result<notify::Event>) {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::debug!(%error, "File watcher error; rescanning and sweeping.");
                self.pending.rescan = true;
                self.pending.lost = true;
                return;
            }
        };
        if event.need_rescan() {
            // The kernel's queue overflowed: write hints were dropped.
            self.pending.lost = true;
        }
        // A watched directory that was removed or renamed has lost its watch (the kernel
        // drops it, or it now follows the moved directory): forget it, so that the next
        // sync watches the path again (or counts a failure and the tailer sweeps often).
        if matches!(
            event.kind,
            EventKind::Remove(_) | EventKind::Modify(notify::event::ModifyKind::Name(_))
        ) {
            for path in &event.paths {
                if self.watched.remove(path) {
                    let _ = self.watcher.unwatch(path);
                    self.pending.lost = true;
                }
            }
        }
        match event.kind {
            EventKind::Modify(notify::event::ModifyKind::Data(_))
            | EventKind::Modify(notify::event::ModifyKind::Any)
            | EventKind::Access(notify::event::AccessKind::Close(_)) => {
                self.pending.written.extend(event.paths);
            }
            EventKind::Access(_) => {}
            _ => {
                // Create, remove, rename, metadata changes and queue overflows.
                self.pending.rescan = true;
                self.pending.written.extend(event.paths);
            }
        }
    }
}
