//! The sandbox's web page and the JSON it polls. The page keeps its own model of
//! spaces → threads → messages (with the refused requests where they belong) and asks
//! only for what it has not seen: `GET /api/state?since=N` answers the messages and
//! refused requests whose sequence number is above `N`, so a poll after 20,000 messages
//! costs what is new, not everything.

use super::State;

/// The page: plain HTML, CSS and JavaScript, served from the binary (no build step, no
/// CDN: it works offline). No inline script or style, so the page's policy can forbid
/// both; the script builds message bodies as DOM nodes, never from HTML strings.
pub(super) const HTML: &str = include_str!("page.html");
pub(super) const SCRIPT: &str = include_str!("page.js");
pub(super) const STYLE: &str = include_str!("page.css");

/// A message as the page gets it (borrowed: the answer is written straight from the
/// state, without a copy of every text).
#[derive(serde::Serialize)]
struct MessageView<'a> {
    seq: u64,
    space: &'a str,
    thread: &'a str,
    key: Option<&'a str>,
    name: &'a str,
    time: i64,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cards: Option<&'a serde_json::Value>,
    host: Option<&'a str>,
    rule: Vec<&'a str>,
}

#[derive(serde::Serialize)]
struct RefusedView<'a> {
    seq: u64,
    space: &'a str,
    key: Option<&'a str>,
    time: i64,
    status: u16,
    message: &'a str,
}

#[derive(serde::Serialize)]
struct Counts {
    messages: u64,
    refused: u64,
}

#[derive(serde::Serialize)]
struct StateView<'a> {
    instance: &'a str,
    seq: u64,
    requests: u64,
    kept: Counts,
    dropped: Counts,
    messages: Vec<MessageView<'a>>,
    refused: Vec<RefusedView<'a>>,
}

/// Everything after `since`: the messages and refused requests, in sequence order, with
/// what the page needs to tell the user what was dropped.
pub(super) fn state_json(s: &State, since: u64) -> String {
    // Both queues are in sequence order: what the page has not seen is at their back.
    let new_messages = s.messages.len()
        - s.messages
            .iter()
            .rev()
            .take_while(|m| m.seq > since)
            .count();
    let new_requests = s.requests.len()
        - s.requests
            .iter()
            .rev()
            .take_while(|r| r.seq > since)
            .count();
    let view = StateView {
        instance: &s.instance,
        seq: s.seq,
        requests: s.received,
        kept: Counts {
            messages: s.max_messages as u64,
            refused: s.max_requests as u64,
        },
        dropped: Counts {
            messages: s.dropped_messages,
            refused: s.dropped_refused,
        },
        messages: s
            .messages
            .range(new_messages..)
            .map(|m| MessageView {
                seq: m.seq,
                space: &m.space,
                thread: &m.thread,
                key: m.thread_key.as_deref(),
                name: &m.name,
                time: m.posted_ms,
                text: &m.text,
                cards: m.cards.as_ref(),
                host: m.host.as_deref(),
                rule: m
                    .rules
                    .as_deref()
                    .map(|r| r.split(", ").collect())
                    .unwrap_or_default(),
            })
            .collect(),
        refused: s
            .requests
            .range(new_requests..)
            .filter(|r| r.status != 200)
            .map(|r| RefusedView {
                seq: r.seq,
                space: &r.space,
                key: r.thread_key.as_deref(),
                time: r.posted_ms,
                status: r.status,
                message: &r.message,
            })
            .collect(),
    };
    serde_json::to_string(&view).unwrap_or_else(|_| "{}".to_owned())
}
