//! What the pipeline does with the alert meanings of rules (`threshold`, `resolve`,
//! `absent_after`) beyond one line: resolutions by a line or by time, absences and
//! recoveries, and which stored states a new config keeps. The states themselves are in
//! [`super::alerts`]; the per-line routing stays in `Pipeline::evaluate`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::alerts::{self, Alerts};
use super::{
    Bursts, Cause, Config, Hit, Notification, Output, Pipeline, Silencing, Source, chat_text,
    pattern, template,
};

impl Pipeline {
    /// Resolves the incidents quiet for `resolve.after` and, once caught up, posts the
    /// absences of `absent_after` rules.
    pub(super) fn tick_alerts(&mut self, now_ms: i64, out: &mut dyn Output) {
        // Nothing is decided on time before the caller has read what was waiting: after a
        // restart, the lines written while it was down may continue an incident or end an
        // absence.
        if self.timed_rules.is_empty() || !self.caught_up {
            return;
        }
        let rules = &self.timed_rules;
        let host = self.config.host.as_str();
        // Alerts pass the silences after the loops, in order.
        let mut alerts_out: Vec<(Notification, Cause, usize)> = Vec::new();
        let after = |rule: &str| {
            rules
                .get(rule)
                .and_then(|r| r.resolve.as_ref()?.after)
                .map(duration_ms)
        };
        for (name, key, incident) in self.alerts.quiet_incidents(now_ms, after) {
            let Some(rule) = rules.get(&name) else {
                continue;
            };
            let Some(resolve) = &rule.resolve else {
                continue;
            };
            // A window still open in its thread sums up first.
            let mut summaries = Vec::new();
            self.bursts.close_thread(&name, &key, &mut summaries);
            for summary in summaries {
                out.notification(summary, Cause::Summary);
            }
            // Quiet since its last occurrence: that is when it ended.
            let values = resolution_values(&incident, incident.last_ms);
            let ctx = template::RenderContext {
                line: b"",
                file: "",
                rule: &rule.name,
                host,
                captures: None,
                context: b"",
                stream: None,
                journal: None,
                stored: Some(&incident.values),
                alert: Some(&values),
            };
            let text = resolution_text(resolve, &ctx, &values);
            alerts_out.push((
                alert_notification(rule, &key, incident.webhook, text),
                Cause::Resolution,
                rule.max_keys,
            ));
        }
        if !self.expected_tracked {
            self.expected_tracked = true;
            for rule in rules.values() {
                if let Some(absence) = &rule.absence {
                    self.alerts
                        .expect(&rule.name, &absence.expected, &rule.webhook, now_ms);
                }
            }
        }
        let absent_after = |rule: &str| {
            rules
                .get(rule)
                .and_then(|r| r.absence.as_ref())
                .map(|a| duration_ms(a.after))
        };
        for (name, key, before) in self.alerts.absences(now_ms, absent_after) {
            let Some(rule) = rules.get(&name) else {
                continue;
            };
            let Some(absence) = &rule.absence else {
                continue;
            };
            let mut pattern = String::new();
            chat_text::neutralise_into(rule.pattern.as_str(), &mut pattern);
            // The key holds captured text: neutralised like any capture.
            let mut shown_key = String::new();
            chat_text::neutralise_into(&key, &mut shown_key);
            let seen = if before.seen {
                format!(
                    "last seen {} ago",
                    human_ms(now_ms.saturating_sub(before.last_ms))
                )
            } else {
                "never seen since chattail began expecting it".to_owned()
            };
            alerts_out.push((
                alert_notification(
                    rule,
                    &key,
                    before.webhook,
                    format!(
                        "*{}* on {host}: no line matching `{pattern}` for `{shown_key}` in {} ({seen}).",
                        rule.name,
                        humantime::format_duration(absence.after)
                    ),
                ),
                Cause::Absence,
                rule.max_keys,
            ));
        }
        let mut silencing = Silencing {
            silences: &self.silences,
            alerts: &mut self.alerts,
            counts: &mut self.held_counts,
            host,
        };
        for (n, cause, max_keys) in alerts_out {
            silencing.alert(n, cause, (now_ms, max_keys), out);
        }
    }
}

/// A resolving line (`resolve.match`) of `rule`: when it renders the thread key of an
/// open incident, the incident ends with its resolution message in that thread (after
/// the summary of a burst window still open there).
#[allow(clippy::too_many_arguments)]
pub(super) fn resolve_by_line(
    rule: &crate::config::Rule,
    captures: &pattern::Groups<'_>,
    text: &[u8],
    source: &Source<'_>,
    now_ms: i64,
    silencing: &mut Silencing<'_>,
    bursts: &mut Bursts,
    out: &mut dyn Output,
) {
    let Some(resolve) = &rule.resolve else { return };
    let Some((_, key_template)) = &resolve.pattern else {
        return;
    };
    let mut ctx = template::RenderContext {
        line: text,
        file: source.file,
        rule: &rule.name,
        host: source.host,
        captures: Some(captures),
        context: b"",
        stream: source.stream,
        journal: source.journal,
        stored: None,
        alert: None,
    };
    let key = key_template.render(&ctx, template::Escape::None);
    let Some(incident) = silencing.alerts.resolve(&rule.name, &key) else {
        return;
    };
    let mut summaries = Vec::new();
    bursts.close_thread(&rule.name, &key, &mut summaries);
    for summary in summaries {
        out.notification(summary, Cause::Summary);
    }
    let values = resolution_values(&incident, now_ms);
    ctx.alert = Some(&values);
    let text = resolution_text(resolve, &ctx, &values);
    silencing.alert(
        alert_notification(rule, &key, incident.webhook, text),
        Cause::Resolution,
        (now_ms, rule.max_keys),
        out,
    );
}

/// The resolution message, with the episode's totals on a line of their own when the
/// message does not show them itself.
pub(super) fn resolution_text(
    resolve: &crate::config::Resolve,
    ctx: &template::RenderContext<'_>,
    values: &template::AlertValues,
) -> String {
    let mut text = resolve.message.render(ctx, template::Escape::ChatText);
    if !resolve.message.alert_builtins().contains(&"occurrences") {
        let s = if values.occurrences == "1" { "" } else { "s" };
        text.push_str(&format!(
            "\n_{} occurrence{s} over {}_",
            values.occurrences, values.duration
        ));
    }
    text
}

/// The resolution message's `{occurrences}` and `{duration}`.
pub(super) fn resolution_values(incident: &alerts::Incident, now_ms: i64) -> template::AlertValues {
    template::AlertValues {
        occurrences: incident.occurrences.to_string(),
        duration: human_ms(now_ms.saturating_sub(incident.opened_ms)),
        ..template::AlertValues::default()
    }
}

/// The capture values an incident keeps for a resolution by time: the hit's captures
/// under the names of the resolution message's groups.
pub(super) fn incident_values(
    rule: &crate::config::Rule,
    resolve: &crate::config::Resolve,
    hit: &Hit<'_, '_>,
) -> Vec<Option<String>> {
    let own: Vec<Option<&str>> = rule.pattern.capture_names().collect();
    resolve
        .message_pattern(&rule.pattern)
        .capture_names()
        .map(|name| {
            let index = own.iter().position(|n| name.is_some() && *n == name)?;
            hit.captures
                .get(index)
                .map(|m| String::from_utf8_lossy(m).into_owned())
        })
        .collect()
}

/// A notification of an alert (resolution, absence, recovery): a text reply in the
/// rule's thread, never merged into a burst.
pub(super) fn alert_notification(
    rule: &crate::config::Rule,
    thread_key: &str,
    webhook: String,
    text: String,
) -> Notification {
    Notification {
        rule: rule.name.clone(),
        webhook,
        thread_key: thread_key.to_owned(),
        dedup_key: None,
        text: chat_text::fit(text),
        burst: None,
        card: None,
    }
}

pub(super) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A span of milliseconds as people read it, to the second (`1h 2m 3s`).
pub(super) fn human_ms(ms: i64) -> String {
    let secs = u64::try_from(ms.max(0) / 1000).unwrap_or(0);
    humantime::format_duration(Duration::from_secs(secs.max(1))).to_string()
}

/// Keeps the states of rules that still have their feature, and, when the previous config
/// is known, whose settings the state depends on did not change; drops never-seen keys
/// that `expect` no longer lists.
pub(super) fn retain_alerts_of(alerts: &mut Alerts, old: Option<&Config>, new: &Config) {
    let same = |kind: alerts::Kind, name: &str| {
        // What a silence held back is told when it ends, whatever became of the rule.
        if kind == alerts::Kind::Held {
            return true;
        }
        let Some(rule) = new.rules.iter().find(|r| r.name == name) else {
            return false;
        };
        let has = match kind {
            alerts::Kind::Threshold => rule.threshold.is_some(),
            alerts::Kind::Incident => rule.resolve.is_some(),
            alerts::Kind::Heartbeat => rule.absence.is_some(),
            alerts::Kind::Held => true,
        };
        has && old.is_none_or(|old| {
            old.rules
                .iter()
                .find(|r| r.name == name)
                .is_some_and(|before| alert_fingerprint(before) == alert_fingerprint(rule))
        })
    };
    alerts.retain(same);
    for rule in &new.rules {
        if let Some(absence) = &rule.absence {
            alerts.forget_unexpected(&rule.name, &absence.expected);
        }
    }
}

/// What a rule's alert state depends on: its pattern, keys and alert settings.
pub(super) fn alert_fingerprint(rule: &crate::config::Rule) -> String {
    format!(
        "{}\u{1f}{}\u{1f}{:?}\u{1f}{:?}\u{1f}{:?}\u{1f}{:?}",
        rule.pattern.as_str(),
        rule.thread_key.source(),
        rule.dedup
            .as_ref()
            .map(|d| (d.key.source().to_owned(), d.window)),
        rule.threshold,
        rule.resolve.as_ref().map(|r| (
            r.pattern.as_ref().map(|(p, _)| p.as_str().to_owned()),
            r.after
        )),
        rule.absence,
    )
}

/// The rules the tick looks at: those with `resolve.after`, `resolve` or `absent_after`.
pub(super) fn timed_rules(config: &Config) -> HashMap<String, Arc<crate::config::Rule>> {
    config
        .rules
        .iter()
        .filter(|r| r.resolve.is_some() || r.absence.is_some())
        .map(|r| (r.name.clone(), Arc::clone(r)))
        .collect()
}
