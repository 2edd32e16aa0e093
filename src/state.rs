//! Durable state under `state_dir`: file offsets (and, next, the outbox) in SQLite.
//!
//! The database is `state_dir/state.sqlite3` in WAL mode; an operator can inspect it with
//! the `sqlite3` shell. A lock file (`state_dir/chattail.lock`, held with an OS file lock
//! for the life of the process) keeps a second agent away from the same directory.
//!
//! Every change goes through a [`StateTx`], so that the run loop can advance offsets and
//! queue the notifications produced by the same lines in one transaction: a crash leaves
//! either both or neither.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};
use thiserror::Error;

use crate::tail::{Checkpoint, FileKey, SavedFile};

/// The schema version this code writes; see [`StateStore::migrate`].
const SCHEMA_VERSION: i64 = 4;
/// Released files are remembered this long, so a file that comes back under a matched
/// path (or after a restart) resumes instead of being read again.
const RELEASED_RETENTION_SECS: i64 = 24 * 3600;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot create the state directory {dir}: {source}")]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the lock file {path}: {source}")]
    LockFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another chattail is already using the state directory {dir} (it holds {dir}/chattail.lock); \
         give each agent its own state_dir"
    )]
    Locked { dir: PathBuf },
    #[error(
        "the state database {path} was written by a newer chattail (schema {found}, this one knows {SCHEMA_VERSION})"
    )]
    TooNew { path: PathBuf, found: i64 },
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// The open state directory. Dropping it releases the lock.
pub struct StateStore {
    conn: Connection,
    path: PathBuf,
    _lock: File,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// A state that lives in memory only, for `run --dry-run`: it never touches
    /// `state_dir`, and every file is new to it.
    pub fn in_memory() -> Result<Self, StateError> {
        let conn = Connection::open_in_memory()?;
        let lock = File::open("/dev/null").map_err(|source| StateError::LockFile {
            path: PathBuf::from("/dev/null"),
            source,
        })?;
        let mut store = Self {
            conn,
            path: PathBuf::from(":memory:"),
            _lock: lock,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Opens (creating if needed) the state in `dir` and takes its lock.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
            dir: dir.to_owned(),
            source,
        })?;
        let lock_path = dir.join("chattail.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StateError::LockFile {
                path: lock_path.clone(),
                source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StateError::Locked {
                    dir: dir.to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(StateError::LockFile {
                    path: lock_path,
                    source,
                });
            }
        }
        let path = dir.join("state.sqlite3");
        let conn = Connection::open(&path)?;
        // WAL keeps readers (an operator's sqlite3 shell) from blocking the agent. With WAL,
        // synchronous=NORMAL never loses a committed transaction when the process dies;
        // only a power cut can roll back the last ones, and then offsets and outbox roll
        // back together.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = Self {
            conn,
            path,
            _lock: lock,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Creates or upgrades the schema, tracked with SQLite's `user_version`.
    fn migrate(&mut self) -> Result<(), StateError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StateError::TooNew {
                path: self.path.clone(),
                found: version,
            });
        }
        if version < 1 {
            self.conn.execute_batch(
                "BEGIN;
                 CREATE TABLE files (
                     dev         INTEGER NOT NULL,
                     ino         INTEGER NOT NULL,
                     path        TEXT    NOT NULL,
                     prefix      BLOB    NOT NULL,
                     offset      INTEGER NOT NULL,
                     skipping    INTEGER NOT NULL,
                     released_at INTEGER,
                     updated_at  INTEGER NOT NULL,
                     PRIMARY KEY (dev, ino)
                 );
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        if version < 2 {
            // The outbox: notifications waiting for Chat, written in the same transaction
            // as the offsets of the lines that produced them. `batch` is the request id of
            // the post a row is part of, set before the post is sent so that a retry after
            // a crash sends exactly the same post again.
            let agent_id = random_hex(8);
            self.conn.execute_batch(&format!(
                "BEGIN;
                 CREATE TABLE outbox (
                     id         INTEGER PRIMARY KEY AUTOINCREMENT,
                     webhook    TEXT    NOT NULL,
                     rule       TEXT    NOT NULL,
                     thread_key TEXT    NOT NULL,
                     text       TEXT    NOT NULL,
                     created_ms INTEGER NOT NULL,
                     batch      TEXT,
                     attempts   INTEGER NOT NULL DEFAULT 0,
                     dead       INTEGER NOT NULL DEFAULT 0
                 );
                 CREATE INDEX outbox_by_webhook ON outbox (webhook, dead, id);
                 CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT INTO meta (key, value) VALUES ('agent_id', '{agent_id}'), ('batch_seq', '0');
                 PRAGMA user_version = 2;
                 COMMIT;"
            ))?;
        }
        if version < 3 {
            // Open burst windows, written with the offsets and the outbox so that a crash
            // neither posts a first occurrence twice nor loses a count.
            self.conn.execute_batch(
                "BEGIN;
                 CREATE TABLE bursts (
                     rule       TEXT    NOT NULL,
                     key        TEXT    NOT NULL,
                     webhook    TEXT    NOT NULL,
                     thread_key TEXT    NOT NULL,
                     first_ms   INTEGER NOT NULL,
                     last_ms    INTEGER NOT NULL,
                     count      INTEGER NOT NULL,
                     last_line  TEXT    NOT NULL,
                     PRIMARY KEY (rule, key)
                 );
                 PRAGMA user_version = 3;
                 COMMIT;",
            )?;
        }
        if version < 4 {
            // The incomplete multiline event of each file, so that an event split by a
            // restart is still one event.
            self.conn.execute_batch(
                "BEGIN;
                 CREATE TABLE multiline_events (
                     dev       INTEGER NOT NULL,
                     ino       INTEGER NOT NULL,
                     path      TEXT    NOT NULL,
                     spec      INTEGER NOT NULL,
                     bytes     BLOB    NOT NULL,
                     lines     INTEGER NOT NULL,
                     cut_lines INTEGER NOT NULL,
                     last_ms   INTEGER NOT NULL,
                     PRIMARY KEY (dev, ino)
                 );
                 PRAGMA user_version = 4;
                 COMMIT;",
            )?;
        }
        Ok(())
    }

    /// The incomplete multiline events.
    pub fn saved_events(&self) -> Result<Vec<crate::multiline::Event>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT dev, ino, path, spec, bytes, lines, cut_lines, last_ms FROM multiline_events",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(crate::multiline::Event {
                key: FileKey {
                    dev: from_sql_u64(r.get(0)?),
                    ino: from_sql_u64(r.get(1)?),
                },
                path: PathBuf::from(r.get::<_, String>(2)?),
                spec: usize::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                bytes: r.get(4)?,
                lines: usize::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
                cut_lines: usize::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
                last_ms: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The open burst windows.
    pub fn saved_windows(&self) -> Result<Vec<crate::bursts::Window>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT rule, key, webhook, thread_key, first_ms, last_ms, count, last_line FROM bursts",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(crate::bursts::Window {
                rule: r.get(0)?,
                key: r.get(1)?,
                webhook: r.get(2)?,
                thread_key: r.get(3)?,
                first_ms: r.get(4)?,
                last_ms: r.get(5)?,
                count: u64::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
                last_line: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The database file, for the sender's own connection.
    pub fn db_path(&self) -> &Path {
        &self.path
    }

    /// Notifications waiting for Chat (not given up on).
    pub fn outbox_len(&self) -> Result<u64, StateError> {
        let n: i64 =
            self.conn
                .query_row("SELECT COUNT(*) FROM outbox WHERE dead = 0", [], |r| {
                    r.get(0)
                })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Notifications waiting for Chat, by webhook name (not given up on).
    pub fn outbox_by_webhook(&self) -> Result<Vec<(String, u64)>, StateError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT webhook, COUNT(*) FROM outbox WHERE dead = 0 GROUP BY webhook",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every file with a saved offset, released ones included (within retention).
    pub fn saved_files(&self) -> Result<Vec<SavedFile>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT dev, ino, path, prefix, offset, skipping, released_at IS NOT NULL FROM files",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(SavedFile {
                key: FileKey {
                    dev: from_sql_u64(row.get(0)?),
                    ino: from_sql_u64(row.get(1)?),
                },
                path: PathBuf::from(row.get::<_, String>(2)?),
                prefix: row.get(3)?,
                offset: from_sql_u64(row.get(4)?),
                skipping: row.get(5)?,
                released: row.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The saved offset of one file, for tests and inspection.
    pub fn saved_file(&self, key: FileKey) -> Result<Option<SavedFile>, StateError> {
        Ok(self.saved_files()?.into_iter().find(|f| f.key == key))
    }

    /// Starts a transaction; nothing is visible to a later start until it commits.
    pub fn transaction(&mut self) -> Result<StateTx<'_>, StateError> {
        Ok(StateTx {
            // IMMEDIATE: take the write lock now, waiting for the sender if it holds it,
            // rather than failing with BUSY at the first write.
            tx: self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?,
        })
    }

    /// Records the tailer's checkpoints in one transaction (for callers with nothing else
    /// to commit alongside).
    pub fn commit_checkpoints(&mut self, checkpoints: &[Checkpoint]) -> Result<(), StateError> {
        let tx = self.transaction()?;
        for checkpoint in checkpoints {
            tx.record(checkpoint)?;
        }
        tx.commit()
    }
}

/// One atomic change to the state.
pub struct StateTx<'a> {
    tx: rusqlite::Transaction<'a>,
}

impl StateTx<'_> {
    /// Records one tailer checkpoint: a file's new offset, or its release.
    pub fn record(&self, checkpoint: &Checkpoint) -> Result<(), StateError> {
        let now = unix_now();
        match checkpoint {
            Checkpoint::Progress(file) => {
                self.tx
                    .prepare_cached(
                        "INSERT INTO files (dev, ino, path, prefix, offset, skipping, released_at, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7)
                         ON CONFLICT (dev, ino) DO UPDATE SET
                             path = excluded.path, prefix = excluded.prefix, offset = excluded.offset,
                             skipping = excluded.skipping, released_at = NULL, updated_at = excluded.updated_at",
                    )?
                    .execute(params![
                        to_sql_u64(file.key.dev),
                        to_sql_u64(file.key.ino),
                        file.path.to_string_lossy(),
                        file.prefix,
                        to_sql_u64(file.offset),
                        file.skipping,
                        now,
                    ])?;
            }
            Checkpoint::Released(key) => {
                self.tx
                    .prepare_cached(
                        "UPDATE files SET released_at = ?3 WHERE dev = ?1 AND ino = ?2",
                    )?
                    .execute(params![to_sql_u64(key.dev), to_sql_u64(key.ino), now])?;
            }
            Checkpoint::Forget(key) => {
                self.tx
                    .prepare_cached("DELETE FROM files WHERE dev = ?1 AND ino = ?2")?
                    .execute(params![to_sql_u64(key.dev), to_sql_u64(key.ino)])?;
            }
        }
        Ok(())
    }

    /// Makes the transaction durable, dropping released files past their retention.
    pub fn commit(self) -> Result<(), StateError> {
        self.tx
            .prepare_cached("DELETE FROM files WHERE released_at IS NOT NULL AND released_at < ?1")?
            .execute(params![unix_now() - RELEASED_RETENTION_SECS])?;
        Ok(self.tx.commit()?)
    }

    /// Records an open burst window (new or changed).
    pub fn save_window(&self, w: &crate::bursts::Window) -> Result<(), StateError> {
        self.tx
            .prepare_cached(
                "INSERT INTO bursts (rule, key, webhook, thread_key, first_ms, last_ms, count, last_line)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (rule, key) DO UPDATE SET
                     webhook = excluded.webhook, thread_key = excluded.thread_key,
                     first_ms = excluded.first_ms, last_ms = excluded.last_ms,
                     count = excluded.count, last_line = excluded.last_line",
            )?
            .execute(params![
                w.rule,
                w.key,
                w.webhook,
                w.thread_key,
                w.first_ms,
                w.last_ms,
                i64::try_from(w.count).unwrap_or(i64::MAX),
                w.last_line
            ])?;
        Ok(())
    }

    /// Forgets a closed burst window.
    pub fn remove_window(&self, rule: &str, key: &str) -> Result<(), StateError> {
        self.tx
            .prepare_cached("DELETE FROM bursts WHERE rule = ?1 AND key = ?2")?
            .execute(params![rule, key])?;
        Ok(())
    }

    /// Records the incomplete multiline event of a file (`None`: it has none now).
    pub fn save_event(
        &self,
        key: FileKey,
        event: Option<&crate::multiline::Event>,
    ) -> Result<(), StateError> {
        match event {
            Some(e) => {
                self.tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO multiline_events (dev, ino, path, spec, bytes, lines, cut_lines, last_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )?
                    .execute(params![
                        to_sql_u64(key.dev),
                        to_sql_u64(key.ino),
                        e.path.to_string_lossy(),
                        i64::try_from(e.spec).unwrap_or(0),
                        e.bytes,
                        i64::try_from(e.lines).unwrap_or(i64::MAX),
                        i64::try_from(e.cut_lines).unwrap_or(i64::MAX),
                        e.last_ms
                    ])?;
            }
            None => {
                self.tx
                    .prepare_cached("DELETE FROM multiline_events WHERE dev = ?1 AND ino = ?2")?
                    .execute(params![to_sql_u64(key.dev), to_sql_u64(key.ino)])?;
            }
        }
        Ok(())
    }

    /// Queues a notification for Chat.
    pub fn enqueue(&self, n: &crate::rules::Notification) -> Result<(), StateError> {
        self.tx
            .prepare_cached(
                "INSERT INTO outbox (webhook, rule, thread_key, text, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![n.webhook, n.rule, n.thread_key, n.text, unix_now_ms()])?;
        Ok(())
    }
}

/// `n` random bytes from the kernel, as hex; falls back to time and process id, which are
/// unique enough for an agent id.
pub fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    let ok = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if ok.is_err() {
        let seed = unix_now_ms().unsigned_abs() ^ (u64::from(std::process::id()) << 32);
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (seed >> ((i % 8) * 8)) as u8 ^ (i as u8);
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// SQLite integers are signed 64-bit; device and inode numbers are stored bit for bit.
fn to_sql_u64(value: u64) -> i64 {
    i64::from_ne_bytes(value.to_ne_bytes())
}

fn from_sql_u64(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}
