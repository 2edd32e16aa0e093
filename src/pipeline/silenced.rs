//! What the pipeline does under silences: a hit or an alert that an active silence
//! matches is held back (counted per silence, rule and thread in [`super::alerts`]) and
//! goes no further; when the silence ends, each thread it held anything back from gets
//! one message saying what.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use super::alerts::{Alerts, Held, HeldItem};
use super::{Cause, Hit, Notification, Output, Pipeline, chat_text, thread_key};
use crate::silences::{Candidate, Silence, SilenceSet};

/// What a silence held back since the last [`Pipeline::take_changes`], per (silence,
/// rule): the count and the time of the last, for `silence list`.
pub type HeldCounts = HashMap<(String, String), (u64, i64)>;

/// What the silence checks need of the pipeline, borrowed field by field so that the
/// rule evaluation's closure can hold it beside the bursts and the ring.
pub(super) struct Silencing<'a> {
    pub silences: &'a SilenceSet,
    pub alerts: &'a mut Alerts,
    pub counts: &'a mut HeldCounts,
    pub host: &'a str,
}

impl Silencing<'_> {
    /// Holds back a hit of `rule` if an active silence matches it; returns whether it
    /// did. Heartbeats of `absent_after` rules are never held (their absence is, when it
    /// comes): holding them would make the key look absent.
    pub fn hold_hit(
        &mut self,
        hit: &Hit<'_, '_>,
        n: &Notification,
        text: &[u8],
        now_ms: i64,
        out: &mut dyn Output,
    ) -> bool {
        let rule = hit.rule;
        if rule.absence.is_some() || !self.silences.any_active(now_ms) {
            return false;
        }
        let capture = |name: &str| -> Option<Cow<'_, str>> {
            let index = rule.pattern.capture_names().position(|n| n == Some(name))?;
            hit.captures.get(index).map(String::from_utf8_lossy)
        };
        let chat = || thread_key::chat_thread_key(&n.thread_key);
        let candidate = Candidate {
            rule: &rule.name,
            host: self.host,
            thread: &n.thread_key,
            chat_thread: &chat,
            capture: Some(&capture),
        };
        let alerts = &*self.alerts;
        let Some(silence) = self.silences.holding(&candidate, now_ms, &|id| {
            alerts.holds(&rule.name, id, &n.thread_key)
        }) else {
            return false;
        };
        let line = String::from_utf8_lossy(text);
        self.hold(
            (&rule.name, Arc::clone(silence), &n.thread_key),
            &n.webhook,
            HeldItem::Occurrence(&line),
            (now_ms, rule.max_keys),
            out,
        );
        out.silenced(&rule.name);
        true
    }

    /// Queues an alert (a resolution, an absence, a recovery) unless an active silence
    /// matches its rule, host and thread (a capture matcher matches when the silence
    /// already holds back matches of that thread): then it is held back and told when the
    /// silence ends.
    pub fn alert(
        &mut self,
        n: Notification,
        cause: Cause,
        (now_ms, max_keys): (i64, usize),
        out: &mut dyn Output,
    ) {
        if !self.silences.any_active(now_ms) {
            out.notification(n, cause);
            return;
        }
        let chat = || thread_key::chat_thread_key(&n.thread_key);
        let candidate = Candidate {
            rule: &n.rule,
            host: self.host,
            thread: &n.thread_key,
            chat_thread: &chat,
            capture: None,
        };
        let alerts = &*self.alerts;
        let held = self.silences.holding(&candidate, now_ms, &|id| {
            alerts.holds(&n.rule, id, &n.thread_key)
        });
        match held {
            Some(silence) => {
                let silence = Arc::clone(silence);
                self.hold(
                    (&n.rule, silence, &n.thread_key),
                    &n.webhook,
                    HeldItem::Alert(&n.text),
                    (now_ms, max_keys),
                    out,
                );
                out.silenced(&n.rule);
            }
            None => out.notification(n, cause),
        }
    }

    fn hold(
        &mut self,
        (rule, silence, thread): (&str, Arc<Silence>, &str),
        webhook: &str,
        item: HeldItem<'_>,
        (now_ms, max_keys): (i64, usize),
        out: &mut dyn Output,
    ) {
        let count = self
            .counts
            .entry((silence.id.clone(), rule.to_owned()))
            .or_insert((0, now_ms));
        count.0 += 1;
        count.1 = now_ms;
        let evicted =
            self.alerts
                .hold((rule, &silence.id, thread), webhook, item, now_ms, max_keys);
        if let Some((rule, held)) = evicted {
            // The rule holds `max_keys` threads back already: the least recent is told
            // now rather than forgotten.
            out.window_evicted(&rule);
            let record = self.silences.get(&held.silence).map(AsRef::as_ref);
            let text = end_text(&rule, &held, record, self.host, true);
            out.notification(held_notification(rule, held, text), Cause::SilenceEnded);
        }
    }
}

impl Pipeline {
    /// The silences to apply from now on (the agent reads them from its store, where the
    /// `silence` commands or, in fleet mode, the sync with Redis put them). What is held
    /// back for a silence no longer in the set is told at the next tick.
    pub fn set_silences(&mut self, silences: Arc<SilenceSet>) {
        self.silences = silences;
    }

    /// One message per thread a silence that ended held anything back from.
    pub(super) fn end_silences(&mut self, now_ms: i64, out: &mut dyn Output) {
        if !self.alerts.has_held() {
            return;
        }
        let silences = Arc::clone(&self.silences);
        let ended = self
            .alerts
            .ended_holds(|id| silences.get(id).is_some_and(|s| s.is_active(now_ms)));
        for (rule, held) in ended {
            let record = silences.get(&held.silence).map(AsRef::as_ref);
            let text = end_text(&rule, &held, record, &self.config.host, false);
            out.notification(held_notification(rule, held, text), Cause::SilenceEnded);
        }
    }
}

fn held_notification(rule: String, held: Held, text: String) -> Notification {
    Notification {
        rule,
        webhook: held.webhook,
        thread_key: held.thread_key,
        dedup_key: None,
        text: chat_text::fit(text),
        burst: None,
        card: None,
    }
}

/// The end-of-silence message of one thread: how many occurrences over what span, under
/// which silence, the alerts held back, and the most recent line. Everything that came
/// from a log line, the comment or a record is neutralised for Chat's markup.
pub(super) fn end_text(
    rule: &str,
    held: &Held,
    silence: Option<&Silence>,
    host: &str,
    early: bool,
) -> String {
    let mut text = String::new();
    let mut push = |value: &str| chat_text::neutralise_into(value, &mut text);
    let under = match silence {
        Some(s) if !s.comment.is_empty() => format!("silence {} ({})", s.id, s.comment),
        Some(s) => format!("silence {}", s.id),
        None => format!("silence {}", held.silence),
    };
    let how = match (early, silence) {
        (true, _) => "is still on, but the rule holds back too many threads: so far",
        (false, Some(s)) if s.expired_by.is_some() => "was ended early; it held back",
        _ => "ended; it held back",
    };
    let mut parts = Vec::new();
    if held.occurrences > 0 {
        let s = if held.occurrences == 1 { "" } else { "s" };
        parts.push(format!("{} occurrence{s}", held.occurrences));
    }
    if held.alerts > 0 {
        let s = if held.alerts == 1 { "" } else { "s" };
        parts.push(format!("{} alert{s}", held.alerts));
    }
    let span = human_span(held.last_ms - held.first_ms);
    let head = format!(
        "*{rule}* on {host}: {under} {how} {} from {} to {} UTC ({span}).",
        parts.join(" and "),
        clock_time(held.first_ms),
        clock_time(held.last_ms),
    );
    push(&head);
    if let Some(alert) = &held.last_alert {
        text.push_str("\nLast alert held back: ");
        chat_text::neutralise_into(alert, &mut text);
    }
    if let Some(line) = &held.last_line {
        text.push_str("\nMost recent line:\n```");
        chat_text::neutralise_into(line, &mut text);
        text.push_str("```");
    }
    text
}

/// `HH:MM:SS` of a unix time in milliseconds, UTC (the date is in Chat's own timestamp).
fn clock_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

fn human_span(ms: i64) -> String {
    if ms < 1000 {
        return "within a second".to_owned();
    }
    let secs = u64::try_from(ms / 1000).unwrap_or(0);
    format!(
        "over {}",
        humantime::format_duration(std::time::Duration::from_secs(secs))
    )
}
