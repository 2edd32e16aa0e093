//! Delivery figures, printed (run with `cargo bench --bench delivery`):
//!
//! 1. Latency from appending a matching line to the request reaching a mock Chat, p50 and
//!    p99 over 100 lines written 100 ms apart (no backlog, so no merging).
//! 2. The time to drain a backlog of 1,000 queued notifications for 10 threads at Chat's
//!    quota of 1 request per second, and the number of posts it took.
//!
//! The agent is the release binary, run as a child process; the mock Chat is the one the
//! integration tests use.

// The benchmark uses only part of the mock's controls.
#[allow(dead_code)]
#[path = "../tests/integration/mock_chat.rs"]
mod mock_chat;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mock_chat::MockChat;

fn config(dir: &Path, url: &str, max_per_second: u32) -> std::path::PathBuf {
    let path = dir.join("chattail.yaml");
    fs::create_dir_all(dir.join("logs")).unwrap();
    fs::write(
        &path,
        format!(
            r#"state_dir: {state}
webhooks:
  oncall:
    url: "{url}"
    max_per_second: {max_per_second}
files:
  - path: {logs}/*.log
    start_at: beginning
rules:
  - name: err
    match: 'ERROR job (?P<job>\d+) item (?P<item>\d+)'
    webhook: oncall
    thread_key: 'job-{{job}}'
    message: "job {{job}} item {{item}}"
"#,
            state = dir.join("state").display(),
            logs = dir.join("logs").display(),
        ),
    )
    .unwrap();
    path
}

fn start_agent(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_chattail"))
        .args(["run", "--config"])
        .arg(config)
        .env(
            "CHATTAIL_LOG",
            std::env::var("CHATTAIL_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn items_delivered(chat: &MockChat) -> usize {
    chat.messages()
        .iter()
        .map(|m| m.text.matches("item ").count())
        .sum()
}

fn latency() {
    let chat = MockChat::start();
    chat.set_rate(None, None);
    let url = chat.webhook("BENCH", "KEY", "TOKEN");
    let dir = tempfile::tempdir().unwrap();
    let mut agent = start_agent(&config(dir.path(), &url, 20));
    let log = dir.path().join("logs/app.log");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    // Let the agent find the file before measuring.
    writeln!(f, "warming up").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut written = Vec::new();
    for item in 0..100 {
        writeln!(
            f,
            "2026-11-28T14:00:00Z ERROR job {} item {item}",
            item % 10
        )
        .unwrap();
        written.push(Instant::now());
        std::thread::sleep(Duration::from_millis(100));
    }
    let start = Instant::now();
    while items_delivered(&chat) < 100 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut latencies: Vec<Duration> = chat
        .messages()
        .iter()
        .flat_map(|m| {
            m.text
                .match_indices("item ")
                .filter_map(|(i, _)| {
                    m.text[i + 5..]
                        .split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse::<usize>()
                        .ok()
                })
                .map(|item| m.at.saturating_duration_since(written[item]))
                .collect::<Vec<_>>()
        })
        .collect();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "  append → request at the mock: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} lines, {} posts)",
        pct(0.5).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        latencies.len(),
        chat.messages().len()
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
}

fn drain() {
    let chat = MockChat::start();
    let url = chat.webhook("BENCH", "KEY", "TOKEN");
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &url, 1);
    let log = dir.path().join("logs/app.log");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    for item in 0..1000 {
        writeln!(
            f,
            "2026-11-28T14:00:00Z ERROR job {} item {item}",
            item % 10
        )
        .unwrap();
    }
    drop(f);
    let start = Instant::now();
    let mut agent = start_agent(&config);
    while items_delivered(&chat) < 1000 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = start.elapsed();
    let throttled = chat.requests().iter().filter(|r| r.status == 429).count();
    println!(
        "  backlog of 1,000 notifications for 10 threads at 1 request/s: drained in {:.1} s with {} posts ({} answered 429)",
        elapsed.as_secs_f64(),
        chat.messages().len(),
        throttled
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("Delivery:");
    latency();
    drain();
}
