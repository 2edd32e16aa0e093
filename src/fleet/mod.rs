//! Fleet mode (`fleet:` in the config): agents on many hosts that post to the same Chat
//! spaces share state in Redis (or Valkey), so that the fleet behaves as one agent where
//! that matters.
//!
//! What is shared:
//!
//! - **Pacing.** Chat's quota is one request per second per space, shared by every
//!   webhook of the space, so by every host. Before each post a delivery worker reserves
//!   the next send slot of its space in Redis (GCRA: one "theoretical arrival time" per
//!   space, advanced atomically with the server's clock) and sleeps until that slot.
//! - **Burst windows** ([`windows`]): one first message and one summary per (rule, dedup
//!   key) window for the whole namespace, the summary counting every host's occurrences.
//!
//! Everything runs through one Lua script ([`SCRIPT`]), loaded once per connection and
//! called by its hash, so each step (reserve, claim, report, take) is one atomic round
//! trip on Redis' clock; agents' clocks never meet Redis' in a comparison.
//!
//! Redis only decides *when* and *who*; the local outbox stays the record of *what* must
//! be posted. Redis trouble never costs a message: a call that fails or takes longer than
//! `fleet.timeout` is answered locally (local pacing, each host's own summary), the
//! trouble is logged once, reported as `chattail_fleet_connected 0` and in `/healthz`,
//! and no call is tried for a second, then 2, 4, ... up to 30 s while Redis stays away
//! (an idle agent probes with `PING` on the same schedule, so it sees Redis return)
//! (so a Redis that accepts and never answers costs a post the timeout only now and
//! then). An answer out of range (a pacing wait beyond what any reservation can be) is
//! treated the same way and counted. Every key expires.

mod resp;
pub mod silences;
pub mod windows;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::config::FleetConfig;
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use resp::{Connection, RespError, Value};

/// Every step fleet mode takes in Redis, chosen by `ARGV[1]`. One script, so one hash
/// to load and to lose (a restarted server answers `NOSCRIPT`; the script is then sent
/// whole). `now` is the server's time in milliseconds. `replicate_commands` lets Redis
/// 3.2 and 4 write after `TIME`; from Redis 5 on it is the default.
///
/// - `pace` (`KEYS`: the space's next free time, the strictest interval any host asked
///   for in the last hour; `ARGV`: this host's interval, the horizon): reserves the next
///   send slot. Returns `{wait, interval}`: the milliseconds to wait for the reserved
///   slot or, when the next free slot is beyond the horizon, minus the milliseconds to
///   wait before asking again (nothing is reserved then, so a queue of waiting hosts
///   cannot push the pace ahead without bound). A next free time further ahead than any
///   reservation can reach (a clock jump, a tampered key) starts again from now.
/// - `claim`, `report`, `take`: the burst-window steps, described in [`windows`].
const SCRIPT: &str = r"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]

-- A part: firsts|repeats|final_ms|joined_ms|window_ms|last_ms|host|line
local function parse(p)
  local f, r, fin, j, w, l, h, line =
    string.match(p, '^(%d+)|(%d+)|(%d+)|(%-?%d+)|(%d+)|(%-?%d+)|([^|]*)|(.*)$')
  if not f then return nil end
  return {firsts = tonumber(f), repeats = tonumber(r), final = tonumber(fin),
          joined = tonumber(j), window = tonumber(w), last = tonumber(l), host = h, line = line}
end
local function encode(p)
  return p.firsts .. '|' .. p.repeats .. '|' .. p.final .. '|' .. p.joined .. '|' ..
    p.window .. '|' .. p.last .. '|' .. p.host .. '|' .. p.line
end

if op == 'pace' then
  local interval = tonumber(ARGV[2])
  local strictest = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
  if interval >= strictest then
    redis.call('SET', KEYS[2], interval, 'PX', 3600000)
  else
    interval = strictest
  end
  local horizon = tonumber(ARGV[3])
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
  if tat < now or tat - now > horizon + interval then tat = now end
  if tat - now > horizon then
    return {-(tat - now - horizon), interval}
  end
  redis.call('SET', KEYS[1], tat + interval, 'PX', tat + interval - now + 60000)
  return {tat - now, interval}
end

if op == 'claim' then
  -- KEYS: the owner key, the window keys' prefix. ARGV: member, window_ms, ttl extra,
  -- host, line, age of the line in ms.
  local member, w, extra = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
  -- A member that claimed before (a retry after a crash) gets the same answer again,
  -- even once that window is over: its part is there, not in a new window.
  local mkey = KEYS[2] .. 'm:' .. member
  local seen = redis.call('GET', mkey)
  if seen then
    local m, f, ww = string.match(seen, '^(%d)|(%d+)|(%d+)$')
    if m then return {tonumber(m), tonumber(f), tonumber(ww)} end
  end
  local owner, first, win
  local cur = redis.call('GET', KEYS[1])
  if cur then
    local o, f, ww = string.match(cur, '^(.*)|(%d+)|(%d+)$')
    if o and now < tonumber(f) + tonumber(ww) then
      owner, first, win = o, tonumber(f), tonumber(ww)
    end
  end
  if not owner then
    owner, first, win = member, now, w
    redis.call('SET', KEYS[1], owner .. '|' .. first .. '|' .. win, 'PX', win + extra)
  end
  local parts = KEYS[2] .. first .. ':parts'
  local mine = 0
  if owner == member then mine = 1 end
  if redis.call('HEXISTS', parts, member) == 0 then
    redis.call('HSET', parts, member, encode({firsts = 1 - mine, repeats = 0, final = 0,
      joined = now, window = w, last = now - tonumber(ARGV[7]), host = ARGV[5], line = ARGV[6]}))
  end
  redis.call('PEXPIRE', parts, win + w + extra)
  redis.call('SET', mkey, mine .. '|' .. first .. '|' .. win, 'PX', win + w + extra)
  return {mine, first, win}
end

if op == 'report' then
  -- KEYS: the window's parts, its summary mark. ARGV: member, repeats, age of the last
  -- line in ms, the last line.
  local raw = redis.call('HGET', KEYS[1], ARGV[2])
  if not raw then return 'lost' end
  local p = parse(raw)
  if not p then return 'lost' end
  if p.final > 0 then return 'counted' end
  if redis.call('EXISTS', KEYS[2]) == 1 then return 'closed' end
  local repeats = tonumber(ARGV[3])
  p.repeats = repeats
  p.final = now
  if repeats > 0 then
    p.last = now - tonumber(ARGV[4])
    p.line = ARGV[5]
  end
  redis.call('HSET', KEYS[1], ARGV[2], encode(p))
  return 'counted'
end

if op == 'take' then
  -- KEYS: the window's parts, its summary mark. ARGV: member, owner (1/0), the window's
  -- first ms, its length, settle ms, lease ms, the mark's ttl.
  local member, owner = ARGV[2], ARGV[3] == '1'
  local first, win = tonumber(ARGV[4]), tonumber(ARGV[5])
  local mark = redis.call('GET', KEYS[2])
  if mark and mark ~= member then
    -- Taken by another part. Whether it counted this one: a part Redis lost (`missing`)
    -- or one whose report it lost (`closed`, a restore from an old snapshot) was not.
    local raw = redis.call('HGET', KEYS[1], member)
    local p = raw and parse(raw)
    if not p then return {'missing'} end
    if p.final == 0 then return {'closed'} end
    return {'taken'}
  end
  local all = redis.call('HGETALL', KEYS[1])
  if #all == 0 then return {'lost'} end
  local more, last, line = 0, nil, ''
  local hosts, names = {}, {}
  local all_final, final_at, deadline = true, first + win, first + win
  for i = 1, #all, 2 do
    local p = parse(all[i + 1])
    if p then
      more = more + p.firsts + p.repeats
      if p.final == 0 then all_final = false
      elseif p.final > final_at then final_at = p.final end
      if p.joined + p.window > deadline then deadline = p.joined + p.window end
      if (p.firsts + p.repeats) > 0 and (last == nil or p.last >= last) then
        last = p.last
        line = p.line
      end
      if not hosts[p.host] then hosts[p.host] = true table.insert(names, p.host) end
    end
  end
  if not mark then
    deadline = deadline + tonumber(ARGV[6])
    local ready = deadline
    if all_final and final_at < deadline then ready = final_at end
    if not owner then ready = ready + tonumber(ARGV[7]) end
    if now < ready then return {'wait', ready - now} end
    redis.call('SET', KEYS[2], member, 'PX', tonumber(ARGV[8]))
  end
  local span = 0
  if last and last > first then span = last - first end
  table.sort(names)
  return {'totals', more, span, #names, line, names[1] or '', names[2] or '', names[3] or ''}
end

-- Silences: KEYS[1] the records (a hash: id -> JSON), KEYS[2] what each host held back
-- (`id|host` -> `count|last_ms`). Times are the server's.
local function keep_silences(keep)
  local ms = 7 * 86400000 + keep
  redis.call('PEXPIRE', KEYS[1], ms)
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ms) end
end

if op == 'sil_add' then
  -- ARGV: the record (JSON, without times), its length in ms, how long an ended one stays.
  local r = cjson.decode(ARGV[2])
  r.starts_ms = now
  r.ends_ms = now + tonumber(ARGV[3])
  r.revision = now
  local enc = cjson.encode(r)
  redis.call('HSET', KEYS[1], r.id, enc)
  keep_silences(tonumber(ARGV[4]))
  return enc
end

if op == 'sil_expire' then
  -- ARGV: the id, who ends it.
  local enc = redis.call('HGET', KEYS[1], ARGV[2])
  if not enc then return false end
  local r = cjson.decode(enc)
  if tonumber(r.ends_ms) > now then
    r.ends_ms = now
    r.expired_by = ARGV[3]
    r.revision = math.max(now, tonumber(r.revision) + 1)
    enc = cjson.encode(r)
    redis.call('HSET', KEYS[1], ARGV[2], enc)
  end
  return enc
end

if op == 'sil_sync' then
  -- ARGV: host, how long an ended silence stays, n, then n (id, record, revision) this
  -- host holds, written where Redis has none or an older revision (Redis restarted
  -- empty, or from an old snapshot), then (id, count, last_ms) triples of what this host
  -- held back. Answers every record still kept.
  local host, keep, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
  for i = 0, n - 1 do
    local id, rec, rev = ARGV[5 + 3 * i], ARGV[6 + 3 * i], tonumber(ARGV[7 + 3 * i]) or 0
    local cur = redis.call('HGET', KEYS[1], id)
    local write = not cur
    if cur then
      local ok, r = pcall(cjson.decode, cur)
      write = not ok or type(r) ~= 'table' or (tonumber(r.revision) or 0) < rev
    end
    if write then redis.call('HSET', KEYS[1], id, rec) end
  end
  for j = 5 + 3 * n, #ARGV - 2, 3 do
    redis.call('HSET', KEYS[2], ARGV[j] .. '|' .. host, ARGV[j + 1] .. '|' .. ARGV[j + 2])
  end
  local all = redis.call('HGETALL', KEYS[1])
  local out, kept = {}, {}
  for i = 1, #all, 2 do
    local ok, r = pcall(cjson.decode, all[i + 1])
    local ends = ok and type(r) == 'table' and tonumber(r.ends_ms)
    if ends and ends + keep < now then
      redis.call('HDEL', KEYS[1], all[i])
    else
      kept[all[i]] = true
      out[#out + 1] = all[i + 1]
    end
  end
  local held = redis.call('HKEYS', KEYS[2])
  for _, field in ipairs(held) do
    local id = string.match(field, '^([^|]*)|')
    if not id or not kept[id] then redis.call('HDEL', KEYS[2], field) end
  end
  if #out > 0 then keep_silences(keep) end
  return out
end

if op == 'sil_read' then
  return {redis.call('HVALS', KEYS[1]), redis.call('HGETALL', KEYS[2])}
end

return redis.error_reply('ERR chattail: unknown step')
";

/// How far ahead a slot may be reserved.
const HORIZON: Duration = Duration::from_secs(30);

/// How long after a first failure no new call is tried; doubled after each further one.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
const RECONNECT_AFTER_MAX: Duration = Duration::from_secs(30);

/// The longest interval a host may ask for (the slowest `max_per_second`, 0.01/s), so
/// the longest a slot can legitimately be ahead is this plus the horizon.
const MAX_INTERVAL: Duration = Duration::from_secs(100);

/// What a reservation gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Send after this wait.
    After(Duration),
    /// Every slot within the horizon is taken: ask again after this wait.
    Full(Duration),
}

/// Why Redis could not answer; the caller acts locally.
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
    /// An answer that cannot be right (a wrong server, a tampered key, a clock jump).
    #[error("Redis answered out of range: {0}")]
    BadAnswer(String),
}

/// The fleet client one agent shares between its delivery workers.
pub struct Fleet {
    config: FleetConfig,
    conn: Mutex<Option<Session>>,
    /// When the last failure was and how long no call is tried after it.
    failed: std::sync::Mutex<Option<(Instant, Duration)>>,
    connected: AtomicBool,
    metrics: Metrics,
    health: Arc<Health>,
}

struct Session {
    conn: Connection,
    /// The SHA1 of [`SCRIPT`], as the server loaded it.
    sha: String,
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
    /// after the previous one. A wait longer than any reservation can be is refused as
    /// [`FleetError::BadAnswer`] (the caller paces locally).
    pub async fn reserve_send(&self, space: &str, interval: Duration) -> Result<Slot, FleetError> {
        let (key, interval_key) = self.pace_keys(space);
        let millis = interval.as_millis().max(1).to_string();
        let horizon = HORIZON.as_millis().to_string();
        let reply = self
            .script(
                &[key.as_bytes(), interval_key.as_bytes()],
                &[b"pace", millis.as_bytes(), horizon.as_bytes()],
            )
            .await;
        let outcome = reply.and_then(|value| pace_answer(&value, interval));
        if let Err(FleetError::BadAnswer(_)) = &outcome {
            self.metrics.fleet_bad_answers.inc();
        }
        self.note(&outcome);
        outcome
    }

    /// Runs [`SCRIPT`] with `keys` and `args` (the step first): by its hash, or whole
    /// when the server lost it. The outcome is not noted; callers note it.
    async fn script(&self, keys: &[&[u8]], args: &[&[u8]]) -> Result<Value, FleetError> {
        if self.backing_off() {
            return Err(FleetError::Waiting);
        }
        let count = keys.len().to_string();
        let call = |first: &'static [u8], body: Option<&[u8]>| -> Vec<Vec<u8>> {
            let mut out = vec![first.to_vec()];
            out.push(body.map_or_else(Vec::new, <[u8]>::to_vec));
            out.push(count.as_bytes().to_vec());
            out.extend(keys.iter().chain(args).map(|a| a.to_vec()));
            out
        };
        // The hash is filled in by `exchange` from the session (`None` body).
        match self.exchange(call(b"EVALSHA", None), true).await {
            Err(FleetError::NoScript) => {
                self.exchange(call(b"EVAL", Some(SCRIPT.as_bytes())), false)
                    .await
            }
            other => other,
        }
    }

    /// While Redis is marked unusable and its backoff is over, asks it whether it is back
    /// (`PING`), so an agent with nothing to post still recovers (`/healthz`, the metric,
    /// the self-alert) on the backoff schedule. Does nothing while Redis answers.
    pub async fn probe_if_failing(&self) {
        if self.connected.load(Ordering::Relaxed) || self.backing_off() {
            return;
        }
        let outcome = self.exchange(vec![b"PING".to_vec()], false).await;
        self.note(&outcome);
    }

    /// Runs one script step and notes its outcome like any call's.
    async fn step(&self, keys: &[&[u8]], args: &[&[u8]]) -> Result<Value, FleetError> {
        let outcome = self.script(keys, args).await;
        self.note(&outcome);
        outcome
    }

    /// One command and its reply on the shared connection (opened on demand). Waiting
    /// for the connection (another worker's call) is not Redis' time: only opening it and
    /// the exchange itself count against `fleet.timeout`. With `by_hash`, the second
    /// argument is replaced by the script hash the session's server gave. A connection
    /// that failed, or whose reply a cancelled call left unread, is not used again.
    /// Errors are redacted before they are cut.
    async fn exchange(&self, mut args: Vec<Vec<u8>>, by_hash: bool) -> Result<Value, FleetError> {
        let mut session = self.conn.lock().await;
        let call = async {
            if session.as_ref().is_some_and(|s| s.busy) {
                *session = None;
            }
            if session.is_none() {
                *session = Some(self.open().await?);
            }
            let Some(s) = session.as_mut() else {
                return Err(RespError::Protocol("no session"));
            };
            if by_hash && let Some(slot) = args.get_mut(1) {
                slot.clone_from(&s.sha.as_bytes().to_vec());
            }
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
        let sha = match conn.call(&[b"SCRIPT", b"LOAD", SCRIPT.as_bytes()]).await? {
            Value::Bulk(Some(sha)) => String::from_utf8_lossy(&sha).into_owned(),
            _ => return Err(RespError::Protocol("SCRIPT LOAD answered no SHA")),
        };
        Ok(Session {
            conn,
            sha,
            busy: false,
        })
    }

    /// Records a call's outcome: the first failure and the recovery are logged once each.
    fn note<T>(&self, outcome: &Result<T, FleetError>) {
        match outcome {
            Ok(_) => {
                if !self.connected.swap(true, Ordering::Relaxed) {
                    tracing::info!(redis = %self.config.redis.display(), "Fleet: Redis answers again; the fleet shares pacing and windows again.");
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
                    "fleet: Redis {} unusable ({error}); pacing and windows locally",
                    self.config.redis.display()
                )));
                if self.connected.swap(false, Ordering::Relaxed) {
                    tracing::warn!(redis = %self.config.redis.display(), %error, "Fleet: Redis cannot be used; each agent paces and sums up its windows alone until it answers. Nothing is lost.");
                }
            }
        }
    }
}

/// What the pacing step answered, checked: a wait longer than the strictest interval
/// (at most [`MAX_INTERVAL`]) plus the horizon cannot come from a reservation.
fn pace_answer(value: &Value, interval: Duration) -> Result<Slot, FleetError> {
    let Value::Array(Some(items)) = value else {
        return Err(FleetError::Redis(
            "the pacing script answered no list".into(),
        ));
    };
    let (Some(Value::Int(wait)), Some(Value::Int(strictest))) = (items.first(), items.get(1))
    else {
        return Err(FleetError::Redis(
            "the pacing script answered no numbers".into(),
        ));
    };
    let strictest = Duration::from_millis(strictest.unsigned_abs())
        .max(interval)
        .min(MAX_INTERVAL);
    let limit = strictest + HORIZON;
    let millis = Duration::from_millis(wait.unsigned_abs());
    if millis > limit {
        return Err(FleetError::BadAnswer(format!(
            "a pacing wait of {} ms, beyond the {} ms any reservation can be",
            wait.unsigned_abs(),
            limit.as_millis()
        )));
    }
    Ok(if *wait >= 0 {
        Slot::After(millis)
    } else {
        Slot::Full(millis)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_answers_beyond_any_reservation_are_refused() {
        let second = Duration::from_secs(1);
        let answer = |wait: i64, strictest: i64| {
            pace_answer(
                &Value::Array(Some(vec![Value::Int(wait), Value::Int(strictest)])),
                second,
            )
        };
        assert_eq!(
            answer(900, 1000).unwrap(),
            Slot::After(Duration::from_millis(900))
        );
        assert_eq!(
            answer(-200, 1000).unwrap(),
            Slot::Full(Duration::from_millis(200))
        );
        // A host with a stricter interval may push the pace further ahead.
        assert!(answer(60_000, 40_000).is_ok());
        for (wait, strictest) in [(86_400_000, 1000), (-86_400_000, 1000), (31_001, 1000)] {
            assert!(
                matches!(answer(wait, strictest), Err(FleetError::BadAnswer(_))),
                "{wait}"
            );
        }
        // The strictest interval a server names is bounded too.
        assert!(matches!(
            answer(86_400_000, 86_400_000),
            Err(FleetError::BadAnswer(_))
        ));
    }
}
