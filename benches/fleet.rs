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
    /// `n` lines of one problem, under a 5 s burst window.
    Burst(u64),
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
    for i in 0..agents {
        let log = root.path().join(format!("agent-{i}/logs/app.log"));
        let lines: String = match load {
            Load::Jobs(n) => (0..n)
                .map(|n| format!("2026-12-01T10:00:00Z ERROR JOB {n} failed\n"))
                .collect(),
            Load::Burst(n) => (0..n)
                .map(|i| {
                    format!("2026-12-01T10:00:00Z ERROR timeout connecting to db-main ({i})\n")
                })
                .collect(),
        };
        fs::write(log, lines).unwrap();
    }
    let (expected, matching) = match (load, redis) {
        (Load::Jobs(n), _) => ((agents * n) as usize, agents * n),
        (Load::Burst(n), Some(_)) => (2, agents * n),
        (Load::Burst(n), None) => ((2 * agents) as usize, agents * n),
    };
    // A config that does not load would otherwise hold the bench here for long.
    let deadline = Duration::from_secs(180);
    while chat.messages().len() < expected && start.elapsed() < deadline {
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
    let counted: u64 = messages
        .iter()
        .map(|m| {
            m.text
                .split_once("*: ")
                .and_then(|(_, rest)| rest.split(' ').next()?.parse().ok())
                .unwrap_or(1)
        })
        .sum();
    print!(
        "  {mode}: {} of {expected} messages posted, {throttled} answered 429, first line → last message {:.1} s",
        messages.len(),
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
    if let Load::Burst(_) = load {
        println!("    the messages account for {counted} of the {matching} matching lines");
    }
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
    run(agents, Load::Burst(burst), quota, Some(port));
    run(agents, Load::Burst(burst), quota, None);
}
