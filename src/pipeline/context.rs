//! The last lines of each file, for rules with `context.before` (`{context}`).

/// The last lines of a file, for rules with `context.before`. Buffers are reused, so
/// keeping the ring costs a copy per line but no allocation once it is full.
#[derive(Debug, Default)]
pub struct ContextRing {
    lines: std::collections::VecDeque<Vec<u8>>,
    capacity: usize,
}

impl ContextRing {
    pub fn new(capacity: usize) -> Self {
        Self {
            lines: std::collections::VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// The last `n` lines (oldest first), joined with `\n`.
    pub fn last(&self, n: usize) -> Vec<u8> {
        let skip = self.lines.len().saturating_sub(n);
        let mut out = Vec::new();
        for (i, line) in self.lines.iter().skip(skip).enumerate() {
            if i > 0 {
                out.push(b'\n');
            }
            out.extend_from_slice(line);
        }
        out
    }

    /// Remembers `line` as the most recent one.
    pub fn push(&mut self, line: &[u8]) {
        if self.capacity == 0 {
            return;
        }
        let mut buf = if self.lines.len() == self.capacity {
            self.lines.pop_front().unwrap_or_default()
        } else {
            Vec::new()
        };
        buf.clear();
        buf.extend_from_slice(line);
        self.lines.push_back(buf);
    }
}
