//! Reloading: the supervisor loads and validates the new config file (SIGHUP or
//! `--watch-config`), replaces delivery when webhooks or delivery settings changed, and
//! hands the config to the ingest thread, which switches between two polls.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use super::ingest::{Ingest, tail_options};
use super::journal_source::JournalSource;
use super::reports::TailMetrics;
use super::state_rows;
use super::supervisor::{
    DeliveryGeneration, Supervisor, delivery_changed, notify_systemd, running_status,
};
use crate::config::{self, Config, UrlPolicy};
use crate::deliver::WorkerContext;
use crate::store::StoreError;
use crate::tail::{Checkpoint, FileKey, Tailer};

impl Supervisor {
    /// Whether the config file's bytes differ from those last loaded or tried (a file
    /// that failed to load is not tried again until it changes).
    pub(super) async fn config_file_changed(&mut self) -> bool {
        let path = self.config.source_path.clone();
        let digest = tokio::task::spawn_blocking(move || std::fs::read(path).ok())
            .await
            .ok()
            .flatten()
            .map(|bytes| config::digest(&bytes));
        // A file being replaced may be missing for a moment; the next look decides.
        digest.is_some_and(|d| d != self.config_digest)
    }

    /// Loads and validates the config file again. If it is valid it replaces the running
    /// one (the run loop switches between two polls; delivery workers are replaced only
    /// when webhooks or delivery settings changed). If not, the errors are logged as
    /// `check` prints them and the running config stays in force.
    pub(super) async fn reload(&mut self) {
        let mut reloading = vec![NotifyState::Reloading];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            reloading.push(now);
        }
        notify_systemd(&reloading);
        let path = self.config.source_path.clone();
        let policy = if self.options.dry_run {
            UrlPolicy::Optional
        } else {
            UrlPolicy::Required
        };
        let attempt = tokio::task::spawn_blocking(move || match config::read_source(&path) {
            Ok(bytes) => (
                Some(config::digest(&bytes)),
                config::load_source(&path, &bytes, policy),
            ),
            Err(report) => (None, Err(report)),
        })
        .await;
        match attempt {
            Ok((_, Ok(loaded))) => {
                if !loaded.warnings.items().is_empty() {
                    tracing::warn!("The new config has warnings:\n{}", loaded.warnings);
                }
                self.apply(loaded.config).await;
            }
            Ok((digest, Err(report))) => {
                // The bytes that failed are not tried again until the file changes.
                if let Some(digest) = digest {
                    self.config_digest = digest;
                }
                self.metrics.config_reload_failures.inc();
                tracing::error!(
                    "The new config is not valid; the running config stays in force.\n{report}"
                );
            }
            Err(_) => {
                self.metrics.config_reload_failures.inc();
                tracing::error!(
                    "Loading the new config failed; the running config stays in force."
                );
            }
        }
        let status = running_status(&self.config);
        notify_systemd(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    async fn apply(&mut self, mut new: Config) {
        self.config_digest = new.source_digest;
        let old = Arc::clone(&self.config);
        // The state directory and the admin socket belong to the process.
        if new.state_dir != old.state_dir {
            tracing::warn!(
                running = %old.state_dir.display(),
                new = %new.state_dir.display(),
                "state_dir changes only at a restart; the running one stays."
            );
            new.state_dir = old.state_dir.clone();
        }
        if new.admin_listen != old.admin_listen {
            tracing::warn!("admin.listen changes only at a restart; the running one stays.");
            new.admin_listen = old.admin_listen;
        }
        let new = Arc::new(new);
        if delivery_changed(&old, &new) {
            // The old workers stop now (a post in flight is sent again, with the same
            // request id, by the new ones), and the new ones keep Chat's pace.
            if let Some(generation) = self.delivery.take() {
                self.health.expect_workers(0);
                generation.finish(tokio::time::Instant::now()).await;
            }
            let context = WorkerContext {
                metrics: self.metrics.clone(),
                health: Arc::clone(&self.health),
                first_send: tokio::time::Instant::now() + Duration::from_secs(1),
                fleet: super::supervisor::fleet_client(&new, &self.metrics, &self.health),
            };
            // Opening the outbox is a blocking SQLite call.
            let started = tokio::task::block_in_place(|| {
                DeliveryGeneration::start(&new, self.db.as_deref(), &self.wake, &context)
            });
            match started {
                Ok(generation) => self.delivery = Some(generation),
                Err(error) => {
                    // Counted as stopped workers: /healthz and /livez say so, and the
                    // systemd watchdog restarts the agent.
                    self.health.expect_workers(new.webhooks.len().max(1));
                    tracing::error!(%error, "Cannot start delivery for the new config; nothing is posted until the next reload or restart.");
                }
            }
            self.health
                .retain_webhooks(|name| new.webhooks.iter().any(|w| w.name == name));
            for gone in old
                .webhooks
                .iter()
                .filter(|w| new.webhook(&w.name).is_none())
            {
                let label = self.metrics.webhook(&gone.name);
                self.metrics.webhook_parked.remove(&label);
                self.metrics.outbox_notifications.remove(&label);
                self.metrics.outbox_oldest_age_seconds.remove(&label);
                tracing::warn!(
                    webhook = %gone.name,
                    "The webhook is no longer configured: notifications queued for it stay in the outbox until a webhook of that name is configured again."
                );
            }
        }
        if let Some(admin) = &self.admin {
            admin.set_webhooks(new.webhooks.iter().map(|w| w.name.clone()).collect());
        }
        if self.reloads.send(Arc::clone(&new)).is_err() {
            tracing::warn!("The run loop has stopped; the new config is not applied to reading.");
        }
        self.metrics.config_reloads.inc();
        super::supervisor::prepare_metrics(&self.metrics, &new);
        tracing::info!(
            files = new.files.len(),
            rules = new.rules.len(),
            webhooks = new.webhooks.len(),
            "Config reloaded."
        );
        self.config = new;
    }
}

impl Ingest {
    /// Switches reading to a new config between two polls, like a restart without the
    /// restart. Everything that can fail happens before the tailer is replaced, so on an
    /// error the caller restores the old config's state and retries:
    ///
    /// 1. What the old tailer holds is read and committed (a deleted file can only be
    ///    read through the handle held now), with every file's position.
    /// 2. Files no longer matched by any glob are recorded as released, so they are not
    ///    read again if their glob comes back; the pipeline re-points pending multiline
    ///    events at their `files` entry in the new config (by pattern), and they are
    ///    stored.
    /// 3. The tailer is rebuilt from the state: configured files resume exactly where they
    ///    were, new globs are picked up (with `start_at`), and files of globs that were
    ///    already followed are read from their start (they appeared while running).
    ///
    /// Burst windows of rules that keep their `dedup` stay open (by rule name); those of
    /// rules that lost it close at the next poll with their summary.
    pub(super) fn switch_config(&mut self, new: Arc<Config>) -> Result<(), StoreError> {
        for _ in 0..100 {
            if !self.step(false)? {
                break;
            }
        }
        self.tailer.checkpoint_all();
        // Every position is committed before the switch: the new rules must not see
        // lines the old ones already read.
        self.all_positions_due = true;
        self.step(false)?;
        let old = Arc::clone(&self.config);
        let released: Vec<FileKey> = self
            .tailer
            .followed()
            .into_iter()
            .filter(|(_, path)| !new.files.iter().any(|f| f.glob.is_match(path)))
            .map(|(key, _)| key)
            .collect();
        // A journal source that reads another journal (or none) is made anew, from its own
        // saved position; one reading the same journal goes on where it is.
        let keep_journal = match (&new.journal, &self.journal) {
            (Some(j), Some(source)) => source.reads(j),
            _ => false,
        };
        // Made before the switch's commit (it reads the store), installed after it, so a
        // failed switch leaves the old source reading under the old config.
        let new_journal = match &new.journal {
            Some(_) if !keep_journal => JournalSource::new(&new, &self.store, !self.options.once)?,
            _ => None,
        };
        self.pipeline.switch_config(Arc::clone(&new));
        let committed = (|| {
            let changes = self.pipeline.take_changes();
            let tx = self.store.transaction()?;
            for key in &released {
                state_rows::record(&tx, &Checkpoint::Released(*key))?;
            }
            state_rows::save_changes(&tx, &changes)?;
            // Read before the commit, so that nothing can fail once it is made.
            let saved = state_rows::saved_files_in(&tx)?;
            tx.commit()?;
            Ok(saved)
        })();
        let saved = match committed {
            Ok(saved) => saved,
            Err(error) => {
                // Nothing was committed: back to the old config; the caller restores
                // windows and events from the state, which this transaction did not
                // change.
                self.pipeline.switch_config(old);
                return Err(error);
            }
        };

        // Nothing below can fail.
        if !keep_journal {
            if new.journal.is_none() {
                self.health.set_journal_failing(None);
            }
            self.journal = new_journal;
        }
        self.config = Arc::clone(&new);
        let mut tailer = Tailer::new(
            tail_options(&new, self.read_budget),
            saved,
            Arc::new(TailMetrics::new(&new, &self.metrics, &self.health)),
        );
        tailer.continue_patterns(old.files.iter().map(|f| f.pattern.clone()));
        self.tailer = tailer;
        // The outbox bound may have changed.
        self.last_outbox_check = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Instant;

    use tokio::sync::watch;

    use super::*;
    use crate::agent::RunOptions;
    use crate::ops::health::Health;
    use crate::ops::metrics::Metrics;
    use crate::pipeline::Notification;
    use crate::store::Store;

    fn config(dir: &std::path::Path, glob: &str, rules: &str) -> Arc<Config> {
        config_starting_at(dir, glob, "end", rules)
    }

    fn config_starting_at(
        dir: &std::path::Path,
        glob: &str,
        start_at: &str,
        rules: &str,
    ) -> Arc<Config> {
        let yaml = format!(
            "state_dir: {state}\nwebhooks:\n  oncall:\n    url: https://chat.googleapis.com/v1/spaces/S/messages?key=k&token=t\nfiles:\n  - path: {glob}\n    start_at: {start_at}\nrules:\n{rules}",
            state = dir.join("state").display(),
            glob = dir.join(glob).display(),
        );
        load_yaml(dir, &yaml)
    }

    fn load_yaml(dir: &std::path::Path, yaml: &str) -> Arc<Config> {
        let env = |_: &str| None;
        let options = config::LoadOptions {
            url_policy: UrlPolicy::Required,
            env: &env,
            default_host: "test".to_owned(),
        };
        let loaded = config::load_bytes(&dir.join("c.yaml"), yaml.as_bytes(), &options)
            .unwrap_or_else(|report| panic!("{report}"));
        Arc::new(loaded.config)
    }

    const ERRORS: &str = "  - name: errors\n    match: ERROR\n    webhook: oncall\n";
    const WARNINGS: &str = "  - name: warnings\n    match: WARN\n    webhook: oncall\n";

    fn append(path: &std::path::Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn ingest(config: &Arc<Config>) -> (Ingest, std::sync::mpsc::Sender<Arc<Config>>) {
        let store = Store::open(&config.state_dir).unwrap();
        let (wake, _) = watch::channel(0);
        let (reload_tx, reload_rx) = std::sync::mpsc::channel();
        let ingest = Ingest::new(
            Arc::clone(config),
            store,
            wake,
            Box::new(std::io::sink()),
            RunOptions::default(),
            (Metrics::default(), Arc::new(Health::default())),
            reload_rx,
        )
        .unwrap();
        (ingest, reload_tx)
    }

    /// Polls until everything on disk is read and committed (the tailer notices growth
    /// through events or its sweep, so this waits for it, with a deadline).
    fn settle(ingest: &mut Ingest) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !ingest.step(false).unwrap() {
                if ingest.tailer.is_idle() {
                    return;
                }
                ingest.tailer.wait(Duration::from_millis(50));
            }
        }
        panic!("the tailer did not settle");
    }

    /// Lines written after the last poll and before a reload are not lost, even those of
    /// a file deleted meanwhile (delete + recreate rotation): the old tailer reads them
    /// through the handle it still holds before it is replaced.
    #[test]
    fn lines_written_just_before_a_reload_are_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        append(&log, "old ERROR, before the start\n");
        let old = config(dir.path(), "*.log", ERRORS);
        let (mut ingest, _reloads) = ingest(&old);
        settle(&mut ingest);
        assert_eq!(ingest.store.outbox_len().unwrap(), 0, "start_at: end");
        append(&log, "ERROR written just before the reload\n");
        std::fs::remove_file(&log).unwrap();
        append(&log, "ERROR in the new file\n");
        let new = config(dir.path(), "*.log", &format!("{ERRORS}{WARNINGS}"));
        ingest.switch_config(new).unwrap();
        append(&log, "WARN under the new config\n");
        settle(&mut ingest);
        assert_eq!(ingest.store.outbox_len().unwrap(), 3);
    }

    #[test]
    fn a_reload_releases_unconfigured_files_and_picks_up_new_globs() {
        let dir = tempfile::tempdir().unwrap();
        append(&dir.path().join("a.log"), "");
        append(&dir.path().join("b.txt"), "");
        let (mut ingest, _reloads) = ingest(&config(dir.path(), "*.log", ERRORS));
        settle(&mut ingest);
        assert_eq!(ingest.tailer.followed_paths(), [dir.path().join("a.log")]);
        ingest
            .switch_config(config(dir.path(), "*.txt", ERRORS))
            .unwrap();
        settle(&mut ingest);
        assert_eq!(ingest.tailer.followed_paths(), [dir.path().join("b.txt")]);
        // b.txt was found at the reload: `start_at: end` applies to what it held.
        append(&dir.path().join("b.txt"), "ERROR in b\n");
        append(
            &dir.path().join("a.log"),
            "ERROR in a, no longer followed\n",
        );
        settle(&mut ingest);
        assert_eq!(ingest.store.outbox_len().unwrap(), 1);
    }

    /// A file that appeared under an unchanged glob just before a reload is read from its
    /// start, as any file that appears while chattail runs (`start_at` is for files that
    /// were there when the glob was first followed).
    #[test]
    fn a_file_created_just_before_a_reload_is_read_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        append(&dir.path().join("a.log"), "");
        let (mut ingest, _reloads) = ingest(&config(dir.path(), "*.log", ERRORS));
        settle(&mut ingest);
        append(&dir.path().join("b.log"), "ERROR in a new file\n");
        ingest
            .switch_config(config(dir.path(), "*.log", &format!("{ERRORS}{WARNINGS}")))
            .unwrap();
        settle(&mut ingest);
        assert_eq!(ingest.store.outbox_len().unwrap(), 1);
    }

    /// A glob removed by one reload and restored by the next does not read its files again
    /// from the start: they were recorded as released, not forgotten.
    #[test]
    fn a_glob_removed_and_restored_is_not_read_twice() {
        let dir = tempfile::tempdir().unwrap();
        append(&dir.path().join("a.log"), "ERROR one\n");
        append(&dir.path().join("b.txt"), "");
        let logs = config_starting_at(dir.path(), "*.log", "beginning", ERRORS);
        let (mut ingest, _reloads) = ingest(&logs);
        settle(&mut ingest);
        assert_eq!(ingest.store.outbox_len().unwrap(), 1);
        ingest
            .switch_config(config_starting_at(dir.path(), "*.txt", "beginning", ERRORS))
            .unwrap();
        settle(&mut ingest);
        ingest
            .switch_config(config_starting_at(dir.path(), "*.log", "beginning", ERRORS))
            .unwrap();
        append(&dir.path().join("a.log"), "ERROR two\n");
        settle(&mut ingest);
        assert_eq!(
            ingest.store.outbox_len().unwrap(),
            2,
            "one, two; not one again"
        );
    }

    /// A pending multiline event follows its `files` entry when a reload reorders the
    /// entries: it keeps its own entry's multiline settings, not those of whatever entry
    /// now has its old index.
    #[test]
    fn a_pending_multiline_event_follows_its_entry_when_entries_are_reordered() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = |first: &str, second: &str| {
            format!(
                "state_dir: {state}\nwebhooks:\n  oncall:\n    url: https://chat.googleapis.com/v1/spaces/S/messages?key=k&token=t\nfiles:\n{first}{second}rules:\n{ERRORS}",
                state = dir.path().join("state").display(),
            )
        };
        let traces = format!(
            "  - path: {}\n    start_at: beginning\n    multiline:\n      start: '^\\S'\n      timeout: 1h\n",
            dir.path().join("a.log").display()
        );
        let plain = format!(
            "  - path: {}\n    start_at: beginning\n",
            dir.path().join("b.log").display()
        );
        append(&dir.path().join("a.log"), "ERROR first line\n  continued\n");
        append(&dir.path().join("b.log"), "");
        let (mut ingest, _reloads) = ingest(&load_yaml(dir.path(), &yaml(&traces, &plain)));
        settle(&mut ingest);
        assert_eq!(
            ingest.store.outbox_len().unwrap(),
            0,
            "the event is pending"
        );
        ingest
            .switch_config(load_yaml(dir.path(), &yaml(&plain, &traces)))
            .unwrap();
        settle(&mut ingest);
        assert_eq!(
            ingest.store.outbox_len().unwrap(),
            0,
            "still pending: its entry's timeout is an hour"
        );
        append(&dir.path().join("a.log"), "next event\n");
        settle(&mut ingest);
        assert_eq!(
            ingest.store.outbox_len().unwrap(),
            1,
            "one event of two lines"
        );
    }

    /// Rows queued for a webhook a reload removed cannot be sent; they must not hold
    /// reading paused.
    #[test]
    fn rows_of_a_removed_webhook_do_not_fill_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "state_dir: {state}\nwebhooks:\n  oncall:\n    url: https://chat.googleapis.com/v1/spaces/S/messages?key=k&token=t\nfiles:\n  - path: {glob}\ndelivery:\n  max_outbox: 2\nrules:\n{ERRORS}",
            state = dir.path().join("state").display(),
            glob = dir.path().join("*.log").display(),
        );
        let (mut ingest, _reloads) = ingest(&load_yaml(dir.path(), &yaml));
        let row = |webhook: &str| Notification {
            rule: "errors".to_owned(),
            webhook: webhook.to_owned(),
            thread_key: "errors".to_owned(),
            dedup_key: None,
            text: "ERROR".to_owned(),
            burst: None,
            card: None,
        };
        let tx = ingest.store.transaction().unwrap();
        for _ in 0..5 {
            state_rows::enqueue(&tx, &row("removed")).unwrap();
        }
        state_rows::enqueue(&tx, &row("oncall")).unwrap();
        tx.commit().unwrap();
        assert!(!ingest.outbox_is_full(), "1 of 2 for configured webhooks");
        let tx = ingest.store.transaction().unwrap();
        state_rows::enqueue(&tx, &row("oncall")).unwrap();
        tx.commit().unwrap();
        ingest.last_outbox_check = None;
        assert!(ingest.outbox_is_full(), "2 of 2");
    }
}
