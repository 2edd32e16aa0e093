//! Self-alerts: chattail tells Chat when it is itself in trouble.
//!
//! Three conditions open an *episode*: a webhook parked because Chat refused it, the outbox
//! past 80% of `delivery.max_outbox`, and a `files` glob that has matched no file for its
//! `missing_after`. Each episode posts once when it opens and once when it clears, into
//! one thread per host of `self_alerts.webhook`. Episodes are tracked here, in memory, by
//! the run loop, which queues the posts in the same transaction as everything else; this
//! module does no I/O.
//!
//! Every condition is also logged, whether or not `self_alerts` is configured.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::health::Health;
use crate::rules::Notification;

/// The rule name self-alert notifications carry in the outbox.
pub const SELF_ALERT_RULE: &str = "chattail-self-alert";
/// The outbox is "filling up" from this share of its bound...
const OUTBOX_HIGH: f64 = 0.8;
/// ...until it falls below this share, so an outbox hovering at 80% is one episode.
const OUTBOX_CLEAR: f64 = 0.6;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Condition {
    Parked(String),
    OutboxHigh,
    Missing(String),
}

#[derive(Debug, Default)]
pub struct SelfAlerts {
    /// Open episodes and when they began (unix milliseconds).
    open: BTreeMap<Condition, i64>,
    /// Per `files` pattern, since when it has matched no file.
    missing_since: BTreeMap<String, i64>,
}

impl SelfAlerts {
    /// Looks at the agent's condition at `now_ms` and queues into `out` a post for every
    /// episode that opened or cleared since the last look. `has_files(i)` says whether the
    /// tailer follows a file of `files[i]` now; `None` while reading is paused (the
    /// tailer does not look at the disk then, so missing files are neither found nor
    /// cleared).
    pub fn check(
        &mut self,
        config: &Config,
        health: &Health,
        has_files: Option<&dyn Fn(usize) -> bool>,
        now_ms: i64,
        out: &mut Vec<Notification>,
    ) {
        let mut active: BTreeMap<Condition, String> = BTreeMap::new();
        let target = config.self_alerts.as_ref().map(|s| s.webhook.as_str());
        for (name, p) in health.parked() {
            // An alert about the self-alert webhook itself could not be delivered; the log
            // says it.
            if Some(name.as_str()) != target {
                let detail = format!(
                    "Chat answered {} ({}). Its messages stay queued and are retried every {}.",
                    p.status,
                    p.message,
                    humantime::format_duration(config.delivery.park_for)
                );
                active.insert(Condition::Parked(name), detail);
            }
        }
        let (queued, max) = health.outbox();
        if max > 0 {
            let share = queued as f64 / max as f64;
            let was_high = self.open.contains_key(&Condition::OutboxHigh);
            if share >= OUTBOX_HIGH || (was_high && share >= OUTBOX_CLEAR) {
                active.insert(
                    Condition::OutboxHigh,
                    format!(
                        "{queued} of at most {max} notifications are queued; at the bound, reading pauses."
                    ),
                );
            }
        }
        let mut configured = Vec::new();
        for (i, spec) in config.files.iter().enumerate() {
            configured.push(spec.pattern.clone());
            let Some(after) = spec.missing_after else {
                continue;
            };
            let Some(has_files) = has_files else {
                // Paused: an open episode stays open, no new one opens.
                let condition = Condition::Missing(spec.pattern.clone());
                if self.open.contains_key(&condition) {
                    active.insert(condition, String::new());
                }
                continue;
            };
            if has_files(i) {
                self.missing_since.remove(&spec.pattern);
                continue;
            }
            let since = *self
                .missing_since
                .entry(spec.pattern.clone())
                .or_insert(now_ms);
            let after_ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
            if now_ms.saturating_sub(since) >= after_ms {
                active.insert(
                    Condition::Missing(spec.pattern.clone()),
                    format!(
                        "No file has matched it for {}.",
                        humantime::format_duration(std::time::Duration::from_secs(
                            u64::try_from((now_ms - since) / 1000).unwrap_or(0)
                        ))
                    ),
                );
            }
        }
        self.missing_since.retain(|p, _| configured.contains(p));

        for (condition, detail) in &active {
            if self.open.contains_key(condition) {
                continue;
            }
            self.open.insert(condition.clone(), now_ms);
            let text = format!("⚠️ {} {detail}", describe(condition, false));
            tracing::warn!(condition = %describe(condition, false), "Self-alert: {detail}");
            self.post(config, text, out);
        }
        let cleared: Vec<(Condition, i64)> = self
            .open
            .iter()
            .filter(|(c, _)| !active.contains_key(c))
            .map(|(c, since)| (c.clone(), *since))
            .collect();
        for (condition, since) in cleared {
            self.open.remove(&condition);
            let lasted = std::time::Duration::from_secs(
                u64::try_from(now_ms.saturating_sub(since) / 1000).unwrap_or(0),
            );
            // A condition can also end because a reload removed what it was about.
            let still_configured = match &condition {
                Condition::Parked(name) => config.webhook(name).is_some(),
                Condition::Missing(p) => config.files.iter().any(|f| &f.pattern == p),
                Condition::OutboxHigh => true,
            };
            let what = if still_configured {
                describe(&condition, true)
            } else {
                describe(&condition, false)
                    .trim_end_matches('.')
                    .replace(" is parked", "")
                    .replace(" has no file", "")
                    + " is no longer configured"
            };
            let text = format!("✅ {what} (after {}).", humantime::format_duration(lasted));
            tracing::info!(condition = %describe(&condition, false), "Self-alert cleared.");
            self.post(config, text, out);
        }
    }

    fn post(&self, config: &Config, text: String, out: &mut Vec<Notification>) {
        let Some(target) = &config.self_alerts else {
            return;
        };
        out.push(Notification {
            rule: SELF_ALERT_RULE.to_owned(),
            webhook: target.webhook.clone(),
            thread_key: format!("chattail-self-alerts-{}", config.host),
            dedup_key: None,
            text: format!("*chattail on {}*: {text}", config.host),
        });
    }
}

fn describe(condition: &Condition, cleared: bool) -> String {
    match (condition, cleared) {
        (Condition::Parked(name), false) => format!("Webhook `{name}` is parked."),
        (Condition::Parked(name), true) => format!("Webhook `{name}` delivers again"),
        (Condition::OutboxHigh, false) => "The outbox is filling up.".to_owned(),
        (Condition::OutboxHigh, true) => "The outbox has drained".to_owned(),
        (Condition::Missing(p), false) => format!("`{p}` has no file."),
        (Condition::Missing(p), true) => format!("`{p}` has a file again"),
    }
}
