//! What a queued notification that opens or sums up a burst window becomes: in fleet mode
//! for the whole fleet (see `fleet::windows` for the protocol), without it for this host.
//!
//! One decider task per agent makes these decisions, apart from the space workers: a row
//! waiting for a decision is not posted (the outbox leaves it out of posts) and holds up
//! nothing but the later rows of its own rule in its own thread (a resolution after the
//! summary of the window it closed); when a decision must wait (a summary before its window is over), the
//! row gets a time to be looked at again and the decider goes on with other rows. Each
//! decision is recorded in one transaction with the record of the local window's fleet
//! window, so a retried post never changes what a decision counted and a restart
//! resumes where it was.
//!
//! Without fleet mode every decision is this host's own, at once: a first is posted, a
//! summary counts its repeats, plus its first when a fleet run before (or before a reload)
//! had another host post that one, and a window that counted nothing posts nothing.
//!
//! Redis trouble falls back to what this host knows: a first occurrence is posted, a
//! summary counts this host's own occurrences (with its first when another host posted
//! that one). A part not yet in Redis does so after 10 s of trouble; one already reported
//! waits until Redis answers again, or until its keys have surely expired, so that it is
//! never counted both there and here.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{StopSignal, WakeSignal, stop_reached};
use crate::clock::unix_now_ms;
use crate::fleet::Fleet;
use crate::fleet::windows::{Joined, Report, Take, member};
use crate::ops::health::WorkerGuard;
use crate::pipeline::bursts::summary_text;
use crate::pipeline::rules::BurstMark;
use crate::store::StoreError;
use crate::store::fleet_rows::{JoinedRecord, RowOutcome, Undecided, WindowChange};
use crate::store::outbox::Outbox;

/// How long Redis may fail a summary's decision before this host posts its own, while
/// its part has not been reported (only its first occurrence, if any, is in Redis).
const GIVE_UP: Duration = Duration::from_secs(10);
/// How soon a failed decision is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// The longest the owner waits before it looks at its window again (the totals may be
/// ready sooner than Redis said, when every part became final).
const OWNER_MAX_WAIT: Duration = Duration::from_secs(2);
/// The longest others wait before they look again: soon after the owner took the summary
/// they learn it and drop their row, so that little time is left in which a Redis
/// restarted empty could make them count their part a second time.
const MAX_WAIT: Duration = Duration::from_secs(5);
/// Records of local windows older than this are forgotten (a window lasts at most seven
/// days; its summary comes soon after).
const FORGET_AFTER: Duration = Duration::from_secs(8 * 24 * 3600);

/// The task that makes the decisions about this agent's queued rows.
pub(super) struct Decider {
    pub outbox: Outbox,
    /// Fleet mode's client; `None`: every decision is this host's own.
    pub fleet: Option<Arc<Fleet>>,
    pub host: String,
    pub wake: WakeSignal,
    pub stop: StopSignal,
    /// Moved after each decision, so that workers look for rows that became postable.
    pub decided: watch::Sender<u64>,
    pub _running: WorkerGuard,
}

/// One decision: what becomes of the row, and of its local window's record.
struct Decision {
    outcome: RowOutcome,
    record: Option<JoinedRecord>,
    forget: bool,
}

impl Decision {
    fn keep(outcome: RowOutcome) -> Self {
        Self {
            outcome,
            record: None,
            forget: false,
        }
    }

    fn save(outcome: RowOutcome, record: JoinedRecord) -> Self {
        Self {
            outcome,
            record: Some(record),
            forget: false,
        }
    }

    fn forget(outcome: RowOutcome) -> Self {
        Self {
            outcome,
            record: None,
            forget: true,
        }
    }
}

impl Decider {
    pub(super) async fn run(mut self) {
        let before = unix_now_ms() - i64::try_from(FORGET_AFTER.as_millis()).unwrap_or(0);
        if let Err(error) =
            tokio::task::block_in_place(|| self.outbox.forget_fleet_windows_before(before))
        {
            tracing::warn!(%error, "Cannot forget old fleet window records.");
        }
        loop {
            let deadline = *self.stop.borrow();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            self.wake.borrow_and_update();
            let now = unix_now_ms();
            let next = tokio::task::block_in_place(|| self.outbox.next_undecided(now));
            match next {
                Ok(Some(row)) => {
                    if let Err(error) = self.decide(&row).await {
                        tracing::error!(%error, "Cannot record a fleet decision; retrying in a second.");
                        if !self.pause(Duration::from_secs(1)).await {
                            break;
                        }
                    }
                    self.decided.send_modify(|n| *n = n.wrapping_add(1));
                }
                Ok(None) => {
                    // Idle: an agent that saw Redis fail learns here that it is back.
                    if let Some(fleet) = &self.fleet {
                        fleet.probe_if_failing().await;
                    }
                    let due = tokio::task::block_in_place(|| self.outbox.next_decision_ms())
                        .ok()
                        .flatten();
                    // Stopping: done once no row waits for a decision (a drain, `--once`,
                    // waits for the windows; a shutdown's deadline ends it sooner).
                    if deadline.is_some() && due.is_none() {
                        break;
                    }
                    let wait = due.map_or(Duration::from_secs(1), |at| {
                        Duration::from_millis(u64::try_from(at - now).unwrap_or(0))
                            .min(Duration::from_secs(1))
                    });
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        changed = self.wake.changed() => {
                            if changed.is_err() {
                                // Nobody queues rows any more: only the timer wakes us.
                                tokio::time::sleep(wait).await;
                            }
                        }
                        () = tokio::time::sleep(wait) => {}
                        changed = stop.changed() => {
                            if changed.is_err() {
                                tokio::time::sleep(wait).await;
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "Cannot read the outbox for fleet decisions; retrying in a second.");
                    if !self.pause(Duration::from_secs(1)).await {
                        break;
                    }
                }
            }
        }
        tracing::debug!("Fleet decider stopped.");
    }

    /// Sleeps unless the stop deadline comes first; false on stop.
    async fn pause(&mut self, wait: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = stop_reached(self.stop.clone()) => false,
        }
    }

    async fn decide(&mut self, row: &Undecided) -> Result<(), StoreError> {
        let Ok(mark) = serde_json::from_str::<BurstMark>(&row.burst) else {
            // Not a mark this version writes: posted as it is.
            return tokio::task::block_in_place(|| {
                self.outbox.record_decision(
                    row.id,
                    &RowOutcome::Post(None),
                    (&row.rule, "", 0),
                    &WindowChange::Keep,
                )
            });
        };
        let (key, local_first_ms) = match &mark {
            BurstMark::First { key, first_ms, .. } | BurstMark::Summary { key, first_ms, .. } => {
                (key.clone(), *first_ms)
            }
        };
        let decision = match mark {
            // Without fleet mode a first occurrence is always posted here.
            BurstMark::First { .. } if self.fleet.is_none() => {
                Decision::keep(RowOutcome::Post(None))
            }
            BurstMark::First {
                key,
                first_ms,
                window_ms,
                line,
            } => self.first(&row.rule, &key, first_ms, window_ms, line).await,
            BurstMark::Summary {
                key,
                first_ms,
                count,
                last_ms,
                last_line,
            } => {
                let summary = OwnSummary {
                    rule: &row.rule,
                    first_ms,
                    count,
                    last_ms,
                    last_line: &last_line,
                };
                self.summary(&key, &summary).await?
            }
        };
        let change = match (&decision.record, decision.forget) {
            (Some(record), _) => WindowChange::Save(record),
            (None, true) => WindowChange::Forget,
            (None, false) => WindowChange::Keep,
        };
        tokio::task::block_in_place(|| {
            self.outbox.record_decision(
                row.id,
                &decision.outcome,
                (&row.rule, &key, local_first_ms),
                &change,
            )
        })
    }

    /// A local window's first occurrence: joins the fleet window; posted by its owner only.
    async fn first(
        &mut self,
        rule: &str,
        key: &str,
        first_ms: i64,
        window_ms: i64,
        line: String,
    ) -> Decision {
        let me = member(self.outbox.agent_id(), first_ms);
        let age = age_of(first_ms);
        let Some(fleet) = self.fleet.clone() else {
            return Decision::keep(RowOutcome::Post(None));
        };
        match fleet
            .claim_window(&me, rule, key, window_ms, &self.host, &line, age)
            .await
        {
            Ok(joined) => {
                if !joined.owner {
                    tracing::debug!(
                        rule,
                        "Fleet: another agent posts this window's first message."
                    );
                }
                let outcome = if joined.owner {
                    RowOutcome::Post(None)
                } else {
                    RowOutcome::Drop
                };
                Decision::save(
                    outcome,
                    JoinedRecord {
                        fleet_first_ms: Some(joined.first_ms),
                        window_ms: joined.window_ms,
                        owner: joined.owner,
                        first_line: line,
                        reported: false,
                        failing_since: None,
                    },
                )
            }
            // Without Redis the first occurrence is posted here, as without fleet mode.
            Err(_) => Decision::save(
                RowOutcome::Post(None),
                JoinedRecord {
                    fleet_first_ms: None,
                    window_ms,
                    owner: true,
                    first_line: line,
                    reported: false,
                    failing_since: None,
                },
            ),
        }
    }

    /// A local window's summary row: reports its repeats into the fleet window, then
    /// takes the fleet's summary when it is this part's turn, or leaves it to its taker.
    async fn summary(&mut self, key: &str, own: &OwnSummary<'_>) -> Result<Decision, StoreError> {
        let rule = own.rule;
        let record =
            tokio::task::block_in_place(|| self.outbox.joined_window(rule, key, own.first_ms))?;
        // Queued before fleet mode (or its record lost): this host's own summary.
        let Some(mut record) = record else {
            return Ok(Decision::keep(own.outcome(false, "")));
        };
        let (Some(fleet_first_ms), Some(fleet)) = (record.fleet_first_ms, self.fleet.clone())
        else {
            return Ok(Decision::forget(own.alone(&record)));
        };
        let me = member(self.outbox.agent_id(), own.first_ms);
        let now = unix_now_ms();
        let failed = |mut record: JoinedRecord| {
            let since = *record.failing_since.get_or_insert(now);
            // A reported part may be counted by a taker as soon as Redis answers again:
            // this host sums it up alone only once its keys have surely expired.
            let give_up = if record.reported {
                Duration::from_millis(u64::try_from(record.window_ms).unwrap_or(0))
                    + crate::fleet::windows::KEEP
                    + crate::fleet::windows::SETTLE
                    + crate::fleet::windows::LEASE
            } else {
                GIVE_UP
            };
            if now.saturating_sub(since) >= millis(give_up) {
                tracing::info!(
                    rule,
                    "Fleet: Redis cannot decide this window's summary; posting this host's own."
                );
                Decision::forget(own.alone(&record))
            } else {
                Decision::save(RowOutcome::Later(now + millis(RETRY)), record)
            }
        };
        if !record.reported {
            let age = age_of(own.last_ms);
            match fleet
                .report_window(
                    &me,
                    rule,
                    key,
                    fleet_first_ms,
                    own.count,
                    age,
                    own.last_line,
                )
                .await
            {
                Ok(Report::Counted) => {
                    record.reported = true;
                    record.failing_since = None;
                }
                // The summary went out without this part: its first occurrence was
                // counted when it joined, its repeats go into a summary of its own.
                Ok(Report::Closed) => {
                    return Ok(Decision::forget(own.outcome(false, &record.first_line)));
                }
                Ok(Report::Lost) => {
                    return Ok(Decision::forget(own.alone(&record)));
                }
                Err(_) => return Ok(failed(record)),
            }
        }
        let joined = Joined {
            owner: record.owner,
            first_ms: fleet_first_ms,
            window_ms: record.window_ms,
        };
        Ok(match fleet.take_summary(&me, rule, key, &joined).await {
            Ok(Take::Totals(totals)) => {
                if !record.owner {
                    tracing::info!(
                        rule,
                        "Fleet: the window's owner posted no summary; posting it instead."
                    );
                }
                if totals.more == 0 {
                    Decision::forget(RowOutcome::Drop)
                } else {
                    Decision::forget(RowOutcome::Post(Some(summary_text(
                        rule,
                        totals.more,
                        totals.span_ms,
                        &totals.last_line,
                        (&totals.named, totals.hosts),
                    ))))
                }
            }
            Ok(Take::Taken) => Decision::forget(RowOutcome::Drop),
            // Taken without this part's repeats: its first was counted when it joined.
            Ok(Take::Closed) => Decision::forget(own.outcome(false, &record.first_line)),
            Ok(Take::Missing) => Decision::forget(own.alone(&record)),
            Ok(Take::Lost) => Decision::forget(own.alone(&record)),
            Ok(Take::Wait(wait)) => {
                record.failing_since = None;
                let longest = if record.owner {
                    OWNER_MAX_WAIT
                } else {
                    MAX_WAIT
                };
                let wait = wait.clamp(Duration::from_millis(50), longest);
                Decision::save(RowOutcome::Later(now + millis(wait)), record)
            }
            Err(_) => failed(record),
        })
    }
}

/// A local window's summary as this host alone knows it.
struct OwnSummary<'a> {
    rule: &'a str,
    first_ms: i64,
    count: u64,
    last_ms: i64,
    last_line: &'a str,
}

impl OwnSummary<'_> {
    /// This host's own summary of the local window `record` describes: its first
    /// occurrence counts too when another host posted that one.
    fn alone(&self, record: &JoinedRecord) -> RowOutcome {
        self.outcome(!record.owner, &record.first_line)
    }

    /// This host's own summary: its repeats, and its first occurrence too when another
    /// host posted that one (`unposted_first`, whose line was `first_line`). Nothing to
    /// say (a window that counted nothing) drops the row.
    fn outcome(&self, unposted_first: bool, first_line: &str) -> RowOutcome {
        let count = self.count + u64::from(unposted_first);
        if count == 0 {
            return RowOutcome::Drop;
        }
        if !unposted_first {
            // The row's own text is this summary already.
            return RowOutcome::Post(None);
        }
        let (span, line) = if self.count == 0 {
            (0, first_line)
        } else {
            (self.last_ms - self.first_ms, self.last_line)
        };
        RowOutcome::Post(Some(summary_text(self.rule, count, span, line, (&[], 0))))
    }
}

/// How long ago (this host's clock) `at_ms` was; what Redis is told instead of a time.
fn age_of(at_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(unix_now_ms().saturating_sub(at_ms)).unwrap_or(0))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
