//! Catch-up: how fast the release agent reads a backlog (`chattail run --once --dry-run`:
//! reading, matching, burst windows and the outbox decision), against `rg -c -e … -e …`
//! with the same patterns on the same file, for three rule sets (literal-led rules, rules
//! with no literal prefix, 100 rules), at 1% and 10% of lines hit. Every rule has a `dedup`
//! window, as operators write noisy rules.
//!
//! `cargo bench --bench catch_up` (needs `rg` on `PATH`); `CHATTAIL_BENCH_MB` sets the
//! file's size (default 200), `CHATTAIL_BENCH_RUNS` the runs per figure (default 3, the
//! best is shown).

mod common;

use std::fmt::Write as _;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::env_number;

/// Lines of an ordinary web application's logs that no rule matches.
const NOISE: &[&str] = &[
    r#"10.0.{a}.{b} - - [2026-11-28T14:00:{s}.123Z] "GET /api/orders/{n} HTTP/1.1" 200 512 "-" "Mozilla/5.0" rt=0.012"#,
    r#"10.0.{a}.{b} - - [2026-11-28T14:00:{s}.456Z] "POST /checkout HTTP/1.1" 302 0 "-" "Mozilla/5.0" rt=0.101"#,
    "2026-11-28T14:00:{s}.789Z INFO  http: request served path=/api/items/{n} status=200 duration_ms={a}",
    "2026-11-28T14:00:{s}.001Z DEBUG cache: hit key=user:{n} ttl=300",
    "Nov 28 14:00:{s} web-1 CRON[{n}]: (root) CMD (run-parts /etc/cron.hourly)",
    "Nov 28 14:00:{s} web-1 systemd[1]: Started session {n} of user deploy.",
    "2026-11-28T14:00:{s}.222Z WARN  pool: slow query took {a}ms table=orders",
    "2026-11-28T14:00:{s}.333Z INFO  worker: job {n} finished in {a}ms queue=default",
];

/// A rule set: (name, [(pattern with groups, a line it matches)]).
type RuleSet = (&'static str, Vec<(String, String)>);

fn literal_led() -> RuleSet {
    let rules = [
        (
            "ERROR pool: timeout connecting to (?P<db>[\\w.-]+)",
            "2026-11-28T14:00:{s}.832Z ERROR pool: timeout connecting to orders-db.internal:5432",
        ),
        (
            "Failed password for (?:invalid user )?(?P<user>\\S+) from (?P<ip>[\\d.]+)",
            "Nov 28 14:00:{s} web-1 sshd[{n}]: Failed password for invalid user admin from 203.0.113.{a} port 22",
        ),
        (
            "Out of memory: Killed process (?P<pid>\\d+) \\((?P<comm>[^)]+)\\)",
            "Nov 28 14:00:{s} web-1 kernel: [1.0] Out of memory: Killed process {n} (java) total-vm:1kB",
        ),
        (
            "panicked at (?P<loc>[\\w./-]+:\\d+)",
            "thread 'main' panicked at src/billing.rs:{a}:5:",
        ),
        (
            "Traceback \\(most recent call last\\)",
            "Traceback (most recent call last): File \"app.py\", line {a}",
        ),
        (
            "FATAL (?P<what>\\w+) failed",
            "2026-11-28T14:00:{s}Z FATAL migration failed step={a}",
        ),
        (
            "deadlock detected on (?P<table>\\w+)",
            "2026-11-28T14:00:{s}Z ERROR deadlock detected on orders",
        ),
        (
            "certificate has expired for (?P<server>[\\w.-]+)",
            "2026-11-28T14:00:{s}Z ERROR tls: certificate has expired for api.example.com",
        ),
        (
            "disk quota exceeded on (?P<mount>/\\S*)",
            "kernel: EXT4-fs warning: disk quota exceeded on /var/lib/db{a}",
        ),
        (
            "connection reset by peer: (?P<peer>[\\d.:]+)",
            "2026-11-28T14:00:{s}Z WARN upstream connection reset by peer: 10.0.0.{a}:8080",
        ),
        (
            "OutOfMemoryError: (?P<space>[\\w ]+)",
            "java.lang.OutOfMemoryError: Java heap space",
        ),
        (
            "too many open files in (?P<proc>\\w+)",
            "2026-11-28T14:00:{s}Z ERROR accept: too many open files in nginx",
        ),
        (
            "replication lag (?P<secs>\\d+)s on (?P<replica>[\\w-]+)",
            "2026-11-28T14:00:{s}Z WARN replication lag {a}s on replica-2",
        ),
        (
            "payment declined code=(?P<code>\\w+)",
            "2026-11-28T14:00:{s}Z INFO payment declined code=insufficient_funds order={n}",
        ),
        (
            "rate limit exceeded for key (?P<key>\\w+)",
            "2026-11-28T14:00:{s}Z WARN rate limit exceeded for key k{n}",
        ),
        (
            "segfault at (?P<addr>[0-9a-f]+)",
            "Nov 28 14:00:{s} web-1 kernel: app[{n}]: segfault at 7f{a} ip 0 sp 0 error 4",
        ),
        (
            "unhandled rejection: (?P<reason>.+)",
            "2026-11-28T14:00:{s}Z node: unhandled rejection: TypeError x",
        ),
        (
            "circuit breaker open for (?P<svc>[\\w-]+)",
            "2026-11-28T14:00:{s}Z WARN circuit breaker open for inventory-svc",
        ),
        (
            "SSL_ERROR_(?P<kind>[A-Z_]+)",
            "2026-11-28T14:00:{s}Z ERROR handshake SSL_ERROR_SYSCALL peer=10.0.0.{a}",
        ),
        (
            "backup failed for (?P<db>\\w+)",
            "2026-11-28T14:00:{s}Z ERROR backup failed for orders",
        ),
    ];
    (
        "literal-led (20)",
        rules
            .iter()
            .map(|(p, l)| ((*p).to_owned(), (*l).to_owned()))
            .collect(),
    )
}

fn no_literal_prefix() -> RuleSet {
    let rules = [
        (
            "\" (?P<status>5\\d\\d) \\d+ \"",
            r#"10.0.{a}.{b} - - [2026-11-28T14:00:{s}.1Z] "GET /api/orders/{n} HTTP/1.1" 502 0 "-" "Mozilla/5.0" rt=30.0"#,
        ),
        (
            "(?P<proc>\\S+)\\[\\d+\\]: segfault at",
            "Nov 28 14:00:{s} web-1 kernel: app[{n}]: segfault at 7f ip 0 sp 0 error 4",
        ),
        (
            "(?P<ts>\\d{4}-\\d\\d-\\d\\dT\\S+) (?:ERROR|FATAL) (?P<module>\\w+): timeout",
            "2026-11-28T14:00:{s}.832Z ERROR pool: timeout connecting to db{a}",
        ),
        (
            "\\b(?P<code>E\\d{4})\\b.*failed",
            "2026-11-28T14:00:{s}Z job E{n} step failed",
        ),
        (
            "(?P<user>\\w+)@(?P<machine>[\\w.-]+): permission denied",
            "2026-11-28T14:00:{s}Z deploy@web-{a}: permission denied",
        ),
        (
            "(?i)(?P<level>error|fatal)\\s+\\[(?P<module>\\w+)\\] disk",
            "2026-11-28T14:00:{s}Z ERROR [storage] disk full on /data",
        ),
        (
            "\\d+ms > (?P<limit>\\d+)ms budget",
            "2026-11-28T14:00:{s}Z WARN request took {n}ms > 500ms budget",
        ),
        (
            "[A-Z][a-z]+Exception: (?P<msg>.+)",
            "java.lang.IllegalStateException: pool closed {a}",
        ),
        (
            "\\w+\\.py\", line (?P<lineno>\\d+), in (?P<func>\\w+)",
            "  File \"billing.py\", line {a}, in charge",
        ),
        (
            "(?P<pct>9\\d|100)% of (?P<what>\\w+) used",
            "2026-11-28T14:00:{s}Z WARN 9{b}% of memory used",
        ),
        (
            "\\[(?P<sev>crit|alert|emerg)\\]",
            "2026/11/28 14:00:{s} [crit] 1234#0: *{n} SSL_do_handshake() failed",
        ),
        (
            "(?P<ip>\\d+\\.\\d+\\.\\d+\\.\\d+) .* \"(?:GET|POST) /admin",
            r#"198.51.100.{a} - - [28/Nov/2026:14:00:{s}] "GET /admin/login HTTP/1.1" 200 12"#,
        ),
        (
            "(?P<n>\\d+) retries exhausted",
            "2026-11-28T14:00:{s}Z ERROR {a} retries exhausted for job {n}",
        ),
        (
            "[a-z]+-\\d+ is (?P<state>unhealthy|down)",
            "2026-11-28T14:00:{s}Z WARN node-{a} is unhealthy",
        ),
        (
            "\\bSIG(?P<sig>KILL|SEGV|ABRT)\\b",
            "2026-11-28T14:00:{s}Z worker {n} exited on SIGSEGV",
        ),
        (
            "(?P<bytes>\\d+) bytes lost",
            "2026-11-28T14:00:{s}Z ERROR queue: {n} bytes lost",
        ),
        (
            "\\w+Error: (?P<msg>[^\\n]+) at line",
            "2026-11-28T14:00:{s}Z SyntaxError: unexpected token at line {a}",
        ),
        (
            "(?P<svc>[\\w-]+) returned HTTP (?P<code>5\\d\\d)",
            "2026-11-28T14:00:{s}Z upstream inventory-svc returned HTTP 503",
        ),
        (
            "(?:oom|OOM)[-_ ]kill(?:er)? .*pid=(?P<pid>\\d+)",
            "2026-11-28T14:00:{s}Z oom-killer invoked pid={n}",
        ),
        (
            "\\d{3,} connections? refused",
            "2026-11-28T14:00:{s}Z WARN 1{a}0 connections refused by db",
        ),
    ];
    (
        "no literal prefix (20)",
        rules
            .iter()
            .map(|(p, l)| ((*p).to_owned(), (*l).to_owned()))
            .collect(),
    )
}

fn hundred() -> RuleSet {
    let verbs = [
        "timeout",
        "refused",
        "failed",
        "crashed",
        "rejected",
        "stalled",
        "corrupted",
        "expired",
        "overflowed",
        "leaked",
    ];
    let things = [
        "pool", "queue", "socket", "cache", "lock", "disk", "worker", "session", "token", "index",
    ];
    let mut rules = Vec::new();
    for verb in verbs {
        for thing in things {
            rules.push((
                format!("{thing} {verb}: (?P<id>[\\w-]+)"),
                format!("2026-11-28T14:00:{{s}}Z ERROR {thing} {verb}: id-{{n}}"),
            ));
        }
    }
    ("100 rules", rules)
}

/// Fills `{a}`, `{b}`, `{s}`, `{n}` with numbers from `i`.
fn fill(template: &str, i: u64) -> String {
    template
        .replace("{a}", &(i % 250).to_string())
        .replace("{b}", &(i % 7).to_string())
        .replace("{s}", &format!("{:02}", i % 60))
        .replace("{n}", &(i * 7919 % 100_000).to_string())
}

/// A file of about `mb` MiB where `percent` of lines are hits, spread over the rules.
fn write_log(path: &Path, mb: u64, percent: u64, set: &RuleSet) {
    let mut out = BufWriter::new(fs::File::create(path).unwrap());
    let mut written = 0u64;
    let mut i = 0u64;
    // A simple generator: the same file for the same arguments.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    while written < mb << 20 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let line = if state % 100 < percent {
            let (_, hit) = &set.1[usize::try_from(state / 100).unwrap_or(0) % set.1.len()];
            fill(hit, i)
        } else {
            fill(
                NOISE[usize::try_from(state / 100).unwrap_or(0) % NOISE.len()],
                i,
            )
        };
        written += line.len() as u64 + 1;
        writeln!(out, "{line}").unwrap();
        i += 1;
    }
    out.flush().unwrap();
}

fn write_config(dir: &Path, log: &Path, set: &RuleSet) -> std::path::PathBuf {
    let mut yaml = format!(
        "state_dir: {}\nwebhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages?key=k&token=t\nfiles:\n  - path: {}\n    start_at: beginning\nrules:\n",
        dir.join("state").display(),
        log.display()
    );
    for (i, (pattern, _)) in set.1.iter().enumerate() {
        let first_group = pattern
            .split("(?P<")
            .nth(1)
            .and_then(|g| g.split('>').next())
            .unwrap_or("");
        let key = if first_group.is_empty() {
            format!("r{i}")
        } else {
            format!("r{i}-{{{first_group}}}")
        };
        let _ = write!(
            yaml,
            "  - name: r{i}\n    match: '{}'\n    webhook: oncall\n    thread_key: '{key}'\n    dedup:\n      window: 5m\n",
            pattern.replace('\'', "''")
        );
    }
    let path = dir.join("chattail.yaml");
    fs::write(&path, yaml).unwrap();
    path
}

/// The best of `runs` wall times of `command` (a fresh command each time).
fn best(runs: u64, mut command: impl FnMut() -> Command) -> Duration {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            let out = command().stdout(Stdio::null()).output().unwrap();
            assert!(
                out.status.success() || out.status.code() == Some(1),
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    if Command::new("rg").arg("--version").output().is_err() {
        eprintln!(
            "catch_up: `rg` (ripgrep) is not on PATH; install it to compare (apt-get install ripgrep)."
        );
        return;
    }
    let mb = env_number("CHATTAIL_BENCH_MB", 200);
    let runs = env_number("CHATTAIL_BENCH_RUNS", 3);
    let temp = tempfile::tempdir().unwrap();
    // `CHATTAIL_BENCH_DIR` keeps the last file and config there (for `perf`).
    let kept = std::env::var_os("CHATTAIL_BENCH_DIR").map(std::path::PathBuf::from);
    let dir = kept.as_deref().unwrap_or(temp.path());
    // `CHATTAIL_BENCH_ONLY=literal|none|100` and `CHATTAIL_BENCH_HITS=1|10` pick one row.
    let only = std::env::var("CHATTAIL_BENCH_ONLY").unwrap_or_default();
    let hits = env_number("CHATTAIL_BENCH_HITS", 0);
    println!(
        "catch-up of a {mb} MiB backlog, best of {runs}: chattail run --once --dry-run vs rg -c"
    );
    println!(
        "{:<24} {:>5} {:>10} {:>10} {:>10} {:>8}",
        "rule set", "hits", "chattail", "MiB/s", "rg", "vs rg"
    );
    // rg joins the patterns into one regex: group names must be unique, and it has no use
    // for them.
    let unnamed = regex::Regex::new(r"\(\?P<\w+>").unwrap();
    let sets = [
        ("literal", literal_led()),
        ("none", no_literal_prefix()),
        ("100", hundred()),
    ];
    for (short, set) in sets {
        if !only.is_empty() && only != short {
            continue;
        }
        for percent in [1, 10] {
            if hits != 0 && hits != percent {
                continue;
            }
            let log = dir.join("backlog.log");
            write_log(&log, mb, percent, &set);
            let config = write_config(dir, &log, &set);
            let chattail = best(runs, || {
                let mut c = Command::new(env!("CARGO_BIN_EXE_chattail"));
                c.args(["run", "--once", "--dry-run", "--config"])
                    .arg(&config);
                c
            });
            let rg = best(runs, || {
                let mut c = Command::new("rg");
                c.args(["--no-config", "-c"]);
                for (pattern, _) in &set.1 {
                    c.arg("-e").arg(unnamed.replace_all(pattern, "(").as_ref());
                }
                c.arg(&log);
                c
            });
            println!(
                "{:<24} {:>4}% {:>9.0}ms {:>10.0} {:>9.0}ms {:>7.2}×",
                set.0,
                percent,
                chattail.as_secs_f64() * 1000.0,
                mb as f64 / chattail.as_secs_f64(),
                rg.as_secs_f64() * 1000.0,
                rg.as_secs_f64() / chattail.as_secs_f64()
            );
        }
    }
}
