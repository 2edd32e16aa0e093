//! The tailer: follows the files the config names through every kind of rotation.
//!
//! A file is identified by its device and inode plus its first bytes (the *prefix*), never
//! by its path alone. Each followed file is read through its open handle, so a file that
//! is renamed away (logrotate `create`), deleted, or replaced is still read to its end
//! before it is released; a new file at the same path is read from its first byte.
//!
//! Three things drive the tailer, in order of authority:
//!
//! 1. A *sweep* every `sweep_interval`: `fstat` of every open file (size, link count) and
//!    a check of its prefix detects truncation (copytruncate) and deletion.
//! 2. A *rescan* every `rescan_interval`: the globs are expanded again; a path that now
//!    names another inode means the old file was rotated away, a new path means a new file.
//! 3. Wake-ups from `notify` (see `wakeups.rs`): a write, create or rename makes the next
//!    poll read or rescan at once. They only lower latency; losing one loses nothing.
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
pub mod line_splitter;
mod wakeups;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub use events::{NoEvents, Rotation, TailEvents};

use crate::path_glob::PathGlob;
use line_splitter::{LineSplitter, SplitLine};
use wakeups::Wakeups;

/// How many of a file's first bytes identify it (with its device and inode).
pub const PREFIX_LEN: usize = 512;
/// Bytes read from the disk at a time.
const CHUNK: usize = 64 * 1024;

/// A file's device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

impl FileKey {
    pub fn of(metadata: &fs::Metadata) -> Self {
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
        }
    }
}

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
    /// Every open file is `fstat`ed this often.
    pub sweep_interval: Duration,
    /// The globs are expanded again this often.
    pub rescan_interval: Duration,
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
}

impl Default for TailOptions {
    fn default() -> Self {
        Self {
            specs: Vec::new(),
            sweep_interval: Duration::from_millis(250),
            rescan_interval: Duration::from_secs(1),
            rotate_wait: Duration::from_secs(5),
            read_budget: 4 * 1024 * 1024,
            use_events: true,
            coalesce: Duration::from_millis(25),
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
    prefix: Vec<u8>,
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
            prefix: self.prefix.clone(),
            offset: self.offset - self.splitter.pending() as u64,
            skipping: self.splitter.is_skipping(),
            released: false,
        }
    }
}

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
            dir_snapshot: HashMap::new(),
            consumed_copies: HashSet::new(),
            checkpoints: Vec::new(),
            events,
            buf: vec![0; CHUNK],
        }
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
        if self.rescan_requested || self.files.values().any(|f| f.wants_read) {
            return;
        }
        let until_sweep = self.last_sweep.map_or(Duration::ZERO, |t| {
            self.options.sweep_interval.saturating_sub(t.elapsed())
        });
        let timeout = until_sweep.min(max);
        match &mut self.wakeups {
            Some(w) => {
                // Writers rarely write one line alone: after the first event, let the burst
                // gather for a moment so that one poll reads it all. Sleeping (instead of
                // waking for every further event) keeps a busy directory from costing a
                // thread switch per write.
                if w.wait(timeout) {
                    std::thread::sleep(self.options.coalesce.min(timeout));
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
        if let Some(w) = &mut self.wakeups {
            let hints = w.take();
            self.rescan_requested |= hints.rescan;
            if !hints.written.is_empty() {
                for f in self.files.values_mut() {
                    if hints.written.contains(&f.path) {
                        f.wants_read = true;
                    }
                }
            }
        }
        let sweep_due = self
            .last_sweep
            .is_none_or(|t| now.duration_since(t) >= self.options.sweep_interval);
        if sweep_due {
            self.last_sweep = Some(now);
            self.sweep(sink);
        }
        // After the sweep, which asks for a rescan when a path names another file now.
        let rescan_due = self.rescan_requested
            || self
                .last_rescan
                .is_none_or(|t| now.duration_since(t) >= self.options.rescan_interval);
        if rescan_due {
            self.rescan_requested = false;
            self.last_rescan = Some(now);
            self.rescan();
        }
        let mut order: Vec<(u64, FileKey)> = self
            .files
            .values()
            .filter(|f| f.wants_read || sweep_due || f.rotated_at.is_some())
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

    /// `fstat`s every open file: detects truncation and deletion, and notices growth the
    /// events missed.
    fn sweep(&mut self, sink: &mut dyn LineSink) {
        let keys: Vec<FileKey> = self.files.keys().copied().collect();
        for key in keys {
            let Some(f) = self.files.get_mut(&key) else {
                continue;
            };
            let metadata = match f.file.metadata() {
                Ok(m) => m,
                Err(error) => {
                    self.events.read_failed(f.spec);
                    tracing::warn!(path = %f.path.display(), %error, "Cannot stat a followed file.");
                    continue;
                }
            };
            if metadata.nlink() == 0 && f.rotated_at.is_none() {
                tracing::info!(path = %f.path.display(), "File deleted; reading it to its end.");
                f.rotated_at = Some(Instant::now());
                f.last_growth = Instant::now();
            }
            // A path now naming another file (or nothing) means a rotation: look for files.
            if f.rotated_at.is_none() {
                match fs::metadata(&f.path) {
                    Ok(m) if FileKey::of(&m) == key => {}
                    _ => self.rescan_requested = true,
                }
            }
            let size = metadata.len();
            let mtime = metadata.mtime_nsec() + metadata.mtime() * 1_000_000_000;
            let changed = size != f.last_size || mtime != f.last_mtime;
            f.last_size = size;
            f.last_mtime = mtime;
            let truncated = size < f.offset
                || (changed && !f.prefix.is_empty() && !prefix_matches(&f.file, &f.prefix));
            if truncated {
                self.truncated(key, sink);
            } else if size > f.offset {
                f.wants_read = true;
            }
        }
    }

    /// Handles a file whose content was cut or replaced in place (copytruncate).
    fn truncated(&mut self, key: FileKey, sink: &mut dyn LineSink) {
        let copy = self.files.get(&key).and_then(|f| {
            self.events.rotated(f.spec, Rotation::Truncated);
            tracing::warn!(path = %f.path.display(), offset = f.offset, "File truncated; reading it again from its start.");
            find_copy(&f.path, &f.prefix, f.offset, &self.files)
        });
        let Some(f) = self.files.get_mut(&key) else {
            return;
        };
        // Lines written after our last read and before the truncation live on in the
        // copy that copytruncate made, if it is next to the file.
        if let Some((copy_path, copy)) = copy {
            self.events.copy_recovered(f.spec);
            // Remember the copy as read, in the state too: after a restart, or when a glob
            // also matches rotated names, it must not be read again as a new file.
            if let Ok(m) = copy.metadata() {
                let copy_key = FileKey::of(&m);
                self.consumed_copies.insert(copy_key);
                let done = SavedFile {
                    key: copy_key,
                    path: copy_path.clone(),
                    prefix: f.prefix.clone(),
                    offset: m.len(),
                    skipping: false,
                    released: true,
                };
                self.saved.insert(copy_key, done.clone());
                self.checkpoints.push(Checkpoint::Progress(done));
                self.checkpoints.push(Checkpoint::Released(copy_key));
            }
            tracing::info!(path = %f.path.display(), copy = %copy_path.display(), "Reading the rest of the truncated content from its copy.");
            let mut offset = f.offset;
            loop {
                let n = match copy.read_at(&mut self.buf, offset) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(error) => {
                        self.events.read_failed(f.spec);
                        tracing::warn!(copy = %copy_path.display(), %error, "Cannot read the copy.");
                        break;
                    }
                };
                offset += n as u64;
                emit_lines(f, &self.buf[..n], sink, &*self.events);
            }
        }
        flush_lines(f, sink, &*self.events);
        f.offset = 0;
        f.prefix.clear();
        f.splitter.reset();
        f.dirty = true;
        f.wants_read = true;
    }

    /// Expands the globs: follows new files, notices rotated and vanished ones.
    fn rescan(&mut self) {
        let mut found: Vec<(PathBuf, usize, fs::Metadata)> = Vec::new();
        let mut seen_paths = HashSet::new();
        for (spec_index, spec) in self.options.specs.iter().enumerate() {
            for path in spec.glob.expand() {
                if !seen_paths.insert(path.clone()) {
                    continue;
                }
                if let Ok(metadata) = fs::metadata(&path) {
                    found.push((path, spec_index, metadata));
                }
            }
        }
        let found_paths: Vec<PathBuf> = found.iter().map(|(p, _, _)| p.clone()).collect();
        let found_keys: HashMap<FileKey, usize> = found
            .iter()
            .enumerate()
            .map(|(i, (_, _, m))| (FileKey::of(m), i))
            .collect();

        // Files no longer at any matched path were rotated away or deleted. They keep
        // being read through their handle until `rotate_wait` after their last growth.
        let now_gone: Vec<FileKey> = self
            .files
            .values()
            .filter(|f| f.rotated_at.is_none() && !found_keys.contains_key(&f.key))
            .map(|f| f.key)
            .collect();
        for key in now_gone {
            let Some(f) = self.files.get_mut(&key) else {
                continue;
            };
            self.events.rotated(f.spec, Rotation::Renamed);
            tracing::info!(path = %f.path.display(), "File rotated away; reading it to its end.");
            f.rotated_at = Some(Instant::now());
            f.last_growth = Instant::now();
        }

        if self.started {
            // A file that was created and rotated away between two rescans (several
            // rotations a second) was never at a matched path when we looked. It is a
            // rotated sibling that was not in its directory at the last rescan.
            let mut bases: Vec<(PathBuf, usize)> = found
                .iter()
                .map(|(p, spec, _)| (p.clone(), *spec))
                .collect();
            bases.extend(self.files.values().map(|f| (f.path.clone(), f.spec)));
            bases.sort();
            bases.dedup_by(|a, b| a.0 == b.0);
            for (path, spec) in bases {
                // A directory never looked at before holds old rotated files, not missed ones.
                let Some(before) = path
                    .parent()
                    .and_then(|d| self.dir_snapshot.get(d))
                    .cloned()
                else {
                    continue;
                };
                for (sibling, metadata) in
                    self.missed_rotations(&path, &found_keys, Siblings::NewSince(&before))
                {
                    tracing::info!(path = %sibling.display(), "Found a file rotated between two scans; reading it.");
                    self.events.rotated(spec, Rotation::Renamed);
                    self.follow(path.clone(), Some(sibling), spec, &metadata, true);
                }
            }
        } else {
            // Files from the last run that were rotated away while the agent was down are
            // finished from their rotated name, before the new file at their path.
            self.finish_rotated_while_down(&found_keys);
        }

        for (path, spec, metadata) in found {
            let key = FileKey::of(&metadata);
            if let Some(f) = self.files.get_mut(&key) {
                if f.path != path && f.rotated_at.is_none() {
                    tracing::debug!(from = %f.path.display(), to = %path.display(), "File renamed within the matched paths.");
                    f.path = path;
                    f.dirty = true;
                }
                continue;
            }
            if self.follow(path.clone(), None, spec, &metadata, false) {
                self.open_failed.remove(&path);
            }
        }
        self.started = true;
        self.snapshot_dirs(&found_paths);
        self.sync_watches();
    }

    /// Rotated siblings of `path` that no one follows, knows or has read, and that pass
    /// `filter`, oldest first.
    fn missed_rotations(
        &self,
        path: &Path,
        found: &HashMap<FileKey, usize>,
        filter: Siblings<'_>,
    ) -> Vec<(PathBuf, fs::Metadata)> {
        let (Some(dir), Some(base)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Vec::new();
        };
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut siblings: Vec<(SystemTime, PathBuf, fs::Metadata)> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| discovery::is_rotated_sibling(n, base))
            })
            .filter_map(|e| {
                let path = e.path();
                let metadata = fs::metadata(&path).ok()?;
                let key = FileKey::of(&metadata);
                let modified = metadata.modified().ok()?;
                let known = self.files.contains_key(&key)
                    || found.contains_key(&key)
                    || self.saved.contains_key(&key)
                    || self.consumed_copies.contains(&key);
                // A copy of a followed file (copytruncate) is not a missed rotation: its
                // lines were read, or will be from the copy when the truncation shows.
                let is_copy = || {
                    let followed = self
                        .files
                        .values()
                        .map(|f| (f.path.as_path(), f.prefix.as_slice()));
                    let saved = self
                        .saved
                        .values()
                        .map(|s| (s.path.as_path(), s.prefix.as_slice()));
                    followed.chain(saved).any(|(p, prefix)| {
                        p.parent() == path.parent() && starts_alike(&path, prefix)
                    })
                };
                let wanted = match filter {
                    Siblings::NewSince(before) => !before.contains(&key),
                    Siblings::ModifiedSince(time) => modified >= time,
                };
                (metadata.is_file() && !known && wanted && !is_copy())
                    .then_some((modified, path, metadata))
            })
            .collect();
        // Oldest first. Timestamps are coarse (several rotations can share one), so the
        // rotation suffix breaks ties: `app.log.3` is older than `app.log.2`.
        siblings
            .sort_by_key(|(modified, path, _)| (*modified, discovery::rotation_order(path, base)));
        siblings.into_iter().map(|(_, p, m)| (p, m)).collect()
    }

    /// Records which files each followed file's directory holds, so that the next rescan
    /// can tell a rotated file it never saw from an old one.
    fn snapshot_dirs(&mut self, found: &[PathBuf]) {
        let mut dirs: HashSet<PathBuf> = self
            .files
            .values()
            .map(|f| f.path.as_path())
            .chain(found.iter().map(PathBuf::as_path))
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        dirs.extend(
            self.options
                .specs
                .iter()
                .filter_map(|s| discovery::nearest_existing(s.glob.base_dir())),
        );
        self.dir_snapshot.clear();
        for dir in dirs {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            let keys = entries
                .filter_map(Result::ok)
                .filter_map(|e| fs::metadata(e.path()).ok())
                .map(|m| FileKey::of(&m))
                .collect();
            self.dir_snapshot.insert(dir, keys);
        }
    }

    /// At the first rescan: saved files whose key is no longer at any matched path are
    /// looked for in their directory, and read from their saved offset to their end.
    fn finish_rotated_while_down(&mut self, found: &HashMap<FileKey, usize>) {
        let missing: Vec<SavedFile> = self
            .saved
            .values()
            .filter(|s| !s.released && !found.contains_key(&s.key))
            .cloned()
            .collect();
        let mut located: Vec<Located> = Vec::new();
        for saved in missing {
            // Only a rotated sibling of the file's own name qualifies: the inode of a
            // deleted file may since have been given to an unrelated one.
            let base = saved
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let candidate = saved
                .path
                .parent()
                .and_then(|dir| fs::read_dir(dir).ok())
                .and_then(|entries| {
                    entries.filter_map(Result::ok).find_map(|e| {
                        let name = e.file_name();
                        if !discovery::is_rotated_sibling(name.to_str()?, &base) {
                            return None;
                        }
                        let m = fs::metadata(e.path()).ok()?;
                        (FileKey::of(&m) == saved.key).then(|| (e.path(), m))
                    })
                });
            match candidate {
                Some((rotated, metadata)) => {
                    let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    let order = discovery::rotation_order(&rotated, &base);
                    located.push(Located {
                        order: (modified, order),
                        saved,
                        rotated,
                        metadata,
                    });
                }
                None => {
                    tracing::info!(path = %saved.path.display(), offset = saved.offset, "A file from the last run is gone; forgetting it.");
                    self.saved.remove(&saved.key);
                    self.checkpoints.push(Checkpoint::Forget(saved.key));
                }
            }
        }
        // Oldest first, so that lines come out in the order they were written.
        located.sort_by(|a, b| a.order.cmp(&b.order));
        let mut newest: HashMap<PathBuf, (SystemTime, usize)> = HashMap::new();
        for Located {
            order: (modified, _),
            saved,
            rotated,
            metadata,
        } in located
        {
            tracing::info!(path = %saved.path.display(), rotated = %rotated.display(), "File was rotated while chattail was down; finishing it.");
            let spec = self.spec_for(&saved.path);
            self.events.rotated(spec, Rotation::Renamed);
            self.follow(saved.path.clone(), Some(rotated), spec, &metadata, true);
            newest.insert(saved.path.clone(), (modified, spec));
        }
        // Files rotated after the newest of them, while the agent was down, were never seen.
        let mut paths: Vec<(PathBuf, (SystemTime, usize))> = newest.into_iter().collect();
        paths.sort();
        for (path, (modified, spec)) in paths {
            for (sibling, metadata) in
                self.missed_rotations(&path, found, Siblings::ModifiedSince(modified))
            {
                tracing::info!(path = %sibling.display(), "Found another file rotated while chattail was down; reading it.");
                self.events.rotated(spec, Rotation::Renamed);
                self.follow(path.clone(), Some(sibling), spec, &metadata, true);
            }
        }
    }

    /// The `files` entry whose glob matches `path` (the first one if none does).
    fn spec_for(&self, path: &Path) -> usize {
        self.options
            .specs
            .iter()
            .position(|spec| spec.glob.is_match(path))
            .unwrap_or(0)
    }

    /// Starts following the file at `open_path` (found as `path`). Returns whether it
    /// could be opened.
    fn follow(
        &mut self,
        path: PathBuf,
        open_path: Option<PathBuf>,
        spec: usize,
        metadata: &fs::Metadata,
        rotated: bool,
    ) -> bool {
        let open_path = open_path.unwrap_or_else(|| path.clone());
        let file = match File::open(&open_path) {
            Ok(file) => file,
            Err(error) => {
                self.events.open_failed(spec);
                if self.open_failed.insert(path.clone()) {
                    tracing::warn!(path = %open_path.display(), %error, "Cannot open a log file; retrying at every scan.");
                }
                return false;
            }
        };
        // The handle is the truth from here on: the path may already name another file.
        let metadata = file.metadata().unwrap_or_else(|_| metadata.clone());
        let key = FileKey::of(&metadata);
        let size = metadata.len();
        let max_line = self
            .options
            .specs
            .get(spec)
            .map_or(64 * 1024, |s| s.max_line_bytes);
        let start_at = self
            .options
            .specs
            .get(spec)
            .filter(|s| !self.running_patterns.contains(s.glob.as_str()))
            .map_or(StartAt::Beginning, |s| s.start_at);
        let saved = self.saved.remove(&key);
        // Set when the saved first bytes are not the file's any more: the next sweep must
        // then look at the file even if its size and time have not moved since now.
        let mut replaced = false;
        let (offset, skipping, prefix, how) = match saved {
            // A file with saved state resumes where it stopped. If it was truncated or
            // replaced meanwhile (its first bytes or its size say so), the next read or
            // sweep finds out and handles it like a live truncation, recovering unread lines
            // from a copytruncate copy.
            Some(s) => {
                let prefix = if prefix_matches(&file, &s.prefix) {
                    // Same file: its prefix may have grown since it was saved.
                    read_prefix(&file, size)
                } else {
                    replaced = true;
                    s.prefix
                };
                (s.offset, s.skipping, prefix, "resumed")
            }
            None if !self.started
                && !rotated
                && !self.saved_paths.contains(&path)
                && start_at == StartAt::End =>
            {
                // `start_at: end` for a file never seen: skip what is there, including an
                // unfinished last line.
                let ends_line = size == 0 || last_byte(&file, size) == Some(b'\n');
                (size, !ends_line, read_prefix(&file, size), "from its end")
            }
            // Reading from the start fills the prefix as it goes.
            None => (0, false, Vec::new(), "from its start"),
        };
        let splitter = if skipping {
            LineSplitter::skipping(max_line)
        } else {
            LineSplitter::new(max_line)
        };
        tracing::info!(path = %path.display(), offset, how, "Following a file.");
        self.events.file_followed(spec);
        let now = Instant::now();
        let seq = self.next_seq;
        self.next_seq += 1;
        let mtime = if replaced {
            i64::MIN
        } else {
            metadata.mtime_nsec() + metadata.mtime() * 1_000_000_000
        };
        self.files.insert(
            key,
            Followed {
                key,
                path,
                spec,
                file,
                seq,
                prefix,
                offset,
                splitter,
                last_size: size,
                last_mtime: mtime,
                rotated_at: rotated.then_some(now),
                last_growth: now,
                wants_read: true,
                dirty: true,
                cut_logged: false,
            },
        );
        true
    }

    /// Reads what file `key` has, up to the budget, handling a truncation found on the
    /// way. Returns whether more is waiting.
    fn read(&mut self, key: FileKey, sink: &mut dyn LineSink) -> bool {
        loop {
            match self.read_some(key, sink) {
                ReadOutcome::Drained => return false,
                ReadOutcome::BudgetSpent => return true,
                ReadOutcome::Truncated => self.truncated(key, sink),
            }
        }
    }

    fn read_some(&mut self, key: FileKey, sink: &mut dyn LineSink) -> ReadOutcome {
        let Some(f) = self.files.get_mut(&key) else {
            return ReadOutcome::Drained;
        };
        f.wants_read = false;
        // A rotated file is drained before the file that replaced it. If it was also
        // truncated and rewritten to exactly our offset, nothing new is read and only its
        // first bytes tell; check them now so that its new content is not read after the
        // next file's. (Other files learn of such a truncation at the next sweep.)
        if f.rotated_at.is_some()
            && f.offset > 0
            && !f.prefix.is_empty()
            && !prefix_matches(&f.file, &f.prefix)
        {
            return ReadOutcome::Truncated;
        }
        let mut total = 0usize;
        loop {
            let n = match f.file.read_at(&mut self.buf, f.offset) {
                Ok(0) => return ReadOutcome::Drained,
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    self.events.read_failed(f.spec);
                    tracing::warn!(path = %f.path.display(), %error, "Cannot read a followed file.");
                    return ReadOutcome::Drained;
                }
            };
            // Check again after the read: a truncation racing with it cannot slip through.
            if f.offset > 0 && !f.prefix.is_empty() && !prefix_matches(&f.file, &f.prefix) {
                return ReadOutcome::Truncated;
            }
            let chunk = &self.buf[..n];
            // While the file is read from its start, its first bytes become its prefix.
            if f.prefix.len() < PREFIX_LEN && f.prefix.len() as u64 == f.offset {
                let take = (PREFIX_LEN - f.prefix.len()).min(n);
                f.prefix.extend_from_slice(&chunk[..take]);
            }
            f.offset += n as u64;
            f.dirty = true;
            f.last_growth = Instant::now();
            emit_lines(f, chunk, sink, &*self.events);
            total += n;
            if total >= self.options.read_budget {
                f.wants_read = true;
                return ReadOutcome::BudgetSpent;
            }
            // A short read of a regular file means its end was reached; skip the read
            // that would return nothing.
            if n < self.buf.len() {
                return ReadOutcome::Drained;
            }
        }
    }

    /// Releases rotated files that have not grown for `rotate_wait`.
    fn release_expired(&mut self, sink: &mut dyn LineSink) {
        let wait = self.options.rotate_wait;
        let expired: Vec<FileKey> = self
            .files
            .values()
            .filter(|f| f.rotated_at.is_some() && f.last_growth.elapsed() >= wait && !f.wants_read)
            .map(|f| f.key)
            .collect();
        for key in expired {
            // One last read, then hand out an unfinished last line: no newline can come.
            self.read(key, sink);
            let Some(mut f) = self.files.remove(&key) else {
                continue;
            };
            flush_lines(&mut f, sink, &*self.events);
            let mut saved = f.checkpoint();
            saved.released = true;
            self.checkpoints.push(Checkpoint::Progress(saved.clone()));
            self.checkpoints.push(Checkpoint::Released(key));
            self.saved.insert(key, saved);
            self.events.file_released(f.spec);
            tracing::info!(path = %f.path.display(), offset = f.offset, "Released a file that was rotated away or deleted.");
        }
    }

    fn sync_watches(&mut self) {
        let Some(w) = &mut self.wakeups else {
            return;
        };
        let dirs = discovery::watch_dirs(
            self.options.specs.iter().map(|s| s.glob.base_dir()),
            self.files.values().map(|f| f.path.as_path()),
        );
        w.sync(&dirs);
    }
}

/// A file from the last run found under a rotated name, with its sort key (modification
/// time, then rotation suffix).
struct Located {
    order: (SystemTime, discovery::RotationOrder),
    saved: SavedFile,
    rotated: PathBuf,
    metadata: fs::Metadata,
}

/// How a read of one file ended.
enum ReadOutcome {
    /// Everything there is was read.
    Drained,
    /// The per-poll budget ran out; more is waiting.
    BudgetSpent,
    /// The file no longer starts as it did: it was truncated and written again.
    Truncated,
}

/// Which rotated siblings `Tailer::missed_rotations` looks for.
#[derive(Clone, Copy)]
enum Siblings<'a> {
    /// Files that were not in the directory at the last rescan.
    NewSince(&'a HashSet<FileKey>),
    /// Files modified at or after this time (at start, when there is no earlier rescan).
    ModifiedSince(SystemTime),
}

/// Hands the lines completed by `chunk` to `sink`.
fn emit_lines(f: &mut Followed, chunk: &[u8], sink: &mut dyn LineSink, events: &dyn TailEvents) {
    let (path, key, spec) = (&f.path, f.key, f.spec);
    let cut_logged = &mut f.cut_logged;
    let (mut lines, mut bytes) = (0u64, 0u64);
    f.splitter.push(chunk, &mut |line: SplitLine<'_>| {
        lines += 1;
        bytes += line.bytes.len() as u64 + 1;
        if line.cut {
            events.line_cut(spec);
            if !*cut_logged {
                *cut_logged = true;
                tracing::warn!(path = %path.display(), kept = line.bytes.len(), "Line longer than max_line_bytes; it was cut (further cuts in this file are only counted).");
            }
        }
        sink.line(&LineOrigin { path, key, spec, cut: line.cut }, line.bytes);
    });
    if lines > 0 {
        events.lines_read(spec, lines, bytes);
    }
}

/// Hands out an unfinished last line.
fn flush_lines(f: &mut Followed, sink: &mut dyn LineSink, events: &dyn TailEvents) {
    let (path, key, spec) = (&f.path, f.key, f.spec);
    f.splitter.flush(&mut |line: SplitLine<'_>| {
        events.lines_read(spec, 1, line.bytes.len() as u64);
        sink.line(
            &LineOrigin {
                path,
                key,
                spec,
                cut: false,
            },
            line.bytes,
        );
    });
}

/// Whether `file` starts with `prefix`.
fn prefix_matches(file: &File, prefix: &[u8]) -> bool {
    if prefix.is_empty() {
        return true;
    }
    let mut head = vec![0; prefix.len()];
    file.read_exact_at(&mut head, 0).is_ok() && head == prefix
}

/// Whether the file at `path` and a followed file's `prefix` start with the same bytes
/// (one a prefix of the other), as a copy of that file does.
fn starts_alike(path: &Path, prefix: &[u8]) -> bool {
    if prefix.is_empty() {
        return false;
    }
    let Ok(file) = File::open(path) else {
        return false;
    };
    let mut head = vec![0; prefix.len()];
    let mut filled = 0;
    while filled < head.len() {
        match file.read_at(&mut head[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(_) => return false,
        }
    }
    filled > 0 && head[..filled] == prefix[..filled]
}

/// The first bytes of a file of `size` bytes, up to [`PREFIX_LEN`].
fn read_prefix(file: &File, size: u64) -> Vec<u8> {
    let mut prefix = vec![0; PREFIX_LEN.min(usize::try_from(size).unwrap_or(PREFIX_LEN))];
    if file.read_exact_at(&mut prefix, 0).is_err() {
        prefix.clear();
    }
    prefix
}

fn last_byte(file: &File, size: u64) -> Option<u8> {
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, size.checked_sub(1)?).ok()?;
    Some(byte[0])
}

/// The copy that copytruncate left next to `path`: a rotated sibling that starts with the
/// same `prefix`, is at least `offset` long and is not followed. The newest one wins.
fn find_copy(
    path: &Path,
    prefix: &[u8],
    offset: u64,
    followed: &HashMap<FileKey, Followed>,
) -> Option<(PathBuf, File)> {
    if prefix.is_empty() {
        return None;
    }
    let dir = path.parent()?;
    let base = path.file_name()?.to_str()?;
    let mut best: Option<(SystemTime, PathBuf, File)> = None;
    for entry in fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| discovery::is_rotated_sibling(n, base))
        {
            continue;
        }
        let Ok(file) = File::open(entry.path()) else {
            continue;
        };
        let Ok(metadata) = file.metadata() else {
            continue;
        };
        if followed.contains_key(&FileKey::of(&metadata))
            || metadata.len() < offset
            || !prefix_matches(&file, prefix)
        {
            continue;
        }
        let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if best.as_ref().is_none_or(|(m, _, _)| modified > *m) {
            best = Some((modified, entry.path(), file));
        }
    }
    best.map(|(_, p, f)| (p, f))
}
