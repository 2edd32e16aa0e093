//! Many agents, one Chat space (run with `cargo bench --bench fleet`; needs
//! `redis-server` on PATH).
//!
//! `CHATTAIL_BENCH_AGENTS` (50) release agents, each with its own log and state, post
//! `CHATTAIL_BENCH_JOBS` (2) messages each, into threads of their own, through one
//! webhook to the sandbox, which allows `CHATTAIL_BENCH_QUOTA` (10) requests per second
//! per space; every agent's `max_per_second` is that quota. The run is done twice: with
//! fleet mode (pacing shared through a real Redis) and without (each agent alone). Each
//! prints the messages posted, the 429s Chat answered, the time from the first line
//! written to the last message stored, and (with fleet mode) the Redis commands per post.
//!
//! Then the same problem on every host: each agent's log gets `CHATTAIL_BENCH_BURST` (21)
//! lines of one database timeout, for a rule with a 5 s `dedup` window. Printed per mode:
//! messages posted, 429s, time from the first line to the last message (the summary),
//! what the summary counted, and Redis commands per matching line.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chattail::sandbox::Sandbox;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Commands Redis has run so far (`INFO stats`' `total_commands_processed`).
fn redis_commands(port: u16) -> u64 {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "info", "stats"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn agent_config(dir: &Path, host: &str, url: &str, quota: u64, fleet: Option<u16>) {
    fs::create_dir_all(dir.join("logs")).unwrap();
    let mut yaml = format!(
        "state_dir: {state}\nhost: {host}\nwebhooks:\n  oncall:\n    url: \"{url}\"\n    max_per_second: {quota}\n\
         files:\n  - path: {logs}/*.log\n    start_at: beginning\n\
         delivery:\n  min_backoff: 100ms\n  max_backoff: 2s\n\
         rules:\n  - name: job\n    match: 'JOB (?P<n>\\d+) failed'\n    webhook: oncall\n    thread_key: '{host}-job-{{n}}'\n  - name: db-timeout\n    match: 'timeout connecting to (?P<db>\\S+)'\n    webhook: oncall\n    thread_key: 'db-timeout-{{db}}'\n    dedup:\n      window: 5s\n",
        state = dir.join("state").display(),
        logs = dir.join("logs").display(),
    );
    if let Some(port) = fleet {
        yaml.push_str(&format!(
            "fleet:\n  redis: redis://127.0.0.1:{port}/0\n  namespace: bench\n"
        ));
    }
    fs::write(dir.join("chattail.yaml"), yaml).unwrap();
}

/// What every agent's log gets.
#[derive(Clone, Copy)]
enum Load {
    /// `n` jobs failing, each a message of its own.
    Jobs(u64),
    /// `lines` lines of one problem, under a 5 s burst window, written in `rounds` half a
    /// second apart (more than one round of eight or more outlasts the window).
    Burst { lines: u64, rounds: u64 },
}

fn run(agents: u64, load: Load, quota: u64, redis: Option<u16>) {
    let root = tempfile::tempdir().unwrap();
    let chat = Sandbox::start();
    chat.set_rate(Some(quota as f64), None);
    let url = chat.webhook("SPACE", "KEY", "TOKEN");
    let mut children = Killed(Vec::new());
    for i in 0..agents {
        let dir = root.path().join(format!("agent-{i}"));
        agent_config(&dir, &format!("host-{i}"), &url, quota, redis);
        if i == 0 {
            let check = Command::new(env!("CARGO_BIN_EXE_chattail"))
                .args(["check", "--config"])
                .arg(dir.join("chattail.yaml"))
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "{}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
        children.0.push(
            Command::new(env!("CARGO_BIN_EXE_chattail"))
                .args(["run", "--config"])
                .arg(dir.join("chattail.yaml"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    // Let every agent start following before the problem begins.
    let ready = Instant::now();
    while ready.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let commands_before = redis.map(redis_commands).unwrap_or(0);
    let start = Instant::now();
    let log = |i: u64| root.path().join(format!("agent-{i}/logs/app.log"));
    let append = |i: u64, text: &str| {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log(i))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    let (rounds, per_round) = match load {
        Load::Jobs(n) => (1, n),
        Load::Burst { lines, rounds } => (rounds, lines),
    };
    // The unrelated line of the head-of-line probe, and when it was written.
    let mut probe: Option<Instant> = None;
    for round in 0..rounds {
        for i in 0..agents {
            let lines: String = match load {
                Load::Jobs(n) => (0..n)
                    .map(|n| format!("2026-12-01T10:00:00Z ERROR JOB {n} failed\n"))
                    .collect(),
                Load::Burst { .. } => (0..per_round)
                    .map(|l| {
                        format!(
                            "2026-12-01T10:00:00Z ERROR timeout connecting to db-main ({round}.{l})\n"
                        )
                    })
                    .collect(),
            };
            append(i, &lines);
        }
        if rounds > 1 {
            // The workload's pace, not a wait for the agents.
            std::thread::sleep(Duration::from_millis(500));
        }
        // Fleet mode: once the window's first message is out (its summary pending), an
        // unrelated line goes to the same space; it must not wait for the window.
        if probe.is_none() && redis.is_some() && matches!(load, Load::Burst { .. }) {
            while chat.messages().is_empty() && start.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(5));
            }
            append(0, "2026-12-01T10:00:00Z ERROR JOB 999999 failed\n");
            probe = Some(Instant::now());
        }
    }
    let matching = agents * rounds * per_round;
    let expected = match load {
        Load::Jobs(n) => (agents * n) as usize,
        Load::Burst { .. } => usize::MAX,
    };
    // A post may carry several notifications of one thread, merged with blank lines
    // between them (a backlog): each is counted, a first as one line, a summary as its
    // "N more".
    let counted_of = |messages: &[chattail::sandbox::Message]| -> u64 {
        notifications(messages)
            .iter()
            .map(|text| {
                text.split_once("*: ")
                    .and_then(|(_, rest)| rest.split(' ').next()?.parse().ok())
                    .unwrap_or(1)
            })
            .sum()
    };
    // A config that does not load would otherwise hold the bench here for long.
    let deadline = Duration::from_secs(180);
    loop {
        let messages = chat.messages();
        let done = match load {
            Load::Jobs(_) => messages.len() >= expected,
            Load::Burst { .. } => counted_of(&messages) >= matching,
        };
        if done || start.elapsed() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let messages = chat.messages();
    let last = messages.iter().map(|m| m.at).max().unwrap_or(start);
    let throttled = chat.requests().iter().filter(|r| r.status == 429).count();
    let mode = if redis.is_some() {
        "fleet mode"
    } else {
        "single-host mode"
    };
    let counted = counted_of(&messages);
    let shown = if expected == usize::MAX {
        format!("{} messages posted", messages.len())
    } else {
        format!("{} of {expected} messages posted", messages.len())
    };
    print!(
        "  {mode}: {shown}, {throttled} answered 429, first line → last message {:.1} s",
        last.duration_since(start).as_secs_f64()
    );
    match redis {
        Some(port) => {
            let commands = redis_commands(port).saturating_sub(commands_before);
            println!(
                ", {:.2} Redis commands per post, {:.2} per matching line",
                commands as f64 / messages.len().max(1) as f64,
                commands as f64 / matching.max(1) as f64
            );
        }
        None => println!(),
    }
    if let Load::Burst { .. } = load {
        let firsts = messages
            .iter()
            .filter(|m| {
                m.rules.as_deref() == Some("db-timeout") && !m.text.contains(" more occurrence")
            })
            .count();
        println!(
            "    {firsts} first message(s) and {} summaries; they account for {counted} of the {matching} lines written",
            messages
                .iter()
                .filter(|m| m.text.contains(" more occurrence"))
                .count()
        );
    }
    if let Some(written) = probe {
        let arrived = messages
            .iter()
            .find(|m| m.text.contains("999999"))
            .map(|m| m.at.duration_since(written));
        match arrived {
            Some(after) => println!(
                "    an unrelated line written while the window was pending reached Chat after {} ms",
                after.as_millis()
            ),
            None => println!("    the unrelated line did not arrive"),
        }
    }
}

/// The burst rule's notifications in what the space received, merged posts split.
fn notifications(messages: &[chattail::sandbox::Message]) -> Vec<&str> {
    messages
        .iter()
        .filter(|m| m.rules.as_deref().is_some_and(|r| r.contains("db-timeout")))
        .flat_map(|m| m.text.split("\n\n"))
        .filter(|t| t.starts_with("*db-timeout*"))
        .collect()
}

fn main() {
    let agents = env_number("CHATTAIL_BENCH_AGENTS", 50);
    let jobs = env_number("CHATTAIL_BENCH_JOBS", 2);
    let quota = env_number("CHATTAIL_BENCH_QUOTA", 10);
    println!("Fleet: {agents} agents × {jobs} messages into one space allowing {quota} requests/s");
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let _redis = Killed(vec![
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH"),
    ]);
    let up = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            up.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    run(agents, Load::Jobs(jobs), quota, Some(port));
    run(agents, Load::Jobs(jobs), quota, None);
    let burst = env_number("CHATTAIL_BENCH_BURST", 21);
    println!("The same problem on {agents} agents, {burst} lines each, a 5 s burst window:");
    run(
        agents,
        Load::Burst {
            lines: burst,
            rounds: 1,
        },
        quota,
        Some(port),
    );
    run(
        agents,
        Load::Burst {
            lines: burst,
            rounds: 1,
        },
        quota,
        None,
    );
    println!("The same problem logged once on each of {agents} agents:");
    run(
        agents,
        Load::Burst {
            lines: 1,
            rounds: 1,
        },
        quota,
        Some(port),
    );
    run(
        agents,
        Load::Burst {
            lines: 1,
            rounds: 1,
        },
        quota,
        None,
    );
    println!(
        "Windows back to back: a line on each of {agents} agents every 0.5 s for 8 s (5 s window):"
    );
    run(
        agents,
        Load::Burst {
            lines: 1,
            rounds: 16,
        },
        quota,
        Some(port),
    );
    run(
        agents,
        Load::Burst {
            lines: 1,
            rounds: 16,
        },
        quota,
        None,
    );
}
