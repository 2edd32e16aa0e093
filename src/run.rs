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

use crate::bursts::Bursts;
use crate::config::Config;
use crate::deliver::{self, chat_client::ChatClient};
use crate::multiline::{Assembler, Event};
use crate::rules::{ContextRing, Notification, RuleSet, Source};
use crate::state::{StateError, StateStore};
use crate::tail::{LineOrigin, TailOptions, Tailer};

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot create the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("cannot start the runtime or install signal handlers: {0}")]
    Runtime(#[from] std::io::Error),
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
}

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

async fn supervise(
    config: Arc<Config>,
    store: StateStore,
    options: RunOptions,
    out: Box<dyn Write + Send>,
) -> Result<(), RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let (wake_tx, wake_rx) = watch::channel(0u64);
    let (stop_tx, stop_rx) = watch::channel(None);
    let workers = if options.dry_run {
        Vec::new()
    } else {
        let client = ChatClient::new(config.delivery.request_timeout)?;
        deliver::spawn_workers(&config, store.db_path(), &client, &wake_rx, &stop_rx)?
    };
    tracing::info!(
        files = config.files.len(),
        rules = config.rules.len(),
        webhooks = config.webhooks.len(),
        dry_run = options.dry_run,
        "chattail is running."
    );
    let stop_reading = Arc::new(AtomicBool::new(false));
    let mut ingest = {
        let config = Arc::clone(&config);
        let stop = Arc::clone(&stop_reading);
        tokio::task::spawn_blocking(move || {
            Ingest::new(config, store, wake_tx, out, options)?.run(&stop)
        })
    };
    let mut signalled = false;
    let ingest_result = tokio::select! {
        r = &mut ingest => Some(r),
        _ = terminate.recv() => { signalled = true; None }
        _ = interrupt.recv() => { signalled = true; None }
    };
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
    let grace = config.delivery.shutdown_grace;
    // With --once and no signal, delivery drains the outbox however long it takes; a
    // signal (or a failure of the ingest half) gives it the grace period only.
    let drain = options.once && !signalled && ingest_result.is_ok();
    let deadline = tokio::time::Instant::now()
        + if drain {
            Duration::from_secs(86_400)
        } else {
            grace
        };
    let _ = stop_tx.send(Some(deadline));
    let all_workers = futures_join(workers);
    tokio::pin!(all_workers);
    if drain {
        tokio::select! {
            () = &mut all_workers => {}
            _ = terminate.recv() => { let _ = stop_tx.send(Some(tokio::time::Instant::now() + grace)); all_workers.await; }
            _ = interrupt.recv() => { let _ = stop_tx.send(Some(tokio::time::Instant::now() + grace)); all_workers.await; }
        }
    } else {
        all_workers.await;
    }
    tracing::info!("chattail stopped.");
    ingest_result
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
        rules.evaluate(line, |hit| {
            let context = match &ring {
                Some(r) if hit.rule.context_before > 0 => r.last(hit.rule.context_before),
                _ => Vec::new(),
            };
            let n = hit.notification_with_context(line, &source, &context);
            match &hit.rule.dedup {
                Some(dedup) => bursts.observe(dedup, n, line, now_ms, out),
                None => out.push(n),
            }
        });
        if let Some(r) = ring.as_mut() {
            r.push(line);
        }
    }
}

impl Ingest {
    fn new(
        config: Arc<Config>,
        store: StateStore,
        wake: watch::Sender<u64>,
        out: Box<dyn Write + Send>,
        options: RunOptions,
    ) -> Result<Self, RunError> {
        let tailer = Tailer::new(TailOptions::from_config(&config), store.saved_files()?);
        let bursts = Bursts::from_saved(store.saved_windows()?);
        let assembler = Assembler::from_saved(store.saved_events()?);
        let dedup_windows = config
            .rules
            .iter()
            .filter_map(|r| r.dedup.as_ref().map(|d| (r.name.clone(), d.window)))
            .collect();
        let matcher = Matcher {
            max_context: config.max_context_before(),
            config: Arc::clone(&config),
            by_path: HashMap::new(),
            by_rules: HashMap::new(),
            bursts,
            rings: HashMap::new(),
        };
        Ok(Self {
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
            dedup_windows,
            assembler,
        })
    }

    fn run(mut self, stop: &AtomicBool) -> Result<(), RunError> {
        while !stop.load(Ordering::Relaxed) {
            if self.outbox_is_full() {
                std::thread::sleep(Duration::from_millis(200));
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
        // (unless the outbox is full: then nothing more is read).
        if !self.outbox_full {
            self.step(true)?;
        }
        if self.options.dry_run {
            self.write_dry_run_summary();
        }
        Ok(())
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
        Ok(())
    }

    /// One poll of the tailer and one transaction: the offsets, the notifications of the
    /// lines read, and the burst windows they changed. With `flush`, every pending burst
    /// summary is queued too (shutdown). Returns whether more data is waiting.
    fn step(&mut self, flush: bool) -> Result<bool, StateError> {
        let mut notifications: Vec<Notification> = Vec::new();
        let now_ms = crate::state::unix_now_ms();
        let mut events: Vec<Event> = Vec::new();
        let more = {
            let config = &self.config;
            let matcher = &mut self.matcher;
            let assembler = &mut self.assembler;
            let mut sink = |origin: &LineOrigin<'_>, line: &[u8]| match config
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
            };
            self.tailer.poll(&mut sink)
        };
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
        let queued = match self.store.outbox_len() {
            Ok(n) => n,
            Err(error) => {
                tracing::error!(%error, "Cannot count the outbox.");
                return self.outbox_full;
            }
        };
        let full = queued >= max;
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
