//! `chattail run`: the agent. Tail → rules → outbox → delivery.
//!
//! Two halves meet at the outbox:
//!
//! - The *ingest* thread (blocking, one OS thread) polls the tailer, runs the rules on every
//!   line and commits, in one SQLite transaction, the notifications the lines produced and
//!   the offsets that say those lines are done. A crash at any instant leaves both or
//!   neither: no notification is lost and none is queued twice. When the outbox holds
//!   `delivery.max_outbox` notifications, reading pauses; nothing is dropped.
//! - The *delivery* workers (tokio tasks, one per Chat space) post what is queued.
//!
//! SIGTERM or SIGINT stops reading (the last batch is committed), gives delivery
//! `delivery.shutdown_grace` to post what is queued, and returns; what was not posted stays
//! in the outbox for the next start.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::watch;

use sd_notify::NotifyState;

use crate::admin::{self, AdminHandle};
use crate::bursts::Bursts;
use crate::config::{self, Config, UrlPolicy};
use crate::deliver::{self, WorkerContext, chat_client::ChatClient};
use crate::health::Health;
use crate::metrics::{KindLabel, Metrics, PatternLabel, ReasonLabel};
use crate::multiline::{Assembler, Event};
use crate::rules::{ContextRing, Notification, RuleSet, Source};
use crate::self_alerts::SelfAlerts;
use crate::state::{StateError, StateStore};
use crate::tail::{Checkpoint, FileKey, LineOrigin, TailOptions, TailStats, Tailer};
use prometheus_client::metrics::counter::Counter;

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot create the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("cannot start the runtime or install signal handlers: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("cannot listen on admin.listen {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("a rule set does not compile: {0}")]
    Rules(#[from] regex::Error),
    #[error("the ingest thread stopped unexpectedly")]
    IngestPanicked,
}

/// How `run` behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Print what would be posted instead of posting; state lives in memory only.
    pub dry_run: bool,
    /// Read what the files hold now, deliver it, and exit.
    pub once: bool,
    /// Reload when the config file changes, as on SIGHUP.
    pub watch_config: bool,
}

/// How often `--watch-config` looks at the config file. Reading it is cheap, and a poll
/// (unlike a file watch) also sees the symlink swap of a Kubernetes ConfigMap.
const WATCH_CONFIG_EVERY: Duration = Duration::from_secs(1);

/// Runs the agent until a signal (or, with `once`, until everything is read and posted).
/// Dry-run output goes to `out`.
pub fn run(
    config: Config,
    options: RunOptions,
    out: Box<dyn Write + Send>,
) -> Result<(), RunError> {
    let config = Arc::new(config);
    let store = if options.dry_run {
        StateStore::in_memory()?
    } else {
        StateStore::open(&config.state_dir)?
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("chattail")
        .build()?;
    runtime.block_on(supervise(config, store, options, out))
}

/// The delivery workers of one config; replaced as a whole when a reload changes the
/// webhooks or the delivery settings.
struct DeliveryGeneration {
    stop: watch::Sender<Option<tokio::time::Instant>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl DeliveryGeneration {
    fn start(
        config: &Config,
        db: Option<&std::path::Path>,
        wake: &watch::Receiver<u64>,
        context: &WorkerContext,
    ) -> Result<Self, RunError> {
        let (stop, stop_rx) = watch::channel(None);
        let handles = match db {
            None => Vec::new(),
            Some(db) => {
                let client = ChatClient::new(config.delivery.request_timeout)?;
                deliver::spawn_workers(config, db, &client, wake, &stop_rx, context)?
            }
        };
        context.health.expect_workers(handles.len());
        Ok(Self { stop, handles })
    }

    /// Asks the workers to stop by `deadline` and waits for them.
    async fn finish(self, deadline: tokio::time::Instant) {
        let _ = self.stop.send(Some(deadline));
        futures_join(self.handles).await;
    }
}

/// Whether two configs deliver differently (then the workers are replaced on reload).
fn delivery_changed(old: &Config, new: &Config) -> bool {
    let same_webhooks = old.webhooks.len() == new.webhooks.len()
        && old.webhooks.iter().zip(&new.webhooks).all(|(a, b)| {
            a.name == b.name
                && a.max_per_second == b.max_per_second
                && a.url.as_ref().map(|u| u.expose_secret())
                    == b.url.as_ref().map(|u| u.expose_secret())
        });
    !same_webhooks || old.delivery != new.delivery
}

/// The async half: signals, reloads, delivery workers, the admin endpoint and systemd.
struct Supervisor {
    config: Arc<Config>,
    options: RunOptions,
    metrics: Metrics,
    health: Arc<Health>,
    db: Option<PathBuf>,
    wake: watch::Receiver<u64>,
    delivery: Option<DeliveryGeneration>,
    reloads: std::sync::mpsc::Sender<Arc<Config>>,
    admin: Option<AdminHandle>,
    /// The digest of the config file's bytes when last loaded or tried, for
    /// `--watch-config`.
    config_digest: u64,
}

async fn supervise(
    config: Arc<Config>,
    store: StateStore,
    options: RunOptions,
    out: Box<dyn Write + Send>,
) -> Result<(), RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let metrics = Metrics::default();
    let health = Arc::new(Health::default());
    health.beat();
    let db = (!options.dry_run).then(|| store.db_path().to_path_buf());
    let (wake_tx, wake_rx) = watch::channel(0u64);
    let context = WorkerContext {
        metrics: metrics.clone(),
        health: Arc::clone(&health),
        first_send: tokio::time::Instant::now(),
    };
    let delivery = DeliveryGeneration::start(&config, db.as_deref(), &wake_rx, &context)?;
    let (admin_stop_tx, mut admin_stop_rx) = watch::channel(false);
    let admin = match config.admin_listen {
        None => None,
        Some(addr) => {
            let stop = async move {
                let _ = admin_stop_rx.wait_for(|stop| *stop).await;
            };
            let names = config.webhooks.iter().map(|w| w.name.clone()).collect();
            let (handle, bound, task) = admin::start(
                addr,
                metrics.clone(),
                Arc::clone(&health),
                db.clone(),
                names,
                stop,
            )
            .await
            .map_err(|source| RunError::Admin { addr, source })?;
            tracing::info!(%bound, "Serving /metrics and /healthz.");
            Some((handle, task))
        }
    };
    tracing::info!(
        files = config.files.len(),
        rules = config.rules.len(),
        webhooks = config.webhooks.len(),
        dry_run = options.dry_run,
        "chattail is running."
    );
    let (reload_tx, reload_rx) = std::sync::mpsc::channel();
    let stop_reading = Arc::new(AtomicBool::new(false));
    let mut ingest = {
        let config = Arc::clone(&config);
        let stop = Arc::clone(&stop_reading);
        let telemetry = (metrics.clone(), Arc::clone(&health));
        tokio::task::spawn_blocking(move || {
            let health = Arc::clone(&telemetry.1);
            let result = Ingest::new(config, store, wake_tx, out, options, telemetry, reload_rx)
                .and_then(|ingest| ingest.run(&stop));
            health.ingest_stopped();
            result
        })
    };
    let mut supervisor = Supervisor {
        config_digest: config.source_digest,
        config,
        options,
        metrics,
        health,
        db,
        wake: wake_rx,
        delivery: Some(delivery),
        reloads: reload_tx,
        admin: admin.as_ref().map(|(handle, _)| handle.clone()),
    };
    let status = running_status(&supervisor.config);
    notify_systemd(&[NotifyState::Ready, NotifyState::Status(&status)]);
    // A zero interval (WATCHDOG_USEC=0) means no watchdog.
    let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
    let mut watchdog_tick =
        tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |d| d / 2));
    let mut watch_tick = tokio::time::interval(WATCH_CONFIG_EVERY);
    watch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut signalled = false;
    let ingest_result = loop {
        tokio::select! {
            r = &mut ingest => break Some(r),
            _ = terminate.recv() => { signalled = true; break None }
            _ = interrupt.recv() => { signalled = true; break None }
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading the config.");
                supervisor.reload().await;
            }
            _ = watch_tick.tick(), if options.watch_config => {
                if supervisor.config_file_changed().await {
                    tracing::info!("The config file changed: reloading it.");
                    supervisor.reload().await;
                }
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                // A stalled run loop or a dead worker stops the pings, so systemd restarts
                // the agent; a parked webhook does not (a restart would not help).
                if supervisor.health.is_alive() {
                    notify_systemd(&[NotifyState::Watchdog]);
                }
            }
        }
    };
    notify_systemd(&[NotifyState::Stopping]);
    let ingest_result = match ingest_result {
        Some(r) => r,
        None => {
            tracing::info!("Stopping: reading no more, posting what is queued.");
            stop_reading.store(true, Ordering::Relaxed);
            (&mut ingest).await
        }
    };
    let ingest_result = ingest_result
        .map_err(|_| RunError::IngestPanicked)
        .and_then(|r| r);
    let grace = supervisor.config.delivery.shutdown_grace;
    // With --once and no signal, delivery drains the outbox however long it takes; a
    // signal (or a failure of the ingest half) gives it the grace period only.
    let drain = options.once && !signalled && ingest_result.is_ok();
    let deadline = tokio::time::Instant::now()
        + if drain {
            Duration::from_secs(86_400)
        } else {
            grace
        };
    if let Some(delivery) = supervisor.delivery.take() {
        let stop = delivery.stop.clone();
        let all_workers = delivery.finish(deadline);
        tokio::pin!(all_workers);
        if drain {
            tokio::select! {
                () = &mut all_workers => {}
                _ = terminate.recv() => { let _ = stop.send(Some(tokio::time::Instant::now() + grace)); all_workers.await; }
                _ = interrupt.recv() => { let _ = stop.send(Some(tokio::time::Instant::now() + grace)); all_workers.await; }
            }
        } else {
            all_workers.await;
        }
    }
    let _ = admin_stop_tx.send(true);
    if let Some((_, task)) = admin {
        let _ = task.await;
    }
    tracing::info!("chattail stopped.");
    ingest_result
}

impl Supervisor {
    /// Whether the config file's bytes differ from those last loaded or tried (a file
    /// that failed to load is not tried again until it changes).
    async fn config_file_changed(&mut self) -> bool {
        let path = self.config.source_path.clone();
        let digest = tokio::task::spawn_blocking(move || std::fs::read(path).ok())
            .await
            .ok()
            .flatten()
            .map(|bytes| config::digest(&bytes));
        // A file being replaced may be missing for a moment; the next look decides.
        digest.is_some_and(|d| d != self.config_digest)
    }

    /// Loads and validates the config file again. If it is valid it replaces the running
    /// one (the run loop switches between two polls; delivery workers are replaced only
    /// when webhooks or delivery settings changed). If not, the errors are logged as
    /// `check` prints them and the running config stays in force.
    async fn reload(&mut self) {
        let mut reloading = vec![NotifyState::Reloading];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            reloading.push(now);
        }
        notify_systemd(&reloading);
        let path = self.config.source_path.clone();
        let policy = if self.options.dry_run {
            UrlPolicy::Optional
        } else {
            UrlPolicy::Required
        };
        let attempt = tokio::task::spawn_blocking(move || match std::fs::read(&path) {
            Ok(bytes) => (
                Some(config::digest(&bytes)),
                config::load_source(&path, &bytes, policy),
            ),
            Err(error) => {
                let mut report = config::Report::new(&path, "");
                report.error(None, format!("cannot read the config file: {error}"));
                (None, Err(report))
            }
        })
        .await;
        match attempt {
            Ok((_, Ok(loaded))) => {
                if !loaded.warnings.items().is_empty() {
                    tracing::warn!("The new config has warnings:\n{}", loaded.warnings);
                }
                self.apply(loaded.config).await;
            }
            Ok((digest, Err(report))) => {
                // The bytes that failed are not tried again until the file changes.
                if let Some(digest) = digest {
                    self.config_digest = digest;
                }
                self.metrics.config_reload_failures.inc();
                tracing::error!(
                    "The new config is not valid; the running config stays in force.\n{report}"
                );
            }
            Err(_) => {
                self.metrics.config_reload_failures.inc();
                tracing::error!(
                    "Loading the new config failed; the running config stays in force."
                );
            }
        }
        let status = running_status(&self.config);
        notify_systemd(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    async fn apply(&mut self, mut new: Config) {
        self.config_digest = new.source_digest;
        let old = Arc::clone(&self.config);
        // The state directory and the admin socket belong to the process.
        if new.state_dir != old.state_dir {
            tracing::warn!(
                running = %old.state_dir.display(),
                new = %new.state_dir.display(),
                "state_dir changes only at a restart; the running one stays."
            );
            new.state_dir = old.state_dir.clone();
        }
        if new.admin_listen != old.admin_listen {
            tracing::warn!("admin.listen changes only at a restart; the running one stays.");
            new.admin_listen = old.admin_listen;
        }
        let new = Arc::new(new);
        if delivery_changed(&old, &new) {
            // The old workers stop now (a post in flight is sent again, with the same
            // request id, by the new ones), and the new ones keep Chat's pace.
            if let Some(generation) = self.delivery.take() {
                self.health.expect_workers(0);
                generation.finish(tokio::time::Instant::now()).await;
            }
            let context = WorkerContext {
                metrics: self.metrics.clone(),
                health: Arc::clone(&self.health),
                first_send: tokio::time::Instant::now() + Duration::from_secs(1),
            };
            // Opening the outbox is a blocking SQLite call.
            let started = tokio::task::block_in_place(|| {
                DeliveryGeneration::start(&new, self.db.as_deref(), &self.wake, &context)
            });
            match started {
                Ok(generation) => self.delivery = Some(generation),
                Err(error) => {
                    // Counted as stopped workers: /healthz and /livez say so, and the
                    // systemd watchdog restarts the agent.
                    self.health.expect_workers(new.webhooks.len().max(1));
                    tracing::error!(%error, "Cannot start delivery for the new config; nothing is posted until the next reload or restart.");
                }
            }
            self.health
                .retain_webhooks(|name| new.webhooks.iter().any(|w| w.name == name));
            for gone in old
                .webhooks
                .iter()
                .filter(|w| new.webhook(&w.name).is_none())
            {
                let label = self.metrics.webhook(&gone.name);
                self.metrics.webhook_parked.remove(&label);
                self.metrics.outbox_notifications.remove(&label);
                self.metrics.outbox_oldest_age_seconds.remove(&label);
                tracing::warn!(
                    webhook = %gone.name,
                    "The webhook is no longer configured: notifications queued for it stay in the outbox until a webhook of that name is configured again."
                );
            }
        }
        if let Some(admin) = &self.admin {
            admin.set_webhooks(new.webhooks.iter().map(|w| w.name.clone()).collect());
        }
        if self.reloads.send(Arc::clone(&new)).is_err() {
            tracing::warn!("The run loop has stopped; the new config is not applied to reading.");
        }
        self.metrics.config_reloads.inc();
        tracing::info!(
            files = new.files.len(),
            rules = new.rules.len(),
            webhooks = new.webhooks.len(),
            "Config reloaded."
        );
        self.config = new;
    }
}

/// The `STATUS=` line `systemctl status` shows.
fn running_status(config: &Config) -> String {
    format!(
        "running: {} rules over {} file patterns, {} webhooks",
        config.rules.len(),
        config.files.len(),
        config.webhooks.len()
    )
}

/// Tells systemd (when it started us with `Type=notify`) how we are; a no-op otherwise.
fn notify_systemd(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(%error, "Cannot notify systemd.");
    }
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        if let Err(error) = h.await {
            tracing::error!(%error, "A delivery worker failed.");
        }
    }
}

/// The ingest half: tailer, rules and the transaction that binds them.
struct Ingest {
    config: Arc<Config>,
    store: StateStore,
    tailer: Tailer,
    matcher: Matcher,
    wake: watch::Sender<u64>,
    out: Box<dyn Write + Send>,
    options: RunOptions,
    outbox_full: bool,
    last_outbox_check: Option<Instant>,
    /// Messages per (webhook, thread) in dry-run, for the closing summary.
    dry_run_threads: BTreeMap<(String, String), usize>,
    /// `dedup.window` by rule name.
    dedup_windows: HashMap<String, Duration>,
    /// Pending multiline events per file.
    assembler: Assembler,
    metrics: Metrics,
    health: Arc<Health>,
    /// Read and bytes counters of each `files` entry, by index.
    spec_counters: Vec<(Counter, Counter)>,
    /// The tailer's and the matcher's counters at the last look, to add the difference.
    seen_stats: TailStats,
    seen_assembler_cut: u64,
    seen_evictions: u64,
    /// New configs from the supervisor.
    reloads: std::sync::mpsc::Receiver<Arc<Config>>,
    self_alerts: SelfAlerts,
    last_self_check: Option<Instant>,
    /// Notifications made outside a poll (self-alerts), queued with the next commit.
    extra: Vec<Notification>,
    /// A config received but not switched to yet (the outbox is full, or the switch
    /// failed and is retried).
    pending_reload: Option<Arc<Config>>,
}

/// Runs the rules over a line or an event and routes each hit through the burst windows.
struct Matcher {
    config: Arc<Config>,
    /// Rule sets by file path, shared between files with the same applicable rules.
    by_path: HashMap<PathBuf, Arc<RuleSet>>,
    by_rules: HashMap<Vec<usize>, Arc<RuleSet>>,
    bursts: Bursts,
    /// The last lines of each file, when some rule has `context.before`.
    rings: HashMap<PathBuf, ContextRing>,
    max_context: usize,
    metrics: Metrics,
}

impl Matcher {
    fn evaluate(
        &mut self,
        path: &std::path::Path,
        line: &[u8],
        now_ms: i64,
        out: &mut Vec<Notification>,
    ) {
        let rules = rules_for(&self.config, &mut self.by_path, &mut self.by_rules, path);
        let file = path.to_string_lossy();
        let source = Source {
            file: &file,
            host: &self.config.host,
        };
        let bursts = &mut self.bursts;
        let max_context = self.max_context;
        let mut ring = (max_context > 0).then(|| {
            self.rings
                .entry(path.to_path_buf())
                .or_insert_with(|| ContextRing::new(max_context))
        });
        let metrics = &self.metrics;
        rules.evaluate(line, |hit| {
            metrics.rule_matched(&hit.rule.name);
            let context = match &ring {
                Some(r) if hit.rule.context_before > 0 => r.last(hit.rule.context_before),
                _ => Vec::new(),
            };
            let n = hit.notification_with_context(line, &source, &context);
            match &hit.rule.dedup {
                Some(dedup) => {
                    let before = bursts.suppressed;
                    bursts.observe(dedup, n, line, now_ms, out);
                    if bursts.suppressed > before {
                        metrics.rule_suppressed(&hit.rule.name);
                    }
                }
                None => out.push(n),
            }
        });
        if let Some(r) = ring.as_mut() {
            r.push(line);
        }
    }
}

/// `dedup.window` by rule name.
fn dedup_windows(config: &Config) -> HashMap<String, Duration> {
    config
        .rules
        .iter()
        .filter_map(|r| r.dedup.as_ref().map(|d| (r.name.clone(), d.window)))
        .collect()
}

/// The read counters (lines, bytes) of each `files` entry.
fn spec_counters(config: &Config, metrics: &Metrics) -> Vec<(Counter, Counter)> {
    config
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
        .collect()
}

impl Ingest {
    fn new(
        config: Arc<Config>,
        store: StateStore,
        wake: watch::Sender<u64>,
        out: Box<dyn Write + Send>,
        options: RunOptions,
        (metrics, health): (Metrics, Arc<Health>),
        reloads: std::sync::mpsc::Receiver<Arc<Config>>,
    ) -> Result<Self, RunError> {
        let tailer = Tailer::new(TailOptions::from_config(&config), store.saved_files()?);
        let bursts = Bursts::from_saved(store.saved_windows()?);
        let assembler = Assembler::from_saved(store.saved_events()?);
        let matcher = Matcher {
            max_context: config.max_context_before(),
            config: Arc::clone(&config),
            by_path: HashMap::new(),
            by_rules: HashMap::new(),
            bursts,
            rings: HashMap::new(),
            metrics: metrics.clone(),
        };
        Ok(Self {
            dedup_windows: dedup_windows(&config),
            spec_counters: spec_counters(&config, &metrics),
            seen_stats: TailStats::default(),
            seen_assembler_cut: 0,
            seen_evictions: 0,
            config,
            store,
            tailer,
            matcher,
            wake,
            out,
            options,
            outbox_full: false,
            last_outbox_check: None,
            dry_run_threads: BTreeMap::new(),
            assembler,
            metrics,
            health,
            reloads,
            self_alerts: SelfAlerts::default(),
            last_self_check: None,
            extra: Vec::new(),
            pending_reload: None,
        })
    }

    fn run(mut self, stop: &AtomicBool) -> Result<(), RunError> {
        while !stop.load(Ordering::Relaxed) {
            self.health.beat();
            if let Some(new) = self.latest_reload() {
                self.pending_reload = Some(new);
            }
            self.check_self_alerts();
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
                Ok(more) => more,
                Err(error) => {
                    tracing::error!(%error, "Cannot commit to the state database; retrying in a second.");
                    std::thread::sleep(Duration::from_secs(1));
                    self.restore_from_state()?;
                    continue;
                }
            };
            if self.options.once && !more && self.tailer.is_idle() {
                break;
            }
            if !more {
                self.tailer.wait(Duration::from_millis(250));
            }
        }
        // One last round so that what was read is committed before the process ends
        // (unless the outbox is full: then nothing more is read, but self-alerts are
        // still queued).
        if !self.outbox_full {
            self.step(true)?;
        } else if !self.extra.is_empty() {
            self.commit_extra()?;
        }
        if self.options.dry_run {
            self.write_dry_run_summary();
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

    /// Switches reading to a new config between two polls, like a restart without the
    /// restart. Everything that can fail happens before anything is switched, so on an
    /// error the old config is still whole and the caller retries:
    ///
    /// 1. What the old tailer holds is read and committed (a deleted file can only be
    ///    read through the handle held now), with every file's position.
    /// 2. Files no longer matched by any glob are recorded as released, so they are not
    ///    read again if their glob comes back; pending multiline events are re-pointed at
    ///    their `files` entry in the new config (by pattern) and stored.
    /// 3. The tailer is rebuilt from the state: configured files resume exactly where they
    ///    were, new globs are picked up (with `start_at`), and files of globs that were
    ///    already followed are read from their start (they appeared while running).
    ///
    /// Burst windows of rules that keep their `dedup` stay open (by rule name); those of
    /// rules that lost it close at the next poll with their summary.
    fn switch_config(&mut self, new: Arc<Config>) -> Result<(), StateError> {
        for _ in 0..100 {
            if !self.step(false)? {
                break;
            }
        }
        self.tailer.checkpoint_all();
        self.step(false)?;
        let old = Arc::clone(&self.config);
        let released: Vec<FileKey> = self
            .tailer
            .followed()
            .into_iter()
            .filter(|(_, path)| !new.files.iter().any(|f| f.matcher.is_match(path)))
            .map(|(key, _)| key)
            .collect();
        self.assembler.respec(
            |spec| {
                let pattern = &old.files.get(spec)?.pattern;
                new.files.iter().position(|f| &f.pattern == pattern)
            },
            new.files.len(),
        );
        let events = self.assembler.take_changes();
        let tx = self.store.transaction()?;
        for key in &released {
            tx.record(&Checkpoint::Released(*key))?;
        }
        for (key, event) in &events {
            tx.save_event(*key, event.as_ref())?;
        }
        tx.commit()?;
        let saved = self.store.saved_files()?;

        // Nothing below can fail.
        self.config = Arc::clone(&new);
        let mut tailer = Tailer::new(TailOptions::from_config(&new), saved);
        tailer.continue_patterns(old.files.iter().map(|f| f.pattern.clone()));
        self.tailer = tailer;
        self.seen_stats = TailStats::default();
        self.dedup_windows = dedup_windows(&new);
        self.spec_counters = spec_counters(&new, &self.metrics);
        let matcher = &mut self.matcher;
        matcher.config = Arc::clone(&new);
        matcher.by_path.clear();
        matcher.by_rules.clear();
        if matcher.max_context != new.max_context_before() {
            matcher.max_context = new.max_context_before();
            matcher.rings.clear();
        }
        // The outbox bound may have changed.
        self.last_outbox_check = None;
        Ok(())
    }

    /// Queues the self-alerts alone, while reading is paused.
    fn commit_extra(&mut self) -> Result<(), StateError> {
        let tx = self.store.transaction()?;
        for n in &self.extra {
            tx.enqueue(n)?;
        }
        tx.commit()?;
        self.extra.clear();
        self.wake.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Once a second: opens or clears self-alert episodes.
    fn check_self_alerts(&mut self) {
        if self
            .last_self_check
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last_self_check = Some(Instant::now());
        let before = self.extra.len();
        let tailer = &self.tailer;
        let has_files = |spec: usize| tailer.has_file_for(spec);
        self.self_alerts.check(
            &self.config,
            &self.health,
            (!self.outbox_full).then_some(&has_files as &dyn Fn(usize) -> bool),
            crate::state::unix_now_ms(),
            &mut self.extra,
        );
        if self.options.dry_run {
            // Nothing is posted in dry-run; the log has the alert.
            self.extra.truncate(before);
        }
        self.metrics
            .self_alerts
            .inc_by((self.extra.len() - before) as u64);
    }

    /// Adds what the tailer, the assembler and the burst windows counted since the last
    /// look to the metrics.
    fn publish_counters(&mut self) {
        let stats = self.tailer.stats().clone();
        let seen = std::mem::replace(&mut self.seen_stats, stats.clone());
        let m = &self.metrics;
        let add = |family: &prometheus_client::metrics::family::Family<ReasonLabel, Counter>,
                   reason: &'static str,
                   n: u64| {
            if n > 0 {
                family.get_or_create(&ReasonLabel { reason }).inc_by(n);
            }
        };
        for (kind, n) in [
            ("rename", stats.rotations.saturating_sub(seen.rotations)),
            (
                "truncate",
                stats.truncations.saturating_sub(seen.truncations),
            ),
        ] {
            if n > 0 {
                m.rotations.get_or_create(&KindLabel { kind }).inc_by(n);
            }
        }
        add(
            &m.cut_lines,
            "max_line_bytes",
            stats.lines_cut.saturating_sub(seen.lines_cut),
        );
        let cut = self.assembler.lines_cut;
        add(
            &m.cut_lines,
            "multiline_max_lines",
            cut.saturating_sub(std::mem::replace(&mut self.seen_assembler_cut, cut)),
        );
        let evictions = self.matcher.bursts.evictions;
        m.burst_evictions.inc_by(
            evictions.saturating_sub(std::mem::replace(&mut self.seen_evictions, evictions)),
        );
    }

    /// After a failed commit, everything in memory that the lines since the last commit
    /// changed (the tailer's positions, burst windows, pending events, context lines) is
    /// ahead of the state. Start it all again from the state: those lines are read again
    /// and produce the same notifications, none lost and none counted twice.
    fn restore_from_state(&mut self) -> Result<(), StateError> {
        self.tailer = Tailer::new(
            TailOptions::from_config(&self.config),
            self.store.saved_files()?,
        );
        self.matcher.bursts = Bursts::from_saved(self.store.saved_windows()?);
        self.matcher.rings.clear();
        self.assembler = Assembler::from_saved(self.store.saved_events()?);
        self.seen_stats = TailStats::default();
        self.seen_assembler_cut = 0;
        self.seen_evictions = 0;
        Ok(())
    }

    /// One poll of the tailer and one transaction: the offsets, the notifications of the
    /// lines read, and the burst windows they changed. With `flush`, every pending burst
    /// summary is queued too (shutdown). Returns whether more data is waiting.
    fn step(&mut self, flush: bool) -> Result<bool, StateError> {
        let mut notifications: Vec<Notification> = Vec::new();
        let now_ms = crate::state::unix_now_ms();
        notifications.extend(self.extra.iter().cloned());
        let mut events: Vec<Event> = Vec::new();
        // Lines and bytes per `files` entry, added to the metrics once per poll.
        let mut read: Vec<(u64, u64)> = vec![(0, 0); self.config.files.len()];
        let more = {
            let config = &self.config;
            let matcher = &mut self.matcher;
            let assembler = &mut self.assembler;
            let mut sink = |origin: &LineOrigin<'_>, line: &[u8]| {
                if let Some(r) = read.get_mut(origin.spec) {
                    r.0 += 1;
                    r.1 += line.len() as u64 + 1;
                }
                match config
                    .files
                    .get(origin.spec)
                    .and_then(|f| f.multiline.as_deref())
                {
                    Some(settings) => {
                        let mut done = Vec::new();
                        assembler.push(
                            settings,
                            origin.key,
                            origin.path,
                            origin.spec,
                            line,
                            now_ms,
                            &mut done,
                        );
                        for event in done {
                            matcher.evaluate(&event.path, &event.bytes, now_ms, &mut notifications);
                        }
                    }
                    None => matcher.evaluate(origin.path, line, now_ms, &mut notifications),
                }
            };
            self.tailer.poll(&mut sink)
        };
        for ((lines, bytes), (n, b)) in self.spec_counters.iter().zip(&read) {
            if *n > 0 {
                lines.inc_by(*n);
                bytes.inc_by(*b);
            }
        }
        self.publish_counters();
        // Events with no new line for their timeout are complete; with `flush` and
        // `--once`, every pending event is (nothing more will be read).
        let finish_all = flush && self.options.once;
        let config = &self.config;
        self.assembler.expire(
            now_ms,
            |e| {
                if finish_all {
                    return None;
                }
                config
                    .files
                    .get(e.spec)
                    .and_then(|f| f.multiline.as_ref())
                    .map(|m| m.timeout)
            },
            &mut events,
        );
        for event in events {
            self.matcher
                .evaluate(&event.path, &event.bytes, now_ms, &mut notifications);
        }
        let windows = &self.dedup_windows;
        self.matcher.bursts.expire(
            now_ms,
            |rule| windows.get(rule).copied(),
            &mut notifications,
        );
        if flush {
            self.matcher.bursts.flush(&mut notifications);
        }
        let checkpoints = self.tailer.take_checkpoints();
        if checkpoints.is_empty()
            && notifications.is_empty()
            && !self.matcher.bursts.has_changes()
            && !self.assembler.has_changes()
        {
            return Ok(more);
        }
        let (changed, removed) = self.matcher.bursts.take_changes();
        let pending_events = self.assembler.take_changes();
        let tx = self.store.transaction()?;
        for checkpoint in &checkpoints {
            tx.record(checkpoint)?;
        }
        for (key, event) in &pending_events {
            tx.save_event(*key, event.as_ref())?;
        }
        for w in &changed {
            tx.save_window(w)?;
        }
        for (rule, key) in &removed {
            tx.remove_window(rule, key)?;
        }
        if !self.options.dry_run {
            for n in &notifications {
                tx.enqueue(n)?;
            }
        }
        tx.commit()?;
        self.extra.clear();
        if !notifications.is_empty() {
            tracing::debug!(notifications = notifications.len(), "Queued notifications.");
            if self.options.dry_run {
                self.print_dry_run(&notifications);
            } else {
                self.wake.send_modify(|n| *n += 1);
            }
        }
        Ok(more)
    }

    fn outbox_is_full(&mut self) -> bool {
        if self.options.dry_run {
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

    fn print_dry_run(&mut self, notifications: &[Notification]) {
        for n in notifications {
            *self
                .dry_run_threads
                .entry((n.webhook.clone(), n.thread_key.clone()))
                .or_default() += 1;
            let thread = deliver::thread_key::chat_thread_key(&n.thread_key);
            let mut text = format!("── {} · thread {} · rule {}\n", n.webhook, thread, n.rule);
            for line in n.text.lines() {
                text.push_str("   ");
                text.push_str(line);
                text.push('\n');
            }
            if writeln!(self.out, "{text}").is_err() {
                // Standard output is gone (a closed pipe); nothing useful is left to do.
                return;
            }
        }
        let _ = self.out.flush();
    }

    fn write_dry_run_summary(&mut self) {
        let _ = writeln!(self.out, "Threads that would receive messages:");
        for ((webhook, key), count) in &self.dry_run_threads {
            let _ = writeln!(
                self.out,
                "  {webhook} · {key}: {count} message{}",
                if *count == 1 { "" } else { "s" }
            );
        }
        let _ = self.out.flush();
    }
}

/// The rule set for a file, compiled once per distinct set of applicable rules.
fn rules_for(
    config: &Config,
    by_path: &mut HashMap<PathBuf, Arc<RuleSet>>,
    by_rules: &mut HashMap<Vec<usize>, Arc<RuleSet>>,
    path: &std::path::Path,
) -> Arc<RuleSet> {
    if let Some(set) = by_path.get(path) {
        return Arc::clone(set);
    }
    let indexes: Vec<usize> = config
        .rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.applies_to(path))
        .map(|(i, _)| i)
        .collect();
    let set = by_rules
        .entry(indexes.clone())
        .or_insert_with(|| {
            let rules = indexes.iter().map(|&i| Arc::clone(&config.rules[i])).collect();
            // Every pattern compiled on its own when the config was loaded; the set of the
            // same patterns compiles too, so this fallback is never used in practice.
            Arc::new(RuleSet::new(rules).unwrap_or_else(|error| {
                tracing::error!(%error, "Cannot build the rule gate for a file; its lines match nothing.");
                RuleSet::empty()
            }))
        })
        .clone();
    by_path.insert(path.to_path_buf(), Arc::clone(&set));
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, glob: &str, rules: &str) -> Arc<Config> {
        config_starting_at(dir, glob, "end", rules)
    }

    fn config_starting_at(
        dir: &std::path::Path,
        glob: &str,
        start_at: &str,
        rules: &str,
    ) -> Arc<Config> {
        let yaml = format!(
            "state_dir: {state}\nwebhooks:\n  oncall:\n    url: https://chat.googleapis.com/v1/spaces/S/messages?key=k&token=t\nfiles:\n  - path: {glob}\n    start_at: {start_at}\nrules:\n{rules}",
            state = dir.join("state").display(),
            glob = dir.join(glob).display(),
        );
        load_yaml(dir, &yaml)
    }

    fn load_yaml(dir: &std::path::Path, yaml: &str) -> Arc<Config> {
        let env = |_: &str| None;
        let options = config::LoadOptions {
            url_policy: UrlPolicy::Required,
            env: &env,
            default_host: "test".to_owned(),
        };
        let loaded = config::load_bytes(&dir.join("c.yaml"), yaml.as_bytes(), &options)
            .unwrap_or_else(|report| panic!("{report}"));
        Arc::new(loaded.config)
    }

    const ERRORS: &str = "  - name: errors\n    match: ERROR\n    webhook: oncall\n";
    const WARNINGS: &str = "  - name: warnings\n    match: WARN\n    webhook: oncall\n";

    fn append(path: &std::path::Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn ingest(config: &Arc<Config>) -> (Ingest, std::sync::mpsc::Sender<Arc<Config>>) {
        let store = StateStore::open(&config.state_dir).unwrap();
        let (wake, _) = watch::channel(0);
        let (reload_tx, reload_rx) = std::sync::mpsc::channel();
        let ingest = Ingest::new(
            Arc::clone(config),
            store,
            wake,
            Box::new(std::io::sink()),
            RunOptions::default(),
            (Metrics::default(), Arc::new(Health::default())),
            reload_rx,
        )
        .unwrap();
        (ingest, reload_tx)
    }

    /// Polls until everything on disk is read and committed (the tailer notices growth
    /// through events or its sweep, so this waits for it, with a deadline).
    fn settle(ingest: &mut Ingest) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !ingest.step(false).unwrap() {
                if ingest.tailer.is_idle() {
                    return;
                }
                ingest.tailer.wait(Duration::from_millis(50));
            }
        }
        panic!("the tailer did not settle");
    }

    /// Lines written after the last poll and before a reload are not lost, even those of
    /// a file deleted meanwhile (delete + recreate rotation): the old tailer reads them
    /// through the handle it still holds before it is replaced.
    #[test]
    fn lines_written_just_before_a_reload_are_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        append(&log, "old ERROR, before the start\n");
        let old = config(dir.path(), "*.log", ERRORS);
        let (mut ingest, _reloads) = ingest(&old);
        settle(&mut ingest);
        assert_eq!(ingest.store.outbox_len().unwrap(), 0, "start_at: end");
        append(&log, "ERROR written just before the reload\n");
        std::fs::remove_file(&log).unwrap();
        append(&log, "ERROR in the new file\n");
        let new = config(dir.path(), "*.log", &format!("{ERRORS}{WARNINGS}"));
        ingest.switch_config(new).unwrap();
        append(&log, "WARN under the new config\n");
        settle(&mut ingest);
        assert_eq!(ingest.store.outbox_len().unwrap(), 3);
    }

    #[test]
    fn a_reload_releases_unconfigured_files_and_picks_up_new_globs() {
        let dir = tempfile::tempdir().unwrap();
        append(&dir.path().join("a.log"), "");
        append(&dir.path().join("b.txt"), "");
        let (mut ingest, _reloads) = ingest(&config(dir.path(), "*.log", ERRORS));
        settle(&mut ingest);
        assert_eq!(ingest.tailer.followed_paths(), [dir.path().join("a.log")]);
        ingest
            .switch_config(config(dir.path(), "*.txt", ERRORS))
            .unwrap();
        settle(&mut ingest);
        assert_eq!(ingest.tailer.followed_paths(), [dir.path().join("b.txt")]);
        // b.txt was found at the reload: `start_at: end` applies to what it held.
        append(&dir.path().join("b.txt"), "ERROR in b\n");
        append(
            &dir.path().join("a.log"),
            "ERROR in a, no longer followed\n",
        );
        settle(&mut ingest);
        assert_eq!(ingest.store.outbox_len().unwrap(), 1);
    }

    /// A file that appeared under an unchanged glob just before a reload is read from its
    /// start, as any file that appears while chattail runs (`start_at` is for files that
    /// were there when the glob was first followed).
    #[test]
    fn a_file_created_just_before_a_reload_is_read_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        append(&dir.path().join("a.log"), "");
        let (mut ingest, _reloads) = ingest(&config(dir.path(), "*.log", ERRORS));
        settle(&mut ingest);
        append(&dir.path().join("b.log"), "ERROR in a new file\n");
        ingest
            .switch_config(config(dir.path(), "*.log", &format!("{ERRORS}{WARNINGS}")))
            .unwrap();
        settle(&mut ingest);
        assert_eq!(ingest.store.outbox_len().unwrap(), 1);
    }

    /// A glob removed by one reload and restored by the next does not read its files again
    /// from the start: they were recorded as released, not forgotten.
    #[test]
    fn a_glob_removed_and_restored_is_not_read_twice() {
        let dir = tempfile::tempdir().unwrap();
        append(&dir.path().join("a.log"), "ERROR one\n");
        append(&dir.path().join("b.txt"), "");
        let logs = config_starting_at(dir.path(), "*.log", "beginning", ERRORS);
        let (mut ingest, _reloads) = ingest(&logs);
        settle(&mut ingest);
        assert_eq!(ingest.store.outbox_len().unwrap(), 1);
        ingest
            .switch_config(config_starting_at(dir.path(), "*.txt", "beginning", ERRORS))
            .unwrap();
        settle(&mut ingest);
        ingest
            .switch_config(config_starting_at(dir.path(), "*.log", "beginning", ERRORS))
            .unwrap();
        append(&dir.path().join("a.log"), "ERROR two\n");
        settle(&mut ingest);
        assert_eq!(
            ingest.store.outbox_len().unwrap(),
            2,
            "one, two; not one again"
        );
    }

    /// A pending multiline event follows its `files` entry when a reload reorders the
    /// entries: it keeps its own entry's multiline settings, not those of whatever entry
    /// now has its old index.
    #[test]
    fn a_pending_multiline_event_follows_its_entry_when_entries_are_reordered() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = |first: &str, second: &str| {
            format!(
                "state_dir: {state}\nwebhooks:\n  oncall:\n    url: https://chat.googleapis.com/v1/spaces/S/messages?key=k&token=t\nfiles:\n{first}{second}rules:\n{ERRORS}",
                state = dir.path().join("state").display(),
            )
        };
        let traces = format!(
            "  - path: {}\n    start_at: beginning\n    multiline:\n      start: '^\\S'\n      timeout: 1h\n",
            dir.path().join("a.log").display()
        );
        let plain = format!(
            "  - path: {}\n    start_at: beginning\n",
            dir.path().join("b.log").display()
        );
        append(&dir.path().join("a.log"), "ERROR first line\n  continued\n");
        append(&dir.path().join("b.log"), "");
        let (mut ingest, _reloads) = ingest(&load_yaml(dir.path(), &yaml(&traces, &plain)));
        settle(&mut ingest);
        assert_eq!(
            ingest.store.outbox_len().unwrap(),
            0,
            "the event is pending"
        );
        ingest
            .switch_config(load_yaml(dir.path(), &yaml(&plain, &traces)))
            .unwrap();
        settle(&mut ingest);
        assert_eq!(
            ingest.store.outbox_len().unwrap(),
            0,
            "still pending: its entry's timeout is an hour"
        );
        append(&dir.path().join("a.log"), "next event\n");
        settle(&mut ingest);
        assert_eq!(
            ingest.store.outbox_len().unwrap(),
            1,
            "one event of two lines"
        );
    }

    /// Rows queued for a webhook a reload removed cannot be sent; they must not hold
    /// reading paused.
    #[test]
    fn rows_of_a_removed_webhook_do_not_fill_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "state_dir: {state}\nwebhooks:\n  oncall:\n    url: https://chat.googleapis.com/v1/spaces/S/messages?key=k&token=t\nfiles:\n  - path: {glob}\ndelivery:\n  max_outbox: 2\nrules:\n{ERRORS}",
            state = dir.path().join("state").display(),
            glob = dir.path().join("*.log").display(),
        );
        let (mut ingest, _reloads) = ingest(&load_yaml(dir.path(), &yaml));
        let row = |webhook: &str| Notification {
            rule: "errors".to_owned(),
            webhook: webhook.to_owned(),
            thread_key: "errors".to_owned(),
            dedup_key: None,
            text: "ERROR".to_owned(),
        };
        let tx = ingest.store.transaction().unwrap();
        for _ in 0..5 {
            tx.enqueue(&row("removed")).unwrap();
        }
        tx.enqueue(&row("oncall")).unwrap();
        tx.commit().unwrap();
        assert!(!ingest.outbox_is_full(), "1 of 2 for configured webhooks");
        let tx = ingest.store.transaction().unwrap();
        tx.enqueue(&row("oncall")).unwrap();
        tx.commit().unwrap();
        ingest.last_outbox_check = None;
        assert!(ingest.outbox_is_full(), "2 of 2");
    }
}
