//! A harness that drives the real tailer over real files and records what it reads.
//!
//! Lines are recorded as the run loop will treat them: a line counts once the checkpoint
//! covering it is committed to the state store. `crash` drops everything read since the
//! last commit, exactly like a kill -9 between reading and committing.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chattail::agent::state_rows::{commit_checkpoints, saved_files};
use chattail::path_glob::PathGlob;
use chattail::store::Store;
use chattail::tail::{LineOrigin, Rotation, StartAt, TailEvents, TailOptions, Tailer, WatchSpec};

/// The tailer's events, counted (since the harness was made, across restarts).
#[derive(Debug, Default)]
pub struct EventCounts {
    renames: AtomicU64,
    truncations: AtomicU64,
    copies_recovered: AtomicU64,
    lines_cut: AtomicU64,
    files_released: AtomicU64,
}

impl EventCounts {
    pub fn renames(&self) -> u64 {
        self.renames.load(Ordering::Relaxed)
    }
    pub fn truncations(&self) -> u64 {
        self.truncations.load(Ordering::Relaxed)
    }
    pub fn copies_recovered(&self) -> u64 {
        self.copies_recovered.load(Ordering::Relaxed)
    }
    pub fn lines_cut(&self) -> u64 {
        self.lines_cut.load(Ordering::Relaxed)
    }
    pub fn files_released(&self) -> u64 {
        self.files_released.load(Ordering::Relaxed)
    }
}

impl TailEvents for EventCounts {
    fn rotated(&self, _spec: usize, kind: Rotation) {
        match kind {
            Rotation::Renamed => &self.renames,
            Rotation::Truncated => &self.truncations,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
    fn copy_recovered(&self, _spec: usize) {
        self.copies_recovered.fetch_add(1, Ordering::Relaxed);
    }
    fn line_cut(&self, _spec: usize) {
        self.lines_cut.fetch_add(1, Ordering::Relaxed);
    }
    fn file_released(&self, _spec: usize) {
        self.files_released.fetch_add(1, Ordering::Relaxed);
    }
}

/// How long any wait in these tests may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub options: TailOptions,
    pub events: Arc<EventCounts>,
    store: Option<Store>,
    tailer: Option<Tailer>,
    /// Lines read but not yet committed.
    pending: Vec<(PathBuf, Vec<u8>, bool)>,
    /// Lines whose checkpoint is committed: (path, line, cut).
    pub committed: Vec<(PathBuf, Vec<u8>, bool)>,
    /// How long a wait may take before the test fails.
    pub deadline: Duration,
}

impl Harness {
    /// A harness following `pattern` (relative to a fresh temporary directory).
    pub fn new(pattern: &str, start_at: StartAt) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let options = TailOptions {
            specs: vec![WatchSpec {
                glob: PathGlob::new(&dir.path().join(pattern).to_string_lossy()).unwrap(),
                start_at,
                max_line_bytes: 64 * 1024,
            }],
            sweep_interval: Duration::from_millis(20),
            event_sweep_interval: Duration::from_millis(20),
            rescan_interval: Duration::from_millis(100),
            event_rescan_interval: Duration::from_millis(100),
            rotate_wait: Duration::from_millis(150),
            read_budget: 1024 * 1024,
            use_events: true,
            coalesce: Duration::from_millis(2),
            max_open_files: usize::MAX,
        };
        let mut h = Self {
            dir,
            options,
            events: Arc::default(),
            store: None,
            tailer: None,
            pending: Vec::new(),
            committed: Vec::new(),
            deadline: DEADLINE,
        };
        h.start();
        h
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Starts the tailer from the saved state.
    pub fn start(&mut self) {
        let store = Store::open(&self.state_dir()).unwrap();
        let saved = saved_files(&store).unwrap();
        let events: Arc<dyn TailEvents> = self.events.clone();
        self.tailer = Some(Tailer::new(self.options.clone(), saved, events));
        self.store = Some(store);
    }

    /// Stops cleanly: what was read is committed.
    pub fn stop(&mut self) {
        self.poll_once();
        self.tailer = None;
        self.store = None;
    }

    /// Stops as a kill -9 would: whatever was read since the last commit is lost.
    pub fn crash(&mut self) {
        if let Some(t) = self.tailer.as_mut() {
            let pending = &mut self.pending;
            t.poll(&mut |o: &LineOrigin<'_>, l: &[u8]| {
                pending.push((o.path.to_path_buf(), l.to_vec(), o.cut))
            });
        }
        self.pending.clear();
        self.tailer = None;
        self.store = None;
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    pub fn tailer(&self) -> &Tailer {
        self.tailer.as_ref().unwrap()
    }

    pub fn tailer_mut(&mut self) -> &mut Tailer {
        self.tailer.as_mut().unwrap()
    }

    /// One poll and one commit. Returns whether more data is waiting.
    pub fn poll_once(&mut self) -> bool {
        let Some(t) = self.tailer.as_mut() else {
            return false;
        };
        let pending = &mut self.pending;
        let more = t.poll(&mut |o: &LineOrigin<'_>, l: &[u8]| {
            pending.push((o.path.to_path_buf(), l.to_vec(), o.cut))
        });
        let checkpoints = t.take_checkpoints();
        commit_checkpoints(self.store.as_mut().unwrap(), &checkpoints).unwrap();
        self.committed.append(&mut self.pending);
        more
    }

    /// Polls until `done` holds for the committed lines, failing after [`DEADLINE`].
    pub fn pump_until(
        &mut self,
        what: &str,
        mut done: impl FnMut(&[(PathBuf, Vec<u8>, bool)]) -> bool,
    ) {
        let start = Instant::now();
        loop {
            let more = self.poll_once();
            if done(&self.committed) {
                return;
            }
            assert!(
                start.elapsed() < self.deadline,
                "timed out waiting for {what}; got {} lines: {:?}",
                self.committed.len(),
                self.lines_text().iter().rev().take(5).collect::<Vec<_>>()
            );
            if !more {
                self.tailer
                    .as_mut()
                    .unwrap()
                    .wait(Duration::from_millis(20));
            }
        }
    }

    /// Polls until the tailer has read everything on disk and released rotated files.
    pub fn settle(&mut self) {
        let start = Instant::now();
        // Two idle polls in a row: the first may have found work the sweep was due for.
        let mut idle_polls = 0;
        while idle_polls < 2 {
            let more = self.poll_once();
            if !more && self.tailer().is_idle() {
                idle_polls += 1;
            } else {
                idle_polls = 0;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the tailer did not settle; got {} lines",
                self.committed.len()
            );
            self.tailer
                .as_mut()
                .unwrap()
                .wait(Duration::from_millis(20));
        }
    }

    pub fn lines_text(&self) -> Vec<String> {
        self.committed
            .iter()
            .map(|(_, l, _)| String::from_utf8_lossy(l).into_owned())
            .collect()
    }
}

/// Appends `text` to the file at `path`, creating it.
pub fn append(path: &Path, text: &[u8]) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text).unwrap();
}

/// Writes numbered lines `prefix-first..prefix-last` to an open file.
pub fn write_lines(file: &mut File, prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    let lines: Vec<String> = range
        .map(|i| format!("{prefix}-{i:05} some log text"))
        .collect();
    let mut text = String::new();
    for l in &lines {
        text.push_str(l);
        text.push('\n');
    }
    file.write_all(text.as_bytes()).unwrap();
    lines
}

pub fn open_append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

pub fn rename(from: &Path, to: &Path) {
    fs::rename(from, to).unwrap();
}
