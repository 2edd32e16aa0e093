//! The module map's edges, enforced (in the spirit of rust-analyzer's tidy tests).
//!
//! Every `crate::…` path in a source file is an edge from the file's top-level module to
//! the module it names (a `super::` that climbs out of the module counts too). The allowed
//! edges are ARCHITECTURE.md's table, read from the page itself. Further scans check what some
//! modules must never contain: the pipeline does no I/O, reads no clock and logs
//! nothing; only the store speaks SQL; only the Chat client sees a webhook's secret.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What each top-level module may name, besides itself, read from ARCHITECTURE.md's
/// [Edges] table (one source of truth: the page people read is the rule the test
/// applies). An entry `a::b` allows exactly that submodule (and what is under it); an
/// entry `a` allows all of `a`. Text in parentheses is commentary.
fn allowed() -> Vec<(String, Vec<String>)> {
    let page =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .unwrap();
    let rows = parse_edges(&page);
    assert!(
        rows.len() > 15,
        "the edges table was found in ARCHITECTURE.md"
    );
    rows
}

fn parse_edges(page: &str) -> Vec<(String, Vec<String>)> {
    let ticked = |cell: &str| -> Vec<String> {
        // Commentary in parentheses may name things in backticks too: dropped first.
        let mut plain = String::new();
        let mut depth = 0usize;
        for c in cell.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ if depth == 0 => plain.push(c),
                _ => {}
            }
        }
        plain
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in page.lines() {
        if line.starts_with("| module | may use |") {
            in_table = true;
            continue;
        }
        if !in_table || line.starts_with("| ---") {
            continue;
        }
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').collect();
        let (Some(modules), Some(uses)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let uses = ticked(uses);
        for module in ticked(modules) {
            rows.push((module, uses.clone()));
        }
    }
    rows
}

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

/// `text` with comments, string literals and char literals blanked (each replaced by
/// spaces, newlines kept), so that only code is scanned: a path in a doc comment or a
/// message is no edge, and an edge cannot hide in one.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            continue;
        }
        // Raw strings: r"…", r#"…"#, br#"…"#.
        let raw_start = if c == 'r' && matches!(next, Some('"' | '#')) {
            Some(i + 1)
        } else if c == 'b' && next == Some('r') && matches!(chars.get(i + 2), Some('"' | '#')) {
            Some(i + 2)
        } else {
            None
        };
        let ident_before = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if let (Some(mut j), false) = (raw_start, ident_before) {
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) == Some(&'"') {
                out.extend(chars[i..=j].iter().map(|&c| blank(c)));
                j += 1;
                while j < chars.len() {
                    if chars[j] == '"' && (1..=hashes).all(|h| chars.get(j + h) == Some(&'#')) {
                        for _ in 0..=hashes {
                            out.push(' ');
                        }
                        j += hashes + 1;
                        break;
                    }
                    out.push(blank(chars[j]));
                    j += 1;
                }
                i = j;
                continue;
            }
        }
        if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
            continue;
        }
        // A char literal ('x', '\n', '\u{1f}'), not a lifetime ('a).
        if c == '\'' {
            let close = if next == Some('\\') {
                (i + 2..chars.len().min(i + 12)).find(|&k| chars[k] == '\'')
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            if let Some(end) = close {
                for _ in i..=end {
                    out.push(' ');
                }
                i = end + 1;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
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
        out.push(path_at(&text[i + "crate::".len()..]));
    }
    out
}

/// The module path at the start of `rest` (after `crate::` or the last `super::`), up to
/// the first character that cannot be part of one (a `{` of a group is kept).
fn path_at(rest: &str) -> String {
    let path: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':' || *c == '{')
        .collect();
    path.trim_end_matches(':').to_owned()
}

/// The paths a file names through `super::` that climb out of its top-level module
/// (`super::store` in `agent/mod.rs`, `super::super::store` in `agent/ingest.rs`), as
/// crate paths. An inline module (`mod tests {`) is one level deeper from where it
/// starts (inline modules sit at the end of a file here).
fn paths_above(file: &str, text: &str) -> Vec<String> {
    let mut depth = file.trim_end_matches(".rs").split('/').count();
    if file.ends_with("/mod.rs") {
        depth -= 1;
    }
    let inline_starts: Vec<usize> = text
        .match_indices('\n')
        .filter(|(i, _)| {
            let line = text[i + 1..].lines().next().unwrap_or("").trim_start();
            let line = line.strip_prefix("pub ").unwrap_or(line);
            line.starts_with("mod ") && line.trim_end().ends_with('{')
        })
        .map(|(i, _)| i)
        .collect();
    let mut out = Vec::new();
    for (i, _) in text.match_indices("super::") {
        let depth = depth + inline_starts.iter().filter(|&&start| start < i).count();
        if text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let mut rest = &text[i..];
        let mut climbs = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            rest = r;
            climbs += 1;
        }
        if climbs < depth {
            continue;
        }
        out.push(path_at(rest));
    }
    out
}

/// The forbidden edges in `sources`, one line each.
fn violations(sources: &[(String, String)]) -> Vec<String> {
    let table = allowed();
    let mut found = Vec::new();
    for (file, text) in sources {
        let from = module_of(file);
        let Some((_, allowed)) = table.iter().find(|(m, _)| m == from) else {
            found.push(format!("{file}: module `{from}` is not in the edges table"));
            continue;
        };
        let text = &code_only(text);
        let mut paths = crate_paths(text);
        paths.extend(paths_above(file, text));
        // `use crate as c;` would let `c::store` through unseen.
        if text.contains("crate as ") {
            found.push(format!("{file}: `crate as …`: name modules by their paths"));
        }
        for path in paths {
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
fn the_edges_table_reads_as_written() {
    let rows = parse_edges(
        "## Edges\n\n| module | may use |\n| --- | --- |\n| `a`, `b` | nothing |\n| `c` | `a`, `b::x` (the `d` it names is commentary) |\n\nAfter.\n| `z` | `y` |\n",
    );
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0], ("a".to_owned(), Vec::<String>::new()));
    assert_eq!(
        rows[2],
        ("c".to_owned(), vec!["a".to_owned(), "b::x".to_owned()])
    );
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
        // Climbing out with `super::`, from a module's root file and from below it.
        (
            "tail/mod.rs".to_owned(),
            "use super::store::Store;".to_owned(),
        ),
        (
            "pipeline/scratch.rs".to_owned(),
            "fn f() { super::super::agent::run(); }".to_owned(),
        ),
        // A renamed import is the path it names.
        (
            "sandbox/scratch.rs".to_owned(),
            "use crate::store as state;".to_owned(),
        ),
        // The crate renamed.
        (
            "send/scratch.rs".to_owned(),
            "use crate as c;\nfn f() { c::store::Store::open(); }".to_owned(),
        ),
        // Paths in comments and strings are not edges (and do not count as allowed).
        (
            "clock/scratch.rs".to_owned(),
            "// crate::store is mentioned here\n/* crate::agent */\nconst S: &str = \"crate::tail\";\nconst R: &str = r#\"crate::fleet\"#;\nfn f<'a>(x: &'a str) -> char { let _ = x; '\"' }".to_owned(),
        ),
    ];
    let found = violations(&scratch);
    assert_eq!(found.len(), 7, "{found:#?}");
    assert!(found[6].contains("`crate as …`"), "{}", found[6]);
    assert!(
        found[3].contains("`tail` may not use `crate::store::Store`"),
        "{}",
        found[3]
    );
    assert!(
        found[4].contains("`pipeline` may not use `crate::agent::run`"),
        "{}",
        found[4]
    );
    assert!(
        found[5].contains("`sandbox` may not use `crate::store`"),
        "{}",
        found[5]
    );
    assert!(found[0].contains("`pipeline` may not use `crate::store::Store`"));
    assert!(found[1].contains("`tail` may not use `crate::config::DEFAULT_MAX_LINE_BYTES`"));
    assert!(found[2].contains("one path per module"));
}

#[test]
fn the_pipeline_does_no_io_reads_no_clock_and_logs_nothing() {
    let mut found = Vec::new();
    for (file, text) in all_sources() {
        // The silences' matching is as pure as the pipeline that calls it.
        if !["pipeline", "silences"].contains(&module_of(&file)) {
            continue;
        }
        // Unit tests may build configs from files and the like; the code may not.
        let code = code_only(text.split("#[cfg(test)]").next().unwrap_or(&text));
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

/// Files that break the rules on SQL, secrets and inotify, one line each.
fn layout_violations(sources: &[(String, String)]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (file, text) in sources {
        let code = code_only(text);
        if code.contains("rusqlite") && !file.starts_with("store/") {
            found.insert(format!("{file}: uses rusqlite outside the store"));
        }
        // Method or UFCS (`ExposeSecret::expose_secret(&x)`): any use of the name.
        let calls_secret = code.contains("expose_secret");
        if code.contains("redis.target()") && file != "fleet/mod.rs" {
            found.insert(format!("{file}: asks a Redis URL for its login"));
        }
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
        if code.contains("inotify_") && file != "tail/wakeups.rs" {
            found.insert(format!("{file}: calls inotify outside tail/wakeups.rs"));
        }
    }
    found
}

#[test]
fn only_the_store_speaks_sql_and_only_the_chat_client_sees_the_secret() {
    let found = layout_violations(&all_sources());
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_secret_check_finds_a_secret_reached_another_way() {
    let scratch = vec![
        (
            "pipeline/scratch.rs".to_owned(),
            "use secrecy::ExposeSecret;\nfn f(u: &Url) -> &str { ExposeSecret::expose_secret(&u.secret) }".to_owned(),
        ),
        (
            "ops/scratch.rs".to_owned(),
            "fn f(c: &Config) { let _ = c.fleet.redis.target(); }".to_owned(),
        ),
        (
            "sandbox/scratch.rs".to_owned(),
            "// rusqlite in a comment is fine\nfn f() { let _ = rusqlite::Connection::open_in_memory(); }".to_owned(),
        ),
        (
            "agent/scratch.rs".to_owned(),
            "// expose_secret() named in a comment is fine\nconst S: &str = \"expose_secret\";".to_owned(),
        ),
    ];
    let found: Vec<String> = layout_violations(&scratch).into_iter().collect();
    assert_eq!(
        found,
        [
            "ops/scratch.rs: asks a Redis URL for its login",
            "pipeline/scratch.rs: calls expose_secret",
            "sandbox/scratch.rs: uses rusqlite outside the store",
        ]
    );
}
