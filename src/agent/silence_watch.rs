//! The silences the ingest loop applies: read from the store every second (where the
//! `silence` commands and the fleet sync write them), compiled and handed to the
//! pipeline when they changed. Ended silences are kept a day for `silence list`, then
//! pruned.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::unix_now_ms;
use crate::ops::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::silences::{KEPT_AFTER_END, Silence, SilenceSet};
use crate::store::silences::SilenceRow;
use crate::store::{Store, StoreError};

/// How often the store is read: a silence applies within this (plus the fleet sync's
/// own second in fleet mode).
const CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(super) struct SilenceWatch {
    last_check: Option<Instant>,
    rows: Vec<SilenceRow>,
    /// Ids of the silences active at the last check, to log starts and ends once.
    active: Vec<String>,
}

impl SilenceWatch {
    /// Reads the silences if a second has passed (or `now` is asked), and hands them to
    /// the pipeline when they changed.
    pub(super) fn refresh(
        &mut self,
        store: &Store,
        pipeline: &mut Pipeline,
        metrics: &Metrics,
        force: bool,
    ) -> Result<(), StoreError> {
        if !force && self.last_check.is_some_and(|at| at.elapsed() < CHECK_EVERY) {
            return Ok(());
        }
        self.last_check = Some(Instant::now());
        let now_ms = unix_now_ms();
        let kept_ms = i64::try_from(KEPT_AFTER_END.as_millis()).unwrap_or(i64::MAX);
        if let Err(error) = store.prune_silences(now_ms.saturating_sub(kept_ms)) {
            // Ended silences stay a little longer; reading what is there matters more.
            tracing::debug!(%error, "Cannot prune ended silences now.");
        }
        let rows = store.saved_silences()?;
        let active_now: Vec<String> = rows
            .iter()
            .filter(|r| now_ms < r.ends_ms)
            .map(|r| r.id.clone())
            .collect();
        metrics
            .silences_active
            .set(i64::try_from(active_now.len()).unwrap_or(i64::MAX));
        if rows == self.rows && active_now == self.active {
            return Ok(());
        }
        let mut records = Vec::new();
        for row in &rows {
            match serde_json::from_str::<Silence>(&row.record) {
                Ok(record) => records.push(record),
                Err(error) => {
                    if !self.rows.iter().any(|r| r == row) {
                        tracing::warn!(silence = %row.id, %error, "A stored silence cannot be read; it is not applied.");
                    }
                }
            }
        }
        let (set, refused) = SilenceSet::compile(records);
        for (id, why) in refused {
            if !self.rows.iter().any(|r| r.id == id) {
                tracing::warn!(silence = %id, reason = %why, "A silence cannot be applied.");
            }
        }
        for id in &active_now {
            if !self.active.contains(id)
                && let Some(s) = set.get(id)
            {
                tracing::info!(silence = %id, matchers = %s.matchers_text(), comment = %s.comment, ends_in_s = (s.ends_ms - now_ms) / 1000, "A silence holds back alerts.");
            }
        }
        for id in &self.active {
            if !active_now.contains(id) {
                tracing::info!(silence = %id, "A silence ended; what it held back is posted in each thread.");
            }
        }
        pipeline.set_silences(Arc::new(set));
        self.rows = rows;
        self.active = active_now;
        Ok(())
    }
}
