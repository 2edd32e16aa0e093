//! Fleet-wide burst windows: one first message and one summary per (rule, dedup key)
//! window for the whole namespace, the summary counting every line of every host.
//!
//! Each agent keeps its local windows as without fleet mode (a local window opens with
//! the agent's first occurrence and always ends with a summary row, in fleet mode even
//! when it counted nothing). The fleet decides at delivery time, apart from posting
//! (`deliver::fleet_windows`), in three atomic steps of [`super::SCRIPT`], all on Redis'
//! clock:
//!
//! - **claim** (a local window's first occurrence): the fleet window of the key is the
//!   current claim, or a new one owned by the caller when there is none or it is over.
//!   The caller's *part* (a hash field per local window, so a retry never counts twice)
//!   is added in the same step: an owner's first is posted by it, anyone else's first is
//!   counted there and not posted.
//! - **report** (a local window's summary row): its repeats go into its part, which
//!   becomes final. A report that comes after the summary was taken is refused
//!   (`closed`): the caller then posts its own summary, so the line is still counted
//!   once. A window Redis no longer has (`lost`: restarted empty) is summed up locally.
//! - **take**: whoever takes the summary mark posts the summary, with the sum of every
//!   part, frozen by the mark. A part that asks after another took it learns whether it
//!   was counted (Redis may have lost its report or the part itself). The owner may take it once the window is over and every
//!   part is final (or, for parts of hosts that went away, at the latest every part's
//!   own window plus a settle delay after it joined); anyone else a lease after that, so
//!   an owner killed with -9 does not take the summary along. Taking again with the same
//!   member answers the same totals (a restart between taking and recording it).
//!
//! Taking the mark is also what marks the window done: the taker's outbox holds the
//! decided summary durably and posts it, retrying as long as it takes.

use std::time::Duration;

use super::{Fleet, FleetError, resp::Value};

/// After every part's own window, how long the summary waits for reports that have not
/// come (a host that went away, or one a tick late).
pub const SETTLE: Duration = Duration::from_secs(3);
/// After the owner could have taken the summary, how long the others wait before one of
/// them takes it.
pub const LEASE: Duration = Duration::from_secs(10);
/// How long a window's keys outlive it, so a late report still finds its window.
pub const KEEP: Duration = Duration::from_secs(3600);
/// The longest line kept in a part (the summary shows the most recent one, cut to fit a
/// message anyway), so that a window's hash stays small.
const MAX_LINE_BYTES: usize = 2048;

/// The fleet window a local window joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// The local window's first occurrence is the fleet's: post it.
    pub owner: bool,
    /// When the fleet window started and how long it lasts (Redis' clock).
    pub first_ms: i64,
    pub window_ms: i64,
}

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The part is in the window (now or by an earlier try).
    Counted,
    /// The summary was taken before the report came: not counted there.
    Closed,
    /// Redis no longer has the window or the part (restarted empty, expired).
    Lost,
}

/// What a take gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// The caller posts the summary with these totals.
    Totals(Totals),
    /// Not yet: ask again after this wait.
    Wait(Duration),
    /// Another part took it, with this part in it: it posts.
    Taken,
    /// Another part took it without this part's report (Redis lost the report: a restore
    /// from an old snapshot); the part's first occurrence is in it.
    Closed,
    /// Another part took it, and Redis no longer has this part at all.
    Missing,
    /// Redis no longer has the window.
    Lost,
}

/// What the fleet saw of a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    /// Occurrences beside the posted first one, on every host.
    pub more: u64,
    /// From the first occurrence to the most recent one counted.
    pub span_ms: i64,
    /// How many hosts saw it, and the first few names in name order.
    pub hosts: u64,
    pub named: Vec<String>,
    pub last_line: String,
}

/// The keys of a (rule, dedup key): namespaced and hash-tagged (one slot), named by a
/// hash of the rule and the key (which may be long). Returns the owner key and the
/// prefix of the windows' keys.
fn keys(fleet: &Fleet, rule: &str, key: &str) -> (String, String) {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in rule.bytes().chain([0u8]).chain(key.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let tag = format!("chattail:{{{}:w:{hash:016x}}}", fleet.config.namespace);
    (format!("{tag}:owner"), format!("{tag}:"))
}

/// The parts and summary-mark keys of the fleet window that started at `first_ms`.
fn window_keys(fleet: &Fleet, rule: &str, key: &str, first_ms: i64) -> (String, String) {
    let (_, prefix) = keys(fleet, rule, key);
    (
        format!("{prefix}{first_ms}:parts"),
        format!("{prefix}{first_ms}:summary"),
    )
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

/// `line` cut to at most [`MAX_LINE_BYTES`], at a character boundary.
fn cut(line: &str) -> &str {
    let mut end = line.len().min(MAX_LINE_BYTES);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

fn int(value: Option<&Value>) -> Option<i64> {
    match value {
        Some(Value::Int(n)) => Some(*n),
        Some(Value::Bulk(Some(b))) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

pub(super) fn text(value: Option<&Value>) -> Option<String> {
    match value {
        Some(Value::Bulk(Some(b))) => Some(String::from_utf8_lossy(b).into_owned()),
        Some(Value::Simple(s)) => Some(s.clone()),
        _ => None,
    }
}

fn garbage(step: &str) -> FleetError {
    FleetError::Redis(format!("the {step} step answered garbage"))
}

/// A part's member name: the agent and its local window, so that one agent's local
/// windows in one fleet window (a shorter `dedup.window` than the owner's) are parts of
/// their own.
pub fn member(agent: &str, local_first_ms: i64) -> String {
    format!("{agent}:{local_first_ms}")
}

impl Fleet {
    /// Joins (or opens) the fleet window of `rule`/`key` for the local window `member`,
    /// whose first occurrence `line` was seen `age` ago on `host`.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim_window(
        &self,
        member: &str,
        rule: &str,
        key: &str,
        window_ms: i64,
        host: &str,
        line: &str,
        age: Duration,
    ) -> Result<Joined, FleetError> {
        let (owner_key, prefix) = keys(self, rule, key);
        let window = window_ms.max(1).to_string();
        let extra = millis(SETTLE + LEASE + KEEP);
        let host = host.replace('|', "/");
        let age = millis(age);
        let reply = self
            .step(
                &[owner_key.as_bytes(), prefix.as_bytes()],
                &[
                    b"claim",
                    member.as_bytes(),
                    window.as_bytes(),
                    extra.as_bytes(),
                    host.as_bytes(),
                    cut(line).as_bytes(),
                    age.as_bytes(),
                ],
            )
            .await?;
        let Value::Array(Some(items)) = reply else {
            return Err(garbage("claim"));
        };
        match (int(items.first()), int(items.get(1)), int(items.get(2))) {
            (Some(mine), Some(first_ms), Some(window_ms)) => Ok(Joined {
                owner: mine == 1,
                first_ms,
                window_ms,
            }),
            _ => Err(garbage("claim")),
        }
    }

    /// Reports the local window `member`'s `repeats` (the most recent `line`, seen `age`
    /// ago) into the fleet window that started at `first_ms`.
    #[allow(clippy::too_many_arguments)]
    pub async fn report_window(
        &self,
        member: &str,
        rule: &str,
        key: &str,
        first_ms: i64,
        repeats: u64,
        age: Duration,
        line: &str,
    ) -> Result<Report, FleetError> {
        let (parts, mark) = window_keys(self, rule, key, first_ms);
        let repeats = repeats.to_string();
        let age = millis(age);
        let reply = self
            .step(
                &[parts.as_bytes(), mark.as_bytes()],
                &[
                    b"report",
                    member.as_bytes(),
                    repeats.as_bytes(),
                    age.as_bytes(),
                    cut(line).as_bytes(),
                ],
            )
            .await?;
        match text(Some(&reply)).as_deref() {
            Some("counted") => Ok(Report::Counted),
            Some("closed") => Ok(Report::Closed),
            Some("lost") => Ok(Report::Lost),
            _ => Err(garbage("report")),
        }
    }

    /// Takes the summary of the fleet window `joined` for `member`, when it is time.
    pub async fn take_summary(
        &self,
        member: &str,
        rule: &str,
        key: &str,
        joined: &Joined,
    ) -> Result<Take, FleetError> {
        let (parts, mark) = window_keys(self, rule, key, joined.first_ms);
        let owner: &[u8] = if joined.owner { b"1" } else { b"0" };
        let first = joined.first_ms.to_string();
        let window = joined.window_ms.to_string();
        let ttl =
            (i128::from(joined.window_ms.max(0)) + (LEASE + KEEP).as_millis() as i128).to_string();
        let reply = self
            .step(
                &[parts.as_bytes(), mark.as_bytes()],
                &[
                    b"take",
                    member.as_bytes(),
                    owner,
                    first.as_bytes(),
                    window.as_bytes(),
                    millis(SETTLE).as_bytes(),
                    millis(LEASE).as_bytes(),
                    ttl.as_bytes(),
                ],
            )
            .await?;
        let Value::Array(Some(items)) = reply else {
            return Err(garbage("take"));
        };
        match text(items.first()).as_deref() {
            Some("taken") => Ok(Take::Taken),
            Some("closed") => Ok(Take::Closed),
            Some("missing") => Ok(Take::Missing),
            Some("lost") => Ok(Take::Lost),
            Some("wait") => {
                let wait = int(items.get(1)).ok_or_else(|| garbage("take"))?;
                Ok(Take::Wait(Duration::from_millis(wait.unsigned_abs())))
            }
            Some("totals") => {
                let more = int(items.get(1)).ok_or_else(|| garbage("take"))?;
                let span_ms = int(items.get(2)).ok_or_else(|| garbage("take"))?;
                let hosts = int(items.get(3)).ok_or_else(|| garbage("take"))?;
                let last_line = text(items.get(4)).unwrap_or_default();
                let named = items
                    .iter()
                    .skip(5)
                    .filter_map(|v| text(Some(v)))
                    .filter(|h| !h.is_empty())
                    .collect();
                Ok(Take::Totals(Totals {
                    more: more.unsigned_abs(),
                    span_ms,
                    hosts: hosts.unsigned_abs(),
                    named,
                    last_line,
                }))
            }
            _ => Err(garbage("take")),
        }
    }
}
