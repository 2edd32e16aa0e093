//! What happens to followed files, reported as it happens.
//!
//! The tailer calls a [`TailEvents`] at each event (a file followed, rotated, truncated,
//! released; lines read or cut; an open or read error), the way Vector's file source emits
//! internal events. The agent's metrics implement it; tests count with their own. Calls
//! are cheap and never fail: read lines are reported once per chunk, not per line.

/// How a file was rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// Moved away or deleted, with a new file at its path (or none yet).
    Renamed,
    /// Cut in place (copytruncate) or rewritten from its start.
    Truncated,
}

/// Receives the tailer's events. `spec` is the index of the [`WatchSpec`](super::WatchSpec)
/// the file was found by. Every method defaults to nothing.
pub trait TailEvents: Send + Sync {
    /// A file is followed from now on: new, found under a rotated name, or resumed (every
    /// file is resumed when a tailer is made: at start, at a reload, after a failed
    /// commit).
    fn file_followed(&self, _spec: usize) {}
    /// A rotated or deleted file was read to its end and closed.
    fn file_released(&self, _spec: usize) {}
    fn rotated(&self, _spec: usize, _kind: Rotation) {}
    /// Lines lost to a copytruncate were recovered from the copy next to the file.
    fn copy_recovered(&self, _spec: usize) {}
    /// Lines handed out, and their bytes with their newline (an unfinished last line,
    /// handed out when its file is released, has none).
    fn lines_read(&self, _spec: usize, _lines: u64, _bytes: u64) {}
    /// A line longer than `max_line_bytes` was cut.
    fn line_cut(&self, _spec: usize) {}
    /// A file could not be opened (once per path until it opens; it is tried again at
    /// every rescan).
    fn open_failed(&self, _spec: usize) {}
    /// A followed file could not be read or `fstat`ed.
    fn read_failed(&self, _spec: usize) {}
    /// A file was not opened because no descriptor was left for it (`max_open_files`
    /// reached, or the system's limit); it is tried again at every rescan.
    fn out_of_descriptors(&self, _spec: usize) {}
}

/// Events nobody listens to.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEvents;

impl TailEvents for NoEvents {}
