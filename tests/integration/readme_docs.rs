//! The README, tested: every YAML config block in it loads (fragments completed with a
//! webhook, a file and a rule, environment variables filled in), every metric name it
//! mentions is exported, and every `chattail` command line in its shell blocks parses with
//! the real command line. A README change that breaks one of these fails here.

use std::path::Path;

use chattail::config::{LoadOptions, UrlPolicy, load_bytes};

fn readme() -> String {
    std::fs::read_to_string(crate::support::repo().join("README.md")).unwrap()
}

/// The fenced blocks of `markdown` in `language`, with the line each starts on.
fn blocks(markdown: &str, language: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let fence = line.trim_start();
        if fence.starts_with("```") {
            match current.take() {
                Some(block) => out.push(block),
                None if fence.trim_start_matches('`') == language => {
                    current = Some((i + 1, String::new()));
                }
                None => {}
            }
            continue;
        }
        if let Some((_, text)) = &mut current {
            text.push_str(line);
            text.push('\n');
        }
    }
    out
}

/// A value for any `${VAR}` a README block uses.
fn env(name: &str) -> Option<String> {
    Some(if name.contains("REDIS") {
        "redis://127.0.0.1:6379/0".to_owned()
    } else if name.contains("URL") || name.contains("WEBHOOK") {
        "https://chat.googleapis.com/v1/spaces/AAAA/messages?key=k&token=t".to_owned()
    } else {
        "/var/lib/chattail".to_owned()
    })
}

/// A config block of the README, completed where it is a fragment.
fn completed(block: &str) -> String {
    let has = |key: &str| block.lines().any(|l| l.starts_with(&format!("{key}:")));
    let mut yaml = String::new();
    if !has("webhooks") {
        yaml.push_str("webhooks:\n  oncall:\n    url: https://chat.googleapis.com/v1/spaces/AAAA/messages?key=k&token=t\n");
    }
    yaml.push_str(block);
    if !has("files") && !has("journal") {
        yaml.push_str("files:\n  - path: /var/log/app/*.log\n");
    }
    if !has("rules") {
        yaml.push_str("rules:\n  - name: r\n    match: ERROR\n    webhook: oncall\n");
    }
    yaml
}

#[test]
fn every_config_block_in_the_readme_loads() {
    let text = readme();
    let configs: Vec<(usize, String)> = blocks(&text, "yaml");
    assert!(
        configs.len() >= 4,
        "the README's config blocks: {configs:?}"
    );
    let env = |name: &str| env(name);
    let options = LoadOptions {
        url_policy: UrlPolicy::Required,
        env: &env,
        default_host: "web-1".to_owned(),
    };
    for (line, block) in configs {
        let yaml = completed(&block);
        if let Err(report) = load_bytes(Path::new("README.md"), yaml.as_bytes(), &options) {
            panic!("README.md:{line}: the config block does not load:\n{report}\n{yaml}");
        }
    }
}

#[test]
fn every_metric_the_readme_names_is_exported() {
    let metrics = chattail::ops::metrics::Metrics {
        fleet_enabled: true,
        ..Default::default()
    };
    metrics.prepare(&["oncall"], &["r"], &["/var/log/*.log"], &["cri", "docker"]);
    let mut exported = String::new();
    prometheus_client::encoding::text::encode(&mut exported, &metrics.registry()).unwrap();
    let text = readme();
    let mut named: Vec<&str> = text
        .match_indices("chattail_")
        .map(|(i, _)| {
            let rest = &text[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|name| name.len() > "chattail_".len() && !name.ends_with('_'))
        .collect();
    named.sort_unstable();
    named.dedup();
    assert!(named.len() >= 20, "{named:?}");
    let missing: Vec<&&str> = named.iter().filter(|n| !exported.contains(**n)).collect();
    assert!(
        missing.is_empty(),
        "named in the README, not exported: {missing:?}"
    );
}

/// The words of a shell command line (quotes removed, as the shell would).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                any = false;
            }
            (None, c) => {
                word.push(c);
                any = true;
            }
        }
    }
    if any || !word.is_empty() {
        out.push(word);
    }
    out
}

#[test]
fn every_chattail_command_in_the_readme_parses() {
    use clap::Parser;
    let text = readme();
    let mut checked = 0;
    for (at, block) in blocks(&text, "sh") {
        // Continued lines are one command.
        let joined = block.replace("\\\n", " ");
        for (offset, line) in joined.lines().enumerate() {
            for part in line.split(['|', ';']).flat_map(|p| p.split("&&")) {
                let command = part.split(" #").next().unwrap_or("").trim();
                let command = command
                    .strip_prefix("cargo run -- ")
                    .map(|rest| format!("chattail {rest}"))
                    .unwrap_or_else(|| command.to_owned());
                let Some(start) = command.find("chattail ") else {
                    continue;
                };
                // The command itself, or a path to it (`/usr/local/bin/chattail check ...`
                // inside `systemd-run ...`); not `chattail` as another command's argument.
                let before = &command[..start];
                if !(before.is_empty() || before.ends_with('/')) {
                    continue;
                }
                let mut args = words(&command[start..]);
                // Redirections are the shell's.
                if let Some(cut) = args
                    .iter()
                    .position(|a| a.starts_with('>') || a.starts_with('<'))
                {
                    args.truncate(cut);
                }
                if args.len() < 2 || !args[1].chars().all(|c| c.is_ascii_lowercase()) {
                    continue;
                }
                if let Err(error) = chattail::cli::Cli::try_parse_from(&args) {
                    panic!(
                        "README.md:{}: `{}` does not parse:\n{error}",
                        at + offset + 1,
                        args.join(" ")
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "only {checked} chattail commands found");
}

/// The README's sample `check` output is what `check` prints for that file, word for word.
#[test]
fn the_readme_sample_check_output_is_the_real_output() {
    let text = readme();
    let command = "cargo run -- check --config fixtures/broken-configs/every-mistake-at-once.yaml\n```\n\n```\n";
    let start = text
        .find(command)
        .map(|i| i + command.len())
        .expect("the README shows the sample check");
    let shown = &text[start..start + text[start..].find("```").unwrap()];
    let out = std::process::Command::new(crate::support::bin())
        .args([
            "check",
            "--config",
            "fixtures/broken-configs/every-mistake-at-once.yaml",
        ])
        .current_dir(crate::support::repo())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(shown, crate::support::text(&out.stderr));
    // Every mistake at once: both typos, the regex and the webhook.
    assert_eq!(shown.matches("\nerror: ").count() + 1, 4, "{shown}");
}
