//! The hit path: a line's (or an event's) rules run, and each hit routed through
//! silences, heartbeats, thresholds, burst windows and incidents to notifications.

use std::path::Path;

use super::alert_rules::{
    alert_notification, duration_ms, human_ms, incident_values, resolve_by_line,
};
use super::silenced::Silencing;
use super::{
    Cause, ContextRing, Event, HitReport, MAX_CACHED_FILES, Output, Pipeline, Routed, Source,
    Written, decode, rules, template,
};

impl Pipeline {
    pub(super) fn evaluate_event(&mut self, event: &Event, now_ms: i64, out: &mut dyn Output) {
        let from = Written {
            stream: event.stream,
            journal: event.journal.as_ref(),
        };
        self.evaluate(
            &event.path,
            &event.bytes,
            (event.first_number, event.last_number),
            from,
            now_ms,
            out,
        );
    }

    /// Runs the file's rules over `text` and routes each hit.
    ///
    /// A text that is not valid UTF-8 is matched as its lossy form (each invalid sequence
    /// becomes U+FFFD), so that `.` and negated classes cross a stray byte as operators
    /// expect, and captures render the same way. A valid line costs only the validation.
    pub(super) fn evaluate(
        &mut self,
        path: &Path,
        text: &[u8],
        lines: (u64, u64),
        from: Written<'_>,
        now_ms: i64,
        out: &mut dyn Output,
    ) {
        let lossy;
        let text = match std::str::from_utf8(text) {
            Ok(_) => text,
            Err(_) => {
                lossy = String::from_utf8_lossy(text).into_owned();
                lossy.as_bytes()
            }
        };
        let rules = self.rules_for(path, out);
        let host = self.config.host.as_str();
        let max_context = self.max_context;
        if max_context > 0 && !self.rings.contains_key(path) {
            if self.rings.len() >= MAX_CACHED_FILES {
                // Paths come and go (date-named logs); forgetting the context of files
                // not seen lately bounds the memory.
                self.rings.clear();
            }
            self.rings
                .insert(path.to_path_buf(), ContextRing::new(max_context));
        }
        let mut ring = self.rings.get_mut(path);
        let render_counted = self.render_counted;
        let bursts = &mut self.bursts;
        let queued = &mut self.queued;
        let mut silencing = Silencing {
            silences: &self.silences,
            alerts: &mut self.alerts,
            counts: &mut self.held_counts,
            host,
        };
        rules.find(text, |found| {
            // The path as text only for hits: most lines match nothing.
            let file = path.to_string_lossy();
            let source = Source {
                file: &file,
                host,
                stream: from.stream.map(decode::Stream::name),
                journal: from.journal,
            };
            let hit = match found {
                rules::Found::Hit(hit) => hit,
                rules::Found::Resolves { rule, captures } => {
                    resolve_by_line(
                        rule,
                        &captures,
                        text,
                        &source,
                        now_ms,
                        &mut silencing,
                        bursts,
                        out,
                    );
                    return;
                }
            };
            let rule = hit.rule;
            let context = match &ring {
                Some(r) if rule.context_before > 0 => r.last(rule.context_before),
                _ => Vec::new(),
            };
            // An occurrence an open window will only count needs its keys, not its text
            // (most hits of a storm): the keys are rendered once, the rest only if posted.
            let keys = rule
                .dedup
                .as_ref()
                .filter(|_| !render_counted && rule.threshold.is_none() && rule.absence.is_none())
                .map(|dedup| (dedup, hit.notification_keys(text, &source)));
            let mut n = match keys {
                Some((dedup, keys))
                    if bursts.is_open(
                        &rule.name,
                        keys.dedup_key.as_deref().unwrap_or(&keys.thread_key),
                        now_ms,
                        dedup.window,
                    ) =>
                {
                    keys
                }
                _ => hit.notification_with_context(text, &source, &context),
            };
            if silencing.hold_hit(&hit, &n, text, now_ms, out) {
                out.hit(&HitReport {
                    hit: &hit,
                    text,
                    lines,
                    notification: &n,
                    routed: Routed::Silenced,
                });
                return;
            }
            let alerts = &mut *silencing.alerts;
            if rule.absence.is_some() {
                // The line is the heartbeat: it posts nothing, unless it ends an absence.
                let (back, evicted) = alerts.heartbeat(
                    (&rule.name, &n.thread_key),
                    &rule.webhook,
                    now_ms,
                    rule.max_keys,
                );
                if evicted {
                    out.window_evicted(&rule.name);
                }
                if let Some(before) = back {
                    let absent_for = now_ms.saturating_sub(before.last_ms);
                    silencing.alert(
                        alert_notification(
                            rule,
                            &n.thread_key,
                            before.webhook,
                            format!(
                                "*{}* on {host}: the line is back after {} without it.",
                                rule.name,
                                human_ms(absent_for)
                            ),
                        ),
                        Cause::Recovery,
                        (now_ms, rule.max_keys),
                        out,
                    );
                }
                out.hit(&HitReport {
                    hit: &hit,
                    text,
                    lines,
                    notification: &n,
                    routed: Routed::Heartbeat,
                });
                return;
            }
            if let (Some(threshold), Some(dedup)) = (&rule.threshold, &rule.dedup) {
                let key = n.dedup_key.clone().unwrap_or_else(|| n.thread_key.clone());
                if !bursts.is_open(&rule.name, &key, now_ms, dedup.window) {
                    let (reached, evicted) = alerts.count_towards(
                        (&rule.name, &key),
                        threshold.count,
                        duration_ms(threshold.within),
                        now_ms,
                        rule.max_keys,
                    );
                    if evicted {
                        out.window_evicted(&rule.name);
                    }
                    let Some(count) = reached else {
                        out.hit(&HitReport {
                            hit: &hit,
                            text,
                            lines,
                            notification: &n,
                            routed: Routed::BelowThreshold,
                        });
                        return;
                    };
                    let values = template::AlertValues {
                        count: count.to_string(),
                        within: humantime::format_duration(threshold.within).to_string(),
                        ..template::AlertValues::default()
                    };
                    n = hit.notification_with_alert(text, &source, &context, Some(&values));
                }
            }
            let routed = match &rule.dedup {
                Some(dedup) => {
                    let observed = bursts.observe(dedup, &n, text, now_ms, queued);
                    if observed.evicted {
                        out.window_evicted(&rule.name);
                    }
                    // The occurrence itself, when posted, is the last one queued.
                    let own = observed.posted.then(|| queued.pop()).flatten();
                    for summary in queued.drain(..) {
                        out.notification(summary, Cause::Summary);
                    }
                    if let Some(own) = own {
                        out.notification(own, Cause::Hit);
                        Routed::Posted
                    } else {
                        Routed::Counted
                    }
                }
                None => {
                    out.notification(n.clone(), Cause::Hit);
                    Routed::Queued
                }
            };
            if let Some(resolve) = &rule.resolve {
                // A posted notification opens the thread's incident; every occurrence
                // counts into an open one.
                let opens = (routed != Routed::Counted)
                    .then(|| (rule.webhook.as_str(), incident_values(rule, resolve, &hit)));
                if alerts.occurrence((&rule.name, &n.thread_key), opens, now_ms, rule.max_keys) {
                    out.window_evicted(&rule.name);
                }
            }
            out.hit(&HitReport {
                hit: &hit,
                text,
                lines,
                notification: &n,
                routed,
            });
        });
        if let Some(r) = ring.as_mut() {
            r.push(text);
        }
    }

    pub(super) fn drain_queued(&mut self, cause: Cause, out: &mut dyn Output) {
        for n in self.queued.drain(..) {
            out.notification(n, cause);
        }
    }
}
