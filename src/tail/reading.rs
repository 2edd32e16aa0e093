//! Reading followed files: the sweep that notices growth, truncation and deletion, reads
//! up to the per-poll budget, copytruncate recovery, and the release of rotated files.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use super::identity::Fingerprint;
use super::line_splitter::SplitLine;
use super::{
    Checkpoint, FileKey, Followed, LineOrigin, LineSink, Rotation, SavedFile, TailEvents, Tailer,
    discovery,
};

impl Tailer {
    /// `fstat`s every open file: detects truncation and deletion, and notices growth the
    /// events missed.
    pub(super) fn sweep(&mut self, sink: &mut dyn LineSink) {
        let keys: Vec<FileKey> = self.files.keys().copied().collect();
        for key in keys {
            self.check(key, sink, true);
        }
    }

    /// `fstat`s one open file: deletion, truncation, growth; with `thorough` (the sweep)
    /// also whether its first bytes were replaced in place, which costs a read. Without
    /// reliable file events it also looks at the path, which names another file after a
    /// rotation (with events, the rename itself asks for a rescan).
    pub(super) fn check(&mut self, key: FileKey, sink: &mut dyn LineSink, thorough: bool) {
        let Some(f) = self.files.get_mut(&key) else {
            return;
        };
        let metadata = match f.file.metadata() {
            Ok(m) => m,
            Err(error) => {
                self.events.read_failed(f.spec);
                tracing::warn!(path = %f.path.display(), %error, "Cannot stat a followed file.");
                return;
            }
        };
        if metadata.nlink() == 0 && f.rotated_at.is_none() {
            tracing::info!(path = %f.path.display(), "File deleted; reading it to its end.");
            f.rotated_at = Some(Instant::now());
            f.last_growth = Instant::now();
        }
        if f.rotated_at.is_none() && !self.events_reliable {
            match fs::metadata(&f.path) {
                Ok(m) if FileKey::of(&m) == key => {}
                _ => self.rescan_requested = true,
            }
        }
        let size = metadata.len();
        let mtime = metadata.mtime_nsec() + metadata.mtime() * 1_000_000_000;
        let changed = size != f.last_size || mtime != f.last_mtime;
        if !thorough && size >= f.offset {
            // Not truncated by size. Whether the content was replaced in place is for the
            // sweep to find, which then still sees the change (size and time are only
            // recorded by it).
            if size > f.offset {
                f.wants_read = true;
            }
            return;
        }
        f.last_size = size;
        f.last_mtime = mtime;
        let truncated = size < f.offset
            || (changed && f.fingerprint.is_known() && !f.fingerprint.matches(&f.file));
        if truncated {
            self.truncated(key, sink);
        } else if size > f.offset {
            f.wants_read = true;
        }
    }

    /// Handles a file whose content was cut or replaced in place (copytruncate).
    pub(super) fn truncated(&mut self, key: FileKey, sink: &mut dyn LineSink) {
        let copy = self.files.get(&key).and_then(|f| {
            self.events.rotated(f.spec, Rotation::Truncated);
            tracing::warn!(path = %f.path.display(), offset = f.offset, "File truncated; reading it again from its start.");
            find_copy(&f.path, &f.fingerprint, f.offset, &self.files)
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
                    prefix: f.fingerprint.to_vec(),
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
        f.fingerprint.forget();
        f.splitter.reset();
        f.dirty = true;
        f.wants_read = true;
    }

    /// Reads what file `key` has, up to the budget, handling a truncation found on the
    /// way. Returns whether more is waiting.
    pub(super) fn read(&mut self, key: FileKey, sink: &mut dyn LineSink) -> bool {
        loop {
            match self.read_some(key, sink) {
                ReadOutcome::Drained => return false,
                ReadOutcome::BudgetSpent => return true,
                ReadOutcome::Truncated => self.truncated(key, sink),
            }
        }
    }

    pub(super) fn read_some(&mut self, key: FileKey, sink: &mut dyn LineSink) -> ReadOutcome {
        let Some(f) = self.files.get_mut(&key) else {
            return ReadOutcome::Drained;
        };
        f.wants_read = false;
        // A rotated file is drained before the file that replaced it. If it was also
        // truncated and rewritten to exactly our offset, nothing new is read and only its
        // first bytes tell; check them now so that its new content is not read after the
        // next file's. (Other files learn of such a truncation at the next sweep.)
        if f.rotated_at.is_some() && f.fingerprint.replaced(&f.file, f.offset) {
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
            if f.fingerprint.replaced(&f.file, f.offset) {
                return ReadOutcome::Truncated;
            }
            let chunk = &self.buf[..n];
            f.fingerprint.grow(f.offset, chunk);
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
    pub(super) fn release_expired(&mut self, sink: &mut dyn LineSink) {
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
}

/// How a read of one file ended.
pub(super) enum ReadOutcome {
    /// Everything there is was read.
    Drained,
    /// The per-poll budget ran out; more is waiting.
    BudgetSpent,
    /// The file no longer starts as it did: it was truncated and written again.
    Truncated,
}

/// Hands the lines completed by `chunk` to `sink`.
pub(super) fn emit_lines(
    f: &mut Followed,
    chunk: &[u8],
    sink: &mut dyn LineSink,
    events: &dyn TailEvents,
) {
    let mut chunk = chunk;
    // A line held from the last chunk (or the rest of a cut line) is finished first,
    // through the splitter; from there on the chunk starts at a line start.
    if f.splitter.pending() > 0 || f.splitter.is_skipping() {
        match memchr::memchr(b'\n', chunk) {
            Some(i) => {
                split_through(f, &chunk[..=i], sink, events);
                chunk = &chunk[i + 1..];
            }
            None => return split_through(f, chunk, sink, events),
        }
    }
    // The common case: the chunk's whole lines go out as one run (unless one is long
    // enough to be cut), and only its unfinished end goes through the splitter.
    if let Some(last) = memchr::memrchr(b'\n', chunk) {
        let run = &chunk[..=last];
        let max = f.splitter.max_line_bytes();
        let mut lines = 0u64;
        let mut line_start = 0;
        let mut fits = true;
        for newline in memchr::memchr_iter(b'\n', run) {
            if newline - line_start > max {
                fits = false;
                break;
            }
            lines += 1;
            line_start = newline + 1;
        }
        if fits {
            let origin = LineOrigin {
                path: &f.path,
                key: f.key,
                spec: f.spec,
                cut: false,
            };
            sink.lines(&origin, run);
            events.lines_read(f.spec, lines, run.len() as u64);
            chunk = &chunk[last + 1..];
        }
    }
    if !chunk.is_empty() {
        split_through(f, chunk, sink, events);
    }
}

/// Feeds `chunk` through the file's splitter, handing out each line it completes or cuts.
fn split_through(f: &mut Followed, chunk: &[u8], sink: &mut dyn LineSink, events: &dyn TailEvents) {
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
pub(super) fn flush_lines(f: &mut Followed, sink: &mut dyn LineSink, events: &dyn TailEvents) {
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

/// Opens `path` for reading only if it is a regular file. The open itself does not block
/// (`O_NONBLOCK`: opening a FIFO for reading would wait for a writer, for good), and
/// anything but a regular file (a FIFO, socket or device named like a log) is refused.
///
/// `O_NOATIME` where the kernel allows it (the agent owns the file, or runs as root): a
/// log being written always has its access time behind its modification time, so with
/// `relatime` every read would also write the inode (about 6% of the agent's CPU under a
/// steady load). Where it is refused (`EPERM`), the file is opened without it.
pub(super) fn open_regular(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |flags| {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path)
    };
    let file = match open(libc::O_NONBLOCK | libc::O_NOATIME) {
        Err(error) if error.raw_os_error() == Some(libc::EPERM) => open(libc::O_NONBLOCK)?,
        other => other?,
    };
    if file.metadata()?.is_file() {
        // Reads of a regular file never block on O_NONBLOCK's account; the flag only
        // mattered for the open.
        Ok(file)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, socket or device); it is not read",
        ))
    }
}

pub(super) fn last_byte(file: &File, size: u64) -> Option<u8> {
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, size.checked_sub(1)?).ok()?;
    Some(byte[0])
}

/// The copy that copytruncate left next to `path`: a rotated sibling that starts with the
/// same bytes (`fingerprint`), is at least `offset` long and is not followed. The newest
/// one wins.
pub(super) fn find_copy(
    path: &Path,
    fingerprint: &Fingerprint,
    offset: u64,
    followed: &HashMap<FileKey, Followed>,
) -> Option<(PathBuf, File)> {
    if !fingerprint.is_known() {
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
        let Ok(file) = open_regular(&entry.path()) else {
            continue;
        };
        let Ok(metadata) = file.metadata() else {
            continue;
        };
        if followed.contains_key(&FileKey::of(&metadata))
            || metadata.len() < offset
            || !fingerprint.matches(&file)
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
