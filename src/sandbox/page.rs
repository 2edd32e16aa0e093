//! The sandbox's web page and the JSON it polls: spaces → threads → messages, with the
//! requests each space refused (429s and errors) shown where they belong.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::State;

/// The page: plain HTML, CSS and JavaScript, served from the binary (no build step, no
/// CDN: it works offline).
pub(super) const HTML: &str = include_str!("page.html");

/// The whole state as the page draws it. Threads are in the order of their first
/// message; a refused request that named a thread key is shown in that thread.
pub(super) fn state_json(s: &State) -> String {
    let mut spaces: BTreeMap<&str, SpaceView> = BTreeMap::new();
    for m in &s.messages {
        let space = spaces.entry(&m.space).or_default();
        let index = match space.threads.iter().position(|t| t.name == m.thread) {
            Some(i) => i,
            None => {
                space.threads.push(ThreadView {
                    name: m.thread.clone(),
                    key: m.thread_key.clone(),
                    messages: Vec::new(),
                    refused: Vec::new(),
                });
                space.threads.len() - 1
            }
        };
        if space.threads[index].key.is_none() {
            space.threads[index].key = m.thread_key.clone();
        }
        space.threads[index].messages.push(json!({
            "name": m.name,
            "time": m.posted_ms,
            "text": m.text,
            "host": m.host,
            "rule": m.rules,
        }));
    }
    for r in s.requests.iter().filter(|r| r.status != 200) {
        let space = spaces.entry(&r.space).or_default();
        let refused = json!({
            "time": r.posted_ms,
            "status": r.status,
            "message": r.message,
        });
        *space.refusals.entry(r.status).or_default() += 1;
        let thread = r
            .thread_key
            .as_ref()
            .and_then(|k| space.threads.iter_mut().find(|t| t.key.as_ref() == Some(k)));
        match thread {
            Some(t) => t.refused.push(refused),
            None => space.refused.push(refused),
        }
    }
    let spaces: Vec<Value> = spaces
        .into_iter()
        .map(|(name, v)| {
            json!({
                "name": name,
                "refusals": v.refusals.iter().map(|(status, n)| json!({"status": status, "count": n})).collect::<Vec<_>>(),
                "refused": v.refused,
                "threads": v.threads.into_iter().map(|t| json!({
                    "name": t.name,
                    "key": t.key,
                    "messages": t.messages,
                    "refused": t.refused,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "spaces": spaces, "requests": s.requests.len() }).to_string()
}

#[derive(Default)]
struct SpaceView {
    threads: Vec<ThreadView>,
    refused: Vec<Value>,
    refusals: BTreeMap<u16, u64>,
}

struct ThreadView {
    name: String,
    key: Option<String>,
    messages: Vec<Value>,
    refused: Vec<Value>,
}
