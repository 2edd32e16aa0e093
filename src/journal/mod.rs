//! The systemd journal as a source: `journalctl --output=export` as a child process.
//!
//! Why a child and not a library: Vector, Filebeat and the OpenTelemetry collector all
//! moved to `journalctl` after crashes and leaks in libsystemd bindings took their agents
//! down; a child that dies is restarted, a corrupt journal file crashes `journalctl`, not
//! chattail. `journalctl` reads every journal format systemd ever wrote (compact mode,
//! zstd, lz4, xz), which a pure-Rust reader has to catch up with. The cost is one process
//! and a pipe; the export format is cheap to parse ([`export`]).
//!
//! The reader is polled by the ingest thread, never blocking: the pipe is non-blocking,
//! its descriptor is what the ingest loop waits on next to the file events, and what one
//! poll reads is bounded. Where reading starts:
//!
//! - with a saved position, at that entry (`--cursor`, inclusive), which is then skipped:
//!   if the first entry is not it, the journal no longer holds it (rotated or vacuumed
//!   while chattail was down), reading resumes at the oldest entry after it, and
//!   [`ReaderEvent::Gap`] says how many entries may have been skipped;
//! - without one, at the end: a first `journalctl --lines=1` finds the last entry, which
//!   becomes the position (so that a restart before any new entry resumes there, not at a
//!   later end), or at the beginning of an empty journal;
//! - `start_at: beginning` without one: at the oldest entry.
//!
//! A `journalctl` that exits, cannot start, writes something that is not export format,
//! or stops mid-entry for [`STUCK_AFTER`] is restarted after 1, 2, 4 … 30 s, from the last
//! entry handed out. Every such event is reported to the caller ([`ReaderEvent`]), which
//! logs and counts it; this module writes no log.
//!
//! Never: matches rules, writes the store, or decides what is committed: the caller saves
//! [`JournalReader::position`] with the notifications of the entries before it.

pub mod export;

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

pub use export::{Entry, ExportError, ExportParser};

/// A reader that has begun an entry and sent nothing more for this long is stuck.
pub const STUCK_AFTER: Duration = Duration::from_secs(30);

/// A running reader whose pipe has been quiet this long has read what there was.
const CAUGHT_UP_QUIET: Duration = Duration::from_secs(2);

/// A `journalctl` that has run this long without failing works again.
const WORKING_AFTER: Duration = Duration::from_secs(5);

/// The longest wait before a new start after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How many lines of its standard error a running `journalctl` may have reported.
const SAID_LINES: usize = 5;

/// How much of `journalctl`'s complaints is kept for the report of its exit.
const STDERR_KEPT: usize = 2048;

/// Where to start without a saved position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    End,
    Beginning,
}

/// How the reader runs `journalctl`.
#[derive(Debug, Clone)]
pub struct ReaderOptions {
    /// `journalctl --directory`; `None` for the system journal.
    pub directory: Option<PathBuf>,
    pub start: Start,
    /// Follow new entries (`chattail run`); without, stop at the end (`--once`, `test`).
    pub follow: bool,
    /// The most bytes kept of a `MESSAGE`.
    pub max_message: usize,
    /// The program to run (`journalctl`, found on `PATH`).
    pub program: PathBuf,
}

/// What happened to the reader, for the caller's log, counters and health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReaderEvent {
    /// `journalctl` started; `from` says where.
    Started { pid: u32, from: String },
    /// The saved position's entry is gone: reading resumed at the oldest entry after it.
    /// `skipped` is how many entries may have been skipped, when the journal tells.
    Gap { skipped: Option<u64> },
    /// `journalctl` could not be started.
    CannotStart { error: String },
    /// `journalctl` ended (or was ended because it was stuck or wrote something else).
    Exited {
        why: ExitReason,
        /// What it said on its standard error, last lines first cut.
        said: String,
        /// When the next start is.
        retry_in: Duration,
    },
    /// The reader has read an entry since it last failed: it works.
    Working,
    /// `journalctl` wrote this line on its standard error while running (its first few
    /// lines per start): a hint such as "not seeing messages from other users" means it
    /// lacks permission and reads only part of the journal.
    Said(String),
}

/// Why a `journalctl` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// It exited by itself, with this status.
    Exited(String),
    /// It began an entry and sent nothing more for [`STUCK_AFTER`].
    Stuck,
    /// It wrote something that is not export format.
    Malformed(ExportError),
}

impl ExitReason {
    /// A label value for counters.
    pub fn label(&self) -> &'static str {
        match self {
            ExitReason::Exited(_) => "exited",
            ExitReason::Stuck => "stuck",
            ExitReason::Malformed(_) => "malformed",
        }
    }
}

struct Running {
    child: Child,
    stdout: ChildStdout,
    stderr: ChildStderr,
    said: Vec<u8>,
    /// This run only finds the last entry (start at the end without a position).
    probe: bool,
    last_bytes: Instant,
    /// Whether an entry has come from this run yet.
    seen_entry: bool,
    /// How much of `said` has been reported as lines.
    reported: usize,
    /// Lines reported from this run.
    said_lines: usize,
    started: Instant,
}

/// The journal reader. See the module documentation.
pub struct JournalReader {
    options: ReaderOptions,
    running: Option<Running>,
    parser: ExportParser,
    /// The cursor of the last entry handed out (or found as the end to start from).
    position: Option<String>,
    /// Whether a start without a position reads from the oldest entry (after a probe found
    /// the journal empty).
    from_beginning: bool,
    /// The entry the running reader starts at, skipped when it comes first.
    resume_at: Option<String>,
    /// The end the probe found, where a restart without a saved position starts again
    /// (not at a later end).
    probed: Option<String>,
    /// The last entry when reading began (the probe runs at every first start), and
    /// whether reading has reached it: what was written while chattail was down is read.
    end: Option<String>,
    probe_done: bool,
    reached_end: bool,
    /// Without `follow`: why reading failed (then it has finished).
    failed: Option<String>,
    failures: u32,
    next_start: Option<Instant>,
    finished: bool,
    failing: bool,
    events: Vec<ReaderEvent>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for JournalReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalReader")
            .field("directory", &self.options.directory)
            .field("running", &self.running.as_ref().map(|r| r.child.id()))
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl JournalReader {
    /// A reader resuming at `position` (the saved cursor), started at the first poll.
    pub fn new(options: ReaderOptions, position: Option<String>) -> Self {
        let from_beginning = options.start == Start::Beginning;
        Self {
            parser: ExportParser::new(options.max_message),
            options,
            running: None,
            position,
            from_beginning,
            resume_at: None,
            probed: None,
            end: None,
            probe_done: false,
            reached_end: false,
            failed: None,
            failures: 0,
            next_start: None,
            finished: false,
            failing: false,
            events: Vec::new(),
            buf: vec![0; 64 * 1024],
        }
    }

    /// The cursor of the last entry handed out; what to save once their notifications are.
    pub fn position(&self) -> Option<&str> {
        self.position.as_deref()
    }

    /// The pipe to wait on for new entries, while `journalctl` runs.
    pub fn wait_fd(&self) -> Option<RawFd> {
        self.running.as_ref().map(|r| r.stdout.as_raw_fd())
    }

    /// Whether what the journal held when reading began has been read (or the pipe has
    /// been quiet for a while under a running reader): from then on, what is missing is
    /// really missing.
    pub fn caught_up(&self) -> bool {
        self.reached_end
            || self.running.as_ref().is_some_and(|r| {
                !r.probe
                    && r.started.elapsed() >= CAUGHT_UP_QUIET
                    && r.last_bytes.elapsed() >= CAUGHT_UP_QUIET
            })
    }

    /// Without `follow`: why reading failed, once it has.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Without `follow`: whether the reader has read to the end and stopped.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The pid of the running `journalctl`.
    pub fn child_pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.child.id())
    }

    /// Takes what happened since the last call.
    pub fn take_events(&mut self) -> Vec<ReaderEvent> {
        std::mem::take(&mut self.events)
    }

    /// Starts again at `position` (the saved one, after a failed commit): entries handed
    /// out since are read again.
    pub fn restart_at(&mut self, position: Option<String>) {
        self.stop();
        self.parser.reset();
        self.position = position.or_else(|| self.probed.clone());
        self.finished = false;
        self.next_start = None;
    }

    /// Reads what `journalctl` has sent, at most `budget` bytes, handing each entry to
    /// `sink`. Returns whether more is already waiting.
    pub fn poll(&mut self, budget: usize, sink: &mut dyn FnMut(&Entry)) -> bool {
        if self.running.is_none() && !self.finished {
            if self.next_start.is_some_and(|t| Instant::now() < t) {
                return false;
            }
            self.start();
        }
        let mut read = 0;
        while read < budget {
            let Some(running) = &mut self.running else {
                return false;
            };
            match running.stdout.read(&mut self.buf) {
                Ok(0) => {
                    self.ended(None);
                    return self.running.is_some();
                }
                Ok(n) => {
                    read += n;
                    running.last_bytes = Instant::now();
                    let probe = running.probe;
                    let mut seen = false;
                    let position = &mut self.position;
                    let resume_at = &mut self.resume_at;
                    let events = &mut self.events;
                    let end = &mut self.end;
                    let reached_end = &mut self.reached_end;
                    let result = self.parser.feed(&self.buf[..n], &mut |entry| {
                        if probe {
                            *end = Some(entry.cursor.clone());
                            return;
                        }
                        if !*reached_end
                            && end.as_deref().is_some_and(|e| at_or_past(&entry.cursor, e))
                        {
                            *reached_end = true;
                        }
                        if let Some(saved) = resume_at.take() {
                            if saved == entry.cursor {
                                return;
                            }
                            events.push(ReaderEvent::Gap {
                                skipped: skipped_between(&saved, &entry.cursor),
                            });
                        }
                        set_position(position, &entry.cursor);
                        // Only an entry handed out shows the reader works: the skipped
                        // saved entry would reset the backoff of one that dies past it.
                        seen = true;
                        sink(entry);
                    });
                    if seen && !probe && !running.seen_entry {
                        running.seen_entry = true;
                        self.failures = 0;
                        if self.failing {
                            self.failing = false;
                            self.events.push(ReaderEvent::Working);
                        }
                    }
                    if let Err(error) = result {
                        self.ended(Some(ExitReason::Malformed(error)));
                        return false;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.drain_stderr();
                    // A reader that has run a while without failing works, even when the
                    // journal has nothing new.
                    if self.failing
                        && let Some(r) = &self.running
                        && !r.probe
                        && r.started.elapsed() >= WORKING_AFTER
                    {
                        self.failing = false;
                        self.failures = 0;
                        self.events.push(ReaderEvent::Working);
                    }
                    if let Some(r) = &self.running
                        && self.parser.mid_entry()
                        && r.last_bytes.elapsed() >= STUCK_AFTER
                    {
                        self.ended(Some(ExitReason::Stuck));
                    }
                    return false;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.ended(None);
                    return false;
                }
            }
        }
        true
    }

    fn start(&mut self) {
        let mut command = Command::new(&self.options.program);
        command.args(["--output=export", "--no-pager"]);
        // Without `--merge`, `--follow` reads the current boot only (systemd 252): the
        // entries a crash left unread before a reboot would be skipped.
        command.arg("--merge");
        if let Some(dir) = &self.options.directory {
            command.arg("--directory").arg(dir);
        }
        // The first start finds the journal's last entry: where to start without a saved
        // position (at the end), and how far the backlog goes.
        let probe = !self.probe_done;
        let from = if probe {
            command.arg("--lines=1");
            "the end".to_owned()
        } else {
            if self.options.follow {
                command.arg("--follow");
            }
            command.arg("--no-tail");
            match &self.position {
                Some(cursor) => {
                    command.arg(format!("--cursor={cursor}"));
                    self.resume_at = Some(cursor.clone());
                    "the saved position".to_owned()
                }
                None => {
                    self.resume_at = None;
                    "the oldest entry".to_owned()
                }
            }
        };
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("SYSTEMD_COLORS", "0");
        // SAFETY: the closure only calls prctl, which is async-signal-safe. It makes the
        // kernel end `journalctl` when chattail dies (even by SIGKILL), so no reader
        // outlives the agent it fed.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let spawned = command.spawn().and_then(|mut child| {
            let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::io::Error::other("no pipes to journalctl"));
            };
            if let Err(e) = set_nonblocking(stdout.as_raw_fd())
                .and_then(|()| set_nonblocking(stderr.as_raw_fd()))
            {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
            widen_pipe(stdout.as_raw_fd());
            Ok((child, stdout, stderr))
        });
        self.parser.reset();
        match spawned {
            Ok((child, stdout, stderr)) => {
                self.events.push(ReaderEvent::Started {
                    pid: child.id(),
                    from,
                });
                self.running = Some(Running {
                    child,
                    stdout,
                    stderr,
                    said: Vec::new(),
                    probe,
                    last_bytes: Instant::now(),
                    seen_entry: false,
                    reported: 0,
                    said_lines: 0,
                    started: Instant::now(),
                });
            }
            Err(error) => {
                let program = self.options.program.display();
                let error = match error.kind() {
                    std::io::ErrorKind::NotFound => format!(
                        "`{program}` was not found; install systemd's journalctl (Debian: package `systemd`) or put it on PATH"
                    ),
                    _ => format!("cannot run `{program}`: {error}"),
                };
                self.events.push(ReaderEvent::CannotStart { error });
                self.failed();
            }
        }
    }

    /// `journalctl` ended (`why` is `None`) or is ended for `why`.
    fn ended(&mut self, why: Option<ExitReason>) {
        self.drain_stderr();
        let Some(mut running) = self.running.take() else {
            return;
        };
        // Killing a child that has exited is harmless; one that has not (a read error on
        // a live pipe) must not be waited for alive.
        let _ = running.child.kill();
        let status = running.child.wait();
        let clean = why.is_none() && status.as_ref().is_ok_and(|s| s.success());
        if running.probe && clean {
            self.probe_done = true;
            // An empty journal has no backlog.
            self.reached_end = self.end.is_none();
            if self.position.is_none() && !self.from_beginning {
                // Start at the end found (an empty journal: at its beginning).
                self.position.clone_from(&self.end);
                self.probed.clone_from(&self.end);
                self.from_beginning = self.position.is_none();
            }
            return self.start();
        }
        if !self.options.follow {
            // Reading to the end: a failure (of the probe too) is final, not retried.
            self.finished = true;
            if !clean {
                let said = String::from_utf8_lossy(&running.said).trim().to_owned();
                let what = match &why {
                    Some(reason) => format!("{reason:?}"),
                    None => match &status {
                        Ok(s) => format!("journalctl ended ({s})"),
                        Err(e) => e.to_string(),
                    },
                };
                self.failed = Some(if said.is_empty() {
                    what
                } else {
                    format!("{what}: {said}")
                });
            }
            return;
        }
        let why = why.unwrap_or_else(|| {
            ExitReason::Exited(match status {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            })
        });
        let said = String::from_utf8_lossy(&running.said).trim().to_owned();
        self.parser.reset();
        let retry_in = self.failed();
        self.events.push(ReaderEvent::Exited {
            why,
            said,
            retry_in,
        });
    }

    /// Schedules the next start after one more failure; returns the wait.
    fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.failing = true;
        let wait =
            Duration::from_secs(1u64 << self.failures.saturating_sub(1).min(5)).min(MAX_BACKOFF);
        self.next_start = Some(Instant::now() + wait);
        wait
    }

    fn drain_stderr(&mut self) {
        let Some(running) = &mut self.running else {
            return;
        };
        let mut chunk = [0u8; 1024];
        while let Ok(n) = running.stderr.read(&mut chunk) {
            if n == 0 {
                break;
            }
            running.said.extend_from_slice(&chunk[..n]);
            if running.said.len() > STDERR_KEPT {
                let cut = running.said.len() - STDERR_KEPT;
                running.said.drain(..cut);
                running.reported = running.reported.saturating_sub(cut);
            }
        }
        // Complete lines not reported yet, at most a few per run.
        while running.said_lines < SAID_LINES
            && let Some(end) = memchr::memchr(b'\n', &running.said[running.reported..])
        {
            let line = &running.said[running.reported..running.reported + end];
            let text = String::from_utf8_lossy(line).trim().to_owned();
            running.reported += end + 1;
            if !text.is_empty() {
                running.said_lines += 1;
                self.events.push(ReaderEvent::Said(text));
            }
        }
    }

    fn stop(&mut self) {
        if let Some(mut running) = self.running.take() {
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
    }
}

impl Drop for JournalReader {
    fn drop(&mut self) {
        self.stop();
    }
}

fn set_position(position: &mut Option<String>, cursor: &str) {
    match position {
        Some(p) => {
            p.clear();
            p.push_str(cursor);
        }
        None => *position = Some(cursor.to_owned()),
    }
}

/// Whether `cursor` is `end`, or later in the same journal sequence.
fn at_or_past(cursor: &str, end: &str) -> bool {
    if cursor == end {
        return true;
    }
    match (export::cursor_seqnum(cursor), export::cursor_seqnum(end)) {
        (Some((a, n)), Some((b, m))) => a == b && n >= m,
        _ => false,
    }
}

/// How many entries lie between two cursors of the same journal sequence, when they are
/// of the same one.
fn skipped_between(saved: &str, first: &str) -> Option<u64> {
    let (saved_id, saved_n) = export::cursor_seqnum(saved)?;
    let (first_id, first_n) = export::cursor_seqnum(first)?;
    (saved_id == first_id).then(|| first_n.saturating_sub(saved_n).saturating_sub(1))
}

/// The pipe's buffer, raised from 64 KiB: the ingest loop lets output gather for a few
/// milliseconds before it reads, and `journalctl` catching up writes tens of MB a second;
/// with a small buffer it would block and wait for every read.
const PIPE_BYTES: libc::c_int = 1 << 20;

fn widen_pipe(fd: RawFd) {
    // SAFETY: fcntl on a pipe this process owns. A refusal (a lower pipe-max-size)
    // leaves the default size, which is slower but correct.
    unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_BYTES) };
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor this process owns, with valid flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_a_gap_may_have_skipped() {
        assert_eq!(skipped_between("s=a;i=10;b=0", "s=a;i=15;b=0"), Some(4));
        assert_eq!(skipped_between("s=a;i=10", "s=b;i=1"), None);
    }
}
