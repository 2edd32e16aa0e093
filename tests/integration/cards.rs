//! Cards through the agent: what Chat receives for the example's card rule (a snapshot of
//! the posted `cardsV2` and text), hostile captures landing safely in a card's header,
//! fields and links, and a card Chat refuses posted at once as its text.

use std::fs;
use std::process::Command;
use std::time::Duration;

use crate::agent_support::{Agent, free_port, open_chat, wait_for};
use crate::mock_chat::MockChat;
use crate::support::{bin, http, repo, text};
use chattail::sandbox::Fault;

/// The example config, with a fixed host name and absolute paths, run once against `url`.
fn run_example_once(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let example = fs::read_to_string(repo().join("rules.example.yaml")).unwrap();
    let fixtures = repo().join("fixtures");
    let config = example.replace("fixtures/*.log", &format!("{}/*.log", fixtures.display()))
        + "\nhost: web-1\n";
    let path = dir.path().join("rules.yaml");
    fs::write(&path, config).unwrap();
    let out = Command::new(bin())
        .args(["run", "--once", "--config"])
        .arg(&path)
        .env("CHATTAIL_WEBHOOK_URL", url)
        .env("CHATTAIL_STATE_DIR", dir.path().join("state"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

fn carded(chat: &MockChat) -> Vec<chattail::sandbox::Message> {
    chat.messages()
        .into_iter()
        .filter(|m| m.cards.is_some())
        .collect()
}

#[test]
fn the_example_rules_card_is_posted_as_chat_expects_it() {
    let (chat, url) = open_chat();
    run_example_once(&url);
    let cards = carded(&chat);
    assert!(!cards.is_empty(), "the db-timeout rule posts cards");
    let first = cards
        .iter()
        .find(|m| m.thread_key.as_deref() == Some("db-timeout-orders-db.internal"))
        .expect("orders-db's card");
    let posted = serde_json::json!({
        "text": first.text,
        "cardsV2": first.cards,
    });
    let shown = serde_json::to_string_pretty(&posted)
        .unwrap()
        .replace(&repo().display().to_string(), "<repo>");
    insta::assert_snapshot!("example_card", shown);
    // A card is never merged: each carded notification is one post of its own.
    for m in &cards {
        assert_eq!(
            m.cards.as_ref().and_then(|c| c.as_array()).map(Vec::len),
            Some(1)
        );
        assert!(!m.text.contains("\n\n"), "a merged post: {}", m.text);
    }
}

const HOSTILE_RULE: &str = "  - name: gateway\n    match: 'upstream (?P<up>.+) failed'\n    webhook: oncall\n    thread_key: 'gw'\n    card:\n      title: 'Upstream {up}'\n      fields:\n        - {label: Upstream, value: '{up}'}\n      buttons:\n        - {text: Logs, url: 'https://logs.example.com/search?q={up}&h={host}'}\n";

#[test]
fn hostile_captures_land_safely_in_the_header_a_field_and_a_link() {
    let (chat, url) = open_chat();
    let mut agent = Agent::with_sections(
        &url,
        "  - path: '{logs}/*.log'\n    start_at: beginning\n",
        HOSTILE_RULE,
    );
    fs::create_dir_all(agent.log().parent().unwrap()).unwrap();
    // A capture with a newline needs a multiline event: `pipeline::card`'s unit test has it.
    fs::write(
        agent.log(),
        "upstream \"a<b>&c/d?e#f@evil.example.com\" failed\n",
    )
    .unwrap();
    agent.start();
    wait_for("the card", Duration::from_secs(30), || {
        !carded(&chat).is_empty()
    });
    agent.terminate();
    let m = &carded(&chat)[0];
    let card = &m.cards.as_ref().unwrap()[0]["card"];
    let capture = "\"a<b>&c/d?e#f@evil.example.com\"";
    // The header is plain text: shown as it is, nothing to interpret.
    assert_eq!(card["header"]["title"], format!("Upstream {capture}"));
    // A field is Chat's HTML subset: escaped.
    assert_eq!(
        card["sections"][0]["widgets"][0]["decoratedText"]["text"],
        "&quot;a&lt;b&gt;&amp;c/d?e#f@evil.example.com&quot;"
    );
    // A link: the capture is percent-encoded, so scheme, host and query stay the rule's.
    let link = card["sections"][1]["widgets"][0]["buttonList"]["buttons"][0]["onClick"]["openLink"]
        ["url"]
        .as_str()
        .unwrap();
    assert!(
        link.starts_with(
            "https://logs.example.com/search?q=%22a%3Cb%3E%26c%2Fd%3Fe%23f%40evil.example.com%22&h="
        ),
        "{link}"
    );
    let parsed = url::Url::parse(link).unwrap();
    assert_eq!(parsed.host_str(), Some("logs.example.com"));
    let query: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    assert_eq!(query[0], ("q".to_owned(), capture.to_owned()));
    assert_eq!(query.len(), 2, "{query:?}");
}

#[test]
fn a_card_chat_refuses_is_posted_at_once_as_its_text() {
    let (chat, url) = open_chat();
    let port = free_port();
    let mut agent = Agent::with_sections(
        &url,
        "  - path: '{logs}/*.log'\n    start_at: beginning\n",
        HOSTILE_RULE,
    );
    let mut yaml = fs::read_to_string(&agent.config).unwrap();
    yaml.push_str(&format!("admin:\n  listen: 127.0.0.1:{port}\n"));
    fs::write(&agent.config, yaml).unwrap();
    fs::create_dir_all(agent.log().parent().unwrap()).unwrap();
    // Chat refuses the first request (the card) with a 400.
    chat.push_fault(Fault::Status {
        status: 400,
        retry_after: None,
    });
    fs::write(agent.log(), "upstream db-1 failed\n").unwrap();
    agent.start();
    wait_for("the text alone", Duration::from_secs(30), || {
        !chat.messages().is_empty()
    });
    let messages = chat.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(messages[0].cards.is_none());
    assert_eq!(messages[0].text, "Upstream db-1");
    assert_eq!(messages[0].thread_key.as_deref(), Some("gw"));
    let metrics = http(&format!("127.0.0.1:{port}"), "GET", "/metrics", "").2;
    assert!(
        metrics.contains("chattail_card_fallbacks_total{rule=\"gateway\"} 1"),
        "{metrics}"
    );
    // The webhook was not parked: a 400 about a card is about that card.
    let health = http(&format!("127.0.0.1:{port}"), "GET", "/healthz", "");
    assert_eq!(health.0, 200, "{}", health.2);
    agent.terminate();
    assert!(
        agent
            .stderr()
            .contains("Chat refused the rule's card; its alerts are posted as text"),
        "{}",
        agent.stderr()
    );
}
