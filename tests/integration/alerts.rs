//! Thresholds, resolution and absence through the agent: each transition is committed
//! with the offsets, so kill -9 around it neither loses nor repeats an alert, and a
//! reload that keeps a rule keeps its state. Windows here are seconds long; the pipeline
//! tests cover hours on a test clock.

use std::fs;
use std::io::Write;
use std::time::Duration;

use crate::agent_support::{Agent, committed_to_end, open_chat, wait_for};
use crate::tail_support::open_append;

const RULES: &str = "  - name: storm\n    match: 'ERROR storm on (?P<k>\\w+)'\n    webhook: oncall\n    thread_key: 'storm-{k}'\n    threshold: {count: 3, within: 1m}\n    message: 'storm on {k}: {count} within {within}'\n\
\x20 - name: db-down\n    match: 'timeout connecting to (?P<db>[\\w.-]+)'\n    webhook: oncall\n    thread_key: 'db-{db}'\n    dedup: {window: 1h}\n    message: 'down: {db}'\n    resolve:\n      match: 'connected to (?P<db>[\\w.-]+)'\n      message: 'back: {db} ({occurrences} timeouts)'\n\
\x20 - name: heartbeat\n    match: 'heartbeat from (?P<svc>\\w+)'\n    webhook: oncall\n    thread_key: 'hb-{svc}'\n    absent_after: 3s\n";

fn alerts_agent(url: &str) -> Agent {
    Agent::with_sections(
        url,
        "  - path: '{logs}/*.log'\n    start_at: beginning\n",
        RULES,
    )
}

fn write(agent: &Agent, line: &str) {
    let mut f = open_append(&agent.log());
    writeln!(f, "{line}").unwrap();
}

/// Writes `line` and waits until its position is committed.
fn write_committed(agent: &Agent, line: &str) {
    write(agent, line);
    wait_for("the line committed", Duration::from_secs(30), || {
        committed_to_end(agent, &agent.log())
    });
}

fn texts(chat: &crate::mock_chat::MockChat) -> Vec<String> {
    chat.messages().iter().map(|m| m.text.clone()).collect()
}

/// How often `needle` occurs in what Chat received (a post may carry several
/// notifications of one thread: a summary and the resolution after it).
fn count_of(chat: &crate::mock_chat::MockChat, needle: &str) -> usize {
    texts(chat).iter().map(|t| t.matches(needle).count()).sum()
}

#[test]
fn kill_9_around_each_transition_posts_each_alert_once() {
    let (chat, url) = open_chat();
    let mut agent = alerts_agent(&url);
    fs::create_dir_all(agent.log().parent().unwrap()).unwrap();
    agent.start();

    // Threshold: two matches, a kill, the third after the restart reaches it.
    write(&agent, "ERROR storm on api");
    write_committed(&agent, "ERROR storm on api");
    agent.kill9();
    agent.start();
    write(&agent, "ERROR storm on api");
    wait_for("the threshold's message", Duration::from_secs(30), || {
        count_of(&chat, "storm on api") == 1
    });
    assert_eq!(texts(&chat), ["storm on api: 3 within 1m"]);
    // Reached, then killed: the window holds after the restart, repeats are counted.
    agent.kill9();
    agent.start();
    write_committed(&agent, "ERROR storm on api");

    // Resolution: the incident opens, the agent is killed, the resolving line after the
    // restart closes it with its count, once.
    write(&agent, "timeout connecting to orders-db");
    wait_for(
        "the incident's first message",
        Duration::from_secs(30),
        || count_of(&chat, "down: orders-db") == 1,
    );
    write_committed(&agent, "timeout connecting to orders-db");
    agent.kill9();
    agent.start();
    write(&agent, "connected to orders-db");
    wait_for("the resolution", Duration::from_secs(30), || {
        count_of(&chat, "back: orders-db") == 1
    });
    agent.kill9();
    agent.start();
    write_committed(&agent, "connected to orders-db");

    // Absence: the heartbeat stops; its absence is posted once, survives a kill without
    // being posted again, and the heartbeat's return is posted once.
    write(&agent, "heartbeat from worker");
    wait_for("the absence", Duration::from_secs(30), || {
        texts(&chat)
            .iter()
            .any(|t| t.starts_with("*heartbeat*") && t.contains("no line matching"))
    });
    agent.kill9();
    agent.start();
    write(&agent, "heartbeat from worker");
    wait_for("the recovery", Duration::from_secs(30), || {
        texts(&chat).iter().any(|t| t.contains("the line is back"))
    });
    assert!(agent.terminate().success());

    let all = texts(&chat);
    assert_eq!(count_of(&chat, "storm on api: 3 within 1m"), 1, "{all:?}");
    // The window the threshold opened sums up its one repeat at the stop.
    assert_eq!(count_of(&chat, "*storm*: 1 more occurrence"), 1, "{all:?}");
    // The burst window of orders-db closed at the resolution: its summary (one more
    // timeout) came first, in the same thread.
    assert_eq!(count_of(&chat, "down: orders-db"), 1, "{all:?}");
    let summary = all
        .iter()
        .position(|t| t.contains("*db-down*: 1 more occurrence"));
    let resolution = all.iter().position(|t| t.contains("back: orders-db"));
    assert!(summary.is_some() && summary <= resolution, "{all:?}");
    if summary == resolution {
        let t = &all[summary.unwrap_or(0)];
        assert!(t.find("*db-down*") < t.find("back: orders-db"), "{t}");
    }
    assert_eq!(
        count_of(&chat, "back: orders-db (2 timeouts)"),
        1,
        "{all:?}"
    );
    let absences = all
        .iter()
        .filter(|t| t.contains("no line matching"))
        .count();
    assert_eq!(absences, 1, "{all:?}");
    assert_eq!(
        all.iter()
            .filter(|t| t.contains("the line is back"))
            .count(),
        1,
        "{all:?}"
    );
    let threads: Vec<(String, String)> = chat
        .messages()
        .iter()
        .filter(|m| m.text.contains("back: ") || m.text.contains("the line is back"))
        .map(|m| (m.text.clone(), m.thread_key.clone().unwrap_or_default()))
        .collect();
    assert!(
        threads
            .iter()
            .any(|(t, k)| t.contains("back: orders-db") && k == "db-orders-db"),
        "{threads:?}"
    );
    assert!(
        threads
            .iter()
            .any(|(t, k)| t.contains("is back") && k == "hb-worker"),
        "{threads:?}"
    );
}

#[test]
fn a_reload_that_keeps_the_rule_keeps_its_incident() {
    let (chat, url) = open_chat();
    let mut agent = alerts_agent(&url);
    agent.start();
    write(&agent, "timeout connecting to users-db");
    wait_for(
        "the incident's first message",
        Duration::from_secs(30),
        || count_of(&chat, "down: users-db") == 1,
    );
    // A reload that adds a rule and keeps db-down as it is.
    let mut yaml = fs::read_to_string(&agent.config).unwrap();
    yaml.push_str("  - name: other\n    match: 'unrelated'\n    webhook: oncall\n");
    fs::write(&agent.config, yaml).unwrap();
    agent.signal("HUP");
    wait_for("the reload", Duration::from_secs(30), || {
        agent.stderr().contains("Config reloaded.")
    });
    write(&agent, "connected to users-db");
    wait_for("the resolution", Duration::from_secs(30), || {
        count_of(&chat, "back: users-db (1 timeouts)") == 1
    });
    assert!(agent.terminate().success());
}
