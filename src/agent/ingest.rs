//! The ingest loop: poll the tailer, pass its lines through the pipeline, commit one store
//! transaction per poll.
//!
//! The transaction holds the tailer's checkpoints, the notifications of the lines before
//! them, the burst windows and pending events those lines changed, and any self-alerts. If
//! it fails, everything in memory that ran ahead of the state is rebuilt from the state
//! (`restore_from_state`), so the lines are read again: never lost, never queued twice.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::dry_run::DryRun;
use super::journal_source::JournalSource;
use super::silence_watch::SilenceWatch;

/// The longest container log record read whole: six times the runtimes' 16 KiB pieces
/// (JSON escapes in Docker's records) and room for the time, stream and tags.
const RECORD_BYTES: usize = 6 * 16 * 1024 + 1024;
use super::reports::{PollOutput, TailMetrics};
use super::state_rows;
use super::{RunError, RunOptions};
use crate::clock::unix_now_ms;
use crate::config::Config;
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::pipeline::self_alerts::{Facts, ParkedWebhook, SelfAlerts};
use crate::pipeline::{Notification, Origin, Pipeline};
use crate::store::{Store, StoreError};
use crate::tail::{
    Checkpoint, FileKey, LineOrigin, LineSink, SavedFile, TailOptions, Tailer, WatchSpec,
};

/// How long the loop waits for file events when nothing is left to read.
const IDLE_WAIT: Duration = Duration::from_millis(250);

/// How long a file's new position may wait to be committed while the lines behind it
/// changed nothing (see [`Ingest::step`]).
const QUIET_POSITION_DELAY: Duration = Duration::from_secs(1);

/// The ingest half: tailer, pipeline and the transaction that binds them.
pub(super) struct Ingest {
    pub(super) config: Arc<Config>,
    pub(super) store: Store,
    pub(super) tailer: Tailer,
    pub(super) pipeline: Pipeline,
    /// The silences the pipeline applies, re-read from the store every second.
    silences: SilenceWatch,
    /// The systemd journal, when the config has `journal:`.
    pub(super) journal: Option<JournalSource>,
    wake: watch::Sender<u64>,
    /// Set with `--dry-run`: notifications are printed instead of queued.
    dry_run: Option<DryRun>,
    pub(super) options: RunOptions,
    outbox_full: bool,
    pub(super) last_outbox_check: Option<Instant>,
    pub(super) metrics: Metrics,
    pub(super) health: Arc<Health>,
    /// New configs from the supervisor.
    reloads: std::sync::mpsc::Receiver<Arc<Config>>,
    self_alerts: SelfAlerts,
    last_self_check: Option<Instant>,
    /// Notifications made outside a poll (self-alerts), queued with the next commit.
    extra: Vec<Notification>,
    /// A config received but not switched to yet (the outbox is full, or the switch
    /// failed and is retried).
    pending_reload: Option<Arc<Config>>,
    /// Bytes the tailer reads from a file per poll. Halved after each failed commit (a
    /// nearly full disk may take a small transaction when it cannot take a large one),
    /// doubled back after each success.
    pub(super) read_budget: usize,
    /// Positions of files whose lines since their last committed position hit no rule
    /// and joined no multiline event: they may wait for a later commit (the latest per
    /// file), because reading those lines again after a crash changes nothing.
    quiet_positions: std::collections::HashMap<FileKey, SavedFile>,
    /// When quiet positions were last all committed.
    quiet_written: Instant,
    /// Commit every position at the next step (before a config switch).
    pub(super) all_positions_due: bool,
}

/// The most a poll reads from one file by default; after failed commits, less (see
/// [`Ingest::read_budget`]).
const READ_BUDGET: usize = 4 * 1024 * 1024;
/// The least a poll reads from one file, however often commits fail.
const MIN_READ_BUDGET: usize = 64 * 1024;

/// The tailer's settings for `config`: the globs it follows and how, reading at most
/// `read_budget` bytes of a file per poll.
pub(super) fn tail_options(config: &Config, read_budget: usize) -> TailOptions {
    TailOptions {
        specs: config
            .files
            .iter()
            .map(|f| WatchSpec {
                glob: f.glob.clone(),
                start_at: match f.start_at {
                    crate::config::StartAt::Beginning => crate::tail::StartAt::Beginning,
                    crate::config::StartAt::End => crate::tail::StartAt::End,
                },
                // A container log's record is cut only far past its runtime's 16 KiB
                // pieces (Docker's escapes can make one six times longer): the decoder
                // bounds the joined line by `max_line_bytes` instead.
                max_line_bytes: match f.format {
                    crate::config::LogFormat::Plain => f.max_line_bytes,
                    _ => f.max_line_bytes.max(RECORD_BYTES),
                },
            })
            .collect(),
        max_open_files: super::descriptors::max_open_files(),
        read_budget,
        ..TailOptions::default()
    }
}

impl Ingest {
    pub(super) fn new(
        config: Arc<Config>,
        store: Store,
        wake: watch::Sender<u64>,
        out: Box<dyn Write + Send>,
        options: RunOptions,
        (metrics, health): (Metrics, Arc<Health>),
        reloads: std::sync::mpsc::Receiver<Arc<Config>>,
    ) -> Result<Self, RunError> {
        let tailer = Tailer::new(
            tail_options(&config, READ_BUDGET),
            state_rows::saved_files(&store)?,
            Arc::new(TailMetrics::new(&config, &metrics, &health)),
        );
        let mut pipeline = Pipeline::resuming_alerts(
            Arc::clone(&config),
            state_rows::saved_windows(&store)?,
            state_rows::saved_events(&store)?,
            state_rows::saved_partials(&store)?,
            state_rows::saved_alerts(&store)?,
        );
        if options.dry_run {
            pipeline = pipeline.alone();
        }
        let journal = JournalSource::new(&config, &store, !options.once)?;
        // Before the first tick: what a silence held back before a restart is told when
        // that silence ends, not because the pipeline has not heard of it yet.
        let mut silences = SilenceWatch::default();
        if let Err(error) = silences.refresh(&store, &mut pipeline, &metrics, true) {
            tracing::warn!(%error, "Cannot read the silences at start; retrying every second.");
        }
        Ok(Self {
            silences,
            config,
            store,
            tailer,
            pipeline,
            journal,
            wake,
            dry_run: options.dry_run.then(|| DryRun::new(out, options.once)),
            options,
            outbox_full: false,
            last_outbox_check: None,
            metrics,
            health,
            reloads,
            self_alerts: SelfAlerts::default(),
            last_self_check: None,
            extra: Vec::new(),
            pending_reload: None,
            read_budget: READ_BUDGET,
            quiet_positions: std::collections::HashMap::new(),
            quiet_written: Instant::now(),
            all_positions_due: false,
        })
    }

    pub(super) fn run(mut self, stop: &AtomicBool) -> Result<(), RunError> {
        while !stop.load(Ordering::Relaxed) {
            self.health.beat();
            if let Some(new) = self.latest_reload() {
                self.pending_reload = Some(new);
            }
            self.check_self_alerts();
            if let Err(error) =
                self.silences
                    .refresh(&self.store, &mut self.pipeline, &self.metrics, false)
            {
                tracing::warn!(%error, "Cannot read the silences; the ones read before stay applied.");
            }
            if self.outbox_is_full() {
                // Reading waits, but chattail's own alerts (such as the one saying why the
                // outbox fills) are still queued. A new config waits too: switching reads
                // what the old files hold, which the bound forbids now.
                if !self.extra.is_empty()
                    && let Err(error) = self.commit_extra()
                {
                    tracing::error!(%error, "Cannot queue self-alerts; retrying.");
                }
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            if let Some(new) = self.pending_reload.take() {
                match self.switch_config(Arc::clone(&new)) {
                    Ok(()) => tracing::info!("Reading follows the new config."),
                    Err(error) => {
                        self.health.state_failed(&error.to_string());
                        tracing::error!(%error, "Cannot commit to the state database while switching to the new config; retrying in a second.");
                        std::thread::sleep(Duration::from_secs(1));
                        self.restore_from_state()?;
                        // Nothing was switched; a newer config, if one comes, wins.
                        self.pending_reload = Some(new);
                    }
                }
                continue;
            }
            let more = match self.step(false) {
                Ok(more) => {
                    self.health.state_ok();
                    if self.read_budget < READ_BUDGET {
                        self.read_budget = (self.read_budget * 2).min(READ_BUDGET);
                        self.tailer.set_read_budget(self.read_budget);
                    }
                    more
                }
                Err(error) => {
                    self.health.state_failed(&error.to_string());
                    // The same lines are read again; in smaller bites, a nearly full disk
                    // can take them (the whole poll may never fit).
                    self.read_budget = (self.read_budget / 2).max(MIN_READ_BUDGET);
                    tracing::error!(%error, "Cannot commit to the state database; retrying in a second.");
                    std::thread::sleep(Duration::from_secs(1));
                    self.restore_from_state()?;
                    continue;
                }
            };
            if let Some(journal) = &mut self.journal {
                journal.report(&self.metrics, &self.health);
                if self.config.files.is_empty()
                    && let Some(why) = journal.cannot_start()
                {
                    return Err(RunError::NoSource(why.to_owned()));
                }
                if let Some(why) = journal.failure() {
                    // `--once` reads the journal to its end once; a failure is final.
                    return Err(RunError::Journal(why.to_owned()));
                }
            }
            if !more && self.journal.as_ref().is_none_or(JournalSource::caught_up) {
                // What was waiting (after a restart: what was written while chattail was
                // down, in the files and the journal) has been read: time-based alerts
                // may be decided now.
                self.pipeline.caught_up();
            }
            if self.options.once
                && !more
                && self.tailer.is_idle()
                && self.journal.as_ref().is_none_or(JournalSource::is_finished)
            {
                break;
            }
            if !more {
                let also = self.journal.as_ref().and_then(JournalSource::wait_fd);
                self.tailer.wait_also(IDLE_WAIT, also);
            }
        }
        // One last round so that what was read is committed before the process ends
        // (unless the outbox is full: then nothing more is read, but self-alerts are
        // still queued).
        if !self.outbox_full {
            self.step(true)?;
        } else if !self.extra.is_empty() || !self.quiet_positions.is_empty() {
            self.commit_extra()?;
        }
        if let Some(dry_run) = &mut self.dry_run {
            dry_run.write_summary();
        }
        if self.options.once {
            // The process ends once what is queued is posted. Freeing the compiled rules
            // and every burst window one allocation at a time would only delay that: a
            // twelfth of a catch-up's time with a hundred rules. The pipeline holds memory
            // alone (no file, no connection), so nothing is lost by leaving it.
            std::mem::forget(self.pipeline);
        }
        Ok(())
    }

    /// The newest config the supervisor sent, if any (older ones are superseded).
    fn latest_reload(&mut self) -> Option<Arc<Config>> {
        let mut latest = None;
        while let Ok(config) = self.reloads.try_recv() {
            latest = Some(config);
        }
        latest
    }

    /// Queues the self-alerts alone, while reading is paused, with every position still
    /// waiting (reading is paused, so they are final for now).
    fn commit_extra(&mut self) -> Result<(), StoreError> {
        let positions = self.waiting_positions();
        let tx = self.store.transaction()?;
        for checkpoint in &positions {
            state_rows::record(&tx, checkpoint)?;
        }
        // Reading is paused: the journal's position, like the files', is final for now.
        let journal_saved = match &self.journal {
            Some(journal) => journal.save_position(&tx, true)?,
            None => false,
        };
        for n in &self.extra {
            state_rows::enqueue(&tx, n)?;
        }
        tx.commit()?;
        if journal_saved && let Some(journal) = &mut self.journal {
            journal.committed();
        }
        self.quiet_positions.clear();
        self.extra.clear();
        self.wake.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Once a second: opens or clears self-alert episodes, and logs each change.
    fn check_self_alerts(&mut self) {
        if self
            .last_self_check
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last_self_check = Some(Instant::now());
        let (outbox_queued, outbox_max) = self.health.outbox();
        let facts = Facts {
            parked: self
                .health
                .parked()
                .into_iter()
                .map(|(name, p)| ParkedWebhook {
                    name,
                    status: p.status,
                    message: p.message,
                })
                .collect(),
            outbox_queued,
            outbox_max,
            // The tailer reports waiting files at every scan (once a second).
            out_of_descriptors: self.health.short_of_descriptors(5_000),
            fleet_alone: self.health.degradations().into_iter().next(),
            journal_failing: self.health.journal_failing(),
        };
        let before = self.extra.len();
        let tailer = &self.tailer;
        let has_files = |spec: usize| tailer.has_file_for(spec);
        let changes = self.self_alerts.check(
            &self.config,
            &facts,
            (!self.outbox_full).then_some(&has_files as &dyn Fn(usize) -> bool),
            unix_now_ms(),
            &mut self.extra,
        );
        for change in changes {
            if change.opened {
                tracing::warn!(condition = %change.condition, "Self-alert: {}", change.detail);
            } else {
                tracing::info!(condition = %change.condition, "Self-alert cleared.");
            }
        }
        if self.dry_run.is_some() {
            // Nothing is posted in dry-run; the log has the alert.
            self.extra.truncate(before);
        }
        self.metrics
            .self_alerts
            .inc_by((self.extra.len() - before) as u64);
    }

    /// After a failed commit, everything in memory that the lines since the last commit
    /// changed (the tailer's positions, burst windows, pending events, context lines) is
    /// ahead of the state. Start it all again from the state: those lines are read again
    /// and produce the same notifications, none lost and none counted twice.
    pub(super) fn restore_from_state(&mut self) -> Result<(), StoreError> {
        // Positions not committed yet are ahead of the state too: the new tailer starts
        // from the committed ones.
        self.quiet_positions.clear();
        self.tailer = Tailer::new(
            tail_options(&self.config, self.read_budget),
            state_rows::saved_files(&self.store)?,
            Arc::new(TailMetrics::new(&self.config, &self.metrics, &self.health)),
        );
        self.pipeline.restore(
            state_rows::saved_windows(&self.store)?,
            state_rows::saved_events(&self.store)?,
            state_rows::saved_partials(&self.store)?,
            state_rows::saved_alerts(&self.store)?,
        );
        if let Some(journal) = &mut self.journal {
            journal.restore(&self.store)?;
        }
        Ok(())
    }

    /// One poll of the tailer and one transaction: the offsets, the notifications of the
    /// lines read, and the burst windows and pending events they changed. With `flush`,
    /// every burst summary is queued too (shutdown), and with `--once` every pending
    /// event completes. Returns whether more data is waiting.
    pub(super) fn step(&mut self, flush: bool) -> Result<bool, StoreError> {
        let now_ms = unix_now_ms();
        let mut out = PollOutput::new(self.extra.clone(), &self.metrics);
        // Files whose lines in this poll hit a rule or joined a multiline event: their
        // positions go into this transaction with what those lines changed.
        let mut changed_files: Vec<FileKey> = Vec::new();
        let more = {
            let mut sink = PollSink {
                pipeline: &mut self.pipeline,
                files: &self.config.files,
                out: &mut out,
                changed_files: &mut changed_files,
                now_ms,
            };
            self.tailer.poll(&mut sink)
        };
        let more = match &mut self.journal {
            Some(journal) => {
                let budget = self.read_budget;
                journal.poll(&self.config, &mut self.pipeline, now_ms, budget, &mut out) || more
            }
            None => more,
        };
        self.pipeline
            .tick(now_ms, flush && self.options.once, &mut out);
        if flush {
            self.pipeline.flush_windows(&mut out);
        }
        let notifications = out.into_notifications();
        let (now_positions, all_due) = self.positions_to_commit(flush, &changed_files);
        let journal_due = self
            .journal
            .as_ref()
            .is_some_and(|j| j.position_due(all_due));
        if now_positions.is_empty()
            && notifications.is_empty()
            && !self.pipeline.has_changes()
            && !journal_due
        {
            return Ok(more);
        }
        let changes = self.pipeline.take_changes();
        let tx = self.store.transaction()?;
        for checkpoint in &now_positions {
            state_rows::record(&tx, checkpoint)?;
        }
        let journal_saved = match &self.journal {
            // Whenever something else is committed, the position goes along.
            Some(journal) => journal.save_position(&tx, true)?,
            None => false,
        };
        state_rows::save_changes(&tx, &changes)?;
        if self.dry_run.is_none() {
            for n in &notifications {
                state_rows::enqueue(&tx, n)?;
            }
        }
        tx.commit()?;
        self.extra.clear();
        if journal_saved && let Some(journal) = &mut self.journal {
            journal.committed();
        }
        for checkpoint in &now_positions {
            if let Checkpoint::Progress(f) = checkpoint {
                self.quiet_positions.remove(&f.key);
            }
        }
        if all_due {
            self.quiet_positions.clear();
            self.quiet_written = Instant::now();
            self.all_positions_due = false;
        }
        if !notifications.is_empty() {
            tracing::debug!(notifications = notifications.len(), "Queued notifications.");
            match &mut self.dry_run {
                Some(dry_run) => dry_run.print(&notifications),
                None => self.wake.send_modify(|n| *n += 1),
            }
        }
        Ok(more)
    }

    /// Takes the tailer's checkpoints and decides which go into this poll's transaction.
    ///
    /// Committing every followed file's position at every poll (40 a second under load)
    /// was the largest cost of a steady load after reading itself. A position must be
    /// committed with any state change its lines caused (else a crash would replay them
    /// and count them twice), but a file whose lines changed nothing may lag: after a
    /// crash those lines are read again and change nothing again. So quiet positions wait
    /// in memory for up to [`QUIET_POSITION_DELAY`]; the positions of files that changed
    /// something, releases and forgets (in order, after the positions before them) are
    /// committed now. Returns the checkpoints for now and whether they include every
    /// waiting position.
    fn positions_to_commit(&mut self, flush: bool, changed: &[FileKey]) -> (Vec<Checkpoint>, bool) {
        let checkpoints = self.tailer.take_checkpoints();
        if checkpoints
            .iter()
            .any(|c| !matches!(c, Checkpoint::Progress(_)))
        {
            // A release or forget is rare: every waiting position goes now, then this
            // poll's checkpoints in the tailer's order (a release after its file's last
            // position).
            for checkpoint in &checkpoints {
                if let Checkpoint::Progress(f) = checkpoint {
                    self.quiet_positions.remove(&f.key);
                }
            }
            let mut now = self.waiting_positions();
            now.extend(checkpoints);
            return (now, true);
        }
        for checkpoint in checkpoints {
            if let Checkpoint::Progress(f) = checkpoint {
                self.quiet_positions.insert(f.key, f);
            }
        }
        if flush || self.all_positions_due || self.quiet_written.elapsed() >= QUIET_POSITION_DELAY {
            return (self.waiting_positions(), true);
        }
        let now = changed
            .iter()
            .filter_map(|key| self.quiet_positions.get(key))
            .map(|f| Checkpoint::Progress(f.clone()))
            .collect();
        (now, false)
    }

    /// Every waiting position, in a stable order.
    fn waiting_positions(&self) -> Vec<Checkpoint> {
        let mut files: Vec<&SavedFile> = self.quiet_positions.values().collect();
        files.sort_unstable_by_key(|f| (f.key.dev, f.key.ino));
        files
            .into_iter()
            .map(|f| Checkpoint::Progress(f.clone()))
            .collect()
    }

    /// Whether the outbox holds `delivery.max_outbox` notifications (then reading pauses).
    pub(super) fn outbox_is_full(&mut self) -> bool {
        if self.dry_run.is_some() {
            return false;
        }
        // Counting is cheap but not free: once a second is enough.
        if self
            .last_outbox_check
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return self.outbox_full;
        }
        self.last_outbox_check = Some(Instant::now());
        let max = self.config.delivery.max_outbox;
        // Rows of webhooks the config no longer has (after a reload) cannot be sent, so
        // they do not count: they would otherwise hold reading paused for good.
        let queued = match self.store.outbox_by_webhook() {
            Ok(rows) => rows
                .iter()
                .filter(|(webhook, _)| self.config.webhook(webhook).is_some())
                .map(|(_, n)| n)
                .sum::<u64>(),
            Err(error) => {
                tracing::error!(%error, "Cannot count the outbox.");
                return self.outbox_full;
            }
        };
        let full = queued >= max;
        self.health.set_outbox(queued, max, full);
        if full && !self.outbox_full {
            tracing::warn!(
                queued,
                max,
                "The outbox is full: reading is paused until Chat takes posts again. Nothing is dropped."
            );
        } else if !full && self.outbox_full {
            tracing::info!(queued, "The outbox has room again: reading resumes.");
        }
        self.outbox_full = full;
        full
    }
}

/// Where the tailer's lines go during one poll: into the pipeline, noting the files whose
/// lines changed the state (their positions are committed with that change).
struct PollSink<'a, 'm> {
    pipeline: &'a mut Pipeline,
    files: &'a [crate::config::FileSpec],
    out: &'a mut PollOutput<'m>,
    changed_files: &'a mut Vec<FileKey>,
    now_ms: i64,
}

impl PollSink<'_, '_> {
    /// Runs `feed` on the pipeline and notes the file when it changed the state.
    fn fed(
        &mut self,
        origin: &LineOrigin<'_>,
        feed: impl FnOnce(&mut Pipeline, &Origin<'_>, &mut PollOutput<'_>),
    ) {
        let before = self.out.effects();
        let pieces = self.pipeline.piece_generation();
        let origin_row = Origin {
            id: state_rows::file_id(origin.key),
            path: origin.path,
            spec: origin.spec,
            number: 0,
            stream: None,
            journal: None,
        };
        feed(self.pipeline, &origin_row, self.out);
        // Lines of multiline files change the state (a pending event) even when no rule
        // hits, and so do a container log's pieces; a whole record does not.
        let multiline = self
            .files
            .get(origin.spec)
            .is_none_or(|f| f.multiline.is_some());
        if (self.out.effects() != before || multiline || self.pipeline.piece_generation() != pieces)
            && self.changed_files.last() != Some(&origin.key)
        {
            self.changed_files.push(origin.key);
        }
    }
}

impl LineSink for PollSink<'_, '_> {
    fn line(&mut self, origin: &LineOrigin<'_>, line: &[u8]) {
        let now_ms = self.now_ms;
        self.fed(origin, |pipeline, origin, out| {
            pipeline.line(origin, line, now_ms, out);
        });
    }

    fn lines(&mut self, origin: &LineOrigin<'_>, run: &[u8]) {
        let now_ms = self.now_ms;
        self.fed(origin, |pipeline, origin, out| {
            pipeline.lines(origin, run, now_ms, out);
        });
    }
}
