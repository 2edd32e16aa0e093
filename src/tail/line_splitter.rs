//! Splitting a byte stream into lines, with a cap on line length.
//!
//! The splitter is fed chunks as they are read from a file. It holds an incomplete last
//! line until its newline arrives, cuts a line longer than the cap (emitting its first
//! `max` bytes and skipping the rest up to the newline) and reports the offset that a
//! checkpoint may record: the start of the first byte not yet handed out as a line.
//! Bytes are bytes: NUL and invalid UTF-8 pass through untouched.

/// One line handed out by the splitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitLine<'a> {
    /// The line without its `\n` (and without a `\r` before it).
    pub bytes: &'a [u8],
    /// Whether the line was longer than the cap and has been cut.
    pub cut: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineSplitter {
    partial: Vec<u8>,
    skipping: bool,
    max: usize,
}

impl LineSplitter {
    /// A splitter for lines of at most `max` bytes (at least 1).
    pub fn new(max: usize) -> Self {
        Self {
            partial: Vec::new(),
            skipping: false,
            max: max.max(1),
        }
    }

    /// A splitter resuming inside a cut line: it skips up to the next newline.
    pub fn skipping(max: usize) -> Self {
        Self {
            skipping: true,
            ..Self::new(max)
        }
    }

    /// Bytes held for an incomplete line.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// The longest line handed out whole.
    pub fn max_line_bytes(&self) -> usize {
        self.max
    }

    /// Whether the splitter is skipping the rest of a cut line.
    pub fn is_skipping(&self) -> bool {
        self.skipping
    }

    /// Feeds `chunk`, calling `emit` for every line completed (or cut) by it.
    pub fn push(&mut self, mut chunk: &[u8], emit: &mut dyn FnMut(SplitLine<'_>)) {
        while !chunk.is_empty() {
            let newline = memchr::memchr(b'\n', chunk);
            if self.skipping {
                match newline {
                    Some(i) => {
                        self.skipping = false;
                        chunk = &chunk[i + 1..];
                    }
                    None => return,
                }
                continue;
            }
            let (segment, rest, complete) = match newline {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &chunk[chunk.len()..], false),
            };
            chunk = rest;
            if self.partial.len() + segment.len() > self.max {
                // Emit the first `max` bytes now instead of holding a huge line in memory.
                let take = self.max - self.partial.len();
                if self.partial.is_empty() {
                    emit(SplitLine {
                        bytes: &segment[..take],
                        cut: true,
                    });
                } else {
                    self.partial.extend_from_slice(&segment[..take]);
                    emit(SplitLine {
                        bytes: &self.partial,
                        cut: true,
                    });
                    self.partial.clear();
                }
                self.skipping = !complete;
                continue;
            }
            if !complete {
                self.partial.extend_from_slice(segment);
                continue;
            }
            if self.partial.is_empty() {
                emit(SplitLine {
                    bytes: strip_cr(segment),
                    cut: false,
                });
            } else {
                self.partial.extend_from_slice(segment);
                emit(SplitLine {
                    bytes: strip_cr(&self.partial),
                    cut: false,
                });
                self.partial.clear();
            }
        }
    }

    /// Hands out the held incomplete line, if any: used when no newline can come any more
    /// (the file was rotated away, deleted or truncated).
    pub fn flush(&mut self, emit: &mut dyn FnMut(SplitLine<'_>)) {
        if !self.partial.is_empty() {
            emit(SplitLine {
                bytes: strip_cr(&self.partial),
                cut: false,
            });
            self.partial.clear();
        }
        self.skipping = false;
    }

    /// Resets to the state of a file's first byte.
    pub fn reset(&mut self) {
        self.partial.clear();
        self.skipping = false;
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split_all(max: usize, chunks: &[&[u8]]) -> (Vec<(Vec<u8>, bool)>, LineSplitter) {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            s.push(chunk, &mut |l| out.push((l.bytes.to_vec(), l.cut)));
        }
        (out, s)
    }

    #[test]
    fn holds_partial_lines_until_the_newline() {
        let (lines, s) = split_all(100, &[b"hel", b"lo\nwor", b"ld"]);
        assert_eq!(lines, [(b"hello".to_vec(), false)]);
        assert_eq!(s.pending(), 5);
    }

    #[test]
    fn cuts_long_lines_and_skips_their_rest() {
        let (lines, s) = split_all(4, &[b"abcdefgh", b"ij\nok\r\n", b"xyz"]);
        assert_eq!(lines, [(b"abcd".to_vec(), true), (b"ok".to_vec(), false)]);
        assert!(!s.is_skipping());
        let (lines, s) = split_all(4, &[b"ab", b"cdef"]);
        assert_eq!(lines, [(b"abcd".to_vec(), true)]);
        assert!(s.is_skipping());
    }

    #[test]
    fn a_line_of_exactly_max_bytes_is_not_cut() {
        let (lines, _) = split_all(4, &[b"abcd\nabcde\n"]);
        assert_eq!(lines, [(b"abcd".to_vec(), false), (b"abcd".to_vec(), true)]);
    }

    proptest! {
        // However the stream is chunked, the lines are those of splitting the whole at once,
        // each capped at `max` bytes and marked cut exactly when it was longer.
        #[test]
        fn chunking_does_not_change_the_lines(
            text in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'a'), Just(b'\r'), any::<u8>()], 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..10),
            max in 1usize..40,
        ) {
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            points.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for p in points { chunks.push(&text[last..p]); last = p; }
            chunks.push(&text[last..]);
            let (lines, s) = split_all(max, &chunks);
            let mut expected = Vec::new();
            let mut pieces: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
            let tail = pieces.pop().unwrap_or(&[]);
            for piece in pieces {
                if piece.len() > max {
                    expected.push((piece[..max].to_vec(), true));
                } else {
                    expected.push((piece.strip_suffix(b"\r").unwrap_or(piece).to_vec(), false));
                }
            }
            // An unfinished tail longer than `max` has been emitted, cut, already.
            if tail.len() > max {
                expected.push((tail[..max].to_vec(), true));
                prop_assert!(s.is_skipping());
            } else {
                prop_assert_eq!(s.pending(), tail.len());
            }
            prop_assert_eq!(lines, expected);
        }
    }
}
