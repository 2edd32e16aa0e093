//! Tailer benchmarks that print their figures (run with `cargo bench --bench tail_throughput`).
//!
//! 1. Read throughput: one large file (1 GiB by default; `CHATTAIL_BENCH_MB` changes it)
//!    read from its start through the tailer, the rule gate (no rule matches) and a state
//!    commit after every poll, the way the agent runs. `wc -l` on the same file, with the
//!    page cache equally warm, is printed as the floor.
//! 2. Following: 100 files each receiving 100 lines per second for 10 seconds
//!    (`CHATTAIL_BENCH_FOLLOW_SECS`); prints the CPU time the tailer thread used.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chattail::agent::state_rows::commit_checkpoints;
use chattail::config::{LoadOptions, UrlPolicy, load_bytes};
use chattail::path_glob::PathGlob;
use chattail::pipeline::RuleSet;
use chattail::store::Store;
use chattail::tail::{LineOrigin, NoEvents, StartAt, TailOptions, Tailer, WatchSpec};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Twenty realistic rules; the benchmark's lines match none of them.
fn rules() -> RuleSet {
    let mut yaml = String::from(
        "webhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\nfiles:\n  - path: /x/*.log\nrules:\n",
    );
    for i in 0..20 {
        yaml.push_str(&format!(
            "  - name: r{i}\n    match: 'ERROR \\[svc{i}\\] .*timeout connecting to (?P<db>[\\w.-]+)'\n    webhook: oncall\n"
        ));
    }
    let env = |_: &str| None;
    let options = LoadOptions {
        url_policy: UrlPolicy::Required,
        env: &env,
        default_host: "bench".to_owned(),
    };
    let config = match load_bytes(Path::new("/bench.yaml"), yaml.as_bytes(), &options) {
        Ok(loaded) => loaded.config,
        Err(report) => panic!("{report}"),
    };
    RuleSet::all(&config).expect("gate compiles")
}

/// CPU time (user + system) of the calling thread, from /proc.
fn thread_cpu() -> Duration {
    cpu_of("/proc/thread-self/stat")
}

/// CPU time (user + system) of the whole process: the tailer and notify's thread too.
fn process_cpu() -> Duration {
    cpu_of("/proc/self/stat")
}

fn cpu_of(stat_path: &str) -> Duration {
    let stat = fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11usize, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // The kernel reports clock ticks of 1/100 s on Linux.
    Duration::from_millis(ticks * 10)
}

fn write_big_file(path: &Path, megabytes: u64) -> u64 {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    let target = megabytes * 1024 * 1024;
    let mut written = 0u64;
    let mut lines = 0u64;
    while written < target {
        let line = format!(
            "10.0.{}.{} - - [28/Nov/2026:14:{:02}:{:02} +0000] \"GET /api/v1/items/{} HTTP/1.1\" 200 {} \"-\" \"Mozilla/5.0 (X11; Linux x86_64)\" rt=0.0{}\n",
            lines % 4,
            lines % 250,
            (lines / 60) % 60,
            lines % 60,
            lines * 7919 % 100_000,
            lines * 31 % 9000,
            lines % 90 + 10
        );
        out.write_all(line.as_bytes()).unwrap();
        written += line.len() as u64;
        lines += 1;
    }
    out.flush().unwrap();
    lines
}

fn throughput(dir: &Path) {
    let megabytes = env_number("CHATTAIL_BENCH_MB", 1024);
    let path = dir.join("big.log");
    println!("Writing a {megabytes} MiB access log...");
    let lines = write_big_file(&path, megabytes);
    let bytes = fs::metadata(&path).unwrap().len();

    // Warm the page cache the same way for both readers.
    let wc = |label: &str| {
        let start = Instant::now();
        let out = Command::new("wc").arg("-l").arg(&path).output();
        let elapsed = start.elapsed();
        if let Ok(out) = out {
            println!(
                "  wc -l ({label}): {:.2} s, {:.0} MB/s ({})",
                elapsed.as_secs_f64(),
                bytes as f64 / 1e6 / elapsed.as_secs_f64(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
    };
    wc("cold-ish");
    wc("warm");

    let state_dir = dir.join("state-throughput");
    let mut store = Store::open(&state_dir).unwrap();
    let options = TailOptions {
        specs: vec![WatchSpec {
            glob: PathGlob::new(&dir.join("*.log").to_string_lossy()).unwrap(),
            start_at: StartAt::Beginning,
            max_line_bytes: 64 * 1024,
        }],
        use_events: false,
        ..TailOptions::default()
    };
    let rules = rules();
    let mut tailer = Tailer::new(options, Vec::new(), Arc::new(NoEvents));
    let mut seen = 0u64;
    let mut hits = 0usize;
    let cpu_start = thread_cpu();
    let start = Instant::now();
    while seen < lines {
        let mut sink = |_: &LineOrigin<'_>, line: &[u8]| {
            seen += 1;
            hits += rules.evaluate(line, |_| {});
        };
        tailer.poll(&mut sink);
        commit_checkpoints(&mut store, &tailer.take_checkpoints()).unwrap();
    }
    let elapsed = start.elapsed();
    let cpu = thread_cpu() - cpu_start;
    assert_eq!(hits, 0, "the benchmark lines must match no rule");
    println!(
        "  chattail tailer + 20-rule gate + state commits: {:.2} s, {:.0} MB/s, {:.2} M lines/s, CPU {:.2} s ({} lines)",
        elapsed.as_secs_f64(),
        bytes as f64 / 1e6 / elapsed.as_secs_f64(),
        lines as f64 / 1e6 / elapsed.as_secs_f64(),
        cpu.as_secs_f64(),
        lines
    );
    wc("after");
    fs::remove_file(&path).unwrap();
}

fn following(dir: &Path) {
    const FILES: usize = 100;
    const RATE: u64 = 100;
    let seconds = env_number("CHATTAIL_BENCH_FOLLOW_SECS", 10);
    let logs = dir.join("follow");
    fs::create_dir_all(&logs).unwrap();
    let paths: Vec<_> = (0..FILES)
        .map(|i| logs.join(format!("app{i:03}.log")))
        .collect();
    for p in &paths {
        File::create(p).unwrap();
    }
    let options = TailOptions {
        specs: vec![WatchSpec {
            glob: PathGlob::new(&logs.join("*.log").to_string_lossy()).unwrap(),
            start_at: StartAt::Beginning,
            max_line_bytes: 64 * 1024,
        }],
        use_events: std::env::var_os("CHATTAIL_BENCH_NO_EVENTS").is_none(),
        ..TailOptions::default()
    };
    let expected = FILES as u64 * RATE * seconds;
    let stop = Arc::new(AtomicBool::new(false));
    let tail_thread = {
        let stop = Arc::clone(&stop);
        let state_dir = dir.join("state-follow");
        std::thread::spawn(move || {
            let mut store = Store::open(&state_dir).unwrap();
            let rules = rules();
            let mut tailer = Tailer::new(options, Vec::new(), Arc::new(NoEvents));
            let mut seen = 0u64;
            let cpu_start = thread_cpu();
            let start = Instant::now();
            while !(stop.load(Ordering::Relaxed) && seen >= expected) {
                let mut sink = |_: &LineOrigin<'_>, line: &[u8]| {
                    seen += 1;
                    rules.evaluate(line, |_| {});
                };
                let more = tailer.poll(&mut sink);
                commit_checkpoints(&mut store, &tailer.take_checkpoints()).unwrap();
                if !more {
                    tailer.wait(Duration::from_millis(250));
                }
                assert!(
                    start.elapsed() < Duration::from_secs(seconds * 3 + 30),
                    "lines went missing: {seen}/{expected}"
                );
            }
            (seen, thread_cpu() - cpu_start, start.elapsed())
        })
    };
    // The writer: every 10 ms, 1 line to each file (100 files × 100 lines/s).
    let mut handles: Vec<File> = paths
        .iter()
        .map(|p| OpenOptions::new().append(true).open(p).unwrap())
        .collect();
    let process_start = process_cpu();
    let writer_start = thread_cpu();
    let start = Instant::now();
    let ticks = RATE * seconds;
    for tick in 0..ticks {
        for (i, h) in handles.iter_mut().enumerate() {
            writeln!(
                h,
                "2026-11-28T14:00:00Z INFO app{i:03} request {tick} handled in 12ms"
            )
            .unwrap();
        }
        let next = start + Duration::from_millis((tick + 1) * 1000 / RATE);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writer_cpu = thread_cpu() - writer_start;
    let (seen, cpu, wall) = tail_thread.join().unwrap();
    let agent_cpu = (process_cpu() - process_start).saturating_sub(writer_cpu);
    println!(
        "  following {FILES} files × {RATE} lines/s for {seconds} s: {seen} lines read; tailer thread CPU {:.2} s = {:.1}% of one core; \
         with notify's thread (process minus the writer) {:.2} s = {:.1}%",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
        agent_cpu.as_secs_f64(),
        agent_cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass other flags.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir_in(
        std::env::var("CHATTAIL_BENCH_DIR").unwrap_or_else(|_| "target".to_owned()),
    )
    .unwrap();
    println!("Tail throughput (files in {}):", dir.path().display());
    throughput(dir.path());
    println!("Following many files:");
    following(dir.path());
}
