//! Silences in Redis: one hash of records per namespace (`chattail:{NS}:silences`, id →
//! JSON) that every agent reads every second, and one of what each host held back
//! (`…:silences:held`, `id|host` → `count|last_ms`) for `silence list`. Records are
//! opaque JSON here (the `silences` module reads them); start, end and revision are set
//! by the script with Redis' clock, so every host agrees on them.

use std::time::Duration;

use super::resp::Value;
use super::{Fleet, FleetError};

/// What a host says it held back for a silence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostHeld {
    pub silence: String,
    pub host: String,
    pub held: u64,
    pub last_ms: i64,
}

impl Fleet {
    fn silence_keys(&self) -> (String, String) {
        let tag = format!("chattail:{{{}}}:silences", self.config.namespace);
        (tag.clone(), format!("{tag}:held"))
    }

    /// Adds `record` (JSON without times), starting now on Redis' clock and lasting
    /// `length`; answers the record as stored.
    pub async fn add_silence(
        &self,
        record: &str,
        length: Duration,
        kept_after_end: Duration,
    ) -> Result<String, FleetError> {
        let (records, held) = self.silence_keys();
        let length = length.as_millis().to_string();
        let keep = kept_after_end.as_millis().to_string();
        let reply = self
            .step(
                &[records.as_bytes(), held.as_bytes()],
                &[
                    b"sil_add",
                    record.as_bytes(),
                    length.as_bytes(),
                    keep.as_bytes(),
                ],
            )
            .await?;
        text(&reply)
            .ok_or_else(|| FleetError::Redis("adding the silence answered no record".into()))
    }

    /// Ends silence `id` now (if it has not ended), noting `by`; answers the record as it
    /// is then, or `None` when Redis has no silence of that id.
    pub async fn expire_silence(&self, id: &str, by: &str) -> Result<Option<String>, FleetError> {
        let (records, held) = self.silence_keys();
        let reply = self
            .step(
                &[records.as_bytes(), held.as_bytes()],
                &[b"sil_expire", id.as_bytes(), by.as_bytes()],
            )
            .await?;
        Ok(text(&reply))
    }

    /// Every record, and what each host held back.
    pub async fn read_silences(&self) -> Result<(Vec<String>, Vec<HostHeld>), FleetError> {
        let (records, held) = self.silence_keys();
        let reply = self
            .step(&[records.as_bytes(), held.as_bytes()], &[b"sil_read"])
            .await?;
        let Value::Array(Some(items)) = reply else {
            return Err(FleetError::Redis(
                "reading silences answered no list".into(),
            ));
        };
        let texts = |v: Option<&Value>| match v {
            Some(Value::Array(Some(items))) => items.iter().filter_map(text).collect(),
            _ => Vec::new(),
        };
        let found: Vec<String> = texts(items.first());
        let pairs: Vec<String> = texts(items.get(1));
        let hosts = pairs
            .chunks_exact(2)
            .filter_map(|pair| {
                let (silence, host) = pair[0].split_once('|')?;
                let (held, last_ms) = pair[1].split_once('|')?;
                Some(HostHeld {
                    silence: silence.to_owned(),
                    host: host.to_owned(),
                    held: held.parse().ok()?,
                    last_ms: last_ms.parse().ok()?,
                })
            })
            .collect();
        Ok((found, hosts))
    }

    /// The agent's sync, once a second: writes back the records this host holds (id,
    /// record, revision) that Redis lost or has an older revision of (a restart without
    /// persistence, an old snapshot), reports what this host held back per silence, drops
    /// records ended longer than `kept_after_end` ago, and answers every record Redis
    /// keeps.
    pub async fn sync_silences(
        &self,
        host: &str,
        held_by_host: &[(String, String, i64)],
        counts: &[(String, u64, i64)],
        kept_after_end: Duration,
    ) -> Result<Vec<String>, FleetError> {
        let (records, held) = self.silence_keys();
        let keep = kept_after_end.as_millis().to_string();
        let n = held_by_host.len().to_string();
        let mut args: Vec<Vec<u8>> = vec![
            b"sil_sync".to_vec(),
            host.as_bytes().to_vec(),
            keep.into_bytes(),
            n.into_bytes(),
        ];
        for (id, record, revision) in held_by_host {
            args.push(id.as_bytes().to_vec());
            args.push(record.as_bytes().to_vec());
            args.push(revision.to_string().into_bytes());
        }
        for (id, count, last_ms) in counts {
            args.push(id.as_bytes().to_vec());
            args.push(count.to_string().into_bytes());
            args.push(last_ms.to_string().into_bytes());
        }
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let reply = self
            .step(&[records.as_bytes(), held.as_bytes()], &args)
            .await?;
        match reply {
            Value::Array(Some(items)) => Ok(items.iter().filter_map(text).collect()),
            _ => Err(FleetError::Redis(
                "the silence sync answered no list".into(),
            )),
        }
    }
}

fn text(value: &Value) -> Option<String> {
    super::windows::text(Some(value))
}
