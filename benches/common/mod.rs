//! What the benches that run the release agent share: the load's lines and rules, and
//! reading a process's CPU time and memory from `/proc`.

#![allow(dead_code)]

use std::fs;
use std::time::{Duration, Instant};

use chattail::sandbox::Sandbox as MockChat;

pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The agent's CPU time so far, from `/proc/PID/stat` (user + system).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ") ".
    // SAFETY: `sysconf` has no preconditions.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / per_second as f64)
}

/// A `/proc/PID/status` field in MiB (`VmRSS:`, `VmHWM:`).
pub fn memory_mib(pid: u32, field: &str) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// An ordinary log line, or (about 1 in 100) an error line one of the first 20 rules
/// matches.
pub fn line(n: u64) -> String {
    if n.is_multiple_of(100) {
        format!(
            "2026-12-01T10:00:00Z ERROR [svc{}] request failed: {}\n",
            (n / 100) % 20,
            ["timeout", "refused", "reset"][(n % 3) as usize]
        )
    } else {
        format!(
            "2026-12-01T10:00:00Z INFO request_id={n:012x} GET /api/items/{} 200 {}ms\n",
            n % 9973,
            n % 350
        )
    }
}

/// `rules - 1` rules after a probe rule: the first 20 match the error lines [`line`]
/// writes (with `dedup`, as operators write noisy rules), the rest rarely anything. YAML
/// list items, for a `rules:` key.
pub fn load_rules(rules: u64) -> String {
    let mut yaml = String::new();
    for i in 0..rules.saturating_sub(1) {
        if i < 20 {
            yaml.push_str(&format!(
                "  - name: svc{i}\n    match: 'ERROR \\[svc{i}\\] request failed: (?P<reason>\\w+)'\n    webhook: errors\n    thread_key: 'svc{i}-{{reason}}'\n    dedup:\n      window: 1m\n"
            ));
        } else {
            yaml.push_str(&format!(
                "  - name: rare{i}\n    match: 'FATAL \\[core{i}\\] (?P<what>.*) corrupted'\n    webhook: errors\n"
            ));
        }
    }
    yaml
}

/// The `p` quantile (0 to 1) of sorted durations.
pub fn quantile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// The latency of each probe that reached the mock's `PROBES` space (a post may merge
/// several `probe N` notifications), sorted; `sent[N]` is when probe N was written.
pub fn probe_latencies(chat: &MockChat, sent: &[Instant]) -> Vec<Duration> {
    let mut latencies: Vec<Duration> = chat
        .messages()
        .iter()
        .filter(|m| m.space == "PROBES")
        .flat_map(|m| {
            m.text
                .split("\n\n")
                .filter_map(|t| t.strip_prefix("probe ")?.trim().parse::<usize>().ok())
                .filter_map(|id| sent.get(id).map(|t| m.at.saturating_duration_since(*t)))
                .collect::<Vec<_>>()
        })
        .collect();
    latencies.sort_unstable();
    latencies
}

/// Waits (up to 30 s) until every probe reached the mock, and returns their latencies.
pub fn wait_for_probes(chat: &MockChat, sent: &[Instant]) -> Vec<Duration> {
    let wait = Instant::now();
    while probe_latencies(chat, sent).len() < sent.len() && wait.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    probe_latencies(chat, sent)
}
