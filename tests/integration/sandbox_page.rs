//! The sandbox's page in a real browser: `chattail sandbox` runs, `chattail run --once`
//! posts the bundled example's matches to it, and headless Chromium (Debian's
//! `chromium`, installed by `.ci/run`) loads the page; the rendered DOM must show every
//! thread with its message count, Chat markup drawn (bold, code) and a 429 the sandbox
//! answered. Hostile markup (the payloads that once injected script, and random markup)
//! must come out as text and the few allowed elements only. One browser start.

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
        // The key Chat receives; the rendered one, when it differs, is beside it.
        .filter_map(|key| key.split(" (rendered: ").next())
        .map(str::to_owned)
        .collect()
}

/// Headless Chromium's DOM of `url` after its scripts ran (a few seconds of virtual time).
fn rendered_dom(url: &str, profile: &std::path::Path) -> String {
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| Command::new(name).arg("--version").output().is_ok())
        .unwrap_or_else(|| {
            panic!("no Chromium on PATH: install Debian's `chromium` package (bash .ci/test installs it)")
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

    let api: Value = serde_json::from_str(&http_get(&page, "/api/state?since=0")).unwrap();
    let mut stored: BTreeMap<String, usize> = BTreeMap::new();
    for m in api["messages"].as_array().unwrap() {
        if let Some(key) = m["key"].as_str() {
            *stored.entry(key.to_owned()).or_default() += 1;
        }
    }
    // Polling from the newest sequence number answers nothing old.
    let seq = api["seq"].as_u64().unwrap();
    let later: Value =
        serde_json::from_str(&http_get(&page, &format!("/api/state?since={seq}"))).unwrap();
    assert_eq!(
        later["messages"].as_array().map(Vec::len),
        Some(0),
        "{later}"
    );
    // Hostile markup, through the webhook (each into a space of its own, so the quota does
    // not refuse them) and through the agent: a log line is whoever can reach the app.
    for (i, payload) in HOSTILE.iter().enumerate() {
        let url = webhook.replace("/SANDBOX/", &format!("/HOSTILE{i}/"));
        let body = serde_json::json!({ "text": payload }).to_string();
        assert_eq!(http_post(&url, &body), 200, "{payload}");
    }
    post_through_the_agent(&webhook);
    let fuzz = random_markup(40, 30);
    for (i, text) in fuzz.iter().enumerate() {
        let url = webhook.replace("/SANDBOX/", &format!("/FUZZ{i}/"));
        let body = serde_json::json!({ "text": text }).to_string();
        assert_eq!(http_post(&url, &body), 200);
    }
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
    // The example's db-timeout rule posts cards: title, a field and a button's link.
    assert!(
        dom.contains(r#"<div class="card-title">DB timeout: orders-db.internal</div>"#),
        "card title: {dom}"
    );
    assert!(
        dom.contains(r#"<div class="card-label">Database</div><div class="card-value">orders-db.internal</div>"#),
        "card field: {dom}"
    );
    assert!(
        dom.contains(r#"<a href="https://runbooks.example.com/db-timeout?db=orders-db.internal" class="card-button" rel="noopener noreferrer">Runbook</a>"#),
        "card button: {dom}"
    );
    // The hostile path in a card (through the agent): text in the title and the field, a
    // percent-encoded link, and no event handler anywhere on the page.
    assert!(
        dom.contains(r#"<div class="card-title">502 on &lt;http://x(http://y/autofocus/onfocus=document.title=4242//|reset-password&gt;</div>"#),
        "hostile card title: {dom}"
    );
    let handler = regex::Regex::new(r#"<[^>]*\son[a-z]+="#).unwrap();
    assert!(!handler.is_match(&dom), "an event handler attribute: {dom}");
    assert_hostile_markup_is_inert(&dom);
}

/// Texts that injected attributes into the page's links before its renderer built DOM
/// nodes, and their relatives.
const HOSTILE: &[&str] = &[
    "<http://x(http://y/autofocus/onfocus=document.title=1337//|x>",
    "<http://x(http://y/style=content-visibility:auto/oncontentvisibilityautostatechange=document.title=5//|x>",
    "<javascript:document.title=6|click>",
    "<http://a\" onmouseover=\"document.title=8|y>",
    "<img src=x onerror=document.title=9>",
    "*<b>bold</b>* `<script>document.title=7</script>`",
    "```<svg onload=document.title=10>```",
];

/// A log line that carried the injection through the agent itself, with a rule whose
/// message puts the path in bold.
fn post_through_the_agent(webhook: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(
        &log,
        "GET <http://x(http://y/autofocus/onfocus=document.title=4242//|reset-password> 502\n",
    )
    .unwrap();
    let config = dir.path().join("chattail.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {state}\nwebhooks:\n  oncall:\n    url: \"{url}\"\n\
             files:\n  - path: {log}\n    start_at: beginning\n\
             rules:\n  - name: gateway\n    match: 'GET (?P<path>.+) 502'\n    webhook: oncall\n    \
             thread_key: 'gateway'\n    message: '*502* on {{path}}'\n\
             \x20 - name: gateway-card\n    match: 'GET (?P<path>.+) 502'\n    webhook: oncall\n    \
             thread_key: 'gateway-card'\n    card:\n      title: '502 on {{path}}'\n      \
             fields:\n        - {{label: Path, value: '{{path}}'}}\n      \
             buttons:\n        - {{text: Open, url: 'https://example.com/?p={{path}}'}}\n",
            state = dir.path().join("state").display(),
            url = webhook.replace("/SANDBOX/", "/AGENT/"),
            log = log.display(),
        ),
    )
    .unwrap();
    let run = Command::new(bin())
        .args(["run", "--once", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run.stderr));
}

/// `count` texts of up to `len` characters drawn from Chat markup's characters, links and
/// schemes (a fixed seed: the same texts every run).
fn random_markup(count: usize, len: usize) -> Vec<String> {
    const PIECES: &[&str] = &[
        "*",
        "_",
        "~",
        "`",
        "```",
        "<",
        ">",
        "|",
        ":",
        "/",
        "(",
        ")",
        "\"",
        "'",
        " ",
        "=",
        "\n",
        "a",
        "x",
        "http://",
        "https://h/",
        "javascript:",
        "mailto:",
        "on",
        "title",
        "<http://",
        "|x>",
    ];
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..count)
        .map(|_| {
            let n = 1 + (next() as usize) % len;
            (0..n)
                .map(|_| PIECES[(next() as usize) % PIECES.len()])
                .collect()
        })
        .collect()
}

/// Every message body of the rendered page holds only the renderer's elements (`b`,
/// `i`, `s`, `code`, `pre`, `a`), only `href` attributes, and only http, https or mailto
/// links; the page's title and the body container are untouched.
fn assert_hostile_markup_is_inert(dom: &str) {
    assert!(
        dom.contains("<title>chattail sandbox</title>"),
        "title changed"
    );
    let tag = regex::Regex::new(r"<(/?)([A-Za-z][A-Za-z0-9-]*)([^>]*)>").unwrap();
    let attribute = regex::Regex::new(r#"([^\s=/]+)(?:="([^"]*)")?"#).unwrap();
    let mut bodies = 0;
    for piece in dom.split(r#"<div class="body">"#).skip(1) {
        bodies += 1;
        let body = piece.split("</div>").next().unwrap();
        for m in tag.captures_iter(body) {
            let name = m[2].to_ascii_lowercase();
            assert!(
                ["b", "i", "s", "code", "pre", "a"].contains(&name.as_str()),
                "element <{name}> in a message body: {body}"
            );
            for a in attribute.captures_iter(&m[3]) {
                assert_eq!(&a[1], "href", "attribute in a message body: {body}");
                let href = a.get(2).map_or("", |v| v.as_str()).to_ascii_lowercase();
                assert!(
                    ["http:", "https:", "mailto:"]
                        .iter()
                        .any(|s| href.starts_with(s)),
                    "link {href} in: {body}"
                );
            }
        }
    }
    assert!(
        bodies >= 40 + HOSTILE.len(),
        "every message drawn: {bodies}"
    );
    for payload in [
        "document.title=1337",
        "document.title=4242",
        "onerror=document.title=9",
    ] {
        assert!(dom.contains(payload), "{payload} shown as text");
    }
}
