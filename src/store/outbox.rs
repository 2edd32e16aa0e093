//! The sender's side of the outbox: forming posts from queued notifications and removing
//! them once Chat has accepted them.
//!
//! Rows are written by the agent's ingest loop, in the transaction that advances the offsets
//! of the lines they came from (see [`super::StoreTx::enqueue`]). A post (a *batch*) is one or more rows of the same
//! webhook and thread, merged up to Chat's size limit. Its request id is written to the rows
//! before the post is sent, so that after a crash exactly the same post, with the same id,
//! is sent again; Chat answers a repeated request id with the message it already stored.
//! Rows are deleted only after Chat accepted the post.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::pipeline::chat_text::{MAX_TEXT_CHARS, utf16_len};
use crate::store::StoreError;

/// Separates merged notifications in one post.
const MERGE_SEPARATOR: &str = "\n\n";
/// After this many refusals (400) the rows of a post are set aside as dead: kept in the
/// table for inspection, never sent again.
pub const MAX_REFUSALS: i64 = 3;

/// One post to Chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub request_id: String,
    pub webhook: String,
    pub thread_key: String,
    pub text: String,
    /// How many queued notifications it carries.
    pub rows: usize,
    /// The rules whose notifications it carries, each once, in queue order.
    pub rules: Vec<String>,
    /// When the oldest of them was queued (unix milliseconds).
    pub oldest_ms: i64,
    /// The card of a post of one carded notification (`cardsV2` entry, JSON).
    pub card: Option<String>,
}

/// A connection to the outbox for the sender.
///
/// A notification that opens or sums up a burst window (`burst` set) is not posted until
/// it was decided about (which clears `burst`; see `deliver::fleet_windows`); posts are
/// formed from the other rows meanwhile, except the later rows of its rule in its thread,
/// which wait behind it.
pub struct Outbox {
    pub(super) conn: Connection,
    agent_id: String,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("agent_id", &self.agent_id)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens the state database at `db` (created by `Store::open`).
    pub fn open(db: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(db)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let agent_id =
            conn.query_row("SELECT value FROM meta WHERE key = 'agent_id'", [], |r| {
                r.get(0)
            })?;
        Ok(Self { conn, agent_id })
    }

    /// This agent's id (the state database's), which fleet mode names it by.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// The next post for any of `webhooks`: a post already formed (and maybe sent) before a
    /// crash or a retry comes first, unchanged; otherwise a new one is formed from the
    /// oldest queued notification and the later ones of the same thread.
    pub fn next_batch(&mut self, webhooks: &[String]) -> Result<Option<Batch>, StoreError> {
        for webhook in webhooks {
            if let Some(batch) = self.formed_batch(webhook)? {
                return Ok(Some(batch));
            }
        }
        let mut oldest: Option<(i64, String)> = None;
        for webhook in webhooks {
            let first: Option<i64> = self
                .conn
                // A row waits behind an older row of its thread and rule that waits for a
                // decision (a window's summary before the resolution that closed it), so a
                // rule's messages in a thread read in the order they happened. Other rules'
                // rows, and other threads, are not held up.
                .prepare_cached(
                    "SELECT id FROM outbox AS o WHERE webhook = ?1 AND dead = 0 AND batch IS NULL AND burst IS NULL
                     AND NOT EXISTS (SELECT 1 FROM outbox AS u WHERE u.burst IS NOT NULL AND u.dead = 0
                         AND u.webhook = o.webhook AND u.thread_key = o.thread_key AND u.rule = o.rule
                         AND u.id < o.id)
                     ORDER BY id LIMIT 1",
                )?
                .query_row(params![webhook], |r| r.get(0))
                .optional()?;
            if let Some(id) = first
                && oldest.as_ref().is_none_or(|(o, _)| id < *o)
            {
                oldest = Some((id, webhook.clone()));
            }
        }
        let Some((first_id, webhook)) = oldest else {
            return Ok(None);
        };
        self.form_batch(first_id, &webhook)
    }

    fn formed_batch(&mut self, webhook: &str) -> Result<Option<Batch>, StoreError> {
        let batch: Option<String> = self
            .conn
            .prepare_cached("SELECT batch FROM outbox WHERE webhook = ?1 AND dead = 0 AND batch IS NOT NULL ORDER BY id LIMIT 1")?
            .query_row(params![webhook], |r| r.get(0))
            .optional()?;
        match batch {
            Some(request_id) => self.load_batch(&request_id),
            None => Ok(None),
        }
    }

    fn load_batch(&mut self, request_id: &str) -> Result<Option<Batch>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT webhook, thread_key, text, created_ms, rule, card FROM outbox WHERE batch = ?1 ORDER BY id",
        )?;
        let rows: Vec<(String, String, String, i64, String, Option<String>)> = stmt
            .query_map(params![request_id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        let Some((webhook, thread_key, ..)) = rows.first().cloned() else {
            return Ok(None);
        };
        let oldest_ms = rows.iter().map(|r| r.3).min().unwrap_or(0);
        let texts: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
        let mut rules: Vec<String> = Vec::new();
        for row in &rows {
            if !rules.contains(&row.4) {
                rules.push(row.4.clone());
            }
        }
        Ok(Some(Batch {
            request_id: request_id.to_owned(),
            webhook,
            thread_key,
            text: texts.join(MERGE_SEPARATOR),
            rows: rows.len(),
            rules,
            oldest_ms,
            // A carded row is always alone in its post.
            card: rows.first().and_then(|r| r.5.clone()),
        }))
    }

    /// Forms a post from row `first_id` and later queued rows of its thread, as many as fit.
    fn form_batch(&mut self, first_id: i64, webhook: &str) -> Result<Option<Batch>, StoreError> {
        // IMMEDIATE takes the write lock up front: a deferred transaction that reads first
        // cannot wait for the lock when it later writes (SQLite answers BUSY at once).
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let (thread_key, first_text, carded): (String, String, bool) = tx
            .prepare_cached("SELECT thread_key, text, card IS NOT NULL FROM outbox WHERE id = ?1")?
            .query_row(params![first_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        let mut ids = vec![first_id];
        let mut units = utf16_len(&first_text);
        // A card is posted alone: Chat shows one message per card, with its own text.
        if !carded {
            let mut stmt = tx.prepare_cached(
                "SELECT id, text, burst IS NOT NULL, rule, card IS NOT NULL FROM outbox WHERE webhook = ?1 AND thread_key = ?2 AND dead = 0
                 AND batch IS NULL AND id > ?3 ORDER BY id LIMIT 200",
            )?;
            let more = stmt.query_map(params![webhook, thread_key, first_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, bool>(4)?,
                ))
            })?;
            // Rules with a row waiting for a decision: their later rows wait behind it.
            let mut waiting: Vec<String> = Vec::new();
            for row in more {
                let (id, text, undecided, rule, carded) = row?;
                if undecided {
                    waiting.push(rule);
                    continue;
                }
                if carded {
                    // Later rows wait for the card's own post, so the thread reads in
                    // order.
                    break;
                }
                if waiting.contains(&rule) {
                    continue;
                }
                let added = utf16_len(MERGE_SEPARATOR) + utf16_len(&text);
                if units + added > MAX_TEXT_CHARS {
                    break;
                }
                units += added;
                ids.push(id);
            }
        }
        let seq: i64 = tx.prepare_cached(
            "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'batch_seq' RETURNING CAST(value AS INTEGER)",
        )?.query_row(
            [],
            |r| r.get(0),
        )?;
        let request_id = format!("chattail-{}-{seq}", self.agent_id);
        {
            let mut stmt = tx.prepare_cached("UPDATE outbox SET batch = ?1 WHERE id = ?2")?;
            for id in &ids {
                stmt.execute(params![request_id, id])?;
            }
        }
        tx.commit()?;
        self.load_batch(&request_id)
    }

    /// Chat accepted the post: its rows are done.
    pub fn delivered(&mut self, request_id: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM outbox WHERE batch = ?1")?
            .execute(params![request_id])?;
        Ok(())
    }

    /// Chat refused a carded post's card (400): the row is posted again as its text alone,
    /// in a post of its own with the same request id (Chat stored nothing).
    pub fn drop_card(&mut self, request_id: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE outbox SET card = NULL WHERE batch = ?1")?
            .execute(params![request_id])?;
        Ok(())
    }

    /// Chat refused the post itself (400). Returns whether it is now set aside as dead.
    pub fn refused(&mut self, request_id: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("UPDATE outbox SET attempts = attempts + 1 WHERE batch = ?1")?
            .execute(params![request_id])?;
        let dead = self
            .conn
            .prepare_cached("UPDATE outbox SET dead = 1 WHERE batch = ?1 AND attempts >= ?2")?
            .execute(params![request_id, MAX_REFUSALS])?;
        Ok(dead > 0)
    }

    /// Queued notifications per webhook and the age of the oldest, for health and metrics.
    pub fn depth(&self, webhook: &str) -> Result<(u64, Option<i64>), StoreError> {
        let (n, oldest): (i64, Option<i64>) = self
            .conn
            .prepare_cached(
                // Rows waiting for a fleet window's decision are counted but do not age
                // the queue: they wait by design (up to the window's end and a lease).
                "SELECT COUNT(*), MIN(CASE WHEN burst IS NULL THEN created_ms END) FROM outbox WHERE webhook = ?1 AND dead = 0",
            )?
            .query_row(params![webhook], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok((u64::try_from(n).unwrap_or(0), oldest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewNotification, Store};

    fn note<'a>(webhook: &'a str, key: &'a str, text: &'a str) -> NewNotification<'a> {
        NewNotification {
            rule: "r",
            webhook,
            thread_key: key,
            text,
            burst: None,
            card: None,
        }
    }

    #[test]
    fn merges_a_thread_backlog_and_resends_a_formed_batch_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let tx = store.transaction().unwrap();
        for (key, text) in [("a", "a1"), ("b", "b1"), ("a", "a2"), ("a", "a3")] {
            tx.enqueue(&note("oncall", key, text)).unwrap();
        }
        tx.commit().unwrap();
        let mut outbox = Outbox::open(store.db_path()).unwrap();
        let hooks = vec!["oncall".to_owned()];
        let first = outbox.next_batch(&hooks).unwrap().unwrap();
        assert_eq!(
            (first.thread_key.as_str(), first.text.as_str(), first.rows),
            ("a", "a1\n\na2\n\na3", 3)
        );
        // Not delivered yet (a crash, a retry): the same post comes back.
        let mut again = Outbox::open(store.db_path()).unwrap();
        assert_eq!(again.next_batch(&hooks).unwrap().unwrap(), first);
        again.delivered(&first.request_id).unwrap();
        let second = again.next_batch(&hooks).unwrap().unwrap();
        assert_eq!((second.text.as_str(), second.rows), ("b1", 1));
        assert_ne!(second.request_id, first.request_id);
        again.delivered(&second.request_id).unwrap();
        assert_eq!(again.next_batch(&hooks).unwrap(), None);
        assert_eq!(store.outbox_len().unwrap(), 0);
    }

    #[test]
    fn a_merged_post_stays_within_chats_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let tx = store.transaction().unwrap();
        for _ in 0..5 {
            let text = "x".repeat(1500);
            tx.enqueue(&note("oncall", "k", &text)).unwrap();
        }
        tx.commit().unwrap();
        let mut outbox = Outbox::open(store.db_path()).unwrap();
        let hooks = vec!["oncall".to_owned()];
        let mut sizes = Vec::new();
        while let Some(b) = outbox.next_batch(&hooks).unwrap() {
            assert!(b.text.chars().count() <= MAX_TEXT_CHARS);
            sizes.push(b.rows);
            outbox.delivered(&b.request_id).unwrap();
        }
        assert_eq!(sizes, [2, 2, 1]);
    }

    #[test]
    fn a_post_refused_three_times_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let tx = store.transaction().unwrap();
        tx.enqueue(&note("oncall", "k", "bad")).unwrap();
        tx.commit().unwrap();
        let mut outbox = Outbox::open(store.db_path()).unwrap();
        let hooks = vec!["oncall".to_owned()];
        let b = outbox.next_batch(&hooks).unwrap().unwrap();
        assert!(!outbox.refused(&b.request_id).unwrap());
        assert!(!outbox.refused(&b.request_id).unwrap());
        assert!(outbox.refused(&b.request_id).unwrap());
        assert_eq!(outbox.next_batch(&hooks).unwrap(), None);
    }
}
