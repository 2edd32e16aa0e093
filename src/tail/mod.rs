//! The tailer: follows the files the config names through every kind of rotation.
//!
//! A file is identified by its device and inode plus its first bytes (the *prefix*), never
//! by its path alone. Each followed file is read through its open handle, so a file that
//! is renamed away (logrotate `create`), deleted, or replaced is still read to its end
//! before it is released; a new file at the same path is read from its first byte.
//!
//! Three things drive the tailer, in order of authority:
//!
//! 1. A *sweep*: `fstat` of every open file (size, link count) and a check of its prefix
//!    detects truncation (copytruncate) and deletion. It runs every `sweep_interval`
//!    (250 ms), or every `event_sweep_interval` (1 s) while file events watch every
//!    directory that matters; a file named by a write event is checked at once.
//! 2. A *rescan* every `rescan_interval` (`event_rescan_interval`, 10 s, while file events
//!    watch every directory the globs' walk looks into, on local filesystems: then
//!    creates, deletes and renames ask for one): the globs are expanded again; a path that now
//!    names another inode means the old file was rotated away, a new path means a new file.
//! 3. Wake-ups from inotify (see `wakeups.rs`): a write, create or rename makes the next
//!    poll read (and check) the file or rescan at once. They only lower latency; losing
//!    one costs at most a sweep interval, never a line.
//!
//! The tailer does not write state itself. After each [`Tailer::poll`] the caller takes
//! the [`Checkpoint`]s and records them, in the same transaction as whatever it derived
//! from the lines. A checkpoint's offset never passes a line that was not handed to the
//! sink: an incomplete last line is re-read after a restart, not lost.
//!
//! Known limits, stated so they are not rediscovered: lines appended to a copytruncated
//! file between the last read and the copy are recovered only if the copy is still next
//! to the file, uncompressed; a file rotated away while the agent is down is finished only
//! if it still sits in the same directory, uncompressed.

pub mod discovery;
pub mod events;
mod identity;
pub mod line_splitter;
mod reading;
mod rescan;
mod wakeups;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use events::{NoEvents, Rotation, TailEvents};
use identity::Fingerprint;
pub use identity::{FileKey, PREFIX_LEN};

use crate::path_glob::PathGlob;
use line_splitter::LineSplitter;
use wakeups::Wakeups;

/// Bytes read from the disk at a time.
const CHUNK: usize = 64 * 1024;

/// A file's saved position, as the state store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedFile {
    pub key: FileKey,
    pub path: PathBuf,
    /// The file's first bytes (up to [`PREFIX_LEN`]) when the offset was saved.
    pub prefix: Vec<u8>,
    /// The first byte not yet handed out as (part of) a line.
    pub offset: u64,
    /// Whether `offset` is inside a cut line whose rest is being skipped.
    pub skipping: bool,
    /// Whether the file was released (rotated away or deleted) by then.
    pub released: bool,
}

/// A change the caller must record in the state, in the same transaction as anything it
/// derived from the lines read before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    Progress(SavedFile),
    /// The file is no longer followed.
    Released(FileKey),
    /// The saved state of a file that no longer exists anywhere.
    Forget(FileKey),
}

/// Where a file is read from when it is seen for the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    Beginning,
    /// Only what is written from now on (for files present when a glob is first
    /// followed; files that appear later are read from their start).
    #[default]
    End,
}

/// One glob to follow, with its settings.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub glob: PathGlob,
    pub start_at: StartAt,
    pub max_line_bytes: usize,
}

/// How the tailer paces itself.
#[derive(Debug, Clone)]
pub struct TailOptions {
    pub specs: Vec<WatchSpec>,
    /// Every open file is `fstat`ed this often (when file events are not available).
    pub sweep_interval: Duration,
    /// With file events watching every directory, the full sweep runs only this often:
    /// a written file is `fstat`ed at its event, so the sweep is a safety net whose cost
    /// (a `fstat` per followed file) should not recur four times a second.
    pub event_sweep_interval: Duration,
    /// The globs are expanded again this often (when file events are not available).
    pub rescan_interval: Duration,
    /// With file events watching every directory, the globs are expanded again only this
    /// often: a create, delete or rename asks for a rescan at its event, so the periodic
    /// one (a `stat` of every matched path and of every entry of their directories) is a
    /// safety net. At a second it was most of an idle agent's cost with 1,000 files.
    pub event_rescan_interval: Duration,
    /// A file rotated away or deleted is kept open this long after its last growth, for
    /// writers that still hold it.
    pub rotate_wait: Duration,
    /// At most this many bytes are read from one file per poll, so one busy file cannot
    /// hold back the others or make one checkpoint huge.
    pub read_budget: usize,
    /// Whether to use the OS's file events (otherwise only the sweep runs).
    pub use_events: bool,
    /// After a file event, how long to gather further events before reading: the
    /// latency traded for far fewer polls when many files are written at once.
    pub coalesce: Duration,
    /// The most files held open at once (the descriptor limit less a reserve for
    /// everything else). Files beyond it are followed when room appears.
    pub max_open_files: usize,
}

impl Default for TailOptions {
    fn default() -> Self {
        Self {
            specs: Vec::new(),
            sweep_interval: Duration::from_millis(250),
            event_sweep_interval: Duration::from_secs(1),
            rescan_interval: Duration::from_secs(1),
            event_rescan_interval: Duration::from_secs(10),
            rotate_wait: Duration::from_secs(5),
            read_budget: 4 * 1024 * 1024,
            use_events: true,
            coalesce: Duration::from_millis(25),
            max_open_files: usize::MAX,
        }
    }
}

/// Where a line came from.
#[derive(Debug, Clone, Copy)]
pub struct LineOrigin<'a> {
    /// The path the file was found at (a rotated file keeps its original path).
    pub path: &'a Path,
    pub key: FileKey,
    /// The index of the `files` entry (the [`WatchSpec`]) the file was found by.
    pub spec: usize,
    /// The line was longer than `max_line_bytes` and is cut.
    pub cut: bool,
}

/// Receives the lines read.
pub trait LineSink {
    fn line(&mut self, origin: &LineOrigin<'_>, line: &[u8]);

    /// A run of whole lines (each ending in `\n`, a `\r` before it not stripped; none
    /// cut), handed out at once so that the sink can search it whole. By default each line
    /// goes to [`line`](Self::line), as the splitter would hand it out.
    fn lines(&mut self, origin: &LineOrigin<'_>, run: &[u8]) {
        for line in run.split_inclusive(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            self.line(origin, line.strip_suffix(b"\r").unwrap_or(line));
        }
    }
}

impl<F: FnMut(&LineOrigin<'_>, &[u8])> LineSink for F {
    fn line(&mut self, origin: &LineOrigin<'_>, line: &[u8]) {
        self(origin, line);
    }
}

/// One file being followed.
struct Followed {
    key: FileKey,
    /// The path it was found at.
    path: PathBuf,
    spec: usize,
    file: File,
    /// Discovery order; files are read in this order so an old file is finished first.
    seq: u64,
    /// Its first bytes: with its key, what makes it this file.
    fingerprint: Fingerprint,
    /// The next byte to read.
    offset: u64,
    splitter: LineSplitter,
    /// The size seen at the last sweep, and the modification time.
    last_size: u64,
    last_mtime: i64,
    /// Set once the file is no longer at a matched path (rotated away or deleted).
    rotated_at: Option<Instant>,
    /// When it last grew, for `rotate_wait`.
    last_growth: Instant,
    /// Read again at the next poll (written to, or the budget ran out).
    wants_read: bool,
    /// The offset changed since the last checkpoint.
    dirty: bool,
    cut_logged: bool,
}

impl Followed {
    fn checkpoint(&self) -> SavedFile {
        SavedFile {
            key: self.key,
            path: self.path.clone(),
            prefix: self.fingerprint.to_vec(),
            offset: self.offset - self.splitter.pending() as u64,
            skipping: self.splitter.is_skipping(),
            released: false,
        }
    }
}

/// How long a wake-up by another source's pipe (`journalctl`'s) waits for more before
/// reading: it writes in 4 KiB pieces, and one read of 10 ms' worth costs one thread
/// switch instead of dozens.
pub const ALSO_COALESCE: Duration = Duration::from_millis(10);

/// Follows the files of a set of globs. See the module documentation.
pub struct Tailer {
    options: TailOptions,
    files: HashMap<FileKey, Followed>,
    /// Saved positions by file key: from the state at start, and of files released since.
    saved: HashMap<FileKey, SavedFile>,
    /// Paths that had saved state at start: a file found there is a successor of one
    /// already followed, so it is read from its first byte whatever `start_at` says.
    saved_paths: HashSet<PathBuf>,
    /// Whether the first rescan (where `start_at` applies) has happened.
    started: bool,
    next_seq: u64,
    last_sweep: Option<Instant>,
    last_rescan: Option<Instant>,
    rescan_requested: bool,
    wakeups: Option<Wakeups>,
    /// Patterns that were already followed before this tailer (a reload): a file of theirs
    /// without saved state appeared while chattail ran, so it is read from its start
    /// whatever `start_at` says.
    running_patterns: HashSet<String>,
    /// Paths that could not be opened, so the error is logged once.
    open_failed: HashSet<PathBuf>,
    /// Set while files wait for descriptors, so that is said once per episode.
    out_of_descriptors: bool,
    /// Followed files reached through a symlink, by the target's path (their events name
    /// the target).
    real_paths: HashMap<PathBuf, FileKey>,
    /// Whether file events watch every directory that matters (then written files are
    /// checked at their event and the full sweep is rare).
    events_reliable: bool,
    /// Events also see every new file: the rescan may run every `event_rescan_interval`.
    events_cover_all: bool,
    /// The directories the globs' walk looked into at the last rescan.
    glob_dirs: HashSet<PathBuf>,
    /// The followed files when their watch directories were last worked out, and those
    /// directories.
    watched_files: (Vec<(FileKey, PathBuf)>, HashSet<PathBuf>),
    /// The files each followed directory held at the last rescan.
    dir_snapshot: HashMap<PathBuf, HashSet<FileKey>>,
    /// Copies left by copytruncate whose lines were recovered.
    consumed_copies: HashSet<FileKey>,
    checkpoints: Vec<Checkpoint>,
    events: Arc<dyn TailEvents>,
    buf: Vec<u8>,
}

impl Tailer {
    /// A tailer that resumes from `saved` (the positions its checkpoints recorded) and
    /// reports to `events`. No file is touched until the first [`poll`](Self::poll).
    pub fn new(options: TailOptions, saved: Vec<SavedFile>, events: Arc<dyn TailEvents>) -> Self {
        let wakeups = if options.use_events {
            Wakeups::new()
        } else {
            None
        };
        Self {
            saved_paths: saved.iter().map(|s| s.path.clone()).collect(),
            saved: saved.into_iter().map(|s| (s.key, s)).collect(),
            options,
            files: HashMap::new(),
            started: false,
            next_seq: 0,
            last_sweep: None,
            last_rescan: None,
            rescan_requested: true,
            wakeups,
            running_patterns: HashSet::new(),
            open_failed: HashSet::new(),
            out_of_descriptors: false,
            events_reliable: false,
            events_cover_all: false,
            glob_dirs: HashSet::new(),
            real_paths: HashMap::new(),
            watched_files: (Vec::new(), HashSet::new()),
            dir_snapshot: HashMap::new(),
            consumed_copies: HashSet::new(),
            checkpoints: Vec::new(),
            events,
            buf: vec![0; CHUNK],
        }
    }

    /// How often the full sweep runs now: rarely while file events watch every directory
    /// that matters, often otherwise. `wait` and `poll` must agree on it, or the loop
    /// would spin until the sweep is due.
    fn current_rescan_interval(&self) -> Duration {
        if self.events_cover_all {
            self.options.event_rescan_interval
        } else {
            self.options.rescan_interval
        }
    }

    fn current_sweep_interval(&self) -> Duration {
        if self.events_reliable {
            self.options.event_sweep_interval
        } else {
            self.options.sweep_interval
        }
    }

    /// Changes how many bytes a poll reads from one file at most.
    pub fn set_read_budget(&mut self, bytes: usize) {
        self.options.read_budget = bytes.max(1);
    }

    /// The paths followed right now, rotated files included.
    pub fn followed_paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.files.values().map(|f| f.path.clone()).collect();
        paths.sort();
        paths
    }

    /// Whether a file found by the `files` entry `spec` is followed at its matched path
    /// now (a file rotated away does not count).
    pub fn has_file_for(&self, spec: usize) -> bool {
        self.files
            .values()
            .any(|f| f.spec == spec && f.rotated_at.is_none())
    }

    /// Marks every followed file for a checkpoint at the next
    /// [`take_checkpoints`](Self::take_checkpoints), so that the state holds every file's
    /// position, not only those that moved (before a reload rebuilds the tailer from it).
    pub fn checkpoint_all(&mut self) {
        for f in self.files.values_mut() {
            f.dirty = true;
        }
    }

    /// The files followed now, by key and the path they were found at.
    pub fn followed(&self) -> Vec<(FileKey, PathBuf)> {
        self.files
            .values()
            .map(|f| (f.key, f.path.clone()))
            .collect()
    }

    /// Marks `patterns` as followed before this tailer started (it replaces another after
    /// a reload): `start_at` does not apply to their files, which appeared while chattail
    /// ran and are read from their first byte.
    pub fn continue_patterns(&mut self, patterns: impl IntoIterator<Item = String>) {
        self.running_patterns.extend(patterns);
    }

    /// Whether the file with this key is being followed.
    pub fn follows(&self, key: FileKey) -> bool {
        self.files.contains_key(&key)
    }

    /// Whether everything on disk has been read and handed out: every followed file is
    /// read to its current size, no rotated file waits for release and no rescan is due.
    /// Tests use this to wait for a settled state instead of sleeping.
    pub fn is_idle(&self) -> bool {
        !self.rescan_requested
            && self.checkpoints.is_empty()
            && self.files.values().all(|f| {
                f.rotated_at.is_none()
                    && !f.wants_read
                    && !f.dirty
                    && f.file.metadata().is_ok_and(|m| m.len() == f.offset)
            })
    }

    /// Takes the checkpoints produced since the last call, in order.
    pub fn take_checkpoints(&mut self) -> Vec<Checkpoint> {
        let mut keys: Vec<(u64, FileKey)> = self
            .files
            .values()
            .filter(|f| f.dirty)
            .map(|f| (f.seq, f.key))
            .collect();
        keys.sort_unstable();
        for (_, key) in keys {
            if let Some(f) = self.files.get_mut(&key) {
                f.dirty = false;
                self.checkpoints.push(Checkpoint::Progress(f.checkpoint()));
            }
        }
        std::mem::take(&mut self.checkpoints)
    }

    /// Blocks until there may be something to do: a file event, or the next sweep.
    pub fn wait(&mut self, max: Duration) {
        self.wait_also(max, None);
    }

    /// As [`wait`](Self::wait), and wakes up when `also` (another source's pipe) becomes
    /// readable, after [`ALSO_COALESCE`] for more to arrive.
    pub fn wait_also(&mut self, max: Duration, also: Option<std::os::fd::RawFd>) {
        if self.rescan_requested || self.files.values().any(|f| f.wants_read) {
            return;
        }
        let until_sweep = self.last_sweep.map_or(Duration::ZERO, |t| {
            self.current_sweep_interval().saturating_sub(t.elapsed())
        });
        let timeout = until_sweep.min(max);
        match &mut self.wakeups {
            Some(w) => {
                // Writers rarely write one line alone: after the first event, let the burst
                // gather for a moment so that one poll reads it all. Sleeping (instead of
                // waking for every further event) keeps a busy directory from costing a
                // thread switch per write.
                let woken = w.wait(timeout, also);
                if woken.events && !woken.also {
                    std::thread::sleep(self.options.coalesce.min(timeout));
                } else if woken.also {
                    std::thread::sleep(ALSO_COALESCE.min(timeout));
                }
            }
            None if also.is_some() => {
                if wakeups::wait_for(None, also, timeout).also {
                    std::thread::sleep(ALSO_COALESCE.min(timeout));
                }
            }
            None => std::thread::sleep(timeout),
        }
    }

    /// Does one round of work: takes file events, sweeps and rescans when due, and reads
    /// what the files have, handing every complete line to `sink`. Returns whether more
    /// data is already waiting (the caller should poll again without waiting).
    pub fn poll(&mut self, sink: &mut dyn LineSink) -> bool {
        let now = Instant::now();
        let mut written = Vec::new();
        if let Some(w) = &mut self.wakeups {
            let hints = w.take();
            self.rescan_requested |= hints.rescan;
            if hints.lost {
                // Write hints may be missing: look at every file now, not at the next
                // (rare) sweep.
                self.last_sweep = None;
            }
            if !hints.written.is_empty() {
                for f in self.files.values_mut() {
                    if hints.written.contains(&f.path) {
                        f.wants_read = true;
                        written.push(f.key);
                    }
                }
                for path in &hints.written {
                    if let Some(f) = self
                        .real_paths
                        .get(path)
                        .and_then(|k| self.files.get_mut(k))
                    {
                        f.wants_read = true;
                        written.push(f.key);
                    }
                }
            }
        }
        let interval = self.current_sweep_interval();
        let sweep_due = self
            .last_sweep
            .is_none_or(|t| now.duration_since(t) >= interval);
        if sweep_due {
            self.last_sweep = Some(now);
            self.sweep(sink);
        } else {
            // A write event may also be a truncation (copytruncate): check those files now.
            for key in written {
                self.check(key, sink, false);
            }
        }
        // After the sweep, which asks for a rescan when a path names another file now.
        let rescan_due = self.rescan_requested
            || self
                .last_rescan
                .is_none_or(|t| now.duration_since(t) >= self.current_rescan_interval());
        if rescan_due {
            self.rescan_requested = false;
            self.last_rescan = Some(now);
            self.rescan();
        }
        // Only files with something to read: the sweep marks those that grew, events mark
        // those written; reading the others would be a `pread` per file per sweep for
        // nothing.
        let mut order: Vec<(u64, FileKey)> = self
            .files
            .values()
            .filter(|f| f.wants_read || f.rotated_at.is_some())
            .map(|f| (f.seq, f.key))
            .collect();
        order.sort_unstable();
        let mut more = false;
        for (_, key) in order {
            more |= self.read(key, sink);
        }
        self.release_expired(sink);
        more
    }
}
