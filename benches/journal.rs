//! The systemd journal as a source, next to a file with the same lines (run with
//! `cargo bench --bench journal`; needs Debian's `systemd-journal-remote`).
//!
//! Both sources get the steady-state bench's load (50 rules, 1% error lines, every error
//! rule with `dedup`), written into a real journal file by `systemd-journal-remote` or
//! appended to one log file. It prints, for each source:
//!
//! - catch-up: `CHATTAIL_BENCH_ENTRIES` (200,000) entries or lines already written, read
//!   by `chattail run --once --dry-run`: entries per second (wall clock) and CPU seconds
//!   (the agent and, for the journal, its `journalctl`);
//! - steady: `CHATTAIL_BENCH_RATE` (10,000) entries/s for `CHATTAIL_BENCH_SECS` (20 s):
//!   CPU (% of a core, agent + `journalctl`), CPU per 1,000 entries/s, peak RSS of each,
//!   and the latency from writing a probe entry to its request reaching the mock Chat.
//!
//! The journal's writer is one long-lived `systemd-journal-remote` fed through a pipe; its
//! CPU is the writer's, not counted.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chattail::sandbox::Sandbox as MockChat;

mod common;
use common::{cpu_time, env_number, line, load_rules, memory_mib, quantile};

/// Where the load is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Journal,
    File,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Journal => "journal",
            Source::File => "file",
        }
    }
}

/// A writer of entries (or lines) into the source.
enum Writer {
    Journal {
        child: Child,
        pipe: BufWriter<ChildStdin>,
    },
    File(BufWriter<File>),
}

impl Writer {
    fn open(source: Source, dir: &Path) -> Self {
        match source {
            Source::Journal => {
                let tool = [
                    "/lib/systemd/systemd-journal-remote",
                    "/usr/lib/systemd/systemd-journal-remote",
                ]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .expect("install Debian's systemd-journal-remote");
                let mut child = Command::new(tool)
                    .arg("-o")
                    .arg(dir.join("journal/system.journal"))
                    .arg("-")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let pipe = BufWriter::with_capacity(1 << 20, child.stdin.take().unwrap());
                Writer::Journal { child, pipe }
            }
            Source::File => Writer::File(BufWriter::with_capacity(
                1 << 20,
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("logs/app.log"))
                    .unwrap(),
            )),
        }
    }

    /// One entry of `app@N.service` (one of four units) or one line.
    fn write(&mut self, n: u64, text: &str) {
        let text = text.trim_end_matches('\n');
        match self {
            Writer::Journal { pipe, .. } => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_micros();
                write!(
                    pipe,
                    "__REALTIME_TIMESTAMP={now}\n_SYSTEMD_UNIT=app@{}.service\nSYSLOG_IDENTIFIER=app\n_PID={}\nPRIORITY=6\nMESSAGE={text}\n\n",
                    n % 4,
                    1000 + n % 4
                )
                .unwrap();
            }
            Writer::File(f) => writeln!(f, "{text}").unwrap(),
        }
    }

    fn flush(&mut self) {
        match self {
            Writer::Journal { pipe, .. } => pipe.flush().unwrap(),
            Writer::File(f) => f.flush().unwrap(),
        }
    }

    fn close(self) {
        match self {
            Writer::Journal { mut child, pipe } => {
                drop(pipe.into_inner().ok());
                child.wait().unwrap();
            }
            Writer::File(mut f) => f.flush().unwrap(),
        }
    }
}

fn config(dir: &Path, source: Source, start: &str, errors: &str, probes: &str) -> PathBuf {
    let reading = match source {
        Source::Journal => format!(
            "journal:\n  directory: {}\n  start_at: {start}\n",
            dir.join("journal").display()
        ),
        Source::File => format!(
            "files:\n  - path: {}/*.log\n    start_at: {start}\n",
            dir.join("logs").display()
        ),
    };
    let yaml = format!(
        "state_dir: {state}\nwebhooks:\n  errors:\n    url: \"{errors}\"\n    max_per_second: 1\n  probes:\n    url: \"{probes}\"\n    max_per_second: 50\n{reading}rules:\n  - name: probe\n    match: 'PROBE (?P<n>\\d+)'\n    webhook: probes\n    thread_key: probe\n    message: 'probe {{n}}'\n{rules}",
        state = dir.join("state").display(),
        rules = load_rules(50),
    );
    let path = dir.join("chattail.yaml");
    fs::write(&path, yaml).unwrap();
    path
}

fn fresh_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("journal")).unwrap();
    fs::create_dir_all(dir.path().join("logs")).unwrap();
    dir
}

/// The `journalctl` processes whose parent is `pid`.
fn readers(pid: u32) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            stat.split_once(") ").is_some_and(|(comm, rest)| {
                comm.ends_with("(journalctl")
                    && rest.split(' ').nth(1).and_then(|p| p.parse().ok()) == Some(pid)
            })
        })
        .collect()
}

/// CPU time of the agent and its readers.
fn cpu_with_readers(pid: u32) -> Duration {
    cpu_time(pid) + readers(pid).into_iter().map(cpu_time).sum::<Duration>()
}

/// CPU seconds its children used so far (those waited for), from `getrusage`.
fn children_cpu() -> Duration {
    // SAFETY: a zeroed rusage is valid, and getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn catch_up(source: Source, entries: u64) {
    let chat = MockChat::start();
    let errors = chat.webhook("ERRORS", "KEY", "TOKEN");
    let probes = chat.webhook("PROBES", "KEY2", "TOKEN2");
    let dir = fresh_dir();
    let mut writer = Writer::open(source, dir.path());
    for n in 0..entries {
        writer.write(n, &line(n));
    }
    writer.close();
    let config = config(dir.path(), source, "beginning", &errors, &probes);
    // Chat is not called (--dry-run); the mock only gives the config real URLs.
    let cpu0 = children_cpu();
    let t0 = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_chattail"))
        .args(["run", "--once", "--dry-run", "--config"])
        .arg(&config)
        .env("CHATTAIL_LOG", "warn")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let took = t0.elapsed();
    let cpu = children_cpu() - cpu0;
    assert!(status.success());
    println!(
        "  {:<7} catch-up: {entries} entries in {:.2} s: {:.0} entries/s, {:.2} CPU s",
        source.name(),
        took.as_secs_f64(),
        entries as f64 / took.as_secs_f64(),
        cpu.as_secs_f64()
    );
}

fn steady(source: Source, rate: u64, seconds: u64) {
    let chat = MockChat::start();
    chat.set_rate(None, None);
    let errors = chat.webhook("ERRORS", "KEY", "TOKEN");
    let probes = chat.webhook("PROBES", "KEY2", "TOKEN2");
    let dir = fresh_dir();
    // The file exists (and the journal has an entry) before the agent starts at the end.
    let mut writer = Writer::open(source, dir.path());
    writer.write(1, &line(1));
    writer.flush();
    let config = config(dir.path(), source, "end", &errors, &probes);
    let mut agent = Command::new(env!("CARGO_BIN_EXE_chattail"))
        .args(["run", "--config"])
        .arg(&config)
        .env("CHATTAIL_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = agent.id();
    let begin = Instant::now();
    while source == Source::Journal
        && readers(pid).is_empty()
        && begin.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the start settle (the probe for the end, the follower, the runtime's threads).
    std::thread::sleep(Duration::from_secs(2));
    let cpu0 = cpu_with_readers(pid);
    let agent0 = cpu_time(pid);
    let t0 = Instant::now();
    let per_tick = (rate / 100).max(1);
    let mut probe_times = Vec::new();
    let mut n = 2;
    for tick in 0..seconds * 100 {
        let due = t0 + Duration::from_millis(tick * 10);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for _ in 0..per_tick {
            writer.write(n, &line(n));
            n += 1;
        }
        if tick % 10 == 5 {
            writer.write(n, &format!("PROBE {}", probe_times.len()));
            n += 1;
            writer.flush();
            probe_times.push(Instant::now());
        } else {
            writer.flush();
        }
    }
    let elapsed = t0.elapsed();
    let cpu = cpu_with_readers(pid) - cpu0;
    let agent_cpu = cpu_time(pid) - agent0;
    let latencies = common::wait_for_probes(&chat, &probe_times);
    let share = cpu.as_secs_f64() / elapsed.as_secs_f64() * 100.0;
    let written = n as f64 / elapsed.as_secs_f64();
    let reader_hwm: f64 = readers(pid)
        .into_iter()
        .map(|r| memory_mib(r, "VmHWM:"))
        .sum();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "  {:<7} steady:   {written:.0} entries/s: CPU {share:.2}% of a core (the agent {:.2}%; {:.2}% per 1,000 entries/s), peak RSS {:.1} MiB{}; append → request p50 {:.1} ms, p99 {:.1} ms ({} of {} probes)",
        source.name(),
        agent_cpu.as_secs_f64() / elapsed.as_secs_f64() * 100.0,
        share / (written / 1000.0),
        memory_mib(pid, "VmHWM:"),
        if source == Source::Journal {
            format!(" + journalctl {reader_hwm:.1} MiB")
        } else {
            String::new()
        },
        ms(quantile(&latencies, 0.5)),
        ms(quantile(&latencies, 0.99)),
        latencies.len(),
        probe_times.len()
    );
    writer.close();
    agent.kill().unwrap();
    agent.wait().unwrap();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let entries = env_number("CHATTAIL_BENCH_ENTRIES", 200_000);
    let rate = env_number("CHATTAIL_BENCH_RATE", 10_000);
    let seconds = env_number("CHATTAIL_BENCH_SECS", 20);
    println!("Journal and file, 50 rules (20 with dedup, 1% of lines hit), one series of runs");
    for source in [Source::Journal, Source::File] {
        catch_up(source, entries);
    }
    for source in [Source::Journal, Source::File] {
        steady(source, rate, seconds);
    }
}
