//! `chattail run` end to end: the real binary, real files, and the mock Chat over loopback.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::agent_support::{
    Agent, delivered_numbers, oncall, wait_for, write_noise, write_timeouts,
};
use crate::mock_chat::{Fault, MockChat};
use crate::tail_support::open_append;

#[test]
fn lines_reach_their_threads_in_order_and_at_chats_pace() {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    let mut agent = Agent::new(&oncall(&url), "");
    agent.start();
    for round in 0..5 {
        write_timeouts(&agent.log(), "db-a.internal", round * 2..round * 2 + 2);
        write_timeouts(&agent.log(), "db-b.internal", round * 2..round * 2 + 2);
    }
    wait_for("20 notifications", Duration::from_secs(30), || {
        delivered_numbers(&chat, "db-a.internal").len()
            + delivered_numbers(&chat, "db-b.internal").len()
            == 20
    });
    assert_eq!(
        delivered_numbers(&chat, "db-a.internal"),
        (0..10).collect::<Vec<_>>()
    );
    assert_eq!(
        delivered_numbers(&chat, "db-b.internal"),
        (0..10).collect::<Vec<_>>()
    );
    let messages = chat.messages();
    let thread_of = |db: &str| {
        let threads: std::collections::HashSet<String> = messages
            .iter()
            .filter(|m| m.text.contains(db))
            .map(|m| m.thread.clone())
            .collect();
        assert_eq!(threads.len(), 1, "{db} is in one thread: {threads:?}");
        threads.into_iter().next().unwrap()
    };
    assert_ne!(thread_of("db-a.internal"), thread_of("db-b.internal"));
    assert!(messages.iter().all(|m| {
        m.thread_key
            .as_deref()
            .is_some_and(|k| k.starts_with("db-"))
    }));
    // Chat's quota: no request in this space was answered 429, because the agent paced.
    assert!(
        chat.requests().iter().all(|r| r.status != 429),
        "{:?}",
        chat.requests()
    );
    assert!(agent.terminate().success());
}

#[test]
fn lost_replies_do_not_produce_duplicates() {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    chat.push_fault(Fault::CommitThenFail(503));
    chat.push_fault(Fault::CommitThenFail(0));
    chat.push_fault(Fault::Drop);
    chat.push_fault(Fault::Status {
        status: 500,
        retry_after: None,
    });
    let mut agent = Agent::new(&oncall(&url), "");
    agent.start();
    write_timeouts(&agent.log(), "db-a.internal", 0..6);
    wait_for("6 notifications", Duration::from_secs(30), || {
        delivered_numbers(&chat, "db-a.internal").len() >= 6
    });
    assert!(agent.terminate().success());
    assert_eq!(
        delivered_numbers(&chat, "db-a.internal"),
        (0..6).collect::<Vec<_>>()
    );
    // Every retry of one post carried the same request id.
    let ids: Vec<Option<String>> = chat
        .requests()
        .iter()
        .map(|r| r.request_id.clone())
        .collect();
    assert!(ids.iter().all(Option::is_some));
    assert!(
        ids.len() > chat.messages().len(),
        "the faults caused retries"
    );
}

#[test]
fn nothing_is_lost_through_thirty_seconds_of_503() {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    chat.outage(Duration::from_secs(30));
    let mut agent = Agent::new(&oncall(&url), "");
    agent.start();
    write_timeouts(&agent.log(), "db-a.internal", 0..10);
    wait_for(
        "the outage to end and 10 notifications",
        Duration::from_secs(60),
        || delivered_numbers(&chat, "db-a.internal").len() >= 10,
    );
    assert_eq!(
        delivered_numbers(&chat, "db-a.internal"),
        (0..10).collect::<Vec<_>>()
    );
    assert!(
        chat.requests().iter().filter(|r| r.status == 503).count() >= 10,
        "the agent kept trying"
    );
    assert!(agent.terminate().success());
}

#[test]
fn a_revoked_webhook_does_not_block_another_and_nothing_leaks() {
    let chat = MockChat::start();
    let good = chat.webhook("SPACE1", "KEY1", "GOODTOKEN");
    let bad = chat.webhook("SPACE2", "KEY1", "REVOKEDTOKEN");
    chat.revoke("REVOKEDTOKEN", Some(403));
    let webhooks = format!("{}  pager:\n    url: \"{bad}\"\n", oncall(&good));
    let pager_rule = "  - name: disk-full\n    match: 'CRIT disk (?P<disk>\\S+) full #(?P<n>\\d+)'\n    webhook: pager\n    thread_key: 'disk-{disk}'\n    message: \"*Disk full* on `{disk}` #{n}\"\n";
    let mut agent = Agent::new(&webhooks, pager_rule);
    agent.start();
    let mut f = open_append(&agent.log());
    for n in 0..3 {
        writeln!(f, "CRIT disk /dev/sda1 full #{n}").unwrap();
    }
    drop(f);
    write_timeouts(&agent.log(), "db-a.internal", 0..5);
    wait_for("the good webhook's posts", Duration::from_secs(30), || {
        delivered_numbers(&chat, "db-a.internal").len() >= 5
    });
    assert_eq!(
        delivered_numbers(&chat, "db-a.internal"),
        (0..5).collect::<Vec<_>>()
    );
    // The revoked webhook was refused, parked, tried again later, and its messages kept.
    wait_for(
        "a retry of the parked webhook",
        Duration::from_secs(30),
        || {
            chat.requests()
                .iter()
                .filter(|r| r.space == "SPACE2" && r.status == 403)
                .count()
                >= 2
        },
    );
    chat.revoke("REVOKEDTOKEN", None);
    wait_for(
        "the restored webhook's posts",
        Duration::from_secs(30),
        || {
            chat.messages()
                .iter()
                .filter(|m| m.space == "SPACE2")
                .map(|m| m.text.matches("Disk full").count())
                .sum::<usize>()
                >= 3
        },
    );
    assert!(agent.terminate().success());
    let log = agent.stderr();
    assert!(log.contains("Chat refused the webhook's post"), "{log}");
    assert!(
        log.contains("webhook=pager") || log.contains("webhook=\"pager\""),
        "the refusal names the webhook"
    );
    // Trace-level logs of a run with refusals and retries never show a secret.
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the log ran at a verbose level"
    );
    for secret in ["GOODTOKEN", "REVOKEDTOKEN", "KEY1", "?key=", "&token="] {
        let leaks: Vec<&str> = log.lines().filter(|l| l.contains(secret)).take(3).collect();
        assert!(leaks.is_empty(), "{secret} leaked into the log: {leaks:#?}");
    }
}

#[test]
fn sigterm_posts_what_is_queued_within_the_grace_period_and_exits_0() {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    let mut agent = Agent::new(&oncall(&url), "");
    agent.start();
    write_timeouts(&agent.log(), "db-a.internal", 0..3);
    write_timeouts(&agent.log(), "db-b.internal", 0..1);
    wait_for("the first post", Duration::from_secs(20), || {
        !chat.messages().is_empty()
    });
    let status = agent.terminate();
    assert!(status.success(), "{status:?}");
    let total = delivered_numbers(&chat, "db-a.internal").len()
        + delivered_numbers(&chat, "db-b.internal").len();
    assert_eq!(total, 4, "everything queued was posted before exit");
}

#[test]
fn killed_at_random_points_every_line_reaches_chat_exactly_once() {
    killed_at_random_points(0);
}

/// Positions of files whose lines changed nothing are committed up to a second late; a
/// kill in that second must still neither lose a matching line nor post one twice.
#[test]
fn killed_between_quiet_lines_every_match_reaches_chat_exactly_once() {
    killed_at_random_points(40);
}

/// Kills the agent with -9 at random points of six rounds of writing, with `noise` lines
/// that match nothing after each matching line, then checks every match arrived once.
fn killed_at_random_points(noise: usize) {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    // A slow Chat, so that kills land while requests are in flight.
    chat.set_delay(Duration::from_millis(150));
    chat.set_rate(None, None);
    let mut agent = Agent::new(
        &format!("  oncall:\n    url: \"{url}\"\n    max_per_second: 20\n"),
        "",
    );
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut random = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut written = 0;
    for _round in 0..6 {
        agent.start();
        let lines = 5 + random(10) as usize;
        for _ in 0..lines {
            write_timeouts(
                &agent.log(),
                &format!("db-{}.internal", written % 3),
                written..written + 1,
            );
            write_noise(&agent.log(), noise);
            written += 1;
            std::thread::sleep(Duration::from_millis(random(40)));
        }
        std::thread::sleep(Duration::from_millis(random(600)));
        agent.kill9();
    }
    agent.start();
    let all = || {
        (0..3)
            .map(|d| delivered_numbers(&chat, &format!("db-{d}.internal")).len())
            .sum::<usize>()
    };
    wait_for("every line", Duration::from_secs(60), || all() >= written);
    assert!(agent.terminate().success());
    let mut seen: Vec<usize> = (0..3)
        .flat_map(|d| delivered_numbers(&chat, &format!("db-{d}.internal")))
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..written).collect::<Vec<_>>(),
        "each line exactly once"
    );
}

#[test]
fn a_burst_is_merged_per_thread_and_drains_quickly() {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    let mut agent = Agent::new(&oncall(&url), "");
    // 200 notifications for 2 threads written before the agent starts: a backlog.
    write_timeouts(&agent.log(), "db-a.internal", 0..100);
    write_timeouts(&agent.log(), "db-b.internal", 0..100);
    agent.start();
    wait_for("200 notifications", Duration::from_secs(30), || {
        delivered_numbers(&chat, "db-a.internal").len()
            + delivered_numbers(&chat, "db-b.internal").len()
            == 200
    });
    assert!(
        chat.messages().len() <= 10,
        "merged into a few posts, got {}",
        chat.messages().len()
    );
    assert_eq!(
        delivered_numbers(&chat, "db-a.internal"),
        (0..100).collect::<Vec<_>>()
    );
    assert!(
        chat.messages()
            .iter()
            .all(|m| m.text.chars().count() <= 4000)
    );
    assert!(agent.terminate().success());
}

/// A rule with a burst window, keyed by the captured word.
fn storm_rule(window: &str, max_keys: usize) -> String {
    format!(
        "  - name: storm\n    match: 'STORM (?P<key>\\w+) #(?P<n>\\d+)'\n    webhook: oncall\n    thread_key: 'storm-{{key}}'\n    message: \"*Storm* {{key}} #{{n}}\"\n    dedup:\n      window: {window}\n      max_keys: {max_keys}\n"
    )
}

fn write_storm(path: &Path, keys: &[&str], range: std::ops::Range<usize>) {
    let mut text = String::new();
    for n in range {
        for key in keys {
            text.push_str(&format!("STORM {key} #{n}\n"));
        }
    }
    open_append(path).write_all(text.as_bytes()).unwrap();
}

fn storm_messages(chat: &MockChat, key: &str) -> Vec<String> {
    chat.messages()
        .into_iter()
        .filter(|m| m.thread_key.as_deref() == Some(&format!("storm-{key}")))
        .map(|m| m.text)
        .collect()
}

#[test]
fn a_storm_is_one_post_then_one_summary_with_the_count() {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    let mut agent = Agent::new(&oncall(&url), &storm_rule("4s", 100));
    agent.start();
    write_storm(&agent.log(), &["a"], 0..300);
    wait_for("the summary", Duration::from_secs(20), || {
        storm_messages(&chat, "a").len() >= 2
    });
    assert!(agent.terminate().success());
    let texts = storm_messages(&chat, "a");
    assert_eq!(texts.len(), 2, "{texts:#?}");
    assert_eq!(texts[0], "*Storm* a #0");
    assert!(
        texts[1].starts_with("*storm*: 299 more occurrences"),
        "{}",
        texts[1]
    );
    assert!(texts[1].contains("STORM a #299"), "{}", texts[1]);
    let threads: std::collections::HashSet<String> =
        chat.messages().iter().map(|m| m.thread.clone()).collect();
    assert_eq!(threads.len(), 1, "the summary went into the same thread");
}

#[test]
fn interleaved_keys_get_their_own_threads_and_counts() {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    let mut agent = Agent::new(&oncall(&url), &storm_rule("3s", 100));
    agent.start();
    write_storm(&agent.log(), &["a", "b"], 0..50);
    wait_for("both summaries", Duration::from_secs(20), || {
        storm_messages(&chat, "a").len() >= 2 && storm_messages(&chat, "b").len() >= 2
    });
    assert!(agent.terminate().success());
    for key in ["a", "b"] {
        let texts = storm_messages(&chat, key);
        assert_eq!(texts.len(), 2, "{texts:#?}");
        assert_eq!(texts[0], format!("*Storm* {key} #0"));
        assert!(
            texts[1].starts_with("*storm*: 49 more occurrences"),
            "{}",
            texts[1]
        );
    }
}

#[test]
fn a_key_evicted_by_max_keys_gets_its_summary() {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    let mut agent = Agent::new(&oncall(&url), &storm_rule("1h", 2));
    agent.start();
    write_storm(&agent.log(), &["a", "b"], 0..2);
    wait_for("two first posts", Duration::from_secs(20), || {
        chat.messages().len() >= 2
    });
    write_storm(&agent.log(), &["c"], 0..1);
    // `a` is the least recently seen of the two windows: `c` evicts it.
    wait_for("a's summary", Duration::from_secs(20), || {
        storm_messages(&chat, "a").len() >= 2
    });
    assert!(storm_messages(&chat, "a")[1].starts_with("*storm*: 1 more occurrence "));
    assert!(agent.terminate().success());
    assert!(agent.stderr().contains("chattail stopped"));
}

#[test]
fn kill_9_inside_a_window_neither_reposts_nor_loses_the_count() {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    let mut agent = Agent::new(&oncall(&url), &storm_rule("6s", 100));
    agent.start();
    write_storm(&agent.log(), &["a"], 0..10);
    wait_for("the first post", Duration::from_secs(20), || {
        !storm_messages(&chat, "a").is_empty()
    });
    agent.kill9();
    agent.start();
    write_storm(&agent.log(), &["a"], 10..15);
    wait_for("the summary", Duration::from_secs(30), || {
        storm_messages(&chat, "a").len() >= 2
    });
    assert!(agent.terminate().success());
    let texts = storm_messages(&chat, "a");
    assert_eq!(texts.len(), 2, "{texts:#?}");
    assert_eq!(texts[0], "*Storm* a #0");
    assert!(
        texts[1].starts_with("*storm*: 14 more occurrences"),
        "{}",
        texts[1]
    );
    assert!(texts[1].contains("STORM a #14"));
}

#[test]
fn sigterm_inside_a_window_posts_the_summary_before_exit() {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    let mut agent = Agent::new(&oncall(&url), &storm_rule("1h", 100));
    agent.start();
    write_storm(&agent.log(), &["a"], 0..10);
    wait_for("the first post", Duration::from_secs(20), || {
        !storm_messages(&chat, "a").is_empty()
    });
    // The ten lines were one write, read by one poll: the first post was queued in the
    // same transaction that counted the nine repeats.
    assert!(agent.terminate().success());
    let texts = storm_messages(&chat, "a");
    assert_eq!(texts.len(), 2, "{texts:#?}");
    assert!(
        texts[1].starts_with("*storm*: 9 more occurrences"),
        "{}",
        texts[1]
    );
}

#[test]
fn stack_traces_arrive_as_one_message_each() {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    let mut agent = Agent::with_sections(
        &url,
        "  - path: {logs}/java.log\n    start_at: beginning\n    multiline: {preset: java}\n\
         \x20 - path: {logs}/py.log\n    start_at: beginning\n    multiline: {preset: python, timeout: 1s}\n",
        "  - name: exception\n    match: '(?P<kind>[A-Za-z_][\\w.]*(?:Exception|Error)): '\n    webhook: oncall\n    thread_key: 'exc-{kind}'\n    message: \"*{kind}* after `{first_line}`\\n```{line}```\"\n",
    );
    let dir = agent.dir.path().to_path_buf();
    agent.start();
    let java = dir.join("logs/java.log");
    let mut trace = String::from(
        "2026-11-28 14:00:00 ERROR [http-7] Request failed\njava.lang.IllegalStateException: cart is locked\n",
    );
    for i in 0..36 {
        trace.push_str(&format!("\tat shop.Layer{i}.call(Layer{i}.java:{i})\n"));
    }
    trace.push_str("Caused by: java.sql.SQLTimeoutException: timeout\n\t... 12 more\n");
    assert_eq!(trace.lines().count(), 40);
    // Written in two parts with a pause shorter than the timeout: still one event.
    let (head, tail) = trace.split_at(trace.find("\tat shop.Layer20").unwrap());
    open_append(&java).write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    open_append(&java).write_all(tail.as_bytes()).unwrap();
    open_append(&java)
        .write_all(b"2026-11-28 14:00:02 INFO next request\n")
        .unwrap();
    let py = dir.join("logs/py.log");
    open_append(&py)
        .write_all(b"2026-11-28 14:00:03 ERROR worker crashed\nTraceback (most recent call last):\n  File \"app.py\", line 3, in <module>\n    main()\nKeyError: 'user_id'\n")
        .unwrap();
    wait_for("two messages", Duration::from_secs(20), || {
        chat.messages().len() >= 2
    });
    assert!(agent.terminate().success());
    let messages = chat.messages();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    let java_msg = messages
        .iter()
        .find(|m| m.thread_key.as_deref() == Some("exc-java.lang.IllegalStateException"))
        .unwrap();
    assert!(java_msg.text.starts_with("*java.lang.IllegalStateException* after `2026-11-28 14:00:00 ERROR [http-7] Request failed`"));
    assert!(
        java_msg.text.contains("Layer35.call") && java_msg.text.contains("... 12 more"),
        "{}",
        java_msg.text
    );
    let py_msg = messages
        .iter()
        .find(|m| m.thread_key.as_deref() == Some("exc-KeyError"))
        .unwrap();
    assert!(
        py_msg.text.contains("Traceback (most recent call last):")
            && py_msg.text.contains("KeyError: 'user_id'"),
        "{}",
        py_msg.text
    );
}

#[test]
fn a_multiline_event_split_by_a_restart_is_still_one_event() {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    let mut agent = Agent::with_sections(
        &url,
        "  - path: {logs}/java.log\n    start_at: beginning\n    multiline: {preset: java, timeout: 2s}\n",
        "  - name: exception\n    match: '(?P<kind>[A-Za-z_][\\w.]*Exception): '\n    webhook: oncall\n    thread_key: 'exc-{kind}'\n    message: \"```{line}```\"\n",
    );
    let dir = agent.dir.path().to_path_buf();
    agent.start();
    let java = dir.join("logs/java.log");
    open_append(&java)
        .write_all(b"ERROR boom\njava.lang.IllegalStateException: x\n\tat a.B.c(B.java:1)\n")
        .unwrap();
    let db = dir.join("state/state.sqlite3");
    wait_for(
        "the partial event to be saved",
        Duration::from_secs(20),
        || {
            rusqlite::Connection::open(&db)
                .and_then(|c| {
                    c.query_row("SELECT lines FROM multiline_events", [], |r| {
                        r.get::<_, i64>(0)
                    })
                })
                .is_ok_and(|lines| lines == 3)
        },
    );
    assert!(agent.terminate().success());
    assert!(chat.messages().is_empty(), "the event is not complete yet");
    agent.start();
    open_append(&java)
        .write_all(b"\tat a.B.d(B.java:2)\n")
        .unwrap();
    wait_for("the event", Duration::from_secs(20), || {
        !chat.messages().is_empty()
    });
    assert!(agent.terminate().success());
    let messages = chat.messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert!(messages[0].text.contains("ERROR boom\njava.lang.IllegalStateException: x\n\tat a.B.c(B.java:1)\n\tat a.B.d(B.java:2)"), "{}", messages[0].text);
}

#[test]
fn a_failed_commit_rereads_the_lines_without_counting_them_twice() {
    let chat = MockChat::start();
    let url = chat.webhook("SPACE1", "KEY1", "TOKEN1");
    let mut agent = Agent::new(&oncall(&url), &storm_rule("3s", 100));
    agent.start();
    write_storm(&agent.log(), &["warmup"], 0..1);
    wait_for("the agent to run", Duration::from_secs(20), || {
        !chat.messages().is_empty()
    });
    // Another writer holds the database longer than the agent's busy timeout (5 s): the
    // agent's commit fails, and it must start again from the state.
    let db = agent.dir.path().join("state/state.sqlite3");
    let blocker = rusqlite::Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    write_storm(&agent.log(), &["a"], 0..20);
    wait_for("a failed commit", Duration::from_secs(30), || {
        agent
            .stderr()
            .contains("Cannot commit to the state database")
    });
    blocker.execute_batch("COMMIT").unwrap();
    drop(blocker);
    wait_for("the summary", Duration::from_secs(30), || {
        storm_messages(&chat, "a").len() >= 2
    });
    assert!(agent.terminate().success());
    let texts = storm_messages(&chat, "a");
    assert_eq!(texts.len(), 2, "{texts:#?}");
    assert_eq!(texts[0], "*Storm* a #0");
    assert!(
        texts[1].starts_with("*storm*: 19 more occurrences"),
        "{}",
        texts[1]
    );
}
