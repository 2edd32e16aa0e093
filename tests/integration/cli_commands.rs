//! The `chattail` binary as an operator runs it: exit codes, output, and no secrets.

use crate::support::{SECRET_URL, chattail, chattail_test, text};

#[test]
fn check_accepts_the_example_and_never_prints_the_url() {
    let out = chattail(
        &["check", "--config", "rules.example.yaml"],
        &[("CHATTAIL_WEBHOOK_URL", SECRET_URL)],
        None,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("rules.example.yaml: OK"), "{stdout}");
    assert!(
        stdout.contains("oncall (chat.googleapis.com, space AAAAtest123)"),
        "{stdout}"
    );
    assert!(stdout.contains("rules (5):"), "{stdout}");
    for secret in ["SECRETKEY", "SECRETTOKEN", "key=", "token="] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} leaked:\n{stdout}{stderr}"
        );
    }
}

#[test]
fn check_names_an_unset_variable_and_exits_2() {
    let out = chattail(&["check", "--config", "rules.example.yaml"], &[], None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("environment variable `CHATTAIL_WEBHOOK_URL` is not set"),
        "{stderr}"
    );
    assert!(stderr.contains("rules.example.yaml:17:10"), "{stderr}");
}

#[test]
fn check_reports_a_missing_file() {
    let out = chattail(&["check", "--config", "no/such/rules.yaml"], &[], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read the config file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_lists_every_error_of_a_broken_config() {
    let out = chattail(
        &[
            "check",
            "--config",
            "fixtures/broken-configs/bad-durations.yaml",
        ],
        &[],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr.matches("error: ").count(), 5, "{stderr}");
    assert!(
        stderr.ends_with("5 errors; the config was not loaded\n"),
        "{stderr}"
    );
}

#[test]
fn test_shows_matches_thread_keys_messages_and_a_summary() {
    // No webhook variable: `test` never posts, so it only warns about the URL.
    let out = chattail(
        &[
            "test",
            "--config",
            "rules.example.yaml",
            "fixtures/webapp.log",
            "fixtures/kern.log",
        ],
        &[],
        None,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("warning: webhook `oncall`"), "{stderr}");
    assert!(stdout.contains("fixtures/webapp.log:58: "), "{stdout}");
    assert!(
        stdout.contains("thread key: db-timeout-orders-db.internal"),
        "{stdout}"
    );
    assert!(
        stdout.contains("captures:   comm=\"java\" pid=\"30412\"")
            || stdout.contains("pid=\"30412\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("    │ *OOM kill* of `java` (pid 30412)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("406 lines read, 19 matched by a rule, 387 matched by no rule"),
        "{stdout}"
    );
}

#[test]
fn test_reads_stdin_and_survives_binary_junk() {
    let mut input = b"\x00\x01\x02\xff\xfe garbage\n".to_vec();
    // Invalid UTF-8 after the captures; the rendered message shows it lossily. (A Unicode
    // class such as `[^)]` does not match a byte that is not UTF-8, see the README.)
    input.extend_from_slice(
        b"Nov 28 kernel: Out of memory: Killed process 77 (redis) total-vm:1kB \xe9t\xe9\r\n",
    );
    input.extend_from_slice(b"no newline at the end ERROR timeout connecting to db9");
    let out = chattail(
        &["test", "--config", "rules.example.yaml"],
        &[],
        Some(&input),
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains("(stdin):2: "), "{stdout}");
    assert!(stdout.contains("thread key: oom-"), "{stdout}");
    assert!(
        stdout.contains("total-vm:1kB \u{fffd}t\u{fffd}```"),
        "{stdout}"
    );
    assert!(stdout.contains("(stdin):3: "), "{stdout}");
    assert!(
        stdout.contains("3 lines read, 2 matched by a rule, 1 matched by no rule"),
        "{stdout}"
    );
}

#[test]
fn test_exits_0_when_nothing_matches() {
    let out = chattail(
        &["test", "--config", "rules.example.yaml"],
        &[],
        Some(b"all quiet\n"),
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("1 lines read, 0 matched by a rule, 1 matched by no rule"));
}

#[test]
fn test_refuses_a_broken_config_with_exit_2() {
    let out = chattail(
        &[
            "test",
            "--config",
            "fixtures/broken-configs/template-unknown-capture.yaml",
        ],
        &[],
        Some(b""),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("`{nosuch}`"));
}

#[test]
fn the_readme_first_command_shows_grouped_threads_without_a_webhook() {
    // README: `cargo run -- run --config rules.example.yaml --dry-run --once`
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("never-created");
    let out = chattail(
        &[
            "run",
            "--config",
            "rules.example.yaml",
            "--dry-run",
            "--once",
        ],
        &[("CHATTAIL_STATE_DIR", state_dir.to_str().unwrap())],
        None,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("── oncall · thread db-timeout-orders-db.internal · rule db-timeout"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Threads that would receive messages:"),
        "{stdout}"
    );
    // Eight 502s on /checkout within the rule's 5-minute window: the first, then a count.
    // The key Chat receives (`/` is not allowed in it), with the rendered one beside it.
    assert!(
        stdout.contains(
            "oncall · http-502-POST-checkout-44693a1b6288335a941db5ede7ac017b (rendered: http-502-POST-/checkout): 2 messages in 1 post"
        ),
        "{stdout}"
    );
    // A card is a post of its own; the summary after it is another.
    assert!(
        stdout.contains("oncall · db-timeout-orders-db.internal: 2 messages in 2 posts"),
        "{stdout}"
    );
    assert!(
        stdout.contains("*http-5xx*: 7 more occurrences"),
        "{stdout}"
    );
    assert!(stdout.contains("oncall · oom-"), "{stdout}");
    assert!(!state_dir.exists(), "dry-run touches no state directory");
}

#[test]
fn run_refuses_a_config_whose_webhook_variable_is_unset() {
    let out = chattail(
        &["run", "--config", "rules.example.yaml", "--once"],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("CHATTAIL_WEBHOOK_URL"));
}

#[test]
fn a_second_agent_on_the_same_state_dir_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let _held = chattail::store::Store::open(dir.path()).unwrap();
    let out = chattail(
        &["run", "--config", "rules.example.yaml", "--once"],
        &[
            ("CHATTAIL_WEBHOOK_URL", SECRET_URL),
            ("CHATTAIL_STATE_DIR", dir.path().to_str().unwrap()),
        ],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another chattail is already using the state directory"),
        "{stderr}"
    );
    assert!(!stderr.contains("SECRET"), "{stderr}");
}

#[test]
fn context_lines_before_a_match_are_in_its_message() {
    let input = b"line one\nline two\nline three\nkernel: Out of memory: Killed process 1\n";
    let stdout = chattail_test(
        "  - name: oom\n    match: 'Out of memory'\n    webhook: oncall\n    context:\n      before: 2\n",
        input,
    );
    assert!(
        stdout.contains(
            "    │ ```line two\n    │ line three\n    │ kernel: Out of memory: Killed process 1```"
        ),
        "{stdout}"
    );
}

#[test]
fn test_shows_the_burst_timeline_with_line_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rules.yaml");
    std::fs::write(
        &config,
        "webhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\nfiles:\n  - path: /var/log/*.log\nrules:\n  - name: db\n    match: 'timeout to (?P<db>\\S+)'\n    webhook: oncall\n    thread_key: 'db-{db}'\n    dedup:\n      window: 1m\n",
    )
    .unwrap();
    let input = b"2026-11-28T14:00:00Z timeout to a\n\
                  2026-11-28T14:00:10Z timeout to a\n\
                  2026-11-28T14:00:20Z timeout to a\n\
                  2026-11-28T14:02:00Z timeout to a\n";
    let out = chattail(
        &[
            "test",
            "--config",
            config.to_str().unwrap(),
            "--timestamps",
            "rfc3339",
        ],
        &[],
        Some(input),
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let bursts: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("  burst:") || l.starts_with("  summary"))
        .collect();
    assert_eq!(
        bursts,
        [
            "  burst:      posted; opens a 1m window for key \"db-a\"",
            "  burst:      counted in the window of key \"db-a\", not posted",
            "  burst:      counted in the window of key \"db-a\", not posted",
            "  summary (window closed) → thread db-a:",
            "  burst:      posted; opens a 1m window for key \"db-a\"",
        ],
        "{stdout}"
    );
    assert!(
        stdout.contains("*db*: 2 more occurrences over 20s after the first."),
        "{stdout}"
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_cli_definition() {
    for shell in ["bash", "zsh", "fish"] {
        let out = chattail(&["completions", shell], &[], None);
        assert!(out.status.success(), "{shell}");
        let script = text(&out.stdout);
        // Every subcommand and the run options are completed.
        let option = if shell == "fish" {
            "-l watch-config"
        } else {
            "--watch-config"
        };
        for word in ["completions", "timestamps", "log-format", option] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let out = chattail(&["completions", "tcsh"], &[], None);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );

    let out = chattail(&["man"], &[], None);
    assert!(out.status.success());
    let page = text(&out.stdout);
    assert!(page.contains(".TH chattail 1"), "{page}");
    for section in ["CHATTAIL RUN", "CHATTAIL CHECK", "CHATTAIL TEST"] {
        assert!(page.contains(&format!(".SH \"{section}\"")), "{section}");
    }
    // roff escapes dashes in option names.
    assert!(page.contains(r"\-\-watch\-config"));
    assert!(page.contains("SIGHUP reloads the config"));
}

/// The config inside the Kubernetes manifest stays valid as the config format evolves.
#[test]
fn the_kubernetes_example_config_passes_check() {
    let manifest =
        std::fs::read_to_string(crate::support::repo().join("deploy/kubernetes/daemonset.yaml"))
            .unwrap();
    let body: Vec<&str> = manifest
        .lines()
        .skip_while(|l| l.trim() != "chattail.yaml: |")
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .map(|l| l.get(4..).unwrap_or(""))
        .collect();
    assert!(body.len() > 10, "the ConfigMap holds the config");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("chattail.yaml");
    std::fs::write(&config, body.join("\n")).unwrap();
    let out = chattail(
        &["check", "--config", config.to_str().unwrap()],
        &[
            ("CHATTAIL_WEBHOOK_URL", SECRET_URL),
            ("NODE_NAME", "node-1"),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("rules (2)"));
}

/// A config whose `files` entry joins lines into events at each timestamped line, with a
/// rule that matches an exception line inside an event.
fn stack_trace_config(dir: &std::path::Path) -> std::path::PathBuf {
    let config = dir.join("traces.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {state}\nwebhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\nfiles:\n  - path: {log}\n    start_at: beginning\n    multiline:\n      start: '^\\d{{4}}-\\d{{2}}-\\d{{2}} '\nrules:\n  - name: exception\n    match: '(?m)^(?P<exception>[\\w.]+(?:Exception|Error)): (?P<detail>.*)$'\n    webhook: oncall\n    thread_key: 'exc-{{exception}}'\n    message: \"*{{exception}}* {{detail}} after `{{first_line}}`\"\n",
            state = dir.join("state").display(),
            log = super::support::repo().join("fixtures/stacktraces.log").display(),
        ),
    )
    .unwrap();
    config
}

/// `chattail test` joins a Java stack trace and a Python traceback into one event each,
/// as `run` does, and the rule matches the exception line inside each event.
#[test]
fn test_applies_multiline_as_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let config = stack_trace_config(dir.path());
    let config = config.to_str().unwrap();
    let out = chattail(
        &["test", "--config", config, "fixtures/stacktraces.log"],
        &[],
        None,
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        stdout.contains("lines join into events as files[0]"),
        "{stdout}"
    );
    let java = "*java.lang.IllegalStateException* cart is locked after `2026-11-28 14:00:01 ERROR Request failed`";
    let python = "*KeyError* 'user_id' after `2026-11-28 14:00:03 ERROR worker crashed`";
    assert!(
        stdout.contains("fixtures/stacktraces.log:2-8: 2026-11-28 14:00:01 ERROR Request failed\n  event:      7 lines joined by multiline"),
        "{stdout}"
    );
    assert!(
        stdout.contains("fixtures/stacktraces.log:10-14: 2026-11-28 14:00:03 ERROR worker crashed\n  event:      5 lines joined by multiline"),
        "{stdout}"
    );
    assert!(stdout.contains(java) && stdout.contains(python), "{stdout}");
    assert_eq!(
        stdout.matches("  rule:       exception").count(),
        2,
        "{stdout}"
    );
    assert!(
        stdout.contains("15 lines read, 12 matched by a rule, 3 matched by no rule"),
        "{stdout}"
    );

    // `run` posts exactly those two messages.
    let out = chattail(
        &["run", "--config", config, "--dry-run", "--once"],
        &[],
        None,
    );
    let posted = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        posted.matches("── oncall · thread exc-").count(),
        2,
        "{posted}"
    );
    assert!(posted.contains(java) && posted.contains(python), "{posted}");
}

/// Brace alternatives in a `files` glob pass `check` and are followed by `run`, for a file
/// there at start and one created later.
#[test]
fn brace_globs_pass_check_and_are_followed() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    std::fs::write(logs.join("before.log"), "ERROR in a .log there at start\n").unwrap();
    std::fs::write(
        logs.join("skipped.gz"),
        "ERROR in a file the glob does not name\n",
    )
    .unwrap();
    let config = dir.path().join("braces.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {state}\nwebhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\nfiles:\n  - path: {logs}/*.{{log,txt}}\n    start_at: beginning\nrules:\n  - name: errors\n    match: 'ERROR (?P<what>.*)'\n    webhook: oncall\n    message: '{{what}}'\n",
            state = dir.path().join("state").display(),
            logs = logs.display(),
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let out = chattail(&["check", "--config", config], &[], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("*.{log,txt}"),
        "{}",
        text(&out.stdout)
    );

    // A file created after the agent started is found by the same glob.
    let mut agent = std::process::Command::new(crate::support::bin())
        .args(["run", "--config", config, "--dry-run"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = agent.id();
    let stdout = std::io::BufReader::new(agent.stdout.take().unwrap());
    let (tx, messages) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in stdout.lines() {
            if let Some(what) = line.unwrap().strip_prefix("   ") {
                let _ = tx.send(what.to_owned());
            }
        }
    });
    let wait = std::time::Duration::from_secs(20);
    let first = messages.recv_timeout(wait);
    // Only now, with the agent running and the first file read, the second file appears.
    std::fs::write(logs.join("after.txt"), "ERROR in a .txt created later\n").unwrap();
    let second = messages.recv_timeout(wait);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = agent.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(first.as_deref(), Ok("in a .log there at start"));
    assert_eq!(second.as_deref(), Ok("in a .txt created later"));
    // Nothing else: the .gz is not followed.
    let rest: Vec<String> = messages.iter().collect();
    assert!(rest.is_empty(), "{rest:?}");
}

/// A log line carrying terminal escape sequences (retitle, clear screen, a carriage return
/// that would overwrite the line) is shown by `test` and `run --dry-run` with those
/// characters as visible escapes: none reaches the operator's terminal.
#[test]
fn escape_sequences_in_a_log_line_are_shown_not_sent_to_the_terminal() {
    let hostile =
        b"ERROR timeout connecting to db9 \x1b]0;owned\x07\x1b[2J\rfake line \xc2\x9b2J\n";
    let out = chattail(
        &["test", "--config", "rules.example.yaml"],
        &[],
        Some(hostile),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("rule:"), "the line hits a rule: {stdout}");
    assert!(stdout.contains("\\x1b]0;owned\\x07"), "{stdout}");
    for control in ['\u{1b}', '\u{7}', '\r', '\u{9b}'] {
        assert!(
            !stdout.contains(control),
            "{control:?} reached stdout: {stdout}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(&log, hostile).unwrap();
    let config = dir.path().join("chattail.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {state}\nwebhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\nfiles:\n  - path: {log}\n    start_at: beginning\nrules:\n  - name: timeout\n    match: 'timeout connecting to (?P<db>\\S+)'\n    webhook: oncall\n    thread_key: '{{db}}-{{line}}'\n    message: '{{line}}'\n",
            state = dir.path().join("state").display(),
            log = log.display(),
        ),
    )
    .unwrap();
    let out = chattail(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--dry-run",
            "--once",
        ],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let posted = text(&out.stdout);
    assert!(posted.contains("── oncall · thread "), "{posted}");
    assert!(posted.contains("\\x1b]0;owned\\x07"), "{posted}");
    for control in ['\u{1b}', '\u{7}', '\r', '\u{9b}'] {
        assert!(
            !posted.contains(control),
            "{control:?} reached stdout: {posted}"
        );
    }
}
