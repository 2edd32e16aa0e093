//! Delivery figures, printed (run with `cargo bench --bench delivery`):
//!
//! 1. Latency from appending a matching line to the request reaching a mock Chat, p50 and
//!    p99 over 100 lines written 100 ms apart (no backlog, so no merging).
//! 2. The time to drain a backlog of 1,000 queued notifications for 10 threads at Chat's
//!    quota of 1 request per second, and the number of posts it took.
//! 3. A storm: 100,000 matching lines across 50 keys in 10 s, with a 10 s burst window, at
//!    1 request per second: the number of posts, the agent's peak memory (VmHWM) and the time
//!    until the last summary reached Chat.
//!
//! 4. Operating: a line every 10 ms for 10 s with a SIGHUP every second (the config
//!    switching between two messages): the time from each SIGHUP to "Reading follows the
//!    new config." in the agent's log, whether every line reached Chat exactly once, and
//!    the latency of `/metrics` and `/healthz` over 200 requests each, with the agent's
//!    memory.
//!
//! The agent is the release binary, run as a child process; the mock Chat is the one the
//! integration tests use.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chattail::sandbox::Sandbox as MockChat;

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

fn storm() {
    let chat = MockChat::start();
    let url = chat.webhook("BENCH", "KEY", "TOKEN");
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &url, 1);
    let mut yaml = fs::read_to_string(&config).unwrap();
    yaml.push_str("    dedup:\n      window: 10s\n");
    fs::write(&config, yaml).unwrap();
    let log = dir.path().join("logs/app.log");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let mut agent = start_agent(&config);
    let start = Instant::now();
    // 100 batches of 1,000 lines, one every 100 ms.
    for batch in 0..100u64 {
        let mut text = String::with_capacity(64 * 1000);
        for i in 0..1000u64 {
            let n = batch * 1000 + i;
            text.push_str(&format!(
                "2026-11-28T14:00:00Z ERROR job {} item {n}\n",
                n % 50
            ));
        }
        f.write_all(text.as_bytes()).unwrap();
        let next = start + Duration::from_millis((batch + 1) * 100);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let written = start.elapsed();
    // Done when every key's thread has its summary: 50 firsts + 50 summaries, merged or not.
    let summaries = |chat: &MockChat| {
        chat.messages()
            .iter()
            .map(|m| m.text.matches("more occurrences").count())
            .sum::<usize>()
    };
    // A first occurrence renders as "job N item M"; a summary quotes the raw line
    // ("ERROR job N item M"), which must not count as a first.
    let firsts = |chat: &MockChat| {
        chat.messages()
            .iter()
            .map(|m| m.text.matches("job ").count() - m.text.matches("ERROR job ").count())
            .sum::<usize>()
    };
    while (summaries(&chat) < 50 || firsts(&chat) < 50)
        && start.elapsed() < Duration::from_secs(300)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let done = start.elapsed();
    let peak_kb = fs::read_to_string(format!("/proc/{}/status", agent.id()))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .unwrap_or(0);
    let counted: usize = chat
        .messages()
        .iter()
        .flat_map(|m| {
            m.text
                .match_indices("*err*: ")
                .filter_map(|(i, _)| m.text[i + 7..].split(' ').next()?.parse::<usize>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    println!(
        "  storm of 100,000 lines / 50 keys in {:.1} s (10 s window, 1 request/s): {} posts ({} notifications: {} firsts, {} summaries counting {} lines), last summary at {:.1} s, agent peak memory {:.1} MiB",
        written.as_secs_f64(),
        chat.messages().len(),
        firsts(&chat) + summaries(&chat),
        firsts(&chat),
        summaries(&chat),
        counted,
        done.as_secs_f64(),
        peak_kb as f64 / 1024.0
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
}

/// A plain HTTP/1.1 GET; the status code.
fn http_status(addr: &str, path: &str) -> u16 {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64, f64) {
    samples.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    (
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(samples.last().copied().unwrap_or_default()),
    )
}

fn operating() {
    let chat = MockChat::start();
    chat.set_rate(None, None);
    let url = chat.webhook("BENCH", "KEY", "TOKEN");
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &url, 20);
    let base = fs::read_to_string(&config).unwrap() + "admin:\n  listen: 127.0.0.1:0\n";
    let variant = |i: usize| {
        base.replace(
            "job {job} item {item}",
            &format!("v{i} job {{job}} item {{item}}"),
        )
    };
    fs::write(&config, variant(0)).unwrap();
    let stderr_path = dir.path().join("agent.stderr");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_chattail"))
        .args(["run", "--config"])
        .arg(&config)
        .env("CHATTAIL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let log_text = || fs::read_to_string(&stderr_path).unwrap_or_default();
    let start = Instant::now();
    let addr = loop {
        if let Some(addr) = log_text()
            .lines()
            .find(|l| l.contains("Serving /metrics"))
            .and_then(|l| l.split("bound=").nth(1))
            .and_then(|r| r.split_whitespace().next())
        {
            break addr.to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no admin endpoint"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = dir.path().join("logs/app.log");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let mut reloads = Vec::new();
    let mut item = 0usize;
    for second in 1..=10 {
        for _ in 0..100 {
            writeln!(f, "ERROR job {} item {item}", item % 10).unwrap();
            item += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        fs::write(&config, variant(second)).unwrap();
        let before = log_text()
            .matches("Reading follows the new config.")
            .count();
        let sent = Instant::now();
        Command::new("kill")
            .args(["-HUP", &agent.id().to_string()])
            .status()
            .unwrap();
        while log_text()
            .matches("Reading follows the new config.")
            .count()
            == before
            && sent.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        reloads.push(sent.elapsed());
    }
    while items_delivered(&chat) < item && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut seen = vec![0usize; item];
    for m in chat.messages() {
        for (i, _) in m.text.match_indices("item ") {
            if let Some(n) = m.text[i + 5..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse::<usize>().ok())
            {
                seen[n] += 1;
            }
        }
    }
    let exactly_once = seen.iter().filter(|&&c| c == 1).count();
    let (r50, _, rmax) = percentiles(reloads);
    println!(
        "  10 SIGHUP reloads while 1,000 lines are written over 10 s: reload applied after p50 {r50:.1} ms, max {rmax:.1} ms (SIGHUP → \"Reading follows the new config.\"); {exactly_once} of {item} lines reached Chat exactly once"
    );
    for path in ["/metrics", "/healthz"] {
        let samples: Vec<Duration> = (0..200)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(http_status(&addr, path), 200);
                t.elapsed()
            })
            .collect();
        let (p50, p99, _) = percentiles(samples);
        println!("  GET {path}: p50 {p50:.2} ms, p99 {p99:.2} ms (200 requests)");
    }
    let status = fs::read_to_string(format!("/proc/{}/status", agent.id())).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    println!(
        "  agent memory after it: {:.1} MiB resident, peak {:.1} MiB",
        field("VmRSS:"),
        field("VmHWM:")
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
    storm();
    println!("Operating:");
    operating();
}
