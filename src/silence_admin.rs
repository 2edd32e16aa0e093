//! Where the `silence` commands write and read silences: the agent's store under
//! `state_dir`, or with `fleet:` Redis under the namespace (every agent of the namespace
//! copies it within a second). Nothing here runs inside the agent.
//!
//! Permission model: whoever can write the state directory may silence (the local
//! store), or whoever holds the Redis password (fleet mode). A local command run by
//! another user than the directory's owner is refused, so that `sudo` cannot leave files
//! in it that the agent's user cannot write.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::unix_now_ms;
use crate::config::Config;
use crate::fleet::{Fleet, FleetError, silences::HostHeld};
use crate::silences::{KEPT_AFTER_END, Matchers, Silence, SilenceError, check_length};
use crate::store::StoreError;
use crate::store::silences::{SilenceRow, SilenceStore};

/// Why a silence command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Invalid(#[from] SilenceError),
    #[error(
        "the state directory {dir} does not exist yet: the agent creates it at its first start (or set `state_dir`)"
    )]
    NoStateDir { dir: PathBuf },
    #[error(
        "the state directory {dir} belongs to uid {owner}, and this command runs as uid {me}: run it as the directory's owner (for example `sudo -u <agent user> chattail silence …`), so that the agent can still write every file in it"
    )]
    NotOwner { dir: PathBuf, owner: u32, me: u32 },
    #[error("cannot read the state directory {dir}: {source}")]
    StateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Redis ({redis}): {error}; nothing was changed")]
    Redis { redis: String, error: FleetError },
    #[error("no silence has the id `{0}`")]
    Unknown(String),
    #[error("`{0}` is the start of more than one silence's id: give more of it")]
    Ambiguous(String),
    #[error("a stored silence cannot be read: {0}")]
    BadRecord(String),
    #[error("cannot start the runtime for Redis: {0}")]
    Runtime(std::io::Error),
}

/// A silence as `list` shows it: the record and what it held back (in fleet mode, per
/// host).
#[derive(Debug, Clone)]
pub struct Listed {
    pub silence: Silence,
    pub held: u64,
    pub hosts: usize,
}

/// What `list` found: the silences, and the ids of records that cannot be read (written
/// by hand, or by a newer version), left out so that one bad record hides no other.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub silences: Vec<Listed>,
    pub unreadable: Vec<String>,
}

/// What a silence to add says.
#[derive(Debug, Clone)]
pub struct NewSilence {
    pub matchers: Matchers,
    pub length: Duration,
    pub comment: String,
    /// `user@host`.
    pub created_by: String,
}

/// The place the config's silences live.
pub enum Place {
    Local(PathBuf),
    Fleet {
        fleet: Arc<Fleet>,
        redis: String,
        namespace: String,
        runtime: tokio::runtime::Runtime,
    },
}

impl Place {
    pub fn of(config: &Config) -> Result<Self, AdminError> {
        let Some(fleet) = &config.fleet else {
            return Ok(Place::Local(config.state_dir.clone()));
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AdminError::Runtime)?;
        Ok(Place::Fleet {
            redis: fleet.redis.display(),
            namespace: fleet.namespace.clone(),
            fleet: Arc::new(Fleet::new(
                fleet.clone(),
                crate::ops::metrics::Metrics::default(),
                Arc::new(crate::ops::health::Health::default()),
            )),
            runtime,
        })
    }

    /// Where, for people: `the state directory /var/lib/chattail` or `Redis … namespace
    /// prod`.
    pub fn describe(&self) -> String {
        match self {
            Place::Local(dir) => format!("the state directory {}", dir.display()),
            Place::Fleet {
                redis, namespace, ..
            } => format!("Redis {redis}, namespace {namespace}"),
        }
    }

    /// Adds a silence, checked against the config's rules; returns it as stored.
    pub fn add(&self, config: &Config, new: NewSilence) -> Result<Silence, AdminError> {
        let captures = new.matchers.validate(config)?;
        check_length(new.length)?;
        let now = unix_now_ms();
        let length_ms = i64::try_from(new.length.as_millis()).unwrap_or(i64::MAX);
        let silence = Silence {
            id: crate::random_hex::random_hex(6),
            rule: new.matchers.rule,
            host: new.matchers.host,
            thread: new.matchers.thread,
            captures,
            comment: new.comment,
            created_by: new.created_by,
            starts_ms: now,
            ends_ms: now.saturating_add(length_ms),
            expired_by: None,
            revision: now,
        };
        let record = to_json(&silence);
        match self {
            Place::Local(dir) => {
                let store = open_local(dir)?;
                store.put(&row(&silence, record))?;
                Ok(silence)
            }
            Place::Fleet { fleet, runtime, .. } => {
                let stored = runtime
                    .block_on(fleet.add_silence(&record, new.length, KEPT_AFTER_END))
                    .map_err(|e| self.redis_error(e))?;
                parse(&stored)
            }
        }
    }

    /// Every silence kept (active, and ended within a day), with what it held back.
    pub fn list(&self) -> Result<Listing, AdminError> {
        let mut listed = Vec::new();
        let mut unreadable = Vec::new();
        match self {
            Place::Local(dir) => {
                let store = open_local(dir)?;
                let counts = store.held_counts()?;
                for r in store.silences()? {
                    let held = counts
                        .iter()
                        .filter(|c| c.silence == r.id)
                        .map(|c| c.held)
                        .sum();
                    let Some(silence) = readable(&r.record, &mut unreadable) else {
                        continue;
                    };
                    listed.push(Listed {
                        silence,
                        held,
                        hosts: usize::from(held > 0),
                    });
                }
            }
            Place::Fleet { fleet, runtime, .. } => {
                let (records, hosts) = runtime
                    .block_on(fleet.read_silences())
                    .map_err(|e| self.redis_error(e))?;
                for record in records {
                    let Some(silence) = readable(&record, &mut unreadable) else {
                        continue;
                    };
                    let of: Vec<&HostHeld> =
                        hosts.iter().filter(|h| h.silence == silence.id).collect();
                    listed.push(Listed {
                        held: of.iter().map(|h| h.held).sum(),
                        hosts: of.iter().filter(|h| h.held > 0).count(),
                        silence,
                    });
                }
            }
        }
        listed.sort_by(|a, b| {
            b.silence
                .is_active(unix_now_ms())
                .cmp(&a.silence.is_active(unix_now_ms()))
                .then(a.silence.ends_ms.cmp(&b.silence.ends_ms))
        });
        Ok(Listing {
            silences: listed,
            unreadable,
        })
    }

    /// Ends the silence whose id starts with `id` now, noting `by`; returns it as it is
    /// then, and whether this call ended it (not when it had already ended).
    pub fn expire(&self, id: &str, by: &str) -> Result<(Silence, bool), AdminError> {
        let known: Vec<Silence> = self
            .list()?
            .silences
            .into_iter()
            .map(|l| l.silence)
            .collect();
        let mut candidates = known.iter().filter(|s| s.id.starts_with(id));
        let found = match (candidates.next(), candidates.next()) {
            (Some(s), None) if !id.is_empty() => s.clone(),
            (Some(_), Some(_)) => return Err(AdminError::Ambiguous(id.to_owned())),
            _ => return Err(AdminError::Unknown(id.to_owned())),
        };
        match self {
            Place::Local(dir) => {
                let now = unix_now_ms();
                if !found.is_active(now) {
                    return Ok((found, false));
                }
                let mut ended = found;
                ended.ends_ms = now;
                ended.expired_by = Some(by.to_owned());
                ended.revision = now.max(ended.revision + 1);
                let store = open_local(dir)?;
                store.put(&row(&ended, to_json(&ended)))?;
                Ok((ended, true))
            }
            Place::Fleet { fleet, runtime, .. } => {
                let stored = runtime
                    .block_on(fleet.expire_silence(&found.id, by))
                    .map_err(|e| self.redis_error(e))?
                    .ok_or_else(|| AdminError::Unknown(found.id.clone()))?;
                let stored = parse(&stored)?;
                let ended_now = stored.revision != found.revision;
                Ok((stored, ended_now))
            }
        }
    }

    fn redis_error(&self, error: FleetError) -> AdminError {
        let redis = match self {
            Place::Fleet { redis, .. } => redis.clone(),
            Place::Local(_) => String::new(),
        };
        AdminError::Redis { redis, error }
    }
}

/// The state directory's database, for its owner only.
fn open_local(dir: &Path) -> Result<SilenceStore, AdminError> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(AdminError::NoStateDir {
                dir: dir.to_owned(),
            });
        }
        Err(source) => {
            return Err(AdminError::StateDir {
                dir: dir.to_owned(),
                source,
            });
        }
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(AdminError::NotOwner {
            dir: dir.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    Ok(SilenceStore::open_dir(dir)?)
}

fn row(silence: &Silence, record: String) -> SilenceRow {
    SilenceRow {
        id: silence.id.clone(),
        record,
        ends_ms: silence.ends_ms,
        revision: silence.revision,
    }
}

fn to_json(silence: &Silence) -> String {
    // Strings and numbers only: serialising cannot fail.
    serde_json::to_string(silence).unwrap_or_default()
}

/// A record, or `None` (its id, as far as it can be read, noted in `unreadable`).
fn readable(record: &str, unreadable: &mut Vec<String>) -> Option<Silence> {
    if let Ok(s) = serde_json::from_str(record) {
        return Some(s);
    }
    let id: String = serde_json::from_str::<serde_json::Value>(record)
        .ok()
        .and_then(|v| v.get("id")?.as_str().map(str::to_owned))
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect();
    unreadable.push(id);
    None
}

fn parse(record: &str) -> Result<Silence, AdminError> {
    serde_json::from_str(record).map_err(|e| AdminError::BadRecord(e.to_string()))
}

/// Who runs the command, for the record: the user behind `sudo` if any, and the host.
pub fn who(host: &str) -> String {
    let user = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| {
            // SAFETY: geteuid has no preconditions and cannot fail.
            format!("uid {}", unsafe { libc::geteuid() })
        });
    format!("{user}@{host}")
}
