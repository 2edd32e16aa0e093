//! The journal export format, as `journalctl --output=export` writes it, read as a stream.
//!
//! An entry is a run of fields ended by an empty line. A field is `NAME=value\n` when the
//! value is text without a newline, and otherwise `NAME\n`, the value's length as a
//! 64-bit little-endian number, the value's bytes and `\n` (systemd's
//! `JOURNAL_EXPORT_FORMATS.md`). The parser is a state machine fed with whatever bytes the
//! pipe had, so an entry may arrive in any number of pieces, and a value is never held
//! whole beyond what is kept of it: a 1 GiB `MESSAGE` costs `max_message` bytes. Only the
//! fields chattail renders are kept; the others are skipped as they stream past.

use crate::pipeline::journal_fields::{JournalFields, MAX_FIELD_BYTES};

/// Field names are short (`_SYSTEMD_UNIT`, `__REALTIME_TIMESTAMP`); a longer one means
/// the stream is not export format.
const MAX_NAME_BYTES: usize = 256;

/// One journal entry, as far as chattail reads it. Reused from entry to entry.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `__CURSOR`: where this entry is, for `journalctl --cursor`.
    pub cursor: String,
    /// `MESSAGE`, cut to the parser's `max_message` bytes; `None` when the entry has none.
    pub message: Option<Vec<u8>>,
    /// Whether `message` was cut.
    pub message_cut: bool,
    /// `_SYSTEMD_UNIT`; for an entry that no unit wrote (the kernel, a syslog client outside
    /// a unit), its `SYSLOG_IDENTIFIER`, else its `_COMM`, else `-`.
    pub unit: String,
    /// `{identifier}`, `{pid}`, `{priority}`.
    pub fields: JournalFields,
    /// `__REALTIME_TIMESTAMP`, in unix milliseconds, when the entry has one.
    pub realtime_ms: Option<i64>,
}

/// The stream is not export format (a bug, or a `journalctl` that writes something else).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    #[error("a field name longer than {MAX_NAME_BYTES} bytes")]
    LongName,
    #[error("a binary field not ended by a newline")]
    BinaryEnd,
    #[error("an entry without a __CURSOR")]
    NoCursor,
}

/// Which kept value a field fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Cursor,
    Message,
    Unit,
    Identifier,
    Comm,
    Pid,
    SyslogPid,
    Priority,
    Realtime,
    Skip,
}

impl Target {
    fn of(name: &[u8]) -> Self {
        match name {
            b"__CURSOR" => Target::Cursor,
            b"MESSAGE" => Target::Message,
            b"_SYSTEMD_UNIT" => Target::Unit,
            b"SYSLOG_IDENTIFIER" => Target::Identifier,
            b"_COMM" => Target::Comm,
            b"_PID" => Target::Pid,
            b"SYSLOG_PID" => Target::SyslogPid,
            b"PRIORITY" => Target::Priority,
            b"__REALTIME_TIMESTAMP" => Target::Realtime,
            _ => Target::Skip,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a field's name (or the empty line that ends the entry).
    Name,
    /// Reading a text value up to its newline.
    Text,
    /// Reading a binary value's 8-byte length.
    Length { have: usize },
    /// Reading a binary value: this many bytes left.
    Binary { left: u64 },
    /// Expecting the newline after a binary value.
    BinaryEnd,
}

/// The streaming parser. See the module documentation.
#[derive(Debug)]
pub struct ExportParser {
    max_message: usize,
    state: State,
    name: Vec<u8>,
    target: Target,
    length: [u8; 8],
    /// The kept values of the entry being read, as bytes.
    values: [Vec<u8>; 9],
    has_message: bool,
    message_cut: bool,
    /// Whether the entry being read has any field yet.
    started: bool,
    entry: Entry,
}

impl ExportParser {
    /// A parser keeping at most `max_message` bytes of each `MESSAGE`.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            state: State::Name,
            name: Vec::new(),
            target: Target::Skip,
            length: [0; 8],
            values: Default::default(),
            has_message: false,
            message_cut: false,
            started: false,
            entry: Entry::default(),
        }
    }

    /// Whether an entry has begun but not ended (a reader that stops here is stuck
    /// mid-entry, or was cut off).
    pub fn mid_entry(&self) -> bool {
        self.started || self.state != State::Name || !self.name.is_empty()
    }

    /// Reads `data`, handing every entry it completes to `out`.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        out: &mut dyn FnMut(&Entry),
    ) -> Result<(), ExportError> {
        while !data.is_empty() {
            match self.state {
                State::Name => match memchr::memchr2(b'=', b'\n', data) {
                    Some(i) => {
                        self.push_name(&data[..i])?;
                        let text = data[i] == b'=';
                        data = &data[i + 1..];
                        if !text && self.name.is_empty() {
                            if self.started {
                                // Without its cursor an entry cannot be a position: a
                                // reader that writes one is not writing export format.
                                if self.values[0].is_empty() {
                                    return Err(ExportError::NoCursor);
                                }
                                self.finish(out);
                            }
                            continue;
                        }
                        self.started = true;
                        self.target = Target::of(&self.name);
                        self.name.clear();
                        self.begin_value();
                        self.state = if text {
                            State::Text
                        } else {
                            State::Length { have: 0 }
                        };
                    }
                    None => {
                        self.push_name(data)?;
                        data = &[];
                    }
                },
                State::Text => match memchr::memchr(b'\n', data) {
                    Some(i) => {
                        self.keep(&data[..i]);
                        data = &data[i + 1..];
                        self.state = State::Name;
                    }
                    None => {
                        self.keep(data);
                        data = &[];
                    }
                },
                State::Length { have } => {
                    let n = (8 - have).min(data.len());
                    self.length[have..have + n].copy_from_slice(&data[..n]);
                    data = &data[n..];
                    self.state = if have + n == 8 {
                        match u64::from_le_bytes(self.length) {
                            0 => State::BinaryEnd,
                            left => State::Binary { left },
                        }
                    } else {
                        State::Length { have: have + n }
                    };
                }
                State::Binary { left } => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                    self.keep(&data[..n]);
                    data = &data[n..];
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::BinaryEnd
                    } else {
                        State::Binary { left }
                    };
                }
                State::BinaryEnd => {
                    if data[0] != b'\n' {
                        return Err(ExportError::BinaryEnd);
                    }
                    data = &data[1..];
                    self.state = State::Name;
                }
            }
        }
        Ok(())
    }

    /// Forgets a half-read entry (the reader restarts).
    pub fn reset(&mut self) {
        *self = Self::new(self.max_message);
    }

    fn push_name(&mut self, bytes: &[u8]) -> Result<(), ExportError> {
        if self.name.len() + bytes.len() > MAX_NAME_BYTES {
            return Err(ExportError::LongName);
        }
        self.name.extend_from_slice(bytes);
        Ok(())
    }

    fn slot(target: Target) -> Option<usize> {
        match target {
            Target::Cursor => Some(0),
            Target::Message => Some(1),
            Target::Unit => Some(2),
            Target::Identifier => Some(3),
            Target::Comm => Some(4),
            Target::Pid => Some(5),
            Target::SyslogPid => Some(6),
            Target::Priority => Some(7),
            Target::Realtime => Some(8),
            Target::Skip => None,
        }
    }

    /// A field repeated in one entry keeps its last value, as `journalctl` shows it.
    fn begin_value(&mut self) {
        if let Some(slot) = Self::slot(self.target) {
            self.values[slot].clear();
        }
        if self.target == Target::Message {
            self.has_message = true;
            self.message_cut = false;
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        let Some(slot) = Self::slot(self.target) else {
            return;
        };
        let max = if self.target == Target::Message {
            self.max_message
        } else if self.target == Target::Cursor {
            // A cursor is kept whole: a cut one would not find its entry again. Its
            // fields are ids and numbers, well under this.
            4 * MAX_FIELD_BYTES
        } else {
            MAX_FIELD_BYTES
        };
        let value = &mut self.values[slot];
        let room = max.saturating_sub(value.len());
        if bytes.len() > room && self.target == Target::Message {
            self.message_cut = true;
        }
        value.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn finish(&mut self, out: &mut dyn FnMut(&Entry)) {
        let text = |bytes: &[u8], into: &mut String| {
            into.clear();
            match std::str::from_utf8(bytes) {
                Ok(valid) => into.push_str(valid),
                Err(_) => into.push_str(&String::from_utf8_lossy(bytes)),
            }
        };
        let [
            cursor,
            message,
            unit,
            identifier,
            comm,
            pid,
            syslog_pid,
            priority,
            realtime,
        ] = &self.values;
        let e = &mut self.entry;
        text(cursor, &mut e.cursor);
        match (&mut e.message, self.has_message) {
            (Some(m), true) => {
                m.clear();
                m.extend_from_slice(message);
            }
            (None, true) => e.message = Some(message.clone()),
            (_, false) => e.message = None,
        }
        e.message_cut = self.message_cut;
        let unit = [unit, identifier, comm]
            .into_iter()
            .find(|v| !v.is_empty())
            .map_or(&b"-"[..], |v| v.as_slice());
        text(unit, &mut e.unit);
        text(identifier, &mut e.fields.identifier);
        text(
            if pid.is_empty() { syslog_pid } else { pid },
            &mut e.fields.pid,
        );
        text(priority, &mut e.fields.priority);
        e.realtime_ms = std::str::from_utf8(realtime)
            .ok()
            .and_then(|t| t.parse::<i64>().ok())
            .map(|us| us / 1000);
        out(&self.entry);
        for v in &mut self.values {
            v.clear();
        }
        self.has_message = false;
        self.message_cut = false;
        self.started = false;
    }
}

/// The parts of a cursor that place it: the sequence-number id (`s=`) and the sequence
/// number (`i=`), when the cursor has them.
pub fn cursor_seqnum(cursor: &str) -> Option<(&str, u64)> {
    let mut id = None;
    let mut seqnum = None;
    for part in cursor.split(';') {
        if let Some(v) = part.strip_prefix("s=") {
            id = Some(v);
        } else if let Some(v) = part.strip_prefix("i=") {
            seqnum = u64::from_str_radix(v, 16).ok();
        }
    }
    Some((id?, seqnum?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn binary(name: &str, value: &[u8]) -> Vec<u8> {
        let mut out = name.as_bytes().to_vec();
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
        out
    }

    fn sample() -> Vec<u8> {
        let mut s = b"__CURSOR=s=ab;i=1f;b=00;m=0;t=1;x=9\n__REALTIME_TIMESTAMP=1\n\
            _SYSTEMD_UNIT=app@1.service\nSYSLOG_IDENTIFIER=app\n_PID=42\nPRIORITY=3\n\
            MESSAGE=ERROR one\n\n"
            .to_vec();
        s.extend_from_slice(b"__CURSOR=c2\nSYSLOG_IDENTIFIER=kernel\n");
        s.extend(binary("MESSAGE", b"bin\xff\x00\n\nline"));
        s.extend_from_slice(b"SYSLOG_PID=7\n\n");
        s.extend_from_slice(b"__CURSOR=c3\n_COMM=sshd\n\n");
        s
    }

    fn parse(data: &[u8], cuts: &[usize], max: usize) -> Result<Vec<Entry>, ExportError> {
        let mut parser = ExportParser::new(max);
        let mut out = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
            let cut = cut.clamp(at, data.len());
            parser.feed(&data[at..cut], &mut |e| out.push(e.clone()))?;
            at = cut;
        }
        Ok(out)
    }

    #[test]
    fn reads_text_and_binary_fields() {
        let entries = parse(&sample(), &[], 1024).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].cursor, "s=ab;i=1f;b=00;m=0;t=1;x=9");
        assert_eq!(entries[0].message.as_deref(), Some(&b"ERROR one"[..]));
        assert_eq!(entries[0].unit, "app@1.service");
        assert_eq!(entries[0].fields.identifier, "app");
        assert_eq!(entries[0].fields.pid, "42");
        assert_eq!(entries[0].fields.priority, "3");
        // A binary MESSAGE (invalid UTF-8, NUL, newlines) is kept as bytes; an entry
        // without a unit is named by its identifier; SYSLOG_PID stands in for _PID.
        assert_eq!(
            entries[1].message.as_deref(),
            Some(&b"bin\xff\x00\n\nline"[..])
        );
        assert_eq!(entries[1].unit, "kernel");
        assert_eq!(entries[1].fields.pid, "7");
        assert_eq!(entries[1].fields.priority, "");
        // No MESSAGE, no identifier: `_COMM` names it.
        assert_eq!(entries[2].message, None);
        assert_eq!(entries[2].unit, "sshd");
    }

    #[test]
    fn cuts_a_long_message_and_keeps_reading() {
        let mut data = binary("MESSAGE", &[b'x'; 10_000]);
        data.extend_from_slice(b"__CURSOR=c\n\nMESSAGE=short\n__CURSOR=d\n\n");
        let entries = parse(&data, &[3, 9, 4000], 100).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].message.as_ref().map(Vec::len), Some(100));
        assert!(entries[0].message_cut);
        assert_eq!(entries[1].message.as_deref(), Some(&b"short"[..]));
        assert!(!entries[1].message_cut);
    }

    #[test]
    fn refuses_what_is_not_export_format() {
        let junk = vec![b'A'; 1000];
        assert_eq!(parse(&junk, &[], 10), Err(ExportError::LongName));
        let mut bad = binary("MESSAGE", b"abc");
        bad.pop();
        bad.push(b'X');
        assert_eq!(parse(&bad, &[], 10), Err(ExportError::BinaryEnd));
    }

    #[test]
    fn reads_a_cursors_sequence_number() {
        assert_eq!(
            cursor_seqnum("s=8f69;i=1f;b=00;m=0;t=60a;x=51"),
            Some(("8f69", 0x1f))
        );
        assert_eq!(cursor_seqnum("garbage"), None);
    }

    proptest! {
        /// However the pipe splits the stream, the same entries come out.
        #[test]
        fn any_split_gives_the_same_entries(cuts in proptest::collection::vec(0usize..400, 0..12)) {
            let data = sample();
            let mut cuts = cuts;
            cuts.sort_unstable();
            prop_assert_eq!(parse(&data, &cuts, 1024).unwrap(), parse(&data, &[], 1024).unwrap());
        }

        /// Any bytes: an error or entries, never a panic.
        #[test]
        fn any_bytes_are_survived(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&data, &[7, 100], 64);
        }
    }
}
