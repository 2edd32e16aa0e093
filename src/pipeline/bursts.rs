//! Burst windows: the first occurrence is posted at once, repeats are counted, and one
//! summary with the count goes into the same thread when the window closes.
//!
//! A window belongs to a rule and a rendered dedup key (`dedup.key`, by default the thread
//! key). It opens with a posted occurrence and lasts `dedup.window` from then; repeats in it
//! are counted, with the most recent line kept. When it closes (the next tick or the next
//! occurrence after its end), a summary is queued if anything was counted, and the next
//! occurrence opens a new window. Each rule keeps at most `dedup.max_keys` windows; opening
//! one more closes the least recently seen one early (its summary is queued, the eviction
//! counted), so a key rendered from a request id cannot eat memory.
//!
//! This module is pure: time comes in as an argument, and the changes to persist are taken
//! out with [`Bursts::take_changes`], so the run loop can store them in the transaction that
//! advances the offsets. A crash therefore neither re-posts a first occurrence nor loses a
//! count.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::config::Dedup;
use crate::pipeline::chat_text;
use crate::pipeline::rules::{BurstMark, Notification};

/// One open window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub rule: String,
    pub key: String,
    pub webhook: String,
    pub thread_key: String,
    /// When the posted occurrence that opened it was seen (unix milliseconds).
    pub first_ms: i64,
    /// When the last occurrence was seen.
    pub last_ms: i64,
    /// Occurrences counted (not posted) since the first.
    pub count: u64,
    /// The most recent counted line, as text.
    pub last_line: String,
}

type WindowId = (String, String);

/// All open windows, with what changed since the last [`Bursts::take_changes`].
#[derive(Debug, Default)]
pub struct Bursts {
    windows: HashMap<WindowId, (u64, Window)>,
    /// Least recently seen first, per rule: sequence number → key.
    recency: HashMap<String, BTreeMap<u64, String>>,
    next_seq: u64,
    changed: HashSet<WindowId>,
    removed: HashSet<WindowId>,
    /// Fleet mode: a window that counted nothing still ends with a summary row (of count
    /// 0), so the fleet learns that this host's part is complete and the summary of a
    /// problem each host saw once is still made. Such rows are never posted as they are.
    close_empty: bool,
}

/// What [`Bursts::observe`] did with an occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// It opened a window and was queued (last); otherwise it was counted.
    pub posted: bool,
    /// Opening its window closed the rule's least recently seen one (`max_keys`).
    pub evicted: bool,
}

impl Bursts {
    /// Windows loaded from the state; the least recently seen are the oldest `last_ms`.
    pub fn from_saved(mut saved: Vec<Window>) -> Self {
        saved.sort_by_key(|w| w.last_ms);
        let mut bursts = Self::default();
        for w in saved {
            bursts.insert(w);
        }
        bursts.changed.clear();
        bursts
    }

    fn insert(&mut self, w: Window) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = (w.rule.clone(), w.key.clone());
        self.recency
            .entry(w.rule.clone())
            .or_default()
            .insert(seq, w.key.clone());
        self.changed.insert(id.clone());
        self.removed.remove(&id);
        self.windows.insert(id, (seq, w));
    }

    fn remove(&mut self, id: &WindowId) -> Option<Window> {
        let (seq, w) = self.windows.remove(id)?;
        if let Some(r) = self.recency.get_mut(&id.0) {
            r.remove(&seq);
        }
        self.changed.remove(id);
        self.removed.insert(id.clone());
        Some(w)
    }

    /// Fleet mode: windows that counted nothing end with a summary row too (see
    /// `close_empty`).
    pub fn close_empty_windows(&mut self, close: bool) {
        self.close_empty = close;
    }

    /// How many windows are open.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// An occurrence of `n` (a hit of a rule with `dedup`) at `now_ms`. Queues into `out`
    /// what must be posted: the summary of a window it closes or evicts, then the
    /// occurrence itself when it opens a window.
    pub fn observe(
        &mut self,
        dedup: &Dedup,
        n: &Notification,
        line: &[u8],
        now_ms: i64,
        out: &mut Vec<Notification>,
    ) -> Observed {
        let key = n.dedup_key.clone().unwrap_or_else(|| n.thread_key.clone());
        let id = (n.rule.clone(), key.clone());
        let window_ms = i64::try_from(dedup.window.as_millis()).unwrap_or(i64::MAX);
        if let Some((_, w)) = self.windows.get(&id)
            && now_ms >= w.first_ms.saturating_add(window_ms)
        {
            // The window is over: close it before this occurrence opens the next.
            if let Some(w) = self.remove(&id) {
                push_summary(&w, self.close_empty, out);
            }
        }
        if let Some((seq, w)) = self.windows.get_mut(&id) {
            w.count += 1;
            w.last_ms = now_ms;
            w.last_line = String::from_utf8_lossy(line).into_owned();
            // Seen now: it becomes the most recently seen of its rule.
            let old = *seq;
            let new = self.next_seq;
            self.next_seq += 1;
            *seq = new;
            if let Some(r) = self.recency.get_mut(&id.0) {
                r.remove(&old);
                r.insert(new, id.1.clone());
            }
            self.changed.insert(id);
            return Observed {
                posted: false,
                evicted: false,
            };
        }
        let mut evicted = false;
        // A new window; make room first.
        let open = self.recency.get(&n.rule).map_or(0, BTreeMap::len);
        if open >= dedup.max_keys {
            let oldest = self
                .recency
                .get(&n.rule)
                .and_then(|r| r.values().next().cloned());
            if let Some(old_key) = oldest
                && let Some(w) = self.remove(&(n.rule.clone(), old_key))
            {
                evicted = true;
                push_summary(&w, self.close_empty, out);
            }
        }
        self.insert(Window {
            rule: n.rule.clone(),
            key,
            webhook: n.webhook.clone(),
            thread_key: n.thread_key.clone(),
            first_ms: now_ms,
            last_ms: now_ms,
            count: 0,
            last_line: String::new(),
        });
        // Only an occurrence that opens a window is copied; counted ones cost no text.
        let mut first = n.clone();
        first.burst = Some(BurstMark::First {
            key: id.1.clone(),
            first_ms: now_ms,
            window_ms,
            line: String::from_utf8_lossy(line).into_owned(),
        });
        out.push(first);
        Observed {
            posted: true,
            evicted,
        }
    }

    /// Whether `rule` has a window of `key` open at `now_ms` (one whose time is up is not).
    pub fn is_open(&self, rule: &str, key: &str, now_ms: i64, window: std::time::Duration) -> bool {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        self.windows
            .get(&(rule.to_owned(), key.to_owned()))
            .is_some_and(|(_, w)| now_ms < w.first_ms.saturating_add(window_ms))
    }

    /// Closes `rule`'s windows that post into `thread_key` (their incident resolved), and
    /// queues their summaries.
    pub fn close_thread(&mut self, rule: &str, thread_key: &str, out: &mut Vec<Notification>) {
        let mut ids: Vec<WindowId> = self
            .windows
            .iter()
            .filter(|(id, (_, w))| id.0 == rule && w.thread_key == thread_key)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        for id in ids {
            if let Some(w) = self.remove(&id) {
                push_summary(&w, self.close_empty, out);
            }
        }
    }

    /// Closes the windows whose time is up (per `window_of(rule)`; a rule that no longer
    /// has `dedup` closes its windows now) and queues their summaries.
    pub fn expire(
        &mut self,
        now_ms: i64,
        window_of: impl Fn(&str) -> Option<std::time::Duration>,
        out: &mut Vec<Notification>,
    ) {
        let due: Vec<WindowId> = self
            .windows
            .iter()
            .filter(|(id, (_, w))| match window_of(&id.0) {
                Some(d) => {
                    now_ms
                        >= w.first_ms
                            .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                }
                None => true,
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut closed: Vec<Window> = due.iter().filter_map(|id| self.remove(id)).collect();
        closed.sort_by_key(|w| (w.first_ms, w.rule.clone(), w.key.clone()));
        for w in closed {
            push_summary(&w, self.close_empty, out);
        }
    }

    /// Queues the summaries of every window with a count, now (clean shutdown, `--once`).
    /// Their windows close; windows with nothing counted stay, so a repeat after a restart
    /// within the window is still not posted again.
    pub fn flush(&mut self, out: &mut Vec<Notification>) {
        let mut pending: Vec<WindowId> = self
            .windows
            .iter()
            .filter(|(_, (_, w))| w.count > 0)
            .map(|(id, _)| id.clone())
            .collect();
        pending.sort();
        for id in pending {
            if let Some(w) = self.remove(&id) {
                push_summary(&w, self.close_empty, out);
            }
        }
    }

    /// The windows changed and the ids removed since the last call, for the state.
    pub fn take_changes(&mut self) -> (Vec<Window>, Vec<(String, String)>) {
        let changed = self
            .changed
            .drain()
            .filter_map(|id| self.windows.get(&id).map(|(_, w)| w.clone()))
            .collect();
        let removed = self.removed.drain().collect();
        (changed, removed)
    }

    /// Whether anything is waiting for [`take_changes`](Self::take_changes).
    pub fn has_changes(&self) -> bool {
        !self.changed.is_empty() || !self.removed.is_empty()
    }
}

/// Queues the summary of a closed window, if anything was counted in it (or always, with
/// `close_empty`).
fn push_summary(w: &Window, close_empty: bool, out: &mut Vec<Notification>) {
    if w.count == 0 && !close_empty {
        return;
    }
    let text = summary_text(
        &w.rule,
        w.count,
        w.last_ms - w.first_ms,
        &w.last_line,
        (&[], 0),
    );
    out.push(Notification {
        rule: w.rule.clone(),
        webhook: w.webhook.clone(),
        thread_key: w.thread_key.clone(),
        dedup_key: Some(w.key.clone()),
        text,
        burst: Some(BurstMark::Summary {
            key: w.key.clone(),
            first_ms: w.first_ms,
            count: w.count,
            last_ms: w.last_ms,
            last_line: w.last_line.clone(),
        }),
        card: None,
    });
}

/// The text of a window's summary: `count` more occurrences over `span_ms`, the most
/// recent `last_line`, and (for a fleet's window) on how many hosts, of which the first
/// few are `named`.
pub fn summary_text(
    rule: &str,
    count: u64,
    span_ms: i64,
    last_line: &str,
    (named, hosts): (&[String], u64),
) -> String {
    let span_s = u64::try_from(span_ms.max(0) / 1000).unwrap_or(0);
    let span = if span_s == 0 {
        "within a second of the first".to_owned()
    } else {
        format!(
            "over {} after the first",
            humantime::format_duration(std::time::Duration::from_secs(span_s))
        )
    };
    let plural = if count == 1 { "" } else { "s" };
    let on_hosts = match hosts {
        0 | 1 => String::new(),
        n => {
            let named: Vec<&str> = named.iter().take(3).map(String::as_str).collect();
            let shown = named.len() as u64;
            let more = if n > shown {
                format!(" and {} more", n - shown)
            } else {
                String::new()
            };
            let mut names = String::new();
            chat_text::neutralise_into(&named.join(", "), &mut names);
            format!(" on {n} hosts ({names}{more})")
        }
    };
    let mut text =
        format!("*{rule}*: {count} more occurrence{plural}{on_hosts} {span}. Most recent:\n```");
    chat_text::neutralise_into(last_line, &mut text);
    text.push_str("```");
    chat_text::fit(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::template::Template;
    use std::time::Duration;

    fn dedup(window_s: u64, max_keys: usize) -> Dedup {
        Dedup {
            window: Duration::from_secs(window_s),
            key: Template::parse("{rule}", |_| None, &[]).unwrap(),
            max_keys,
        }
    }

    fn note(key: &str) -> Notification {
        Notification {
            rule: "db".into(),
            webhook: "oncall".into(),
            thread_key: format!("t-{key}"),
            dedup_key: Some(key.into()),
            text: format!("first {key}"),
            burst: None,
            card: None,
        }
    }

    #[test]
    fn first_posted_repeats_counted_then_one_summary() {
        let d = dedup(4, 100);
        let mut b = Bursts::default();
        let mut out = Vec::new();
        let mut counted = 0;
        for i in 0..300 {
            let observed = b.observe(
                &d,
                &note("a"),
                format!("line {i}").as_bytes(),
                1_000 + i * 3,
                &mut out,
            );
            counted += u32::from(!observed.posted);
        }
        assert_eq!(out.len(), 1);
        b.expire(4_999, |_| Some(d.window), &mut out);
        assert_eq!(out.len(), 1, "not before the window ends");
        b.expire(5_000, |_| Some(d.window), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].thread_key, "t-a");
        assert!(
            out[1]
                .text
                .starts_with("*db*: 299 more occurrences within a second of the first."),
            "{}",
            out[1].text
        );
        assert!(out[1].text.contains("line 299"));
        // The next occurrence opens a new window and is posted.
        b.observe(&d, &note("a"), b"again", 6_000, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(counted, 299);
    }

    #[test]
    fn keys_are_counted_apart_and_the_least_recent_is_evicted() {
        let d = dedup(60, 2);
        let mut b = Bursts::default();
        let mut out = Vec::new();
        b.observe(&d, &note("a"), b"a1", 0, &mut out);
        b.observe(&d, &note("b"), b"b1", 1, &mut out);
        b.observe(&d, &note("a"), b"a2", 2, &mut out);
        b.observe(&d, &note("b"), b"b2", 3, &mut out);
        b.observe(&d, &note("b"), b"b3", 4, &mut out);
        // `a` was seen least recently: `c` evicts it and its summary is queued.
        let observed = b.observe(&d, &note("c"), b"c1", 5, &mut out);
        assert_eq!(
            observed,
            Observed {
                posted: true,
                evicted: true
            }
        );
        let texts: Vec<&str> = out.iter().map(|n| n.text.as_str()).collect();
        assert_eq!(texts.len(), 4, "{texts:?}");
        assert_eq!(texts[0], "first a");
        assert_eq!(texts[1], "first b");
        assert!(
            texts[2].starts_with("*db*: 1 more occurrence within a second"),
            "{}",
            texts[2]
        );
        assert!(texts[2].contains("a2"));
        assert_eq!(texts[3], "first c");
        b.flush(&mut out);
        assert!(
            out[4].text.starts_with("*db*: 2 more occurrences"),
            "{}",
            out[4].text
        );
        assert_eq!(b.len(), 1, "the window of `c` (nothing counted) stays open");
    }

    #[test]
    fn saved_windows_resume() {
        let d = dedup(60, 10);
        let mut b = Bursts::default();
        let mut out = Vec::new();
        b.observe(&d, &note("a"), b"a1", 0, &mut out);
        b.observe(&d, &note("a"), b"a2", 10, &mut out);
        let (changed, removed) = b.take_changes();
        assert!(removed.is_empty());
        let mut resumed = Bursts::from_saved(changed);
        resumed.observe(&d, &note("a"), b"a3", 20, &mut out);
        assert_eq!(out.len(), 1, "no second first post after a restart");
        resumed.expire(60_000, |_| Some(d.window), &mut out);
        assert!(
            out[1].text.starts_with("*db*: 2 more occurrences"),
            "{}",
            out[1].text
        );
    }
}
