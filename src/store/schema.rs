//! The schema of the state database, created or upgraded in place and tracked with
//! SQLite's `user_version`. Every table is defined here and only here.

use rusqlite::Connection;

use super::StoreError;
use crate::random_hex::random_hex;

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = 12;

/// Creates or upgrades the schema of `conn` (the database at `path`, for errors).
pub fn migrate(conn: &Connection, path: &std::path::Path) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
        });
    }
    if version < 1 {
        conn.execute_batch(
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
        conn.execute_batch(&format!(
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
        conn.execute_batch(
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
        conn.execute_batch(
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
    if version < 5 {
        // What a growing multiline event gained since it was first stored, one row per
        // commit, so that an event is not rewritten whole at every commit.
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE multiline_parts (
                 dev   INTEGER NOT NULL,
                 ino   INTEGER NOT NULL,
                 seq   INTEGER NOT NULL,
                 bytes BLOB    NOT NULL,
                 PRIMARY KEY (dev, ino, seq)
             );
             PRAGMA user_version = 5;
             COMMIT;",
        )?;
    }
    if version < 6 {
        // Which burst window a queued notification opens or sums up (JSON), for fleet
        // mode; such rows are posted alone, never merged.
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE outbox ADD COLUMN burst TEXT;
             PRAGMA user_version = 6;
             COMMIT;",
        )?;
    }
    if version < 7 {
        // Fleet mode decides about a row with a burst mark apart from posting: until then
        // the row is not posted, and `not_before_ms` (this host's clock) says when to look
        // at it again, so a window waiting for the fleet holds up nothing else.
        // `fleet_windows` remembers which fleet window each local window joined (and
        // whether its first occurrence was posted here), so the summary is reported to
        // that window, after a restart too.
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE outbox ADD COLUMN not_before_ms INTEGER NOT NULL DEFAULT 0;
             CREATE INDEX outbox_undecided ON outbox (not_before_ms, id) WHERE burst IS NOT NULL;
             CREATE TABLE fleet_windows (
                 rule           TEXT    NOT NULL,
                 key            TEXT    NOT NULL,
                 local_first_ms INTEGER NOT NULL,
                 fleet_first_ms INTEGER,
                 window_ms      INTEGER NOT NULL,
                 owner          INTEGER NOT NULL,
                 first_line     TEXT    NOT NULL,
                 reported       INTEGER NOT NULL DEFAULT 0,
                 failing_since  INTEGER,
                 created_ms     INTEGER NOT NULL,
                 PRIMARY KEY (rule, key, local_first_ms)
             );
             PRAGMA user_version = 7;
             COMMIT;",
        )?;
    }
    if version < 8 {
        // A container log's line pending in pieces (CRI `P` records, Docker records
        // without a newline), per file and stream (`''` when unknown), stored with the
        // file's offset so that a restart
        // between the pieces neither loses nor repeats the line.
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE partial_lines (
                 dev     INTEGER NOT NULL,
                 ino     INTEGER NOT NULL,
                 stream  TEXT    NOT NULL,
                 path    TEXT    NOT NULL,
                 spec    INTEGER NOT NULL,
                 bytes   BLOB    NOT NULL,
                 cut     INTEGER NOT NULL,
                 last_ms INTEGER NOT NULL,
                 PRIMARY KEY (dev, ino, stream)
             );
             PRAGMA user_version = 8;
             COMMIT;",
        )?;
    }
    if version < 9 {
        // Where reading the systemd journal stopped (a `journalctl` cursor), per journal
        // (a directory, or `system`), committed with the notifications of the entries
        // before it.
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE journal_positions (
                 journal TEXT NOT NULL PRIMARY KEY,
                 cursor  TEXT NOT NULL
             );
             PRAGMA user_version = 9;
             COMMIT;",
        )?;
    }
    if version < 10 {
        // What rules remember beyond burst windows (threshold counters, open incidents,
        // heartbeats of `absent_after` rules), as JSON per kind, rule and key, committed
        // with the offsets like the windows; and the index that lets a row find an older
        // undecided row of its thread and rule.
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE alert_states (
                 kind  TEXT NOT NULL,
                 rule  TEXT NOT NULL,
                 key   TEXT NOT NULL,
                 state TEXT NOT NULL,
                 PRIMARY KEY (kind, rule, key)
             );
             -- A row waits behind an older undecided row of its thread and rule.
             CREATE INDEX outbox_undecided_thread ON outbox (webhook, thread_key, rule, id)
                 WHERE burst IS NOT NULL;
             PRAGMA user_version = 10;
             COMMIT;",
        )?;
    }
    if version < 11 {
        // Silences (`chattail silence add`), as JSON records, written by the command or
        // by the fleet sync and read by the ingest loop every second; and what each held
        // back, per rule, added in the ingest loop's transactions (for `silence list`).
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE silences (
                 id       TEXT    NOT NULL PRIMARY KEY,
                 record   TEXT    NOT NULL,
                 ends_ms  INTEGER NOT NULL,
                 revision INTEGER NOT NULL
             );
             CREATE TABLE silence_counts (
                 silence TEXT    NOT NULL,
                 rule    TEXT    NOT NULL,
                 held    INTEGER NOT NULL,
                 last_ms INTEGER NOT NULL,
                 PRIMARY KEY (silence, rule)
             );
             PRAGMA user_version = 11;
             COMMIT;",
        )?;
    }
    if version < 12 {
        // A rule's card (`cardsV2` entry, JSON) posted with the row's text; a row with a
        // card is posted alone, and loses its card if Chat refuses it.
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE outbox ADD COLUMN card TEXT;
             PRAGMA user_version = 12;
             COMMIT;",
        )?;
    }
    Ok(())
}
