//! Fleet mode's records in the outbox (see `deliver::fleet_windows`): which queued rows
//! still wait for a fleet decision, when to look at them again, and which fleet window
//! each local burst window joined. A decision and the record it leaves are written in one
//! transaction, so a crash between the two never happens: after a restart the decision is
//! either made (and posted as made, however often the post is retried) or made again.

use rusqlite::{OptionalExtension, params};

use super::StoreError;
use super::outbox::Outbox;

/// A queued row that waits for a fleet decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecided {
    pub id: i64,
    pub rule: String,
    /// Its burst mark, as JSON (`pipeline::rules::BurstMark`).
    pub burst: String,
    pub created_ms: i64,
}

/// The fleet window a local window joined (a row of `fleet_windows`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedRecord {
    /// When the fleet window started (Redis' clock); `None` when Redis could not be
    /// asked and the first occurrence was posted here, as without fleet mode.
    pub fleet_first_ms: Option<i64>,
    pub window_ms: i64,
    /// This local window's first occurrence was posted here: it is the fleet window's
    /// first message, or Redis could not be asked. Otherwise another host posted its own
    /// and this one is counted in the fleet window.
    pub owner: bool,
    /// That first occurrence's line, for a summary of this host's own.
    pub first_line: String,
    /// Its repeats are in the fleet window (the summary row reported them).
    pub reported: bool,
    /// Since when (this host's clock) Redis has failed the summary's decision.
    pub failing_since: Option<i64>,
}

/// What becomes of an undecided row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    /// Post it, with this text instead of its own when given.
    Post(Option<String>),
    /// Another host posts for the fleet, or there is nothing to say: remove it.
    Drop,
    /// Look at it again at this time (unix milliseconds, this host's clock).
    Later(i64),
}

/// What becomes of the record of the row's local window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowChange<'a> {
    Keep,
    Save(&'a JoinedRecord),
    Forget,
}

impl Outbox {
    /// The oldest row that waits for a fleet decision due by `now_ms`.
    pub fn next_undecided(&mut self, now_ms: i64) -> Result<Option<Undecided>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id, rule, burst, created_ms FROM outbox WHERE burst IS NOT NULL AND dead = 0
                 AND batch IS NULL AND not_before_ms <= ?1 ORDER BY id LIMIT 1",
            )?
            .query_row(params![now_ms], |r| {
                Ok(Undecided {
                    id: r.get(0)?,
                    rule: r.get(1)?,
                    burst: r.get(2)?,
                    created_ms: r.get(3)?,
                })
            })
            .optional()?)
    }

    /// Whether any row waits for a decision.
    pub fn has_undecided(&mut self) -> Result<bool, StoreError> {
        Ok(self.next_decision_ms()?.is_some())
    }

    /// When the next decision is due, if any row waits for one.
    pub fn next_decision_ms(&mut self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT MIN(not_before_ms) FROM outbox WHERE burst IS NOT NULL AND dead = 0 AND batch IS NULL",
            )?
            .query_row([], |r| r.get(0))?)
    }

    /// The fleet window the local window (`rule`, `key`, `local_first_ms`) joined.
    pub fn joined_window(
        &mut self,
        rule: &str,
        key: &str,
        local_first_ms: i64,
    ) -> Result<Option<JoinedRecord>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT fleet_first_ms, window_ms, owner, first_line, reported, failing_since
                 FROM fleet_windows WHERE rule = ?1 AND key = ?2 AND local_first_ms = ?3",
            )?
            .query_row(params![rule, key, local_first_ms], |r| {
                Ok(JoinedRecord {
                    fleet_first_ms: r.get(0)?,
                    window_ms: r.get(1)?,
                    owner: r.get(2)?,
                    first_line: r.get(3)?,
                    reported: r.get(4)?,
                    failing_since: r.get(5)?,
                })
            })
            .optional()?)
    }

    /// Records a decision about row `id` and what it leaves of the record of its local
    /// window (`rule`, `key`, `local_first_ms`), in one transaction.
    pub fn record_decision(
        &mut self,
        id: i64,
        outcome: &RowOutcome,
        window: (&str, &str, i64),
        change: &WindowChange<'_>,
    ) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        match outcome {
            RowOutcome::Post(text) => {
                tx.prepare_cached(
                    "UPDATE outbox SET burst = NULL, not_before_ms = 0, text = COALESCE(?2, text) WHERE id = ?1",
                )?
                .execute(params![id, text])?;
            }
            RowOutcome::Drop => {
                tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
                    .execute(params![id])?;
            }
            RowOutcome::Later(at) => {
                tx.prepare_cached("UPDATE outbox SET not_before_ms = ?2 WHERE id = ?1")?
                    .execute(params![id, at])?;
            }
        }
        let (rule, key, local_first_ms) = window;
        match change {
            WindowChange::Keep => {}
            WindowChange::Save(w) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO fleet_windows (rule, key, local_first_ms, fleet_first_ms, window_ms,
                     owner, first_line, reported, failing_since, created_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,
                       COALESCE((SELECT created_ms FROM fleet_windows WHERE rule = ?1 AND key = ?2 AND local_first_ms = ?3), ?10))",
                )?
                .execute(params![
                    rule,
                    key,
                    local_first_ms,
                    w.fleet_first_ms,
                    w.window_ms,
                    w.owner,
                    w.first_line,
                    w.reported,
                    w.failing_since,
                    crate::clock::unix_now_ms(),
                ])?;
            }
            WindowChange::Forget => {
                tx.prepare_cached(
                    "DELETE FROM fleet_windows WHERE rule = ?1 AND key = ?2 AND local_first_ms = ?3",
                )?
                .execute(params![rule, key, local_first_ms])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets the records of local windows older than `before_ms` whose summary never
    /// came (their state was lost): a window lasts at most seven days.
    pub fn forget_fleet_windows_before(&mut self, before_ms: i64) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM fleet_windows WHERE created_ms < ?1")?
            .execute(params![before_ms])?)
    }
}
