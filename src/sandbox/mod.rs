//! `chattail sandbox`: a local stand-in for Google Chat's incoming webhooks, with a web
//! page that shows its spaces, threads and messages as Chat would.
//!
//! It is the one stand-in of the project: the integration tests and the benches run
//! against this code, so what users see in the sandbox is what the tests check. Tests
//! also reach a fault-injection interface (`push_fault`, `set_rate`, `outage`,
//! `set_delay`, `revoke`) that the command does not expose.
//!
//! - `chat.rs`: what a webhook request is answered (the reference's behaviour).
//! - `routes.rs`: the HTTP server (axum on a bounded listener), its small handlers and
//!   the guard every request passes (the `Host` check, cross-site writes refused).
//! - `page.rs`, `page.html`, `page.js`, `page.css`: the page and the JSON it polls.
//!
//! What it keeps is bounded: the newest messages and requests up to a cap each (the
//! oldest are dropped and counted, and the page says so).

mod chat;
mod page;
mod routes;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A message Chat stored.
#[derive(Debug, Clone)]
pub struct Message {
    /// Its place in the order of everything the sandbox stored (messages and requests
    /// share one sequence), for the page's incremental polls.
    pub seq: u64,
    /// `spaces/S/messages/M…`.
    pub name: String,
    pub space: String,
    /// `spaces/S/threads/T…`.
    pub thread: String,
    pub thread_key: Option<String>,
    pub text: String,
    /// Its `cardsV2`, as posted (validated as Chat does).
    pub cards: Option<serde_json::Value>,
    pub request_id: Option<String>,
    /// The `messageId` it was posted with, if any.
    pub client_id: Option<String>,
    /// The host and rules chattail labelled the post with (`x-chattail-host`,
    /// `x-chattail-rule`), if any.
    pub host: Option<String>,
    pub rules: Option<String>,
    pub at: Instant,
    /// When it was stored, in Unix milliseconds (for the page).
    pub posted_ms: i64,
}

/// A request to a space's webhook and its answer.
#[derive(Debug, Clone)]
pub struct Request {
    /// Its place in the sandbox's one sequence (see [`Message::seq`]).
    pub seq: u64,
    pub space: String,
    /// The status answered; 0 when the connection was dropped.
    pub status: u16,
    pub request_id: Option<String>,
    /// The thread key the request asked for, when its body could be read.
    pub thread_key: Option<String>,
    /// `STATUS: message` of an error answer; empty for a success.
    pub message: String,
    pub at: Instant,
    pub posted_ms: i64,
}

/// A fault applied to the next request that reaches the message handler (tests only).
#[derive(Debug, Clone)]
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
    /// Any space is a webhook at its first use (the command); otherwise only registered
    /// webhooks exist (tests). With `credentials`, only that key and token are accepted
    /// (a sandbox reachable from other hosts); without, any.
    open: bool,
    credentials: Option<(String, String)>,
    hooks: Vec<Hook>,
    threads: HashMap<(String, String, String), String>,
    messages: VecDeque<Message>,
    requests: VecDeque<Request>,
    /// The caps on `messages` and `requests`, and how many of each were dropped (of
    /// requests, those that were refused: the ones the page shows).
    max_messages: usize,
    max_requests: usize,
    dropped_messages: u64,
    dropped_refused: u64,
    /// The last sequence number given to a message or a request.
    seq: u64,
    /// Webhook requests received, kept or not.
    received: u64,
    /// Random per sandbox process: the page starts again when it changes.
    instance: String,
    /// A stored message's `seq` by (space, requestId), for replays.
    by_request_id: HashMap<(String, String), u64>,
    faults: VecDeque<Fault>,
    /// Requests per second allowed per space; `None` for no limit.
    rate: Option<f64>,
    retry_after: Option<u64>,
    next_allowed: HashMap<String, Instant>,
    outage_until: Option<Instant>,
    delay: Duration,
    next_id: u64,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// Stores a message (its `seq` is set here), dropping the oldest beyond the cap.
    /// Returns its `seq`.
    fn store_message(&mut self, mut m: Message) -> u64 {
        self.seq += 1;
        m.seq = self.seq;
        if let Some(rid) = &m.request_id {
            self.by_request_id
                .insert((m.space.clone(), rid.clone()), m.seq);
        }
        self.messages.push_back(m);
        while self.messages.len() > self.max_messages.max(1) {
            if let Some(old) = self.messages.pop_front() {
                self.dropped_messages += 1;
                if let Some(rid) = old.request_id {
                    let key = (old.space, rid);
                    if self.by_request_id.get(&key) == Some(&old.seq) {
                        self.by_request_id.remove(&key);
                    }
                }
            }
        }
        self.seq
    }

    /// The stored message with `seq`, if it is still kept.
    fn message(&self, seq: u64) -> Option<&Message> {
        let first = self.messages.front()?.seq;
        let index = usize::try_from(seq.checked_sub(first)?).ok()?;
        // Sequence numbers are shared with requests, so the index is an upper bound.
        self.messages
            .range(..=index.min(self.messages.len().saturating_sub(1)))
            .rev()
            .find(|m| m.seq == seq)
    }

    /// Records a request and its answer, dropping the oldest beyond the cap.
    fn store_request(&mut self, mut r: Request) {
        self.seq += 1;
        self.received += 1;
        r.seq = self.seq;
        self.requests.push_back(r);
        while self.requests.len() > self.max_requests.max(1) {
            if let Some(old) = self.requests.pop_front()
                && old.status != 200
            {
                self.dropped_refused += 1;
            }
        }
    }
}

/// How a sandbox behaves.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Requests per second each space accepts (Chat: 1); `None` for no limit.
    pub rate: Option<f64>,
    /// Any space is accepted at its first use.
    pub open: bool,
    /// With `open`: only this key and token are accepted (a sandbox other hosts can
    /// reach); `None`: any.
    pub credentials: Option<(String, String)>,
    /// Serve the web page at `/`.
    pub page: bool,
    /// The most messages and requests kept (the oldest are dropped and counted).
    pub max_messages: usize,
    pub max_requests: usize,
}

/// What `chattail sandbox` keeps: with 4 KB messages, about 20 MB of text at most.
pub const KEPT_MESSAGES: usize = 5_000;
pub const KEPT_REQUESTS: usize = 20_000;

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            rate: Some(1.0),
            open: false,
            credentials: None,
            page: false,
            // Tests and benches look at everything they posted.
            max_messages: 1_000_000,
            max_requests: 1_000_000,
        }
    }
}

/// A random number for the instance id (no cryptographic use).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(crate::clock::unix_now_ms().unsigned_abs().into());
    h.finish()
}

/// A running stand-in. It stops when dropped.
pub struct Sandbox {
    pub addr: SocketAddr,
    state: Shared,
    _runtime: tokio::runtime::Runtime,
}

impl Sandbox {
    /// Starts the stand-in for tests: registered webhooks only, Chat's quota of one
    /// request per second per space, on a free loopback port.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"));
        Self::serve(listener, SandboxOptions::default())
            .unwrap_or_else(|e| panic!("cannot start the sandbox: {e}"))
    }

    /// Serves on `listener` (on a runtime of its own, one thread) until dropped.
    pub fn serve(
        listener: std::net::TcpListener,
        options: SandboxOptions,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("chattail-sandbox")
            .enable_all()
            .build()?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            rate: options.rate,
            open: options.open,
            credentials: options.credentials.clone(),
            max_messages: options.max_messages,
            max_requests: options.max_requests,
            instance: format!("{:016x}", rand_u64()),
            ..State::default()
        }));
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        runtime.spawn(routes::serve(
            listener,
            Arc::clone(&state),
            addr,
            options.page,
        ));
        Ok(Self {
            addr,
            state,
            _runtime: runtime,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Registers a webhook and returns its URL.
    pub fn webhook(&self, space: &str, key: &str, token: &str) -> String {
        self.state().hooks.push(Hook {
            space: space.into(),
            key: key.into(),
            token: token.into(),
            revoked: None,
        });
        self.url_for(space, key, token)
    }

    /// The URL of a webhook (registered or not).
    pub fn url_for(&self, space: &str, key: &str, token: &str) -> String {
        format!(
            "http://{}/v1/spaces/{space}/messages?key={key}&token={token}",
            self.addr
        )
    }

    /// Every message kept so far.
    pub fn messages(&self) -> Vec<Message> {
        self.state().messages.iter().cloned().collect()
    }

    /// Every webhook request kept so far, with its answer.
    pub fn requests(&self) -> Vec<Request> {
        self.state().requests.iter().cloned().collect()
    }

    /// Test interface: webhooks with this token answer `status` (404 when deleted, 403
    /// when blocked); `None` restores them.
    #[doc(hidden)]
    pub fn revoke(&self, token: &str, status: Option<u16>) {
        for h in self.state().hooks.iter_mut().filter(|h| h.token == token) {
            h.revoked = status;
        }
    }

    /// Test interface: the next message request meets `fault`.
    #[doc(hidden)]
    pub fn push_fault(&self, fault: Fault) {
        self.state().faults.push_back(fault);
    }

    /// Test interface: the per-space quota and the `Retry-After` sent with its 429s.
    #[doc(hidden)]
    pub fn set_rate(&self, per_second: Option<f64>, retry_after: Option<u64>) {
        let mut s = self.state();
        s.rate = per_second;
        s.retry_after = retry_after;
    }

    /// Test interface: every request gets 503 for `length`, from now.
    #[doc(hidden)]
    pub fn outage(&self, length: Duration) {
        self.state().outage_until = Some(Instant::now() + length);
    }

    /// Test interface: every request is answered this much later (a slow Chat).
    #[doc(hidden)]
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }
}
