//! Fleet mode's silences: once a second, the agent's copy of the namespace's silences is
//! brought in line with Redis (one script step): records Redis has that are newer than
//! the local copy are stored (the ingest loop applies them within its next second), the
//! active ones this host holds and Redis lost are written back, and what this host held
//! back is reported for `silence list`. Redis away: the copy last seen stays applied until
//! each silence ends, which is logged once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::unix_now_ms;
use crate::fleet::{Fleet, FleetError};
use crate::ops::health::WorkerGuard;
use crate::silences::{KEPT_AFTER_END, MAX_SILENCE, Silence};
use crate::store::StoreError;
use crate::store::silences::{SilenceRow, SilenceStore};

/// How often Redis is asked: with the ingest loop's own second, a silence added on one
/// host applies on every other within 2 s.
const SYNC_EVERY: Duration = Duration::from_secs(1);

pub(super) struct SilenceSync {
    pub fleet: Arc<Fleet>,
    pub db: PathBuf,
    pub host: String,
    pub stop: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
    pub _running: WorkerGuard,
}

impl SilenceSync {
    pub(super) async fn run(mut self) {
        let mut store = match SilenceStore::open_file(&self.db) {
            Ok(store) => Some(store),
            Err(error) => {
                tracing::error!(%error, "Fleet: cannot open the state database for silences; silences added through Redis are not applied on this host.");
                return;
            }
        };
        let mut failing = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(SYNC_EVERY) => {}
                _ = self.stop.changed() => return,
            }
            if self.stop.borrow().is_some() {
                return;
            }
            match self.sync(&mut store).await {
                Ok(()) => {
                    if failing {
                        failing = false;
                        tracing::info!("Fleet: silences are read from Redis again.");
                    }
                }
                Err(SyncError::Fleet(FleetError::Waiting)) => {}
                Err(error) => {
                    if !failing {
                        failing = true;
                        let active =
                            store
                                .as_ref()
                                .and_then(|s| s.silences().ok())
                                .map_or(0, |rows| {
                                    let now = unix_now_ms();
                                    rows.iter().filter(|r| now < r.ends_ms).count()
                                });
                        tracing::warn!(%error, active, "Fleet: cannot read the silences from Redis; the silences last seen stay applied until they end.");
                    }
                }
            }
        }
    }

    /// One round: the local copy read, Redis asked, its answer stored. The database is
    /// only touched before and after the await (a connection is not shared across it).
    async fn sync(&self, store: &mut Option<SilenceStore>) -> Result<(), SyncError> {
        // SQLite may wait for the ingest loop's transaction: off the async threads.
        let (active, counts) = match store {
            Some(s) => tokio::task::block_in_place(|| local_state(s))?,
            None => return Ok(()),
        };
        let records = self
            .fleet
            .sync_silences(&self.host, &active, &counts, KEPT_AFTER_END)
            .await?;
        if let Some(s) = store {
            tokio::task::block_in_place(|| store_records(s, records))?;
        }
        Ok(())
    }
}

/// The records this host holds (active, and ended within the day they are kept), and
/// what it held back per silence.
#[allow(clippy::type_complexity)]
fn local_state(
    store: &SilenceStore,
) -> Result<(Vec<(String, String, i64)>, Vec<(String, u64, i64)>), StoreError> {
    let active = store
        .silences()?
        .into_iter()
        .map(|r| (r.id, r.record, r.revision))
        .collect();
    let mut counts: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for c in store.held_counts()? {
        let entry = counts.entry(c.silence).or_insert((0, c.last_ms));
        entry.0 += c.held;
        entry.1 = entry.1.max(c.last_ms);
    }
    let counts = counts
        .into_iter()
        .map(|(id, (held, last))| (id, held, last))
        .collect();
    Ok((active, counts))
}

/// Stores the records Redis answered where they are newer than the local copy.
fn store_records(store: &SilenceStore, records: Vec<String>) -> Result<(), StoreError> {
    for record in records {
        let Ok(mut silence) = serde_json::from_str::<Silence>(&record) else {
            // Written by hand or by a newer version: not ours to apply.
            continue;
        };
        // Whatever a record says, it ends within the longest silence from now.
        let longest = i64::try_from(MAX_SILENCE.as_millis()).unwrap_or(i64::MAX);
        silence.ends_ms = silence.ends_ms.min(unix_now_ms().saturating_add(longest));
        store.put(&SilenceRow {
            id: silence.id,
            record,
            ends_ms: silence.ends_ms,
            revision: silence.revision,
        })?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
