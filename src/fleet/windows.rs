//! Fleet-wide burst windows: one first message and one summary per (rule, dedup key)
//! window for the whole namespace.
//!
//! Each agent keeps its local windows as without fleet mode; the fleet decides at
//! delivery time, per queued notification that opens or sums up a window:
//!
//! - **First**: the agent claims the window (`owner` key, set only when there is none or
//!   its window is over, atomically, with Redis' clock). The owner posts its first
//!   message; any other agent reports its occurrence and drops its own.
//! - **Summary**: every agent reports its count, host and most recent line into the
//!   window's hash (a field per agent, so a retry never counts twice). The owner waits a
//!   settle delay after the window's end, then posts one summary with the fleet's sum and
//!   marks the window done. Another agent that finds no `done` mark a lease later takes
//!   the summary over (`SET NX`), so an owner killed with -9 does not take it along.
//!
//! Redis only decides who posts; every agent's outbox keeps its own notifications until
//! the decision is made. When Redis cannot answer, the agent posts its own, as without
//! fleet mode: at worst one extra first message or summary per window.

use std::time::Duration;

use super::{Fleet, FleetError, resp::Value};

/// After a window's end, how long the owner waits for the others' last counts.
pub const SETTLE: Duration = Duration::from_secs(3);
/// After the settle delay, how long the others wait for the owner's summary.
pub const LEASE: Duration = Duration::from_secs(10);

const CLAIM_SCRIPT: &str = r"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('GET', KEYS[1])
if cur then
  local f, w = string.match(cur, '^[^|]*|(%d+)|(%d+)$')
  if f and now < tonumber(f) + tonumber(w) then
    return cur
  end
end
local v = ARGV[1] .. '|' .. now .. '|' .. ARGV[2]
redis.call('SET', KEYS[1], v, 'PX', tonumber(ARGV[2]) + tonumber(ARGV[3]))
return v
";

/// The window a claim found: who owns it and when it started (Redis' clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub owner: String,
    pub first_ms: i64,
    pub window_ms: i64,
}

/// One agent's part of a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// 1 when its first occurrence was not posted (another agent owns the window).
    pub unposted_first: u64,
    /// Repeats it counted.
    pub repeats: u64,
    pub last_ms: i64,
    pub host: String,
    pub last_line: String,
}

impl Part {
    fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}",
            self.unposted_first,
            self.repeats,
            self.last_ms,
            self.host.replace('|', "/"),
            self.last_line
        )
    }

    fn decode(text: &str) -> Option<Self> {
        let mut fields = text.splitn(5, '|');
        Some(Self {
            unposted_first: fields.next()?.parse().ok()?,
            repeats: fields.next()?.parse().ok()?,
            last_ms: fields.next()?.parse().ok()?,
            host: fields.next()?.to_owned(),
            last_line: fields.next()?.to_owned(),
        })
    }
}

/// What the fleet saw of a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    /// Occurrences after the posted first one, on every host.
    pub more: u64,
    /// The hosts that saw it, in name order.
    pub hosts: Vec<String>,
    pub last_ms: i64,
    pub last_line: String,
}

/// The keys of a window: namespaced and hash-tagged (one slot), named by a hash of the
/// rule and the dedup key (which may be long).
fn keys(fleet: &Fleet, rule: &str, key: &str, first_ms: i64) -> (String, String, String, String) {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in rule.bytes().chain([0u8]).chain(key.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let tag = format!("chattail:{{{}:w:{hash:016x}}}", fleet.config.namespace);
    (
        format!("{tag}:owner"),
        format!("{tag}:{first_ms}:parts"),
        format!("{tag}:{first_ms}:done"),
        format!("{tag}:{first_ms}:summary"),
    )
}

fn ttl(window_ms: i64) -> String {
    let extra = (SETTLE + LEASE + Duration::from_secs(60)).as_millis();
    (u128::try_from(window_ms.max(0)).unwrap_or(0) + extra).to_string()
}

impl Fleet {
    /// Claims the window of `rule`/`key` for `agent`, or finds who has it.
    pub async fn claim_window(
        &self,
        agent: &str,
        rule: &str,
        key: &str,
        window_ms: i64,
    ) -> Result<Claim, FleetError> {
        let (owner_key, ..) = keys(self, rule, key, 0);
        let window = window_ms.to_string();
        let extra = (SETTLE + LEASE + Duration::from_secs(60))
            .as_millis()
            .to_string();
        let reply = self
            .command(&[
                b"EVAL",
                CLAIM_SCRIPT.as_bytes(),
                b"1",
                owner_key.as_bytes(),
                agent.as_bytes(),
                window.as_bytes(),
                extra.as_bytes(),
            ])
            .await?;
        let Value::Bulk(Some(value)) = reply else {
            return Err(FleetError::Redis(
                "the claim script answered no value".into(),
            ));
        };
        parse_claim(&String::from_utf8_lossy(&value))
            .ok_or_else(|| FleetError::Redis("the claim script answered garbage".into()))
    }

    /// Records `agent`'s part of the window `claim` (replacing its earlier report).
    pub async fn report_part(
        &self,
        agent: &str,
        rule: &str,
        key: &str,
        claim: &Claim,
        part: &Part,
    ) -> Result<(), FleetError> {
        let (_, parts, ..) = keys(self, rule, key, claim.first_ms);
        let encoded = part.encode();
        self.command(&[
            b"HSET",
            parts.as_bytes(),
            agent.as_bytes(),
            encoded.as_bytes(),
        ])
        .await?;
        let ttl = ttl(claim.window_ms);
        self.command(&[b"PEXPIRE", parts.as_bytes(), ttl.as_bytes()])
            .await?;
        Ok(())
    }

    /// Every agent's part of the window, summed.
    pub async fn window_totals(
        &self,
        rule: &str,
        key: &str,
        claim: &Claim,
    ) -> Result<Totals, FleetError> {
        let (_, parts, ..) = keys(self, rule, key, claim.first_ms);
        let Value::Array(Some(items)) = self.command(&[b"HGETALL", parts.as_bytes()]).await? else {
            return Err(FleetError::Redis("HGETALL answered no array".into()));
        };
        let mut totals = Totals {
            more: 0,
            hosts: Vec::new(),
            last_ms: i64::MIN,
            last_line: String::new(),
        };
        for pair in items.chunks(2) {
            let Some(Value::Bulk(Some(value))) = pair.get(1) else {
                continue;
            };
            let Some(part) = Part::decode(&String::from_utf8_lossy(value)) else {
                continue;
            };
            totals.more += part.unposted_first + part.repeats;
            if !totals.hosts.contains(&part.host) {
                totals.hosts.push(part.host.clone());
            }
            if part.last_ms >= totals.last_ms {
                totals.last_ms = part.last_ms;
                totals.last_line = part.last_line;
            }
        }
        totals.hosts.sort();
        Ok(totals)
    }

    /// Whether the window's summary was posted.
    pub async fn window_done(
        &self,
        rule: &str,
        key: &str,
        claim: &Claim,
    ) -> Result<bool, FleetError> {
        let (.., done, _) = keys(self, rule, key, claim.first_ms);
        Ok(matches!(
            self.command(&[b"EXISTS", done.as_bytes()]).await?,
            Value::Int(1)
        ))
    }

    /// Marks the window's summary as posted.
    pub async fn mark_done(
        &self,
        agent: &str,
        rule: &str,
        key: &str,
        claim: &Claim,
    ) -> Result<(), FleetError> {
        let (.., done, _) = keys(self, rule, key, claim.first_ms);
        let ttl = ttl(claim.window_ms);
        self.command(&[
            b"SET",
            done.as_bytes(),
            agent.as_bytes(),
            b"PX",
            ttl.as_bytes(),
        ])
        .await?;
        Ok(())
    }

    /// Takes the summary over from an owner that did not post it; true for one agent
    /// (and again for it, after a restart).
    pub async fn take_summary(
        &self,
        agent: &str,
        rule: &str,
        key: &str,
        claim: &Claim,
    ) -> Result<bool, FleetError> {
        let (.., summary) = keys(self, rule, key, claim.first_ms);
        let ttl = ttl(claim.window_ms);
        self.command(&[
            b"SET",
            summary.as_bytes(),
            agent.as_bytes(),
            b"NX",
            b"PX",
            ttl.as_bytes(),
        ])
        .await?;
        Ok(matches!(
            self.command(&[b"GET", summary.as_bytes()]).await?,
            Value::Bulk(Some(v)) if v == agent.as_bytes()
        ))
    }
}

impl Fleet {
    /// The window of `rule`/`key` as its claim stands now, if any.
    pub async fn window_owner(&self, rule: &str, key: &str) -> Result<Option<Claim>, FleetError> {
        let (owner_key, ..) = keys(self, rule, key, 0);
        let Value::Bulk(value) = self.command(&[b"GET", owner_key.as_bytes()]).await? else {
            return Err(FleetError::Redis("GET answered no string".into()));
        };
        Ok(value.and_then(|v| parse_claim(&String::from_utf8_lossy(&v))))
    }
}

fn parse_claim(value: &str) -> Option<Claim> {
    let mut fields = value.rsplitn(3, '|');
    let window_ms = fields.next()?.parse().ok()?;
    let first_ms = fields.next()?.parse().ok()?;
    Some(Claim {
        owner: fields.next()?.to_owned(),
        first_ms,
        window_ms,
    })
}
