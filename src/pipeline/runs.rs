//! Runs of whole lines read at once (a chunk of a file, be it a few lines just written or
//! 64 KiB of a backlog): searched whole, as `rg` searches a buffer, so that only the lines
//! where a rule's pattern may match are looked at one by one. The property test in
//! `tests.rs` holds this to the line-by-line path.

use super::{Origin, Output, Pipeline, decode};

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
        // Invalid UTF-8 is matched as its lossy form, line by line. Even a run of a few
        // lines is searched whole: the gate is the same automaton either way, so there is
        // nothing to build first (the steady-state bench's CPU did not move beyond its
        // noise either way). A carriage return is left out of a line (`\r\n`) or is in the middle of one, where the gate's
        // `$` would not see what it sees in the line alone: such runs go line by line.
        if !plain
            || self.max_context > 0
            || memchr::memchr(b'\r', run).is_some()
            || std::str::from_utf8(run).is_err()
        {
            return self.lines_one_by_one(origin, run, now_ms, out);
        }
        let rules = self.rules_for(origin.path, out);
        if !rules.scans() {
            return self.lines_one_by_one(origin, run, now_ms, out);
        }
        let mut from = 0;
        while from < run.len() {
            let Some(start) = rules.next_line_to_check(run, from) else {
                break;
            };
            let end = memchr::memchr(b'\n', &run[start..]).map_or(run.len(), |i| start + i);
            let line = &run[start..end];
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
