//! The pure core: lines (or multiline events) in, notifications and state changes out.
//!
//! One [`Pipeline`] serves both `chattail run` and `chattail test`, so what a rule author
//! sees in `test` is what the agent does: the same multiline assembly, the same context
//! lines, the same burst windows. The pipeline owns
//!
//! - the rule sets of each file (one `RegexSet` gate per distinct set of applicable rules),
//! - the multiline [`Assembler`] (the pending event of each file),
//! - the [`ContextRing`] of each file (for `context.before`),
//! - the [`Bursts`] windows of `dedup` rules,
//!
//! and nothing else. Time is an argument (unix milliseconds); it does no I/O, reads no
//! clock and writes no log. What it decides reaches the caller through an [`Output`]:
//! notifications to queue, and reports of hits, evictions and cut lines for counters and
//! the `test` report. What must be persisted is taken with [`Pipeline::take_changes`], so
//! the caller can store it in the transaction that advances the offsets.

#[cfg(test)]
mod alert_rule_tests;
mod alert_rules;
pub mod alerts;
pub mod bursts;
pub mod card;
pub mod chat_text;
pub mod container_path;
pub mod context;
pub mod decode;
mod evaluate;
pub mod gate;
pub mod journal_fields;
pub mod multiline;
pub mod pattern;
pub mod rules;
mod runs;
pub mod self_alerts;
mod silenced;
pub mod template;
pub mod thread_key;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use alert_rules::{retain_alerts_of, timed_rules};
pub use alerts::{AlertRow, Alerts};
pub use bursts::{Bursts, Window};
pub use context::ContextRing;
pub use multiline::{Assembler, Event, EventChange};
pub use rules::{Hit, Notification, RuleSet, Source};
pub use silenced::HeldCounts;
use silenced::Silencing;

/// How many paths the rule-set index and the context rings remember before they start
/// over (a date-named log adds a path a day, forever).
const MAX_CACHED_FILES: usize = 10_000;

/// How the caller identifies a file (the agent: device and inode; `test`: the input's
/// number). Pending multiline events are kept per file id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// Where a line comes from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub id: FileId,
    /// What `{file}` renders to and what `files:` filters of rules match.
    pub path: &'a Path,
    /// The index of the `files` entry the file belongs to, for its multiline settings;
    /// past the end (or an entry without `multiline`) means lines are matched one by one.
    pub spec: usize,
    /// The caller's number for this line (`test`: its line number), reported back in
    /// [`HitReport::lines`]. The agent passes 0.
    pub number: u64,
    /// The stream a decoded line was written to (set by the pipeline; callers pass `None`).
    pub stream: Option<decode::Stream>,
    /// The writer of a journal entry (`spec` is then [`crate::config::JOURNAL_SPEC`] and
    /// `path` `journal:UNIT`); `None` for files.
    pub journal: Option<&'a journal_fields::JournalFields>,
}

/// What became of a hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// The rule has no `dedup`: its notification is queued.
    Queued,
    /// It opened a burst window: queued, and repeats will be counted.
    Posted,
    /// It was counted into an open window, not queued.
    Counted,
    /// A rule with `threshold`: counted towards it, not reached, not queued.
    BelowThreshold,
    /// A rule with `absent_after`: the line is its heartbeat, not queued.
    Heartbeat,
    /// An active silence matched it: held back, told when the silence ends.
    Silenced,
}

/// Why a notification is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A hit (or a hit that opened a burst window).
    Hit,
    /// The summary of a burst window that ended, was evicted, or was flushed.
    Summary,
    /// An incident resolved (`resolve`).
    Resolution,
    /// A line that did not come (`absent_after`).
    Absence,
    /// The line of an absence came back.
    Recovery,
    /// A silence ended: what it held back from one thread.
    SilenceEnded,
}

/// One rule matching one line or event, as reported to [`Output::hit`].
#[derive(Debug)]
pub struct HitReport<'a, 'r, 'l> {
    pub hit: &'a Hit<'r, 'l>,
    /// The line, or the event's lines joined with `\n`.
    pub text: &'l [u8],
    /// The caller's numbers of the first and last line of the text.
    pub lines: (u64, u64),
    pub notification: &'a Notification,
    pub routed: Routed,
}

/// Receives what the pipeline decides. Only `notification` is required; the other
/// reports default to nothing.
pub trait Output {
    /// A notification to queue, in order.
    fn notification(&mut self, n: Notification, cause: Cause);
    /// A rule hit. Called after the notifications this hit caused (its own, and the
    /// summary of a window it closed or evicted).
    fn hit(&mut self, _report: &HitReport<'_, '_, '_>) {}
    /// A burst window of `rule` was closed early because the rule reached `max_keys`.
    fn window_evicted(&mut self, _rule: &str) {}
    /// A silence held back a hit or an alert of `rule`.
    fn silenced(&mut self, _rule: &str) {}
    /// A line was dropped from a multiline event at its `max_lines`.
    fn event_line_cut(&mut self) {}
    /// A record of a container log was not of its format; it was passed on as plain text.
    fn decode_error(&mut self, _format: decode::Format) {}
    /// A line joined from a container log's pieces was cut at `max_line_bytes`.
    fn decoded_line_cut(&mut self) {}
    /// The rules that apply to `path` could not be put behind one gate (which validation
    /// makes practically impossible); its lines match nothing until the next reload.
    fn rules_unavailable(&mut self, _path: &Path, _error: &gate::GateError) {}
}

impl Output for Vec<Notification> {
    fn notification(&mut self, n: Notification, _cause: Cause) {
        self.push(n);
    }
}

/// What changed since the last [`Pipeline::take_changes`], for the state.
#[derive(Debug, Default)]
pub struct Changes {
    /// Burst windows opened or changed.
    pub windows: Vec<Window>,
    /// Burst windows closed, by (rule, key).
    pub closed_windows: Vec<(String, String)>,
    /// What changed about pending multiline events (new, grown, completed).
    pub events: Vec<EventChange>,
    /// What changed about container logs' lines pending in pieces.
    pub partials: Vec<decode::PartialChange>,
    /// Threshold counters, incidents and heartbeats changed.
    pub alerts: Vec<AlertRow>,
    /// Those removed.
    pub removed_alerts: Vec<alerts::AlertId>,
    /// What silences held back, per (silence, rule): count and time of the last.
    pub held_counts: HeldCounts,
}

/// The line → notification pipeline. See the module documentation.
#[derive(Debug)]
pub struct Pipeline {
    config: Arc<Config>,
    /// Rule sets by file path, shared between files with the same applicable rules.
    by_path: HashMap<PathBuf, Arc<RuleSet>>,
    by_rules: HashMap<Vec<usize>, Arc<RuleSet>>,
    /// The rule set of the last path asked for.
    last_rules: Option<(PathBuf, Arc<RuleSet>)>,
    assembler: Assembler,
    rings: HashMap<PathBuf, ContextRing>,
    max_context: usize,
    bursts: Bursts,
    /// Container logs' lines pending in pieces, per file.
    partials: decode::Partials,
    /// `dedup.window` by rule name.
    dedup_windows: HashMap<String, Duration>,
    /// Whether rules' `files:` filters apply (not in `chattail test`).
    file_filters: bool,
    /// Whether every hit's message is rendered, also one an open window only counts
    /// (`chattail test` shows it).
    render_counted: bool,
    /// Nothing is posted for a fleet (`chattail test`, `--dry-run`): windows that counted
    /// nothing end without a summary row even when the config has `fleet`.
    alone: bool,
    /// Threshold counters, open incidents and heartbeats.
    alerts: Alerts,
    /// Rules with `resolve.after` or `absent_after`, by name, for the tick.
    timed_rules: HashMap<String, Arc<crate::config::Rule>>,
    /// Whether absences may be decided: the caller has read what was waiting (after a
    /// restart, the lines written while it was down count before any absence is posted).
    caught_up: bool,
    /// Whether `expect`'s keys are tracked for the current config.
    expected_tracked: bool,
    /// The silences known (active and recently ended), and what they held back since
    /// the last `take_changes`.
    silences: Arc<crate::silences::SilenceSet>,
    held_counts: HeldCounts,
    /// Reused buffers, so a poll does not allocate them per line.
    events: Vec<Event>,
    queued: Vec<Notification>,
}

impl Pipeline {
    /// A pipeline for `config`, resuming the burst windows and pending events a previous
    /// run stored.
    pub fn new(config: Arc<Config>, windows: Vec<Window>, events: Vec<Event>) -> Self {
        Self::resuming(config, windows, events, Vec::new())
    }

    /// A pipeline resuming burst windows, pending events and lines pending in pieces.
    pub fn resuming(
        config: Arc<Config>,
        windows: Vec<Window>,
        events: Vec<Event>,
        partials: Vec<decode::Partial>,
    ) -> Self {
        Self::resuming_alerts(config, windows, events, partials, Vec::new())
    }

    /// A pipeline resuming every kind of state, threshold counters, incidents and
    /// heartbeats included.
    pub fn resuming_alerts(
        config: Arc<Config>,
        windows: Vec<Window>,
        events: Vec<Event>,
        partials: Vec<decode::Partial>,
        alerts: Vec<AlertRow>,
    ) -> Self {
        let mut bursts = Bursts::from_saved(windows);
        bursts.close_empty_windows(config.fleet.is_some());
        let mut alerts = Alerts::from_saved(alerts);
        retain_alerts_of(&mut alerts, None, &config);
        Self {
            timed_rules: timed_rules(&config),
            max_context: config.max_context_before(),
            dedup_windows: dedup_windows(&config),
            config,
            by_path: HashMap::new(),
            by_rules: HashMap::new(),
            last_rules: None,
            assembler: Assembler::from_saved(events),
            rings: HashMap::new(),
            bursts,
            partials: decode::Partials::from_saved(partials),
            alerts,
            caught_up: false,
            expected_tracked: false,
            file_filters: true,
            render_counted: false,
            alone: false,
            silences: Arc::default(),
            held_counts: HeldCounts::new(),
            events: Vec::new(),
            queued: Vec::new(),
        }
    }

    /// Every rule applies to every file, whatever its `files:` filter (`chattail test`,
    /// where inputs are samples whose paths need not match).
    pub fn ignoring_file_filters(mut self) -> Self {
        self.file_filters = false;
        self
    }

    /// Every hit's message and card are rendered, also those an open burst window only
    /// counts (`chattail test` shows them).
    pub fn rendering_counted_hits(mut self) -> Self {
        self.render_counted = true;
        self
    }

    /// Absences are decided at every tick, without waiting to be told that the input is
    /// caught up (`chattail test`, whose input is all there).
    pub fn deciding_absences(mut self) -> Self {
        self.caught_up = true;
        self
    }

    /// The caller has read everything that was waiting: from now on absences are decided.
    pub fn caught_up(&mut self) {
        self.caught_up = true;
    }

    /// Nothing this pipeline queues is decided by a fleet (`chattail test`, `--dry-run`):
    /// see `alone`.
    pub fn alone(mut self) -> Self {
        self.alone = true;
        self.bursts.close_empty_windows(false);
        self
    }

    /// One line of a file at `now_ms`. A file whose `files` entry has `multiline` passes
    /// it through its pending event; the rules see the event when it completes.
    pub fn line(&mut self, origin: &Origin<'_>, line: &[u8], now_ms: i64, out: &mut dyn Output) {
        // Container logs are decoded first: multiline and rules see what the application
        // wrote. Plain files (the common case) pay one comparison.
        let reading = self.config.reading(origin.spec);
        let format = reading.map_or(decode::Format::Plain, |r| r.format);
        if format != decode::Format::Plain {
            let max_bytes =
                reading.map_or(crate::config::DEFAULT_MAX_LINE_BYTES, |r| r.max_line_bytes);
            let decoded = self.partials.decode(
                (origin.id, origin.path, origin.spec),
                format,
                line,
                max_bytes,
                now_ms,
            );
            let (bytes, stream) = match decoded {
                decode::Decoded::Pending => return,
                decode::Decoded::Malformed => {
                    out.decode_error(format);
                    (std::borrow::Cow::Borrowed(line), None)
                }
                decode::Decoded::Line { bytes, stream, cut } => {
                    if cut {
                        out.decoded_line_cut();
                    }
                    (bytes, stream)
                }
            };
            let origin = Origin { stream, ..*origin };
            self.decoded_line(&origin, &bytes, now_ms, out);
            return;
        }
        self.decoded_line(origin, line, now_ms, out);
    }

    /// A line as the application wrote it: through its file's multiline settings, then
    /// the rules.
    fn decoded_line(
        &mut self,
        origin: &Origin<'_>,
        line: &[u8],
        now_ms: i64,
        out: &mut dyn Output,
    ) {
        // Only lines of multiline files pay for holding their settings (an `Arc`) while
        // the assembler, part of `self`, changes.
        let Some(settings) = self
            .config
            .reading(origin.spec)
            .and_then(|r| r.multiline.cloned())
        else {
            let lines = (origin.number, origin.number);
            let from = Written {
                stream: origin.stream,
                journal: origin.journal,
            };
            self.evaluate(origin.path, line, lines, from, now_ms, out);
            return;
        };
        let mut done = std::mem::take(&mut self.events);
        if self
            .assembler
            .push(&settings, origin, line, now_ms, &mut done)
        {
            out.event_line_cut();
        }
        for event in done.drain(..) {
            self.evaluate_event(&event, now_ms, out);
        }
        self.events = done;
    }

    /// Completes the multiline events idle for their timeout and closes the burst windows
    /// whose time is up, queuing what they post. With `finish_events`, every pending event
    /// completes now (the input ended, or `--once` read everything).
    pub fn tick(&mut self, now_ms: i64, finish_events: bool, out: &mut dyn Output) {
        let config = Arc::clone(&self.config);
        let mut done = std::mem::take(&mut self.events);
        self.assembler.expire(
            now_ms,
            |e| {
                if finish_events {
                    return None;
                }
                config
                    .reading(e.spec)
                    .and_then(|r| r.multiline)
                    .map(|m| m.timeout)
            },
            &mut done,
        );
        for event in done.drain(..) {
            self.evaluate_event(&event, now_ms, out);
        }
        self.events = done;
        // A container log's line whose end never came (a rotation between its pieces, a
        // runtime gone mid-line) is passed on as it is, after a while or at the end.
        for piece in self.partials.expire(now_ms, finish_events) {
            let origin = Origin {
                id: piece.key,
                path: &piece.path,
                spec: piece.spec,
                number: 0,
                stream: piece.stream,
                journal: None,
            };
            self.decoded_line(&origin, &piece.bytes, now_ms, out);
        }
        let windows = &self.dedup_windows;
        self.bursts
            .expire(now_ms, |rule| windows.get(rule).copied(), &mut self.queued);
        self.drain_queued(Cause::Summary, out);
        self.tick_alerts(now_ms, out);
        self.end_silences(now_ms, out);
    }

    /// Queues the summaries of every burst window with a count now (shutdown, end of
    /// input). Windows with nothing counted stay open.
    pub fn flush_windows(&mut self, out: &mut dyn Output) {
        self.bursts.flush(&mut self.queued);
        self.drain_queued(Cause::Summary, out);
    }

    /// Moves whenever container logs' pending pieces change: a line that moved it changed
    /// the state, even when no rule hit.
    pub fn piece_generation(&self) -> u64 {
        self.partials.generation()
    }

    /// Whether anything is waiting for [`take_changes`](Self::take_changes).
    pub fn has_changes(&self) -> bool {
        self.bursts.has_changes()
            || self.assembler.has_changes()
            || self.partials.has_changes()
            || self.alerts.has_changes()
            || !self.held_counts.is_empty()
    }

    /// The burst windows and pending events changed since the last call.
    pub fn take_changes(&mut self) -> Changes {
        let (windows, closed_windows) = self.bursts.take_changes();
        let (alerts, removed_alerts) = self.alerts.take_changes();
        Changes {
            windows,
            closed_windows,
            events: self.assembler.take_changes(),
            partials: self.partials.take_changes(),
            alerts,
            removed_alerts,
            held_counts: std::mem::take(&mut self.held_counts),
        }
    }

    /// Forgets everything in memory that is ahead of the state (after a failed commit)
    /// and resumes from what the state holds: the lines since the last commit are read
    /// again and give the same notifications.
    pub fn restore(
        &mut self,
        windows: Vec<Window>,
        events: Vec<Event>,
        partials: Vec<decode::Partial>,
        alerts: Vec<AlertRow>,
    ) {
        self.alerts = Alerts::from_saved(alerts);
        retain_alerts_of(&mut self.alerts, None, &self.config);
        self.held_counts.clear();
        self.expected_tracked = false;
        self.partials = decode::Partials::from_saved(partials);
        self.bursts = Bursts::from_saved(windows);
        self.bursts
            .close_empty_windows(!self.alone && self.config.fleet.is_some());
        self.assembler = Assembler::from_saved(events);
        self.rings.clear();
    }

    /// Switches to a new config between two polls. Pending events follow their `files`
    /// entry by pattern (an event whose entry is gone completes at the next tick); burst
    /// windows stay by rule name (those of a rule that lost `dedup` close at the next
    /// tick); context lines stay unless the deepest `context.before` changed.
    pub fn switch_config(&mut self, new: Arc<Config>) {
        let old = Arc::clone(&self.config);
        self.assembler.respec(
            |spec| {
                if spec == crate::config::JOURNAL_SPEC {
                    return new.journal.is_some().then_some(spec);
                }
                let pattern = &old.files.get(spec)?.pattern;
                new.files.iter().position(|f| &f.pattern == pattern)
            },
            new.files.len(),
        );
        self.by_path.clear();
        self.by_rules.clear();
        self.last_rules = None;
        self.dedup_windows = dedup_windows(&new);
        self.bursts.window_lengths_changed();
        // Threshold counters, incidents and heartbeats stay while their rule stays as it
        // was (what it matches, its keys, the feature's settings).
        retain_alerts_of(&mut self.alerts, Some(&old), &new);
        self.timed_rules = timed_rules(&new);
        self.expected_tracked = false;
        self.bursts
            .close_empty_windows(!self.alone && new.fleet.is_some());
        if self.max_context != new.max_context_before() {
            self.max_context = new.max_context_before();
            self.rings.clear();
        }
        self.config = new;
    }

    /// The rule set for a file, compiled once per distinct set of applicable rules.
    fn rules_for(&mut self, path: &Path, out: &mut dyn Output) -> Arc<RuleSet> {
        // Lines come in runs per file: comparing with the last path is cheaper than
        // hashing it.
        if let Some((last, set)) = &self.last_rules
            && last == path
        {
            return Arc::clone(set);
        }
        let set = self.rules_for_uncached(path, out);
        self.last_rules = Some((path.to_path_buf(), Arc::clone(&set)));
        set
    }

    fn rules_for_uncached(&mut self, path: &Path, out: &mut dyn Output) -> Arc<RuleSet> {
        if let Some(set) = self.by_path.get(path) {
            return Arc::clone(set);
        }
        if self.by_path.len() >= MAX_CACHED_FILES {
            // The sets themselves stay (by rules); only the path index is rebuilt.
            self.by_path.clear();
        }
        let config = &self.config;
        let file_filters = self.file_filters;
        let indexes: Vec<usize> = config
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| !file_filters || r.applies_to(path))
            .map(|(i, _)| i)
            .collect();
        let set = self
            .by_rules
            .entry(indexes)
            .or_insert_with_key(|indexes| {
                let rules = indexes.iter().map(|&i| Arc::clone(&config.rules[i]));
                // Every pattern compiled on its own when the config was loaded, and the
                // gate's size limit grows with the number of rules, so the set compiles
                // too; should it not, the caller hears of it and nothing panics.
                Arc::new(RuleSet::new(rules.collect()).unwrap_or_else(|error| {
                    out.rules_unavailable(path, &error);
                    RuleSet::empty()
                }))
            })
            .clone();
        self.by_path.insert(path.to_path_buf(), Arc::clone(&set));
        set
    }
}

/// Who wrote a line or event, beyond its file: what the source built-ins render.
#[derive(Debug, Clone, Copy)]
struct Written<'a> {
    stream: Option<decode::Stream>,
    journal: Option<&'a journal_fields::JournalFields>,
}

/// `dedup.window` by rule name.
fn dedup_windows(config: &Config) -> HashMap<String, Duration> {
    config
        .rules
        .iter()
        .filter_map(|r| r.dedup.as_ref().map(|d| (r.name.clone(), d.window)))
        .collect()
}

#[cfg(test)]
mod tests;
