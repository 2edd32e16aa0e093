//! What the agent knows about its own condition, shared by the run loop, the delivery
//! workers, the admin endpoint, the systemd watchdog and the self-alerts.
//!
//! Writers only set facts (a webhook was refused, the outbox holds N, the run loop went
//! round); readers decide what they mean. `/healthz` reports every problem; the systemd
//! watchdog only asks whether the agent still works at all ([`Health::is_alive`]), because
//! a restart does not fix a revoked webhook.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};

use crate::clock::unix_now_ms;

/// The run loop must go round at least this often to count as working. It normally goes
/// round every 250 ms; a write waits at most SQLite's busy timeout (5 s) before it fails
/// and is retried a second later.
pub const STALL_AFTER_MS: i64 = 60_000;

/// Milliseconds on a monotonic clock (since the first call), so that a step of the wall
/// clock cannot make the run loop look stalled.
fn monotonic_ms() -> i64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = EPOCH.get_or_init(std::time::Instant::now);
    // Starts at 1 so that 0 can mean "never".
    i64::try_from(epoch.elapsed().as_millis())
        .unwrap_or(i64::MAX)
        .saturating_add(1)
}

/// Why a webhook is parked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    /// Chat's HTTP status.
    pub status: u16,
    /// Chat's error message, with any key or token already redacted.
    pub message: String,
    /// When the current episode began (unix milliseconds).
    pub since_ms: i64,
}

#[derive(Debug, Default)]
pub struct Health {
    parked: Mutex<BTreeMap<String, Parked>>,
    outbox_queued: AtomicU64,
    outbox_max: AtomicU64,
    outbox_full: AtomicBool,
    ingest_beat_ms: AtomicI64,
    ingest_stopped: AtomicBool,
    workers_running: AtomicUsize,
    workers_expected: AtomicUsize,
    /// Since when (monotonic ms) commits to the state database fail, and the last error.
    state_failing: Mutex<Option<(i64, String)>>,
    /// When (monotonic ms) the tailer last found no descriptor for a file; 0: never.
    out_of_descriptors_ms: AtomicI64,
    /// Fleet mode works on without Redis (locally), so this degrades, never fails, health.
    fleet_degraded: Mutex<Option<String>>,
    /// Why `journalctl` cannot be run or keeps failing; files are still followed.
    journal_failing: Mutex<Option<String>>,
}

impl Health {
    /// Records that Chat refused `webhook`'s post. The episode keeps its first time while
    /// the webhook stays refused.
    pub fn park(&self, webhook: &str, status: u16, message: &str) {
        let mut parked = self.lock_parked();
        let since_ms = parked.get(webhook).map_or_else(unix_now_ms, |p| p.since_ms);
        parked.insert(
            webhook.to_owned(),
            Parked {
                status,
                message: message.to_owned(),
                since_ms,
            },
        );
    }

    /// Records that Chat accepted a post of `webhook`: the parking episode, if any, ends.
    pub fn unpark(&self, webhook: &str) -> Option<Parked> {
        self.lock_parked().remove(webhook)
    }

    /// The webhooks parked now, by name.
    pub fn parked(&self) -> BTreeMap<String, Parked> {
        self.lock_parked().clone()
    }

    /// Forgets webhooks that are no longer configured (after a reload).
    pub fn retain_webhooks(&self, keep: impl Fn(&str) -> bool) {
        self.lock_parked().retain(|name, _| keep(name));
    }

    fn lock_parked(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Parked>> {
        // A panic while holding this lock leaves a map that is still consistent.
        self.parked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set_outbox(&self, queued: u64, max: u64, full: bool) {
        self.outbox_queued.store(queued, Ordering::Relaxed);
        self.outbox_max.store(max, Ordering::Relaxed);
        self.outbox_full.store(full, Ordering::Relaxed);
    }

    /// Notifications queued at the last count, and the bound.
    pub fn outbox(&self) -> (u64, u64) {
        (
            self.outbox_queued.load(Ordering::Relaxed),
            self.outbox_max.load(Ordering::Relaxed),
        )
    }

    /// A commit to the state database failed (a full disk, a read-only file system); the
    /// run loop retries every second. The episode keeps its first time.
    pub fn state_failed(&self, error: &str) {
        let mut failing = self
            .state_failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let since = failing
            .as_ref()
            .map_or_else(monotonic_ms, |(since, _)| *since);
        *failing = Some((since, error.to_owned()));
    }

    /// A commit succeeded.
    pub fn state_ok(&self) {
        *self
            .state_failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// The tailer found no descriptor for a file (it says so at every scan while files
    /// wait).
    pub fn out_of_descriptors(&self) {
        self.out_of_descriptors_ms
            .store(monotonic_ms(), Ordering::Relaxed);
    }

    /// Whether files waited for descriptors within the last `within_ms`.
    pub fn short_of_descriptors(&self, within_ms: i64) -> bool {
        let at = self.out_of_descriptors_ms.load(Ordering::Relaxed);
        at > 0 && monotonic_ms().saturating_sub(at) <= within_ms
    }

    /// The run loop went round.
    pub fn beat(&self) {
        self.ingest_beat_ms.store(monotonic_ms(), Ordering::Relaxed);
    }

    /// The run loop ended (stopping, or failed).
    pub fn ingest_stopped(&self) {
        self.ingest_stopped.store(true, Ordering::Relaxed);
    }

    /// How many delivery workers there should be.
    pub fn expect_workers(&self, n: usize) {
        self.workers_expected.store(n, Ordering::Relaxed);
    }

    /// Counts a delivery worker as running until the guard is dropped (also when its task
    /// panics).
    pub fn worker_guard(self: &std::sync::Arc<Self>) -> WorkerGuard {
        self.workers_running.fetch_add(1, Ordering::Relaxed);
        WorkerGuard(std::sync::Arc::clone(self))
    }

    /// Whether the agent still does its work at all: the run loop goes round and every
    /// delivery worker runs. This is what the systemd watchdog is told and what `/livez`
    /// answers.
    pub fn is_alive(&self) -> bool {
        self.liveness_problem().is_none()
    }

    /// Why the agent is not alive, if it is not.
    pub fn liveness_problem(&self) -> Option<String> {
        if self.ingest_stopped.load(Ordering::Relaxed) {
            return Some("the tailer has stopped".to_owned());
        }
        let beat = self.ingest_beat_ms.load(Ordering::Relaxed);
        let stalled_ms = monotonic_ms().saturating_sub(beat);
        if beat > 0 && stalled_ms > STALL_AFTER_MS {
            return Some(format!(
                "the tailer has not made progress for {} s",
                stalled_ms / 1000
            ));
        }
        let running = self.workers_running.load(Ordering::Relaxed);
        let expected = self.workers_expected.load(Ordering::Relaxed);
        if running < expected {
            return Some(format!(
                "{} of {expected} delivery workers have stopped",
                expected - running
            ));
        }
        None
    }

    /// Fleet mode: why the agent works alone now (`None`: Redis answers).
    pub fn set_fleet_degraded(&self, why: Option<String>) {
        *self
            .fleet_degraded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    }

    /// Why the journal cannot be read now (`None`: it can, or is not configured).
    pub fn set_journal_failing(&self, why: Option<String>) {
        *self
            .journal_failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    }

    /// Why the journal cannot be read now.
    pub fn journal_failing(&self) -> Option<String> {
        self.journal_failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// What works, but less well than configured (`/healthz` stays 200 and lists it).
    pub fn degradations(&self) -> Vec<String> {
        self.fleet_degraded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .into_iter()
            .collect()
    }

    /// Every problem an operator should know about, one short line each; empty when all is
    /// well. This is `/healthz`'s body.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = self.liveness_problem().into_iter().collect();
        for (name, p) in self.parked() {
            problems.push(format!(
                "webhook {name} is parked: Chat answered {}",
                p.status
            ));
        }
        if self.outbox_full.load(Ordering::Relaxed) {
            let (queued, max) = self.outbox();
            problems.push(format!(
                "the outbox is full ({queued} of {max}); reading is paused"
            ));
        }
        let failing = self
            .state_failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(why) = self.journal_failing() {
            problems.push(format!("the journal cannot be read: {why}"));
        }
        if let Some((since, error)) = failing {
            let seconds = monotonic_ms().saturating_sub(since) / 1000;
            problems.push(format!(
                "the state database cannot be written for {seconds} s ({error}); reading waits and retries"
            ));
        }
        problems
    }
}

/// Marks a delivery worker as running while it lives.
#[derive(Debug)]
pub struct WorkerGuard(std::sync::Arc<Health>);

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        self.0.workers_running.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn problems_name_parked_webhooks_and_a_full_outbox() {
        let health = Arc::new(Health::default());
        health.beat();
        assert!(health.problems().is_empty());
        health.park("oncall", 403, "The caller does not have permission");
        let first = health.parked()["oncall"].since_ms;
        health.park("oncall", 403, "again");
        assert_eq!(health.parked()["oncall"].since_ms, first, "one episode");
        assert_eq!(
            health.problems(),
            ["webhook oncall is parked: Chat answered 403"]
        );
        assert!(
            health.is_alive(),
            "a parked webhook is no reason to restart"
        );
        health.unpark("oncall");
        health.set_outbox(10, 10, true);
        assert_eq!(
            health.problems(),
            ["the outbox is full (10 of 10); reading is paused"]
        );
    }

    #[test]
    fn failing_commits_are_a_problem_until_one_succeeds() {
        let health = Health::default();
        health.beat();
        health.state_failed("database or disk is full");
        health.state_failed("database or disk is full");
        let problems = health.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(
                "the state database cannot be written for 0 s (database or disk is full)"
            ),
            "{problems:?}"
        );
        health.state_ok();
        assert!(health.problems().is_empty());
    }

    #[test]
    fn a_stopped_worker_makes_the_agent_not_alive() {
        let health = Arc::new(Health::default());
        health.expect_workers(1);
        let guard = health.worker_guard();
        assert!(health.is_alive());
        drop(guard);
        assert!(!health.is_alive());
        assert_eq!(health.problems(), ["1 of 1 delivery workers have stopped"]);
    }
}
