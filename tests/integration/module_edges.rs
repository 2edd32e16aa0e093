//! The module map's edges, enforced (in the spirit of rust-analyzer's tidy tests).
//!
//! Every `crate::…` path in a source file is an edge from the file's top-level module to
//! the module it names. The table below is ARCHITECTURE.md's list of allowed edges; a
//! change that needs a new edge changes both, on purpose. Further scans check what some
//! modules must never contain: the pipeline does no I/O, reads no clock and logs
//! nothing; only the store speaks SQL; only the Chat client sees a webhook's secret.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What each top-level module may name, besides itself. An entry `a::b` allows exactly
/// that submodule (and what is under it); an entry `a` allows all of `a`.
const ALLOWED: &[(&str, &[&str])] = &[
    ("clock", &[]),
    ("path_glob", &[]),
    ("webhook_url", &[]),
    ("redis_url", &[]),
    ("bounded_listener", &[]),
    (
        "config",
        &[
            "path_glob",
            "pipeline::container_path",
            "pipeline::pattern",
            "pipeline::template",
            "redis_url",
            "webhook_url",
        ],
    ),
    ("fleet", &["config", "ops", "redis_url"]),
    ("pipeline", &["config"]),
    ("tail", &["path_glob"]),
    ("journal", &["pipeline::journal_fields"]),
    ("store", &["clock", "pipeline::chat_text"]),
    (
        "deliver",
        &[
            "clock",
            "config",
            "fleet",
            "ops",
            "pipeline::bursts::summary_text",
            "pipeline::rules::BurstMark",
            "pipeline::thread_key",
            "store::StoreError",
            "store::fleet_rows",
            "store::outbox",
            "webhook_url",
        ],
    ),
    ("ops", &["bounded_listener", "clock", "store::outbox"]),
    (
        "agent",
        &[
            "bounded_listener",
            "clock",
            "config",
            "deliver",
            "fleet",
            "journal",
            "ops",
            "pipeline",
            "store",
            "tail",
        ],
    ),
    ("rule_test", &["config", "pipeline"]),
    ("sandbox", &["bounded_listener", "clock"]),
    (
        "send",
        &[
            "clock",
            "config",
            "deliver::chat_client",
            "pipeline::chat_text",
            "pipeline::thread_key",
        ],
    ),
    (
        "cli",
        &["agent", "config", "journal", "rule_test", "sandbox", "send"],
    ),
    ("lib", &[]),
    ("main", &[]),
];

/// Words that must not appear in the pure core: I/O, clocks, threads, logging.
const PIPELINE_FORBIDDEN: &[&str] = &[
    "std::fs",
    "std::io",
    "std::net",
    "std::thread",
    "std::process",
    "SystemTime",
    "Instant",
    "tracing::",
    "println!",
    "eprintln!",
    "tokio",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, with its path relative to `src/`.
fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(src()).unwrap().display().to_string();
            out.push((relative, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

fn all_sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    sources(&src(), &mut out);
    assert!(out.len() > 20, "the scan found the sources");
    out
}

/// The top-level module a file belongs to (`pipeline/rules.rs` → `pipeline`).
fn module_of(file: &str) -> &str {
    file.split('/')
        .next()
        .unwrap_or(file)
        .trim_end_matches(".rs")
}

/// The `crate::a::b` paths a text names, as `a::b` (or `a` when nothing follows; a
/// following `{…}` group is kept for the caller to cut).
fn crate_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        // `chattail::crate::` cannot occur; an identifier ending in "crate" could.
        if text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &text[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':' || *c == '{')
            .collect();
        out.push(path.trim_end_matches(':').to_owned());
    }
    out
}

/// The forbidden edges in `sources`, one line each.
fn violations(sources: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (file, text) in sources {
        let from = module_of(file);
        let Some((_, allowed)) = ALLOWED.iter().find(|(m, _)| *m == from) else {
            found.push(format!("{file}: module `{from}` is not in the edges table"));
            continue;
        };
        for path in crate_paths(text) {
            // `crate::a::b::{X, Y}` names `a::b`; `crate::{a, b}` hides its modules.
            let path = path.split('{').next().unwrap_or("").trim_end_matches(':');
            if path.is_empty() {
                found.push(format!(
                    "{file}: `crate::{{…}}`: write one path per module so edges can be checked"
                ));
                continue;
            }
            let target = path.split("::").next().unwrap_or("");
            if target == from {
                continue;
            }
            let ok = allowed
                .iter()
                .any(|a| path == *a || path.starts_with(&format!("{a}::")));
            if !ok {
                found.push(format!("{file}: `{from}` may not use `crate::{path}`"));
            }
        }
    }
    found
}

#[test]
fn modules_use_only_the_allowed_edges() {
    let found = violations(&all_sources());
    assert!(found.is_empty(), "forbidden edges:\n{}", found.join("\n"));
}

#[test]
fn the_edge_check_finds_a_forbidden_edge() {
    // The check itself must be able to fail: a pipeline file naming the store, a tailer
    // file naming the config, and a grouped import.
    let scratch = vec![
        (
            "pipeline/scratch.rs".to_owned(),
            "use crate::store::Store;\nuse crate::config::Config;".to_owned(),
        ),
        (
            "tail/scratch.rs".to_owned(),
            "fn f() { let _ = crate::config::DEFAULT_MAX_LINE_BYTES; }".to_owned(),
        ),
        (
            "ops/scratch.rs".to_owned(),
            "use crate::{tail, store};".to_owned(),
        ),
    ];
    let found = violations(&scratch);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(found[0].contains("`pipeline` may not use `crate::store::Store`"));
    assert!(found[1].contains("`tail` may not use `crate::config::DEFAULT_MAX_LINE_BYTES`"));
    assert!(found[2].contains("one path per module"));
}

#[test]
fn the_pipeline_does_no_io_reads_no_clock_and_logs_nothing() {
    let mut found = Vec::new();
    for (file, text) in all_sources() {
        if module_of(&file) != "pipeline" {
            continue;
        }
        // Unit tests may build configs from files and the like; the code may not.
        let code = text.split("#[cfg(test)]").next().unwrap_or(&text);
        for word in PIPELINE_FORBIDDEN {
            if code.contains(word) {
                found.push(format!("{file}: `{word}`"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the pipeline must stay pure:\n{}",
        found.join("\n")
    );
}

#[test]
fn only_the_store_speaks_sql_and_only_the_chat_client_sees_the_secret() {
    let mut found = BTreeSet::new();
    for (file, text) in all_sources() {
        if text.contains("rusqlite") && !file.starts_with("store/") {
            found.insert(format!("{file}: uses rusqlite outside the store"));
        }
        let calls_secret = text
            .lines()
            .any(|l| l.contains(".expose_secret()") && !l.trim_start().starts_with("//"));
        if calls_secret
            && ![
                "deliver/chat_client.rs",
                "webhook_url.rs",
                "redis_url.rs",
                "fleet/resp.rs",
            ]
            .contains(&file.as_str())
        {
            found.insert(format!("{file}: calls expose_secret"));
        }
        if text.contains("inotify_") && file != "tail/wakeups.rs" {
            found.insert(format!("{file}: calls inotify outside tail/wakeups.rs"));
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}
