//! The durable state under `state_dir`, and every SQL statement chattail runs.
//!
//! The database is `state_dir/state.sqlite3` in WAL mode; an operator can inspect it with
//! the `sqlite3` shell. An OS lock on the state directory itself, held for the life of the
//! process, keeps a second agent away from it; unlike a lock file, a directory cannot be
//! deleted from under a running agent while it holds the database.
//!
//! Its tables (see `schema.rs`): `files` (offsets), `outbox` (notifications waiting for
//! Chat), `bursts` (open burst windows), `multiline_events` and `multiline_parts` (pending
//! events, stored incrementally), `partial_lines` (container logs' lines pending in
//! pieces), `fleet_windows` (fleet mode: which fleet window each
//! local burst window joined) and `meta` (the agent id and the request sequence).
//! The agent changes them through one [`StoreTx`] per poll, so offsets advance together
//! with the notifications, windows and events the same lines produced: a crash leaves
//! either all or none. The sender's side of the outbox is [`outbox::Outbox`], and fleet
//! mode's decisions about its rows are recorded through [`fleet_rows`].
//!
//! The store speaks in plain rows ([`FileRow`], [`WindowRow`], [`EventRow`],
//! [`EventGrowth`], [`NewNotification`]); it knows nothing of the tailer or the pipeline, and they know
//! nothing of SQLite.

pub mod fleet_rows;
pub mod outbox;
mod schema;
pub mod silences;

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};
use thiserror::Error;

use crate::clock::{unix_now_ms, unix_now_s};
pub use schema::SCHEMA_VERSION;

/// Released files are remembered this long, so a file that comes back under a matched
/// path (or after a restart) resumes instead of being read again.
const RELEASED_RETENTION_SECS: i64 = 24 * 3600;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot create the state directory {dir}: {source}")]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock the state directory {path}: {source}")]
    LockFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another chattail is already using the state directory {dir} (it holds a lock on the directory); \
         give each agent its own state_dir"
    )]
    Locked { dir: PathBuf },
    #[error(
        "the state database {path} was written by a newer chattail (schema {found}, this one knows {SCHEMA_VERSION})"
    )]
    TooNew { path: PathBuf, found: i64 },
    #[error(
        "the running agent's state database {path} is at schema {found}; silences need {SCHEMA_VERSION}: restart the agent with this chattail first"
    )]
    TooOld { path: PathBuf, found: i64 },
    #[error(
        "there is no state database in {dir}: start the agent with this state_dir first (it creates the database)"
    )]
    NoDatabase { dir: PathBuf },
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// A file's saved position (a row of `files`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    pub dev: u64,
    pub ino: u64,
    pub path: PathBuf,
    /// The file's first bytes when the offset was saved (its fingerprint).
    pub prefix: Vec<u8>,
    /// The first byte not yet handed out as (part of) a line.
    pub offset: u64,
    /// Whether `offset` is inside a cut line whose rest is being skipped.
    pub skipping: bool,
    /// Whether the file was released (rotated away or deleted) by then.
    pub released: bool,
}

/// A rule's remembered state of one kind and key (a row of `alert_states`): `state` is
/// the pipeline's JSON, which the store does not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertStateRow {
    pub kind: String,
    pub rule: String,
    pub key: String,
    pub state: String,
}

/// An open burst window (a row of `bursts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowRow {
    pub rule: String,
    pub key: String,
    pub webhook: String,
    pub thread_key: String,
    pub first_ms: i64,
    pub last_ms: i64,
    pub count: u64,
    pub last_line: String,
}

/// A pending multiline event (a row of `multiline_events`), one per file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub dev: u64,
    pub ino: u64,
    pub path: PathBuf,
    /// The index of its `files` entry.
    pub spec: usize,
    pub bytes: Vec<u8>,
    pub lines: usize,
    pub cut_lines: usize,
    pub last_ms: i64,
}

/// A container log's line pending in pieces (a row of `partial_lines`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialRow {
    pub dev: u64,
    pub ino: u64,
    /// `stdout`, `stderr`, or empty when unknown.
    pub stream: String,
    pub path: PathBuf,
    pub spec: usize,
    pub bytes: Vec<u8>,
    pub cut: bool,
    pub last_ms: i64,
}

/// What a stored pending event gained since it was last stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventGrowth<'a> {
    pub dev: u64,
    pub ino: u64,
    /// Bytes added to the end of the event.
    pub appended: &'a [u8],
    pub spec: usize,
    pub lines: usize,
    pub cut_lines: usize,
    pub last_ms: i64,
}

/// A notification to queue in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewNotification<'a> {
    pub rule: &'a str,
    pub webhook: &'a str,
    pub thread_key: &'a str,
    pub text: &'a str,
    /// The burst window it opens or sums up, as JSON (see `pipeline::rules::BurstMark`).
    pub burst: Option<&'a str>,
    /// A card (`cardsV2` entry, JSON) posted with the text; such a row is posted alone.
    pub card: Option<&'a str>,
}

/// Why a state directory starts afresh although it was used before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostState {
    /// The database file is there but empty (zero bytes).
    Empty,
    /// The database file is gone while its companions (WAL, shared memory, an old lock
    /// file) are still there.
    Deleted,
}

/// The open state directory. Dropping it releases the lock.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    _lock: File,
    lost: Option<LostState>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A state that lives in memory only, for `run --dry-run`: it never touches
    /// `state_dir`, and every file is new to it.
    pub fn in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory()?;
        let lock = File::open("/dev/null").map_err(|source| StoreError::LockFile {
            path: PathBuf::from("/dev/null"),
            source,
        })?;
        let path = PathBuf::from(":memory:");
        schema::migrate(&conn, &path)?;
        Ok(Self {
            conn,
            path,
            _lock: lock,
            lost: None,
        })
    }

    /// Opens (creating if needed) the state in `dir` and takes its lock.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            dir: dir.to_owned(),
            source,
        })?;
        // The lock is on the directory: a lock file can be deleted (and recreated by a
        // second agent) while the first still runs.
        let lock = File::open(dir).map_err(|source| StoreError::LockFile {
            path: dir.to_owned(),
            source,
        })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    dir: dir.to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(StoreError::LockFile {
                    path: dir.to_owned(),
                    source,
                });
            }
        }
        let path = dir.join("state.sqlite3");
        let lost = lost_state(dir, &path);
        let conn = Connection::open(&path)?;
        // WAL keeps readers (an operator's sqlite3 shell) from blocking the agent. With WAL,
        // synchronous=NORMAL never loses a committed transaction when the process dies;
        // only a power cut can roll back the last ones, and then offsets and outbox roll
        // back together.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // After a checkpoint the WAL file is cut back to this size, so the space a burst
        // took is given back to a tight disk.
        conn.pragma_update(None, "journal_size_limit", 4 * 1024 * 1024)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::migrate(&conn, &path)?;
        Ok(Self {
            conn,
            path,
            _lock: lock,
            lost,
        })
    }

    /// Set when the directory was used before but its database is empty or gone: the
    /// agent starts afresh and should say so loudly.
    pub fn lost_state(&self) -> Option<LostState> {
        self.lost
    }

    /// The database file, for the sender's and the admin endpoint's own connections.
    pub fn db_path(&self) -> &Path {
        &self.path
    }

    /// Every file with a saved offset, released ones included (within retention).
    pub fn saved_files(&self) -> Result<Vec<FileRow>, StoreError> {
        read_files(&self.conn)
    }

    /// Where reading `journal` stopped, if it ever started.
    pub fn saved_journal_position(&self, journal: &str) -> Result<Option<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT cursor FROM journal_positions WHERE journal = ?1")?;
        let mut rows = stmt.query_map(params![journal], |r| r.get::<_, String>(0))?;
        Ok(rows.next().transpose()?)
    }

    /// Every rule's threshold counters, incidents and heartbeats.
    pub fn saved_alerts(&self) -> Result<Vec<AlertStateRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT kind, rule, key, state FROM alert_states")?;
        let rows = stmt.query_map([], |r| {
            Ok(AlertStateRow {
                kind: r.get(0)?,
                rule: r.get(1)?,
                key: r.get(2)?,
                state: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The open burst windows.
    pub fn saved_windows(&self) -> Result<Vec<WindowRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT rule, key, webhook, thread_key, first_ms, last_ms, count, last_line FROM bursts",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(WindowRow {
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

    /// Container logs' lines pending in pieces.
    pub fn saved_partials(&self) -> Result<Vec<PartialRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT dev, ino, stream, path, spec, bytes, cut, last_ms FROM partial_lines",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(PartialRow {
                dev: from_sql_u64(r.get(0)?),
                ino: from_sql_u64(r.get(1)?),
                stream: r.get(2)?,
                path: PathBuf::from(r.get::<_, String>(3)?),
                spec: usize::try_from(r.get::<_, i64>(4)?).unwrap_or(usize::MAX),
                bytes: r.get(5)?,
                cut: r.get(6)?,
                last_ms: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The pending multiline events, each with the parts it gained appended.
    pub fn saved_events(&self) -> Result<Vec<EventRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT dev, ino, path, spec, bytes, lines, cut_lines, last_ms FROM multiline_events",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(EventRow {
                dev: from_sql_u64(r.get(0)?),
                ino: from_sql_u64(r.get(1)?),
                path: PathBuf::from(r.get::<_, String>(2)?),
                spec: usize::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                bytes: r.get(4)?,
                lines: usize::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
                cut_lines: usize::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
                last_ms: r.get(7)?,
            })
        })?;
        let mut events = rows.collect::<Result<Vec<_>, _>>()?;
        let mut parts = self.conn.prepare(
            "SELECT bytes FROM multiline_parts WHERE dev = ?1 AND ino = ?2 ORDER BY seq",
        )?;
        for event in &mut events {
            let rows = parts
                .query_map(params![to_sql_u64(event.dev), to_sql_u64(event.ino)], |r| {
                    r.get::<_, Vec<u8>>(0)
                })?;
            for part in rows {
                event.bytes.extend_from_slice(&part?);
            }
        }
        Ok(events)
    }

    /// Notifications waiting for Chat (not given up on).
    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        let n: i64 =
            self.conn
                .query_row("SELECT COUNT(*) FROM outbox WHERE dead = 0", [], |r| {
                    r.get(0)
                })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Notifications waiting for Chat, by webhook name (not given up on).
    pub fn outbox_by_webhook(&self) -> Result<Vec<(String, u64)>, StoreError> {
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

    /// Starts a transaction; nothing is visible to a later start until it commits.
    pub fn transaction(&mut self) -> Result<StoreTx<'_>, StoreError> {
        Ok(StoreTx {
            // IMMEDIATE: take the write lock now, waiting for the sender if it holds it,
            // rather than failing with BUSY at the first write.
            tx: self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?,
        })
    }
}

/// One atomic change to the state: the agent commits one per poll.
pub struct StoreTx<'a> {
    tx: rusqlite::Transaction<'a>,
}

impl StoreTx<'_> {
    /// Records a file's position (a new offset, or a file seen again).
    pub fn save_file(&self, file: &FileRow) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO files (dev, ino, path, prefix, offset, skipping, released_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7)
                 ON CONFLICT (dev, ino) DO UPDATE SET
                     path = excluded.path, prefix = excluded.prefix, offset = excluded.offset,
                     skipping = excluded.skipping, released_at = NULL, updated_at = excluded.updated_at",
            )?
            .execute(params![
                to_sql_u64(file.dev),
                to_sql_u64(file.ino),
                file.path.to_string_lossy(),
                file.prefix,
                to_sql_u64(file.offset),
                file.skipping,
                unix_now_s(),
            ])?;
        Ok(())
    }

    /// Records that a file is no longer followed; its row is kept for the retention time.
    pub fn release_file(&self, dev: u64, ino: u64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("UPDATE files SET released_at = ?3 WHERE dev = ?1 AND ino = ?2")?
            .execute(params![to_sql_u64(dev), to_sql_u64(ino), unix_now_s()])?;
        Ok(())
    }

    /// Forgets a file that no longer exists anywhere.
    pub fn forget_file(&self, dev: u64, ino: u64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("DELETE FROM files WHERE dev = ?1 AND ino = ?2")?
            .execute(params![to_sql_u64(dev), to_sql_u64(ino)])?;
        Ok(())
    }

    /// Records an open burst window (new or changed).
    pub fn save_window(&self, w: &WindowRow) -> Result<(), StoreError> {
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

    /// Records a rule's state of one kind and key (JSON).
    pub fn save_alert(&self, row: &AlertStateRow) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO alert_states (kind, rule, key, state) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (kind, rule, key) DO UPDATE SET state = excluded.state",
            )?
            .execute(params![row.kind, row.rule, row.key, row.state])?;
        Ok(())
    }

    /// Forgets a rule's state of one kind and key.
    pub fn remove_alert(&self, kind: &str, rule: &str, key: &str) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("DELETE FROM alert_states WHERE kind = ?1 AND rule = ?2 AND key = ?3")?
            .execute(params![kind, rule, key])?;
        Ok(())
    }

    /// Forgets a closed burst window.
    pub fn remove_window(&self, rule: &str, key: &str) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("DELETE FROM bursts WHERE rule = ?1 AND key = ?2")?
            .execute(params![rule, key])?;
        Ok(())
    }

    /// Records where reading `journal` stopped: the cursor of the last entry whose
    /// notifications this transaction queues.
    pub fn save_journal_position(&self, journal: &str, cursor: &str) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO journal_positions (journal, cursor) VALUES (?1, ?2)
                 ON CONFLICT (journal) DO UPDATE SET cursor = excluded.cursor",
            )?
            .execute(params![journal, cursor])?;
        Ok(())
    }

    /// Records the pending multiline event of a file, whole (replacing what was stored).
    pub fn save_event(&self, e: &EventRow) -> Result<(), StoreError> {
        self.remove_event(e.dev, e.ino)?;
        self.tx
            .prepare_cached(
                "INSERT INTO multiline_events (dev, ino, path, spec, bytes, lines, cut_lines, last_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                to_sql_u64(e.dev),
                to_sql_u64(e.ino),
                e.path.to_string_lossy(),
                i64::try_from(e.spec).unwrap_or(0),
                e.bytes,
                i64::try_from(e.lines).unwrap_or(i64::MAX),
                i64::try_from(e.cut_lines).unwrap_or(i64::MAX),
                e.last_ms
            ])?;
        Ok(())
    }

    /// Records what a stored pending event gained: its new counts, and its new bytes as
    /// one more part (none when only the counts changed).
    pub fn grow_event(&self, g: &EventGrowth<'_>) -> Result<(), StoreError> {
        let (dev, ino) = (to_sql_u64(g.dev), to_sql_u64(g.ino));
        self.tx
            .prepare_cached(
                "UPDATE multiline_events SET spec = ?3, lines = ?4, cut_lines = ?5, last_ms = ?6
                 WHERE dev = ?1 AND ino = ?2",
            )?
            .execute(params![
                dev,
                ino,
                i64::try_from(g.spec).unwrap_or(0),
                i64::try_from(g.lines).unwrap_or(i64::MAX),
                i64::try_from(g.cut_lines).unwrap_or(i64::MAX),
                g.last_ms
            ])?;
        if !g.appended.is_empty() {
            self.tx
                .prepare_cached(
                    "INSERT INTO multiline_parts (dev, ino, seq, bytes)
                     VALUES (?1, ?2, (SELECT COALESCE(MAX(seq), 0) + 1 FROM multiline_parts
                                      WHERE dev = ?1 AND ino = ?2), ?3)",
                )?
                .execute(params![dev, ino, g.appended])?;
        }
        Ok(())
    }

    /// Records a container log's line pending in pieces (new or grown).
    pub fn save_partial(&self, p: &PartialRow) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT OR REPLACE INTO partial_lines (dev, ino, stream, path, spec, bytes, cut, last_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                to_sql_u64(p.dev),
                to_sql_u64(p.ino),
                p.stream,
                p.path.to_string_lossy(),
                i64::try_from(p.spec).unwrap_or(i64::MAX),
                p.bytes,
                p.cut,
                p.last_ms
            ])?;
        Ok(())
    }

    /// Forgets a file's pending pieces of one stream (its line completed).
    pub fn remove_partial(&self, dev: u64, ino: u64, stream: &str) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "DELETE FROM partial_lines WHERE dev = ?1 AND ino = ?2 AND stream = ?3",
            )?
            .execute(params![to_sql_u64(dev), to_sql_u64(ino), stream])?;
        Ok(())
    }

    /// Forgets the pending multiline event of a file (it completed).
    pub fn remove_event(&self, dev: u64, ino: u64) -> Result<(), StoreError> {
        let (dev, ino) = (to_sql_u64(dev), to_sql_u64(ino));
        self.tx
            .prepare_cached("DELETE FROM multiline_events WHERE dev = ?1 AND ino = ?2")?
            .execute(params![dev, ino])?;
        self.tx
            .prepare_cached("DELETE FROM multiline_parts WHERE dev = ?1 AND ino = ?2")?
            .execute(params![dev, ino])?;
        Ok(())
    }

    /// Queues a notification for Chat.
    pub fn enqueue(&self, n: &NewNotification<'_>) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO outbox (webhook, rule, thread_key, text, created_ms, burst, card) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![n.webhook, n.rule, n.thread_key, n.text, unix_now_ms(), n.burst, n.card])?;
        Ok(())
    }

    /// Every file with a saved offset, as this transaction sees them (its own changes
    /// included).
    pub fn saved_files(&self) -> Result<Vec<FileRow>, StoreError> {
        read_files(&self.tx)
    }

    /// Makes the transaction durable, dropping released files past their retention.
    pub fn commit(self) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("DELETE FROM files WHERE released_at IS NOT NULL AND released_at < ?1")?
            .execute(params![unix_now_s() - RELEASED_RETENTION_SECS])?;
        Ok(self.tx.commit()?)
    }
}

/// Whether the database at `db` in `dir` was lost (see [`LostState`]).
fn lost_state(dir: &Path, db: &Path) -> Option<LostState> {
    match std::fs::metadata(db) {
        Ok(m) if m.len() == 0 => Some(LostState::Empty),
        Ok(_) => None,
        Err(_) => ["state.sqlite3-wal", "state.sqlite3-shm", "chattail.lock"]
            .iter()
            .any(|companion| dir.join(companion).exists())
            .then_some(LostState::Deleted),
    }
}

fn read_files(conn: &Connection) -> Result<Vec<FileRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT dev, ino, path, prefix, offset, skipping, released_at IS NOT NULL FROM files",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok(FileRow {
            dev: from_sql_u64(row.get(0)?),
            ino: from_sql_u64(row.get(1)?),
            path: PathBuf::from(row.get::<_, String>(2)?),
            prefix: row.get(3)?,
            offset: from_sql_u64(row.get(4)?),
            skipping: row.get(5)?,
            released: row.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// SQLite integers are signed 64-bit; device and inode numbers are stored bit for bit.
fn to_sql_u64(value: u64) -> i64 {
    i64::from_ne_bytes(value.to_ne_bytes())
}

fn from_sql_u64(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}
