//! The agent's counters and gauges, exported at `/metrics` in the Prometheus text format.
//!
//! Names follow `chattail_<noun>_<unit>_total` for counters (the `_total` is added by
//! prometheus-client). Every label takes its values from the config (file patterns, rule
//! and webhook names) or from a fixed list (`reason`, `kind`), so the number of series is
//! bounded by the config, whatever the logs contain. Nothing here ever sees a webhook URL.
//!
//! Lines and bytes read, the counters that move with every line, are reported by the
//! tailer once per chunk read (not per line); the per-rule counters move per match (a
//! label lookup and a small allocation), which only matching lines pay.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PatternLabel {
    /// A `files[].path` glob as configured (made absolute).
    pub pattern: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RuleLabel {
    pub rule: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WebhookLabel {
    pub webhook: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FormatLabel {
    /// `cri` or `docker`.
    pub format: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabel {
    /// `rename` or `truncate`.
    pub kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FailureLabel {
    pub webhook: String,
    /// One of [`FAILURE_REASONS`].
    pub reason: &'static str,
}

/// The values the `reason` label of `chattail_chat_failures_total` can take.
pub const FAILURE_REASONS: &[&str] = &[
    "rate_limited",
    "server_error",
    "timeout",
    "connection",
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "other",
];

/// The values the `reason` label of `chattail_journal_reader_restarts_total` can take.
pub const JOURNAL_RESTART_REASONS: &[&str] = &["exited", "stuck", "malformed", "cannot_start"];

/// Every metric of the agent. Cloning is cheap and shares the values.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub read_lines: Family<PatternLabel, Counter>,
    pub read_bytes: Family<PatternLabel, Counter>,
    pub cut_lines: Family<ReasonLabel, Counter>,
    /// Container log records that were not of their file's format (passed on as text).
    pub decode_errors: Family<FormatLabel, Counter>,
    pub rotations: Family<KindLabel, Counter>,
    pub files_followed: Counter,
    pub files_released: Counter,
    pub copytruncate_recoveries: Counter,
    pub file_errors: Family<ReasonLabel, Counter>,
    pub rule_matches: Family<RuleLabel, Counter>,
    pub suppressed_matches: Family<RuleLabel, Counter>,
    pub silenced: Family<RuleLabel, Counter>,
    pub card_fallbacks: Family<RuleLabel, Counter>,
    pub silences_active: Gauge,
    pub burst_evictions: Counter,
    pub chat_posts: Family<WebhookLabel, Counter>,
    pub chat_notifications: Family<WebhookLabel, Counter>,
    pub chat_failures: Family<FailureLabel, Counter>,
    pub chat_retries: Family<WebhookLabel, Counter>,
    pub chat_rate_limited: Family<WebhookLabel, Counter>,
    pub webhook_parked: Family<WebhookLabel, Gauge>,
    pub outbox_notifications: Family<WebhookLabel, Gauge>,
    pub outbox_oldest_age_seconds: Family<WebhookLabel, Gauge<f64, AtomicU64>>,
    pub config_reloads: Counter,
    pub config_reload_failures: Counter,
    pub self_alerts: Counter,
    /// Fleet mode: 1 while Redis answers (or before the first call), 0 while each agent
    /// paces locally.
    pub fleet_connected: Gauge,
    pub fleet_errors: Counter,
    /// Fleet mode: answers from Redis that were out of range (a pacing wait longer than
    /// any reservation can be), ignored in favour of local pacing.
    pub fleet_bad_answers: Counter,
    /// Journal entries read (of every unit, before `journal.units` filters them).
    pub journal_entries: Counter,
    /// `journalctl` restarts, by why the last one ended (`exited`, `stuck`, `malformed`,
    /// `cannot_start`).
    pub journal_restarts: Family<ReasonLabel, Counter>,
    /// Times the saved journal position was gone at a start (rotated or vacuumed away).
    pub journal_gaps: Counter,
    /// Whether the fleet metrics are exported (fleet mode configured at start).
    pub fleet_enabled: bool,
}

impl Metrics {
    /// Creates every series whose label values are known in advance, at zero, so that a
    /// fresh agent exports them from the first scrape and an alert on `rate(...) > 0` can
    /// be written before the first incident (Prometheus' advice for counters). Called at
    /// start and after a reload (new webhooks, rules, files).
    pub fn prepare(
        &self,
        webhooks: &[&str],
        rules: &[&str],
        patterns: &[&str],
        formats: &[&'static str],
    ) {
        for webhook in webhooks {
            let label = self.webhook(webhook);
            let _ = self.chat_posts.get_or_create(&label);
            let _ = self.chat_notifications.get_or_create(&label);
            let _ = self.chat_retries.get_or_create(&label);
            let _ = self.chat_rate_limited.get_or_create(&label);
            let _ = self.webhook_parked.get_or_create(&label);
            let _ = self.outbox_notifications.get_or_create(&label);
            let _ = self.outbox_oldest_age_seconds.get_or_create(&label);
            for reason in FAILURE_REASONS {
                let _ = self.chat_failures.get_or_create(&FailureLabel {
                    webhook: (*webhook).to_owned(),
                    reason,
                });
            }
        }
        for rule in rules {
            let label = RuleLabel {
                rule: (*rule).to_owned(),
            };
            let _ = self.rule_matches.get_or_create(&label);
            let _ = self.suppressed_matches.get_or_create(&label);
            let _ = self.silenced.get_or_create(&label);
            let _ = self.card_fallbacks.get_or_create(&label);
        }
        for pattern in patterns {
            let label = PatternLabel {
                pattern: (*pattern).to_owned(),
            };
            let _ = self.read_lines.get_or_create(&label);
            let _ = self.read_bytes.get_or_create(&label);
        }
        for reason in ["max_line_bytes", "multiline_max_lines", "joined_pieces"] {
            let _ = self.cut_lines.get_or_create(&ReasonLabel { reason });
        }
        for reason in ["open", "read", "descriptors"] {
            let _ = self.file_errors.get_or_create(&ReasonLabel { reason });
        }
        for kind in ["rename", "truncate"] {
            let _ = self.rotations.get_or_create(&KindLabel { kind });
        }
        for format in formats {
            let _ = self.decode_errors.get_or_create(&FormatLabel { format });
        }
        for reason in JOURNAL_RESTART_REASONS {
            let _ = self.journal_restarts.get_or_create(&ReasonLabel { reason });
        }
    }

    /// A registry that exports these metrics, for the admin endpoint.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register(
            "chattail_read_lines",
            "Lines read from log files, by files[].path pattern",
            self.read_lines.clone(),
        );
        r.register(
            "chattail_read_bytes",
            "Bytes of complete lines read from log files, by files[].path pattern",
            self.read_bytes.clone(),
        );
        r.register(
            "chattail_cut_lines",
            "Lines cut: longer than max_line_bytes (reason=max_line_bytes, or joined_pieces for container logs' lines joined from pieces), or past a multiline event's max_lines",
            self.cut_lines.clone(),
        );
        r.register(
            "chattail_decode_errors",
            "Container log records that were not of their files[].format (cri, docker); passed on as plain text",
            self.decode_errors.clone(),
        );
        r.register(
            "chattail_file_rotations",
            "Rotations seen: kind=rename (moved or deleted, then a new file) or kind=truncate",
            self.rotations.clone(),
        );
        r.register(
            "chattail_files_followed",
            "Files opened for following: new, found under a rotated name, or resumed (at start, reload or recovery)",
            self.files_followed.clone(),
        );
        r.register(
            "chattail_files_released",
            "Rotated or deleted files read to their end and closed",
            self.files_released.clone(),
        );
        r.register(
            "chattail_copytruncate_recoveries",
            "Truncations whose unread lines were recovered from the copy next to the file",
            self.copytruncate_recoveries.clone(),
        );
        r.register(
            "chattail_file_errors",
            "Log files that could not be opened (reason=open, once per path until it opens), read (reason=read), or opened for want of a descriptor (reason=descriptors, at every scan)",
            self.file_errors.clone(),
        );
        r.register(
            "chattail_rule_matches",
            "Lines (or multiline events) a rule matched",
            self.rule_matches.clone(),
        );
        r.register(
            "chattail_suppressed_matches",
            "Matches counted into a burst window instead of being posted",
            self.suppressed_matches.clone(),
        );
        r.register(
            "chattail_silenced",
            "Matches and alerts held back by a silence (told in one message per thread when it ends)",
            self.silenced.clone(),
        );
        r.register(
            "chattail_card_fallbacks",
            "Alerts posted as text alone because Chat refused their card (400)",
            self.card_fallbacks.clone(),
        );
        r.register(
            "chattail_silences_active",
            "Silences holding back alerts now",
            self.silences_active.clone(),
        );
        r.register(
            "chattail_burst_evictions",
            "Burst windows closed early because a rule reached dedup.max_keys",
            self.burst_evictions.clone(),
        );
        r.register(
            "chattail_chat_posts",
            "Posts Chat accepted, by webhook",
            self.chat_posts.clone(),
        );
        r.register(
            "chattail_chat_notifications",
            "Notifications delivered (several may share a post), by webhook",
            self.chat_notifications.clone(),
        );
        r.register(
            "chattail_chat_failures",
            "Posts Chat did not accept, by webhook and reason",
            self.chat_failures.clone(),
        );
        r.register(
            "chattail_chat_retries",
            "Posts tried again after a failure that may pass (429, 5xx, timeouts, network)",
            self.chat_retries.clone(),
        );
        r.register(
            "chattail_chat_rate_limited",
            "429 answers from Chat, by webhook",
            self.chat_rate_limited.clone(),
        );
        r.register(
            "chattail_webhook_parked",
            "1 while Chat refuses a webhook's posts (400/401/403/404) and it is parked",
            self.webhook_parked.clone(),
        );
        r.register(
            "chattail_outbox_notifications",
            "Notifications queued and not yet delivered, by webhook",
            self.outbox_notifications.clone(),
        );
        r.register(
            "chattail_outbox_oldest_age_seconds",
            "Age of the oldest queued notification, by webhook",
            self.outbox_oldest_age_seconds.clone(),
        );
        r.register(
            "chattail_config_reloads",
            "Config reloads applied (SIGHUP or --watch-config)",
            self.config_reloads.clone(),
        );
        r.register(
            "chattail_config_reload_failures",
            "Config reloads refused because the new config did not validate",
            self.config_reload_failures.clone(),
        );
        r.register(
            "chattail_self_alerts",
            "Self-alerts and their resolutions queued for self_alerts.webhook",
            self.self_alerts.clone(),
        );
        // Only agents configured for fleet mode at start export these, so that an alert
        // on `chattail_fleet_connected == 0` never fires for an agent that paces alone.
        r.register(
            "chattail_journal_entries",
            "Journal entries read, of every unit (journal.units filters after)",
            self.journal_entries.clone(),
        );
        r.register(
            "chattail_journal_reader_restarts",
            "journalctl restarts, by why the last one ended (exited, stuck, malformed, cannot_start)",
            self.journal_restarts.clone(),
        );
        r.register(
            "chattail_journal_gaps",
            "Starts whose saved journal position was gone (rotated or vacuumed): entries may have been skipped; the log says how many",
            self.journal_gaps.clone(),
        );
        if self.fleet_enabled {
            r.register(
                "chattail_fleet_connected",
                "Fleet mode: 1 while Redis answers, 0 while pacing locally",
                self.fleet_connected.clone(),
            );
            r.register(
                "chattail_fleet_errors",
                "Fleet mode: Redis calls that failed or timed out (each answered by local pacing)",
                self.fleet_errors.clone(),
            );
            r.register(
                "chattail_fleet_bad_answers",
                "Fleet mode: Redis answers out of range (a pacing wait beyond any reservation), ignored for local pacing",
                self.fleet_bad_answers.clone(),
            );
        }
        r
    }

    pub fn rule_matched(&self, rule: &str) {
        self.rule_matches
            .get_or_create(&RuleLabel {
                rule: rule.to_owned(),
            })
            .inc();
    }

    pub fn card_fallback(&self, rule: &str) {
        self.card_fallbacks
            .get_or_create(&RuleLabel {
                rule: rule.to_owned(),
            })
            .inc();
    }

    pub fn rule_silenced(&self, rule: &str) {
        self.silenced
            .get_or_create(&RuleLabel {
                rule: rule.to_owned(),
            })
            .inc();
    }

    pub fn rule_suppressed(&self, rule: &str) {
        self.suppressed_matches
            .get_or_create(&RuleLabel {
                rule: rule.to_owned(),
            })
            .inc();
    }

    pub fn webhook(&self, webhook: &str) -> WebhookLabel {
        WebhookLabel {
            webhook: webhook.to_owned(),
        }
    }

    /// Counts a failed post. `status` is Chat's HTTP status, if it answered.
    pub fn chat_failed(&self, webhook: &str, reason: &'static str) {
        self.chat_failures
            .get_or_create(&FailureLabel {
                webhook: webhook.to_owned(),
                reason,
            })
            .inc();
    }

    /// Encodes every metric in the Prometheus text format (version 0.0.4).
    pub fn encode(registry: &Registry) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, registry);
        text
    }
}

/// The `reason` label for an HTTP status from Chat.
pub fn reason_for_status(status: u16) -> &'static str {
    match status {
        429 => "rate_limited",
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        500..=599 => "server_error",
        _ => "other",
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_metrics_only_with_fleet_mode() {
        let alone = Metrics::encode(&Metrics::default().registry());
        assert!(!alone.contains("chattail_fleet"), "{alone}");
        let fleet = Metrics {
            fleet_enabled: true,
            ..Metrics::default()
        };
        let text = Metrics::encode(&fleet.registry());
        assert!(text.contains("chattail_fleet_connected 0"), "{text}");
        assert!(text.contains("chattail_fleet_errors_total 0"), "{text}");
    }

    #[test]
    fn names_follow_the_convention_and_labels_are_escaped() {
        let m = Metrics::default();
        m.read_lines
            .get_or_create(&PatternLabel {
                pattern: "/var/log/\"odd\"/*.log".to_owned(),
            })
            .inc_by(3);
        m.chat_failed("oncall", reason_for_status(403));
        let text = Metrics::encode(&m.registry());
        assert!(
            text.contains(r#"chattail_read_lines_total{pattern="/var/log/\"odd\"/*.log"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"chattail_chat_failures_total{webhook="oncall",reason="forbidden"} 1"#),
            "{text}"
        );
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut parts = line.split(' ').skip(2);
            let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            assert!(name.starts_with("chattail_"), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
        }
    }
}
