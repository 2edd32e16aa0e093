//! Where the reports of the tailer and the pipeline go in the agent: into the outbox (the
//! notifications) and into the metrics (everything they count).

use prometheus_client::metrics::counter::Counter;

use crate::config::Config;
use std::collections::HashMap;

use crate::ops::metrics::{KindLabel, Metrics, PatternLabel, ReasonLabel, RuleLabel};
use crate::pipeline::{Cause, HitReport, Notification, Output, Routed};
use crate::tail::{Rotation, TailEvents};

/// The pipeline's output during one poll: notifications in order, counters as they move.
pub(super) struct PollOutput<'m> {
    notifications: Vec<Notification>,
    metrics: &'m Metrics,
    /// Each rule's matched and suppressed counters, looked up once per poll (a hit then
    /// costs no label allocation or family lock).
    rule_counters: HashMap<String, (Counter, Counter)>,
    /// Rule hits and notifications so far: a line that moves this may have changed the
    /// state, so its file's position must be committed with that change.
    effects: u64,
}

impl<'m> PollOutput<'m> {
    /// Starts with `queued` (notifications made outside the poll, such as self-alerts).
    pub(super) fn new(queued: Vec<Notification>, metrics: &'m Metrics) -> Self {
        Self {
            notifications: queued,
            metrics,
            rule_counters: HashMap::new(),
            effects: 0,
        }
    }

    /// A counter that moves whenever a line hits a rule or makes a notification.
    pub(super) fn effects(&self) -> u64 {
        self.effects
    }

    /// Journal entries read in this poll, and messages among them cut at `max_line_bytes`.
    pub(super) fn journal_read(&mut self, entries: u64, cut: u64) {
        self.metrics.journal_entries.inc_by(entries);
        if cut > 0 {
            self.metrics
                .cut_lines
                .get_or_create(&ReasonLabel {
                    reason: "max_line_bytes",
                })
                .inc_by(cut);
        }
    }

    pub(super) fn into_notifications(self) -> Vec<Notification> {
        self.notifications
    }
}

impl Output for PollOutput<'_> {
    fn notification(&mut self, n: Notification, _cause: Cause) {
        self.effects += 1;
        self.notifications.push(n);
    }

    fn hit(&mut self, report: &HitReport<'_, '_, '_>) {
        self.effects += 1;
        let rule = &report.hit.rule.name;
        if !self.rule_counters.contains_key(rule.as_str()) {
            let label = RuleLabel { rule: rule.clone() };
            let counters = (
                self.metrics.rule_matches.get_or_create(&label).clone(),
                self.metrics
                    .suppressed_matches
                    .get_or_create(&label)
                    .clone(),
            );
            self.rule_counters.insert(rule.clone(), counters);
        }
        if let Some((matched, suppressed)) = self.rule_counters.get(rule.as_str()) {
            matched.inc();
            if report.routed == Routed::Counted {
                suppressed.inc();
            }
        }
    }

    fn silenced(&mut self, rule: &str) {
        // What a silence holds back is state, committed with this line's position.
        self.effects += 1;
        self.metrics.rule_silenced(rule);
    }

    fn window_evicted(&mut self, _rule: &str) {
        self.metrics.burst_evictions.inc();
    }

    fn event_line_cut(&mut self) {
        self.metrics
            .cut_lines
            .get_or_create(&ReasonLabel {
                reason: "multiline_max_lines",
            })
            .inc();
    }

    fn decode_error(&mut self, format: crate::pipeline::decode::Format) {
        // A record that is not of its format still reaches the rules (as text), and is
        // part of this poll's state like any line.
        self.effects += 1;
        self.metrics
            .decode_errors
            .get_or_create(&crate::ops::metrics::FormatLabel {
                format: format.name(),
            })
            .inc();
    }

    fn decoded_line_cut(&mut self) {
        self.metrics
            .cut_lines
            .get_or_create(&ReasonLabel {
                reason: "joined_pieces",
            })
            .inc();
    }

    fn rules_unavailable(
        &mut self,
        path: &std::path::Path,
        error: &crate::pipeline::gate::GateError,
    ) {
        tracing::error!(path = %path.display(), %error, "Cannot build the rule gate for a file; its lines match nothing until the config is reloaded.");
    }
}

/// The tailer's events as metrics, with the read counters of each `files` entry resolved
/// once (no label lookup per chunk).
pub(super) struct TailMetrics {
    metrics: Metrics,
    health: std::sync::Arc<crate::ops::health::Health>,
    /// Lines and bytes read, by `files` entry index.
    read: Vec<(Counter, Counter)>,
}

impl TailMetrics {
    pub(super) fn new(
        config: &Config,
        metrics: &Metrics,
        health: &std::sync::Arc<crate::ops::health::Health>,
    ) -> Self {
        let read = config
            .files
            .iter()
            .map(|f| {
                let label = PatternLabel {
                    pattern: f.pattern.clone(),
                };
                (
                    metrics.read_lines.get_or_create(&label).clone(),
                    metrics.read_bytes.get_or_create(&label).clone(),
                )
            })
            .collect();
        Self {
            metrics: metrics.clone(),
            health: std::sync::Arc::clone(health),
            read,
        }
    }

    fn count(
        family: &prometheus_client::metrics::family::Family<ReasonLabel, Counter>,
        reason: &'static str,
    ) {
        family.get_or_create(&ReasonLabel { reason }).inc();
    }
}

impl TailEvents for TailMetrics {
    fn file_followed(&self, _spec: usize) {
        self.metrics.files_followed.inc();
    }

    fn file_released(&self, _spec: usize) {
        self.metrics.files_released.inc();
    }

    fn rotated(&self, _spec: usize, kind: Rotation) {
        let kind = match kind {
            Rotation::Renamed => "rename",
            Rotation::Truncated => "truncate",
        };
        self.metrics
            .rotations
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    fn copy_recovered(&self, _spec: usize) {
        self.metrics.copytruncate_recoveries.inc();
    }

    fn lines_read(&self, spec: usize, lines: u64, bytes: u64) {
        if let Some((l, b)) = self.read.get(spec) {
            l.inc_by(lines);
            b.inc_by(bytes);
        }
    }

    fn line_cut(&self, _spec: usize) {
        Self::count(&self.metrics.cut_lines, "max_line_bytes");
    }

    fn open_failed(&self, _spec: usize) {
        Self::count(&self.metrics.file_errors, "open");
    }

    fn read_failed(&self, _spec: usize) {
        Self::count(&self.metrics.file_errors, "read");
    }

    fn out_of_descriptors(&self, _spec: usize) {
        Self::count(&self.metrics.file_errors, "descriptors");
        self.health.out_of_descriptors();
    }
}
