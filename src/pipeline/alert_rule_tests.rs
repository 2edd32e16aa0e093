//! Thresholds, resolution and absence through the whole pipeline, on a test clock: time
//! is an argument, so a 25-hour absence takes no time to test.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::config::{LoadOptions, UrlPolicy, load_bytes};

const SEC: i64 = 1000;
const MIN: i64 = 60 * SEC;
const HOUR: i64 = 60 * MIN;

fn config(rules: &str) -> Arc<Config> {
    let yaml = format!(
        "webhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\nfiles:\n  - path: /var/log/app.log\nrules:\n{rules}"
    );
    let env = |_: &str| None;
    let options = LoadOptions {
        url_policy: UrlPolicy::Required,
        env: &env,
        default_host: "web-1".to_owned(),
    };
    let loaded = load_bytes(Path::new("/etc/c.yaml"), yaml.as_bytes(), &options)
        .unwrap_or_else(|report| panic!("{report}"));
    Arc::new(loaded.config)
}

/// What the pipeline queued, with why.
#[derive(Default)]
struct Queued(Vec<(Cause, Notification)>);

impl Output for Queued {
    fn notification(&mut self, n: Notification, cause: Cause) {
        self.0.push((cause, n));
    }
}

impl Queued {
    fn take(&mut self) -> Vec<(Cause, Notification)> {
        std::mem::take(&mut self.0)
    }
}

fn feed(p: &mut Pipeline, line: &str, now: i64, out: &mut Queued) {
    let origin = Origin {
        id: FileId { dev: 1, ino: 1 },
        path: Path::new("/var/log/app.log"),
        spec: 0,
        number: 0,
        stream: None,
        journal: None,
    };
    p.line(&origin, line.as_bytes(), now, out);
    p.tick(now, false, out);
}

const THRESHOLD: &str = "  - name: http-5xx\n    match: '\" (?P<status>5\\d\\d) \\d+ \"'\n    webhook: oncall\n    thread_key: '5xx-{status}'\n    threshold: {count: 50, within: 1m}\n    message: '{count} in {within}: {status}'\n";

#[test]
fn forty_nine_matches_in_a_minute_post_nothing_and_fifty_post_one() {
    let mut p = Pipeline::new(config(THRESHOLD), Vec::new(), Vec::new());
    let mut out = Queued::default();
    for i in 0..49 {
        feed(&mut p, "\"GET /\" 502 0 \"-\"", i * SEC, &mut out);
    }
    assert!(out.take().is_empty());
    feed(&mut p, "\"GET /\" 502 0 \"-\"", 50 * SEC, &mut out);
    let posted = out.take();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].1.text, "50 in 1m: 502");
    assert_eq!(posted[0].1.thread_key, "5xx-502");
    // The storm goes on: counted in the window, one summary when it ends, then the
    // threshold counts from one again.
    for i in 51..200 {
        feed(
            &mut p,
            "\"GET /\" 502 0 \"-\"",
            i * SEC / 4 + 50 * SEC,
            &mut out,
        );
    }
    feed(&mut p, "idle", 200 * SEC, &mut out);
    let later = out.take();
    assert_eq!(later.len(), 1, "{later:?}");
    assert_eq!(later[0].0, Cause::Summary);
    for i in 0..49 {
        feed(
            &mut p,
            "\"GET /\" 502 0 \"-\"",
            300 * SEC + i * SEC,
            &mut out,
        );
    }
    assert!(out.take().is_empty(), "re-armed: counting from one");
    // 50 spread over more than a minute never fire.
    let mut q = Pipeline::new(config(THRESHOLD), Vec::new(), Vec::new());
    for i in 0..500 {
        feed(&mut q, "\"GET /\" 503 0 \"-\"", i * 2 * SEC, &mut out);
    }
    assert!(out.take().is_empty());
}

const RESOLVE: &str = "  - name: db-down\n    match: 'timeout connecting to (?P<db>[\\w.-]+)'\n    webhook: oncall\n    thread_key: 'db-{db}'\n    dedup: {window: 5m}\n    resolve:\n      match: 'connected to (?P<db>[\\w.-]+)'\n      after: 10m\n      message: 'back: {db} after {duration}, {occurrences} timeouts'\n";

#[test]
fn a_resolving_line_posts_into_the_thread_of_the_incident_it_closes_and_nowhere_else() {
    let mut p = Pipeline::new(config(RESOLVE), Vec::new(), Vec::new());
    let mut out = Queued::default();
    feed(&mut p, "timeout connecting to orders-db", 0, &mut out);
    feed(&mut p, "timeout connecting to orders-db", SEC, &mut out);
    feed(&mut p, "timeout connecting to users-db", 2 * SEC, &mut out);
    assert_eq!(out.take().len(), 2);
    // No incident of billing-db: nothing.
    feed(&mut p, "connected to billing-db", 3 * SEC, &mut out);
    assert!(out.take().is_empty());
    feed(&mut p, "connected to orders-db", 90 * SEC, &mut out);
    let posted = out.take();
    // The window's summary first, then the resolution, both in orders-db's thread.
    let causes: Vec<Cause> = posted.iter().map(|(c, _)| *c).collect();
    assert_eq!(causes, [Cause::Summary, Cause::Resolution]);
    assert!(posted.iter().all(|(_, n)| n.thread_key == "db-orders-db"));
    assert_eq!(posted[1].1.text, "back: orders-db after 1m 30s, 2 timeouts");
    // Once resolved, the same line posts nothing.
    feed(&mut p, "connected to orders-db", 91 * SEC, &mut out);
    assert!(out.take().is_empty());
}

#[test]
fn quiet_for_resolve_after_resolves_once_with_the_incidents_values() {
    let mut p = Pipeline::new(config(RESOLVE), Vec::new(), Vec::new());
    // Before the caller has read what was waiting (a restart's backlog may continue the
    // incident), time resolves nothing; once caught up, it does.
    let mut q = Queued::default();
    feed(&mut p, "timeout connecting to billing-db", 0, &mut q);
    q.take();
    p.tick(60 * MIN, false, &mut q);
    assert!(q.take().iter().all(|(c, _)| *c != Cause::Resolution));
    p.caught_up();
    p.tick(61 * MIN, false, &mut q);
    assert!(q.take().iter().any(|(c, _)| *c == Cause::Resolution));
    let mut p = Pipeline::new(config(RESOLVE), Vec::new(), Vec::new());
    p.caught_up();
    let mut out = Queued::default();
    feed(&mut p, "timeout connecting to orders-db", 0, &mut out);
    feed(&mut p, "timeout connecting to orders-db", 2 * MIN, &mut out);
    out.take();
    p.tick(11 * MIN, false, &mut out);
    assert!(out.take().iter().all(|(c, _)| *c == Cause::Summary));
    p.tick(12 * MIN, false, &mut out);
    let posted = out.take();
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0].0, Cause::Resolution);
    assert_eq!(posted[0].1.thread_key, "db-orders-db");
    assert_eq!(posted[0].1.text, "back: orders-db after 2m, 2 timeouts");
    p.tick(60 * MIN, false, &mut out);
    assert!(out.take().is_empty());
}

const ABSENCE: &str = "  - name: nightly-backup\n    match: 'backup finished for (?P<db>\\w+)'\n    webhook: oncall\n    absent_after: 25h\n    expect: [{db: orders}, {db: users}]\n    thread_key: 'backup-{db}'\n";

#[test]
fn an_absence_alerts_once_when_its_time_has_passed_and_recovers_once() {
    let mut p = Pipeline::new(config(ABSENCE), Vec::new(), Vec::new());
    let mut out = Queued::default();
    // Not caught up yet (a restart reading what was written while it was down): nothing
    // is decided, however late it looks.
    p.tick(-1, false, &mut out);
    p.tick(100 * HOUR, false, &mut out);
    assert!(out.take().is_empty());
    let mut p = Pipeline::new(config(ABSENCE), Vec::new(), Vec::new());
    p.caught_up();
    feed(&mut p, "backup finished for users", 0, &mut out);
    assert!(
        out.take().is_empty(),
        "the line is a heartbeat: it posts nothing"
    );
    p.tick(24 * HOUR, false, &mut out);
    assert!(out.take().is_empty());
    p.tick(25 * HOUR, false, &mut out);
    let absent = out.take();
    let keys: Vec<&str> = absent.iter().map(|(_, n)| n.thread_key.as_str()).collect();
    // `orders`, expected but never seen, counts from when expecting began (the first
    // decision once caught up, at 0).
    assert_eq!(keys, ["backup-orders", "backup-users"]);
    assert!(absent.iter().all(|(c, _)| *c == Cause::Absence));
    assert!(
        absent[0].1.text.contains("never seen"),
        "{}",
        absent[0].1.text
    );
    assert!(
        absent[1].1.text.contains("last seen 1day 1h ago"),
        "{}",
        absent[1].1.text
    );
    // Posted once, however long it lasts.
    p.tick(300 * HOUR, false, &mut out);
    assert!(out.take().is_empty());
    feed(&mut p, "backup finished for users", 301 * HOUR, &mut out);
    let back = out.take();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].0, Cause::Recovery);
    assert_eq!(back[0].1.thread_key, "backup-users");
    feed(&mut p, "backup finished for users", 302 * HOUR, &mut out);
    assert!(out.take().is_empty());
}

#[test]
fn state_survives_a_restart_and_a_reload_that_keeps_the_rule() {
    let config = config(&format!("{RESOLVE}{THRESHOLD}"));
    let mut p = Pipeline::new(Arc::clone(&config), Vec::new(), Vec::new());
    let mut out = Queued::default();
    feed(&mut p, "timeout connecting to orders-db", 0, &mut out);
    for i in 0..30 {
        feed(&mut p, "\"GET /\" 502 0 \"-\"", i * 100, &mut out);
    }
    out.take();
    // A restart: the pipeline resumes from what was taken for the store.
    let changes = p.take_changes();
    let mut q = Pipeline::resuming_alerts(
        Arc::clone(&config),
        changes.windows,
        Vec::new(),
        Vec::new(),
        changes.alerts,
    );
    // A reload with the same rules keeps it all.
    q.switch_config(Arc::clone(&config));
    for i in 30..50 {
        feed(&mut q, "\"GET /\" 502 0 \"-\"", i * 100, &mut out);
    }
    let fired = out.take();
    assert_eq!(
        fired.len(),
        1,
        "the 50th match across the restart fires: {fired:?}"
    );
    feed(&mut q, "connected to orders-db", 10 * SEC, &mut out);
    assert!(out.take().iter().any(|(c, _)| *c == Cause::Resolution));
}

fn silence(id: &str, rule: &str, capture: Option<&str>, ends_ms: i64) -> crate::silences::Silence {
    crate::silences::Silence {
        id: id.to_owned(),
        rule: Some(rule.to_owned()),
        host: None,
        thread: None,
        captures: capture
            .map(|c| crate::silences::parse_matcher(c).unwrap())
            .into_iter()
            .collect(),
        comment: "failover of `orders-db`".to_owned(),
        created_by: "root@ops".to_owned(),
        starts_ms: 0,
        ends_ms,
        expired_by: None,
        revision: 0,
    }
}

fn silences(records: Vec<crate::silences::Silence>) -> Arc<crate::silences::SilenceSet> {
    let (set, refused) = crate::silences::SilenceSet::compile(records);
    assert!(refused.is_empty());
    Arc::new(set)
}

const RESOLVING: &str = "  - name: db-down\n    match: 'db (?P<db>\\S+) down'\n    webhook: oncall\n    thread_key: 'db-{db}'\n    resolve:\n      match: 'db (?P<db>\\S+) up'\n";

#[test]
fn a_silence_holds_back_one_capture_value_and_tells_its_thread_when_it_ends() {
    let mut p = Pipeline::new(config(RESOLVING), Vec::new(), Vec::new());
    p.set_silences(silences(vec![silence(
        "s1",
        "db-down",
        Some("db=orders"),
        2 * HOUR,
    )]));
    let mut out = Queued::default();
    feed(&mut p, "db orders down", MIN, &mut out);
    feed(&mut p, "db orders down", 2 * MIN, &mut out);
    // Another value is not silenced: posted, and it opens its incident.
    feed(&mut p, "db billing down", 3 * MIN, &mut out);
    let posted = out.take();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].1.thread_key, "db-billing");
    // A held-back match opened no incident: its "up" line resolves nothing.
    feed(&mut p, "db orders up", 4 * MIN, &mut out);
    assert!(out.take().is_empty());
    let changes = p.take_changes();
    assert_eq!(
        changes
            .held_counts
            .get(&("s1".to_owned(), "db-down".to_owned())),
        Some(&(2, 2 * MIN))
    );
    feed(&mut p, "db orders down `x`", 90 * MIN, &mut out);
    assert!(out.take().is_empty());
    // The silence ends by itself: one message in the thread it held back from.
    p.tick(2 * HOUR, false, &mut out);
    let ended = out.take();
    assert_eq!(ended.len(), 1, "{ended:?}");
    let (cause, n) = &ended[0];
    assert_eq!(*cause, Cause::SilenceEnded);
    assert_eq!(n.thread_key, "db-orders");
    assert!(
        n.text.starts_with(
            "*db-down* on web-1: silence s1 (failover of `orders-db`) ended; it held back 3 occurrences from 00:01:00 to 01:30:00 UTC (over 1h 29m)."
        ),
        "{}",
        n.text
    );
    assert!(
        n.text
            .ends_with("Most recent line:\n```db orders down `x`\u{200b}```"),
        "{}",
        n.text
    );
    // After it, the key alerts again.
    feed(&mut p, "db orders down", 2 * HOUR + MIN, &mut out);
    assert_eq!(out.take().len(), 1);
}

#[test]
fn a_silence_holds_back_the_resolution_of_an_incident_open_before_it() {
    let mut p = Pipeline::new(config(RESOLVING), Vec::new(), Vec::new());
    let mut out = Queued::default();
    feed(&mut p, "db orders down", MIN, &mut out);
    assert_eq!(out.take().len(), 1);
    // Expired early: the record says who ended it.
    let mut s = silence("s2", "db-down", None, HOUR);
    p.set_silences(silences(vec![s.clone()]));
    feed(&mut p, "db orders up", 2 * MIN, &mut out);
    assert!(out.take().is_empty());
    s.ends_ms = 3 * MIN;
    s.expired_by = Some("root@ops".to_owned());
    p.set_silences(silences(vec![s]));
    p.tick(3 * MIN, false, &mut out);
    let ended = out.take();
    assert_eq!(ended.len(), 1);
    assert!(
        ended[0]
            .1
            .text
            .contains("was ended early; it held back 1 alert"),
        "{}",
        ended[0].1.text
    );
    assert!(
        ended[0]
            .1
            .text
            .contains("Last alert held back: *Resolved*: db-down on web-1"),
        "{}",
        ended[0].1.text
    );
}

#[test]
fn a_silenced_match_does_not_count_towards_a_threshold() {
    let mut p = Pipeline::new(config(THRESHOLD), Vec::new(), Vec::new());
    p.set_silences(silences(vec![silence("s3", "http-5xx", None, 30 * SEC)]));
    let mut out = Queued::default();
    for i in 0..30 {
        feed(&mut p, "\"GET /\" 502 0 \"-\"", i * SEC, &mut out);
    }
    assert!(out.take().is_empty());
    // 49 more after the silence: had the silenced 30 counted, the threshold would fire.
    for i in 30..79 {
        feed(&mut p, "\"GET /\" 502 0 \"-\"", i * SEC, &mut out);
    }
    let posted = out.take();
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0].0, Cause::SilenceEnded);
    assert!(posted[0].1.text.contains("held back 30 occurrences"));
}

#[test]
fn a_silence_that_disappears_tells_what_it_held_back() {
    let mut p = Pipeline::new(config(RESOLVING), Vec::new(), Vec::new());
    p.set_silences(silences(vec![silence("s4", "db-down", None, HOUR)]));
    let mut out = Queued::default();
    feed(&mut p, "db orders down", MIN, &mut out);
    assert!(out.take().is_empty());
    // Restarted from the stored state with no record of the silence left.
    let saved = p.take_changes().alerts;
    let mut q =
        Pipeline::resuming_alerts(config(RESOLVING), Vec::new(), Vec::new(), Vec::new(), saved);
    q.tick(2 * MIN, false, &mut out);
    let ended = out.take();
    assert_eq!(ended.len(), 1);
    assert!(
        ended[0]
            .1
            .text
            .contains("silence s4 ended; it held back 1 occurrence "),
        "{}",
        ended[0].1.text
    );
}
