//! Delivery: one worker per Chat space posts the outbox's notifications at Chat's pace.
//!
//! Chat allows about one message per second per space, shared by every webhook of the
//! space, so the unit of pacing is the space (taken from the webhook URL). Each worker:
//!
//! - takes the next post from the outbox (a post formed before a crash or a retry first,
//!   unchanged, so its request id is the same and Chat does not store it twice);
//! - waits for its turn (`1 / max_per_second`), posts, and deletes the rows once Chat has
//!   accepted them;
//! - on 429, 5xx, timeouts and connection errors waits with exponential backoff and jitter
//!   (at least `Retry-After`, at most `max_backoff`) and tries the same post again, for as
//!   long as it takes: an
//!   outage only grows the outbox;
//! - on a refusal (400, 401, 403, 404) logs once, with the webhook's name, the status and
//!   Chat's message, and parks that webhook for `park_for`; the space's other webhooks go
//!   on. A post refused with 400 three times is set aside (kept, marked dead, logged).
//!
//! No URL is ever logged: workers name webhooks, and the client strips URLs from errors.

pub mod chat_client;
mod fleet_windows;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{Config, Delivery};
use crate::ops::health::Health;
use crate::ops::metrics::{Metrics, reason_for_status};
use crate::store::StoreError;
use crate::store::outbox::{Batch, Outbox};
use crate::webhook_url::WebhookUrl;
use chat_client::{ChatClient, PostLabels, PostOutcome};

/// When the workers must stop: `None` while running; the deadline once shutting down.
pub type StopSignal = watch::Receiver<Option<Instant>>;

/// A webhook a worker posts to.
#[derive(Clone)]
struct Target {
    name: String,
    url: WebhookUrl,
}

/// Counts commits that queued notifications; workers wait for it to move. (A watch
/// remembers what a worker has seen, so a commit between its look at the outbox and its
/// wait is not missed.)
pub type WakeSignal = watch::Receiver<u64>;

/// What workers report to, and when they may post first.
#[derive(Clone)]
pub struct WorkerContext {
    pub metrics: Metrics,
    pub health: Arc<Health>,
    /// No post before this instant: after a reload replaced the workers, the old ones may
    /// have posted less than a second ago, and Chat's quota counts both.
    pub first_send: Instant,
    /// Fleet mode: the pacing every host of the namespace shares (`None`: local only).
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
}

/// Starts one worker per space of `config`'s webhooks. `wake` moves when new rows are
/// queued; `stop` says when to finish.
pub fn spawn_workers(
    config: &Config,
    db: &Path,
    client: &ChatClient,
    wake: &WakeSignal,
    stop: &StopSignal,
    context: &WorkerContext,
) -> Result<Vec<JoinHandle<()>>, StoreError> {
    // Webhooks grouped by space; a webhook whose URL names no space is its own group.
    let mut spaces: BTreeMap<String, (Vec<Target>, f64)> = BTreeMap::new();
    for w in &config.webhooks {
        let Some(url) = &w.url else { continue };
        let space = match url.space() {
            Some(space) => format!("{}/{space}", url.host()),
            None => format!("webhook {}", w.name),
        };
        let entry = spaces.entry(space).or_insert((Vec::new(), f64::INFINITY));
        entry.0.push(Target {
            name: w.name.clone(),
            url: url.clone(),
        });
        // The space's budget is the strictest of its webhooks'.
        entry.1 = entry.1.min(w.max_per_second);
    }
    let mut handles = Vec::new();
    // One decider makes the decisions about burst windows' rows (for the fleet in fleet
    // mode, for this host without), and tells the workers when rows became postable.
    let (decided, decided_rx) = watch::channel(0u64);
    let decider = fleet_windows::Decider {
        outbox: Outbox::open(db)?,
        fleet: context.fleet.clone(),
        host: config.host.clone(),
        wake: wake.clone(),
        stop: stop.clone(),
        decided,
        _running: context.health.worker_guard(),
    };
    handles.push(tokio::spawn(decider.run()));
    let decided = Some(decided_rx);
    for (space, (targets, rate)) in spaces {
        let worker = SpaceWorker {
            space,
            decided: decided.clone(),
            host: config.host.clone(),
            targets,
            interval: paced_interval(rate),
            outbox: { Outbox::open(db)? },
            client: client.clone(),
            wake: wake.clone(),
            stop: stop.clone(),
            options: config.delivery.clone(),
            parked: HashMap::new(),
            card_refusals_logged: std::collections::HashSet::new(),
            backoff: None,
            failing_since: None,
            context: context.clone(),
            // Counted as running from now, not from the task's first poll, so that
            // `/healthz` never sees fewer workers than expected while they start.
            _running: context.health.worker_guard(),
        };
        handles.push(tokio::spawn(worker.run()));
    }
    Ok(handles)
}

struct SpaceWorker {
    space: String,
    /// Fleet mode: moves when the decider made rows postable.
    decided: Option<watch::Receiver<u64>>,
    /// This agent's host name, sent with each post (see `PostLabels`).
    host: String,
    targets: Vec<Target>,
    interval: Duration,
    outbox: Outbox,
    client: ChatClient,
    wake: WakeSignal,
    stop: StopSignal,
    options: Delivery,
    /// Parked webhooks and until when.
    parked: HashMap<String, Instant>,
    /// Rules whose refused card was logged (once per rule and worker).
    card_refusals_logged: std::collections::HashSet<String>,
    /// The backoff of the current run of failures, and since when it lasts.
    backoff: Option<backon::ExponentialBackoff>,
    failing_since: Option<Instant>,
    context: WorkerContext,
    /// Dropped when the worker ends, also by a panic.
    _running: crate::ops::health::WorkerGuard,
}

impl SpaceWorker {
    /// Fleet mode: waits for this space's next slot of the whole fleet; without an
    /// answer in time, the local pace (already kept) is all there is. Returns false when
    /// the worker must stop.
    async fn wait_for_fleet_slot(&mut self, fleet: &crate::fleet::Fleet) -> bool {
        use crate::fleet::Slot;
        loop {
            match fleet.reserve_send(&self.space, self.interval).await {
                Ok(Slot::After(wait)) => return wait.is_zero() || self.sleep_or_stop(wait).await,
                Ok(Slot::Full(wait)) => {
                    if !self
                        .sleep_or_stop(wait.max(Duration::from_millis(100)))
                        .await
                    {
                        return false;
                    }
                }
                Err(_) => return true,
            }
        }
    }

    async fn run(mut self) {
        tracing::debug!(space = %self.space, webhooks = self.targets.len(), "Delivery worker started.");
        let mut next_send = self.context.first_send;
        loop {
            let deadline = *self.stop.borrow();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let now = Instant::now();
            self.parked.retain(|_, until| *until > now);
            let active: Vec<String> = self
                .targets
                .iter()
                .filter(|t| !self.parked.contains_key(&t.name))
                .map(|t| t.name.clone())
                .collect();
            // Mark the current wake-up as seen before looking, so none is missed.
            self.wake.borrow_and_update();
            if let Some(decided) = self.decided.as_mut() {
                decided.borrow_and_update();
            }
            let batch = tokio::task::block_in_place(|| self.outbox.next_batch(&active));
            let batch = match batch {
                Ok(Some(batch)) => batch,
                Ok(None) => {
                    let waiting = tokio::task::block_in_place(|| self.outbox.has_undecided())
                        .unwrap_or(false);
                    if deadline.is_some() && !waiting {
                        // Shutting down and nothing left that may be sent.
                        break;
                    }
                    self.idle().await;
                    continue;
                }
                Err(error) => {
                    tracing::error!(space = %self.space, %error, "Cannot read the outbox; retrying in a second.");
                    self.sleep_or_stop(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if !self.sleep_until_or_stop(next_send).await {
                break;
            }
            // Fleet mode: wait for this space's next slot of the whole fleet.
            if let Some(fleet) = self.context.fleet.clone()
                && !self.wait_for_fleet_slot(&fleet).await
            {
                break;
            }
            let Some(target) = self
                .targets
                .iter()
                .find(|t| t.name == batch.webhook)
                .cloned()
            else {
                continue;
            };
            let chat_key = crate::pipeline::thread_key::chat_thread_key(&batch.thread_key);
            // Chat counts requests as they arrive, so the pace runs from start to start.
            let sent_at = Instant::now();
            let outcome = tokio::select! {
                outcome = self.client.post(&target.url, &chat_key, (&batch.text, batch.card.as_deref()), &batch.request_id, PostLabels { host: &self.host, rules: &batch.rules }) => outcome,
                () = stop_reached(self.stop.clone()) => break,
            };
            next_send = sent_at + self.interval;
            match outcome {
                PostOutcome::Accepted { .. } => self.accepted(&target, &batch),
                PostOutcome::Retry { after, reason } => {
                    let wait = self.retry_wait(&target, after, &reason);
                    if !self.sleep_or_stop(wait).await {
                        break;
                    }
                }
                PostOutcome::Refused {
                    status: 400,
                    message,
                } if batch.card.is_some() => {
                    self.card_refused(&target, &batch, &message);
                }
                PostOutcome::Refused { status, message } => {
                    self.refused(&target, &batch, status, &message);
                }
            }
        }
        tracing::debug!(space = %self.space, "Delivery worker stopped.");
    }

    /// Chat took the post: its rows are done, and the webhook is healthy again.
    fn accepted(&mut self, target: &Target, batch: &Batch) {
        let metrics = &self.context.metrics;
        let label = metrics.webhook(&target.name);
        metrics.chat_posts.get_or_create(&label).inc();
        metrics
            .chat_notifications
            .get_or_create(&label)
            .inc_by(batch.rows as u64);
        if self.context.health.unpark(&target.name).is_some() {
            metrics.webhook_parked.get_or_create(&label).set(0);
            tracing::info!(webhook = %target.name, "Chat accepts the webhook's posts again; it is no longer parked.");
        }
        if let Err(error) = tokio::task::block_in_place(|| self.outbox.delivered(&batch.request_id))
        {
            tracing::error!(space = %self.space, %error, "Cannot remove a delivered post from the outbox; it may be sent again (Chat ignores the repeat).");
        }
        if let Some(since) = self.failing_since.take() {
            tracing::info!(webhook = %target.name, down_for_s = since.elapsed().as_secs(), "Chat accepts posts again.");
        }
        self.backoff = None;
        log_delivered(&target.name, batch);
    }

    /// Chat did not take the post but may later (429, 5xx, network): how long to wait.
    fn retry_wait(&mut self, target: &Target, after: Option<Duration>, reason: &str) -> Duration {
        let metrics = &self.context.metrics;
        let label = metrics.webhook(&target.name);
        metrics.chat_failed(&target.name, retry_reason(reason));
        metrics.chat_retries.get_or_create(&label).inc();
        if reason == "429" {
            metrics.chat_rate_limited.get_or_create(&label).inc();
        }
        let builder = self.backoff_builder();
        let step = self
            .backoff
            .get_or_insert_with(|| builder.build())
            .next()
            .unwrap_or(self.options.max_backoff);
        // Chat's `Retry-After` is honoured up to `max_backoff`: a server (or a proxy) asking
        // for a day, or for u64::MAX seconds, does not stall delivery or overflow a clock.
        let wait = after
            .map_or(step, |a| a.max(step))
            .min(self.options.max_backoff);
        if self.failing_since.is_none() {
            self.failing_since = Some(Instant::now());
            tracing::warn!(webhook = %target.name, reason = %reason, retry_in_ms = wait.as_millis() as u64, "Chat did not take a post; retrying with backoff.");
        } else {
            tracing::debug!(webhook = %target.name, reason = %reason, retry_in_ms = wait.as_millis() as u64, "Chat still does not take posts.");
        }
        wait
    }

    /// Chat refused a post with a card (400): a field of the card, most likely. The alert
    /// is posted again at once as its text alone (the webhook is not parked), counted,
    /// and logged once per rule.
    fn card_refused(&mut self, target: &Target, batch: &Batch, message: &str) {
        self.context
            .metrics
            .chat_failed(&target.name, reason_for_status(400));
        for rule in &batch.rules {
            self.context.metrics.card_fallback(rule);
            if self.card_refusals_logged.insert(rule.clone()) {
                tracing::warn!(
                    webhook = %target.name,
                    rule = %rule,
                    chat_message = %message,
                    "Chat refused the rule's card; its alerts are posted as text (logged once per rule)."
                );
            }
        }
        if let Err(error) = tokio::task::block_in_place(|| self.outbox.drop_card(&batch.request_id))
        {
            tracing::error!(%error, "Cannot drop the refused card in the outbox; the post is retried as it was.");
        }
    }

    /// Chat refused the post: the webhook is parked (a 400 also counts against the post).
    fn refused(&mut self, target: &Target, batch: &Batch, status: u16, message: &str) {
        let metrics = &self.context.metrics;
        let label = metrics.webhook(&target.name);
        metrics.chat_failed(&target.name, reason_for_status(status));
        // A 400 is about one post (set aside after three), not the webhook:
        // only other refusals make the webhook unhealthy until Chat takes one
        // of its posts again.
        if status != 400 {
            metrics.webhook_parked.get_or_create(&label).set(1);
            self.context.health.park(&target.name, status, message);
        }
        let until = later(self.options.park_for);
        self.parked.insert(target.name.clone(), until);
        tracing::error!(
            webhook = %target.name,
            status,
            chat_message = %message,
            retry_in_s = self.options.park_for.as_secs(),
            "Chat refused the webhook's post; the webhook is parked and its messages stay queued."
        );
        if status == 400 {
            match tokio::task::block_in_place(|| self.outbox.refused(&batch.request_id)) {
                Ok(true) => tracing::error!(
                    webhook = %target.name,
                    request_id = %batch.request_id,
                    "Chat refused this post three times; it is set aside (dead) in the outbox."
                ),
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(%error, "Cannot record a refusal in the outbox.")
                }
            }
        }
    }

    fn backoff_builder(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.options.min_backoff)
            .with_max_delay(self.options.max_backoff)
            .with_jitter()
            .without_max_times()
    }

    /// Waits for new rows, the end of a parking, or a stop.
    async fn idle(&mut self) {
        let parked_until = self.parked.values().min().copied();
        let poll = Instant::now() + Duration::from_millis(500);
        let until = parked_until.map_or(poll, |p| p.min(poll));
        let mut stop = self.stop.clone();
        let decision = async {
            match self.decided.as_mut() {
                Some(d) => {
                    if d.changed().await.is_err() {
                        // The decider is gone (it stopped, or panicked): stop listening
                        // rather than wake at once, again and again.
                        self.decided = None;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = self.wake.changed() => {}
            () = decision => {}
            () = tokio::time::sleep_until(until) => {}
            _ = stop.changed() => {}
        }
    }

    /// Sleeps for `wait` unless the stop deadline comes first. Returns false on stop.
    async fn sleep_or_stop(&mut self, wait: Duration) -> bool {
        self.sleep_until_or_stop(later(wait)).await
    }

    async fn sleep_until_or_stop(&mut self, until: Instant) -> bool {
        tokio::select! {
            () = tokio::time::sleep_until(until) => true,
            () = stop_reached(self.stop.clone()) => false,
        }
    }
}

/// Completes when the stop deadline has passed.
async fn stop_reached(mut stop: StopSignal) {
    loop {
        let deadline = *stop.borrow_and_update();
        match deadline {
            Some(d) => {
                tokio::time::sleep_until(d).await;
                return;
            }
            None => {
                if stop.changed().await.is_err() {
                    // The sender of the signal is gone: nobody will ever ask to stop.
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// The time between the starts of two posts to a space allowed `rate` per second. Chat
/// counts requests as they arrive, and a request may reach it a little sooner after its
/// start than the one before did (a reused connection, a less loaded moment), so the
/// interval carries a margin of 5%, at most 50 ms.
fn paced_interval(rate: f64) -> Duration {
    // The config bounds the rate to 0.01..=100 per second; should a value outside that
    // ever get here, the interval is clamped instead of panicking.
    let interval = Duration::try_from_secs_f64(1.0 / rate)
        .unwrap_or(MAX_INTERVAL)
        .min(MAX_INTERVAL);
    interval + (interval / 20).min(Duration::from_millis(50))
}

/// The longest interval between two posts to a space (the slowest allowed rate).
const MAX_INTERVAL: Duration = Duration::from_secs(100);

/// `now + wait`, or a point so far ahead that it never comes, instead of an overflow.
fn later(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// The bounded `reason` label for a retry reason from the client.
fn retry_reason(reason: &str) -> &'static str {
    match reason {
        "timeout" | "408" => "timeout",
        "connect" | "network" => "connection",
        other => other.parse::<u16>().map_or("other", reason_for_status),
    }
}

fn log_delivered(webhook: &str, batch: &Batch) {
    let age_ms = crate::clock::unix_now_ms().saturating_sub(batch.oldest_ms);
    tracing::debug!(
        webhook,
        thread_key = %batch.thread_key,
        notifications = batch.rows,
        age_ms,
        "Posted to Chat."
    );
}
