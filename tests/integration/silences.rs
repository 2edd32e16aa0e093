//! Silences through the real binary: `chattail silence add | list | expire` against a
//! running agent (its store), and in fleet mode against a real `redis-server` and several
//! agents. Every wait polls with a generous deadline; the silences' own lengths are the
//! only clocks.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::agent_support::{Agent, committed_to_end, free_port, open_chat, wait_for};
use crate::mock_chat::MockChat;
use crate::redis_support::Redis;
use crate::support::{chattail, http, text};
use crate::tail_support::open_append;

const RULES: &str = "  - name: db-down\n    match: 'timeout connecting to (?P<db>[\\w.-]+) #(?P<n>\\d+)'\n    webhook: oncall\n    thread_key: 'db-{db}'\n    message: 'down: {db} #{n}'\n";

fn db_agent(url: &str, admin: Option<u16>) -> Agent {
    let agent = Agent::with_sections(
        url,
        "  - path: '{logs}/*.log'\n    start_at: beginning\n",
        RULES,
    );
    if let Some(port) = admin {
        let mut yaml = fs::read_to_string(&agent.config).unwrap();
        yaml.push_str(&format!("admin:\n  listen: 127.0.0.1:{port}\n"));
        fs::write(&agent.config, yaml).unwrap();
    }
    fs::create_dir_all(agent.log().parent().unwrap()).unwrap();
    agent
}

fn write_line(path: &Path, line: &str) {
    let mut f = open_append(path);
    writeln!(f, "{line}").unwrap();
}

/// Writes `line` and waits until the agent committed its position.
fn write_committed(agent: &Agent, line: &str) {
    write_line(&agent.log(), line);
    wait_for("the line committed", Duration::from_secs(30), || {
        committed_to_end(agent, &agent.log())
    });
}

/// `chattail silence ARGS --config CONFIG`: (exit code, stdout, stderr).
fn silence(config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["silence", args[0], "--config", config.to_str().unwrap()];
    all.extend_from_slice(&args[1..]);
    let out = chattail(&all, &[], None);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// Adds a silence and returns its id.
fn add(config: &Path, args: &[&str]) -> String {
    let mut all = vec!["add"];
    all.extend_from_slice(args);
    let (code, out, err) = silence(config, &all);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_owned();
    assert_eq!(id.len(), 12, "{out}");
    id
}

/// Waits until the agent says it applies silence `id`.
fn wait_applied(agent: &Agent, id: &str) {
    wait_for(
        "the agent to apply the silence",
        Duration::from_secs(20),
        || {
            agent
                .stderr()
                .lines()
                .any(|l| l.contains("A silence holds back alerts") && l.contains(id))
        },
    );
}

fn in_thread(chat: &MockChat, key: &str) -> Vec<String> {
    chat.messages()
        .into_iter()
        .filter(|m| m.thread_key.as_deref() == Some(key))
        .map(|m| m.text)
        .collect()
}

#[test]
fn a_silence_holds_back_one_value_ends_by_itself_and_tells_its_thread() {
    let (chat, url) = open_chat();
    let port = free_port();
    let mut agent = db_agent(&url, Some(port));
    agent.start();
    write_committed(&agent, "started");
    let id = add(
        &agent.config,
        &[
            "--rule",
            "db-down",
            "--match",
            "db=orders",
            "--for",
            "8s",
            "--comment",
            "failover of orders",
        ],
    );
    wait_applied(&agent, &id);
    write_line(&agent.log(), "timeout connecting to orders #1");
    write_line(&agent.log(), "timeout connecting to billing #2");
    write_committed(&agent, "timeout connecting to orders #3");
    wait_for("billing's alert", Duration::from_secs(30), || {
        !in_thread(&chat, "db-billing").is_empty()
    });
    // Orders' lines were read and committed: held back, not posted.
    assert!(in_thread(&chat, "db-orders").is_empty());
    let (code, listed, err) = silence(&agent.config, &["list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        listed.contains(&id) && listed.contains("active"),
        "{listed}"
    );
    assert!(listed.contains("held back: 2"), "{listed}");
    assert!(listed.contains("comment:   failover of orders"), "{listed}");
    let (status, _, body) = http(&format!("127.0.0.1:{port}"), "GET", "/silences", "");
    assert_eq!(status, 200);
    assert!(
        body.contains(&format!("\"id\":\"{id}\"")) && body.contains("\"held_here\":2"),
        "{body}"
    );
    let metrics = http(&format!("127.0.0.1:{port}"), "GET", "/metrics", "").2;
    assert!(
        metrics.contains("chattail_silenced_total{rule=\"db-down\"} 2"),
        "{metrics}"
    );
    // It ends by itself: one message in the orders thread, with the count and the line.
    wait_for(
        "the end-of-silence message",
        Duration::from_secs(40),
        || !in_thread(&chat, "db-orders").is_empty(),
    );
    let ended = in_thread(&chat, "db-orders");
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert!(
        ended[0].contains(&format!(
            "silence {id} (failover of orders) ended; it held back 2 occurrences"
        )),
        "{}",
        ended[0]
    );
    assert!(
        ended[0].contains("timeout connecting to orders #3"),
        "{}",
        ended[0]
    );
    // After it, orders alerts again.
    write_line(&agent.log(), "timeout connecting to orders #4");
    wait_for(
        "orders' alert after the silence",
        Duration::from_secs(30),
        || {
            in_thread(&chat, "db-orders")
                .iter()
                .any(|t| t == "down: orders #4")
        },
    );
    assert_eq!(in_thread(&chat, "db-billing"), ["down: billing #2"]);
    agent.terminate();
}

#[test]
fn expire_ends_a_silence_early_and_kill_9_keeps_what_it_held() {
    let (chat, url) = open_chat();
    let mut agent = db_agent(&url, None);
    agent.start();
    write_committed(&agent, "started");
    let id = add(&agent.config, &["--rule", "db-down", "--for", "1h"]);
    wait_applied(&agent, &id);
    write_committed(&agent, "timeout connecting to orders #1");
    agent.kill9();
    agent.start();
    // After the restart the silence (in the store) still holds, and counts on.
    write_committed(&agent, "timeout connecting to orders #2");
    assert!(chat.messages().is_empty(), "{:?}", chat.messages());
    let (code, out, err) = silence(&agent.config, &["expire", &id[..6]]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("Silence {id} ended now")), "{out}");
    wait_for(
        "the end-of-silence message",
        Duration::from_secs(30),
        || !in_thread(&chat, "db-orders").is_empty(),
    );
    let ended = in_thread(&chat, "db-orders");
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert!(
        ended[0].contains(&format!(
            "silence {id} was ended early; it held back 2 occurrences"
        )),
        "{}",
        ended[0]
    );
    // Expiring again changes nothing; the list says who ended it.
    let (code, out, err) = silence(&agent.config, &["expire", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("had already ended"), "{out}");
    let (_, listed, _) = silence(&agent.config, &["list"]);
    assert!(listed.contains("expired by"), "{listed}");
    assert!(listed.contains("held back: 2"), "{listed}");
    // Nothing more was posted for the silence.
    agent.terminate();
    assert_eq!(in_thread(&chat, "db-orders").len(), 1);
}

#[test]
fn silence_commands_refuse_bad_matchers_and_lengths_with_reasons() {
    let (_chat, url) = open_chat();
    let agent = db_agent(&url, None);
    fs::create_dir_all(agent.dir.path().join("state")).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "add", "--rule", "db-down", "--match", "pid=1", "--for", "1h",
            ],
            "rule `db-down` has no capture group named `pid` (groups: db, n)",
        ),
        (
            &["add", "--rule", "nope", "--for", "1h"],
            "no rule is named `nope`",
        ),
        (
            &["add", "--rule", "db-down", "--for", "0"],
            "a silence lasts more than 0 seconds",
        ),
        (
            &["add", "--rule", "db-down", "--for", "8d"],
            "a silence lasts at most 7 days",
        ),
        (
            &["add", "--match", "db=~(", "--for", "1h"],
            "the regex does not compile",
        ),
        (&["add", "--for", "1h"], "would hold back everything"),
    ];
    for (args, reason) in cases {
        let (code, _, err) = silence(&agent.config, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(reason), "{args:?}: {err}");
    }
    // The command never creates the agent's database.
    let (code, _, err) = silence(&agent.config, &["expire", "abcdef"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("start the agent with this state_dir first"),
        "{err}"
    );
    assert!(!agent.dir.path().join("state/state.sqlite3").exists());
}

fn fleet_agent(url: &str, host: &str, redis: &str) -> Agent {
    let agent = Agent::new(&crate::agent_support::oncall(url), "");
    let dir = agent.dir.path();
    let yaml = format!(
        "state_dir: {state}\nhost: {host}\nwebhooks:\n  oncall:\n    url: \"{url}\"\n    max_per_second: 3\n\
         files:\n  - path: {logs}/*.log\n    start_at: beginning\n\
         rules:\n  - name: job\n    match: 'JOB (?P<n>\\d+) failed'\n    webhook: oncall\n    thread_key: '{host}-job-{{n}}'\n    message: 'job {{n}} failed on {{host}}'\n\
         fleet:\n  redis: \"{redis}\"\n  namespace: test\n  timeout: 1s\n",
        state = dir.join("state").display(),
        logs = dir.join("logs").display(),
    );
    fs::write(&agent.config, yaml).unwrap();
    agent
}

#[test]
fn a_fleet_silence_reaches_every_agent_and_outlives_redis_until_it_ends() {
    let (chat, url) = open_chat();
    let mut redis = Redis::start();
    let mut agents: Vec<Agent> = ["a", "b", "c", "d"]
        .iter()
        .map(|h| fleet_agent(&url, h, &format!("redis://127.0.0.1:{}/0", redis.port)))
        .collect();
    for agent in &mut agents {
        agent.start();
        write_committed(agent, "started");
    }
    // Added through one agent's config, applied by every agent.
    let id = add(
        &agents[0].config,
        &[
            "--rule",
            "job",
            "--match",
            "n=~1|2",
            "--for",
            "40s",
            "--comment",
            "deploy",
        ],
    );
    for agent in &agents {
        wait_applied(agent, &id);
    }
    for agent in &agents[1..] {
        write_committed(agent, "JOB 1 failed");
    }
    // Redis goes away: the agents keep the copy they last saw.
    redis.kill();
    write_committed(&agents[1], "JOB 2 failed");
    // Not matched by the silence: posted (locally paced while Redis is away).
    write_line(&agents[2].log(), "JOB 3 failed");
    wait_for("job 3's alert", Duration::from_secs(30), || {
        chat.messages()
            .iter()
            .any(|m| m.text == "job 3 failed on c")
    });
    assert_eq!(chat.messages().len(), 1, "{:?}", chat.messages());
    // Redis comes back empty: the agents write back the silence they hold.
    redis.spawn();
    wait_for("the silence written back", Duration::from_secs(30), || {
        redis.cli(&["HLEN", "chattail:{test}:silences"]).trim() == "1"
    });
    let (code, listed, err) = silence(&agents[3].config, &["list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        listed.contains(&id) && listed.contains("deploy"),
        "{listed}"
    );
    // It ends by itself: each thread it held back from hears of it once.
    wait_for("the end messages", Duration::from_secs(60), || {
        chat.messages()
            .iter()
            .filter(|m| m.text.contains(&format!("silence {id}")))
            .count()
            == 4
    });
    let threads: Vec<(String, String)> = chat
        .messages()
        .into_iter()
        .filter(|m| m.text.contains(&format!("silence {id}")))
        .map(|m| (m.thread_key.unwrap_or_default(), m.text))
        .collect();
    for (host, job, count) in [("b", 1, 1), ("b", 2, 1), ("c", 1, 1), ("d", 1, 1)] {
        let key = format!("{host}-job-{job}");
        let (_, text) = threads
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("no end message in {key}: {threads:?}"));
        let s = if count == 1 { "" } else { "s" };
        assert!(
            text.contains(&format!(
                "*job* on {host}: silence {id} (deploy) ended; it held back {count} occurrence{s}"
            )),
            "{text}"
        );
    }
    for agent in &mut agents {
        agent.terminate();
    }
}
