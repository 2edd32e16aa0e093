//! `check` diagnostics for a corpus of broken configs, one snapshot per file.
//!
//! Each file in `fixtures/broken-configs/` holds one kind of mistake an operator makes.
//! The snapshots pin the exact wording, location and snippet the operator sees.

use chattail::config::UrlPolicy;

use crate::support::{chattail, load_fixture, refused, repo, text};

#[test]
fn every_broken_config_is_refused_with_located_errors() {
    let dir = repo().join("fixtures/broken-configs");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 20, "the corpus shrank: {names:?}");
    for name in names {
        let relative = format!("fixtures/broken-configs/{name}");
        let report = match load_fixture(&relative, UrlPolicy::Required) {
            Ok(loaded) => panic!("{name} was accepted: {:?}", loaded.config),
            Err(report) => report,
        };
        let rendered = report.to_string();
        assert!(
            !rendered.contains("SECRET"),
            "{name}: a secret reached the diagnostics:\n{rendered}"
        );
        let stem = name.trim_end_matches(".yaml");
        insta::assert_snapshot!(format!("check_{stem}"), rendered);
    }
}

#[test]
fn errors_name_the_key_rule_and_line() {
    let report = load_fixture(
        "fixtures/broken-configs/unknown-key-typo.yaml",
        UrlPolicy::Required,
    )
    .unwrap_err();
    let item = &report.items()[0];
    assert!(item.message.contains("`mesage`"), "{}", item.message);
    assert_eq!(item.location.map(|l| (l.line, l.column)), Some((11, 5)));

    let report = load_fixture(
        "fixtures/broken-configs/bad-regex.yaml",
        UrlPolicy::Required,
    )
    .unwrap_err();
    let messages: Vec<&str> = report.items().iter().map(|d| d.message.as_str()).collect();
    assert_eq!(report.error_count(), 3, "{messages:#?}");
    assert!(messages[0].starts_with("rule `unclosed-group`: `match` is not a valid regex"));
    assert!(messages[1].starts_with("rule `bad-exclude`: `exclude` is not a valid regex"));
    assert!(messages[2].starts_with("rule `lookahead`: `match` is not a valid regex"));

    let report = load_fixture(
        "fixtures/broken-configs/template-unknown-capture.yaml",
        UrlPolicy::Required,
    )
    .unwrap_err();
    let messages: Vec<&str> = report.items().iter().map(|d| d.message.as_str()).collect();
    assert_eq!(report.error_count(), 4, "{messages:#?}");
    for (field, name) in [
        ("thread_key", "nosuch"),
        ("message", "database"),
        ("dedup.key", "port"),
    ] {
        assert!(
            messages
                .iter()
                .any(|m| m.starts_with(&format!("rule `db-timeout`: {field} names `{{{name}}}`"))),
            "{field}/{name} missing from {messages:#?}"
        );
    }
}

#[test]
fn the_example_config_is_valid() {
    let loaded = load_fixture("rules.example.yaml", UrlPolicy::Required).unwrap();
    assert!(loaded.warnings.items().is_empty(), "{}", loaded.warnings);
    let config = loaded.config;
    assert_eq!(config.webhooks.len(), 1);
    assert_eq!(config.webhooks[0].name, "oncall");
    let url = config.webhooks[0].url.as_ref().unwrap();
    assert_eq!(url.space(), Some("AAAAtest123"));
    assert!(
        !format!("{config:?}").contains("SECRET"),
        "Debug of Config leaks the URL"
    );
    let names: Vec<&str> = config.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["http-5xx", "db-timeout", "exception", "panic", "oom-kill"]
    );
}

#[test]
fn unusable_urls_are_only_warnings_for_test() {
    let loaded = load_fixture(
        "fixtures/broken-configs/unset-env.yaml",
        UrlPolicy::Optional,
    );
    // The regex with an unclosed `${` is still an error; the unset URL variable is not.
    let report = loaded.unwrap_err();
    assert_eq!(report.error_count(), 1, "{report}");
    assert_eq!(report.warning_count(), 1, "{report}");
}

/// A one-line config of 250 KB with a mistake in it: the report shows a window of the
/// line around the mistake, not the whole line under each error.
#[test]
fn a_huge_one_line_config_prints_a_short_snippet() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    let padding = "x".repeat(250_000);
    std::fs::write(
        &path,
        format!(
            "{{webhooks: {{oncall: {{url: 'http://127.0.0.1:9/v1/spaces/S/messages'}}}}, files: [{{path: /var/log/{padding}.log}}], rules: [{{name: r, match: ERROR, webhook: oncall, mesage: typo}}]}}"
        ),
    )
    .unwrap();
    let rendered = refused(&path).to_string();
    assert!(rendered.contains("mesage"), "{rendered}");
    assert!(
        rendered.len() < 2_000,
        "{} bytes:\n{rendered}",
        rendered.len()
    );
}

/// A file with more YAML nodes than any config needs is refused in our words, without the
/// YAML library's internals ("budget breached: Nodes { … }").
#[test]
fn a_file_with_too_many_nodes_is_refused_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nodes.yaml");
    std::fs::write(
        &path,
        format!("files: [{}]\n", "{path: a},".repeat(300_000)),
    )
    .unwrap();
    let rendered = refused(&path).to_string();
    assert!(
        rendered.contains("too large or too deeply nested"),
        "{rendered}"
    );
    for internal in ["budget", "Nodes {", "from_str"] {
        assert!(!rendered.contains(internal), "{rendered}");
    }
    assert!(rendered.len() < 2_000, "{rendered}");
}

/// A line that holds a secret is never shown in a snippet, however its quotes and blanks
/// break it: a YAML syntax error on a `fleet.redis` line whose password has a space, a
/// quote and a backtick points at the line without printing it.
#[test]
fn a_syntax_error_on_a_line_with_a_password_does_not_print_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("chattail.yaml");
    for redis in [
        r#"redis: "redis://:pw d'q`x"z@cache:6379/0""#,
        r#"redis: redis://:pw d'q`x"z@cache:6379/0: [oops"#,
    ] {
        std::fs::write(
            &config,
            format!(
                "webhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\nfiles:\n  - path: /var/log/*.log\n\
                 rules:\n  - name: r\n    match: x\n    webhook: oncall\nfleet:\n  {redis}\n  namespace: prod\n"
            ),
        )
        .unwrap();
        let output = chattail(&["check", "--config", config.to_str().unwrap()], &[], None);
        assert_eq!(output.status.code(), Some(2));
        let stderr = text(&output.stderr);
        assert!(stderr.contains(":11:"), "located: {stderr}");
        for piece in ["pw d", "d'q", "q`x", "x\"z"] {
            assert!(!stderr.contains(piece), "{piece} in: {stderr}");
        }
    }
}

/// Container logs in `check`: a glob under the kubelet's `pods` directory read as plain
/// is warned about; a template naming `{stream}` with no container log source is a
/// located error; a capture named like a source built-in shadows it, with a warning.
#[test]
fn container_log_sources_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("chattail.yaml");
    let write = |files: &str, rules: &str| {
        std::fs::write(
            &config,
            format!(
                "webhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\nfiles:\n{files}rules:\n{rules}"
            ),
        )
        .unwrap();
        let output = chattail(&["check", "--config", config.to_str().unwrap()], &[], None);
        (
            output.status.code(),
            text(&output.stderr) + &text(&output.stdout),
        )
    };
    let (code, out) = write(
        "  - path: /var/log/pods/*/*/*.log\n",
        "  - name: r\n    match: x\n    webhook: oncall\n",
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("add `format: cri`"), "{out}");
    let (code, out) = write(
        "  - path: /var/log/app/*.log\n",
        "  - name: r\n    match: x\n    webhook: oncall\n    thread_key: 'x-{stream}'\n",
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("names `{stream}`, which no `files` entry provides") && out.contains(":10:17"),
        "{out}"
    );
    let (code, out) = write(
        "  - path: /var/log/pods/*/*/*.log\n    format: cri\n",
        "  - name: r\n    match: 'pod=(?P<pod>\\S+)'\n    webhook: oncall\n    thread_key: '{namespace}-{pod}-{stream}'\n",
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("shadows the built-in `{pod}`"), "{out}");
}

/// `chattail test` decodes an input the way its `files` entry says, and says so.
#[test]
fn chattail_test_decodes_container_logs() {
    let dir = tempfile::tempdir().unwrap();
    let pods = dir.path().join("pods/shop_api-1_uid/api");
    std::fs::create_dir_all(&pods).unwrap();
    let log = pods.join("0.log");
    std::fs::write(
        &log,
        "2026-12-06T05:00:01Z stderr P timeout connecting \n2026-12-06T05:00:01Z stderr F to orders-db\n",
    )
    .unwrap();
    let config = dir.path().join("chattail.yaml");
    std::fs::write(
        &config,
        format!(
            "webhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\nfiles:\n  - path: {}/pods/*/*/*.log\n    format: cri\nrules:\n  - name: db\n    match: 'timeout connecting to (?P<db>\\S+)'\n    webhook: oncall\n    thread_key: '{{namespace}}-{{db}}-{{stream}}'\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let output = chattail(
        &[
            "test",
            "--config",
            config.to_str().unwrap(),
            log.to_str().unwrap(),
        ],
        &[],
        None,
    );
    let out = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(out.contains("records are decoded as cri"), "{out}");
    assert!(out.contains("shop-orders-db-stderr"), "{out}");
}

/// The journal in `check`: the summary says what is read and from where, and which rules
/// see both the files and the journal; a capture named `pid` shadows the journal's
/// built-in only when a journal is configured.
#[test]
fn journal_sources_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("chattail.yaml");
    let rules = "rules:\n  - name: everywhere\n    match: 'killed (?P<pid>\\d+)'\n    webhook: oncall\n    thread_key: 'k-{pid}'\n\
                 \x20 - name: apps\n    match: ERROR\n    units: ['app@*.service']\n    webhook: oncall\n    thread_key: '{unit}-{identifier}-{priority}'\n";
    let head = "webhooks:\n  oncall:\n    url: http://127.0.0.1:9/v1/spaces/S/messages\n";
    std::fs::write(
        &config,
        format!("{head}files:\n  - path: /var/log/app/*.log\njournal:\n  directory: /var/log/journal\n  units: ['app@*.service', 'nginx.service']\n{rules}"),
    )
    .unwrap();
    let output = chattail(&["check", "--config", config.to_str().unwrap()], &[], None);
    let out = text(&output.stderr) + &text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(
        out.contains("journal:   /var/log/journal, app@*.service, nginx.service (without a saved position, starts at the end)"),
        "{out}"
    );
    assert!(
        out.contains("everywhere → oncall, thread \"k-{pid}\", sees the files and the journal"),
        "{out}"
    );
    assert!(
        !out.contains("apps → oncall, thread \"{unit}-{identifier}-{priority}\", sees"),
        "{out}"
    );
    assert!(out.contains("shadows the built-in `{pid}`"), "{out}");

    // Without files, the journal alone is a source; without both, nothing is.
    std::fs::write(&config, format!("{head}journal: {{}}\n{rules}")).unwrap();
    let output = chattail(&["check", "--config", config.to_str().unwrap()], &[], None);
    let out = text(&output.stderr) + &text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(
        out.contains("journal:   the system journal, every unit"),
        "{out}"
    );
    std::fs::write(&config, format!("{head}{rules}")).unwrap();
    let output = chattail(&["check", "--config", config.to_str().unwrap()], &[], None);
    let out = text(&output.stderr) + &text(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{out}");
    assert!(
        out.contains("no `files` and no `journal` are configured"),
        "{out}"
    );
}
