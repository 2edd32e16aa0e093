//! The systemd journal as a source, on real journal files: `systemd-journal-remote` (the
//! Debian package of that name) turns export-format entries into journal files in a
//! temporary directory, which the agent follows through `journalctl --directory`, as it
//! would follow `/var/log/journal`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::agent_support::{Agent, delivered_numbers, free_port, open_chat, wait_for};
use crate::support::http;

/// Where Debian installs `systemd-journal-remote`.
fn journal_remote() -> PathBuf {
    [
        "/lib/systemd/systemd-journal-remote",
        "/usr/lib/systemd/systemd-journal-remote",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("install Debian's `systemd-journal-remote` (bash .ci/test does)")
}

/// One entry: its unit, its message (any bytes) and its writer's pid.
struct Entry<'a> {
    unit: &'a str,
    message: &'a [u8],
    pid: u32,
}

/// Appends `entries` to the journal file `file` (created when missing), as journald
/// would have stored them.
fn append(file: &Path, entries: &[Entry<'_>]) {
    let mut export = Vec::new();
    for e in entries {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros();
        let identifier = e.unit.split(['@', '.']).next().unwrap();
        write!(
            export,
            "__REALTIME_TIMESTAMP={now}\n_SYSTEMD_UNIT={}\nSYSLOG_IDENTIFIER={identifier}\n_PID={}\nPRIORITY=3\n",
            e.unit, e.pid
        )
        .unwrap();
        if std::str::from_utf8(e.message).is_ok() && !e.message.contains(&b'\n') {
            export.extend_from_slice(b"MESSAGE=");
            export.extend_from_slice(e.message);
            export.push(b'\n');
        } else {
            // Binary: the name, the length (64-bit little endian), the bytes.
            export.extend_from_slice(b"MESSAGE\n");
            export.extend_from_slice(&(e.message.len() as u64).to_le_bytes());
            export.extend_from_slice(e.message);
            export.push(b'\n');
        }
        export.push(b'\n');
    }
    let mut child = Command::new(journal_remote())
        .arg("-o")
        .arg(file)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&export).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "systemd-journal-remote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The numbered timeout lines the default rule matches, as entries of `unit`.
fn timeouts(file: &Path, unit: &str, range: std::ops::Range<usize>) {
    let messages: Vec<String> = range
        .map(|n| format!("ERROR timeout connecting to db-{}.internal #{n}", n % 3))
        .collect();
    let entries: Vec<Entry<'_>> = messages
        .iter()
        .map(|m| Entry {
            unit,
            message: m.as_bytes(),
            pid: 42,
        })
        .collect();
    append(file, &entries);
}

/// An agent whose files hold nothing, reading the journal in `{dir}/journal` from its
/// beginning, with `rules` besides the default `db-timeout` rule (which has neither
/// `files` nor `units`, so it sees both).
fn journal_agent(url: &str, rules: &str, extra: &str) -> (Agent, PathBuf) {
    journal_agent_from(url, rules, extra, "beginning")
}

/// As [`journal_agent`], starting at `start_at` when no position is saved.
fn journal_agent_from(url: &str, rules: &str, extra: &str, start_at: &str) -> (Agent, PathBuf) {
    let agent = Agent::new(&crate::agent_support::oncall(url), rules);
    let dir = agent.dir.path().join("journal");
    fs::create_dir_all(&dir).unwrap();
    let mut yaml = fs::read_to_string(&agent.config).unwrap();
    yaml.push_str(&format!(
        "journal:\n  directory: {}\n  start_at: {start_at}\n{extra}",
        dir.display()
    ));
    fs::write(&agent.config, yaml).unwrap();
    (agent, dir.join("system.journal"))
}

/// Every delivered `#n` of the three databases' threads, sorted.
fn all_numbers(chat: &crate::mock_chat::MockChat) -> Vec<usize> {
    let mut seen: Vec<usize> = (0..3)
        .flat_map(|d| delivered_numbers(chat, &format!("db-{d}.internal")))
        .collect();
    seen.sort_unstable();
    seen
}

/// Entries of three units: a rule limited to `app@*.service` sees only its units' entries,
/// renders `{unit}`, `{identifier}`, `{pid}` and `{priority}`, and `{file}` is
/// `journal:UNIT`; a `MESSAGE` stored as bytes (invalid UTF-8, a NUL) is matched as its
/// lossy text.
#[test]
fn entries_of_two_units_reach_the_rule_limited_to_one() {
    let (chat, url) = open_chat();
    let rules = "  - name: app-error\n    match: 'ERROR (?P<what>\\w+)'\n    units: ['app@*.service']\n    webhook: oncall\n    \
        thread_key: '{unit}-{what}'\n    message: 'app {what} unit={unit} id={identifier} pid={pid} prio={priority} file={file}'\n";
    let (mut agent, journal) = journal_agent(&url, rules, "");
    append(
        &journal,
        &[
            Entry {
                unit: "app@1.service",
                message: b"ERROR diskfull on /data",
                pid: 101,
            },
            Entry {
                unit: "nginx.service",
                message: b"ERROR upstream gone",
                pid: 7,
            },
            Entry {
                unit: "app@2.service",
                message: b"ERROR badbyte \xff\x00 in request",
                pid: 102,
            },
        ],
    );
    agent.start();
    wait_for("both app entries", Duration::from_secs(30), || {
        chat.messages().len() >= 2
    });
    let texts: Vec<String> = chat.messages().iter().map(|m| m.text.clone()).collect();
    let keys: Vec<String> = chat
        .messages()
        .iter()
        .filter_map(|m| m.thread_key.clone())
        .collect();
    assert!(
        texts.contains(
            &"app diskfull unit=app@1.service id=app pid=101 prio=3 file=journal:app@1.service"
                .to_owned()
        ),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("app badbyte unit=app@2.service")),
        "{texts:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.starts_with("app-1.service-diskfull")
                || k.starts_with("app@1.service-diskfull")),
        "{keys:?}"
    );
    assert!(
        !texts.iter().any(|t| t.contains("upstream")),
        "nginx's entry is not an app unit's: {texts:?}"
    );
    assert!(agent.terminate().success());
    assert_eq!(chat.messages().len(), 2, "{texts:?}");
}

/// kill -9 while entries arrive, several times: every matching entry reaches Chat once.
#[test]
fn killed_while_entries_arrive_every_entry_reaches_chat_exactly_once() {
    let (chat, url) = open_chat();
    chat.set_delay(Duration::from_millis(100));
    let (mut agent, journal) = journal_agent(&url, "", "");
    let mut written = 0;
    for round in 0..5 {
        agent.start();
        for _ in 0..4 {
            timeouts(&journal, "db-client.service", written..written + 3);
            written += 3;
        }
        // Kill at different points: before, while and after the round's entries are read.
        let seen = written - 12 + round * 3;
        wait_for("part of the round", Duration::from_secs(30), || {
            all_numbers(&chat).len() >= seen.min(written)
        });
        agent.kill9();
    }
    agent.start();
    wait_for("every entry", Duration::from_secs(60), || {
        all_numbers(&chat).len() >= written
    });
    // SIGTERM before the agent has installed its handlers would end it by the signal.
    wait_for(
        "the last start to read the journal",
        Duration::from_secs(30),
        || {
            // The sixth start's own log: it resumes at the saved position.
            fs::read_to_string(agent.dir.path().join("agent-6.stderr"))
                .is_ok_and(|log| log.contains("Reading the journal from the saved position"))
        },
    );
    let status = agent.terminate();
    assert!(status.success(), "{status:?}: {}", agent.stderr());
    assert_eq!(all_numbers(&chat), (0..written).collect::<Vec<_>>());
}

/// The saved position's journal file is deleted while the agent is down (vacuumed): the
/// agent resumes at the oldest entry still there, says so, and loses nothing after it.
#[test]
fn the_saved_positions_file_removed_while_down_resumes_at_the_oldest_entry() {
    let (chat, url) = open_chat();
    let (mut agent, journal) = journal_agent(&url, "", "");
    timeouts(&journal, "db-client.service", 0..3);
    agent.start();
    wait_for("the first entries", Duration::from_secs(30), || {
        all_numbers(&chat).len() == 3
    });
    assert!(agent.terminate().success());
    // journald archives the file and a vacuum deletes it; newer entries are in another.
    let newer = journal.with_file_name("system@newer.journal");
    timeouts(&newer, "db-client.service", 3..6);
    fs::remove_file(&journal).unwrap();
    agent.start();
    wait_for("the newer entries", Duration::from_secs(30), || {
        all_numbers(&chat).len() == 6
    });
    assert!(agent.terminate().success());
    assert_eq!(all_numbers(&chat), (0..6).collect::<Vec<_>>());
    assert!(
        agent
            .stderr()
            .contains("The journal no longer holds the entry reading stopped at"),
        "{}",
        agent.stderr()
    );
}

/// The `journalctl` pids whose parent is `pid`.
fn journalctl_children(pid: u32) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...
            let Some((comm, rest)) = stat.split_once(") ") else {
                return false;
            };
            comm.ends_with("(journalctl")
                && rest.split(' ').nth(1).and_then(|p| p.parse().ok()) == Some(pid)
        })
        .collect()
}

/// `journalctl` killed under a running agent is started again, counted, and what was
/// written meanwhile arrives once.
#[test]
fn a_killed_reader_is_restarted_and_loses_nothing() {
    let (chat, url) = open_chat();
    let admin = free_port();
    let (mut agent, journal) =
        journal_agent(&url, "", &format!("admin:\n  listen: 127.0.0.1:{admin}\n"));
    timeouts(&journal, "db-client.service", 0..2);
    agent.start();
    wait_for("the first entries", Duration::from_secs(30), || {
        all_numbers(&chat).len() == 2
    });
    let readers = journalctl_children(agent.pid());
    assert_eq!(readers.len(), 1, "{readers:?}");
    Command::new("kill")
        .args(["-9", &readers[0].to_string()])
        .status()
        .unwrap();
    timeouts(&journal, "db-client.service", 2..5);
    wait_for(
        "the entries after the kill",
        Duration::from_secs(30),
        || all_numbers(&chat).len() >= 5,
    );
    let (_, _, metrics) = http(&format!("127.0.0.1:{admin}"), "GET", "/metrics", "");
    assert!(
        metrics.contains("chattail_journal_reader_restarts_total{reason=\"exited\"} 1"),
        "{metrics}"
    );
    let pid = agent.pid();
    assert!(agent.terminate().success());
    assert_eq!(all_numbers(&chat), (0..5).collect::<Vec<_>>());
    assert!(journalctl_children(pid).is_empty());
}

/// Without `journalctl`, the agent says why, posts a self-alert, reports it at
/// `/healthz`, and follows its files all the same.
#[test]
fn a_reader_that_cannot_start_is_reported_while_files_are_followed() {
    let (chat, url) = open_chat();
    let admin = free_port();
    let (mut agent, _journal) = journal_agent(
        &url,
        "",
        &format!("admin:\n  listen: 127.0.0.1:{admin}\nself_alerts:\n  webhook: oncall\n"),
    );
    agent.env.push((
        "CHATTAIL_JOURNALCTL".to_owned(),
        "/nonexistent/journalctl".to_owned(),
    ));
    agent.start();
    crate::agent_support::write_timeouts(&agent.log(), "db-0.internal", 0..1);
    wait_for(
        "the file's line and the self-alert",
        Duration::from_secs(30),
        || {
            let texts: Vec<String> = chat.messages().iter().map(|m| m.text.clone()).collect();
            texts.iter().any(|t| t.contains("#0"))
                && texts
                    .iter()
                    .any(|t| t.contains("The journal reader cannot read the journal"))
        },
    );
    let (status, _, body) = http(&format!("127.0.0.1:{admin}"), "GET", "/healthz", "");
    assert_ne!(status, 200, "{body}");
    assert!(body.contains("the journal cannot be read"), "{body}");
    assert!(agent.terminate().success());
    assert!(
        agent.stderr().contains("was not found"),
        "{}",
        agent.stderr()
    );
}

/// Without a saved position the agent starts at the end: what the journal held is not
/// posted; the end it found is saved at once, so entries written while it is down before
/// any new entry came are still read after a restart.
#[test]
fn starting_at_the_end_saves_the_end_it_found() {
    let (chat, url) = open_chat();
    let (mut agent, journal) = journal_agent_from(&url, "", "", "end");
    timeouts(&journal, "db-client.service", 0..3);
    agent.start();
    let db = agent.dir.path().join("state/state.sqlite3");
    wait_for("the end to be saved", Duration::from_secs(30), || {
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| {
                c.query_row("SELECT COUNT(*) FROM journal_positions", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .is_ok_and(|n| n == 1)
    });
    assert!(agent.terminate().success());
    timeouts(&journal, "db-client.service", 3..5);
    agent.start();
    wait_for(
        "the entries written while it was down",
        Duration::from_secs(30),
        || all_numbers(&chat).len() >= 2,
    );
    assert!(agent.terminate().success());
    assert_eq!(all_numbers(&chat), vec![3, 4]);
}

/// A Java trace logged by two units at once: the `java` preset joins each unit's lines
/// into its own event, and `context.before` shows the unit's own previous entry.
#[test]
fn multiline_events_and_context_group_entries_per_unit() {
    let (chat, url) = open_chat();
    let rules = "  - name: exception\n    match: 'Exception in thread \"main\" (?P<what>[\\w.]+)'\n    units: ['*.service']\n    webhook: oncall\n    \
        thread_key: '{unit}'\n    context: {before: 1}\n    message: \"{unit}: {context} | {line}\"\n";
    let (mut agent, journal) =
        journal_agent(&url, rules, "  multiline: {preset: java, timeout: 300ms}\n");
    let line = |unit: &'static str, message: &'static str| Entry {
        unit,
        message: message.as_bytes(),
        pid: 1,
    };
    append(
        &journal,
        &[
            line("a.service", "INFO a starts"),
            line("b.service", "INFO b starts"),
            line(
                "a.service",
                "Exception in thread \"main\" java.lang.IllegalStateException: a",
            ),
            line(
                "b.service",
                "Exception in thread \"main\" java.io.IOException: b",
            ),
            line("a.service", "\tat A.run(A.java:1)"),
            line("b.service", "\tat B.run(B.java:2)"),
            line("a.service", "INFO a goes on"),
            line("b.service", "INFO b goes on"),
        ],
    );
    agent.start();
    wait_for("both traces", Duration::from_secs(30), || {
        chat.messages().len() >= 2
    });
    assert!(agent.terminate().success());
    let mut texts: Vec<String> = chat.messages().iter().map(|m| m.text.clone()).collect();
    texts.sort();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(
        texts[0].starts_with("a.service: INFO a starts | Exception"),
        "{texts:?}"
    );
    assert!(
        texts[0].contains("at A.run(A.java:1)") && !texts[0].contains("B.run"),
        "{texts:?}"
    );
    assert!(
        texts[1].starts_with("b.service: INFO b starts | Exception"),
        "{texts:?}"
    );
    assert!(
        texts[1].contains("at B.run(B.java:2)") && !texts[1].contains("A.run"),
        "{texts:?}"
    );
}

/// With the journal as its only source and no `journalctl` to read it, the agent has
/// nothing to do: it says why and exits 1 (a supervisor restarts it, and its log says why).
#[test]
fn the_journal_as_the_only_source_that_cannot_be_read_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("chattail.yaml");
    fs::write(
        &config,
        format!(
            "state_dir: {}\nwebhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\njournal: {{}}\nrules:\n  - name: r\n    match: ERROR\n    webhook: oncall\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let output = crate::support::chattail(
        &["run", "--config", config.to_str().unwrap()],
        &[("CHATTAIL_JOURNALCTL", "/nonexistent/journalctl")],
        None,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .contains("nothing to read: no `files` are configured and the journal cannot be read"),
        "{stderr}"
    );
}

/// `chattail test --journal` runs the rules over a journal's entries, oldest first, with
/// the journal built-ins, limited to the units asked for.
#[test]
fn chattail_test_reads_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    fs::create_dir_all(&journal).unwrap();
    append(
        &journal.join("system.journal"),
        &[
            Entry {
                unit: "app@1.service",
                message: b"ERROR diskfull",
                pid: 5,
            },
            Entry {
                unit: "nginx.service",
                message: b"ERROR upstream",
                pid: 6,
            },
        ],
    );
    let config = dir.path().join("rules.yaml");
    fs::write(
        &config,
        "webhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\njournal: {}\nrules:\n  - name: err\n    match: 'ERROR (?P<what>\\w+)'\n    webhook: oncall\n    thread_key: '{unit}-{what}'\n    message: '{identifier}[{pid}]: {what}'\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "test",
            "--config",
            config.to_str().unwrap(),
            "--journal",
            "--directory",
            journal.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let output = crate::support::chattail(&args, &[], None);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let all = run(&[]);
    // `@` is not allowed in a Chat thread key: the key is mapped, the rendered one beside.
    assert!(all.contains("(rendered: app@1.service-diskfull)"), "{all}");
    assert!(all.contains("│ app[5]: diskfull"), "{all}");
    assert!(all.contains("thread key: nginx.service-upstream"), "{all}");
    assert!(all.contains("2 lines read, 2 matched by a rule"), "{all}");
    let apps = run(&["--unit", "app@*.service"]);
    assert!(!apps.contains("nginx"), "{apps}");
    assert!(apps.contains("1 lines read, 1 matched by a rule"), "{apps}");
}

/// `run --once` reads the journal to its end once: a `journalctl` that fails (here, a
/// directory that does not exist) ends the run with exit 1 and says why, instead of
/// retrying for ever.
#[test]
fn once_with_a_journal_that_fails_exits_1() {
    let (_chat, url) = open_chat();
    let (agent, journal) = journal_agent(&url, "", "");
    fs::remove_dir_all(journal.parent().unwrap()).unwrap();
    let output = crate::support::chattail(
        &["run", "--once", "--config", agent.config.to_str().unwrap()],
        &[],
        None,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the journal could not be read"), "{stderr}");
}

/// A heartbeat written to the journal while the agent is down counts before any absence
/// is decided at the restart: the agent reads the journal's backlog first.
#[test]
fn a_heartbeat_written_while_down_counts_before_an_absence_is_decided() {
    let (chat, url) = open_chat();
    let rules = "  - name: heartbeat\n    match: 'heartbeat from (?P<svc>\\w+)'\n    webhook: oncall\n    thread_key: 'hb-{svc}'\n    absent_after: 3s\n\
                 \x20 - name: marker\n    match: 'MARKER'\n    webhook: oncall\n";
    let (mut agent, journal) = journal_agent(&url, rules, "");
    let beat = |message: &'static str| Entry {
        unit: "worker.service",
        message: message.as_bytes(),
        pid: 9,
    };
    append(&journal, &[beat("heartbeat from worker")]);
    agent.start();
    let db = agent.dir.path().join("state/state.sqlite3");
    wait_for("the heartbeat stored", Duration::from_secs(30), || {
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM alert_states WHERE kind = 'heartbeat'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .is_ok_and(|n| n == 1)
    });
    assert!(agent.terminate().success());
    // Down for longer than `absent_after`; the worker went on beating meanwhile.
    let down = std::time::Instant::now();
    wait_for("absent_after to pass", Duration::from_secs(10), || {
        down.elapsed() >= Duration::from_secs(4)
    });
    append(
        &journal,
        &[beat("heartbeat from worker"), beat("MARKER after the beat")],
    );
    agent.start();
    wait_for("the marker", Duration::from_secs(30), || {
        chat.messages().iter().any(|m| m.text.contains("MARKER"))
    });
    assert!(agent.terminate().success());
    let texts: Vec<String> = chat.messages().iter().map(|m| m.text.clone()).collect();
    assert!(
        !texts
            .iter()
            .any(|t| t.contains("no line matching") || t.contains("is back")),
        "{texts:?}"
    );
}
