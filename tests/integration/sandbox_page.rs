//! The sandbox's page in a real browser: `chattail sandbox` runs, `chattail run --once`
//! posts the bundled example's matches to it, and headless Chromium (Debian's
//! `chromium`, installed by `.ci/run`) loads the page; the rendered DOM must show every
//! thread with its message count, Chat markup drawn (bold, code) and a 429 the sandbox
//! answered. One browser start.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::support::{bin, repo, text};

/// The sandbox process, killed when dropped.
struct SandboxProcess(Child);

impl Drop for SandboxProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `chattail sandbox` on a free port; returns it with its page address and the
/// webhook URL it printed.
fn start_sandbox() -> (SandboxProcess, String, String) {
    let mut child = Command::new(bin())
        .args(["sandbox", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let process = SandboxProcess(child);
    let mut page = String::new();
    let mut webhook = String::new();
    // It prints its addresses at once, then waits for a signal; the lines end at `Stop`.
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("page:") {
            page = rest.trim().trim_end_matches('/').to_owned();
        } else if let Some(rest) = line.trim().strip_prefix("webhook:") {
            webhook = rest.trim().to_owned();
        } else if line.starts_with("Stop") {
            break;
        }
    }
    assert!(
        page.starts_with("http://127.0.0.1:"),
        "page address: {page}"
    );
    assert!(
        webhook.contains("/v1/spaces/SANDBOX/messages?key="),
        "{webhook}"
    );
    (process, page, webhook)
}

fn http_get(base: &str, path: &str) -> String {
    crate::support::http(base.trim_start_matches("http://"), "GET", path, "").2
}

/// Posts straight to the sandbox's webhook; returns the status.
fn http_post(webhook: &str, body: &str) -> u16 {
    let rest = webhook.trim_start_matches("http://");
    let (addr, target) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    crate::support::http(addr, "POST", target, body).0
}

/// The thread keys the example posts to, from its dry run (an independent account).
fn example_thread_keys() -> BTreeSet<String> {
    let output = Command::new(bin())
        .args([
            "run",
            "--config",
            "rules.example.yaml",
            "--dry-run",
            "--once",
        ])
        .current_dir(repo())
        .env(
            "CHATTAIL_WEBHOOK_URL",
            "https://chat.googleapis.com/v1/spaces/X/messages?key=k&token=t",
        )
        .output()
        .unwrap();
    text(&output.stdout)
        .lines()
        .filter_map(|l| l.split(" · thread ").nth(1))
        .filter_map(|rest| rest.split(" · ").next())
        .map(str::to_owned)
        .collect()
}

/// Headless Chromium's DOM of `url` after its scripts ran (a few seconds of virtual time).
fn rendered_dom(url: &str, profile: &std::path::Path) -> String {
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| Command::new(name).arg("--version").output().is_ok())
        .unwrap_or_else(|| {
            panic!("no Chromium on PATH: install Debian's `chromium` package (.ci/run does)")
        });
    let output = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "chromium: {}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

#[test]
fn the_page_shows_threads_counts_markup_and_a_429_in_a_real_browser() {
    let (_sandbox, page, webhook) = start_sandbox();
    let state = tempfile::tempdir().unwrap();
    let run = Command::new(bin())
        .args(["run", "--config", "rules.example.yaml", "--once"])
        .current_dir(repo())
        .env("CHATTAIL_WEBHOOK_URL", &webhook)
        .env("CHATTAIL_STATE_DIR", state.path())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run.stderr));
    // Two posts to one space at once: the second meets the quota.
    let body = r#"{"text": "*quota* check"}"#;
    let statuses = [http_post(&webhook, body), http_post(&webhook, body)];
    assert!(statuses.contains(&429), "{statuses:?}");

    let api: Value = serde_json::from_str(&http_get(&page, "/api/state")).unwrap();
    let space = &api["spaces"][0];
    let stored: BTreeMap<String, usize> = space["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| {
            Some((
                t["key"].as_str()?.to_owned(),
                t["messages"].as_array()?.len(),
            ))
        })
        .collect();
    let expected = example_thread_keys();
    assert!(!expected.is_empty());
    assert_eq!(
        stored.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "the agent posted into the example's threads"
    );

    let profile = tempfile::tempdir().unwrap();
    let dom = rendered_dom(&format!("{page}/"), profile.path());
    for (key, count) in &stored {
        // Keys are plain ASCII here, so they appear in the DOM as they are.
        let thread = format!(r#"data-key="{key}" data-count="{count}""#);
        assert!(
            dom.contains(&thread),
            "thread {key} with {count} messages in:\n{dom}"
        );
        let label = if *count == 1 {
            "1 message<"
        } else {
            " messages<"
        };
        assert!(dom.contains(label));
    }
    // Each message says which host and rule posted it (chattail's labels).
    assert!(dom.contains("rule db-timeout"), "rule shown: {dom}");
    assert!(dom.contains(" · host "), "host shown: {dom}");
    assert!(dom.contains("<b>"), "bold drawn: {dom}");
    assert!(dom.contains("<code>"), "code drawn: {dom}");
    assert!(
        dom.contains(r#"class="refused s429""#) && dom.contains(r#"data-status="429""#),
        "the 429 shown: {dom}"
    );
    assert!(
        !dom.contains("sandbox-token") && !dom.contains("sandbox-key"),
        "no key or token on the page"
    );
    // Nothing failed in the page's own script: it drew the spaces it fetched.
    assert!(dom.contains("spaces/SANDBOX"));
}
