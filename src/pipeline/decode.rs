//! Container runtimes' log records to lines, before multiline and rules see them.
//!
//! - **CRI** (containerd, CRI-O; the kubelet's `/var/log/pods`): each record is
//!   `<RFC 3339 time> <stdout|stderr> <tag> <payload>`, the tag `F` for a full line or
//!   `P` for a piece of a longer one (the runtime splits lines over 16 KiB), more tags
//!   possibly following after `:`.
//! - **Docker** `json-file`: each record is `{"log":"…\n","stream":"stderr","time":"…"}`;
//!   a piece of a longer line is a record whose `log` does not end with a newline.
//!
//! Pieces are joined per file by [`Partials`], whose pending pieces are part of the state
//! (stored with the file's offset, as pending multiline events are), so a restart between
//! a piece and the end of its line neither loses nor repeats the line. The joined line is
//! bounded by the file's `max_line_bytes` (the rest is cut and counted). A record that is
//! neither is passed on as it is, as plain text, and counted: never dropped. A line's
//! stream is its first piece's. What a container log's path says (namespace, pod,
//! container) is `container_path`'s.
//!
//! This module is pure: no I/O, no clock.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::pipeline::FileId;

pub use crate::config::LogFormat as Format;

/// Which output stream a line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn parse(text: &[u8]) -> Option<Self> {
        match text {
            b"stdout" => Some(Stream::Stdout),
            b"stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub payload: Cow<'a, [u8]>,
    pub stream: Option<Stream>,
    /// A piece of a longer line: more pieces follow.
    pub partial: bool,
}

/// Decodes a CRI record; `None` when `line` is not one. Runs on every line of a container
/// log: a few comparisons, one search for the end of the time, no copy.
pub fn cri(line: &[u8]) -> Option<Record<'_>> {
    let space = memchr::memchr(b' ', line)?;
    let time = &line[..space];
    // An RFC 3339 time: `YYYY-MM-DDTHH:MM:SS…`.
    if time.len() < 20 || !time[0].is_ascii_digit() || time[10] != b'T' {
        return None;
    }
    let rest = &line[space + 1..];
    let stream = match rest.get(..7)? {
        b"stdout " => Stream::Stdout,
        b"stderr " => Stream::Stderr,
        _ => return None,
    };
    let rest = &rest[7..];
    let partial = match rest.first()? {
        b'P' => true,
        b'F' => false,
        _ => return None,
    };
    // The tag ends at a space (the payload follows) or the end of the line; further tags
    // follow a `:`.
    let tag_end = match rest.get(1) {
        None | Some(b' ') => 1,
        Some(b':') => memchr::memchr(b' ', rest).unwrap_or(rest.len()),
        Some(_) => return None,
    };
    Some(Record {
        payload: Cow::Borrowed(rest.get(tag_end + 1..).unwrap_or(b"")),
        stream: Some(stream),
        partial,
    })
}

#[derive(serde::Deserialize)]
struct DockerRecord<'a> {
    #[serde(borrow)]
    log: Cow<'a, str>,
    #[serde(borrow, default)]
    stream: Option<Cow<'a, str>>,
}

/// Decodes a Docker `json-file` record; `None` when `line` is not one.
pub fn docker(line: &[u8]) -> Option<Record<'_>> {
    let record: DockerRecord<'_> = serde_json::from_slice(line).ok()?;
    let stream = record
        .stream
        .as_deref()
        .and_then(|s| Stream::parse(s.as_bytes()));
    let (payload, partial) = match record.log {
        // A line's end is `\n`, or `\r\n` from a Windows-style program: both go, as they
        // do from plain files.
        Cow::Borrowed(text) => match text.strip_suffix('\n') {
            Some(full) => (
                Cow::Borrowed(full.strip_suffix('\r').unwrap_or(full).as_bytes()),
                false,
            ),
            None => (Cow::Borrowed(text.as_bytes()), true),
        },
        Cow::Owned(mut text) => {
            let partial = !text.ends_with('\n');
            if !partial {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            (Cow::Owned(text.into_bytes()), partial)
        }
    };
    Some(Record {
        payload,
        stream,
        partial,
    })
}

/// A line being joined from pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    pub key: FileId,
    /// Runtimes write stdout and stderr into one file, their records interleaved: each
    /// stream's pieces are joined apart.
    pub stream: Option<Stream>,
    pub bytes: Vec<u8>,
    /// Bytes dropped because the line reached `max_line_bytes`.
    pub cut: bool,
    /// The file's path and `files` entry, to pass the piece on alone should its line never
    /// end (a rotation between pieces, a runtime killed mid-line).
    pub path: PathBuf,
    pub spec: usize,
    /// When its last piece arrived (unix milliseconds).
    pub last_ms: i64,
}

/// What changed about a file's pending pieces (of one stream), for the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartialChange {
    Saved(Partial),
    Gone(FileId, Option<Stream>),
}

/// The result of one record: a whole line to pass on, or nothing yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole line (joined from pieces, or one record), its stream, and whether bytes of
    /// it were cut at `max_line_bytes`.
    Line {
        bytes: Cow<'a, [u8]>,
        stream: Option<Stream>,
        cut: bool,
    },
    /// A piece was kept; its line is not complete yet.
    Pending,
    /// Not a record of the format: passed on as plain text (and counted).
    Malformed,
}

type PieceKey = (FileId, Option<Stream>);

/// The pending pieces of all files, with what changed since the last
/// [`Partials::take_changes`].
#[derive(Debug, Default)]
pub struct Partials {
    pending: HashMap<PieceKey, Partial>,
    changed: HashSet<PieceKey>,
    /// Moves whenever the pending pieces change, so a caller can tell whether a line
    /// changed the state.
    generation: u64,
}

/// A pending piece whose line has not ended for this long is passed on as it is.
pub const PIECE_TIMEOUT_MS: i64 = 5_000;

impl Partials {
    /// Pending pieces loaded from the state.
    pub fn from_saved(saved: Vec<Partial>) -> Self {
        Self {
            pending: saved.into_iter().map(|p| ((p.key, p.stream), p)).collect(),
            changed: HashSet::new(),
            generation: 0,
        }
    }

    /// Moves whenever the pending pieces change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn touch(&mut self, key: PieceKey) {
        self.changed.insert(key);
        self.generation = self.generation.wrapping_add(1);
    }

    /// Decodes `line` of the file `key` (at `path`, of `files` entry `spec`), written in
    /// `format`, joining pieces up to `max_bytes`.
    pub fn decode<'a>(
        &mut self,
        (key, path, spec): (FileId, &Path, usize),
        format: Format,
        line: &'a [u8],
        max_bytes: usize,
        now_ms: i64,
    ) -> Decoded<'a> {
        let record = match format {
            Format::Plain => None,
            Format::Cri => cri(line),
            Format::Docker => docker(line),
        };
        let Some(record) = record else {
            return if format == Format::Plain {
                Decoded::Line {
                    bytes: Cow::Borrowed(line),
                    stream: None,
                    cut: false,
                }
            } else {
                Decoded::Malformed
            };
        };
        let id = (key, record.stream);
        // Pieces are rare (lines over 16 KiB): most lines skip the lookup.
        let pending = if self.pending.is_empty() {
            None
        } else {
            self.pending.remove(&id)
        };
        if pending.is_none() && !record.partial {
            // The common case: a whole line in one record, not copied.
            return Decoded::Line {
                bytes: record.payload,
                stream: record.stream,
                cut: false,
            };
        }
        let mut partial = pending.unwrap_or_else(|| Partial {
            key,
            stream: record.stream,
            bytes: Vec::new(),
            cut: false,
            path: path.to_path_buf(),
            spec,
            last_ms: now_ms,
        });
        partial.last_ms = now_ms;
        // Once cut, nothing more is kept (a later piece's start would not belong there).
        let room = if partial.cut {
            0
        } else {
            max_bytes.saturating_sub(partial.bytes.len())
        };
        let take = record.payload.len().min(room);
        // Cut at a character boundary when the payload is text, so the kept part stays
        // valid UTF-8 where it was.
        let take = match std::str::from_utf8(&record.payload) {
            Ok(text) => {
                let mut end = take;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                end
            }
            Err(_) => take,
        };
        partial.bytes.extend_from_slice(&record.payload[..take]);
        partial.cut |= take < record.payload.len();
        self.touch(id);
        if record.partial {
            self.pending.insert(id, partial);
            Decoded::Pending
        } else {
            Decoded::Line {
                bytes: Cow::Owned(partial.bytes),
                stream: partial.stream,
                cut: partial.cut,
            }
        }
    }

    /// Takes the pending pieces whose line has not ended for [`PIECE_TIMEOUT_MS`] (every
    /// one with `all`: the input ended), to be passed on as they are.
    pub fn expire(&mut self, now_ms: i64, all: bool) -> Vec<Partial> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        let due: Vec<PieceKey> = self
            .pending
            .iter()
            .filter(|(_, p)| all || now_ms.saturating_sub(p.last_ms) >= PIECE_TIMEOUT_MS)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::new();
        for id in due {
            if let Some(p) = self.pending.remove(&id) {
                self.touch(id);
                out.push(p);
            }
        }
        out.sort_by_key(|p| (p.key, p.last_ms));
        out
    }

    /// Whether anything is waiting for [`take_changes`](Self::take_changes).
    pub fn has_changes(&self) -> bool {
        !self.changed.is_empty()
    }

    /// The pending pieces changed or completed since the last call.
    pub fn take_changes(&mut self) -> Vec<PartialChange> {
        self.changed
            .drain()
            .map(|id| match self.pending.get(&id) {
                Some(p) => PartialChange::Saved(p.clone()),
                None => PartialChange::Gone(id.0, id.1),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: FileId = FileId { dev: 1, ino: 2 };

    fn line(d: Decoded<'_>) -> Option<(Vec<u8>, Option<Stream>, bool)> {
        match d {
            Decoded::Line { bytes, stream, cut } => Some((bytes.into_owned(), stream, cut)),
            _ => None,
        }
    }

    #[test]
    fn cri_records_as_containerd_writes_them() {
        let r = cri(b"2026-12-06T05:00:01.000000001Z stderr F the upstream timed out").unwrap();
        assert_eq!(
            (r.payload.as_ref(), r.stream, r.partial),
            (&b"the upstream timed out"[..], Some(Stream::Stderr), false)
        );
        let r = cri(b"2026-12-06T05:00:01Z stdout P part").unwrap();
        assert!(r.partial);
        // An empty line, and tags beyond the first.
        assert_eq!(
            cri(b"2026-12-06T05:00:01Z stdout F").unwrap().payload.len(),
            0
        );
        assert!(!cri(b"2026-12-06T05:00:01Z stdout F:x y").unwrap().partial);
        for junk in [
            &b"plain text line"[..],
            b"2026-12-06T05:00:01Z stdin F x",
            b"2026-12-06T05:00:01Z stdout X x",
            b"",
        ] {
            assert_eq!(cri(junk), None);
        }
    }

    #[test]
    fn docker_records_as_json_file_writes_them() {
        let r = docker(
            br#"{"log":"boom \"quoted\"\n","stream":"stderr","time":"2026-12-06T05:00:01Z"}"#,
        )
        .unwrap();
        assert_eq!(
            (r.payload.as_ref(), r.stream, r.partial),
            (&b"boom \"quoted\""[..], Some(Stream::Stderr), false)
        );
        assert!(
            docker(br#"{"log":"piece","stream":"stdout"}"#)
                .unwrap()
                .partial
        );
        assert_eq!(docker(b"not json"), None);
        assert_eq!(docker(br#"{"stream":"stdout"}"#), None);
    }

    fn at(key: FileId) -> (FileId, &'static Path, usize) {
        (key, Path::new("/logs/pods/ns_pod_uid/c/0.log"), 0)
    }

    #[test]
    fn pieces_join_into_one_line_bounded_by_max_bytes() {
        let mut p = Partials::default();
        let first = b"2026-12-06T05:00:01Z stderr P because the upstream ".to_vec();
        assert_eq!(
            p.decode(at(KEY), Format::Cri, &first, 100, 0),
            Decoded::Pending
        );
        assert_eq!(p.take_changes().len(), 1);
        // stdout's records interleave with stderr's: each stream is joined apart.
        let other = p.decode(
            at(KEY),
            Format::Cri,
            b"2026-12-06T05:00:01Z stdout F hello",
            100,
            0,
        );
        assert_eq!(
            line(other),
            Some((b"hello".to_vec(), Some(Stream::Stdout), false))
        );
        let done = p.decode(
            at(KEY),
            Format::Cri,
            b"2026-12-06T05:00:01Z stderr F closed the connection",
            100,
            0,
        );
        assert_eq!(
            line(done),
            Some((
                b"because the upstream closed the connection".to_vec(),
                Some(Stream::Stderr),
                false
            ))
        );
        assert_eq!(
            p.take_changes(),
            vec![PartialChange::Gone(KEY, Some(Stream::Stderr))]
        );
        // Over the bound: cut and said so; nothing is added after the cut.
        p.decode(
            at(KEY),
            Format::Cri,
            b"2026-12-06T05:00:01Z stdout P 0123456789",
            12,
            0,
        );
        p.decode(
            at(KEY),
            Format::Cri,
            b"2026-12-06T05:00:01Z stdout P abcdef",
            12,
            0,
        );
        let done = p.decode(
            at(KEY),
            Format::Cri,
            b"2026-12-06T05:00:01Z stdout F xyz",
            12,
            0,
        );
        assert_eq!(
            line(done),
            Some((b"0123456789ab".to_vec(), Some(Stream::Stdout), true))
        );
        // Not a record: passed on as it is.
        assert_eq!(
            p.decode(at(KEY), Format::Cri, b"junk", 100, 0),
            Decoded::Malformed
        );
    }

    #[test]
    fn a_piece_whose_line_never_ends_is_passed_on() {
        let mut p = Partials::default();
        p.decode(
            at(KEY),
            Format::Cri,
            b"2026-12-06T05:00:01Z stdout P half a line",
            100,
            1_000,
        );
        assert!(p.expire(1_000 + PIECE_TIMEOUT_MS - 1, false).is_empty());
        let gone = p.expire(1_000 + PIECE_TIMEOUT_MS, false);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].bytes, b"half a line");
        assert!(p.expire(i64::MAX, true).is_empty());
        // The end of the input passes every piece on.
        p.decode(
            at(KEY),
            Format::Cri,
            b"2026-12-06T05:00:01Z stdout P x",
            100,
            0,
        );
        assert_eq!(p.expire(0, true).len(), 1);
    }

    #[test]
    fn docker_line_ends_lose_their_carriage_return() {
        let r = docker(br#"{"log":"boom\r\n","stream":"stdout"}"#).unwrap();
        assert_eq!(r.payload.as_ref(), b"boom");
    }

    proptest! {
        // A line split into any pieces, as a runtime would, comes out whole: the model is
        // the line itself.
        #[test]
        fn any_split_of_a_line_joins_back(
            text in "[ -~]{0,200}",
            cuts in proptest::collection::vec(0usize..200, 0..6),
            docker_format in any::<bool>(),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= text.len()).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut p = Partials::default();
            let mut start = 0;
            let mut out = None;
            let bounds: Vec<usize> = cuts.into_iter().chain([text.len()]).collect();
            for (i, end) in bounds.iter().enumerate() {
                let piece = &text[start..*end];
                let last = i + 1 == bounds.len();
                let record = if docker_format {
                    serde_json::json!({"log": if last { format!("{piece}\n") } else { piece.to_owned() }, "stream": "stdout"}).to_string()
                } else {
                    format!("2026-12-06T05:00:01Z stdout {} {piece}", if last { "F" } else { "P" })
                };
                let format = if docker_format { Format::Docker } else { Format::Cri };
                let decoded = p.decode(at(KEY), format, record.as_bytes(), 1 << 20, 0);
                if last {
                    out = line(decoded);
                } else {
                    prop_assert_eq!(decoded, Decoded::Pending);
                }
                start = *end;
            }
            prop_assert_eq!(out, Some((text.into_bytes(), Some(Stream::Stdout), false)));
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// A record: a piece (`P`) or the end of a line (`F`), with its payload.
        Record(bool, String),
        /// The agent commits: positions, pending pieces and what was emitted, together.
        Commit,
        /// kill -9: what was not committed is lost; reading resumes at the committed
        /// position, with the committed pending pieces.
        Crash,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (any::<bool>(), "[a-z ]{0,12}").prop_map(|(p, t)| Step::Record(p, t)),
            2 => Just(Step::Commit),
            1 => Just(Step::Crash),
        ]
    }

    proptest! {
        // The model of a file in CRI records under commits and crashes: every line whose
        // `F` record was written comes out exactly once, whole, whatever the crashes.
        #[test]
        fn pieces_survive_crashes_exactly_once(steps in proptest::collection::vec(step(), 1..60)) {
            let mut records: Vec<String> = Vec::new();
            let mut model: Vec<String> = Vec::new();
            let mut current = String::new();
            // The agent: its committed position (records read), pending pieces and output.
            let mut committed_at = 0usize;
            let mut stored: Vec<Partial> = Vec::new();
            let mut committed_out: Vec<Vec<u8>> = Vec::new();
            let mut partials = Partials::default();
            let mut read = 0usize;
            let mut out: Vec<Vec<u8>> = Vec::new();
            for s in steps.iter().chain([Step::Commit].iter()) {
                match s {
                    Step::Record(piece, text) => {
                        current.push_str(text);
                        let tag = if *piece { "P" } else { "F" };
                        records.push(format!("2026-12-06T05:00:01Z stdout {tag} {text}"));
                        if !*piece {
                            model.push(std::mem::take(&mut current));
                        }
                        // The agent reads what was written.
                        while read < records.len() {
                            if let Decoded::Line { bytes, .. } =
                                partials.decode(at(KEY), Format::Cri, records[read].as_bytes(), 1 << 20, 0)
                            {
                                out.push(bytes.into_owned());
                            }
                            read += 1;
                        }
                    }
                    Step::Commit => {
                        for change in partials.take_changes() {
                            match change {
                                PartialChange::Saved(p) => {
                                    stored.retain(|s| (s.key, s.stream) != (p.key, p.stream));
                                    stored.push(p);
                                }
                                PartialChange::Gone(key, stream) => {
                                    stored.retain(|s| (s.key, s.stream) != (key, stream));
                                }
                            }
                        }
                        committed_out.append(&mut out);
                        committed_at = read;
                    }
                    Step::Crash => {
                        partials = Partials::from_saved(stored.clone());
                        out.clear();
                        read = committed_at;
                        while read < records.len() {
                            if let Decoded::Line { bytes, .. } =
                                partials.decode(at(KEY), Format::Cri, records[read].as_bytes(), 1 << 20, 0)
                            {
                                out.push(bytes.into_owned());
                            }
                            read += 1;
                        }
                    }
                }
            }
            let got: Vec<String> = committed_out
                .into_iter()
                .map(|b| String::from_utf8(b).unwrap())
                .collect();
            prop_assert_eq!(got, model);
        }
    }
}
