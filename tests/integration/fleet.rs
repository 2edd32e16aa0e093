//! Fleet mode against a real `redis-server` (Debian's package, installed by `.ci/run`):
//! many agent processes posting to one space share its quota through Redis, and Redis
//! trouble (killed, restarted empty) never costs a message.

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::agent_support::{Agent, free_port, open_chat, wait_for};
use crate::mock_chat::MockChat;
use crate::redis_support::Redis;
use crate::support::{chattail, http, text};
use crate::tail_support::open_append;

/// An agent named `host` posting `JOB n failed` lines, each into a thread of its own, at
/// up to 3 posts a second (a margin under the mock's 4, for a loaded test machine); with
/// `fleet`, pacing is shared through that Redis.
fn job_agent(url: &str, host: &str, fleet: Option<&str>, admin: Option<u16>) -> Agent {
    let agent = Agent::new(&crate::agent_support::oncall(url), "");
    let dir = agent.dir.path();
    let mut yaml = format!(
        "state_dir: {state}\nhost: {host}\nwebhooks:\n  oncall:\n    url: \"{url}\"\n    max_per_second: 3\n\
         files:\n  - path: {logs}/*.log\n    start_at: beginning\n\
         delivery:\n  min_backoff: 100ms\n  max_backoff: 1s\n  request_timeout: 2s\n\
         rules:\n  - name: job\n    match: 'JOB (?P<n>\\d+) failed'\n    webhook: oncall\n    thread_key: '{host}-job-{{n}}'\n    message: '*job* {{n}} failed on {{host}}'\n",
        state = dir.join("state").display(),
        logs = dir.join("logs").display(),
    );
    if let Some(redis) = fleet {
        yaml.push_str(&format!(
            "fleet:\n  redis: \"{redis}\"\n  namespace: test\n  timeout: 1s\n"
        ));
    }
    if let Some(port) = admin {
        yaml.push_str(&format!("admin:\n  listen: 127.0.0.1:{port}\n"));
    }
    fs::write(&agent.config, yaml).unwrap();
    agent
}

fn write_jobs(path: &Path, range: std::ops::Range<usize>) {
    use std::io::Write;
    let mut f = open_append(path);
    for n in range {
        writeln!(f, "2026-12-01T10:00:00Z ERROR JOB {n} failed").unwrap();
    }
}

fn throttled(chat: &MockChat) -> usize {
    chat.requests().iter().filter(|r| r.status == 429).count()
}

/// Ten agents, one webhook, a Chat that allows 4 requests a second per space: each
/// agent paces itself at 3/s, so alone they overrun the space (the control run shows the
/// 429s); sharing the pace in Redis, the fleet as a whole stays within it.
#[test]
fn ten_agents_share_one_spaces_quota_with_zero_429s() {
    const AGENTS: usize = 10;
    const JOBS: usize = 4;
    let run = |fleet: Option<&str>| {
        let chat = MockChat::start();
        chat.set_rate(Some(4.0), None);
        let url = chat.webhook("SPACE", "KEY", "TOKEN");
        let mut agents: Vec<Agent> = (0..AGENTS)
            .map(|i| job_agent(&url, &format!("host-{i}"), fleet, None))
            .collect();
        for agent in &mut agents {
            write_jobs(&agent.log(), 0..JOBS);
        }
        for agent in &mut agents {
            agent.start();
        }
        wait_for("every job posted", Duration::from_secs(90), || {
            chat.messages().len() >= AGENTS * JOBS
        });
        for agent in &mut agents {
            assert!(agent.terminate().success());
        }
        assert_eq!(
            chat.messages().len(),
            AGENTS * JOBS,
            "each job exactly once"
        );
        throttled(&chat)
    };
    let redis = Redis::start();
    assert_eq!(
        run(Some(&redis.url())),
        0,
        "the fleet stays within the quota"
    );
    assert!(
        run(None) > 0,
        "without fleet mode the same load is throttled"
    );
}

/// Redis killed: every agent paces alone (logged, `chattail_fleet_connected 0`,
/// `/healthz` 200 and degraded), nothing is lost; Redis back, empty: they rejoin.
#[test]
fn redis_down_costs_nothing_and_agents_rejoin_when_it_returns() {
    let (chat, url) = open_chat();
    let mut redis = Redis::start();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut agents: Vec<Agent> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| job_agent(&url, &format!("host-{i}"), Some(&redis.url()), Some(*port)))
        .collect();
    for agent in &mut agents {
        agent.start();
    }
    let metric = |port: u16| {
        let (_, _, body) = http(&format!("127.0.0.1:{port}"), "GET", "/metrics", "");
        body.lines()
            .find(|l| l.starts_with("chattail_fleet_connected "))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let mut posted = 0;
    for agent in &agents {
        write_jobs(&agent.log(), 0..2);
        posted += 2;
    }
    wait_for("the first jobs", Duration::from_secs(30), || {
        chat.messages().len() >= posted
    });
    redis.kill();
    for agent in &agents {
        write_jobs(&agent.log(), 2..5);
        posted += 3;
    }
    wait_for(
        "the jobs written while Redis is down",
        Duration::from_secs(30),
        || chat.messages().len() >= posted,
    );
    for port in &ports {
        wait_for("fleet_connected 0", Duration::from_secs(10), || {
            metric(*port) == "chattail_fleet_connected 0"
        });
        let (status, _, body) = http(&format!("127.0.0.1:{port}"), "GET", "/healthz", "");
        assert_eq!(status, 200, "degraded, not failing: {body}");
        assert!(body.contains("pacing and windows locally"), "{body}");
    }
    redis.spawn();
    for agent in &agents {
        write_jobs(&agent.log(), 5..8);
        posted += 3;
    }
    wait_for(
        "the jobs after Redis returned",
        Duration::from_secs(30),
        || chat.messages().len() >= posted,
    );
    for (agent, port) in agents.iter().zip(&ports) {
        // Retries back off while Redis is away (1, 2, 4 s...): allow for the longest.
        wait_for("fleet_connected 1", Duration::from_secs(40), || {
            metric(*port) == "chattail_fleet_connected 1"
        });
        let stderr = agent.stderr();
        assert!(
            stderr.contains("Fleet: Redis cannot be used"),
            "logged once"
        );
        assert_eq!(stderr.matches("Fleet: Redis cannot be used").count(), 1);
        assert!(stderr.contains("Fleet: Redis answers again"));
    }
    stop_all(&mut agents);
    assert_eq!(chat.messages().len(), posted, "nothing lost, nothing twice");
}

#[test]
fn check_says_fleet_mode_is_on_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let agent = job_agent(
        "https://chat.googleapis.com/v1/spaces/S/messages?key=k&token=t",
        "web-1",
        Some("redis://agent:hunter2-secret@redis.internal:6380/2"),
        None,
    );
    let output = chattail(
        &["check", "--config", agent.config.to_str().unwrap()],
        &[],
        None,
    );
    let out = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        out.contains("fleet:     on (redis redis.internal:6380/2, namespace test, timeout 1s"),
        "{out}"
    );
    assert!(!out.contains("hunter2") && !out.contains("agent:"), "{out}");
    drop(dir);
}

/// A Redis that accepts connections and never answers: each call ends at
/// `fleet.timeout`, the agent paces alone and says so, and every job still arrives.
#[test]
fn a_silent_redis_costs_only_the_timeout() {
    let (chat, url) = open_chat();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("redis://{}/0", silent.local_addr().unwrap());
    // Holds every connection open, reading nothing and answering nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let port = free_port();
    let mut agent = job_agent(&url, "host-0", Some(&silent_url), Some(port));
    let yaml = fs::read_to_string(&agent.config)
        .unwrap()
        .replace("timeout: 1s", "timeout: 300ms");
    fs::write(&agent.config, yaml).unwrap();
    write_jobs(&agent.log(), 0..6);
    agent.start();
    wait_for(
        "every job despite the silent Redis",
        Duration::from_secs(30),
        || chat.messages().len() >= 6,
    );
    let (status, _, body) = http(&format!("127.0.0.1:{port}"), "GET", "/healthz", "");
    assert_eq!(status, 200);
    assert!(body.contains("did not answer within 300ms"), "{body}");
    assert!(agent.terminate().success());
    assert_eq!(chat.messages().len(), 6);
}

/// An agent of the burst tests: `db timeout` lines, one window per database (5 s), and
/// unrelated `JOB n failed` lines into threads of their own.
fn burst_agent(url: &str, host: &str, redis: &str) -> Agent {
    burst_agent_with(url, host, redis, "5s")
}

fn burst_agent_with(url: &str, host: &str, redis: &str, window: &str) -> Agent {
    let agent = Agent::new(&crate::agent_support::oncall(url), "");
    let dir = agent.dir.path();
    let yaml = format!(
        "state_dir: {state}\nhost: {host}\nwebhooks:\n  oncall:\n    url: \"{url}\"\n    max_per_second: 3\n\
         files:\n  - path: {logs}/*.log\n    start_at: beginning\n\
         delivery:\n  min_backoff: 100ms\n  max_backoff: 1s\n  request_timeout: 2s\n  shutdown_grace: 1s\n\
         rules:\n  - name: db-timeout\n    match: 'timeout connecting to (?P<db>\\S+)'\n    webhook: oncall\n    thread_key: 'db-timeout-{{db}}'\n    dedup:\n      window: {window}\n\
         \x20 - name: job\n    match: 'JOB (?P<n>\\d+) failed'\n    webhook: oncall\n    thread_key: 'job-{{n}}'\n\
         fleet:\n  redis: \"{redis}\"\n  namespace: bursts\n  timeout: 1s\n",
        state = dir.join("state").display(),
        logs = dir.join("logs").display(),
    );
    fs::write(&agent.config, yaml).unwrap();
    agent
}

fn write_timeouts(path: &Path, n: usize) {
    use std::io::Write;
    let mut f = open_append(path);
    for i in 0..n {
        writeln!(
            f,
            "2026-12-01T10:00:00Z ERROR timeout connecting to db-main ({i})"
        )
        .unwrap();
    }
}

/// Whether an agent has read its whole log (its committed position, read directly).
fn read_all(agent: &Agent) -> bool {
    crate::agent_support::committed_to_end(agent, &agent.log())
}

/// Starts `hosts` burst agents (`host-0`, ...), each with `lines` timeout lines.
fn start_burst_agents(hosts: usize, lines: usize, url: &str, redis: &str) -> Vec<Agent> {
    let mut agents: Vec<Agent> = (0..hosts)
        .map(|i| burst_agent(url, &format!("host-{i}"), redis))
        .collect();
    for agent in &mut agents {
        write_timeouts(&agent.log(), lines);
        agent.start();
    }
    agents
}

/// How many notifications an agent still has queued (its outbox, read directly).
fn queued(agent: &Agent) -> i64 {
    let db = agent.dir.path().join("state/state.sqlite3");
    rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| c.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0)))
        .unwrap_or(-1)
}

/// The same problem on ten hosts at once: one first message and one summary counting
/// every other occurrence on every host, no 429, and nothing left queued anywhere.
#[test]
fn one_problem_on_ten_hosts_gives_one_first_message_and_one_summary() {
    let chat = MockChat::start();
    chat.set_rate(Some(4.0), None);
    let url = chat.webhook("SPACE", "KEY", "TOKEN");
    let redis = Redis::start();
    let mut agents = start_burst_agents(10, 51, &url, &redis.url());
    wait_for("the summary", Duration::from_secs(60), || {
        chat.messages().len() >= 2
    });
    wait_for("every outbox empty", Duration::from_secs(60), || {
        agents.iter().all(|a| queued(a) == 0)
    });
    let messages = chat.messages();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert_eq!(messages[0].thread, messages[1].thread);
    assert!(
        messages[1]
            .text
            .contains("509 more occurrences on 10 hosts (host-0, host-1, host-2 and 7 more)"),
        "{}",
        messages[1].text
    );
    assert_eq!(throttled(&chat), 0);
    stop_all(&mut agents);
}

/// The agent that posted the first message is killed with -9 before the window ends:
/// another agent posts the summary, once, with what the others counted.
#[test]
fn the_summary_survives_its_owner_being_killed() {
    let (chat, url) = open_chat();
    let redis = Redis::start();
    let mut agents = start_burst_agents(4, 11, &url, &redis.url());
    wait_for("the first message", Duration::from_secs(30), || {
        !chat.messages().is_empty()
    });
    let owner_host = chat.messages()[0].host.clone().unwrap();
    let owner = owner_host
        .trim_start_matches("host-")
        .parse::<usize>()
        .unwrap();
    agents[owner].kill9();
    wait_for("the summary", Duration::from_secs(60), || {
        chat.messages().len() >= 2
    });
    wait_for("the other outboxes empty", Duration::from_secs(60), || {
        agents
            .iter()
            .enumerate()
            .all(|(i, a)| i == owner || queued(a) == 0)
    });
    let messages = chat.messages();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    let summary = &messages[1];
    assert_ne!(summary.host.as_deref(), Some(owner_host.as_str()));
    // The three others: their first occurrences and their 10 repeats each (the owner,
    // whose first message it was, is one of the hosts that saw the problem).
    assert!(
        summary.text.contains("33 more occurrences on 4 hosts"),
        "{}",
        summary.text
    );
    for (i, agent) in agents.iter_mut().enumerate() {
        if i != owner {
            assert!(agent.terminate().success());
        }
    }
}

/// The "N more occurrences" a summary reports.
fn more_count(text: &str) -> Option<u64> {
    text.split_once("*: ")?.1.split(' ').next()?.parse().ok()
}

/// Redis killed in the middle of a burst: every host falls back to its own summary,
/// and together they count every occurrence (the hosts whose first message another host
/// posted count it in their own summary).
#[test]
fn redis_lost_mid_burst_loses_no_occurrence() {
    let (chat, url) = open_chat();
    let mut redis = Redis::start();
    let mut agents = start_burst_agents(4, 11, &url, &redis.url());
    wait_for("the first message", Duration::from_secs(30), || {
        !chat.messages().is_empty()
    });
    // Every host has decided about its first occurrence (its outbox holds at most the
    // window's summary, which comes at the window's end).
    wait_for("every first decided", Duration::from_secs(30), || {
        agents.iter().all(|a| read_all(a) && queued(a) == 0)
    });
    redis.kill();
    wait_for("every host's summary", Duration::from_secs(60), || {
        chat.messages().len() >= 5 && agents.iter().all(|a| queued(a) == 0)
    });
    let messages = chat.messages();
    assert_eq!(
        messages.len(),
        5,
        "one first message and four summaries: {messages:#?}"
    );
    let counted: u64 = messages[1..]
        .iter()
        .map(|m| more_count(&m.text).unwrap_or_else(|| panic!("not a summary: {}", m.text)))
        .sum();
    assert_eq!(counted + 1, 44, "every occurrence counted once");
    stop_all(&mut agents);
}

/// A throw-away CA and a server certificate for 127.0.0.1, made with `openssl`.
fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl on PATH");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=chattail test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

/// rediss://: fleet-wide windows over TLS, the server verified against the trust store
/// (here a test CA, through `SSL_CERT_FILE`): two hosts give one first message and one
/// summary, which they could not without reaching Redis.
#[test]
fn fleet_mode_works_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let c = |name: &str| certs.path().join(name).display().to_string();
    let mut server = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            &c("server.pem"),
            "--tls-key-file",
            &c("server.key"),
        ])
        .args([
            "--tls-ca-cert-file",
            &c("ca.pem"),
            "--tls-auth-clients",
            "no",
        ])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("redis-server over TLS", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let (chat, url) = open_chat();
    let redis_url = format!("rediss://127.0.0.1:{port}/0");
    let mut agents: Vec<Agent> = (0..2)
        .map(|i| burst_agent(&url, &format!("host-{i}"), &redis_url))
        .collect();
    for agent in &mut agents {
        write_timeouts(&agent.log(), 6);
        agent.env.push(("SSL_CERT_FILE".to_owned(), c("ca.pem")));
        agent.start();
    }
    wait_for("the summary", Duration::from_secs(60), || {
        chat.messages().len() >= 2
    });
    wait_for("both outboxes empty", Duration::from_secs(60), || {
        agents.iter().all(|a| queued(a) == 0)
    });
    let messages = chat.messages();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert!(
        messages[1].text.contains("11 more occurrences on 2 hosts"),
        "{}",
        messages[1].text
    );
    for agent in &mut agents {
        assert!(agent.terminate().success());
        assert!(
            !agent.stderr().contains("Redis cannot be used"),
            "{}",
            agent.stderr()
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// Stops every agent with SIGTERM; each must exit cleanly.
fn stop_all(agents: &mut [Agent]) {
    for agent in agents {
        assert!(agent.terminate().success());
    }
}

/// What the space received of the burst rule: first messages, summaries, and the lines
/// they stand for together (a first message one, a summary its "N more").
fn accounted(chat: &MockChat) -> (usize, usize, u64) {
    let messages: Vec<_> = chat
        .messages()
        .into_iter()
        .filter(|m| m.rules.as_deref() == Some("db-timeout"))
        .collect();
    // A post may carry several notifications of its thread (a first message and the
    // summary after it, both decided by the time it was formed): count each part.
    let parts: Vec<&str> = messages
        .iter()
        .flat_map(|m| m.text.split("\n\n"))
        .filter(|p| p.starts_with("*db-timeout*"))
        .collect();
    let summaries: Vec<u64> = parts.iter().filter_map(|p| more_count(p)).collect();
    let firsts = parts.len() - summaries.len();
    (
        firsts,
        summaries.len(),
        firsts as u64 + summaries.iter().sum::<u64>(),
    )
}

/// Whether an agent has nothing left to do for the fleet: its log read, no open burst
/// window, nothing queued, no fleet window it waits for (its state, read directly).
fn settled(agent: &Agent) -> bool {
    let db = agent.dir.path().join("state/state.sqlite3");
    read_all(agent)
        && rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| {
                c.query_row(
                    "SELECT (SELECT COUNT(*) FROM outbox) + (SELECT COUNT(*) FROM bursts)
                       + (SELECT COUNT(*) FROM fleet_windows)",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .is_ok_and(|n| n == 0)
}

fn wait_settled(agents: &[&Agent]) {
    wait_for("every agent settled", Duration::from_secs(120), || {
        agents.iter().all(|a| settled(a))
    });
}

/// Whether an agent has made the fleet decision about its first occurrence.
fn first_decided(agent: &Agent) -> bool {
    let db = agent.dir.path().join("state/state.sqlite3");
    rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| {
            c.query_row("SELECT COUNT(*) FROM fleet_windows", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .is_ok_and(|n| n > 0)
}

/// The most common fleet problem: every host logs the error once. One first message, and
/// one summary counting the other nineteen.
#[test]
fn one_line_on_each_of_twenty_hosts_is_counted() {
    let (chat, url) = open_chat();
    let redis = Redis::start();
    let mut agents = start_burst_agents(20, 1, &url, &redis.url());
    wait_settled(&agents.iter().collect::<Vec<_>>());
    let (firsts, summaries, total) = accounted(&chat);
    assert_eq!(
        (firsts, summaries, total),
        (1, 1, 20),
        "{:#?}",
        chat.messages()
    );
    let summary = chat.messages().pop().unwrap();
    assert!(
        summary.text.contains("19 more occurrences on 20 hosts"),
        "{}",
        summary.text
    );
    stop_all(&mut agents);
}

/// The problem outlasts the window on every host: lines keep coming for two windows and
/// more. Every fleet window gets one first message and one summary, and together they
/// count every line written.
#[test]
fn windows_back_to_back_count_every_line() {
    let (chat, url) = open_chat();
    let redis = Redis::start();
    let mut agents: Vec<Agent> = (0..4)
        .map(|i| burst_agent_with(&url, &format!("host-{i}"), &redis.url(), "3s"))
        .collect();
    for agent in &mut agents {
        agent.start();
    }
    // The workload: a line on every host every half second for eight seconds. (Pacing
    // the writer is the scenario, not a way to wait for the agents.)
    let rounds = 16;
    for _ in 0..rounds {
        for agent in &agents {
            write_timeouts(&agent.log(), 1);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_settled(&agents.iter().collect::<Vec<_>>());
    let (firsts, summaries, total) = accounted(&chat);
    assert_eq!(total, 4 * rounds as u64, "{:#?}", chat.messages());
    assert!(firsts >= 2, "the problem outlasted the window: {firsts}");
    assert_eq!(summaries, firsts, "one summary per fleet window");
    stop_all(&mut agents);
}

/// The owner is killed with -9 before its window ends and comes back within it: it
/// resumes its window, and the fleet still gets one summary that counts every line.
#[test]
fn an_owner_killed_and_restarted_posts_one_summary_counting_every_line() {
    let (chat, url) = open_chat();
    let redis = Redis::start();
    let mut agents = start_burst_agents(4, 11, &url, &redis.url());
    wait_for("the first message", Duration::from_secs(30), || {
        !chat.messages().is_empty()
    });
    let owner_host = chat.messages()[0].host.clone().unwrap();
    let owner: usize = owner_host.trim_start_matches("host-").parse().unwrap();
    wait_for("the owner read its log", Duration::from_secs(30), || {
        read_all(&agents[owner])
    });
    agents[owner].kill9();
    agents[owner].start();
    wait_settled(&agents.iter().collect::<Vec<_>>());
    let (firsts, summaries, total) = accounted(&chat);
    assert_eq!(
        (firsts, summaries, total),
        (1, 1, 44),
        "{:#?}",
        chat.messages()
    );
    stop_all(&mut agents);
}

/// The owner stalls (stopped, as by a long pause) past its lease: another host takes the
/// summary over. When the owner resumes, its part comes too late for that summary and it
/// posts nothing twice; every line is counted once.
#[test]
fn a_stalled_owner_leaves_the_summary_to_a_taker_without_counting_twice() {
    let (chat, url) = open_chat();
    let redis = Redis::start();
    let mut agents: Vec<Agent> = (0..4)
        .map(|i| burst_agent(&url, &format!("host-{i}"), &redis.url()))
        .collect();
    for agent in &mut agents {
        agent.start();
    }
    write_timeouts(&agents[0].log(), 1);
    wait_for("host-0's first message", Duration::from_secs(30), || {
        !chat.messages().is_empty()
    });
    assert_eq!(chat.messages()[0].host.as_deref(), Some("host-0"));
    agents[0].signal("STOP");
    for agent in &agents[1..] {
        write_timeouts(&agent.log(), 5);
    }
    wait_for("the taker's summary", Duration::from_secs(60), || {
        accounted(&chat).1 == 1
    });
    agents[0].signal("CONT");
    wait_settled(&agents.iter().collect::<Vec<_>>());
    let (firsts, summaries, total) = accounted(&chat);
    assert_eq!(
        (firsts, summaries, total),
        (1, 1, 16),
        "{:#?}",
        chat.messages()
    );
    let summary = chat.messages().pop().unwrap();
    assert_ne!(summary.host.as_deref(), Some("host-0"));
    stop_all(&mut agents);
}

/// Redis restarted empty in the middle of the windows while Chat answers 429 to much of
/// what is posted: every host sums up its own part, retried posts say what their decision
/// counted, and together the messages count every line.
#[test]
fn redis_restarted_empty_mid_window_with_429s_counts_every_line() {
    let chat = MockChat::start();
    chat.set_rate(Some(1.0), None);
    let url = chat.webhook("SPACE", "KEY", "TOKEN");
    let mut redis = Redis::start();
    let mut agents: Vec<Agent> = (0..6)
        .map(|i| burst_agent_with(&url, &format!("host-{i}"), &redis.url(), "8s"))
        .collect();
    for agent in &mut agents {
        write_timeouts(&agent.log(), 3);
        agent.start();
    }
    wait_for("every first decided", Duration::from_secs(30), || {
        agents.iter().all(first_decided)
    });
    redis.kill();
    redis.spawn();
    wait_settled(&agents.iter().collect::<Vec<_>>());
    let (_, _, total) = accounted(&chat);
    assert_eq!(total, 18, "{:#?}", chat.messages());
    assert!(throttled(&chat) > 0, "Chat was meant to answer 429s");
    stop_all(&mut agents);
}

/// One agent's wall clock is 30 s ahead of Redis' (libfaketime, Debian's `faketime`):
/// the windows use Redis' clock for every comparison, so the fleet still gets one first
/// message and one summary that counts every line.
#[test]
fn an_agent_30_s_ahead_of_redis_changes_nothing() {
    let (chat, url) = open_chat();
    let redis = Redis::start();
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        Path::new(lib).exists(),
        "install Debian's `faketime` (bash .ci/test installs it)"
    );
    let mut agents: Vec<Agent> = (0..3)
        .map(|i| burst_agent(&url, &format!("host-{i}"), &redis.url()))
        .collect();
    agents[1].env.extend([
        ("LD_PRELOAD".to_owned(), lib.to_owned()),
        ("FAKETIME".to_owned(), "+30s".to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_owned(), "1".to_owned()),
    ]);
    for (i, agent) in agents.iter_mut().enumerate() {
        agent.start();
        write_timeouts(&agent.log(), 4);
        if i == 0 {
            wait_for("host-0's first message", Duration::from_secs(30), || {
                !chat.messages().is_empty()
            });
        }
    }
    wait_settled(&agents.iter().collect::<Vec<_>>());
    let (firsts, summaries, total) = accounted(&chat);
    assert_eq!(
        (firsts, summaries, total),
        (1, 1, 12),
        "{:#?}",
        chat.messages()
    );
    stop_all(&mut agents);
}

/// A fleet window waiting for its end holds up nothing else of its space: an unrelated
/// rule's line posted after the window opened reaches Chat before the window's summary.
#[test]
fn a_pending_fleet_window_holds_up_nothing_else() {
    let (chat, url) = open_chat();
    let redis = Redis::start();
    let mut agents: Vec<Agent> = (0..2)
        .map(|i| burst_agent_with(&url, &format!("host-{i}"), &redis.url(), "20s"))
        .collect();
    for agent in &mut agents {
        write_timeouts(&agent.log(), 3);
        agent.start();
    }
    wait_for("the first message", Duration::from_secs(30), || {
        !chat.messages().is_empty()
    });
    for agent in &agents {
        write_jobs(&agent.log(), 7..8);
    }
    wait_for("both jobs", Duration::from_secs(30), || {
        chat.messages()
            .iter()
            .filter(|m| m.rules.as_deref() == Some("job"))
            .count()
            == 2
    });
    assert_eq!(accounted(&chat).1, 0, "the window is still open");
    wait_settled(&agents.iter().collect::<Vec<_>>());
    assert_eq!(accounted(&chat), (1, 1, 6));
    stop_all(&mut agents);
}

/// A password with `+`, `&`, `@` (written `%40`) and `:` is decoded as URL userinfo and
/// authenticates against `redis-server --requirepass`.
#[test]
fn a_password_with_url_characters_authenticates() {
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let mut server = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--requirepass", "p+a&s@s:w"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("redis-server", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let (chat, url) = open_chat();
    let redis_url = format!("redis://:p+a&s%40s:w@127.0.0.1:{port}/0");
    let mut agents: Vec<Agent> = (0..2)
        .map(|i| burst_agent(&url, &format!("host-{i}"), &redis_url))
        .collect();
    for agent in &mut agents {
        write_timeouts(&agent.log(), 3);
        agent.start();
    }
    wait_settled(&agents.iter().collect::<Vec<_>>());
    assert_eq!(accounted(&chat), (1, 1, 6), "{:#?}", chat.messages());
    for agent in &mut agents {
        assert!(agent.terminate().success());
        let stderr = agent.stderr();
        assert!(!stderr.contains("Redis cannot be used"), "{stderr}");
        assert!(!stderr.contains("p+a&s"), "{stderr}");
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// A server that speaks just enough RESP for one scenario: each command (an array of
/// bulk strings) is answered with what `reply` makes of it. Returns its port.
fn fake_redis(reply: fn(&[Vec<u8>]) -> Vec<u8>) -> u16 {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let n: usize = line.trim()[1..].parse().unwrap_or(0);
                    let mut args = Vec::new();
                    for _ in 0..n {
                        line.clear();
                        reader.read_line(&mut line).unwrap();
                        let len: usize = line.trim()[1..].parse().unwrap();
                        let mut data = vec![0; len + 2];
                        reader.read_exact(&mut data).unwrap();
                        data.truncate(len);
                        args.push(data);
                    }
                    if writer.write_all(&reply(&args)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A server whose pacing answer is a day (a wrong server, a tampered key on a server
/// that does not run our script): the answer is refused, the agent paces locally and
/// says so (log, metric, `/healthz`), and every job is posted.
#[test]
fn a_pacing_wait_of_a_day_is_refused_and_delivery_goes_on() {
    let port = fake_redis(|args| match args.first().map(Vec::as_slice) {
        Some(b"SCRIPT") => format!("$40\r\n{}\r\n", "a".repeat(40)).into_bytes(),
        Some(b"EVALSHA" | b"EVAL") => b"*2\r\n:86400000\r\n:1000\r\n".to_vec(),
        _ => b"+OK\r\n".to_vec(),
    });
    let (chat, url) = open_chat();
    let admin = free_port();
    let mut agent = job_agent(
        &url,
        "host-0",
        Some(&format!("redis://127.0.0.1:{port}/0")),
        Some(admin),
    );
    write_jobs(&agent.log(), 0..3);
    agent.start();
    wait_for("every job", Duration::from_secs(30), || {
        chat.messages().len() == 3
    });
    let addr = format!("127.0.0.1:{admin}");
    let (status, _, health) = http(&addr, "GET", "/healthz", "");
    assert_eq!(status, 200, "{health}");
    assert!(
        health.contains("degraded") && health.contains("out of range"),
        "{health}"
    );
    let (_, _, metrics) = http(&addr, "GET", "/metrics", "");
    let bad: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chattail_fleet_bad_answers_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(bad >= 1, "{metrics}");
    assert!(agent.terminate().success());
    assert_eq!(
        agent
            .stderr()
            .matches("Fleet: Redis cannot be used")
            .count(),
        1
    );
}

/// A server that echoes the password in its refusal (`ERR invalid password 'Zq'`): the
/// text is never shown, whatever the password's length; the agent says Redis refused the
/// user or password, with the error code, in its log, `/healthz` and its self-alert.
#[test]
fn a_refused_login_never_shows_the_password_whatever_its_length() {
    fn echo(args: &[Vec<u8>]) -> Vec<u8> {
        match args.first().map(Vec::as_slice) {
            Some(b"AUTH") => {
                let password = String::from_utf8_lossy(args.last().unwrap());
                format!("-ERR invalid password '{password}'\r\n").into_bytes()
            }
            _ => b"+OK\r\n".to_vec(),
        }
    }
    let port = fake_redis(echo);
    for password in ["Q", "Zq", "a b'\"`c"] {
        let chat = MockChat::start();
        chat.set_rate(None, None);
        let url = chat.webhook("SPACE", "KEY", "TOKEN");
        let admin = free_port();
        let encoded: String = password
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let mut agent = job_agent(
            &url,
            "host-0",
            Some(&format!("redis://:{encoded}@127.0.0.1:{port}/0")),
            Some(admin),
        );
        let mut yaml = fs::read_to_string(&agent.config).unwrap();
        yaml.push_str("self_alerts:\n  webhook: oncall\n");
        fs::write(&agent.config, yaml).unwrap();
        write_jobs(&agent.log(), 0..2);
        agent.start();
        wait_for(
            "the jobs and the self-alert",
            Duration::from_secs(30),
            || chat.messages().len() >= 3,
        );
        let (_, _, health) = http(&format!("127.0.0.1:{admin}"), "GET", "/healthz", "");
        assert!(agent.terminate().success());
        let stderr = agent.stderr();
        let posted: String = chat.messages().iter().map(|m| m.text.clone()).collect();
        for shown in [&stderr, &health, &posted] {
            assert!(!shown.contains("invalid password"), "{shown}");
            assert!(!shown.contains(&format!("'{password}'")), "{shown}");
        }
        assert!(
            health.contains("Redis refused the user or password (ERR)"),
            "{health}"
        );
        assert!(stderr.contains("Redis refused the user or password (ERR)"));
    }
}

/// The window steps against a real Redis, through the library: a claim retried after a
/// crash gets its first answer again (even once that window is over), a report counts a
/// part once, the owner takes the totals when every part is final while the others must
/// wait, and a part taken without its report, or lost by Redis, is told so.
#[test]
fn the_window_steps_keep_every_part_exactly_once() {
    use chattail::fleet::Fleet;
    use chattail::fleet::windows::{Report, Take};
    let redis = Redis::start();
    let config = chattail::config::FleetConfig {
        redis: chattail::redis_url::RedisUrl::parse(&redis.url()).unwrap(),
        namespace: "steps".into(),
        timeout: Duration::from_secs(2),
    };
    let fleet = Fleet::new(
        config,
        chattail::ops::metrics::Metrics::default(),
        std::sync::Arc::new(chattail::ops::health::Health::default()),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let age = Duration::ZERO;
        let claim = |member: &'static str, window_ms: i64| {
            fleet.claim_window(member, "r", "k", window_ms, member, "a line", age)
        };
        let a = claim("a:1", 400).await.unwrap();
        let b = claim("b:1", 400).await.unwrap();
        assert!(a.owner && !b.owner);
        assert_eq!((a.first_ms, a.window_ms), (b.first_ms, b.window_ms));
        // A later member opens the next window once this one is over (Redis' clock).
        let mut next = fleet
            .claim_window("c:1", "r", "k", 400, "c", "a line", age)
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut n = 1;
        while !next.owner {
            assert!(
                std::time::Instant::now() < deadline,
                "the window never ended"
            );
            // Polled: each try is a new local window (a retried member keeps its answer).
            tokio::time::sleep(Duration::from_millis(20)).await;
            n += 1;
            next = fleet
                .claim_window(&format!("c:{n}"), "r", "k", 400, "c", "a line", age)
                .await
                .unwrap();
        }
        assert_ne!(next.first_ms, a.first_ms);
        // b retries its claim (a crash before it recorded the answer): the same window.
        assert_eq!(claim("b:1", 400).await.unwrap(), b);
        let report = |member: &'static str, first_ms: i64, repeats: u64| {
            fleet.report_window(member, "r", "k", first_ms, repeats, age, "the last line")
        };
        assert_eq!(report("a:1", a.first_ms, 2).await.unwrap(), Report::Counted);
        assert_eq!(report("b:1", b.first_ms, 3).await.unwrap(), Report::Counted);
        // Reported again (a retry): counted once.
        assert_eq!(report("b:1", b.first_ms, 3).await.unwrap(), Report::Counted);
        assert_eq!(report("x:1", a.first_ms, 1).await.unwrap(), Report::Lost);
        // The probes that joined the first window before it ended are parts of it too.
        for i in 1..n {
            let member = format!("c:{i}");
            assert_eq!(
                fleet
                    .report_window(&member, "r", "k", a.first_ms, 0, age, "")
                    .await
                    .unwrap(),
                Report::Counted
            );
        }
        // b is not the owner: it waits for the lease.
        assert!(matches!(
            fleet.take_summary("b:1", "r", "k", &b).await.unwrap(),
            Take::Wait(_)
        ));
        let Take::Totals(totals) = fleet.take_summary("a:1", "r", "k", &a).await.unwrap() else {
            panic!("the owner takes the totals once every part is final");
        };
        // a's two repeats, b's first and three repeats, each probe's first.
        assert_eq!((totals.more, totals.hosts), (6 + (n - 1), 3));
        assert_eq!(totals.last_line, "the last line");
        // Taken again by the owner (a restart): the same totals.
        assert_eq!(
            fleet.take_summary("a:1", "r", "k", &a).await.unwrap(),
            Take::Totals(totals)
        );
        assert_eq!(
            fleet.take_summary("b:1", "r", "k", &b).await.unwrap(),
            Take::Taken
        );
    });
    // Redis loses b's part (as a restore or a flush would): b is told it was not counted.
    let parts = redis_keys(&redis, "*:parts");
    let window = parts
        .iter()
        .find(|k| redis.cli(&["HEXISTS", k, "b:1"]).trim() == "1")
        .expect("b's window")
        .clone();
    redis.cli(&["HDEL", &window, "b:1"]);
    runtime.block_on(async {
        let b = fleet
            .claim_window("b:1", "r", "k", 400, "b", "a line", Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(
            fleet.take_summary("b:1", "r", "k", &b).await.unwrap(),
            Take::Missing
        );
    });
}

fn redis_keys(redis: &Redis, pattern: &str) -> Vec<String> {
    redis
        .cli(&["--scan", "--pattern", pattern])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// An agent that saw Redis fail and then has nothing to post still learns that Redis is
/// back: it probes on its backoff schedule, so `/healthz` and `chattail_fleet_connected`
/// recover without a line to post.
#[test]
fn an_idle_agent_sees_redis_return() {
    let (chat, url) = open_chat();
    let mut redis = Redis::start();
    let admin = free_port();
    let mut agent = job_agent(&url, "host-0", Some(&redis.url()), Some(admin));
    agent.start();
    write_jobs(&agent.log(), 0..1);
    wait_for("the first job", Duration::from_secs(30), || {
        chat.messages().len() == 1
    });
    let addr = format!("127.0.0.1:{admin}");
    let metric = || {
        let (_, _, body) = http(&addr, "GET", "/metrics", "");
        body.lines()
            .find(|l| l.starts_with("chattail_fleet_connected "))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    redis.kill();
    write_jobs(&agent.log(), 1..2);
    wait_for("the job posted alone", Duration::from_secs(30), || {
        chat.messages().len() == 2
    });
    wait_for("fleet_connected 0", Duration::from_secs(10), || {
        metric() == "chattail_fleet_connected 0"
    });
    redis.spawn();
    // Nothing more to post: only the probe can see Redis back (backoff up to 30 s).
    wait_for(
        "fleet_connected 1 while idle",
        Duration::from_secs(40),
        || metric() == "chattail_fleet_connected 1",
    );
    let (status, _, health) = http(&addr, "GET", "/healthz", "");
    assert_eq!(status, 200);
    assert!(!health.contains("degraded"), "{health}");
    assert!(agent.terminate().success());
    assert_eq!(chat.messages().len(), 2);
}
