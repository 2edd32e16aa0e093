//! A mock Google Chat webhook service on loopback, following the "Mock server behaviour"
//! of the reference: authentication by key and token, request validation, the threading
//! state machine (`REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD` binds a thread key), `requestId`
//! replay, a per-space rate limit answered with 429, Google-style error bodies, and
//! injected faults (status codes, delays, dropped connections, a fault that stores the
//! message and then fails the request).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
#[allow(dead_code)] // Every field is recorded; each test reads the ones it needs.
pub struct Message {
    pub space: String,
    pub thread: String,
    pub thread_key: Option<String>,
    pub text: String,
    pub request_id: Option<String>,
    pub at: Instant,
}

#[derive(Debug, Clone)]
#[allow(dead_code)]
pub struct Request {
    pub space: String,
    pub status: u16,
    pub request_id: Option<String>,
    pub at: Instant,
}

/// A fault applied to the next request that reaches the message handler.
#[derive(Debug, Clone)]
#[allow(dead_code)]
pub enum Fault {
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    Delay(Duration),
    Drop,
    /// Store the message, then answer with this status (0: drop the connection).
    CommitThenFail(u16),
}

#[derive(Debug)]
struct Hook {
    space: String,
    key: String,
    token: String,
    /// Set when revoked: the status to answer with.
    revoked: Option<u16>,
}

#[derive(Debug, Default)]
struct State {
    hooks: Vec<Hook>,
    threads: HashMap<(String, String, String), String>,
    messages: Vec<Message>,
    requests: Vec<Request>,
    by_request_id: HashMap<(String, String), usize>,
    faults: VecDeque<Fault>,
    /// Requests per second allowed per space; `None` for no limit.
    rate: Option<f64>,
    retry_after: Option<u64>,
    next_allowed: HashMap<String, Instant>,
    outage_until: Option<Instant>,
    delay: Duration,
    next_id: u64,
}

pub struct MockChat {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _runtime: tokio::runtime::Runtime,
}

impl MockChat {
    /// Starts the mock with Chat's default limit of one request per second per space.
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(Mutex::new(State {
            rate: Some(1.0),
            ..State::default()
        }));
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::clone(&state);
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let _ = serve(stream, state).await;
                });
            }
        });
        Self {
            addr,
            state,
            _runtime: runtime,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a webhook and returns its URL.
    pub fn webhook(&self, space: &str, key: &str, token: &str) -> String {
        self.state().hooks.push(Hook {
            space: space.into(),
            key: key.into(),
            token: token.into(),
            revoked: None,
        });
        format!(
            "http://{}/v1/spaces/{space}/messages?key={key}&token={token}",
            self.addr
        )
    }

    pub fn revoke(&self, token: &str, status: Option<u16>) {
        for h in self.state().hooks.iter_mut().filter(|h| h.token == token) {
            h.revoked = status;
        }
    }

    pub fn push_fault(&self, fault: Fault) {
        self.state().faults.push_back(fault);
    }

    pub fn set_rate(&self, per_second: Option<f64>, retry_after: Option<u64>) {
        let mut s = self.state();
        s.rate = per_second;
        s.retry_after = retry_after;
    }

    /// Every request gets 503 for `length`, from now.
    pub fn outage(&self, length: Duration) {
        self.state().outage_until = Some(Instant::now() + length);
    }

    /// Every request is answered this much later (a slow Chat).
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    pub fn messages(&self) -> Vec<Message> {
        self.state().messages.clone()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state().requests.clone()
    }
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + length].to_vec();
    let delay = lock(&state).delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let fault = lock(&state).faults.front().cloned();
    if let Some(Fault::Delay(d)) = &fault {
        lock(&state).faults.pop_front();
        tokio::time::sleep(*d).await;
    }
    let reply = handle(&request_line, &body, &state);
    match reply {
        Reply::Respond {
            status,
            content_type,
            body,
            headers,
        } => {
            let mut out = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            stream.write_all(out.as_bytes()).await?;
            stream.write_all(body.as_bytes()).await?;
            stream.flush().await?;
        }
        Reply::Drop => {}
    }
    Ok(())
}

fn lock(state: &Arc<Mutex<State>>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

enum Reply {
    Respond {
        status: u16,
        content_type: &'static str,
        body: String,
        headers: Vec<(String, String)>,
    },
    Drop,
}

fn error(status: u16, canonical: &str, message: &str) -> Reply {
    Reply::Respond {
        status,
        content_type: "application/json; charset=UTF-8",
        body: json!({"error": {"code": status, "message": message, "status": canonical}})
            .to_string(),
        headers: Vec::new(),
    }
}

fn handle(request_line: &str, body: &[u8], state: &Arc<Mutex<State>>) -> Reply {
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments: Vec<&str> = path.split('/').collect();
    // ["", "v1", "spaces", SPACE, "messages"]
    let space = match (method, segments.as_slice()) {
        ("POST", ["", "v1", "spaces", space, "messages"]) => (*space).to_owned(),
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
    let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let mut s = lock(state);
    let now = Instant::now();
    let record = |s: &mut State, status: u16| {
        s.requests.push(Request {
            space: space.clone(),
            status,
            request_id: params.get("requestId").cloned(),
            at: now,
        });
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
            record(&mut s, 400);
            return error(
                400,
                "INVALID_ARGUMENT",
                &format!(
                    "Invalid JSON payload received. Unknown name \"{name}\": Cannot bind query parameter."
                ),
            );
        }
    }
    let Some(key) = params.get("key") else {
        record(&mut s, 403);
        return error(
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
        );
    };
    if !s.hooks.iter().any(|h| &h.key == key) {
        record(&mut s, 400);
        return error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
        );
    }
    let token = params.get("token").cloned().unwrap_or_default();
    let Some(hook) = s
        .hooks
        .iter()
        .find(|h| h.space == space && h.token == token && &h.key == key)
    else {
        record(&mut s, 403);
        return error(
            403,
            "PERMISSION_DENIED",
            "The API is called without a valid token. Instructions on how to use incoming webhooks can be found at https://developers.google.com/chat/how-tos/webhooks",
        );
    };
    if let Some(status) = hook.revoked {
        record(&mut s, status);
        return error(status, "NOT_FOUND", "Requested entity was not found.");
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
        record(&mut s, 400);
        return error(
            400,
            "INVALID_ARGUMENT",
            "Invalid value at 'message_reply_option'",
        );
    }
    if body.len() > 32_000 {
        record(&mut s, 400);
        return error(400, "INVALID_ARGUMENT", "Message too large.");
    }
    let Ok(message) = serde_json::from_slice::<Value>(body) else {
        record(&mut s, 400);
        return error(
            400,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received. Unexpected token.",
        );
    };
    let Some(fields) = message.as_object() else {
        record(&mut s, 400);
        return error(
            400,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received. Unexpected token.",
        );
    };
    for name in fields.keys() {
        if ![
            "text",
            "cardsV2",
            "cards_v2",
            "cards",
            "fallbackText",
            "thread",
            "accessoryWidgets",
        ]
        .contains(&name.as_str())
        {
            record(&mut s, 400);
            return error(
                400,
                "INVALID_ARGUMENT",
                &format!(
                    "Invalid JSON payload received. Unknown name \"{name}\" at 'message': Cannot find field."
                ),
            );
        }
    }
    let text = fields
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if text.is_empty() {
        record(&mut s, 400);
        return error(400, "INVALID_ARGUMENT", "Message cannot be empty.");
    }
    if text.chars().count() > 4096 {
        record(&mut s, 400);
        return error(
            400,
            "INVALID_ARGUMENT",
            "Message is longer than 4096 characters",
        );
    }
    // Rate limit: one request per interval per space; throttled requests store nothing.
    if let Some(rate) = s.rate {
        let allowed = s.next_allowed.get(&space).copied().unwrap_or(now);
        if now < allowed {
            record(&mut s, 429);
            let mut reply = error(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
            );
            if let (Some(after), Reply::Respond { headers, .. }) = (s.retry_after, &mut reply) {
                headers.push(("retry-after".into(), after.to_string()));
            }
            return reply;
        }
        s.next_allowed
            .insert(space.clone(), now + Duration::from_secs_f64(1.0 / rate));
    }
    if s.outage_until.is_some_and(|t| now < t) {
        record(&mut s, 503);
        return error(503, "UNAVAILABLE", "The service is currently unavailable.");
    }
    let fault = s.faults.pop_front();
    match &fault {
        Some(Fault::Status {
            status,
            retry_after,
        }) => {
            let status = *status;
            record(&mut s, status);
            let mut reply = error(status, "UNAVAILABLE", "Injected failure.");
            if let (Some(after), Reply::Respond { headers, .. }) = (retry_after, &mut reply) {
                headers.push(("retry-after".into(), after.to_string()));
            }
            return reply;
        }
        Some(Fault::Drop) => {
            record(&mut s, 0);
            return Reply::Drop;
        }
        _ => {}
    }
    let request_id = params.get("requestId").cloned();
    if let Some(rid) = &request_id
        && let Some(&index) = s.by_request_id.get(&(space.clone(), rid.clone()))
    {
        // A repeated request id returns the stored message; nothing new is stored.
        let stored = s.messages[index].clone();
        record(&mut s, 200);
        return ok_reply(&stored);
    }
    let thread_key = message
        .pointer("/thread/threadKey")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let thread = match (option, &thread_key) {
        ("REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD", Some(k)) => {
            let id = s.next_id;
            s.threads
                .entry((space.clone(), token.clone(), k.clone()))
                .or_insert_with(|| format!("spaces/{space}/threads/T{id}"))
                .clone()
        }
        _ => format!("spaces/{space}/threads/T{}", s.next_id),
    };
    s.next_id += 1;
    let stored = Message {
        space: space.clone(),
        thread,
        thread_key,
        text,
        request_id: request_id.clone(),
        at: now,
    };
    s.messages.push(stored.clone());
    let index = s.messages.len() - 1;
    if let Some(rid) = request_id {
        s.by_request_id.insert((space.clone(), rid), index);
    }
    if let Some(Fault::CommitThenFail(status)) = fault {
        record(&mut s, status);
        if status == 0 {
            return Reply::Drop;
        }
        return error(
            status,
            "UNAVAILABLE",
            "The service is currently unavailable.",
        );
    }
    record(&mut s, 200);
    ok_reply(&stored)
}

fn ok_reply(m: &Message) -> Reply {
    Reply::Respond {
        status: 200,
        content_type: "application/json; charset=UTF-8",
        body: json!({
            "name": format!("{}/messages/M{}", m.space, m.thread.len()),
            "text": m.text,
            "thread": {"name": m.thread, "threadKey": m.thread_key},
        })
        .to_string(),
        headers: Vec::new(),
    }
}
