//! Output that shows log lines on a terminal (`test`, `run --dry-run`), made inert.
//!
//! Log lines are written by whoever can reach the application. Printed as they are, an
//! escape sequence in one could retitle, clear or rewrite the operator's terminal, and a
//! carriage return could overwrite what was printed before it. [`TerminalSafe`] shows every
//! control character except newline and tab as a visible escape (`\x1b`, `\u{9b}`).

use std::io::{self, Write};

/// A writer that passes text on with its control characters shown as escapes.
///
/// It expects whole UTF-8 characters in each write (as `write!` and `writeln!` produce):
/// a C1 control (U+0080 to U+009F, two bytes in UTF-8) split across two writes is passed
/// on as it is.
pub struct TerminalSafe<W: Write>(pub W);

impl<W: Write> Write for TerminalSafe<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut from = 0;
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            let c1 = b == 0xC2 && buf.get(i + 1).is_some_and(|n| (0x80..=0x9F).contains(n));
            if (b < 0x20 && b != b'\n' && b != b'\t') || b == 0x7F || c1 {
                self.0.write_all(&buf[from..i])?;
                if c1 {
                    write!(self.0, "\\u{{{:x}}}", buf[i + 1])?;
                    i += 2;
                } else {
                    write!(self.0, "\\x{b:02x}")?;
                    i += 1;
                }
                from = i;
            } else {
                i += 1;
            }
        }
        self.0.write_all(&buf[from..])?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(text: &str) -> String {
        let mut out = TerminalSafe(Vec::new());
        write!(out, "{text}").unwrap();
        String::from_utf8(out.0).unwrap()
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(shown("a\x1b]0;owned\x07b"), "a\\x1b]0;owned\\x07b");
        assert_eq!(shown("fine\roverwritten"), "fine\\x0doverwritten");
        assert_eq!(shown("del\x7f csi\u{9b}2J"), "del\\x7f csi\\u{9b}2J");
        // Newlines and tabs lay the output out; other text passes untouched.
        assert_eq!(shown("é\tß\nline ✓"), "é\tß\nline ✓");
    }
}
