//! Finding files: expanding the globs, telling rotations from new files, files rotated
//! between two scans or while chattail was down, and starting to follow a file.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use super::identity::Fingerprint;
use super::line_splitter::LineSplitter;
use super::reading::{last_byte, open_regular};
use super::{Checkpoint, FileKey, Followed, Rotation, SavedFile, StartAt, Tailer, discovery};

impl Tailer {
    /// Expands the globs: follows new files, notices rotated and vanished ones.
    pub(super) fn rescan(&mut self) {
        let mut found: Vec<(PathBuf, usize, fs::Metadata)> = Vec::new();
        let mut seen_paths = HashSet::new();
        let mut glob_dirs: HashSet<PathBuf> = HashSet::new();
        for (spec_index, spec) in self.options.specs.iter().enumerate() {
            let paths = match spec.glob.expand_with_dirs() {
                Ok((paths, dirs)) => {
                    glob_dirs.extend(dirs);
                    paths
                }
                Err(error) => {
                    // A directory that could not be listed (out of descriptors, an I/O
                    // error) says nothing about the files in it: no conclusion is drawn
                    // from this scan, and the next one tries again.
                    tracing::debug!(pattern = spec.glob.as_str(), %error, "Cannot expand a glob; skipping this scan.");
                    self.events.out_of_descriptors(spec_index);
                    return;
                }
            };
            for path in paths {
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
            // Each directory is listed once per rescan, however many followed files it
            // holds; the files to follow are gathered first and followed after, in order.
            let mut listings = Listings::new();
            let mut chosen: HashSet<FileKey> = HashSet::new();
            let mut missed = Vec::new();
            for (path, spec) in bases {
                // A directory never looked at before holds old rotated files, not missed ones.
                let Some(before) = path.parent().and_then(|d| self.dir_snapshot.get(d)) else {
                    continue;
                };
                for (sibling, metadata) in self.missed_rotations(
                    &path,
                    &found_keys,
                    Siblings::NewSince(before),
                    &mut listings,
                ) {
                    if chosen.insert(FileKey::of(&metadata)) {
                        missed.push((path.clone(), spec, sibling, metadata));
                    }
                }
            }
            for (path, spec, sibling, metadata) in missed {
                tracing::info!(path = %sibling.display(), "Found a file rotated between two scans; reading it.");
                self.events.rotated(spec, Rotation::Renamed);
                self.follow(path, Some(sibling), spec, &metadata, true);
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
        self.glob_dirs = glob_dirs;
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
        listings: &mut Listings,
    ) -> Vec<(PathBuf, fs::Metadata)> {
        let (Some(dir), Some(base)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Vec::new();
        };
        let entries = listings.entry(dir.to_path_buf()).or_insert_with(|| {
            let mut names: Vec<(String, PathBuf)> = fs::read_dir(dir)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
                        .collect()
                })
                .unwrap_or_default();
            names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            names
        });
        // Siblings start with the base name: in the sorted listing they are one run, found
        // by a binary search, so a directory of 1,000 followed files is not scanned 1,000
        // times.
        let start = entries.partition_point(|(name, _)| name.as_str() < base);
        let mut siblings: Vec<(SystemTime, PathBuf, fs::Metadata)> = entries[start..]
            .iter()
            .take_while(|(name, _)| name.starts_with(base))
            .filter(|(name, _)| discovery::is_rotated_sibling(name, base))
            .filter_map(|(_, p)| {
                let path = p.clone();
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
                    let followed = self.files.values().any(|f| {
                        f.path.parent() == path.parent() && f.fingerprint.starts_alike(&path)
                    });
                    followed
                        || self.saved.values().any(|s| {
                            s.path.parent() == path.parent()
                                && Fingerprint::saved_starts_alike(&s.prefix, &path)
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
        let mut listings = Listings::new();
        for (path, (modified, spec)) in paths {
            for (sibling, metadata) in self.missed_rotations(
                &path,
                found,
                Siblings::ModifiedSince(modified),
                &mut listings,
            ) {
                tracing::info!(path = %sibling.display(), "Found another file rotated while chattail was down; reading it.");
                self.events.rotated(spec, Rotation::Renamed);
                self.follow(path.clone(), Some(sibling), spec, &metadata, true);
            }
        }
    }

    /// The `files` entry whose glob matches `path` (the first one if none does).
    pub(super) fn spec_for(&self, path: &Path) -> usize {
        self.options
            .specs
            .iter()
            .position(|spec| spec.glob.is_match(path))
            .unwrap_or(0)
    }

    /// Starts following the file at `open_path` (found as `path`). Returns whether it
    /// could be opened.
    pub(super) fn follow(
        &mut self,
        path: PathBuf,
        open_path: Option<PathBuf>,
        spec: usize,
        metadata: &fs::Metadata,
        rotated: bool,
    ) -> bool {
        let open_path = open_path.unwrap_or_else(|| path.clone());
        if self.files.len() >= self.options.max_open_files {
            self.no_descriptor_for(&open_path, spec, None);
            return false;
        }
        let file = match open_regular(&open_path) {
            Ok(file) => file,
            Err(error) if matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                self.no_descriptor_for(&open_path, spec, Some(&error));
                return false;
            }
            Err(error) => {
                if self.open_failed.insert(path.clone()) {
                    self.events.open_failed(spec);
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
        let Start {
            offset,
            skipping,
            fingerprint,
            how,
            replaced,
        } = self.starting_point(key, &file, size, &path, spec, rotated);
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
                fingerprint,
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

    /// A file that cannot be followed for want of a descriptor: counted, said once per
    /// episode, and tried again at the next rescan. What is open stays open; nothing is
    /// mistaken for a rotation.
    fn no_descriptor_for(&mut self, path: &Path, spec: usize, error: Option<&std::io::Error>) {
        self.events.out_of_descriptors(spec);
        if !self.out_of_descriptors {
            self.out_of_descriptors = true;
            let open = self.files.len();
            match error {
                Some(error) => {
                    tracing::warn!(path = %path.display(), open, %error, "Out of file descriptors: files that cannot be opened now are followed when room appears; raise LimitNOFILE (ulimit -n).")
                }
                None => {
                    tracing::warn!(path = %path.display(), open, limit = self.options.max_open_files, "Out of file descriptors for more log files (the rest of the limit is kept for the state database, delivery and the admin endpoint): files beyond it are followed when room appears; raise LimitNOFILE (ulimit -n).")
                }
            }
        }
    }

    /// Where reading of a newly followed file starts: its saved position, its end (for
    /// `start_at: end` at start), or its beginning.
    fn starting_point(
        &mut self,
        key: FileKey,
        file: &File,
        size: u64,
        path: &Path,
        spec: usize,
        rotated: bool,
    ) -> Start {
        let start_at = self
            .options
            .specs
            .get(spec)
            .filter(|s| !self.running_patterns.contains(s.glob.as_str()))
            .map_or(StartAt::Beginning, |s| s.start_at);
        match self.saved.remove(&key) {
            // A file with saved state resumes where it stopped. If it was truncated or
            // replaced meanwhile (its first bytes or its size say so), the next read or
            // sweep finds out and handles it like a live truncation, recovering unread lines
            // from a copytruncate copy.
            Some(s) => {
                let saved = Fingerprint::from_saved(s.prefix);
                let same = saved.matches(file);
                Start {
                    offset: s.offset,
                    skipping: s.skipping,
                    // Same file: its first bytes may have grown since they were saved.
                    fingerprint: if same {
                        Fingerprint::of_file(file, size)
                    } else {
                        saved
                    },
                    how: "resumed",
                    replaced: !same,
                }
            }
            None if !self.started
                && !rotated
                && !self.saved_paths.contains(path)
                && start_at == StartAt::End =>
            {
                // `start_at: end` for a file never seen: skip what is there, including an
                // unfinished last line.
                let ends_line = size == 0 || last_byte(file, size) == Some(b'\n');
                Start {
                    offset: size,
                    skipping: !ends_line,
                    fingerprint: Fingerprint::of_file(file, size),
                    how: "from its end",
                    replaced: false,
                }
            }
            // Reading from the start fills the fingerprint as it goes.
            None => Start {
                offset: 0,
                skipping: false,
                fingerprint: Fingerprint::unknown(),
                how: "from its start",
                replaced: false,
            },
        }
    }

    /// Watches the directories that matter now: each glob's base (or its nearest existing
    /// ancestor, a stat per pattern) and each followed file's directory and symlink
    /// target's directory. The per-file part resolves symlinks, a few syscalls per file, so
    /// it is worked out again only when the followed files change, not at every rescan.
    pub(super) fn sync_watches(&mut self) {
        if self.wakeups.is_none() {
            return;
        }
        // Rotated files keep their path; a symlink's target events belong to the file that
        // is at the path now, so rotated files are left out of the target map (their
        // directories stay watched through the current file's).
        let mut followed: Vec<(FileKey, PathBuf)> = self
            .files
            .values()
            .filter(|f| f.rotated_at.is_none())
            .map(|f| (f.key, f.path.clone()))
            .collect();
        followed.sort_unstable();
        if followed != self.watched_files.0 {
            self.watched_files.1 = discovery::watch_dirs(
                std::iter::empty(),
                followed.iter().map(|(_, p)| p.as_path()),
            );
            // A followed path that is a symlink gets its events under the target's path.
            self.real_paths = followed
                .iter()
                .filter_map(|(key, path)| {
                    let real = fs::canonicalize(path).ok()?;
                    (&real != path).then_some((real, *key))
                })
                .collect();
            self.watched_files.0 = followed;
        }
        let mut dirs = discovery::watch_dirs(
            self.options.specs.iter().map(|s| s.glob.base_dir()),
            std::iter::empty(),
        );
        dirs.extend(self.watched_files.1.iter().cloned());
        // Every directory the globs' walk looked into, so that a file or directory that
        // appears anywhere a glob could match sends an event; beyond the bound, the
        // periodic rescan stays short instead.
        let globs_watched = self.glob_dirs.len() <= MAX_GLOB_WATCHES;
        if globs_watched {
            dirs.extend(self.glob_dirs.iter().cloned());
        }
        if let Some(w) = &mut self.wakeups {
            let synced = w.sync(&dirs);
            self.events_reliable = synced.failures == 0;
            // A file created in a new directory after the globs were expanded and before
            // its watch was added sends no event: look once more.
            if synced.added > 0 && self.started {
                self.rescan_requested = true;
            }
            // The rescan may be rare only when events see every place a new file can
            // appear: every directory of the globs' walk is watched, and none is on a
            // filesystem whose changes can come from elsewhere without an event (NFS,
            // SMB, FUSE).
            self.events_cover_all = self.events_reliable
                && globs_watched
                && dirs.iter().all(|d| discovery::local_filesystem(d));
        }
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

/// Where reading of a newly followed file starts.
struct Start {
    offset: u64,
    /// The offset is inside a cut line whose rest is skipped.
    skipping: bool,
    fingerprint: Fingerprint,
    /// For the log: "resumed", "from its end", "from its start".
    how: &'static str,
    /// The saved first bytes are not the file's any more: the next sweep must look at
    /// the file even if its size and time have not moved since now.
    replaced: bool,
}

/// The most directories watched for the globs' walk (one inotify watch each).
const MAX_GLOB_WATCHES: usize = 4096;

/// Directory listings taken once per rescan: directory → its entries (UTF-8 names, the
/// only ones a rotated sibling can have) and their paths, sorted by name.
type Listings = HashMap<PathBuf, Vec<(String, PathBuf)>>;

/// Which rotated siblings `Tailer::missed_rotations` looks for.
#[derive(Clone, Copy)]
enum Siblings<'a> {
    /// Files that were not in the directory at the last rescan.
    NewSince(&'a HashSet<FileKey>),
    /// Files modified at or after this time (at start, when there is no earlier rescan).
    ModifiedSince(SystemTime),
}
