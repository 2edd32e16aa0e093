//! What the agent costs on a server, idle and under a steady load (run with
//! `cargo bench --bench steady_state`).
//!
//! The release binary follows `CHATTAIL_BENCH_FILES` files (100) through one glob with
//! `CHATTAIL_BENCH_RULES` rules (50: 20 that hit about 1% of lines, the rest rarely),
//! against the mock Chat the integration tests use. It prints:
//!
//! - CPU (% of one core) and RSS while idle for `CHATTAIL_BENCH_IDLE_SECS` (10 s);
//! - under `CHATTAIL_BENCH_RATE` lines/s (10,000) written round-robin across the files for
//!   `CHATTAIL_BENCH_SECS` (20 s): CPU, RSS and peak RSS (VmHWM), the lines/s written, and
//!   the latency from appending a probe line to its request reaching the mock (p50, p99,
//!   max; probes go to a space of their own whose quota allows them all).
//!
//! The writer is a thread of this process; the mock serves on its own runtime threads, so
//! neither waits for the other. CPU is the agent's own (`/proc/PID/stat`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chattail::sandbox::Sandbox as MockChat;

mod common;
use common::{cpu_time, env_number, line, memory_mib};

/// The config: `rules` rules, of which the first 20 (at most) match the error lines the
/// writer produces, plus a probe rule posting to a space of its own.
fn config(dir: &Path, errors: &str, probes: &str, rules: u64) -> std::path::PathBuf {
    let mut yaml = format!(
        "state_dir: {state}\nwebhooks:\n  errors:\n    url: \"{errors}\"\n    max_per_second: 1\n  probes:\n    url: \"{probes}\"\n    max_per_second: 50\nfiles:\n  - path: {logs}/*.log\nrules:\n  - name: probe\n    match: 'PROBE (?P<n>\\d+)'\n    webhook: probes\n    thread_key: probe\n    message: 'probe {{n}}'\n",
        state = dir.join("state").display(),
        logs = dir.join("logs").display(),
    );
    yaml.push_str(&common::load_rules(rules));
    let path = dir.join("chattail.yaml");
    fs::write(&path, yaml).unwrap();
    path
}

fn open_files(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn start_agent(config: &Path) -> Child {
    // `CHATTAIL_BENCH_WRAPPER` runs the agent under a profiler (`heaptrack`, say).
    let mut command = match std::env::var("CHATTAIL_BENCH_WRAPPER") {
        Ok(wrapper) => {
            let mut c = Command::new(wrapper);
            c.arg(env!("CARGO_BIN_EXE_chattail"));
            c
        }
        Err(_) => Command::new(env!("CARGO_BIN_EXE_chattail")),
    };
    command
        .args(["run", "--config"])
        .arg(config)
        .env("CHATTAIL_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass other flags.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let files = env_number("CHATTAIL_BENCH_FILES", 100);
    let rules = env_number("CHATTAIL_BENCH_RULES", 50).max(2);
    let rate = env_number("CHATTAIL_BENCH_RATE", 10_000);
    let seconds = env_number("CHATTAIL_BENCH_SECS", 20);
    let idle_seconds = env_number("CHATTAIL_BENCH_IDLE_SECS", 10);

    let chat = MockChat::start();
    chat.set_rate(None, None);
    let errors = chat.webhook("ERRORS", "KEY", "TOKEN");
    let probes = chat.webhook("PROBES", "KEY2", "TOKEN2");
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let paths: Vec<_> = (0..files)
        .map(|i| logs.join(format!("app{i:04}.log")))
        .collect();
    for p in &paths {
        File::create(p).unwrap();
    }
    let mut agent = start_agent(&config(dir.path(), &errors, &probes, rules));
    let pid = agent.id();
    let start = Instant::now();
    while open_files(pid) < files as usize && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the start settle (first scans, watches, the runtime's threads).
    std::thread::sleep(Duration::from_secs(2));

    println!("Steady state: {files} files, {rules} rules, {rate} lines/s for {seconds} s");
    let cpu0 = cpu_time(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_seconds));
    let idle_cpu = (cpu_time(pid) - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
    println!(
        "  idle: CPU {idle_cpu:.2}% of a core, RSS {:.1} MiB",
        memory_mib(pid, "VmRSS:")
    );

    // The writer: every 10 ms, rate/100 lines round-robin across the files, and every
    // 100 ms a probe line, timed.
    let writer = std::thread::spawn(move || {
        let mut handles: Vec<File> = paths
            .iter()
            .map(|p| OpenOptions::new().append(true).open(p).unwrap())
            .collect();
        let per_tick = (rate / 100).max(1);
        let ticks = seconds * 100;
        let begin = Instant::now();
        let mut n = 0u64;
        let mut probes = Vec::new();
        for tick in 0..ticks {
            let due = begin + Duration::from_millis(tick * 10);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            for _ in 0..per_tick {
                let f = (n % files) as usize;
                handles[f].write_all(line(n).as_bytes()).unwrap();
                n += 1;
            }
            if tick % 10 == 5 {
                let f = (tick / 10 % files) as usize;
                let id = probes.len();
                handles[f]
                    .write_all(format!("2026-12-01T10:00:00Z PROBE {id}\n").as_bytes())
                    .unwrap();
                probes.push(Instant::now());
            }
        }
        (n, begin.elapsed(), probes)
    });
    let cpu1 = cpu_time(pid);
    let t1 = Instant::now();
    let (written, took, probes) = writer.join().unwrap();
    let load_cpu = (cpu_time(pid) - cpu1).as_secs_f64() / t1.elapsed().as_secs_f64() * 100.0;
    let rss = memory_mib(pid, "VmRSS:");
    // Each probe that reached the mock, with its latency (a post may merge several).
    let latencies = common::wait_for_probes(&chat, &probes);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |p: f64| common::quantile(&latencies, p);
    println!(
        "  under load: CPU {load_cpu:.2}% of a core, RSS {rss:.1} MiB, peak RSS {:.1} MiB, {:.0} lines/s written",
        memory_mib(pid, "VmHWM:"),
        written as f64 / took.as_secs_f64()
    );
    println!(
        "  append → request (probes): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} of {} probes arrived)",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
        latencies.len(),
        probes.len()
    );
    println!(
        "  memory under load: anonymous {:.1} MiB, file-backed {:.1} MiB, {} threads",
        memory_mib(pid, "RssAnon:"),
        memory_mib(pid, "RssFile:"),
        fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
    );
    let mut threads: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    threads.sort();
    println!("  threads: {}", threads.join(", "));
    // Where the memory is, mapping by mapping, for ARCHITECTURE's "Footprint".
    if let Ok(to) = std::env::var("CHATTAIL_BENCH_SMAPS") {
        let _ = fs::copy(format!("/proc/{pid}/smaps"), to);
    }
    agent.kill().unwrap();
    agent.wait().unwrap();
}
