//! Hostile and unlucky inputs: nothing stops the agent, nothing hides an error line.
//!
//! Each test reproduces one way the agent was broken (a stray byte, a symlink loop, a
//! FIFO, a descriptor limit, a number, a deleted lock file, a pasted URL, a trailing dot,
//! an early signal, a giant event) against the real binary, real files and the mock Chat.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::agent_support::{Agent, delivered_numbers, oncall, wait_for, write_timeouts};
use crate::mock_chat::{Fault, MockChat};
use crate::support::{chattail, chattail_test, text};
use crate::tail_support::open_append;

/// A rule using `.*`, as operators write it, matches a line with a stray Latin-1 byte
/// and one with invalid sequences; the message shows them as U+FFFD.
#[test]
fn lines_with_invalid_utf8_are_matched_with_dot_star() {
    let input = b"ERROR [upload] cannot open caf\xe9.csv\nERROR \xff\xfe\xc3 tail\n";
    let stdout = chattail_test(
        "  - name: upload\n    match: 'ERROR \\[upload\\] cannot open (?P<name>.*)\\.csv'\n    webhook: oncall\n    message: 'cannot open {name}'\n  - name: any-error\n    match: 'ERROR .* tail$'\n    webhook: oncall\n",
        input,
    );
    assert!(stdout.contains("cannot open caf\u{fffd}"), "{stdout}");
    assert!(
        stdout.contains("2 lines read, 2 matched by a rule, 0 matched by no rule"),
        "{stdout}"
    );
}

/// `ln -s . logs/l1; ln -s . logs/l2` under a `**` glob: the loop is walked once, the
/// real file is read, and SIGTERM still stops the agent promptly.
#[test]
fn symlink_loops_under_a_recursive_glob_are_walked_once() {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    let mut agent = Agent::new(&oncall(&url), "");
    let logs = agent.dir.path().join("logs");
    std::fs::write(
        &agent.config,
        std::fs::read_to_string(&agent.config)
            .unwrap()
            .replace("/*.log", "/**/*.log"),
    )
    .unwrap();
    std::os::unix::fs::symlink(".", logs.join("l1")).unwrap();
    std::os::unix::fs::symlink(".", logs.join("l2")).unwrap();
    agent.start();
    write_timeouts(&agent.log(), "db-a", 0..3);
    wait_for("3 notifications", Duration::from_secs(20), || {
        delivered_numbers(&chat, "db-a").len() == 3
    });
    assert_eq!(
        delivered_numbers(&chat, "db-a"),
        [0, 1, 2],
        "each line once"
    );
    let asked = Instant::now();
    assert!(agent.terminate().success());
    assert!(asked.elapsed() < Duration::from_secs(10));
}

/// A running agent (default config) that has posted `db-a` lines `0..n` to the mock.
fn agent_that_delivered(n: usize) -> (MockChat, Agent) {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    let mut agent = Agent::new(&oncall(&url), "");
    agent.start();
    write_timeouts(&agent.log(), "db-a", 0..n);
    wait_for("the first notifications", Duration::from_secs(20), || {
        delivered_numbers(&chat, "db-a") == (0..n).collect::<Vec<_>>()
    });
    (chat, agent)
}

/// A FIFO named like a rotated sibling is never opened for reading (it would block the
/// agent for good): a truncation next to it is handled, and a restart with it in place
/// starts and stops normally.
#[test]
fn a_fifo_next_to_a_followed_file_blocks_nothing() {
    let (chat, mut agent) = agent_that_delivered(2);
    let fifo = agent.dir.path().join("logs/app.log.1");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    // copytruncate without a copy: the agent looks for the copy among the siblings.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(agent.log())
        .unwrap();
    write_timeouts(&agent.log(), "db-a", 2..4);
    wait_for("4 notifications", Duration::from_secs(20), || {
        delivered_numbers(&chat, "db-a").len() == 4
    });
    assert!(agent.terminate().success());
    agent.start();
    write_timeouts(&agent.log(), "db-a", 4..5);
    wait_for("5 notifications", Duration::from_secs(20), || {
        delivered_numbers(&chat, "db-a").len() == 5
    });
    assert!(agent.terminate().success());
    assert_eq!(delivered_numbers(&chat, "db-a"), [0, 1, 2, 3, 4]);
}

/// An agent process started outside [`Agent`], killed if a test fails before stopping it.
struct Limited(std::process::Child);

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the agent under `ulimit` settings (a real limit, set in the child's shell).
fn start_with_ulimit(agent: &mut Agent, ulimit: &str) -> Limited {
    let stderr = std::fs::File::create(agent.dir.path().join("ulimit.stderr")).unwrap();
    Command::new("sh")
        .arg("-c")
        .arg(format!("{ulimit} && exec \"$0\" run --config \"$1\"",))
        .arg(crate::support::bin())
        .arg(&agent.config)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CHATTAIL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map(Limited)
        .unwrap()
}

fn stop(child: &mut Limited) {
    let child = &mut child.0;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 300 files under a soft limit of 256 descriptors: the agent raises its soft limit to
/// the hard one at start, follows every file, and never mistakes `EMFILE` for rotation.
#[test]
fn many_files_under_a_low_soft_descriptor_limit_are_all_followed() {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    let mut agent = Agent::new(&oncall(&url), "");
    let logs = agent.dir.path().join("logs");
    // One thread for all, so that the backlog merges into a few posts at Chat's pace.
    for i in 0..300 {
        let mut f = open_append(&logs.join(format!("f{i:03}.log")));
        writeln!(
            f,
            "2026-11-28T14:00:00Z ERROR timeout connecting to db-all #{i}"
        )
        .unwrap();
    }
    let mut child = start_with_ulimit(&mut agent, "ulimit -S -n 256");
    wait_for("300 notifications", Duration::from_secs(60), || {
        delivered_numbers(&chat, "db-all").len() >= 300
    });
    stop(&mut child);
    let log = std::fs::read_to_string(agent.dir.path().join("ulimit.stderr")).unwrap();
    assert!(!log.contains("rotated away"), "{log}");
    assert!(
        !log.contains("descriptors"),
        "the raised limit has room: {log}"
    );
    let mut numbers = delivered_numbers(&chat, "db-all");
    numbers.sort_unstable();
    assert_eq!(numbers, (0..300).collect::<Vec<_>>());
}

/// A hard limit below what the files need: the agent keeps what it has open, says once
/// that descriptors ran out, and does not churn (no file is "rotated away").
#[test]
fn running_out_of_descriptors_degrades_deliberately() {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    let mut agent = Agent::new(&oncall(&url), "");
    let logs = agent.dir.path().join("logs");
    for i in 0..200 {
        std::fs::File::create(logs.join(format!("f{i:03}.log"))).unwrap();
    }
    let mut child = start_with_ulimit(&mut agent, "ulimit -n 128");
    let log_path = agent.dir.path().join("ulimit.stderr");
    wait_for("the descriptor warning", Duration::from_secs(30), || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("descriptors")
    });
    // A file that is followed still delivers.
    let followed = (0..200)
        .map(|i| logs.join(format!("f{i:03}.log")))
        .next()
        .unwrap();
    let mut f = open_append(&followed);
    writeln!(
        f,
        "2026-11-28T14:00:00Z ERROR timeout connecting to db-first #0"
    )
    .unwrap();
    drop(f);
    wait_for("a delivery", Duration::from_secs(30), || {
        delivered_numbers(&chat, "db-first") == [0]
    });
    // The self-alert episode opens (a check a second, over several scans, none of which
    // may read exhaustion as rotation).
    wait_for("the self-alert", Duration::from_secs(20), || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("Self-alert: ")
    });
    stop(&mut child);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains("rotated away"), "{log}");
    assert_eq!(
        log.matches("Out of file descriptors").count(),
        1,
        "said once:\n{log}"
    );
    assert_eq!(
        log.matches("Self-alert: ").count(),
        1,
        "one episode:\n{log}"
    );
    assert!(log.contains("is short of file descriptors"), "{log}");
}

/// Idle and half-sent connections to the admin endpoint are capped and time out; they
/// cannot starve reading, delivery or `/healthz` itself of descriptors.
#[test]
fn idle_admin_connections_cannot_starve_the_agent() {
    use std::net::TcpStream;
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    let mut agent = Agent::new(&oncall(&url), "");
    let config = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        format!("admin:\n  listen: 127.0.0.1:0\n{config}"),
    )
    .unwrap();
    let mut child = start_with_ulimit(&mut agent, "ulimit -n 256");
    let log_path = agent.dir.path().join("ulimit.stderr");
    let mut addr = String::new();
    wait_for("the admin endpoint", Duration::from_secs(20), || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        match log.split("bound=").nth(1) {
            Some(rest) => {
                addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                true
            }
            None => false,
        }
    });
    // More half-sent requests than the descriptor limit leaves room for, until the
    // kernel's backlog is full too (connects then time out).
    let target: std::net::SocketAddr = addr.parse().unwrap();
    let mut idle = Vec::new();
    let mut refused = 0;
    while idle.len() < 300 && refused < 5 {
        match TcpStream::connect_timeout(&target, Duration::from_millis(200)) {
            Ok(mut s) => {
                let _ = s.write_all(b"GET /metr");
                idle.push(s);
            }
            Err(_) => refused += 1,
        }
    }
    // While they are held (and the kernel queues those beyond the cap), reading and
    // delivery have their descriptors.
    write_timeouts(&agent.log(), "db-a", 0..2);
    wait_for("2 notifications", Duration::from_secs(30), || {
        delivered_numbers(&chat, "db-a").len() == 2
    });
    assert!(
        idle.len() > 100,
        "the endpoint accepted or queued {}",
        idle.len()
    );
    // Once the peer goes away, the endpoint answers again at once.
    drop(idle);
    wait_for("/healthz to answer", Duration::from_secs(30), || {
        healthz(&addr).is_some_and(|answer| answer.starts_with("HTTP/1.1 200"))
    });
    stop(&mut child);
    let log = std::fs::read_to_string(agent.dir.path().join("ulimit.stderr")).unwrap();
    assert!(!log.contains("rotated away"), "{log}");
}

/// GET /healthz, tolerating refusals and timeouts: the status line and body, if any.
fn healthz(addr: &str) -> Option<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// `max_per_second` out of range is a located error in `check`, not a panic in `run`.
#[test]
fn absurd_rates_are_refused_by_check() {
    for rate in ["1e-20", "1e-19", "0.0001", "1e300"] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("rate.yaml");
        std::fs::write(
            &config,
            format!("webhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\n    max_per_second: {rate}\nfiles:\n  - path: /var/log/*.log\nrules:\n  - name: r\n    match: ERROR\n    webhook: oncall\n"),
        )
        .unwrap();
        let out = chattail(&["check", "--config", config.to_str().unwrap()], &[], None);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{rate}: {stderr}");
        assert!(stderr.contains("max_per_second"), "{stderr}");
        assert!(stderr.contains("rate.yaml:4:21"), "{stderr}");
    }
}

/// A `Retry-After` of u64::MAX seconds, then of a day: the worker neither panics nor
/// stalls; it waits at most `max_backoff` (1 s here) between tries.
#[test]
fn a_huge_retry_after_waits_at_most_max_backoff() {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    chat.push_fault(Fault::Status {
        status: 429,
        retry_after: Some(u64::MAX),
    });
    chat.push_fault(Fault::Status {
        status: 503,
        retry_after: Some(86_400),
    });
    let mut agent = Agent::new(&oncall(&url), "");
    agent.start();
    let start = Instant::now();
    write_timeouts(&agent.log(), "db-a", 0..1);
    wait_for("the notification", Duration::from_secs(30), || {
        delivered_numbers(&chat, "db-a") == [0]
    });
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "waited {:?}",
        start.elapsed()
    );
    assert!(agent.terminate().success());
    assert!(!agent.stderr().contains("panicked"), "{}", agent.stderr());
}

/// Deleting the lock file does not let a second agent onto the same state. (The agent
/// now locks the state directory itself and keeps no lock file; the deletion is what
/// admitted a second agent when it did, and must stay harmless.)
#[test]
fn deleting_the_lock_file_does_not_admit_a_second_agent() {
    let (_chat, mut agent) = agent_that_delivered(1);
    let _ = std::fs::remove_file(agent.dir.path().join("state/chattail.lock"));
    let second = Command::new(crate::support::bin())
        .args(["run", "--config"])
        .arg(&agent.config)
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = text(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another chattail is already using the state directory"),
        "{stderr}"
    );
    assert!(agent.terminate().success());
}

/// SIGHUP in the first milliseconds of a start (and during a slow one) is a reload once
/// the agent runs, never its death.
#[test]
fn sighup_during_start_does_not_kill_the_agent() {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    let mut agent = Agent::new(&oncall(&url), "");
    // Many rules make the start slow enough to be hit while loading.
    let mut rules = String::new();
    for i in 0..300 {
        rules.push_str(&format!(
            "  - name: r{i}\n    match: 'ERROR \\[svc{i}\\] .*timeout connecting to (?P<db>[\\w.-]+)'\n    webhook: oncall\n"
        ));
    }
    let config = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(&agent.config, format!("{config}{rules}")).unwrap();
    agent.start();
    // From the first line the agent logs (it loads the config right after), for 300 ms.
    wait_for("the agent to start", Duration::from_secs(20), || {
        agent.stderr().contains("chattail is starting")
    });
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(300) {
        agent.signal("HUP");
    }
    write_timeouts(&agent.log(), "db-a", 0..1);
    wait_for("the notification", Duration::from_secs(30), || {
        delivered_numbers(&chat, "db-a") == [0]
    });
    assert!(agent.terminate().success(), "{}", agent.stderr());
}

/// A 12 MB multiline event (200 continuation lines of 60 KB over two seconds) is cut at
/// `max_bytes` and written to the state a bounded number of bytes, not rewritten whole
/// at every commit.
#[test]
fn a_growing_multiline_event_writes_a_bounded_amount_of_state() {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    let mut agent = Agent::with_sections(
        &url,
        "  - path: {logs}/*.log\n    start_at: beginning\n    max_line_bytes: 100000\n    multiline:\n      start: '^START'\n      timeout: 30s\n",
        "  - name: event\n    match: '^START (?P<n>\\d+)'\n    webhook: oncall\n    message: 'event {n}'\n",
    );
    agent
        .env
        .push(("CHATTAIL_LOG".to_owned(), "warn".to_owned()));
    agent.start();
    let state = agent.dir.path().join("state");
    wait_for("the state database", Duration::from_secs(20), || {
        state.join("state.sqlite3").exists()
    });
    let before = state_bytes_written(&agent);
    let mut f = open_append(&agent.log());
    writeln!(f, "START 1").unwrap();
    let chunk = "x".repeat(60_000);
    for _ in 0..200 {
        writeln!(f, "  {chunk}").unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    writeln!(f, "START 2").unwrap();
    drop(f);
    wait_for("event 1", Duration::from_secs(30), || {
        chat.messages().iter().any(|m| m.text.contains("event 1"))
    });
    let written = state_bytes_written(&agent) - before;
    eprintln!("bytes written for the 12 MB event: {written}");
    assert!(agent.terminate().success());
    assert!(
        written < 16 * 1024 * 1024,
        "{written} bytes written to the state for one 12 MB event"
    );
}

/// Bytes the agent process has written with `write`-like calls (`/proc/PID/io`), which at
/// `CHATTAIL_LOG=warn` is almost only the state database and its WAL.
fn state_bytes_written(agent: &Agent) -> u64 {
    let pid = agent.pid();
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// A state database emptied (or deleted) behind the agent's back is not a silent fresh
/// start: the log says what will happen.
#[test]
fn an_emptied_state_database_is_reported_loudly() {
    let (_chat, mut agent) = agent_that_delivered(1);
    assert!(agent.terminate().success());
    std::fs::OpenOptions::new()
        .write(true)
        .open(agent.dir.path().join("state/state.sqlite3"))
        .unwrap()
        .set_len(0)
        .unwrap();
    agent.start();
    wait_for("the warning", Duration::from_secs(20), || {
        agent
            .stderr()
            .contains("The state database is empty (zero bytes): chattail starts afresh")
    });
    assert!(agent.terminate().success());
}

/// A state directory that cannot be created is one clear error, its cause said once.
#[test]
fn an_unusable_state_dir_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        "state_dir: /proc/chattail-cannot-be-here/state\nwebhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\nfiles:\n  - path: /var/log/no-such-dir/*.log\nrules:\n  - name: r\n    match: ERROR\n    webhook: oncall\n",
    )
    .unwrap();
    let out = chattail(
        &["run", "--config", config.to_str().unwrap(), "--once"],
        &[],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot create the state directory"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");
}

/// A user who cannot write the state directory (the first run as oneself, with the
/// default `/var/lib/chattail`) is told how to choose another. As root the run is made
/// as `nobody`, who cannot write a root-owned directory either.
#[test]
fn a_state_dir_the_user_cannot_write_gets_a_hint() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {}/state\nwebhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\nfiles:\n  - path: /var/log/no-such-dir/*.log\nrules:\n  - name: r\n    match: ERROR\n    webhook: oncall\n",
            locked.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut command = if root {
        // A copy nobody can run, wherever the build lives (a home directory may be 0700).
        let bin = dir.path().join("chattail");
        std::fs::copy(crate::support::bin(), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "nobody", "--"]).arg(bin);
        c
    } else {
        std::process::Command::new(crate::support::bin())
    };
    let out = command
        .args(["run", "--once", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(
        stderr.contains("hint:") && stderr.contains("CHATTAIL_STATE_DIR"),
        "{stderr}"
    );
}
