//! Joining lines into multiline events (stack traces), per file.
//!
//! A file with `multiline` set passes its lines through an [`Assembler`]: a line that
//! starts an event completes the previous one; other lines continue it. An event is also
//! complete when no line came for `timeout`, and lines past `max_lines`, or that would take
//! it past `max_bytes`, are cut (counted). The rules then match the whole event, its lines
//! joined with `\n`.
//!
//! The pending (incomplete) event of each file is part of the state: the run loop stores
//! the changes in the transaction that advances the file's offset, so an event split by a
//! restart is still one event. The changes are incremental ([`EventChange::Grew`] carries
//! only the bytes added since the last time), so a growing event is not written again
//! whole at every commit. Time comes in as an argument; this module does no I/O.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use crate::config::Multiline;
use crate::pipeline::{FileId, Origin};

/// An event that is being assembled, or is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub key: FileId,
    pub path: PathBuf,
    /// The `files` entry the file was found by (for its multiline settings).
    pub spec: usize,
    /// The lines, joined with `\n`.
    pub bytes: Vec<u8>,
    pub lines: usize,
    /// Lines dropped because the event had `max_lines` already.
    pub cut_lines: usize,
    /// When its last line arrived (unix milliseconds).
    pub last_ms: i64,
    /// The caller's numbers of its first and last line ([`Origin::number`]); not
    /// persisted (the agent numbers nothing).
    pub first_number: u64,
    pub last_number: u64,
    /// The stream of its first line (container logs); not persisted: an event resumed
    /// after a restart renders `{stream}` empty.
    pub stream: Option<crate::pipeline::decode::Stream>,
    /// The writer of its first entry (journal); not persisted, like `stream`: an event
    /// resumed after a restart renders `{identifier}`, `{pid}` and `{priority}` empty.
    pub journal: Option<crate::pipeline::journal_fields::JournalFields>,
}

/// What changed about one file's pending event, for the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventChange {
    /// A new pending event (or one that replaces the stored one): store it whole.
    Whole(Event),
    /// The stored event grew or its counts changed: append `appended` to its bytes.
    Grew {
        key: FileId,
        appended: Vec<u8>,
        spec: usize,
        lines: usize,
        cut_lines: usize,
        last_ms: i64,
    },
    /// The file has no pending event any more (it completed).
    Gone(FileId),
}

/// The pending events of all files.
#[derive(Debug, Default)]
pub struct Assembler {
    pending: HashMap<FileId, Event>,
    changed: HashSet<FileId>,
    /// How many bytes of each pending event the state already holds.
    persisted: HashMap<FileId, usize>,
}

impl Assembler {
    /// Resumes the pending events saved in the state.
    pub fn from_saved(saved: Vec<Event>) -> Self {
        Self {
            persisted: saved.iter().map(|e| (e.key, e.bytes.len())).collect(),
            pending: saved.into_iter().map(|e| (e.key, e)).collect(),
            ..Self::default()
        }
    }

    /// Takes a completed event out; the state forgets it with the next changes.
    fn complete(&mut self, key: FileId) -> Option<Event> {
        self.persisted.remove(&key);
        self.changed.insert(key);
        self.pending.remove(&key)
    }

    /// A line of a file whose entry has `settings`. Completed events go to `out`.
    /// Returns whether the line was cut (the event had `max_lines` already, or the line
    /// would take it past `max_bytes`).
    pub fn push(
        &mut self,
        settings: &Multiline,
        origin: &Origin<'_>,
        line: &[u8],
        now_ms: i64,
        out: &mut Vec<Event>,
    ) -> bool {
        let key = origin.id;
        self.changed.insert(key);
        if settings.starts_event(line) {
            if let Some(done) = self.complete(key) {
                out.push(done);
            }
        } else if let Some(event) = self.pending.get_mut(&key) {
            event.last_ms = now_ms;
            event.last_number = origin.number;
            let too_big = event.bytes.len().saturating_add(1 + line.len()) > settings.max_bytes;
            if event.lines >= settings.max_lines || too_big {
                event.cut_lines += 1;
                return true;
            }
            event.bytes.push(b'\n');
            event.bytes.extend_from_slice(line);
            event.lines += 1;
            return false;
        }
        // A start line, or a continuation with nothing to continue: a new event.
        self.pending.insert(
            key,
            Event {
                key,
                path: origin.path.to_path_buf(),
                spec: origin.spec,
                bytes: line.to_vec(),
                lines: 1,
                cut_lines: 0,
                last_ms: now_ms,
                first_number: origin.number,
                stream: origin.stream,
                journal: origin.journal.cloned(),
                last_number: origin.number,
            },
        );
        false
    }

    /// Completes the events that had no new line for their file's timeout
    /// (`timeout_of(key)`; `None` completes at once, e.g. for a file no longer configured).
    pub fn expire(
        &mut self,
        now_ms: i64,
        timeout_of: impl Fn(&Event) -> Option<std::time::Duration>,
        out: &mut Vec<Event>,
    ) {
        let due: Vec<FileId> = self
            .pending
            .values()
            .filter(|e| match timeout_of(e) {
                Some(t) => {
                    now_ms
                        >= e.last_ms
                            .saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
                }
                None => true,
            })
            .map(|e| e.key)
            .collect();
        let mut done: Vec<Event> = due.iter().filter_map(|k| self.complete(*k)).collect();
        done.sort_by_key(|e| e.last_ms);
        out.extend(done);
    }

    /// After a reload, points each pending event at its `files` entry in the new config
    /// (`new_spec(old)`); an event whose entry is gone gets `gone`, an index past the new
    /// entries, so the next [`expire`](Self::expire) completes it.
    pub fn respec(&mut self, new_spec: impl Fn(usize) -> Option<usize>, gone: usize) {
        for e in self.pending.values_mut() {
            let spec = new_spec(e.spec).unwrap_or(gone);
            if spec != e.spec {
                e.spec = spec;
                self.changed.insert(e.key);
            }
        }
    }

    /// What changed about the pending events since the last call: new events whole,
    /// grown ones by their new bytes only.
    pub fn take_changes(&mut self) -> Vec<EventChange> {
        let mut changes = Vec::with_capacity(self.changed.len());
        for key in self.changed.drain() {
            let Some(event) = self.pending.get(&key) else {
                self.persisted.remove(&key);
                changes.push(EventChange::Gone(key));
                continue;
            };
            let stored = self.persisted.insert(key, event.bytes.len());
            match stored {
                Some(n) if n <= event.bytes.len() => changes.push(EventChange::Grew {
                    key,
                    appended: event.bytes[n..].to_vec(),
                    spec: event.spec,
                    lines: event.lines,
                    cut_lines: event.cut_lines,
                    last_ms: event.last_ms,
                }),
                _ => changes.push(EventChange::Whole(event.clone())),
            }
        }
        changes
    }

    pub fn has_changes(&self) -> bool {
        !self.changed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Boundary, MULTILINE_PRESETS};
    use regex::bytes::Regex;
    use std::path::Path;
    use std::time::Duration;

    fn preset(name: &str, max_lines: usize) -> Multiline {
        let pattern = MULTILINE_PRESETS
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1;
        Multiline {
            boundary: Boundary::Continue(Regex::new(pattern).unwrap()),
            timeout: Duration::from_secs(1),
            max_lines,
            max_bytes: 1024 * 1024,
        }
    }

    fn origin() -> Origin<'static> {
        Origin {
            id: FileId { dev: 1, ino: 2 },
            path: Path::new("/x.log"),
            spec: 0,
            number: 0,
            stream: None,
            journal: None,
        }
    }

    fn assemble(settings: &Multiline, text: &str) -> Vec<String> {
        let mut a = Assembler::default();
        let mut out = Vec::new();
        for line in text.lines() {
            a.push(settings, &origin(), line.as_bytes(), 0, &mut out);
        }
        a.expire(10_000, |_| Some(settings.timeout), &mut out);
        out.iter()
            .map(|e| String::from_utf8_lossy(&e.bytes).into_owned())
            .collect()
    }

    #[test]
    fn java_stack_traces_are_one_event() {
        let text = "2026-11-28 14:00:00 ERROR Request failed\n\
                    java.lang.IllegalStateException: cart is locked\n\
                    \tat shop.Cart.lock(Cart.java:42)\n\
                    \tat shop.Api.checkout(Api.java:7)\n\
                    Caused by: java.sql.SQLTimeoutException: timeout\n\
                    \tat db.Pool.get(Pool.java:99)\n\
                    \t... 12 more\n\
                    2026-11-28 14:00:01 INFO next request";
        let events = assemble(&preset("java", 500), text);
        assert_eq!(events.len(), 2, "{events:#?}");
        assert!(events[0].starts_with(
            "2026-11-28 14:00:00 ERROR Request failed\njava.lang.IllegalStateException"
        ));
        assert!(events[0].ends_with("\t... 12 more"));
        assert_eq!(events[1], "2026-11-28 14:00:01 INFO next request");
    }

    #[test]
    fn python_tracebacks_are_one_event() {
        let text = "2026-11-28 14:00:00 ERROR worker crashed\n\
                    Traceback (most recent call last):\n  File \"app.py\", line 3, in <module>\n    main()\n\
                    KeyError: 'user_id'\n\
                    2026-11-28 14:00:01 INFO restarted";
        let events = assemble(&preset("python", 500), text);
        assert_eq!(events.len(), 2, "{events:#?}");
        assert!(events[0].starts_with("2026-11-28 14:00:00 ERROR worker crashed\nTraceback"));
        assert!(events[0].ends_with("KeyError: 'user_id'"));
    }

    #[test]
    fn changes_carry_only_what_an_event_gained_and_bytes_are_capped() {
        let mut settings = preset("java", 500);
        settings.max_bytes = 20;
        let mut a = Assembler::default();
        let mut out = Vec::new();
        a.push(&settings, &origin(), b"start", 0, &mut out);
        let key = origin().id;
        assert!(matches!(&a.take_changes()[..], [EventChange::Whole(e)] if e.bytes == b"start"));
        assert!(!a.push(&settings, &origin(), b"\tat a", 1, &mut out));
        assert!(matches!(
            &a.take_changes()[..],
            [EventChange::Grew { appended, lines: 2, .. }] if appended == b"\n\tat a"
        ));
        // 5 + 5 + 1 + 10 > 20: cut, counted, nothing appended.
        assert!(a.push(&settings, &origin(), b"\tat bbbbbb", 2, &mut out));
        assert!(matches!(
            &a.take_changes()[..],
            [EventChange::Grew { appended, cut_lines: 1, .. }] if appended.is_empty()
        ));
        a.push(&settings, &origin(), b"next", 3, &mut out);
        assert_eq!(out.len(), 1);
        // The old event is gone and the new one is stored whole, in one change.
        assert!(
            matches!(&a.take_changes()[..], [EventChange::Whole(e)] if e.bytes == b"next" && e.key == key)
        );
    }

    #[test]
    fn events_are_cut_at_max_lines_and_complete_after_the_timeout() {
        let settings = preset("java", 3);
        let mut a = Assembler::default();
        let mut out = Vec::new();
        let cut: Vec<bool> = ["start", "\tat a", "\tat b", "\tat c", "\tat d"]
            .iter()
            .map(|line| a.push(&settings, &origin(), line.as_bytes(), 100, &mut out))
            .collect();
        assert_eq!(cut, [false, false, false, true, true]);
        a.expire(1_099, |_| Some(settings.timeout), &mut out);
        assert!(out.is_empty(), "still within the timeout");
        a.expire(1_100, |_| Some(settings.timeout), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].bytes, b"start\n\tat a\n\tat b");
        assert_eq!(out[0].cut_lines, 2);
    }
}
