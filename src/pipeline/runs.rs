//! Runs of whole lines read at once (a chunk of a file being caught up): searched whole,
//! as `rg` searches a buffer, so that only the lines where a rule's pattern may match are
//! looked at one by one. The property test in `tests.rs` holds this to the line-by-line
//! path.

use super::{Origin, Output, Pipeline, decode};

/// The shortest run of lines searched whole ([`Pipeline::lines`]): below it (a file read
/// as it is written, a few lines at a time), lines are matched one by one, and the rule
/// set's scanner is not even built.
pub const MIN_SCANNED_RUN: usize = 16 * 1024;

impl Pipeline {
    /// A run of whole lines of a file (each ending in `\n`, none cut), read at once: the
    /// same as [`line`](Self::line) for each of them, but for a plain file without
    /// `multiline` and without `context.before` rules the run is searched whole, as `rg`
    /// searches a buffer, and only the lines where a rule's pattern may match are looked
    /// at one by one. (A line no rule matches changes nothing there: no window, no event,
    /// no context ring to keep.)
    pub fn lines(&mut self, origin: &Origin<'_>, run: &[u8], now_ms: i64, out: &mut dyn Output) {
        let plain = self
            .config
            .reading(origin.spec)
            .is_none_or(|r| r.format == decode::Format::Plain && r.multiline.is_none());
        // Invalid UTF-8 is matched as its lossy form, line by line. A short run (a file
        // followed as it is written) is not worth a search of its own.
        if !plain
            || run.len() < self.min_scanned_run
            || self.max_context > 0
            || std::str::from_utf8(run).is_err()
        {
            return self.lines_one_by_one(origin, run, now_ms, out);
        }
        let rules = self.rules_for(origin.path, out);
        let ready = match &self.background {
            Some(background) => rules.scanner_ready(background),
            None => rules.scans(),
        };
        if !ready {
            return self.lines_one_by_one(origin, run, now_ms, out);
        }
        let mut from = 0;
        while from < run.len() {
            // A match at the very end (an empty one after the last newline) is in no line.
            let Some(at) = rules.next_candidate(run, from).filter(|&at| at < run.len()) else {
                break;
            };
            let start = memchr::memrchr(b'\n', &run[..at])
                .map_or(0, |i| i + 1)
                .max(from);
            let end = memchr::memchr(b'\n', &run[at..]).map_or(run.len(), |i| at + i);
            let line = &run[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            self.decoded_line(origin, line, now_ms, out);
            from = end + 1;
        }
    }

    /// [`lines`](Self::lines) the slow way: each line through [`line`](Self::line).
    pub fn lines_one_by_one(
        &mut self,
        origin: &Origin<'_>,
        run: &[u8],
        now_ms: i64,
        out: &mut dyn Output,
    ) {
        for line in run.split_inclusive(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            self.line(origin, line, now_ms, out);
        }
    }
}
