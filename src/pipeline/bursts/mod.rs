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

use std::collections::BTreeMap;

use crate::config::Dedup;
use crate::pipeline::chat_text;
use crate::pipeline::rules::{BurstMark, Notification};

// Windows are looked up for every hit of a rule with `dedup`: a catch-up of a storm does
// it hundreds of thousands of times a second, so the maps hash with foldhash (seeded at
// random per process, like the standard hasher) rather than SipHash. Keys come from log
// lines, but each rule holds at most `dedup.max_keys` of them.
type Map<K, V> = foldhash::HashMap<K, V>;
type Set<T> = foldhash::HashSet<T>;

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

/// A window and its bookkeeping.
#[derive(Debug)]
struct Slot {
    window: Window,
    /// Its number, given when it opened; with its end, its place in [`Bursts::ends`].
    id: u64,
    /// When its time is up (unix milliseconds), as the rule's window was when it was
    /// last indexed.
    end_ms: i64,
    /// When it was last seen (a sequence number; higher is more recent).
    seen: u64,
    /// The sequence number under which it is listed in its rule's `recency`: `seen` as it
    /// was when listed. Seeing a window again does not move it there (that would cost a
    /// copy of its key for every hit); eviction moves it when it finds it out of date.
    listed: u64,
    /// Changed since the last [`Bursts::take_changes`].
    dirty: bool,
}

/// One rule's windows.
#[derive(Debug, Default)]
struct RuleWindows {
    by_key: Map<String, Slot>,
    /// Every window of the rule by its `listed` sequence number: the first is the least
    /// recently seen, unless it was seen since it was listed.
    recency: BTreeMap<u64, String>,
}

/// All open windows, with what changed since the last [`Bursts::take_changes`].
#[derive(Debug, Default)]
pub struct Bursts {
    rules: Map<String, RuleWindows>,
    /// Every window by (end, id): the windows whose time is up are the first ones, so a
    /// tick looks at those alone, not at every open window.
    ends: BTreeMap<(i64, u64), (String, String)>,
    /// The window lengths may have changed (windows loaded from the state, or the config
    /// reloaded): the next [`expire`](Bursts::expire) recomputes every end.
    stale_ends: bool,
    open: usize,
    next_seq: u64,
    /// Windows (rule, key) that turned dirty since the last take; a window is listed at
    /// most once each time it turns dirty.
    changed: Vec<(String, String)>,
    removed: Set<(String, String)>,
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

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Bursts {
    /// Windows loaded from the state; the least recently seen are the oldest `last_ms`
    /// (among equal ones, which was seen last is not stored: the first key in byte order
    /// counts as least recent, whatever order the rows come in). Their ends are computed
    /// at the first [`expire`](Self::expire), which knows the rules' window lengths.
    pub fn from_saved(mut saved: Vec<Window>) -> Self {
        saved.sort_by(|x, y| (x.last_ms, &x.key).cmp(&(y.last_ms, &y.key)));
        let mut bursts = Self::default();
        for w in saved {
            bursts.insert(w, i64::MAX);
        }
        bursts.stale_ends = true;
        bursts.changed.clear();
        for rule in bursts.rules.values_mut() {
            for slot in rule.by_key.values_mut() {
                slot.dirty = false;
            }
        }
        bursts
    }

    /// The rules' window lengths may have changed (a reload): every end is recomputed at
    /// the next [`expire`](Self::expire).
    pub fn window_lengths_changed(&mut self) {
        self.stale_ends = true;
    }

    fn insert(&mut self, w: Window, end_ms: i64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = (w.rule.clone(), w.key.clone());
        self.ends.insert((end_ms, seq), id.clone());
        let rule = self.rules.entry(w.rule.clone()).or_default();
        rule.recency.insert(seq, w.key.clone());
        let slot = Slot {
            window: w,
            id: seq,
            end_ms,
            seen: seq,
            listed: seq,
            dirty: true,
        };
        if let Some(old) = rule.by_key.insert(id.1.clone(), slot) {
            // Not reached: a window is removed before its key opens another.
            rule.recency.remove(&old.listed);
            self.ends.remove(&(old.end_ms, old.id));
        } else {
            self.open += 1;
        }
        self.removed.remove(&id);
        self.changed.push(id);
    }

    fn remove(&mut self, rule: &str, key: &str) -> Option<Window> {
        let windows = self.rules.get_mut(rule)?;
        let slot = windows.by_key.remove(key)?;
        windows.recency.remove(&slot.listed);
        if windows.by_key.is_empty() {
            self.rules.remove(rule);
        }
        self.ends.remove(&(slot.end_ms, slot.id));
        self.open -= 1;
        self.removed
            .insert((slot.window.rule.clone(), slot.window.key.clone()));
        Some(slot.window)
    }

    /// The rule's least recently seen window, if it has any.
    fn least_recent(&mut self, rule: &str) -> Option<String> {
        let windows = self.rules.get_mut(rule)?;
        while let Some((listed, key)) = windows.recency.pop_first() {
            let Some(slot) = windows.by_key.get_mut(&key) else {
                continue;
            };
            if slot.seen == listed {
                windows.recency.insert(listed, key.clone());
                return Some(key);
            }
            // Seen since it was listed: list it as it is now, and look further.
            slot.listed = slot.seen;
            windows.recency.insert(slot.seen, key);
        }
        None
    }

    /// Fleet mode: windows that counted nothing end with a summary row too (see
    /// `close_empty`).
    pub fn close_empty_windows(&mut self, close: bool) {
        self.close_empty = close;
    }

    /// How many windows are open.
    pub fn len(&self) -> usize {
        self.open
    }

    pub fn is_empty(&self) -> bool {
        self.open == 0
    }

    fn slot(&self, rule: &str, key: &str) -> Option<&Slot> {
        self.rules.get(rule)?.by_key.get(key)
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
        let key = n.dedup_key.as_deref().unwrap_or(&n.thread_key);
        let window_ms = millis(dedup.window);
        if self
            .slot(&n.rule, key)
            .is_some_and(|s| now_ms >= s.window.first_ms.saturating_add(window_ms))
        {
            // The window is over: close it before this occurrence opens the next.
            if let Some(w) = self.remove(&n.rule, key) {
                push_summary(&w, self.close_empty, out);
            }
        }
        let seq = self.next_seq;
        if let Some(slot) = self
            .rules
            .get_mut(n.rule.as_str())
            .and_then(|r| r.by_key.get_mut(key))
        {
            let w = &mut slot.window;
            w.count += 1;
            w.last_ms = now_ms;
            w.last_line.clear();
            w.last_line.push_str(&String::from_utf8_lossy(line));
            // Seen now: it becomes the most recently seen of its rule.
            slot.seen = seq;
            self.next_seq += 1;
            if !slot.dirty {
                slot.dirty = true;
                self.changed.push((n.rule.clone(), key.to_owned()));
            }
            return Observed {
                posted: false,
                evicted: false,
            };
        }
        let mut evicted = false;
        // A new window; make room first.
        let open = self
            .rules
            .get(n.rule.as_str())
            .map_or(0, |r| r.by_key.len());
        if open >= dedup.max_keys
            && let Some(old_key) = self.least_recent(&n.rule)
            && let Some(w) = self.remove(&n.rule, &old_key)
        {
            evicted = true;
            push_summary(&w, self.close_empty, out);
        }
        let key = key.to_owned();
        self.insert(
            Window {
                rule: n.rule.clone(),
                key: key.clone(),
                webhook: n.webhook.clone(),
                thread_key: n.thread_key.clone(),
                first_ms: now_ms,
                last_ms: now_ms,
                count: 0,
                last_line: String::new(),
            },
            now_ms.saturating_add(window_ms),
        );
        // Only an occurrence that opens a window is copied; counted ones cost no text.
        let mut first = n.clone();
        first.burst = Some(BurstMark::First {
            key,
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
        self.slot(rule, key)
            .is_some_and(|s| now_ms < s.window.first_ms.saturating_add(millis(window)))
    }

    /// Closes `rule`'s windows that post into `thread_key` (their incident resolved), and
    /// queues their summaries.
    pub fn close_thread(&mut self, rule: &str, thread_key: &str, out: &mut Vec<Notification>) {
        let mut keys: Vec<String> = self
            .rules
            .get(rule)
            .into_iter()
            .flat_map(|r| r.by_key.iter())
            .filter(|(_, s)| s.window.thread_key == thread_key)
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort();
        for key in keys {
            if let Some(w) = self.remove(rule, &key) {
                push_summary(&w, self.close_empty, out);
            }
        }
    }

    /// Recomputes every window's end from `window_of(rule)` (`None`: the rule no longer
    /// has `dedup`, and its windows end now).
    fn reindex(&mut self, window_of: impl Fn(&str) -> Option<std::time::Duration>) {
        self.ends.clear();
        for (rule, windows) in &mut self.rules {
            let length = window_of(rule).map(millis);
            for (key, slot) in &mut windows.by_key {
                slot.end_ms = length.map_or(i64::MIN, |l| slot.window.first_ms.saturating_add(l));
                self.ends
                    .insert((slot.end_ms, slot.id), (rule.clone(), key.clone()));
            }
        }
        self.stale_ends = false;
    }

    /// Closes the windows whose time is up (per `window_of(rule)`; a rule that no longer
    /// has `dedup` closes its windows now) and queues their summaries.
    pub fn expire(
        &mut self,
        now_ms: i64,
        window_of: impl Fn(&str) -> Option<std::time::Duration>,
        out: &mut Vec<Notification>,
    ) {
        if self.stale_ends {
            self.reindex(window_of);
        }
        let mut closed = Vec::new();
        while let Some(entry) = self.ends.first_entry() {
            if now_ms < entry.key().0 {
                break;
            }
            let (rule, key) = entry.remove();
            closed.extend(self.remove(&rule, &key));
        }
        closed.sort_by(|a, b| (a.first_ms, &a.rule, &a.key).cmp(&(b.first_ms, &b.rule, &b.key)));
        for w in closed {
            push_summary(&w, self.close_empty, out);
        }
    }

    /// Queues the summaries of every window with a count, now (clean shutdown, `--once`).
    /// Their windows close; windows with nothing counted stay, so a repeat after a restart
    /// within the window is still not posted again.
    pub fn flush(&mut self, out: &mut Vec<Notification>) {
        let mut pending: Vec<(String, String)> = self
            .rules
            .iter()
            .flat_map(|(rule, r)| {
                r.by_key
                    .iter()
                    .filter(|(_, s)| s.window.count > 0)
                    .map(move |(key, _)| (rule.clone(), key.clone()))
            })
            .collect();
        pending.sort();
        for (rule, key) in pending {
            if let Some(w) = self.remove(&rule, &key) {
                push_summary(&w, self.close_empty, out);
            }
        }
    }

    /// The windows changed and the ids removed since the last call, for the state.
    pub fn take_changes(&mut self) -> (Vec<Window>, Vec<(String, String)>) {
        let mut changed = Vec::new();
        for (rule, key) in self.changed.drain(..) {
            if let Some(slot) = self
                .rules
                .get_mut(&rule)
                .and_then(|r| r.by_key.get_mut(&key))
                && slot.dirty
            {
                slot.dirty = false;
                changed.push(slot.window.clone());
            }
        }
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
mod tests;
