use super::*;
use crate::config::{LoadOptions, UrlPolicy, load_bytes};
use std::path::Path;

fn config() -> Config {
    let yaml = "webhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\n\
        files:\n  - path: /var/log/app.log\n\
        rules:\n  - name: db-timeout\n    match: 'timeout on (?P<db>\\S+)'\n    webhook: oncall\n    thread_key: 'db-{db}'\n\
        \x20 - name: oom\n    match: 'OOM (?P<pid>\\d+)'\n    webhook: oncall\n";
    let env = |_: &str| None;
    let options = LoadOptions {
        url_policy: UrlPolicy::Required,
        env: &env,
        default_host: "h".to_owned(),
    };
    load_bytes(Path::new("/etc/c.yaml"), yaml.as_bytes(), &options)
        .unwrap_or_else(|report| panic!("{report}"))
        .config
}

fn silence(id: &str, captures: Vec<CaptureMatcher>) -> Silence {
    Silence {
        id: id.to_owned(),
        rule: Some("db-timeout".to_owned()),
        host: None,
        thread: None,
        captures,
        comment: "failover".to_owned(),
        created_by: "root@ops".to_owned(),
        starts_ms: 0,
        ends_ms: 10_000,
        expired_by: None,
        revision: 0,
    }
}

#[test]
fn matchers_are_checked_against_the_selected_rules() {
    let config = config();
    let m = Matchers {
        rule: Some("db-timeout".to_owned()),
        captures: vec!["db=~orders-.*".to_owned()],
        ..Matchers::default()
    };
    let parsed = m.validate(&config).unwrap();
    assert_eq!(parsed[0].to_string(), "db=~orders-.*");

    let m = Matchers {
        rule: Some("db-timeout".to_owned()),
        captures: vec!["pid=1".to_owned()],
        ..Matchers::default()
    };
    let error = m.validate(&config).unwrap_err().to_string();
    assert_eq!(
        error,
        "`--match pid=1`: rule `db-timeout` has no capture group named `pid` (groups: db)"
    );
    // Without --rule, any rule's group will do.
    let m = Matchers {
        captures: vec!["pid=1".to_owned()],
        ..Matchers::default()
    };
    assert!(m.validate(&config).is_ok());

    let m = Matchers {
        rule: Some("nope".to_owned()),
        ..Matchers::default()
    };
    assert_eq!(
        m.validate(&config).unwrap_err().to_string(),
        "no rule is named `nope` (the config's rules: db-timeout, oom)"
    );
    assert_eq!(
        Matchers::default().validate(&config).unwrap_err(),
        SilenceError::NoMatcher
    );
    for bad in ["db", "=x", "1db=x", "db=~(unclosed"] {
        assert!(parse_matcher(bad).is_err(), "{bad}");
    }
}

#[test]
fn lengths_are_bounded() {
    assert_eq!(check_length(Duration::ZERO), Err(SilenceError::ZeroLength));
    assert!(check_length(Duration::from_secs(7 * 24 * 3600)).is_ok());
    assert!(matches!(
        check_length(Duration::from_secs(7 * 24 * 3600 + 1)),
        Err(SilenceError::TooLong(_))
    ));
}

#[test]
fn a_silence_holds_the_capture_value_it_names_and_no_other() {
    let records = vec![silence("a1", vec![parse_matcher("db=~orders-.*").unwrap()])];
    let (set, refused) = SilenceSet::compile(records);
    assert!(refused.is_empty());
    let chat = || "never".to_owned();
    let holds = |value: &'static str, rule: &'static str, now: i64| {
        let capture = move |name: &str| (name == "db").then_some(Cow::Borrowed(value));
        let c = Candidate {
            rule,
            host: "h",
            thread: "db-x",
            chat_thread: &chat,
            capture: Some(&capture),
        };
        set.holding(&c, now, &|_| false).map(|s| s.id.clone())
    };
    assert_eq!(holds("orders-1", "db-timeout", 5), Some("a1".to_owned()));
    // Anchored: a value that only contains a match is not held.
    assert_eq!(holds("x-orders-1", "db-timeout", 5), None);
    assert_eq!(holds("billing", "db-timeout", 5), None);
    assert_eq!(holds("orders-1", "oom", 5), None);
    // Ended at 10 s.
    assert_eq!(holds("orders-1", "db-timeout", 10_000), None);
}

#[test]
fn threads_match_rendered_or_as_chat_receives_them_and_alerts_follow_held_threads() {
    let mut s = silence("t1", vec![parse_matcher("db=a").unwrap()]);
    s.thread = Some("CHAT-KEY".to_owned());
    let (set, _) = SilenceSet::compile(vec![s]);
    let chat = || "CHAT-KEY".to_owned();
    let c = Candidate {
        rule: "db-timeout",
        host: "h",
        thread: "rendered",
        chat_thread: &chat,
        capture: None,
    };
    // Without captures, the capture matcher defers to what the silence already holds.
    assert!(set.holding(&c, 1, &|_| false).is_none());
    assert!(set.holding(&c, 1, &|id| id == "t1").is_some());
}

#[test]
fn a_record_with_a_broken_regex_is_refused_not_applied() {
    let mut s = silence("bad", Vec::new());
    s.captures.push(CaptureMatcher {
        name: "db".to_owned(),
        regex: true,
        value: "(".to_owned(),
    });
    let (set, refused) = SilenceSet::compile(vec![s, silence("ok", Vec::new())]);
    assert_eq!(refused.len(), 1);
    assert!(set.get("bad").is_none());
    assert!(set.get("ok").is_some());
}

#[test]
fn states_read_as_people_say_them() {
    let mut s = silence("x", Vec::new());
    assert_eq!(describe_state(&s, 4_000), "active, ends in 6s");
    s.expired_by = Some("root@ops".to_owned());
    assert_eq!(
        describe_state(&s, 70_000),
        "ended 1m ago (expired by root@ops)"
    );
    assert_eq!(s.matchers_text(), "rule=db-timeout");
}
