//! The pipeline as a whole: any bytes give notifications Chat accepts, and a run of
//! lines searched whole gives what its lines give one by one.

use super::*;
use crate::config::{LoadOptions, UrlPolicy, load_bytes};
use proptest::prelude::*;

fn config() -> Arc<Config> {
    let yaml = "webhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\n\
        files:\n  - path: /var/log/plain.log\n  - path: /var/log/traces.log\n    multiline:\n      preset: java\n      max_lines: 5\n      max_bytes: 2048\n\
        rules:\n  - name: errors\n    match: 'ERROR (?P<what>.*)'\n    webhook: oncall\n    thread_key: 'e-{what}'\n    message: \"{what}\\n```{context}\\n{line}```\"\n    context:\n      before: 2\n    dedup:\n      window: 1m\n      max_keys: 3\n\
        \x20 - name: anything\n    match: '(?s).*'\n    webhook: oncall\n";
    let env = |_: &str| None;
    let options = LoadOptions {
        url_policy: UrlPolicy::Required,
        env: &env,
        default_host: "h".to_owned(),
    };
    let loaded = load_bytes(Path::new("/etc/c.yaml"), yaml.as_bytes(), &options)
        .unwrap_or_else(|report| panic!("{report}"));
    Arc::new(loaded.config)
}

/// What a pipeline reported, for comparing two runs.
#[derive(Default)]
struct Recorded(Vec<String>);

impl Output for Recorded {
    fn notification(&mut self, n: Notification, cause: Cause) {
        self.0.push(format!(
            "{cause:?} {} {} {:?}",
            n.rule, n.thread_key, n.text
        ));
    }
    fn hit(&mut self, report: &HitReport<'_, '_, '_>) {
        self.0.push(format!(
            "hit {} {:?} {:?}",
            report.hit.rule.name,
            String::from_utf8_lossy(report.text),
            report.routed
        ));
    }
}

fn scan_config(rules: &str) -> Arc<Config> {
    let yaml = format!(
        "webhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\n\
         files:\n  - path: /var/log/plain.log\nrules:\n{rules}"
    );
    let env = |_: &str| None;
    let options = LoadOptions {
        url_policy: UrlPolicy::Required,
        env: &env,
        default_host: "h".to_owned(),
    };
    Arc::new(
        load_bytes(Path::new("/etc/c.yaml"), yaml.as_bytes(), &options)
            .unwrap_or_else(|report| panic!("{report}"))
            .config,
    )
}

/// Rules whose patterns behave differently at line edges: anchors, word boundaries,
/// classes and `\s` that cross a newline in a buffer, `(?s)`, an empty match, a
/// resolving pattern, and `dedup` windows.
const SCANNED_RULES: &str = "  - name: start\n    match: '^ERROR (?P<w>\\w+)'\n    webhook: oncall\n    thread_key: 's-{w}'\n    dedup: {window: 1m}\n\
    \x20 - name: end\n    match: 'end$'\n    webhook: oncall\n\
    \x20 - name: word\n    match: '\\bword\\b'\n    webhook: oncall\n\
    \x20 - name: across\n    match: 'a[^x]+y'\n    webhook: oncall\n\
    \x20 - name: spaces\n    match: 'b\\s+c'\n    webhook: oncall\n\
    \x20 - name: dots\n    match: '(?s)d.e'\n    webhook: oncall\n\
    \x20 - name: empty\n    match: '^$'\n    webhook: oncall\n    dedup: {window: 1m}\n\
    \x20 - name: down\n    match: 'down (?P<k>\\w)'\n    webhook: oncall\n    thread_key: 'k-{k}'\n    resolve:\n      match: 'up (?P<k>\\w)'\n";

/// A run of lines made of `SCANNED_RULES`' pieces. A run that holds a carriage return
/// goes line by line, so only one run in four may.
fn random_run() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![3 => run_of(false), 1 => run_of(true)]
}

fn run_of(carriage_returns: bool) -> impl Strategy<Value = Vec<u8>> {
    let cr = if carriage_returns { "\r" } else { "" };
    let piece = prop_oneof![
        Just("ERROR ".to_owned()),
        Just("end".to_owned()),
        Just("word".to_owned()),
        Just("a".to_owned()),
        Just("x".to_owned()),
        Just("y".to_owned()),
        Just("b".to_owned()),
        Just("c".to_owned()),
        Just("d".to_owned()),
        Just("e".to_owned()),
        Just(" ".to_owned()),
        Just(cr.to_owned()),
        Just("é".to_owned()),
        Just("down q".to_owned()),
        Just("up q".to_owned()),
        Just("_".to_owned()),
    ];
    proptest::collection::vec(proptest::collection::vec(piece, 0..8), 1..40).prop_map(|lines| {
        let mut run = Vec::new();
        for line in lines {
            run.extend_from_slice(line.concat().as_bytes());
            run.push(b'\n');
        }
        run
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A run searched whole gives exactly what its lines give one by one: the same
    /// hits, notifications and windows, in the same order.
    #[test]
    fn a_run_searched_whole_is_its_lines_one_by_one(runs in proptest::collection::vec(random_run(), 1..4)) {
        let config = scan_config(SCANNED_RULES);
        assert!(RuleSet::all(&config).unwrap().scans(), "the rules are scannable");
        let mut whole = Pipeline::new(Arc::clone(&config), Vec::new(), Vec::new());
        let mut single = Pipeline::new(config, Vec::new(), Vec::new());
        let (mut a, mut b) = (Recorded::default(), Recorded::default());
        let origin = Origin { id: FileId { dev: 1, ino: 1 }, path: Path::new("/var/log/plain.log"), spec: 0, number: 0, stream: None, journal: None };
        for (i, run) in runs.iter().enumerate() {
            let now = i as i64 * 1000;
            whole.lines(&origin, run, now, &mut a);
            single.lines_one_by_one(&origin, run, now, &mut b);
            whole.tick(now, false, &mut a);
            single.tick(now, false, &mut b);
        }
        prop_assert_eq!(&a.0, &b.0);
        let (wa, wb) = (whole.take_changes(), single.take_changes());
        prop_assert_eq!(wa.windows.len(), wb.windows.len());
    }
}

#[test]
fn patterns_that_mean_other_things_across_lines_keep_line_by_line_matching() {
    for (pattern, scans) in [
        ("timeout (?P<db>\\S+)", true),
        ("(?i)error", true),
        ("\\Astart", false),
        ("end\\z", false),
        ("(?-m)^x", false),
        ("(?i-u:x)", true),
        ("(?s-m:^x)", false),
    ] {
        let rules = format!("  - name: r\n    match: '{pattern}'\n    webhook: oncall\n");
        let set = RuleSet::all(&scan_config(&rules)).unwrap();
        assert_eq!(set.scans(), scans, "{pattern}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any bytes (invalid UTF-8, NUL, markup, long lines), in plain and multiline
    /// files, at any times: no panic, every notification fits Chat's limit, and every
    /// line reaches the catch-all rule once (as a line, or inside an event).
    #[test]
    fn any_lines_give_notifications_chat_accepts(
        lines in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..300), 0usize..2, 0i64..120_000),
            1..60,
        )
    ) {
        let mut pipeline = Pipeline::new(config(), Vec::new(), Vec::new());
        let mut out: Vec<Notification> = Vec::new();
        let mut now = 0;
        for (line, spec, step) in &lines {
            now += step;
            let path = Path::new(if *spec == 0 { "/var/log/plain.log" } else { "/var/log/traces.log" });
            let origin = Origin { id: FileId { dev: 1, ino: *spec as u64 }, path, spec: *spec, number: 0, stream: None, journal: None };
            pipeline.line(&origin, line, now, &mut out);
            pipeline.tick(now, false, &mut out);
        }
        pipeline.tick(now, true, &mut out);
        pipeline.flush_windows(&mut out);
        let _ = pipeline.take_changes();
        for n in &out {
            prop_assert!(chat_text::utf16_len(&n.text) <= chat_text::MAX_TEXT_CHARS);
        }
        let caught = out.iter().filter(|n| n.rule == "anything").count();
        prop_assert!(caught >= 1 && caught <= lines.len());
    }
}
