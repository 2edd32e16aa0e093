//! What the stand-in answers to a webhook request, as ../shared/reference describes
//! Google Chat: authentication by key and token, request validation, the threading
//! state machine (`REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD` binds a thread key), `requestId`
//! replay, a per-space quota answered with 429, Chat's error bodies and text limit.
//! Everything here works on [`State`] under its lock; no I/O.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Fault, Hook, Message, Request, State};

/// The most characters Chat takes in a message's text.
const MAX_TEXT_CHARS: usize = 4096;
/// The most bytes of a request body the stand-in reads.
const MAX_BODY_BYTES: usize = 32_000;

/// An answer to one request.
pub(super) enum Reply {
    Respond {
        status: u16,
        content_type: &'static str,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// Close the connection without an answer (a lost reply).
    Drop,
}

pub(super) fn error(status: u16, canonical: &str, message: &str) -> Reply {
    error_body(status, canonical, message, None)
}

/// Chat's error shape: `{"error": {"code", "message", "status", "details"?}}`.
fn error_body(status: u16, canonical: &str, message: &str, details: Option<Value>) -> Reply {
    let mut error = json!({"code": status, "message": message, "status": canonical});
    if let Some(details) = details {
        error["details"] = details;
    }
    Reply::Respond {
        status,
        content_type: "application/json; charset=UTF-8",
        body: json!({ "error": error }).to_string(),
        headers: Vec::new(),
    }
}

/// A request to `POST /v1/spaces/{space}/messages` (or anything else under `/v1/`).
pub(super) struct Incoming<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub body: &'a [u8],
    /// The host and rules chattail labels its posts with, if any.
    pub host: Option<&'a str>,
    pub rules: Option<&'a str>,
}

/// What a webhook request is answered, and what it changes in `s`.
pub(super) fn handle(request: &Incoming<'_>, s: &mut State, now: Instant) -> Reply {
    let segments: Vec<&str> = request.path.split('/').collect();
    let space = match (request.method, segments.as_slice()) {
        ("POST", ["", "v1", "spaces", space, "messages"]) if !space.is_empty() => {
            (*space).to_owned()
        }
        ("POST", ["", "v1", "spaces", _, "webhooks"]) => {
            return error(400, "INVALID_ARGUMENT", "Legacy path for creating message.");
        }
        ("GET" | "PATCH" | "PUT" | "DELETE", ["", "v1", "spaces", _, "messages", _]) => {
            return error(
                403,
                "PERMISSION_DENIED",
                "The caller does not have permission",
            );
        }
        _ => {
            return Reply::Respond {
                status: 404,
                content_type: "text/html",
                body: "<h1>Not Found</h1><h2>Error 404</h2>".into(),
                headers: Vec::new(),
            };
        }
    };
    let params: HashMap<String, String> = url::form_urlencoded::parse(request.query.as_bytes())
        .into_owned()
        .collect();
    let mut record = Recorder {
        space: &space,
        request_id: params.get("requestId").cloned(),
        thread_key: None,
        now,
    };
    for name in params.keys() {
        if ![
            "key",
            "token",
            "messageReplyOption",
            "requestId",
            "threadKey",
            "messageId",
        ]
        .contains(&name.as_str())
        {
            return record.error(
                s,
                400,
                "INVALID_ARGUMENT",
                &format!(
                    "Invalid JSON payload received. Unknown name \"{name}\": Cannot bind query parameter."
                ),
            );
        }
    }
    let Some(key) = params.get("key").filter(|k| !k.is_empty()) else {
        return record.error(
            s,
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
        );
    };
    let token = params.get("token").cloned().unwrap_or_default();
    let welcome = match &s.credentials {
        Some((k, t)) => k == key && *t == token,
        None => !token.is_empty(),
    };
    if s.open && welcome && !s.hooks.iter().any(|h| h.space == space && &h.key == key) {
        // The sandbox: a space and its webhook come to be at their first use.
        s.hooks.push(Hook {
            space: space.clone(),
            key: key.clone(),
            token: token.clone(),
            revoked: None,
        });
    }
    if !s.hooks.iter().any(|h| &h.key == key) {
        let details = json!([{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "chat.googleapis.com"},
        }]);
        return record.error_with(
            s,
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            details,
        );
    }
    let Some(hook) = s
        .hooks
        .iter()
        .find(|h| h.space == space && h.token == token && &h.key == key)
    else {
        return record.error(
            s,
            403,
            "PERMISSION_DENIED",
            "The API is called without a valid token. Instructions on how to use incoming webhooks can be found at https://developers.google.com/chat/how-tos/webhooks",
        );
    };
    if let Some(status) = hook.revoked {
        return record.error(s, status, "NOT_FOUND", "Requested entity was not found.");
    }
    let option = params
        .get("messageReplyOption")
        .map(String::as_str)
        .unwrap_or("MESSAGE_REPLY_OPTION_UNSPECIFIED");
    if ![
        "MESSAGE_REPLY_OPTION_UNSPECIFIED",
        "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD",
        "REPLY_MESSAGE_OR_FAIL",
    ]
    .contains(&option)
    {
        return record.error(
            s,
            400,
            "INVALID_ARGUMENT",
            "Invalid value at 'message_reply_option'",
        );
    }
    if request.body.len() > MAX_BODY_BYTES {
        return record.error(s, 400, "INVALID_ARGUMENT", "Message too large.");
    }
    let Some(message) = serde_json::from_slice::<Value>(request.body)
        .ok()
        .filter(Value::is_object)
    else {
        return record.error(
            s,
            400,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received. Unexpected token.",
        );
    };
    // The body's key (either spelling) wins over the query's.
    let thread_key = ["/thread/threadKey", "/thread/thread_key"]
        .iter()
        .find_map(|p| message.pointer(p).and_then(Value::as_str))
        .or(params.get("threadKey").map(String::as_str))
        .map(str::to_owned);
    let thread_name = message
        .pointer("/thread/name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    record.thread_key = thread_key.clone();
    if let Some(name) = message.as_object().and_then(|fields| {
        fields.keys().find(|name| {
            ![
                "text",
                "cardsV2",
                "cards_v2",
                "cards",
                "fallbackText",
                "thread",
                "accessoryWidgets",
            ]
            .contains(&name.as_str())
        })
    }) {
        let text = format!(
            "Invalid JSON payload received. Unknown name \"{name}\" at 'message': Cannot find field."
        );
        let details = json!([{
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": "message", "description": text}],
        }]);
        return record.error_with(s, 400, "INVALID_ARGUMENT", &text, details);
    }
    if let Some(name) = &thread_name {
        let prefix = format!("spaces/{space}/threads/");
        let valid = name
            .strip_prefix(&prefix)
            .is_some_and(|id| !id.is_empty() && !id.contains('/'));
        if !valid {
            return record.error(
                s,
                400,
                "INVALID_ARGUMENT",
                "The request contains an invalid thread resource name",
            );
        }
    }
    let message_id = params.get("messageId").cloned();
    if let Some(id) = &message_id {
        let valid = id.len() <= 63
            && id.strip_prefix("client-").is_some_and(|rest| {
                !rest.is_empty()
                    && rest
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        if !valid {
            return record.error(
                s,
                400,
                "INVALID_ARGUMENT",
                "Invalid message ID: it must start with `client-`, contain only lowercase letters, numbers and hyphens, and be at most 63 characters.",
            );
        }
    }
    let text = message
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let has_cards = ["cardsV2", "cards_v2", "cards"].iter().any(|f| {
        message
            .get(f)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    });
    if text.is_empty() && !has_cards {
        return record.error(s, 400, "INVALID_ARGUMENT", "Message cannot be empty.");
    }
    let cards = match cards_v2(&message) {
        Ok(cards) => cards,
        Err(why) => return record.error(s, 400, "INVALID_ARGUMENT", &why),
    };
    if text.chars().count() > MAX_TEXT_CHARS {
        return record.error(
            s,
            400,
            "INVALID_ARGUMENT",
            "Message is longer than 4096 characters",
        );
    }
    // The quota: one request per interval per space; a throttled request stores nothing.
    if let Some(rate) = s.rate {
        let allowed = s.next_allowed.get(&space).copied().unwrap_or(now);
        if now < allowed {
            let retry_after = s.retry_after;
            let mut reply = record.error(
                s,
                429,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
            );
            if let (Some(after), Reply::Respond { headers, .. }) = (retry_after, &mut reply) {
                headers.push(("retry-after".into(), after.to_string()));
            }
            return reply;
        }
        s.next_allowed
            .insert(space.clone(), now + Duration::from_secs_f64(1.0 / rate));
    }
    if s.outage_until.is_some_and(|t| now < t) {
        return record.error(
            s,
            503,
            "UNAVAILABLE",
            "The service is currently unavailable.",
        );
    }
    let fault = s.faults.pop_front();
    match &fault {
        Some(Fault::Status {
            status,
            retry_after,
        }) => {
            let mut reply = record.error(s, *status, "UNAVAILABLE", "Injected failure.");
            if let (Some(after), Reply::Respond { headers, .. }) = (retry_after, &mut reply) {
                headers.push(("retry-after".into(), after.to_string()));
            }
            return reply;
        }
        Some(Fault::Drop) => {
            record.push(s, 0, "connection dropped");
            return Reply::Drop;
        }
        _ => {}
    }
    let request_id = params.get("requestId").cloned();
    if let Some(rid) = &request_id
        && let Some(stored) = s
            .by_request_id
            .get(&(space.clone(), rid.clone()))
            .and_then(|seq| s.message(*seq))
            .cloned()
    {
        // A repeated request id returns the stored message; nothing new is stored.
        record.push(s, 200, "");
        return ok_reply(&stored);
    }
    if let Some(id) = &message_id
        && s.messages
            .iter()
            .any(|m| m.space == space && m.client_id.as_ref() == Some(id))
    {
        return record.error(
            s,
            409,
            "ALREADY_EXISTS",
            &format!("Message with ID {id} already exists."),
        );
    }
    // The threading state machine, per space and webhook token, keyed by thread key.
    let known_name = thread_name
        .as_ref()
        .filter(|n| s.messages.iter().any(|m| &m.thread == *n))
        .cloned();
    let bound = thread_key
        .as_ref()
        .and_then(|k| s.threads.get(&(space.clone(), token.clone(), k.clone())))
        .cloned();
    let fresh = format!("spaces/{space}/threads/T{}", s.next_id);
    let thread = match option {
        "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD" | "REPLY_MESSAGE_OR_FAIL" => {
            match known_name.or(bound) {
                Some(existing) => existing,
                None if option == "REPLY_MESSAGE_OR_FAIL" => {
                    return record.error(s, 404, "NOT_FOUND", "Requested entity was not found.");
                }
                None => {
                    if let Some(k) = &thread_key {
                        s.threads
                            .insert((space.clone(), token.clone(), k.clone()), fresh.clone());
                    }
                    fresh
                }
            }
        }
        // Unspecified: always a new thread; the key is ignored and not bound.
        _ => fresh,
    };
    let name = match &message_id {
        Some(id) => format!("spaces/{space}/messages/{id}"),
        None => format!("spaces/{space}/messages/M{}", s.next_id),
    };
    s.next_id += 1;
    let stored = Message {
        seq: 0,
        name,
        space: space.clone(),
        thread,
        thread_key,
        text,
        cards,
        request_id: request_id.clone(),
        client_id: message_id,
        host: request.host.map(str::to_owned),
        rules: request.rules.map(str::to_owned),
        at: now,
        posted_ms: crate::clock::unix_now_ms(),
    };
    s.store_message(stored.clone());
    if let Some(Fault::CommitThenFail(status)) = fault {
        if status == 0 {
            record.push(s, 0, "stored, then the connection dropped");
            return Reply::Drop;
        }
        return record.error(
            s,
            status,
            "UNAVAILABLE",
            "The service is currently unavailable.",
        );
    }
    record.push(s, 200, "");
    ok_reply(&stored)
}

/// The widgets a card section may hold (Chat's `Widget` message); any other name is an
/// unknown field, which Chat refuses.
const CARD_WIDGETS: &[&str] = &[
    "decoratedText",
    "textParagraph",
    "buttonList",
    "divider",
    "image",
    "textInput",
    "selectionInput",
    "dateTimePicker",
    "grid",
    "columns",
    "chipList",
    "horizontalAlignment",
];

/// The most bytes one card may take (Chat: "Maximum size is 32 KB").
const MAX_CARD_BYTES: usize = 32 * 1024;

/// A message's `cardsV2` (or `cards_v2`), checked as Chat checks it: a list of entries
/// with a `card` each, a `cardId` on every entry of a message with several, each card at
/// most 32 KB, only known widgets, and link buttons that open `http(s)` URLs. The reasons
/// are the sandbox's wording where Chat's is unconfirmed.
fn cards_v2(message: &Value) -> Result<Option<Value>, String> {
    let Some((field, cards)) = ["cardsV2", "cards_v2"]
        .iter()
        .find_map(|f| message.get(*f).map(|v| (*f, v)))
    else {
        return Ok(None);
    };
    let Some(list) = cards.as_array() else {
        return Err(format!(
            "Invalid JSON payload received. Invalid value at 'message.{field}': a list of cards was expected."
        ));
    };
    if list.len() > 1 && list.iter().any(|c| c.get("cardId").is_none()) {
        return Err("Each card needs a cardId when a message has more than one card.".to_owned());
    }
    for (i, entry) in list.iter().enumerate() {
        let Some(card) = entry.get("card").filter(|c| c.is_object()) else {
            return Err(format!(
                "Invalid card at 'message.{field}[{i}]': `card` is required."
            ));
        };
        if card.to_string().len() > MAX_CARD_BYTES {
            return Err(format!(
                "Card at 'message.{field}[{i}]' is larger than 32 KB."
            ));
        }
        let sections = card.get("sections").and_then(Value::as_array);
        for (j, section) in sections.into_iter().flatten().enumerate() {
            let widgets = section.get("widgets").and_then(Value::as_array);
            for (k, widget) in widgets.into_iter().flatten().enumerate() {
                let at = format!("message.{field}[{i}].card.sections[{j}].widgets[{k}]");
                let Some(fields) = widget.as_object() else {
                    return Err(format!(
                        "Invalid JSON payload received. Invalid value at '{at}'."
                    ));
                };
                if let Some(name) = fields.keys().find(|k| !CARD_WIDGETS.contains(&k.as_str())) {
                    return Err(format!(
                        "Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find field."
                    ));
                }
                let buttons = widget
                    .pointer("/buttonList/buttons")
                    .and_then(Value::as_array);
                for button in buttons.into_iter().flatten() {
                    let url = button
                        .pointer("/onClick/openLink/url")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let lower = url.to_ascii_lowercase();
                    if !(lower.starts_with("https://") || lower.starts_with("http://")) {
                        return Err(format!(
                            "Invalid URL at '{at}.buttonList': only http and https links open."
                        ));
                    }
                }
            }
        }
    }
    Ok(Some(cards.clone()))
}

/// Records each request with what it was answered.
struct Recorder<'a> {
    space: &'a str,
    request_id: Option<String>,
    thread_key: Option<String>,
    now: Instant,
}

impl Recorder<'_> {
    fn push(&self, s: &mut State, status: u16, message: &str) {
        s.store_request(Request {
            seq: 0,
            space: self.space.to_owned(),
            status,
            request_id: self.request_id.clone(),
            thread_key: self.thread_key.clone(),
            message: message.to_owned(),
            at: self.now,
            posted_ms: crate::clock::unix_now_ms(),
        });
    }

    fn error(&self, s: &mut State, status: u16, canonical: &str, message: &str) -> Reply {
        self.push(s, status, &format!("{canonical}: {message}"));
        error(status, canonical, message)
    }

    fn error_with(
        &self,
        s: &mut State,
        status: u16,
        canonical: &str,
        message: &str,
        details: Value,
    ) -> Reply {
        self.push(s, status, &format!("{canonical}: {message}"));
        error_body(status, canonical, message, Some(details))
    }
}

fn ok_reply(m: &Message) -> Reply {
    Reply::Respond {
        status: 200,
        content_type: "application/json; charset=UTF-8",
        body: {
            let mut body = json!({
                "name": m.name,
                "text": m.text,
                "thread": {"name": m.thread},
            });
            if let Some(key) = &m.thread_key {
                body["thread"]["threadKey"] = json!(key);
            }
            if let Some(id) = &m.client_id {
                body["clientAssignedMessageId"] = json!(id);
            }
            if let Some(cards) = &m.cards {
                body["cardsV2"] = cards.clone();
            }
            body.to_string()
        },
        headers: Vec::new(),
    }
}
