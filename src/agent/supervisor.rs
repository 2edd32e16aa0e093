//! The async half of the agent: delivery workers, the admin endpoint, systemd, and the
//! signals that stop or reload it (reloading itself is in `reload.rs`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;

use super::ingest::Ingest;
use super::{RunError, RunOptions};
use crate::config::Config;
use crate::deliver::{self, WorkerContext, chat_client::ChatClient};
use crate::ops::admin::{self, AdminHandle};
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::store::Store;

/// How often `--watch-config` looks at the config file. Reading it is cheap, and a poll
/// (unlike a file watch) also sees the symlink swap of a Kubernetes ConfigMap.
const WATCH_CONFIG_EVERY: Duration = Duration::from_secs(1);

/// The delivery workers of one config; replaced as a whole when a reload changes the
/// webhooks or the delivery settings.
pub(super) struct DeliveryGeneration {
    stop: watch::Sender<Option<tokio::time::Instant>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl DeliveryGeneration {
    pub(super) fn start(
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
                let mut handles =
                    deliver::spawn_workers(config, db, &client, wake, &stop_rx, context)?;
                if let Some(fleet) = &context.fleet {
                    let sync = super::silence_sync::SilenceSync {
                        fleet: Arc::clone(fleet),
                        db: db.to_owned(),
                        host: config.host.clone(),
                        stop: stop_rx.clone(),
                        _running: context.health.worker_guard(),
                    };
                    handles.push(tokio::spawn(sync.run()));
                }
                handles
            }
        };
        context.health.expect_workers(handles.len());
        Ok(Self { stop, handles })
    }

    /// Asks the workers to stop by `deadline` and waits for them.
    pub(super) async fn finish(self, deadline: tokio::time::Instant) {
        let _ = self.stop.send(Some(deadline));
        wait_for_workers(self.handles).await;
    }
}

/// Whether two configs deliver differently (then the workers are replaced on reload).
pub(super) fn delivery_changed(old: &Config, new: &Config) -> bool {
    let same_webhooks = old.webhooks.len() == new.webhooks.len()
        && old.webhooks.iter().zip(&new.webhooks).all(|(a, b)| {
            a.name == b.name
                && a.max_per_second == b.max_per_second
                && match (&a.url, &b.url) {
                    (Some(x), Some(y)) => x.same_as(y),
                    (x, y) => x.is_none() && y.is_none(),
                }
        });
    !same_webhooks || old.delivery != new.delivery || old.fleet != new.fleet
}

/// The async half: signals, reloads, delivery workers, the admin endpoint and systemd.
pub(super) struct Supervisor {
    pub(super) config: Arc<Config>,
    pub(super) options: RunOptions,
    pub(super) metrics: Metrics,
    pub(super) health: Arc<Health>,
    pub(super) db: Option<PathBuf>,
    pub(super) wake: watch::Receiver<u64>,
    pub(super) delivery: Option<DeliveryGeneration>,
    pub(super) reloads: std::sync::mpsc::Sender<Arc<Config>>,
    pub(super) admin: Option<AdminHandle>,
    /// The digest of the config file's bytes when last loaded or tried, for
    /// `--watch-config`.
    pub(super) config_digest: u64,
}

pub(super) async fn supervise(
    config: Arc<Config>,
    store: Store,
    options: RunOptions,
    out: Box<dyn Write + Send>,
    mut signals: Signals,
) -> Result<(), RunError> {
    let metrics = Metrics {
        fleet_enabled: config.fleet.is_some(),
        ..Metrics::default()
    };
    prepare_metrics(&metrics, &config);
    let health = Arc::new(Health::default());
    health.beat();
    let db = (!options.dry_run).then(|| store.db_path().to_path_buf());
    let (wake_tx, wake_rx) = watch::channel(0u64);
    let context = WorkerContext {
        metrics: metrics.clone(),
        health: Arc::clone(&health),
        first_send: tokio::time::Instant::now(),
        fleet: fleet_client(&config, &metrics, &health),
    };
    // The admin port first: if it is taken, nothing has started that would have to be
    // stopped (delivery workers left running while the runtime shuts down would panic).
    let admin = AdminServer::start(&config, &metrics, &health, db.clone()).await?;
    let delivery = match DeliveryGeneration::start(&config, db.as_deref(), &wake_rx, &context) {
        Ok(delivery) => delivery,
        Err(error) => {
            if let Some(admin) = admin {
                admin.stop().await;
            }
            return Err(error);
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
        admin: admin.as_ref().map(|a| a.handle.clone()),
    };
    let status = running_status(&supervisor.config);
    notify_systemd(&[NotifyState::Ready, NotifyState::Status(&status)]);
    let ended = supervisor.serve(&mut signals, &mut ingest).await;
    notify_systemd(&[NotifyState::Stopping]);
    let signalled = ended.is_none();
    let ingest_result = match ended {
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
    // With --once and no signal, delivery drains the outbox however long it takes; a
    // signal (or a failure of the ingest half) gives it the grace period only.
    let drain = options.once && !signalled && ingest_result.is_ok();
    supervisor.finish_delivery(&mut signals, drain).await;
    if let Some(admin) = admin {
        admin.stop().await;
    }
    tracing::info!("chattail stopped.");
    ingest_result
}

type IngestTask = tokio::task::JoinHandle<Result<(), RunError>>;

/// The signals the agent answers.
pub(super) struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (inside the runtime). From here on a signal is held until
    /// the supervisor looks, never the process's death.
    pub(super) fn install() -> Result<Self, RunError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// SIGTERM or SIGINT.
    async fn stop(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// The admin endpoint's server task and how to stop it.
struct AdminServer {
    handle: AdminHandle,
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl AdminServer {
    /// Binds `admin.listen` (a taken port fails the start), if it is set.
    async fn start(
        config: &Config,
        metrics: &Metrics,
        health: &Arc<Health>,
        db: Option<PathBuf>,
    ) -> Result<Option<Self>, RunError> {
        let Some(addr) = config.admin_listen else {
            return Ok(None);
        };
        let (stop, mut stop_rx) = watch::channel(false);
        let stopped = async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        };
        let names = config.webhooks.iter().map(|w| w.name.clone()).collect();
        let (handle, bound, task) = admin::start(
            addr,
            metrics.clone(),
            Arc::clone(health),
            db,
            names,
            stopped,
        )
        .await
        .map_err(|source| RunError::Admin { addr, source })?;
        tracing::info!(%bound, "Serving /metrics and /healthz.");
        Ok(Some(Self { handle, task, stop }))
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

impl Supervisor {
    /// Answers signals, reloads and the watchdog until ingest ends (`Some`, its outcome)
    /// or a stop signal comes (`None`).
    async fn serve(
        &mut self,
        signals: &mut Signals,
        ingest: &mut IngestTask,
    ) -> Option<Result<Result<(), RunError>, tokio::task::JoinError>> {
        // A zero interval (WATCHDOG_USEC=0) means no watchdog.
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        let mut watchdog_tick =
            tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |d| d / 2));
        let mut watch_tick = tokio::time::interval(WATCH_CONFIG_EVERY);
        watch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = &mut *ingest => return Some(r),
                _ = signals.terminate.recv() => return None,
                _ = signals.interrupt.recv() => return None,
                _ = signals.hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the config.");
                    self.reload().await;
                }
                _ = watch_tick.tick(), if self.options.watch_config => {
                    if self.config_file_changed().await {
                        tracing::info!("The config file changed: reloading it.");
                        self.reload().await;
                    }
                }
                _ = watchdog_tick.tick(), if watchdog.is_some() => {
                    // A stalled run loop or a dead worker stops the pings, so systemd
                    // restarts the agent; a parked webhook does not (a restart would not
                    // help).
                    if self.health.is_alive() {
                        notify_systemd(&[NotifyState::Watchdog]);
                    }
                }
            }
        }
    }

    /// Lets delivery post what is queued: for `delivery.shutdown_grace`, or with `drain`
    /// until the outbox is empty (a stop signal then cuts it to the grace period).
    async fn finish_delivery(&mut self, signals: &mut Signals, drain: bool) {
        let grace = self.config.delivery.shutdown_grace;
        let Some(delivery) = self.delivery.take() else {
            return;
        };
        let deadline = tokio::time::Instant::now()
            + if drain {
                Duration::from_secs(86_400)
            } else {
                grace
            };
        let stop = delivery.stop.clone();
        let all_workers = delivery.finish(deadline);
        tokio::pin!(all_workers);
        if drain {
            tokio::select! {
                () = &mut all_workers => {}
                () = signals.stop() => {
                    let _ = stop.send(Some(tokio::time::Instant::now() + grace));
                    all_workers.await;
                }
            }
        } else {
            all_workers.await;
        }
    }
}

/// The `STATUS=` line `systemctl status` shows.
pub(super) fn running_status(config: &Config) -> String {
    format!(
        "running: {} rules over {} file patterns, {} webhooks",
        config.rules.len(),
        config.files.len(),
        config.webhooks.len()
    )
}

/// Tells systemd (when it started us with `Type=notify`) how we are; a no-op otherwise.
pub(super) fn notify_systemd(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(%error, "Cannot notify systemd.");
    }
}

/// Waits for every worker to end, one after the other.
async fn wait_for_workers(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        if let Err(error) = h.await {
            tracing::error!(%error, "A delivery worker failed.");
        }
    }
}

/// Every series of `config`'s webhooks, rules and files at zero, from the first scrape.
pub(super) fn prepare_metrics(metrics: &Metrics, config: &Config) {
    let webhooks: Vec<&str> = config.webhooks.iter().map(|w| w.name.as_str()).collect();
    let rules: Vec<&str> = config.rules.iter().map(|r| r.name.as_str()).collect();
    let patterns: Vec<&str> = config.files.iter().map(|f| f.pattern.as_str()).collect();
    let mut formats: Vec<&'static str> = config
        .files
        .iter()
        .map(|f| f.format)
        .filter(|f| *f != crate::config::LogFormat::Plain)
        .map(crate::config::LogFormat::name)
        .collect();
    formats.sort_unstable();
    formats.dedup();
    metrics.prepare(&webhooks, &rules, &patterns, &formats);
}

/// Fleet mode's client for a generation of delivery workers, when the config has `fleet`.
pub(super) fn fleet_client(
    config: &Config,
    metrics: &Metrics,
    health: &Arc<Health>,
) -> Option<Arc<crate::fleet::Fleet>> {
    if config.fleet.is_none() {
        // A reload that removed fleet mode: nothing is degraded any more.
        health.set_fleet_degraded(None);
        metrics.fleet_connected.set(1);
    }
    config.fleet.clone().map(|fleet| {
        tracing::info!(redis = %fleet.redis.display(), namespace = %fleet.namespace, "Fleet mode: pacing is shared through Redis.");
        Arc::new(crate::fleet::Fleet::new(fleet, metrics.clone(), Arc::clone(health)))
    })
}
