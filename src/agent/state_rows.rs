//! The agent's translation between the store's plain rows and the tailer's and the
//! pipeline's own types. Neither side knows the other; this is where they meet.

use crate::pipeline::alerts::{AlertState, Kind};
use crate::pipeline::decode::{Partial, PartialChange, Stream};
use crate::pipeline::{AlertRow, Changes, Event, EventChange, FileId, Notification, Window};
use crate::store::{
    AlertStateRow, EventGrowth, EventRow, FileRow, NewNotification, PartialRow, Store, StoreError,
    StoreTx, WindowRow,
};
use crate::tail::{Checkpoint, FileKey, SavedFile};

/// A file's identity for the pipeline.
pub fn file_id(key: FileKey) -> FileId {
    FileId {
        dev: key.dev,
        ino: key.ino,
    }
}

/// The saved positions, for a tailer to resume from.
pub fn saved_files(store: &Store) -> Result<Vec<SavedFile>, StoreError> {
    Ok(to_saved_files(store.saved_files()?))
}

/// The positions a transaction sees, before it commits.
pub fn saved_files_in(tx: &StoreTx<'_>) -> Result<Vec<SavedFile>, StoreError> {
    Ok(to_saved_files(tx.saved_files()?))
}

fn to_saved_files(rows: Vec<FileRow>) -> Vec<SavedFile> {
    rows.into_iter()
        .map(|r| SavedFile {
            key: FileKey {
                dev: r.dev,
                ino: r.ino,
            },
            path: r.path,
            prefix: r.prefix,
            offset: r.offset,
            skipping: r.skipping,
            released: r.released,
        })
        .collect()
}

/// Records one tailer checkpoint: a file's new position, its release, or its end.
pub fn record(tx: &StoreTx<'_>, checkpoint: &Checkpoint) -> Result<(), StoreError> {
    match checkpoint {
        Checkpoint::Progress(f) => tx.save_file(&FileRow {
            dev: f.key.dev,
            ino: f.key.ino,
            path: f.path.clone(),
            prefix: f.prefix.clone(),
            offset: f.offset,
            skipping: f.skipping,
            released: f.released,
        }),
        Checkpoint::Released(key) => tx.release_file(key.dev, key.ino),
        Checkpoint::Forget(key) => tx.forget_file(key.dev, key.ino),
    }
}

/// Records the tailer's checkpoints in a transaction of their own (for tools and tests
/// that drive a tailer without a pipeline).
pub fn commit_checkpoints(store: &mut Store, checkpoints: &[Checkpoint]) -> Result<(), StoreError> {
    let tx = store.transaction()?;
    for checkpoint in checkpoints {
        record(&tx, checkpoint)?;
    }
    tx.commit()
}

/// The open burst windows, for a pipeline to resume.
pub fn saved_windows(store: &Store) -> Result<Vec<Window>, StoreError> {
    Ok(store
        .saved_windows()?
        .into_iter()
        .map(|r| Window {
            rule: r.rule,
            key: r.key,
            webhook: r.webhook,
            thread_key: r.thread_key,
            first_ms: r.first_ms,
            last_ms: r.last_ms,
            count: r.count,
            last_line: r.last_line,
        })
        .collect())
}

/// The rules' threshold counters, incidents and heartbeats, for a pipeline to resume. A
/// row that does not parse (written by a newer version) is left out, with a warning.
pub fn saved_alerts(store: &Store) -> Result<Vec<AlertRow>, StoreError> {
    Ok(store
        .saved_alerts()?
        .into_iter()
        .filter_map(|r| match serde_json::from_str::<AlertState>(&r.state) {
            Ok(state) if alert_kind(&state).name() == r.kind => Some(AlertRow {
                rule: r.rule,
                key: r.key,
                state,
            }),
            _ => {
                tracing::warn!(rule = %r.rule, kind = %r.kind, "A stored alert state cannot be read; it is forgotten.");
                None
            }
        })
        .collect())
}

fn alert_kind(state: &AlertState) -> Kind {
    match state {
        AlertState::Threshold { .. } => Kind::Threshold,
        AlertState::Incident(_) => Kind::Incident,
        AlertState::Heartbeat(_) => Kind::Heartbeat,
        AlertState::Held(_) => Kind::Held,
    }
}

/// The pending multiline events, for a pipeline to resume.
pub fn saved_events(store: &Store) -> Result<Vec<Event>, StoreError> {
    Ok(store
        .saved_events()?
        .into_iter()
        .map(|r| Event {
            key: FileId {
                dev: r.dev,
                ino: r.ino,
            },
            path: r.path,
            spec: r.spec,
            bytes: r.bytes,
            lines: r.lines,
            cut_lines: r.cut_lines,
            last_ms: r.last_ms,
            first_number: 0,
            last_number: 0,
            stream: None,
            journal: None,
        })
        .collect())
}

/// Container logs' lines pending in pieces, for a pipeline to resume.
pub fn saved_partials(store: &Store) -> Result<Vec<Partial>, StoreError> {
    Ok(store
        .saved_partials()?
        .into_iter()
        .map(|r| Partial {
            key: FileId {
                dev: r.dev,
                ino: r.ino,
            },
            stream: match r.stream.as_str() {
                "stdout" => Some(Stream::Stdout),
                "stderr" => Some(Stream::Stderr),
                _ => None,
            },
            bytes: r.bytes,
            cut: r.cut,
            path: r.path,
            spec: r.spec,
            last_ms: r.last_ms,
        })
        .collect())
}

/// Stores what the pipeline changed: burst windows, pending events, pending pieces.
pub fn save_changes(tx: &StoreTx<'_>, changes: &Changes) -> Result<(), StoreError> {
    for row in &changes.alerts {
        tx.save_alert(&AlertStateRow {
            kind: alert_kind(&row.state).name().to_owned(),
            rule: row.rule.clone(),
            key: row.key.clone(),
            // Plain data (strings and numbers) always serialises.
            state: serde_json::to_string(&row.state).unwrap_or_default(),
        })?;
    }
    for (kind, rule, key) in &changes.removed_alerts {
        tx.remove_alert(kind.name(), rule, key)?;
    }
    for ((silence, rule), (held, last_ms)) in &changes.held_counts {
        tx.add_held(silence, rule, *held, *last_ms)?;
    }
    for w in &changes.windows {
        tx.save_window(&WindowRow {
            rule: w.rule.clone(),
            key: w.key.clone(),
            webhook: w.webhook.clone(),
            thread_key: w.thread_key.clone(),
            first_ms: w.first_ms,
            last_ms: w.last_ms,
            count: w.count,
            last_line: w.last_line.clone(),
        })?;
    }
    for (rule, key) in &changes.closed_windows {
        tx.remove_window(rule, key)?;
    }
    for change in &changes.events {
        match change {
            EventChange::Whole(e) => tx.save_event(&EventRow {
                dev: e.key.dev,
                ino: e.key.ino,
                path: e.path.clone(),
                spec: e.spec,
                bytes: e.bytes.clone(),
                lines: e.lines,
                cut_lines: e.cut_lines,
                last_ms: e.last_ms,
            })?,
            EventChange::Grew {
                key,
                appended,
                spec,
                lines,
                cut_lines,
                last_ms,
            } => tx.grow_event(&EventGrowth {
                dev: key.dev,
                ino: key.ino,
                appended,
                spec: *spec,
                lines: *lines,
                cut_lines: *cut_lines,
                last_ms: *last_ms,
            })?,
            EventChange::Gone(key) => tx.remove_event(key.dev, key.ino)?,
        }
    }
    for change in &changes.partials {
        match change {
            PartialChange::Saved(p) => tx.save_partial(&PartialRow {
                dev: p.key.dev,
                ino: p.key.ino,
                stream: p.stream.map_or("", Stream::name).to_owned(),
                path: p.path.clone(),
                spec: p.spec,
                bytes: p.bytes.clone(),
                cut: p.cut,
                last_ms: p.last_ms,
            })?,
            PartialChange::Gone(key, stream) => {
                tx.remove_partial(key.dev, key.ino, stream.map_or("", Stream::name))?
            }
        }
    }
    Ok(())
}

/// Queues a notification.
pub fn enqueue(tx: &StoreTx<'_>, n: &Notification) -> Result<(), StoreError> {
    let burst = n
        .burst
        .as_ref()
        .and_then(|mark| serde_json::to_string(mark).ok());
    tx.enqueue(&NewNotification {
        rule: &n.rule,
        webhook: &n.webhook,
        thread_key: &n.thread_key,
        text: &n.text,
        burst: burst.as_deref(),
        card: n.card.as_deref(),
    })
}
