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
//! `chattail_fleet_connected 0` and in `/healthz`, and the next try reconnects (at most
//! once a second, so a dead Redis costs no post more than the timeout). Every key expires.

mod resp;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::config::FleetConfig;
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use resp::{Connection, RespError, Value};

/// Reserves the next send slot of a space: `KEYS[1]` the space's key, `ARGV[1]` the
/// interval between posts in milliseconds. Returns how many milliseconds to wait.
/// The time is the server's, so agents' clocks need not agree.
const PACE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
redis.call('SET', KEYS[1], tat + interval, 'PX', tat + interval - now + 60000)
return tat - now
";

/// How long after a failure no new connection is tried.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Why Redis could not answer; the caller paces locally.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    Redis(String),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis failed less than a second ago; not retried yet")]
    Waiting,
}

/// The fleet client one agent shares between its delivery workers.
pub struct Fleet {
    config: FleetConfig,
    conn: Mutex<Option<Session>>,
    /// When the last failure was, so a dead Redis is tried once a second at most.
    failed_at: std::sync::Mutex<Option<Instant>>,
    connected: AtomicBool,
    metrics: Metrics,
    health: Arc<Health>,
}

struct Session {
    conn: Connection,
    /// The SHA1 of [`PACE_SCRIPT`], as the server loaded it.
    pace_sha: String,
}

impl Fleet {
    pub fn new(config: FleetConfig, metrics: Metrics, health: Arc<Health>) -> Self {
        // Unknown until the first call; reported as connected so a fresh agent is not
        // shown degraded before it has tried.
        metrics.fleet_connected.set(1);
        Self {
            config,
            conn: Mutex::new(None),
            failed_at: std::sync::Mutex::new(None),
            connected: AtomicBool::new(true),
            metrics,
            health,
        }
    }

    /// The space's key: namespaced, and hash-tagged so a Redis Cluster keeps it in one slot.
    fn pace_key(&self, space: &str) -> String {
        format!("chattail:{{{}:{space}}}:pace", self.config.namespace)
    }

    /// Reserves the next send slot of `space` for the whole fleet, `interval` after the
    /// previous one; returns how long to wait before sending.
    pub async fn reserve_send(
        &self,
        space: &str,
        interval: Duration,
    ) -> Result<Duration, FleetError> {
        if self
            .failed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|t| t.elapsed() < RECONNECT_AFTER)
        {
            return Err(FleetError::Waiting);
        }
        let key = self.pace_key(space);
        let millis = interval.as_millis().max(1).to_string();
        let call = async {
            let mut session = self.conn.lock().await;
            if session.is_none() {
                *session = Some(self.open().await?);
            }
            let Some(s) = session.as_mut() else {
                return Err(RespError::Protocol("no session"));
            };
            let reply = match s
                .conn
                .call(&[
                    b"EVALSHA",
                    s.pace_sha.as_bytes(),
                    b"1",
                    key.as_bytes(),
                    millis.as_bytes(),
                ])
                .await
            {
                Err(e) if e.is_noscript() => {
                    // The server restarted and lost its scripts: send the script itself.
                    s.conn
                        .call(&[
                            b"EVAL",
                            PACE_SCRIPT.as_bytes(),
                            b"1",
                            key.as_bytes(),
                            millis.as_bytes(),
                        ])
                        .await
                }
                other => other,
            };
            if reply.is_err() {
                *session = None;
            }
            reply
        };
        let outcome = match tokio::time::timeout(self.config.timeout, call).await {
            Ok(Ok(Value::Int(wait))) => Ok(Duration::from_millis(u64::try_from(wait).unwrap_or(0))),
            Ok(Ok(_)) => Err(FleetError::Redis(
                "the pacing script answered no number".into(),
            )),
            Ok(Err(error)) => Err(FleetError::Redis(
                self.config.redis.redact(&error.to_string()),
            )),
            Err(_) => {
                // The connection may be mid-reply: start a new one next time.
                *self.conn.lock().await = None;
                Err(FleetError::Timeout(self.config.timeout))
            }
        };
        self.note(&outcome);
        outcome
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
        })
    }

    /// Records a call's outcome: the first failure and the recovery are logged once each.
    fn note<T>(&self, outcome: &Result<T, FleetError>) {
        match outcome {
            Ok(_) => {
                if !self.connected.swap(true, Ordering::Relaxed) {
                    tracing::info!(redis = %self.config.redis.display(), "Fleet: Redis answers again; pacing with the fleet.");
                }
                self.metrics.fleet_connected.set(1);
                self.health.set_fleet_degraded(None);
            }
            Err(FleetError::Waiting) => {}
            Err(error) => {
                *self
                    .failed_at
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
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
