//! Operating the agent: reload on SIGHUP and on file change, `/metrics` and `/healthz`,
//! self-alerts and systemd notifications. The real binary against the mock Chat.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::agent_support::{Agent, delivered_numbers, wait_for, write_timeouts};
use crate::mock_chat::MockChat;
use crate::tail_support::open_append;

const DB_RULE: &str = r#"  - name: db-timeout
    match: 'ERROR timeout connecting to (?P<db>[\w.-]+) #(?P<n>\d+)'
    webhook: oncall
    thread_key: 'db-{db}'
    message: "*DB timeout* on `{db}` #{n}"
"#;

/// A config with an admin endpoint on a free port, the webhooks `oncall` and `ops`, the
/// given `rules` and any further top-level sections in `extra`.
fn config(dir: &Path, oncall: &str, ops: &str, rules: &str, extra: &str) -> String {
    format!(
        r#"state_dir: {state}
webhooks:
  oncall:
    url: "{oncall}"
  ops:
    url: "{ops}"
files:
  - path: {logs}/*.log
    start_at: beginning
delivery:
  shutdown_grace: 5s
  park_for: 1s
  request_timeout: 2s
  min_backoff: 100ms
  max_backoff: 1s
  max_outbox: 10
admin:
  listen: 127.0.0.1:0
rules:
{rules}{extra}"#,
        state = dir.join("state").display(),
        logs = dir.join("logs").display(),
    )
}

struct Setup {
    chat: MockChat,
    agent: Agent,
    oncall: String,
    ops: String,
}

fn setup(rules: &str, extra: &str) -> Setup {
    let chat = MockChat::start();
    let oncall = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    let ops = chat.webhook("SPACE2", "KEY2", "TOKEN2");
    let agent = Agent::new("", "");
    fs::write(
        &agent.config,
        config(agent.dir.path(), &oncall, &ops, rules, extra),
    )
    .unwrap();
    Setup {
        chat,
        agent,
        oncall,
        ops,
    }
}

/// The admin address the agent logged once it was listening.
fn admin_addr(agent: &Agent) -> String {
    let mut addr = String::new();
    wait_for("the admin endpoint", Duration::from_secs(10), || {
        let log = agent.stderr();
        match log
            .lines()
            .find(|l| l.contains("Serving /metrics"))
            .and_then(|l| l.split("bound=").nth(1))
        {
            Some(rest) => {
                addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                true
            }
            None => false,
        }
    });
    addr
}

/// A plain HTTP/1.1 GET: the status and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let (status, head, body) = crate::support::http(addr, "GET", path, "");
    assert!(
        !head.contains("chunked"),
        "a plain body is expected: {head}"
    );
    (status, body)
}

/// `/metrics` parsed by a Prometheus text parser: value by `name{label=value,...}`, with
/// labels sorted by name.
fn scrape(addr: &str) -> HashMap<String, f64> {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("the Prometheus text parser accepts /metrics");
    assert!(!parsed.samples.is_empty());
    // Counters are named chattail_<noun>_<unit>_total; everything is chattail_*.
    for sample in &parsed.samples {
        assert!(sample.metric.starts_with("chattail_"), "{}", sample.metric);
        if matches!(sample.value, prometheus_parse::Value::Counter(_)) {
            assert!(sample.metric.ends_with("_total"), "{}", sample.metric);
        }
    }
    parsed
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                other => panic!("unexpected sample type {other:?}"),
            };
            (format!("{}{{{}}}", s.metric, labels.join(",")), value)
        })
        .collect()
}

fn value(metrics: &HashMap<String, f64>, key: &str) -> f64 {
    *metrics
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {metrics:#?}"))
}

#[test]
fn metrics_are_parsed_by_a_prometheus_parser_and_the_counters_move() {
    let mut s = setup(DB_RULE, "");
    s.agent.start();
    let addr = admin_addr(&s.agent);
    let pattern = format!(
        "pattern={}/*.log",
        s.agent.dir.path().join("logs").display()
    );
    let lines_key = format!("chattail_read_lines_total{{{pattern}}}");
    let bytes_key = format!("chattail_read_bytes_total{{{pattern}}}");

    let mut f = open_append(&s.agent.log());
    writeln!(f, "INFO all good").unwrap();
    writeln!(f, "INFO still good").unwrap();
    drop(f);
    write_timeouts(&s.agent.log(), "db-a", 0..3);
    wait_for("3 notifications", Duration::from_secs(20), || {
        delivered_numbers(&s.chat, "db-a").len() == 3
    });
    let first = scrape(&addr);
    assert_eq!(value(&first, &lines_key), 5.0);
    assert!(value(&first, &bytes_key) > 100.0);
    assert_eq!(
        value(&first, "chattail_rule_matches_total{rule=db-timeout}"),
        3.0
    );
    let posts = value(&first, "chattail_chat_posts_total{webhook=oncall}");
    assert!(posts >= 1.0);
    assert_eq!(
        value(&first, "chattail_chat_notifications_total{webhook=oncall}"),
        3.0
    );
    assert_eq!(
        value(&first, "chattail_outbox_notifications{webhook=oncall}"),
        0.0
    );
    // The tailer's events reach the metrics too (the log file was followed once).
    assert_eq!(value(&first, "chattail_files_followed_total{}"), 1.0);
    assert_eq!(value(&first, "chattail_files_released_total{}"), 0.0);

    write_timeouts(&s.agent.log(), "db-a", 3..7);
    wait_for("7 notifications", Duration::from_secs(20), || {
        delivered_numbers(&s.chat, "db-a").len() == 7
    });
    let second = scrape(&addr);
    assert_eq!(value(&second, &lines_key), 9.0);
    assert!(value(&second, &bytes_key) > value(&first, &bytes_key));
    assert_eq!(
        value(&second, "chattail_rule_matches_total{rule=db-timeout}"),
        7.0
    );
    assert!(value(&second, "chattail_chat_posts_total{webhook=oncall}") > posts);
    assert!(s.agent.terminate().success());
}

#[test]
fn healthz_is_503_while_chat_refuses_a_webhook_and_200_once_it_recovers() {
    let mut s = setup(DB_RULE, "");
    s.agent.start();
    let addr = admin_addr(&s.agent);
    assert_eq!(http_get(&addr, "/healthz"), (200, "ok\n".to_owned()));

    s.chat.revoke("TOKEN1", Some(403));
    write_timeouts(&s.agent.log(), "db-a", 0..2);
    wait_for("/healthz to turn 503", Duration::from_secs(20), || {
        http_get(&addr, "/healthz").0 == 503
    });
    let (_, body) = http_get(&addr, "/healthz");
    assert_eq!(body, "webhook oncall is parked: Chat answered 403\n");
    // A restart would not help, so liveness stays green.
    assert_eq!(http_get(&addr, "/livez"), (200, "ok\n".to_owned()));
    let metrics = scrape(&addr);
    assert_eq!(
        value(&metrics, "chattail_webhook_parked{webhook=oncall}"),
        1.0
    );
    assert!(
        value(
            &metrics,
            "chattail_chat_failures_total{reason=forbidden,webhook=oncall}"
        ) >= 1.0
    );

    s.chat.revoke("TOKEN1", None);
    wait_for("/healthz to turn 200", Duration::from_secs(20), || {
        http_get(&addr, "/healthz").0 == 200
    });
    wait_for("the queued lines", Duration::from_secs(20), || {
        delivered_numbers(&s.chat, "db-a") == [0, 1]
    });
    assert_eq!(
        value(&scrape(&addr), "chattail_webhook_parked{webhook=oncall}"),
        0.0
    );
    assert!(s.agent.terminate().success());
}

/// The self-alert notifications Chat received, one each: a post may merge several that
/// were queued together (two resolutions at once, say), separated by a blank line.
fn self_alert_texts(chat: &MockChat) -> Vec<String> {
    chat.messages()
        .into_iter()
        .filter(|m| {
            m.thread_key
                .as_deref()
                .is_some_and(|k| k.starts_with("chattail-self-alerts-"))
        })
        .flat_map(|m| m.text.split("\n\n").map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

#[test]
fn a_parked_webhook_and_a_filling_outbox_are_each_alerted_once_and_cleared_once() {
    let mut s = setup(DB_RULE, "self_alerts:\n  webhook: ops\n");
    s.agent.start();
    s.chat.revoke("TOKEN1", Some(403));
    // 9 of at most 10 queued: past 80%.
    write_timeouts(&s.agent.log(), "db-a", 0..9);
    wait_for("both self-alerts", Duration::from_secs(20), || {
        let texts = self_alert_texts(&s.chat);
        texts
            .iter()
            .any(|t| t.contains("Webhook `oncall` is parked."))
            && texts
                .iter()
                .any(|t| t.contains("The outbox is filling up."))
    });
    // Parked again and again (park_for is 1s): still one episode.
    wait_for("three refusals", Duration::from_secs(20), || {
        s.chat.requests().iter().filter(|r| r.status == 403).count() >= 3
    });
    let texts = self_alert_texts(&s.chat);
    assert_eq!(
        texts.iter().filter(|t| t.contains("is parked")).count(),
        1,
        "{texts:#?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("is parked") && t.contains("Chat answered 403")),
        "{texts:#?}"
    );
    assert!(
        !texts
            .iter()
            .any(|t| t.contains("TOKEN1") || t.contains("KEY1"))
    );

    s.chat.revoke("TOKEN1", None);
    wait_for("both resolutions", Duration::from_secs(30), || {
        let texts = self_alert_texts(&s.chat);
        texts
            .iter()
            .any(|t| t.contains("Webhook `oncall` delivers again"))
            && texts.iter().any(|t| t.contains("The outbox has drained"))
    });
    wait_for("the queued lines", Duration::from_secs(20), || {
        delivered_numbers(&s.chat, "db-a") == (0..9).collect::<Vec<_>>()
    });
    let texts = self_alert_texts(&s.chat);
    assert_eq!(
        texts.len(),
        4,
        "one alert and one resolution each: {texts:#?}"
    );
    // All in one thread of the ops space.
    let threads: std::collections::HashSet<String> = s
        .chat
        .messages()
        .into_iter()
        .filter(|m| m.text.starts_with("*chattail on "))
        .map(|m| m.thread)
        .collect();
    assert_eq!(threads.len(), 1);
    assert!(threads.iter().all(|t| t.contains("SPACE2")));
    assert!(s.agent.terminate().success());
}

#[test]
fn a_glob_without_a_file_for_missing_after_is_alerted_and_cleared() {
    let mut s = setup(
        DB_RULE,
        "self_alerts:\n  webhook: ops\n  missing_after: 1s\n",
    );
    s.agent.start();
    wait_for("the missing-file alert", Duration::from_secs(20), || {
        self_alert_texts(&s.chat)
            .iter()
            .any(|t| t.contains("has no file.") && t.contains("/logs/*.log"))
    });
    write_timeouts(&s.agent.log(), "db-a", 0..1);
    wait_for("the resolution", Duration::from_secs(20), || {
        self_alert_texts(&s.chat)
            .iter()
            .any(|t| t.contains("has a file again"))
    });
    assert_eq!(self_alert_texts(&s.chat).len(), 2);
    assert!(s.agent.terminate().success());
}

const DISK_RULE: &str = r#"  - name: disk-full
    match: 'ERROR disk full on (?P<disk>\S+)'
    webhook: ops
    thread_key: 'disk-{disk}'
    message: "*Disk full* on `{disk}`"
"#;

/// Each delivered notification's text by its `#n` (posts may merge several, separated
/// by a blank line).
fn notification_texts(chat: &MockChat) -> HashMap<usize, String> {
    let mut texts = HashMap::new();
    for m in chat.messages() {
        for part in m.text.split("\n\n") {
            if let Some(n) = part
                .rsplit_once('#')
                .and_then(|(_, n)| n.trim().parse().ok())
            {
                texts.insert(n, part.to_owned());
            }
        }
    }
    texts
}

#[test]
fn sighup_applies_a_valid_change_without_losing_or_repeating_a_line() {
    let mut s = setup(DB_RULE, "");
    s.agent.start();
    let addr = admin_addr(&s.agent);
    write_timeouts(&s.agent.log(), "db-a", 0..10);
    wait_for("the first 10", Duration::from_secs(20), || {
        delivered_numbers(&s.chat, "db-a").len() == 10
    });
    // Lines keep coming while the config changes under the agent.
    let log = s.agent.log();
    let writer = std::thread::spawn(move || {
        for n in 10..60 {
            write_timeouts(&log, "db-a", n..n + 1);
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let changed = DB_RULE.replace("*DB timeout*", "*DB timeout (v2)*") + DISK_RULE;
    fs::write(
        &s.agent.config,
        config(s.agent.dir.path(), &s.oncall, &s.ops, &changed, ""),
    )
    .unwrap();
    s.agent.signal("HUP");
    wait_for("the switch", Duration::from_secs(10), || {
        s.agent.stderr().contains("Reading follows the new config.")
    });
    writer.join().unwrap();
    write_timeouts(&s.agent.log(), "db-a", 60..70);
    let mut f = open_append(&s.agent.log());
    writeln!(f, "ERROR disk full on /dev/sda1").unwrap();
    drop(f);
    wait_for(
        "all 70 and the new rule's post",
        Duration::from_secs(30),
        || {
            delivered_numbers(&s.chat, "db-a").len() >= 70
                && s.chat
                    .messages()
                    .iter()
                    .any(|m| m.text.contains("*Disk full*"))
        },
    );
    // Every line exactly once, in order: none lost, none repeated across the reload.
    assert_eq!(
        delivered_numbers(&s.chat, "db-a"),
        (0..70).collect::<Vec<_>>()
    );
    // Lines read before the reload were rendered by the old rule, those after by the new.
    let rendered = notification_texts(&s.chat);
    for n in 0..10 {
        let text = rendered.get(&n).unwrap();
        assert!(text.starts_with("*DB timeout* on"), "{text}");
    }
    for n in 60..70 {
        let text = rendered.get(&n).unwrap();
        assert!(text.starts_with("*DB timeout (v2)* on"), "{text}");
    }
    let metrics = scrape(&addr);
    assert_eq!(value(&metrics, "chattail_config_reloads_total{}"), 1.0);
    assert_eq!(
        value(&metrics, "chattail_config_reload_failures_total{}"),
        0.0
    );
    assert!(s.agent.terminate().success());
}

#[test]
fn sighup_with_a_broken_config_keeps_the_old_rules_and_logs_the_located_error() {
    let mut s = setup(DB_RULE, "");
    s.agent.start();
    let addr = admin_addr(&s.agent);
    write_timeouts(&s.agent.log(), "db-a", 0..2);
    wait_for("the first 2", Duration::from_secs(20), || {
        delivered_numbers(&s.chat, "db-a").len() == 2
    });
    let broken = DB_RULE.replace("    message:", "    mesage:");
    fs::write(
        &s.agent.config,
        config(s.agent.dir.path(), &s.oncall, &s.ops, &broken, ""),
    )
    .unwrap();
    s.agent.signal("HUP");
    wait_for("the refusal", Duration::from_secs(10), || {
        s.agent
            .stderr()
            .contains("the running config stays in force")
    });
    let log = s.agent.stderr();
    let written = fs::read_to_string(&s.agent.config).unwrap();
    let line = 1 + written.lines().position(|l| l.contains("mesage:")).unwrap();
    let config_name = s.agent.config.display().to_string();
    // As `check` prints it: the message, the file with line and column, a snippet.
    assert!(log.contains("unknown field `mesage`"), "{log}");
    assert!(log.contains("did you mean `message`?"), "{log}");
    assert!(log.contains(&format!("{config_name}:{line}:5")), "{log}");
    assert!(!log.contains("TOKEN1"), "no secret in the log");
    // The old rules still work.
    write_timeouts(&s.agent.log(), "db-a", 2..4);
    wait_for("the next 2", Duration::from_secs(20), || {
        delivered_numbers(&s.chat, "db-a") == [0, 1, 2, 3]
    });
    let metrics = scrape(&addr);
    assert_eq!(
        value(&metrics, "chattail_config_reload_failures_total{}"),
        1.0
    );
    assert_eq!(value(&metrics, "chattail_config_reloads_total{}"), 0.0);
    assert!(s.agent.terminate().success());
}

#[test]
fn watch_config_reloads_when_the_file_changes() {
    let mut s = setup(DB_RULE, "");
    s.agent.args.push("--watch-config".to_owned());
    s.agent.start();
    admin_addr(&s.agent);
    let changed = format!("{DB_RULE}{DISK_RULE}");
    fs::write(
        &s.agent.config,
        config(s.agent.dir.path(), &s.oncall, &s.ops, &changed, ""),
    )
    .unwrap();
    wait_for("the switch", Duration::from_secs(10), || {
        s.agent.stderr().contains("Reading follows the new config.")
    });
    let mut f = open_append(&s.agent.log());
    writeln!(f, "ERROR disk full on /dev/sdb1").unwrap();
    drop(f);
    wait_for("the new rule's post", Duration::from_secs(20), || {
        s.chat
            .messages()
            .iter()
            .any(|m| m.text.contains("*Disk full* on `/dev/sdb1`"))
    });
    assert!(s.agent.terminate().success());
}

#[test]
fn systemd_is_told_ready_reloading_and_stopping() {
    let mut s = setup(DB_RULE, "");
    let socket_path = s.agent.dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    s.agent.env.push((
        "NOTIFY_SOCKET".to_owned(),
        socket_path.display().to_string(),
    ));
    s.agent.start();
    let mut received = Vec::new();
    let mut next = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        received.push(text.clone());
        text
    };
    let ready = next();
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(
        ready.contains("STATUS=running: 1 rules over 1 file patterns, 2 webhooks"),
        "{ready}"
    );
    s.agent.signal("HUP");
    let reloading = next();
    assert!(reloading.contains("RELOADING=1"), "{reloading}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    assert!(next().contains("READY=1"));
    s.agent.signal("TERM");
    assert!(next().contains("STOPPING=1"));
    assert_eq!(received.len(), 4, "{received:?}");
    // It is stopping already; this waits for the exit.
    assert!(s.agent.terminate().success());
}

#[test]
fn a_reload_that_changes_a_webhook_url_moves_delivery_to_the_new_url() {
    let mut s = setup(DB_RULE, "");
    s.agent.start();
    write_timeouts(&s.agent.log(), "db-a", 0..2);
    wait_for("the first 2", Duration::from_secs(20), || {
        delivered_numbers(&s.chat, "db-a").len() == 2
    });
    // The old webhook is revoked and replaced by a new one in the same space.
    let replacement = s.chat.webhook("SPACE1", "KEY3", "TOKEN3");
    s.chat.revoke("TOKEN1", Some(403));
    fs::write(
        &s.agent.config,
        config(s.agent.dir.path(), &replacement, &s.ops, DB_RULE, ""),
    )
    .unwrap();
    s.agent.signal("HUP");
    wait_for("the switch", Duration::from_secs(10), || {
        s.agent.stderr().contains("Reading follows the new config.")
    });
    write_timeouts(&s.agent.log(), "db-a", 2..4);
    wait_for("the next 2", Duration::from_secs(20), || {
        delivered_numbers(&s.chat, "db-a") == [0, 1, 2, 3]
    });
    let requests = s.chat.requests();
    assert!(
        requests.iter().all(|r| r.status != 403),
        "the old URL is not used after the reload: {requests:?}"
    );
    assert!(
        requests.iter().all(|r| r.status != 429),
        "paced across the swap"
    );
    assert!(s.agent.terminate().success());
}

/// A fresh agent exports its counters at zero from the first scrape, with the label
/// values it knows in advance (webhooks, rules, reasons, kinds), so an alert on
/// `rate(...) > 0` can be written before the first incident.
#[test]
fn a_fresh_agent_exports_its_counters_at_zero() {
    let mut s = setup(DB_RULE, "");
    s.agent.start();
    let addr = admin_addr(&s.agent);
    let fresh = scrape(&addr);
    for key in [
        "chattail_chat_rate_limited_total{webhook=oncall}",
        "chattail_chat_retries_total{webhook=oncall}",
        "chattail_chat_failures_total{reason=rate_limited,webhook=oncall}",
        "chattail_webhook_parked{webhook=oncall}",
        "chattail_rule_matches_total{rule=db-timeout}",
        "chattail_file_rotations_total{kind=rename}",
        "chattail_cut_lines_total{reason=max_line_bytes}",
        "chattail_file_errors_total{reason=open}",
    ] {
        assert_eq!(fresh.get(key), Some(&0.0), "{key} in {fresh:#?}");
    }
    assert!(s.agent.terminate().success());
}
