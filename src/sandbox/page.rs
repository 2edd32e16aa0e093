//! The sandbox's web page and the JSON it polls. The page keeps its own model of
//! spaces → threads → messages (with the refused requests where they belong) and asks
//! only for what it has not seen: `GET /api/state?since=N` answers the messages and
//! refused requests whose sequence number is above `N`, so a poll after 20,000 messages
//! costs what is new, not everything.

use serde_json::json;

use super::State;

/// The page: plain HTML, CSS and JavaScript, served from the binary (no build step, no
/// CDN: it works offline). No inline script or style, so the page's policy can forbid
/// both; the script builds message bodies as DOM nodes, never from HTML strings.
pub(super) const HTML: &str = include_str!("page.html");
pub(super) const SCRIPT: &str = include_str!("page.js");
pub(super) const STYLE: &str = include_str!("page.css");

/// Everything after `since`: the messages and refused requests, in sequence order, with
/// what the page needs to tell the user what was dropped.
pub(super) fn state_json(s: &State, since: u64) -> String {
    // Both queues are in sequence order: skip what the page has seen from the back.
    let messages: Vec<_> = s
        .messages
        .iter()
        .rev()
        .take_while(|m| m.seq > since)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|m| {
            json!({
                "seq": m.seq,
                "space": m.space,
                "thread": m.thread,
                "key": m.thread_key,
                "name": m.name,
                "time": m.posted_ms,
                "text": m.text,
                "host": m.host,
                "rule": m.rules.as_ref().map(|r| {
                    r.split(", ").map(str::to_owned).collect::<Vec<_>>()
                }).unwrap_or_default(),
            })
        })
        .collect();
    let refused: Vec<_> = s
        .requests
        .iter()
        .rev()
        .take_while(|r| r.seq > since)
        .filter(|r| r.status != 200)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|r| {
            json!({
                "seq": r.seq,
                "space": r.space,
                "key": r.thread_key,
                "time": r.posted_ms,
                "status": r.status,
                "message": r.message,
            })
        })
        .collect();
    json!({
        "instance": s.instance,
        "seq": s.seq,
        "requests": s.received,
        "kept": {"messages": s.max_messages, "refused": s.max_requests},
        "dropped": {"messages": s.dropped_messages, "refused": s.dropped_refused},
        "messages": messages,
        "refused": refused,
    })
    .to_string()
}
