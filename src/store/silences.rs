//! Silences in the state database: the records (JSON the store does not read) and what
//! each held back per rule.
//!
//! Three writers meet here: the `silence` commands (a second process, through a
//! [`SilenceStore`] beside the running agent's lock), the fleet sync (its own
//! connection) and the ingest loop (the counts, in its poll's transaction). Of two copies
//! of a record, the one with the higher revision wins, so a sync that read Redis before
//! an `expire` cannot undo it.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

use super::{SCHEMA_VERSION, Store, StoreError, StoreTx};

/// One silence as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilenceRow {
    pub id: String,
    /// The record as JSON (`silences::Silence`).
    pub record: String,
    pub ends_ms: i64,
    pub revision: i64,
}

/// What a silence held back of one rule on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldCountRow {
    pub silence: String,
    pub rule: String,
    pub held: u64,
    pub last_ms: i64,
}

/// A connection to the state database for the silences alone: the `silence` commands
/// (beside a running agent, whose lock they leave alone) and the fleet sync.
pub struct SilenceStore {
    conn: Connection,
}

impl std::fmt::Debug for SilenceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SilenceStore").finish_non_exhaustive()
    }
}

impl SilenceStore {
    /// Opens the state in `dir` for the silence commands. The database must be there, at
    /// this version's schema: the command never creates or upgrades it (nor takes the
    /// agent's lock), so it cannot hide a lost database from the agent or keep it from
    /// starting.
    pub fn open_dir(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("state.sqlite3");
        if !path.exists() {
            return Err(StoreError::NoDatabase {
                dir: dir.to_owned(),
            });
        }
        Self::open_file(&path)
    }

    /// A second connection to an agent's database (`Store::db_path`), whose schema the
    /// agent keeps.
    pub fn open_file(path: &Path) -> Result<Self, StoreError> {
        if !path.is_file() {
            return Err(StoreError::NoDatabase {
                dir: path.parent().map(Path::to_owned).unwrap_or_default(),
            });
        }
        // Never create the file: a missing database is the agent's to notice.
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
            | rusqlite::OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(path, flags)?;
        // The agent's transactions are short, but a loaded disk can stretch one.
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version < SCHEMA_VERSION {
            return Err(StoreError::TooOld {
                path: PathBuf::from(path),
                found: version,
            });
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: PathBuf::from(path),
                found: version,
            });
        }
        Ok(Self { conn })
    }

    pub fn silences(&self) -> Result<Vec<SilenceRow>, StoreError> {
        read_silences(&self.conn)
    }

    pub fn held_counts(&self) -> Result<Vec<HeldCountRow>, StoreError> {
        read_counts(&self.conn)
    }

    /// Stores `row` unless a copy of the same or a higher revision is there; returns
    /// whether it was stored.
    pub fn put(&self, row: &SilenceRow) -> Result<bool, StoreError> {
        put_silence(&self.conn, row)
    }

    /// Forgets the silences that ended before `before_ms`, with their counts.
    pub fn prune(&self, before_ms: i64) -> Result<(), StoreError> {
        prune(&self.conn, before_ms)
    }
}

impl Store {
    /// Every stored silence, active or ended.
    pub fn saved_silences(&self) -> Result<Vec<SilenceRow>, StoreError> {
        read_silences(&self.conn)
    }

    /// What silences held back, per silence and rule.
    pub fn held_counts(&self) -> Result<Vec<HeldCountRow>, StoreError> {
        read_counts(&self.conn)
    }

    /// Forgets the silences that ended before `before_ms`, with their counts.
    pub fn prune_silences(&self, before_ms: i64) -> Result<(), StoreError> {
        prune(&self.conn, before_ms)
    }

    /// Stores a silence record (see [`SilenceStore::put`]); for tests and `--dry-run`.
    pub fn put_silence(&self, row: &SilenceRow) -> Result<bool, StoreError> {
        put_silence(&self.conn, row)
    }
}

impl StoreTx<'_> {
    /// Adds to what `silence` held back of `rule`.
    pub fn add_held(
        &self,
        silence: &str,
        rule: &str,
        held: u64,
        last_ms: i64,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO silence_counts (silence, rule, held, last_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (silence, rule) DO UPDATE SET
                     held = held + excluded.held,
                     last_ms = max(last_ms, excluded.last_ms)",
            )?
            .execute(params![
                silence,
                rule,
                i64::try_from(held).unwrap_or(i64::MAX),
                last_ms
            ])?;
        Ok(())
    }
}

fn read_silences(conn: &Connection) -> Result<Vec<SilenceRow>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT id, record, ends_ms, revision FROM silences ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        Ok(SilenceRow {
            id: r.get(0)?,
            record: r.get(1)?,
            ends_ms: r.get(2)?,
            revision: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn read_counts(conn: &Connection) -> Result<Vec<HeldCountRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT silence, rule, held, last_ms FROM silence_counts ORDER BY silence, rule",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(HeldCountRow {
            silence: r.get(0)?,
            rule: r.get(1)?,
            held: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            last_ms: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn put_silence(conn: &Connection, row: &SilenceRow) -> Result<bool, StoreError> {
    let changed = conn
        .prepare_cached(
            "INSERT INTO silences (id, record, ends_ms, revision) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET
                 record = excluded.record,
                 ends_ms = excluded.ends_ms,
                 revision = excluded.revision
             WHERE excluded.revision > silences.revision",
        )?
        .execute(params![row.id, row.record, row.ends_ms, row.revision])?;
    Ok(changed > 0)
}

fn prune(conn: &Connection, before_ms: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "DELETE FROM silence_counts WHERE silence IN (SELECT id FROM silences WHERE ends_ms < ?1)",
    )?
    .execute(params![before_ms])?;
    conn.prepare_cached("DELETE FROM silences WHERE ends_ms < ?1")?
        .execute(params![before_ms])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, revision: i64, ends_ms: i64) -> SilenceRow {
        SilenceRow {
            id: id.to_owned(),
            record: format!("{{\"rev\":{revision}}}"),
            ends_ms,
            revision,
        }
    }

    #[test]
    fn the_higher_revision_wins_and_ended_silences_are_pruned_with_their_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        // Beside the agent's lock.
        let side = SilenceStore::open_dir(dir.path()).unwrap();
        assert!(side.put(&row("a", 2, 100)).unwrap());
        assert!(!side.put(&row("a", 1, 50)).unwrap());
        assert!(!side.put(&row("a", 2, 50)).unwrap());
        assert!(side.put(&row("a", 3, 50)).unwrap());
        assert!(store.put_silence(&row("b", 1, 1000)).unwrap());
        let tx = store.transaction().unwrap();
        tx.add_held("a", "r", 2, 10).unwrap();
        tx.add_held("a", "r", 3, 5).unwrap();
        tx.commit().unwrap();
        assert_eq!(
            side.held_counts().unwrap(),
            vec![HeldCountRow {
                silence: "a".to_owned(),
                rule: "r".to_owned(),
                held: 5,
                last_ms: 10
            }]
        );
        assert_eq!(store.saved_silences().unwrap()[0], row("a", 3, 50));
        store.prune_silences(60).unwrap();
        let left: Vec<String> = side.silences().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(left, ["b"]);
        assert!(store.held_counts().unwrap().is_empty());
    }

    #[test]
    fn the_commands_need_the_agents_database_and_never_create_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(
            SilenceStore::open_dir(&missing),
            Err(StoreError::NoDatabase { .. })
        ));
        assert!(matches!(
            SilenceStore::open_dir(dir.path()),
            Err(StoreError::NoDatabase { .. })
        ));
        assert!(!dir.path().join("state.sqlite3").exists());
        // Once the agent made it, the command opens it, also while the agent runs.
        let store = Store::open(dir.path()).unwrap();
        SilenceStore::open_dir(dir.path()).unwrap();
        drop(store);
        SilenceStore::open_dir(dir.path()).unwrap();
    }
}
