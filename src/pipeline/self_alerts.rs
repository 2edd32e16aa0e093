//! Self-alerts: chattail tells Chat when it is itself in trouble.
//!
//! Three conditions open an *episode*: a webhook parked because Chat refused it, the outbox
//! past 80% of `delivery.max_outbox`, and a `files` glob that has matched no file for its
//! `missing_after`. Each episode posts once when it opens and once when it clears, into
//! one thread per host of `self_alerts.webhook`. Episodes are tracked here, in memory, by
//! the run loop, which queues the posts in the same transaction as everything else; this
//! module does no I/O.
//!
//! The caller logs every episode change [`SelfAlerts::check`] returns, whether or not
//! `self_alerts` is configured; this module only decides.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::pipeline::rules::Notification;

/// A webhook Chat refuses, as the delivery workers reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedWebhook {
    pub name: String,
    /// Chat's HTTP status.
    pub status: u16,
    /// Chat's own message, redacted.
    pub message: String,
}

/// The agent's condition at one instant, gathered by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub parked: Vec<ParkedWebhook>,
    pub outbox_queued: u64,
    pub outbox_max: u64,
    /// Log files wait for a descriptor (the tailer said so at its last scans).
    pub out_of_descriptors: bool,
    /// Fleet mode: why this agent works alone now (Redis cannot be reached).
    pub fleet_alone: Option<String>,
    /// Why the journal cannot be read now (`journalctl` missing, refused, failing).
    pub journal_failing: Option<String>,
}

/// An episode that opened or cleared, for the caller's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpisodeChange {
    /// The condition, as a sentence ("Webhook `app` is parked.").
    pub condition: String,
    /// Whether it opened (otherwise it cleared).
    pub opened: bool,
    /// What is known about it (empty when it cleared).
    pub detail: String,
}

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
    OutOfDescriptors,
    FleetAlone,
    JournalReader,
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
        facts: &Facts,
        has_files: Option<&dyn Fn(usize) -> bool>,
        now_ms: i64,
        out: &mut Vec<Notification>,
    ) -> Vec<EpisodeChange> {
        let active = self.active(config, facts, has_files, now_ms);
        let mut changes = Vec::new();
        for (condition, detail) in &active {
            if self.open.contains_key(condition) {
                continue;
            }
            self.open.insert(condition.clone(), now_ms);
            let text = format!("⚠️ {} {detail}", describe(condition, false));
            changes.push(EpisodeChange {
                condition: describe(condition, false),
                opened: true,
                detail: detail.clone(),
            });
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
                Condition::FleetAlone => config.fleet.is_some(),
                Condition::JournalReader => config.journal.is_some(),
                Condition::OutboxHigh | Condition::OutOfDescriptors => true,
            };
            let what = if still_configured {
                describe(&condition, true)
            } else {
                format!("{} is no longer configured", subject(&condition))
            };
            let text = format!("✅ {what} (after {}).", humantime::format_duration(lasted));
            changes.push(EpisodeChange {
                condition: describe(&condition, false),
                opened: false,
                detail: String::new(),
            });
            self.post(config, text, out);
        }
        changes
    }

    /// The conditions that hold now, each with its detail.
    fn active(
        &mut self,
        config: &Config,
        facts: &Facts,
        has_files: Option<&dyn Fn(usize) -> bool>,
        now_ms: i64,
    ) -> BTreeMap<Condition, String> {
        let mut active: BTreeMap<Condition, String> = BTreeMap::new();
        let target = config.self_alerts.as_ref().map(|s| s.webhook.as_str());
        for p in &facts.parked {
            // An alert about the self-alert webhook itself could not be delivered; the
            // caller's log says it.
            if Some(p.name.as_str()) != target {
                let detail = format!(
                    "Chat answered {} ({}). Its messages stay queued and are retried every {}.",
                    p.status,
                    p.message,
                    humantime::format_duration(config.delivery.park_for)
                );
                active.insert(Condition::Parked(p.name.clone()), detail);
            }
        }
        let (queued, max) = (facts.outbox_queued, facts.outbox_max);
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
        if facts.out_of_descriptors {
            active.insert(
                Condition::OutOfDescriptors,
                "Some matched files are not followed until descriptors free up; raise LimitNOFILE (ulimit -n) or narrow the globs.".to_owned(),
            );
        }
        if let Some(why) = &facts.fleet_alone {
            active.insert(
                Condition::FleetAlone,
                format!(
                    "{why}. Windows and pacing are this host's own until Redis answers; nothing is lost."
                ),
            );
        }
        if let Some(why) = &facts.journal_failing {
            active.insert(
                Condition::JournalReader,
                format!("{why}. The files are still followed; journal entries are read from where reading stopped once it works."),
            );
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

        active
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
            burst: None,
            card: None,
        });
    }
}

/// What a condition is about, as the start of a sentence.
fn subject(condition: &Condition) -> String {
    match condition {
        Condition::Parked(name) => format!("Webhook `{name}`"),
        Condition::OutboxHigh => "The outbox".to_owned(),
        Condition::Missing(p) => format!("`{p}`"),
        Condition::OutOfDescriptors => "The log reader".to_owned(),
        Condition::FleetAlone => "Fleet mode".to_owned(),
        Condition::JournalReader => "The journal reader".to_owned(),
    }
}

fn describe(condition: &Condition, cleared: bool) -> String {
    let state = match (condition, cleared) {
        (Condition::Parked(_), false) => "is parked.",
        (Condition::Parked(_), true) => "delivers again",
        (Condition::OutboxHigh, false) => "is filling up.",
        (Condition::OutboxHigh, true) => "has drained",
        (Condition::Missing(_), false) => "has no file.",
        (Condition::Missing(_), true) => "has a file again",
        (Condition::OutOfDescriptors, false) => "is short of file descriptors.",
        (Condition::OutOfDescriptors, true) => "has the descriptors it needs again",
        (Condition::FleetAlone, false) => "works alone: Redis cannot be reached.",
        (Condition::FleetAlone, true) => "shares with the fleet again",
        (Condition::JournalReader, false) => "cannot read the journal.",
        (Condition::JournalReader, true) => "reads the journal again",
    };
    format!("{} {state}", subject(condition))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LoadOptions, UrlPolicy, load_bytes};

    fn config(webhooks: &[&str]) -> Config {
        let mut yaml = String::from("webhooks:\n");
        for w in webhooks {
            yaml.push_str(&format!(
                "  {w}:\n    url: https://chat.googleapis.com/v1/spaces/{w}/messages?key=k&token=t\n"
            ));
        }
        yaml.push_str("self_alerts:\n  webhook: ops\nfiles:\n  - path: /var/log/x.log\nrules:\n  - name: r\n    match: ERROR\n    webhook: ops\n");
        let env = |_: &str| None;
        let options = LoadOptions {
            url_policy: UrlPolicy::Required,
            env: &env,
            default_host: "web-1".to_owned(),
        };
        load_bytes(
            std::path::Path::new("/etc/c.yaml"),
            yaml.as_bytes(),
            &options,
        )
        .unwrap_or_else(|report| panic!("{report}"))
        .config
    }

    fn texts(out: &[Notification]) -> Vec<&str> {
        out.iter().map(|n| n.text.as_str()).collect()
    }

    #[test]
    fn an_episode_posts_once_and_its_end_says_why_it_ended() {
        let mut facts = Facts {
            parked: vec![ParkedWebhook {
                name: "app".to_owned(),
                status: 403,
                message: "The caller does not have permission".to_owned(),
            }],
            ..Facts::default()
        };
        let mut alerts = SelfAlerts::default();
        let mut out = Vec::new();
        let both = config(&["app", "ops"]);
        for t in 0..3 {
            let changes = alerts.check(&both, &facts, Some(&|_| true), t * 1000, &mut out);
            assert_eq!(changes.len(), usize::from(t == 0), "once per episode");
        }
        assert_eq!(
            texts(&out),
            [
                "*chattail on web-1*: ⚠️ Webhook `app` is parked. Chat answered 403 (The caller does not have permission). Its messages stay queued and are retried every 5m."
            ]
        );
        assert_eq!(out[0].webhook, "ops");
        assert_eq!(out[0].thread_key, "chattail-self-alerts-web-1");
        out.clear();
        // A reload removes the webhook: the episode ends, and the post says so.
        facts.parked.clear();
        alerts.check(&config(&["ops"]), &facts, Some(&|_| true), 64_000, &mut out);
        assert_eq!(
            texts(&out),
            ["*chattail on web-1*: ✅ Webhook `app` is no longer configured (after 1m 4s)."]
        );
    }

    #[test]
    fn fleet_mode_working_alone_is_an_episode() {
        let mut facts = Facts {
            journal_failing: None,
            fleet_alone: Some(
                "fleet: Redis r:6379/0 unreachable (refused); pacing locally".to_owned(),
            ),
            ..Facts::default()
        };
        let mut alerts = SelfAlerts::default();
        let mut out = Vec::new();
        let both = config(&["app", "ops"]);
        alerts.check(&both, &facts, Some(&|_| true), 0, &mut out);
        assert_eq!(out.len(), 1);
        assert!(
            out[0]
                .text
                .contains("Fleet mode works alone: Redis cannot be reached."),
            "{}",
            out[0].text
        );
        facts.fleet_alone = None;
        alerts.check(&both, &facts, Some(&|_| true), 30_000, &mut out);
        assert_eq!(out.len(), 2);
        // This config has no `fleet` block, so the end reads as a reload's.
        assert!(
            out[1]
                .text
                .contains("✅ Fleet mode is no longer configured"),
            "{}",
            out[1].text
        );
    }

    #[test]
    fn the_self_alert_webhook_is_not_alerted_about_itself() {
        let facts = Facts {
            parked: vec![ParkedWebhook {
                name: "ops".to_owned(),
                status: 404,
                message: "Not found".to_owned(),
            }],
            ..Facts::default()
        };
        let mut out = Vec::new();
        SelfAlerts::default().check(&config(&["ops"]), &facts, Some(&|_| true), 0, &mut out);
        assert!(out.is_empty());
    }
}
