//! Wake-ups from the kernel's file events, read from inotify directly.
//!
//! Events are hints, never facts: they say "look at this path soon". The tailer's own
//! `stat` sweep is the source of truth, so a lost, merged or reordered event costs latency,
//! never data. One non-recursive watch per directory sees its files being written,
//! created, renamed and deleted, and survives the rotation of any of them.
//!
//! The inotify descriptor is polled by the tailer's own thread and drained in one `read`
//! per wake-up. A watcher thread of its own (as the `notify` crate runs) woke for every
//! single write and handed each event over a channel: at 10,000 writes a second that thread
//! alone cost about 4% of a core, more than reading the lines did. All inotify system
//! calls stay in this file.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::RawFd;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the events received so far ask for.
#[derive(Debug, Default)]
pub struct Hints {
    /// Paths written to.
    pub written: HashSet<PathBuf>,
    /// Something was created, renamed or removed (or events were lost): look for files.
    pub rescan: bool,
    /// Events may have been lost (a queue overflow, a watched directory gone): sweep every
    /// file now.
    pub lost: bool,
}

/// The events each watched directory reports: its files' writes, closes after writing,
/// metadata changes, creations, deletions and renames, and its own removal or renaming.
/// Reads and opens are not asked for, so the tailer's own reading wakes nobody.
const WATCH_MASK: u32 = libc::IN_MODIFY
    | libc::IN_CLOSE_WRITE
    | libc::IN_ATTRIB
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;

/// The fixed part of `struct inotify_event`: wd, mask, cookie, len.
const EVENT_HEADER: usize = 16;

/// Room for about 2,000 events with short names per `read`.
const BUFFER_SIZE: usize = 64 * 1024;

/// What [`Wakeups::sync`] did.
pub struct Synced {
    pub failures: usize,
    pub added: usize,
}

pub struct Wakeups {
    fd: OwnedFd,
    /// The directories each watch descriptor stands for. The kernel gives one descriptor
    /// to one directory however many names reach it (a symlinked directory and its
    /// target), so the watch is removed only when no name needs it any more.
    names: HashMap<i32, Vec<PathBuf>>,
    watched: HashMap<PathBuf, i32>,
    /// Directories that could not be watched, so the failure is logged once.
    failed: HashSet<PathBuf>,
    pending: Hints,
    buf: Vec<u8>,
}

impl Wakeups {
    /// Opens an inotify instance. `None` when the kernel refuses (then only the sweep runs).
    pub fn new() -> Option<Self> {
        // SAFETY: inotify_init1 takes flags only and returns a new descriptor or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            let error = io::Error::last_os_error();
            tracing::warn!(%error, "Cannot watch files for changes; polling only.");
            return None;
        }
        Some(Self {
            // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            names: HashMap::new(),
            watched: HashMap::new(),
            failed: HashSet::new(),
            pending: Hints::default(),
            buf: vec![0; BUFFER_SIZE],
        })
    }

    /// Watches exactly `dirs` (adding and removing watches as needed). Returns how many
    /// directories could not be watched, and how many watches are new.
    pub fn sync(&mut self, dirs: &HashSet<PathBuf>) -> Synced {
        let gone: Vec<PathBuf> = self
            .watched
            .keys()
            .filter(|d| !dirs.contains(*d))
            .cloned()
            .collect();
        for dir in gone {
            self.forget(&dir, true);
        }
        let mut failures = 0;
        let mut added = 0;
        // New failures are logged once per kind, with a count, after the loop: past the
        // inotify limit every further directory fails the same way.
        let mut at_limit: Option<(usize, PathBuf)> = None;
        let mut other: Option<(usize, PathBuf, io::Error)> = None;
        for dir in dirs {
            if self.watched.contains_key(dir) {
                continue;
            }
            match self.add_watch(dir) {
                Ok(wd) => {
                    added += 1;
                    self.failed.remove(dir);
                    self.watched.insert(dir.clone(), wd);
                    self.names.entry(wd).or_default().push(dir.clone());
                }
                Err(error) => {
                    failures += 1;
                    if self.failed.insert(dir.clone()) {
                        if error.raw_os_error() == Some(libc::ENOSPC) {
                            let entry = at_limit.get_or_insert((0, dir.clone()));
                            entry.0 += 1;
                        } else {
                            let entry = other.get_or_insert((0, dir.clone(), error));
                            entry.0 += 1;
                        }
                    }
                }
            }
        }
        if let Some((count, first)) = at_limit {
            tracing::warn!(
                directories = count,
                first = %first.display(),
                "The inotify watch limit is reached: these directories' files are polled instead of watched. \
                 Raise fs.inotify.max_user_watches (sysctl) to watch them."
            );
        }
        if let Some((count, first, error)) = other {
            tracing::warn!(
                directories = count,
                first = %first.display(),
                %error,
                "Cannot watch directories; their files are polled instead."
            );
        }
        Synced { failures, added }
    }

    /// Waits up to `timeout` for an event. Returns whether one may have arrived.
    pub fn wait(&mut self, timeout: Duration, also: Option<RawFd>) -> Woken {
        wait_for(Some(self.fd.as_raw_fd()), also, timeout)
    }

    /// Takes every hint received so far.
    pub fn take(&mut self) -> Hints {
        loop {
            // SAFETY: the buffer is valid for writes of its whole length.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                )
            };
            if n > 0 {
                let buf = std::mem::take(&mut self.buf);
                self.note_all(&buf[..n as usize]);
                self.buf = buf;
                continue;
            }
            let error = io::Error::last_os_error();
            if n < 0 && error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if n < 0 && error.kind() != io::ErrorKind::WouldBlock {
                tracing::debug!(%error, "Cannot read file events; rescanning and sweeping.");
                self.pending.rescan = true;
                self.pending.lost = true;
            }
            break;
        }
        std::mem::take(&mut self.pending)
    }

    fn add_watch(&self, dir: &Path) -> io::Result<i32> {
        let path = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in path"))?;
        // SAFETY: a valid descriptor, a NUL-terminated path and a mask.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), WATCH_MASK) };
        if wd < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(wd)
        }
    }

    /// Stops watching `dir`; with `remove`, also asks the kernel to drop the watch once no
    /// other name shares it (without, the kernel has dropped it already).
    fn forget(&mut self, dir: &Path, remove: bool) {
        let Some(wd) = self.watched.remove(dir) else {
            return;
        };
        let last = match self.names.get_mut(&wd) {
            Some(names) => {
                names.retain(|n| n != dir);
                names.is_empty()
            }
            None => true,
        };
        if last {
            self.names.remove(&wd);
            if remove {
                // SAFETY: a valid descriptor and a watch it returned. The directory may
                // be gone with its watch already, which makes this fail harmlessly.
                unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
            }
        }
    }

    /// Notes every event in `events`, a buffer filled by one `read`.
    fn note_all(&mut self, mut events: &[u8]) {
        // The same file written many times in a row reads as the same event again and
        // again; its path is built once.
        let mut previous: Option<(i32, &[u8])> = None;
        while events.len() >= EVENT_HEADER {
            let field = |at: usize| {
                let mut bytes = [0u8; 4];
                bytes.copy_from_slice(&events[at..at + 4]);
                bytes
            };
            let wd = i32::from_ne_bytes(field(0));
            let mask = u32::from_ne_bytes(field(4));
            let len = u32::from_ne_bytes(field(12)) as usize;
            let end = (EVENT_HEADER + len).min(events.len());
            let raw_name = &events[EVENT_HEADER..end];
            // The name is padded with NUL bytes to the event's length.
            let name = &raw_name[..memchr::memchr(0, raw_name).unwrap_or(raw_name.len())];
            events = &events[end..];
            if previous == Some((wd, name)) && mask & (libc::IN_MODIFY | libc::IN_CLOSE_WRITE) != 0
            {
                continue;
            }
            previous = Some((wd, name));
            self.note(wd, mask, name);
        }
    }

    fn note(&mut self, wd: i32, mask: u32, name: &[u8]) {
        if mask & libc::IN_Q_OVERFLOW != 0 {
            // The kernel's queue overflowed: write hints were dropped.
            self.pending.rescan = true;
            self.pending.lost = true;
            return;
        }
        // A watched directory that was removed or renamed has lost its watch (the kernel
        // drops it, or it now follows the moved directory): forget it, so that the next
        // sync watches the path again (or counts a failure and the tailer sweeps often).
        if mask & (libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0 {
            let Some(dirs) = self.names.get(&wd).cloned() else {
                // The end of a watch this side removed (`sync`): nothing was lost.
                return;
            };
            let still_watched = mask & libc::IN_IGNORED == 0;
            for dir in dirs {
                self.forget(&dir, still_watched);
            }
            self.pending.rescan = true;
            self.pending.lost = true;
            return;
        }
        if name.is_empty() {
            return;
        }
        let Some(dirs) = self.names.get(&wd) else {
            // An event from a watch removed a moment ago.
            return;
        };
        let name = OsStr::from_bytes(name);
        for dir in dirs {
            self.pending.written.insert(dir.join(name));
        }
        if mask & (libc::IN_MODIFY | libc::IN_CLOSE_WRITE) == 0 {
            // Created, deleted, renamed, or its metadata changed.
            self.pending.rescan = true;
        }
    }
}

/// What ended a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Woken {
    /// File events arrived (or the wait was interrupted).
    pub events: bool,
    /// The other descriptor is readable.
    pub also: bool,
}

/// Waits until `events` or `also` is readable, or `timeout` passes.
pub fn wait_for(events: Option<RawFd>, also: Option<RawFd>, timeout: Duration) -> Woken {
    // Round up, so that a wait of less than a millisecond does not spin.
    let millis = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    let fds: Vec<libc::pollfd> = [events, also]
        .into_iter()
        .map(|fd| libc::pollfd {
            // A negative descriptor is ignored by poll.
            fd: fd.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut fds = fds;
    // SAFETY: a valid array of pollfd, and its count.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
    // An interrupted wait (-1, EINTR) counts as a wake-up; the caller looks and waits
    // again.
    Woken {
        events: ready < 0 || (events.is_some() && fds[0].revents != 0),
        also: also.is_some() && fds[1].revents != 0,
    }
}
