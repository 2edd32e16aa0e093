//! `chattail run`: the agent, and the one place where the tailer, the pipeline, the store,
//! delivery and operations are put together.
//!
//! Two halves meet at the outbox:
//!
//! - The *ingest* thread (`ingest.rs`, blocking, one OS thread) polls the tailer, passes
//!   every line through the [`Pipeline`](crate::pipeline::Pipeline) and commits, in one
//!   store transaction, the notifications the lines produced, the burst windows and
//!   pending events they changed, and the offsets that say those lines are done. A crash
//!   at any instant leaves all or none. When the outbox holds `delivery.max_outbox`
//!   notifications, reading pauses; nothing is dropped.
//! - The *supervisor* (`supervisor.rs`, async, its runtime and signal handlers made by
//!   [`prepare`] before the config is loaded) starts the delivery workers (one per Chat
//!   space) and the admin endpoint, talks to systemd, and handles signals and reloads
//!   (`reload.rs`).
//!
//! SIGTERM or SIGINT stops reading (the last batch is committed), gives delivery
//! `delivery.shutdown_grace` to post what is queued, and returns; what was not posted stays
//! in the outbox for the next start. `--dry-run` prints instead of queueing
//! (`dry_run.rs`), with the state in memory.

mod allocator;
mod descriptors;
mod dry_run;
mod ingest;
mod journal_source;
mod reload;
mod reports;
mod silence_sync;
mod silence_watch;
pub mod state_rows;
mod supervisor;

use std::io::Write;
use std::sync::Arc;

use thiserror::Error;

use crate::config::Config;
use crate::store::{LostState, Store, StoreError};

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot create the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("cannot start the runtime or install signal handlers: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("cannot listen on admin.listen {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the ingest thread stopped unexpectedly")]
    IngestPanicked,
    #[error("nothing to read: no `files` are configured and the journal cannot be read ({0})")]
    NoSource(String),
    #[error("the journal could not be read: {0}")]
    Journal(String),
}

impl RunError {
    /// Whether the state directory could not be created for want of permission (the first
    /// run as a user, with the default `/var/lib/chattail`).
    pub fn state_dir_not_writable(&self) -> bool {
        matches!(
            self,
            RunError::Store(StoreError::CreateDir { source, .. })
                if source.kind() == std::io::ErrorKind::PermissionDenied
        )
    }
}

/// How `run` behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Print what would be posted instead of posting; state lives in memory only.
    pub dry_run: bool,
    /// Read what the files hold now, deliver it, and exit.
    pub once: bool,
    /// Reload when the config file changes, as on SIGHUP.
    pub watch_config: bool,
}

/// The agent's runtime and signal handlers, made before anything is loaded: a SIGHUP or
/// SIGTERM that arrives while a large config is validated is held and handled once the
/// agent runs (a reload, or a clean stop), instead of killing the process.
pub struct Launch {
    runtime: tokio::runtime::Runtime,
    signals: supervisor::Signals,
}

/// Builds the runtime and installs the signal handlers, and raises the descriptor limit.
/// Call it first.
pub fn prepare() -> Result<Launch, RunError> {
    descriptors::raise_limit();
    allocator::use_one_arena();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("chattail")
        .build()?;
    let signals = runtime.block_on(async { supervisor::Signals::install() })?;
    Ok(Launch { runtime, signals })
}

impl Launch {
    /// Runs the agent until a signal (or, with `once`, until everything is read and
    /// posted). Dry-run output goes to `out`.
    pub fn run(
        self,
        config: Config,
        options: RunOptions,
        out: Box<dyn Write + Send>,
    ) -> Result<(), RunError> {
        let config = Arc::new(config);
        let store = if options.dry_run {
            Store::in_memory()?
        } else {
            Store::open(&config.state_dir)?
        };
        if let Some(lost) = store.lost_state() {
            let what = match lost {
                LostState::Empty => "is empty (zero bytes)",
                LostState::Deleted => "was deleted",
            };
            tracing::error!(
                database = %store.db_path().display(),
                "The state database {what}: chattail starts afresh. Every file is treated as never seen: with `start_at: beginning` lines already posted are posted again, with `end` lines written while chattail was stopped are skipped; notifications that were queued and burst windows are gone."
            );
        }
        let Self { runtime, signals } = self;
        runtime.block_on(supervisor::supervise(config, store, options, out, signals))
    }
}
