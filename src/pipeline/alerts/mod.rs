//! What rules remember beyond burst windows: threshold counters, open incidents (for
//! `resolve`) and heartbeats (for `absent_after`), per rule and key.
//!
//! - A **threshold** counter keeps the times of the latest matches of one dedup key, at
//!   most `count` of them: the threshold is reached when the oldest kept is within
//!   `within` of the newest. Reaching it empties the counter (the burst window takes
//!   over; when that ends, counting starts from one).
//! - An **incident** of a thread key opens with the rule's first posted notification for
//!   that key and counts the occurrences after it; `resolve.match` or quiet for
//!   `resolve.after` closes it with one resolution message.
//! - A **heartbeat** is the last time a key of an `absent_after` rule was seen (or, for a
//!   key `expect` lists and never seen, when tracking began), and whether its absence was
//!   posted.
//!
//! Like [`super::bursts`], this is pure: time is an argument and the changes to store are
//! taken with [`Alerts::take_changes`], so they are committed with the offsets. Each rule
//! keeps at most `max_keys` states of each kind; one more drops the least recently seen
//! (reported as an eviction).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// What is kept for one (kind, rule, key).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AlertState {
    Threshold {
        /// Times of the latest matches (unix ms), oldest first, at most `count`.
        times: VecDeque<i64>,
    },
    Incident(Incident),
    Heartbeat(Heartbeat),
    Held(Held),
}

/// An open incident of a thread key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Incident {
    pub webhook: String,
    pub opened_ms: i64,
    pub last_ms: i64,
    /// Occurrences since it opened, the first included.
    pub occurrences: u64,
    /// The last occurrence's capture values under the names of the resolution message's
    /// groups (by index), for a resolution by time.
    pub values: Vec<Option<String>>,
}

/// The last sighting of a key of an `absent_after` rule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Heartbeat {
    pub webhook: String,
    /// When its line was last seen, or (never seen) when tracking began.
    pub last_ms: i64,
    /// Whether its line has ever been seen.
    pub seen: bool,
    /// When its absence was posted, while it lasts.
    pub absent_ms: Option<i64>,
}

/// What a silence held back from one thread of one rule, until the silence ends and one
/// message tells it. Its key is the silence's id and the thread key ([`held_key`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Held {
    pub silence: String,
    pub webhook: String,
    pub thread_key: String,
    /// The first and last occurrence or alert held back (unix ms).
    pub first_ms: i64,
    pub last_ms: i64,
    /// Matches held back.
    pub occurrences: u64,
    /// The most recent matching line (cut to [`HELD_LINE_CHARS`]).
    pub last_line: Option<String>,
    /// Alerts held back (resolutions, absences, recoveries) and the last one's text.
    pub alerts: u64,
    pub last_alert: Option<String>,
}

/// How much of the last held line is kept for the end message.
pub const HELD_LINE_CHARS: usize = 1000;

/// The key of a [`Held`] state: the silence's id (hex digits) first, so the split is
/// unambiguous whatever the thread key holds.
pub fn held_key(silence: &str, thread_key: &str) -> String {
    format!("{silence}\u{1f}{thread_key}")
}

/// What a silence holds back: a match (its line) or an alert (its text).
#[derive(Debug, Clone, Copy)]
pub enum HeldItem<'a> {
    Occurrence(&'a str),
    Alert(&'a str),
}

/// Which kind of state; part of its identity (one rule may have an incident and a
/// threshold counter under the same key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Threshold,
    Incident,
    Heartbeat,
    Held,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Threshold => "threshold",
            Kind::Incident => "incident",
            Kind::Heartbeat => "heartbeat",
            Kind::Held => "held",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Kind::Threshold, Kind::Incident, Kind::Heartbeat, Kind::Held]
            .into_iter()
            .find(|k| k.name() == name)
    }

    fn of(state: &AlertState) -> Self {
        match state {
            AlertState::Threshold { .. } => Kind::Threshold,
            AlertState::Incident(_) => Kind::Incident,
            AlertState::Heartbeat(_) => Kind::Heartbeat,
            AlertState::Held(_) => Kind::Held,
        }
    }
}

/// One stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRow {
    pub rule: String,
    pub key: String,
    pub state: AlertState,
}

/// (kind, rule, key).
pub type AlertId = (Kind, String, String);

/// Every state, with what changed since the last [`Alerts::take_changes`].
#[derive(Debug, Default)]
pub struct Alerts {
    states: HashMap<AlertId, (u64, AlertState)>,
    /// Least recently seen first, per kind and rule: sequence number → key.
    recency: HashMap<(Kind, String), BTreeMap<u64, String>>,
    next_seq: u64,
    changed: HashSet<AlertId>,
    removed: HashSet<AlertId>,
}

impl Alerts {
    /// States loaded from the store; the least recently seen are the oldest.
    pub fn from_saved(mut saved: Vec<AlertRow>) -> Self {
        saved.sort_by_key(|row| match &row.state {
            AlertState::Threshold { times } => times.back().copied().unwrap_or(0),
            AlertState::Incident(i) => i.last_ms,
            AlertState::Heartbeat(h) => h.last_ms,
            AlertState::Held(h) => h.last_ms,
        });
        let mut alerts = Self::default();
        for row in saved {
            let id = (Kind::of(&row.state), row.rule, row.key);
            alerts.put(id, row.state);
        }
        alerts.changed.clear();
        alerts
    }

    fn put(&mut self, id: AlertId, state: AlertState) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let recency = self.recency.entry((id.0, id.1.clone())).or_default();
        if let Some((old, _)) = self.states.get(&id) {
            recency.remove(old);
        }
        recency.insert(seq, id.2.clone());
        self.removed.remove(&id);
        self.changed.insert(id.clone());
        self.states.insert(id, (seq, state));
    }

    fn take(&mut self, id: &AlertId) -> Option<AlertState> {
        let (seq, state) = self.states.remove(id)?;
        if let Some(r) = self.recency.get_mut(&(id.0, id.1.clone())) {
            r.remove(&seq);
        }
        self.changed.remove(id);
        self.removed.insert(id.clone());
        Some(state)
    }

    /// Makes room for one more state of `kind` for `rule`; returns whether one was
    /// dropped.
    fn make_room(&mut self, kind: Kind, rule: &str, max_keys: usize) -> bool {
        self.make_room_taking(kind, rule, max_keys).is_some()
    }

    /// Makes room for one more state of `kind` for `rule`, returning the one dropped.
    fn make_room_taking(
        &mut self,
        kind: Kind,
        rule: &str,
        max_keys: usize,
    ) -> Option<(String, AlertState)> {
        let recency = self.recency.get(&(kind, rule.to_owned()))?;
        if recency.len() < max_keys.max(1) {
            return None;
        }
        // A heartbeat whose absence is posted, or an expected key never seen, is what the
        // rule is for: a healthy heartbeat goes first (the oldest of them), and only when
        // there is none, the oldest of all.
        let protected = |key: &String| {
            matches!(
                self.states.get(&(kind, rule.to_owned(), key.clone())),
                Some((_, AlertState::Heartbeat(h))) if h.absent_ms.is_some() || !h.seen
            )
        };
        let oldest = recency
            .values()
            .find(|k| !protected(k))
            .or_else(|| recency.values().next())
            .cloned()?;
        let state = self.take(&(kind, rule.to_owned(), oldest.clone()))?;
        Some((oldest, state))
    }

    /// Whether `silence` holds anything back from `rule`'s `thread_key`.
    pub fn holds(&self, rule: &str, silence: &str, thread_key: &str) -> bool {
        self.states
            .contains_key(&(Kind::Held, rule.to_owned(), held_key(silence, thread_key)))
    }

    /// Holds back `item` of `rule`'s `thread_key` for `silence` at `now_ms`. At the
    /// rule's `max_keys` held threads, the least recently held is dropped and returned,
    /// for the caller to post what it held at once (nothing is lost to the bound).
    pub fn hold(
        &mut self,
        (rule, silence, thread_key): (&str, &str, &str),
        webhook: &str,
        item: HeldItem<'_>,
        now_ms: i64,
        max_keys: usize,
    ) -> Option<(String, Held)> {
        let id = (Kind::Held, rule.to_owned(), held_key(silence, thread_key));
        let mut evicted = None;
        let mut held = match self.take(&id) {
            Some(AlertState::Held(h)) => h,
            _ => {
                if let Some((_, AlertState::Held(h))) =
                    self.make_room_taking(Kind::Held, rule, max_keys)
                {
                    evicted = Some((rule.to_owned(), h));
                }
                Held {
                    silence: silence.to_owned(),
                    webhook: webhook.to_owned(),
                    thread_key: thread_key.to_owned(),
                    first_ms: now_ms,
                    last_ms: now_ms,
                    occurrences: 0,
                    last_line: None,
                    alerts: 0,
                    last_alert: None,
                }
            }
        };
        held.last_ms = now_ms;
        match item {
            HeldItem::Occurrence(line) => {
                held.occurrences += 1;
                held.last_line = Some(line.chars().take(HELD_LINE_CHARS).collect());
            }
            HeldItem::Alert(text) => {
                held.alerts += 1;
                held.last_alert = Some(text.chars().take(HELD_LINE_CHARS).collect());
            }
        }
        self.put(id, AlertState::Held(held));
        evicted
    }

    /// Whether any silence holds anything back (so the tick has ends to look for).
    pub fn has_held(&self) -> bool {
        self.recency
            .iter()
            .any(|((kind, _), keys)| *kind == Kind::Held && !keys.is_empty())
    }

    /// Takes the held states whose silence is no longer active (`active` says), as
    /// (rule, held), the earliest held first.
    pub fn ended_holds(&mut self, active: impl Fn(&str) -> bool) -> Vec<(String, Held)> {
        let mut due: Vec<(i64, AlertId)> = self
            .states
            .iter()
            .filter_map(|(id, (_, s))| match s {
                AlertState::Held(h) if !active(&h.silence) => Some((h.first_ms, id.clone())),
                _ => None,
            })
            .collect();
        due.sort();
        due.into_iter()
            .filter_map(|(_, id)| match self.take(&id) {
                Some(AlertState::Held(h)) => Some((id.1, h)),
                _ => None,
            })
            .collect()
    }

    /// A match of a `threshold` rule's `key` at `now_ms`. Returns the number of matches
    /// within `within` when that reaches `count` (the counter then starts over), and
    /// whether a counter was dropped for room.
    pub fn count_towards(
        &mut self,
        (rule, key): (&str, &str),
        count: usize,
        within_ms: i64,
        now_ms: i64,
        max_keys: usize,
    ) -> (Option<usize>, bool) {
        let id = (Kind::Threshold, rule.to_owned(), key.to_owned());
        let mut evicted = false;
        let mut times = match self.take(&id) {
            Some(AlertState::Threshold { times }) => times,
            _ => {
                evicted = self.make_room(Kind::Threshold, rule, max_keys);
                VecDeque::new()
            }
        };
        times.push_back(now_ms);
        while times
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) >= within_ms)
        {
            times.pop_front();
        }
        while times.len() > count {
            times.pop_front();
        }
        if times.len() >= count {
            // Reached: the counter is gone (already taken out), the window takes over.
            return (Some(times.len()), evicted);
        }
        self.put(id, AlertState::Threshold { times });
        (None, evicted)
    }

    /// The open incident of `rule`'s `thread_key`, if any.
    pub fn incident(&self, rule: &str, thread_key: &str) -> Option<&Incident> {
        match self
            .states
            .get(&(Kind::Incident, rule.to_owned(), thread_key.to_owned()))
        {
            Some((_, AlertState::Incident(i))) => Some(i),
            _ => None,
        }
    }

    /// An occurrence of `rule`'s `thread_key` at `now_ms`: counted into its open incident,
    /// or (`opens`: it was posted) opening one. Returns whether a state was dropped for
    /// room.
    pub fn occurrence(
        &mut self,
        (rule, thread_key): (&str, &str),
        opens: Option<(&str, Vec<Option<String>>)>,
        now_ms: i64,
        max_keys: usize,
    ) -> bool {
        let id = (Kind::Incident, rule.to_owned(), thread_key.to_owned());
        match self.take(&id) {
            Some(AlertState::Incident(mut i)) => {
                i.occurrences += 1;
                i.last_ms = now_ms;
                if let Some((_, values)) = opens {
                    i.values = values;
                }
                self.put(id, AlertState::Incident(i));
                false
            }
            _ => {
                let Some((webhook, values)) = opens else {
                    return false;
                };
                let evicted = self.make_room(Kind::Incident, rule, max_keys);
                self.put(
                    id,
                    AlertState::Incident(Incident {
                        webhook: webhook.to_owned(),
                        opened_ms: now_ms,
                        last_ms: now_ms,
                        occurrences: 1,
                        values,
                    }),
                );
                evicted
            }
        }
    }

    /// Closes `rule`'s incident of `thread_key` (a resolving line), if one is open.
    pub fn resolve(&mut self, rule: &str, thread_key: &str) -> Option<Incident> {
        let id = (Kind::Incident, rule.to_owned(), thread_key.to_owned());
        self.states.get(&id)?;
        match self.take(&id) {
            Some(AlertState::Incident(i)) => Some(i),
            _ => None,
        }
    }

    /// Closes the incidents quiet for their rule's `resolve.after` (`after_of`), oldest
    /// first, as (rule, thread key, incident).
    pub fn quiet_incidents(
        &mut self,
        now_ms: i64,
        after_of: impl Fn(&str) -> Option<i64>,
    ) -> Vec<(String, String, Incident)> {
        let mut due: Vec<(i64, AlertId)> = self
            .states
            .iter()
            .filter_map(|(id, (_, s))| match s {
                AlertState::Incident(i)
                    if after_of(&id.1)
                        .is_some_and(|after| now_ms >= i.last_ms.saturating_add(after)) =>
                {
                    Some((i.last_ms, id.clone()))
                }
                _ => None,
            })
            .collect();
        due.sort();
        due.into_iter()
            .filter_map(|(_, id)| match self.take(&id) {
                Some(AlertState::Incident(i)) => Some((id.1, id.2, i)),
                _ => None,
            })
            .collect()
    }

    /// A line of an `absent_after` rule's `thread_key` at `now_ms`. Returns the heartbeat
    /// as it was when its absence had been posted (the line is back), and whether a state
    /// was dropped for room.
    pub fn heartbeat(
        &mut self,
        (rule, thread_key): (&str, &str),
        webhook: &str,
        now_ms: i64,
        max_keys: usize,
    ) -> (Option<Heartbeat>, bool) {
        let id = (Kind::Heartbeat, rule.to_owned(), thread_key.to_owned());
        let (back, evicted) = match self.take(&id) {
            Some(AlertState::Heartbeat(h)) => (h.absent_ms.is_some().then_some(h), false),
            _ => (None, self.make_room(Kind::Heartbeat, rule, max_keys)),
        };
        self.put(
            id,
            AlertState::Heartbeat(Heartbeat {
                webhook: webhook.to_owned(),
                last_ms: now_ms,
                seen: true,
                absent_ms: None,
            }),
        );
        (back, evicted)
    }

    /// Starts tracking `rule`'s expected keys not tracked yet, as if seen at `now_ms`.
    pub fn expect(&mut self, rule: &str, keys: &[String], webhook: &str, now_ms: i64) {
        for key in keys {
            let id = (Kind::Heartbeat, rule.to_owned(), key.clone());
            if !self.states.contains_key(&id) {
                self.put(
                    id,
                    AlertState::Heartbeat(Heartbeat {
                        webhook: webhook.to_owned(),
                        last_ms: now_ms,
                        seen: false,
                        absent_ms: None,
                    }),
                );
            }
        }
    }

    /// Marks as absent the heartbeats not seen for their rule's `absent_after`
    /// (`after_of`), and returns them (rule, thread key, heartbeat before the mark),
    /// oldest first.
    pub fn absences(
        &mut self,
        now_ms: i64,
        after_of: impl Fn(&str) -> Option<i64>,
    ) -> Vec<(String, String, Heartbeat)> {
        let mut due: Vec<(i64, AlertId)> = self
            .states
            .iter()
            .filter_map(|(id, (_, s))| match s {
                AlertState::Heartbeat(h)
                    if h.absent_ms.is_none()
                        && after_of(&id.1)
                            .is_some_and(|after| now_ms >= h.last_ms.saturating_add(after)) =>
                {
                    Some((h.last_ms, id.clone()))
                }
                _ => None,
            })
            .collect();
        due.sort();
        let mut out = Vec::new();
        for (_, id) in due {
            if let Some((_, AlertState::Heartbeat(h))) = self.states.get_mut(&id) {
                let before = h.clone();
                h.absent_ms = Some(now_ms);
                self.changed.insert(id.clone());
                out.push((id.1, id.2, before));
            }
        }
        out
    }

    /// Forgets `rule`'s heartbeats never seen whose key `expected` no longer lists (a
    /// key removed from `expect`).
    pub fn forget_unexpected(&mut self, rule: &str, expected: &[String]) {
        let gone: Vec<AlertId> = self
            .states
            .iter()
            .filter(|(id, (_, s))| {
                id.0 == Kind::Heartbeat
                    && id.1 == rule
                    && matches!(s, AlertState::Heartbeat(h) if !h.seen)
                    && !expected.contains(&id.2)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.take(&id);
        }
    }

    /// Keeps only the states `keep(kind, rule)` accepts (a reload: states of a rule that
    /// still has that feature stay).
    pub fn retain(&mut self, keep: impl Fn(Kind, &str) -> bool) {
        let gone: Vec<AlertId> = self
            .states
            .keys()
            .filter(|id| !keep(id.0, &id.1))
            .cloned()
            .collect();
        for id in gone {
            self.take(&id);
        }
    }

    /// The states changed and the ids removed since the last call, for the store.
    pub fn take_changes(&mut self) -> (Vec<AlertRow>, Vec<AlertId>) {
        let changed = self
            .changed
            .drain()
            .filter_map(|id| {
                self.states.get(&id).map(|(_, s)| AlertRow {
                    rule: id.1.clone(),
                    key: id.2.clone(),
                    state: s.clone(),
                })
            })
            .collect();
        (changed, self.removed.drain().collect())
    }

    /// Whether anything is waiting for [`take_changes`](Self::take_changes).
    pub fn has_changes(&self) -> bool {
        !self.changed.is_empty() || !self.removed.is_empty()
    }
}

#[cfg(test)]
mod tests;
