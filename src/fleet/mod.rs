//! Fleet mode (`fleet:` in the config): agents on many hosts that post to the same Chat
//! spaces share state in Redis (or Valkey), so that the fleet behaves as one agent where
//! that matters.
//!
//! What is shared so far: **pacing**. Chat's quota is one request per second per space,
//! shared by every webhook of the space, so by every host. Before each post a delivery
//! worker reserves the next send slot of its space in Redis (GCRA: one "theoretical
//! arrival time" per space, advanced atomically by a Lua script with the server's clock)
//! and sleeps until that slot. Burst windows are still per agent.
//!
//! Redis only decides *when* to post; the local outbox stays the record of *what* must
//! be posted. Redis trouble never costs a message: a call that fails or takes longer than
//! `fleet.timeout` is answered by local pacing, the trouble is logged once, reported as
//! `chattail_fleet_connected 0` and in `/healthz`, and a new try comes a second later,
//! then after 2, 4, ... up to 30 s while Redis stays away (so a Redis that accepts and
//! never answers costs a post the timeout only now and then). Every key expires.

mod resp;
pub mod windows;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::config::FleetConfig;
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use resp::{Connection, RespError, Value};

/// Reserves the next send slot of a space: `KEYS[1]` the space's next free time,
/// `KEYS[2]` the strictest interval any host asked for in the last hour (hosts with
/// different `max_per_second` share the strictest, as one agent's webhooks of a space
/// do), `ARGV[1]` this host's interval and `ARGV[2]` the horizon, in milliseconds.
/// Returns the milliseconds to wait for the reserved slot or, when the next free slot is
/// beyond the horizon, minus the milliseconds to wait before asking again (nothing is
/// reserved then, so a queue of waiting hosts cannot push the pace ahead without bound).
/// The time is the server's, so agents' clocks need not agree. `replicate_commands`
/// lets Redis 3.2 and 4 write after `TIME`; from Redis 5 on it is the default.
const PACE_SCRIPT: &str = r"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local strictest = tonumber(redis.call('GET', KEYS[2]) or '0')
if interval >= strictest then
  redis.call('SET', KEYS[2], interval, 'PX', 3600000)
else
  interval = strictest
end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local horizon = tonumber(ARGV[2])
if tat - now > horizon then
  return -(tat - now - horizon)
end
redis.call('SET', KEYS[1], tat + interval, 'PX', tat + interval - now + 60000)
return tat - now
";

/// How far ahead a slot may be reserved.
const HORIZON: Duration = Duration::from_secs(30);

/// How long after a first failure no new call is tried; doubled after each further one.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
const RECONNECT_AFTER_MAX: Duration = Duration::from_secs(30);

/// What a reservation gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Send after this wait.
    After(Duration),
    /// Every slot within the horizon is taken: ask again after this wait.
    Full(Duration),
}

/// Why Redis could not answer; the caller paces locally.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    Redis(String),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis failed a moment ago; not retried yet")]
    Waiting,
    /// Redis lost its scripts (a restart): the caller sends the script itself.
    #[error("Redis has no such script")]
    NoScript,
}

/// The fleet client one agent shares between its delivery workers.
pub struct Fleet {
    config: FleetConfig,
    conn: Mutex<Option<Session>>,
    /// The SHA1 of [`PACE_SCRIPT`] as the current connection's server loaded it.
    pace_sha: Mutex<String>,
    /// When the last failure was and how long no call is tried after it.
    failed: std::sync::Mutex<Option<(Instant, Duration)>>,
    connected: AtomicBool,
    metrics: Metrics,
    health: Arc<Health>,
}

struct Session {
    conn: Connection,
    /// The SHA1 of [`PACE_SCRIPT`], as the server loaded it.
    pace_sha: String,
    /// Set while a command's reply is outstanding: a call cancelled in between (by the
    /// timeout) leaves the connection mid-reply, and it is not used again.
    busy: bool,
}

impl Fleet {
    pub fn new(config: FleetConfig, metrics: Metrics, health: Arc<Health>) -> Self {
        // Unknown until the first call; reported as connected so a fresh agent is not
        // shown degraded before it has tried.
        metrics.fleet_connected.set(1);
        Self {
            config,
            conn: Mutex::new(None),
            pace_sha: Mutex::new(String::new()),
            failed: std::sync::Mutex::new(None),
            connected: AtomicBool::new(true),
            metrics,
            health,
        }
    }

    /// The space's keys: namespaced, and hash-tagged so both live in one slot.
    fn pace_keys(&self, space: &str) -> (String, String) {
        let tag = format!("chattail:{{{}:{space}}}", self.config.namespace);
        (format!("{tag}:pace"), format!("{tag}:interval"))
    }

    /// Reserves the next send slot of `space` for the whole fleet, at least `interval`
    /// after the previous one.
    pub async fn reserve_send(&self, space: &str, interval: Duration) -> Result<Slot, FleetError> {
        if self.backing_off() {
            return Err(FleetError::Waiting);
        }
        let (key, interval_key) = self.pace_keys(space);
        let millis = interval.as_millis().max(1).to_string();
        let horizon = HORIZON.as_millis().to_string();
        let args: [&[u8]; 5] = [
            b"2",
            key.as_bytes(),
            interval_key.as_bytes(),
            millis.as_bytes(),
            horizon.as_bytes(),
        ];
        let sha = self.pace_sha.lock().await.clone();
        let with = |first: &'static [u8], script: &[u8]| -> Vec<Vec<u8>> {
            [first, script]
                .into_iter()
                .chain(args)
                .map(<[u8]>::to_vec)
                .collect()
        };
        let reply = match self.exchange(&with(b"EVALSHA", sha.as_bytes())).await {
            // The server restarted and lost its scripts: send the script itself.
            Err(FleetError::NoScript) => {
                self.exchange(&with(b"EVAL", PACE_SCRIPT.as_bytes())).await
            }
            other => other,
        };
        let outcome = match reply {
            Ok(Value::Int(wait)) if wait >= 0 => {
                Ok(Slot::After(Duration::from_millis(wait.unsigned_abs())))
            }
            Ok(Value::Int(wait)) => Ok(Slot::Full(Duration::from_millis(wait.unsigned_abs()))),
            Ok(_) => Err(FleetError::Redis(
                "the pacing script answered no number".into(),
            )),
            Err(error) => Err(error),
        };
        self.note(&outcome);
        outcome
    }

    /// Runs one command on the shared connection; its outcome is noted like any call's.
    async fn command(&self, args: &[&[u8]]) -> Result<Value, FleetError> {
        if self.backing_off() {
            return Err(FleetError::Waiting);
        }
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
        let outcome = self.exchange(&args).await;
        self.note(&outcome);
        outcome
    }

    /// One command and its reply on the shared connection (opened on demand), within
    /// `fleet.timeout`. A connection that failed, or whose reply a cancelled call left
    /// unread, is not used again. Errors are redacted before they are cut.
    async fn exchange(&self, args: &[Vec<u8>]) -> Result<Value, FleetError> {
        let call = async {
            let mut session = self.conn.lock().await;
            if session.as_ref().is_some_and(|s| s.busy) {
                *session = None;
            }
            if session.is_none() {
                let opened = self.open().await?;
                *self.pace_sha.lock().await = opened.pace_sha.clone();
                *session = Some(opened);
            }
            let Some(s) = session.as_mut() else {
                return Err(RespError::Protocol("no session"));
            };
            s.busy = true;
            let parts: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let reply = s.conn.call(&parts).await;
            s.busy = false;
            if matches!(reply, Err(RespError::Io(_) | RespError::Protocol(_))) {
                *session = None;
            }
            reply
        };
        match tokio::time::timeout(self.config.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) if error.is_noscript() => Err(FleetError::NoScript),
            Ok(Err(error)) => Err(FleetError::Redis(
                self.config
                    .redis
                    .redact(&error.to_string())
                    .chars()
                    .take(300)
                    .collect(),
            )),
            Err(_) => Err(FleetError::Timeout(self.config.timeout)),
        }
    }

    fn backing_off(&self) -> bool {
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|(at, wait)| at.elapsed() < wait)
    }

    async fn open(&self) -> Result<Session, RespError> {
        let target = self.config.redis.target();
        let mut conn = Connection::open(&target).await?;
        let sha = match conn
            .call(&[b"SCRIPT", b"LOAD", PACE_SCRIPT.as_bytes()])
            .await?
        {
            Value::Bulk(Some(sha)) => String::from_utf8_lossy(&sha).into_owned(),
            _ => return Err(RespError::Protocol("SCRIPT LOAD answered no SHA")),
        };
        Ok(Session {
            conn,
            pace_sha: sha,
            busy: false,
        })
    }

    /// Records a call's outcome: the first failure and the recovery are logged once each.
    fn note<T>(&self, outcome: &Result<T, FleetError>) {
        match outcome {
            Ok(_) => {
                if !self.connected.swap(true, Ordering::Relaxed) {
                    tracing::info!(redis = %self.config.redis.display(), "Fleet: Redis answers again; pacing with the fleet.");
                }
                *self
                    .failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                self.metrics.fleet_connected.set(1);
                self.health.set_fleet_degraded(None);
            }
            Err(FleetError::Waiting) => {}
            Err(error) => {
                {
                    let mut failed = self
                        .failed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let wait =
                        failed.map_or(RECONNECT_AFTER, |(_, w)| (w * 2).min(RECONNECT_AFTER_MAX));
                    *failed = Some((Instant::now(), wait));
                }
                self.metrics.fleet_errors.inc();
                self.metrics.fleet_connected.set(0);
                self.health.set_fleet_degraded(Some(format!(
                    "fleet: Redis {} unreachable ({error}); pacing locally",
                    self.config.redis.display()
                )));
                if self.connected.swap(false, Ordering::Relaxed) {
                    tracing::warn!(redis = %self.config.redis.display(), %error, "Fleet: Redis cannot be reached; each agent paces locally until it answers. Nothing is lost.");
                }
            }
        }
    }
}
