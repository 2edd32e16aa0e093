//! The journal beside the files in the ingest loop: entries to pipeline lines, and the
//! position committed with what they caused.
//!
//! An entry becomes a line of the pseudo-file `journal:UNIT` (what `{file}` renders and
//! what rules' `units:` filters read), with a file id per unit so that multiline events
//! and context lines group per unit. Its position (the `journalctl` cursor) follows the
//! files' rule: committed in the transaction that queues the notifications of the entries
//! before it, and for entries that changed nothing, within a second.

use std::path::PathBuf;

use super::reports::PollOutput;
use crate::config::{Config, JOURNAL_PREFIX, JOURNAL_SPEC, Journal};
use crate::journal::{Entry, JournalReader, ReaderEvent, ReaderOptions, Start};
use crate::ops::health::Health;
use crate::ops::metrics::{Metrics, ReasonLabel};
use crate::pipeline::{FileId, Origin, Pipeline};
use crate::store::{Store, StoreError, StoreTx};

/// The device number of journal entries' file ids; no file system uses it.
const JOURNAL_DEV: u64 = u64::MAX;

/// The journal as the ingest loop reads it.
#[derive(Debug)]
pub(super) struct JournalSource {
    reader: JournalReader,
    /// Where its position is saved (the directory, or `system`).
    key: String,
    /// The reader's cut of messages (`journal.max_line_bytes`).
    max_message: usize,
    /// The position in the state database.
    committed: Option<String>,
    /// Entries since the last commit changed the state: the position goes with it.
    changed: bool,
    /// `journal:UNIT` of the entry at hand, reused.
    path: PathBuf,
    /// Why `journalctl` could not be started, while it never has been.
    never_started: Option<String>,
    started_once: bool,
}

/// How `config`'s journal is read: following (`run`) or to its end (`--once`).
pub(super) fn reader_options(journal: &Journal, follow: bool) -> ReaderOptions {
    ReaderOptions {
        directory: journal.directory.clone(),
        start: match journal.start_at {
            crate::config::StartAt::End => Start::End,
            crate::config::StartAt::Beginning => Start::Beginning,
        },
        follow,
        max_message: journal.max_line_bytes,
        program: PathBuf::from(
            std::env::var_os("CHATTAIL_JOURNALCTL").unwrap_or_else(|| "journalctl".into()),
        ),
    }
}

impl JournalSource {
    /// The source of `config`'s `journal:`, resuming at its saved position.
    pub(super) fn new(
        config: &Config,
        store: &Store,
        follow: bool,
    ) -> Result<Option<Self>, StoreError> {
        let Some(journal) = &config.journal else {
            return Ok(None);
        };
        let key = journal.position_key();
        let committed = store.saved_journal_position(&key)?;
        Ok(Some(Self {
            reader: JournalReader::new(reader_options(journal, follow), committed.clone()),
            key,
            max_message: journal.max_line_bytes,
            committed,
            changed: false,
            path: PathBuf::new(),
            never_started: None,
            started_once: false,
        }))
    }

    /// Whether this source reads what `journal` configures (else it is made anew, from
    /// the position a reload's switch has just committed).
    pub(super) fn reads(&self, journal: &Journal) -> bool {
        self.key == journal.position_key() && self.max_message == journal.max_line_bytes
    }

    /// The pipe to wait on.
    pub(super) fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        self.reader.wait_fd()
    }

    /// Without following: whether everything has been read.
    pub(super) fn is_finished(&self) -> bool {
        self.reader.is_finished()
    }

    /// Reads up to `budget` bytes of entries into the pipeline. Returns whether more is
    /// waiting.
    pub(super) fn poll(
        &mut self,
        config: &Config,
        pipeline: &mut Pipeline,
        now_ms: i64,
        budget: usize,
        out: &mut PollOutput<'_>,
    ) -> bool {
        let Some(journal) = &config.journal else {
            return false;
        };
        let multiline = journal.multiline.is_some();
        let path = &mut self.path;
        let changed = &mut self.changed;
        let mut entries = 0u64;
        let mut cut = 0u64;
        let more = self.reader.poll(budget, &mut |entry: &Entry| {
            entries += 1;
            let Some(message) = &entry.message else {
                return;
            };
            if !journal.reads_unit(&entry.unit) {
                return;
            }
            if entry.message_cut {
                cut += 1;
            }
            // `journal:UNIT`, built in the reused buffer (no allocation per entry).
            let text = path.as_mut_os_string();
            text.clear();
            text.push(JOURNAL_PREFIX);
            text.push(&entry.unit);
            let origin = Origin {
                id: FileId {
                    dev: JOURNAL_DEV,
                    ino: crate::pipeline::journal_fields::unit_file_number(&entry.unit),
                },
                path,
                spec: JOURNAL_SPEC,
                number: 0,
                stream: None,
                journal: Some(&entry.fields),
            };
            let before = out.effects();
            pipeline.line(&origin, message, now_ms, out);
            if multiline || out.effects() != before {
                *changed = true;
            }
        });
        out.journal_read(entries, cut);
        more
    }

    /// Saves the position in `tx` when it moved and must (entries changed the state) or
    /// may (`due`: quiet positions are due) go now. Returns whether it did.
    pub(super) fn save_position(&self, tx: &StoreTx<'_>, due: bool) -> Result<bool, StoreError> {
        let Some(position) = self.reader.position() else {
            return Ok(false);
        };
        if self.committed.as_deref() == Some(position)
            || !(self.changed || due || self.committed.is_none())
        {
            return Ok(false);
        }
        tx.save_journal_position(&self.key, position)?;
        Ok(true)
    }

    /// Whether the position must be committed now: it moved past what is committed and
    /// entries changed the state, or quiet positions are `due`, or none was ever saved
    /// (the end a fresh start found: a restart must not find a later one).
    pub(super) fn position_due(&self, due: bool) -> bool {
        let moved =
            self.reader.position().is_some() && self.reader.position() != self.committed.as_deref();
        moved && (self.changed || due || self.committed.is_none())
    }

    /// Whether what the journal held when reading began has been read.
    pub(super) fn caught_up(&self) -> bool {
        self.reader.caught_up()
    }

    /// Without following: why reading the journal failed.
    pub(super) fn failure(&self) -> Option<&str> {
        self.reader.failure()
    }

    /// Why `journalctl` cannot be started, while it never could: with no files, the agent
    /// has nothing to read.
    pub(super) fn cannot_start(&self) -> Option<&str> {
        self.never_started.as_deref()
    }

    /// The transaction that saved the position committed.
    pub(super) fn committed(&mut self) {
        self.committed = self.reader.position().map(str::to_owned);
        self.changed = false;
    }

    /// After a failed commit: read again from the saved position.
    pub(super) fn restore(&mut self, store: &Store) -> Result<(), StoreError> {
        self.committed = store.saved_journal_position(&self.key)?;
        self.changed = false;
        self.reader.restart_at(self.committed.clone());
        Ok(())
    }

    /// Logs, counts and records in health what happened to the reader.
    pub(super) fn report(&mut self, metrics: &Metrics, health: &Health) {
        for event in self.reader.take_events() {
            match event {
                ReaderEvent::Started { pid, from } => {
                    self.started_once = true;
                    self.never_started = None;
                    tracing::info!(pid, "Reading the journal from {from}.");
                }
                ReaderEvent::Gap { skipped } => {
                    metrics.journal_gaps.inc();
                    match skipped {
                        Some(n) => tracing::warn!(
                            skipped = n,
                            "The journal no longer holds the entry reading stopped at (rotated or vacuumed while chattail was down): reading resumes at the oldest entry after it; {n} entries may have been skipped."
                        ),
                        None => tracing::warn!(
                            "The journal no longer holds the entry reading stopped at (rotated or vacuumed while chattail was down): reading resumes at the oldest entry after it; how many entries were skipped cannot be told."
                        ),
                    }
                }
                ReaderEvent::CannotStart { error } => {
                    metrics
                        .journal_restarts
                        .get_or_create(&ReasonLabel {
                            reason: "cannot_start",
                        })
                        .inc();
                    tracing::error!(
                        "Cannot read the journal: {error}. Files are still followed; retrying."
                    );
                    if !self.started_once {
                        self.never_started = Some(error.clone());
                    }
                    health.set_journal_failing(Some(error));
                }
                ReaderEvent::Exited {
                    why,
                    said,
                    retry_in,
                } => {
                    metrics
                        .journal_restarts
                        .get_or_create(&ReasonLabel {
                            reason: why.label(),
                        })
                        .inc();
                    let what = match &why {
                        crate::journal::ExitReason::Exited(status) => {
                            format!("journalctl ended ({status})")
                        }
                        crate::journal::ExitReason::Stuck => format!(
                            "journalctl sent half an entry and nothing more for {} s",
                            crate::journal::STUCK_AFTER.as_secs()
                        ),
                        crate::journal::ExitReason::Malformed(e) => {
                            format!("journalctl wrote something that is not export format ({e})")
                        }
                    };
                    let said = said.lines().last().unwrap_or("").to_owned();
                    tracing::error!(said = %said, "{what}; starting it again in {} s from where reading stopped.", retry_in.as_secs());
                    let why = if said.is_empty() {
                        what
                    } else {
                        format!("{what}: {said}")
                    };
                    health.set_journal_failing(Some(why));
                }
                ReaderEvent::Said(line) => {
                    tracing::warn!(said = %line, "journalctl says something.");
                    // An unprivileged journalctl runs, but shows only its own user's
                    // entries: that is a journal that cannot be read as configured.
                    let lower = line.to_ascii_lowercase();
                    if lower.contains("permission") || lower.contains("not seeing messages") {
                        health.set_journal_failing(Some(format!(
                            "journalctl lacks permission and reads only part of the journal (add the agent's user to group systemd-journal): {line}"
                        )));
                    }
                }
                ReaderEvent::Working => {
                    tracing::info!("The journal is read again.");
                    health.set_journal_failing(None);
                }
            }
        }
    }
}
