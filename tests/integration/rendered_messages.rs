//! Rendered Chat messages, pinned by snapshots: what the on-call engineer will read.

use std::io::BufReader;

use chattail::config::UrlPolicy;
use chattail::pipeline::{Notification, RuleSet, Source};
use chattail::rule_test::{Clock, RuleTest};

use crate::support::{load_fixture, repo};

/// Runs the example rules over `input` and returns every notification.
fn notifications(input: &[u8]) -> Vec<Notification> {
    let config = load_fixture("rules.example.yaml", UrlPolicy::Required)
        .unwrap()
        .config;
    let rules = RuleSet::all(&config).unwrap();
    let source = Source {
        file: "/var/log/app/web.log",
        host: &config.host,
        stream: None,
        journal: None,
    };
    let mut out = Vec::new();
    for line in input.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        rules.evaluate(line, |hit| out.push(hit.notification(line, &source)));
    }
    out
}

#[test]
fn example_rules_over_the_sample_logs() {
    let loaded = load_fixture("rules.example.yaml", UrlPolicy::Required).unwrap();
    let mut test = RuleTest::new(std::sync::Arc::new(loaded.config), Clock::Rfc3339);
    let mut out = Vec::new();
    for name in ["fixtures/webapp.log", "fixtures/kern.log"] {
        let file = std::fs::File::open(repo().join(name)).unwrap();
        test.input(name, &mut BufReader::new(file), &mut out)
            .unwrap();
    }
    let summary = test.finish(&mut out).unwrap();
    assert_eq!(summary.lines, 406);
    assert_eq!(summary.hits["http-5xx"], 9, "the /healthz 503 is excluded");
    assert_eq!(summary.hits["oom-kill"], 2);
    insta::assert_snapshot!("test_output_example_rules", String::from_utf8(out).unwrap());
}

#[test]
fn hostile_log_content_cannot_break_the_message() {
    let lines: &[&[u8]] = &[
        // A log line that tries to close the code block and mention everyone (the
        // example's `panic` rule shows the line in a code block).
        b"2026-11-28T14:00:00Z thread 'main' panicked at src/db.rs:1 ``` <users/all> *urgent*",
        // Invalid UTF-8 and a NUL byte.
        b"2026-11-28T14:00:01Z panic: src/db.go:2 \xff\xfe2 \x00 tail",
        // A Python traceback header with its exception on the same line.
        b"2026-11-28T14:00:02Z FATAL Unhandled exception: KeyError: 'user_id'",
    ];
    let input = lines.join(&b'\n');
    let rendered: Vec<String> = notifications(&input)
        .iter()
        .map(|n| format!("{} | {} | {:?}", n.rule, n.thread_key, n.text))
        .collect();
    insta::assert_snapshot!("hostile_lines", rendered.join("\n"));
}

#[test]
fn a_huge_line_is_cut_to_chat_size_with_a_marker() {
    let mut line = b"2026-11-28T14:00:00Z thread 'main' panicked at src/db.rs:1 ".to_vec();
    line.extend(std::iter::repeat_n(b'x', 10_000));
    let n = notifications(&line);
    assert_eq!(n.len(), 1);
    let text = &n[0].text;
    assert!(text.chars().count() <= 4000, "{}", text.chars().count());
    insta::assert_snapshot!("huge_line_tail", &text[text.len() - 120..]);
}
