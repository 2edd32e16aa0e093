//! `chattail sandbox`: a local stand-in for Google Chat's incoming webhooks, with a web
//! page that shows its spaces, threads and messages as Chat would.
//!
//! It is the one stand-in of the project: the integration tests and the benches run
//! against this code, so what users see in the sandbox is what the tests check. Tests
//! also reach a fault-injection interface (`push_fault`, `set_rate`, `outage`,
//! `set_delay`, `revoke`) that the command does not expose.
//!
//! - `chat.rs`: what a webhook request is answered (the reference's behaviour).
//! - `http.rs`: the HTTP/1.1 server (keep-alive, bounded requests) and its routes.
//! - `page.rs` and `page.html`: the page and the JSON it polls.

mod chat;
mod http;
mod page;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A message Chat stored.
#[derive(Debug, Clone)]
pub struct Message {
    /// `spaces/S/messages/M…`.
    pub name: String,
    pub space: String,
    /// `spaces/S/threads/T…`.
    pub thread: String,
    pub thread_key: Option<String>,
    pub text: String,
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
    /// Any space, key and token is a webhook at its first use (the command); otherwise
    /// only registered webhooks exist (tests).
    open: bool,
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

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a sandbox behaves.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Requests per second each space accepts (Chat: 1); `None` for no limit.
    pub rate: Option<f64>,
    /// Any space, key and token is accepted at its first use.
    pub open: bool,
    /// Serve the web page at `/`.
    pub page: bool,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            rate: Some(1.0),
            open: false,
            page: false,
        }
    }
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
            ..State::default()
        }));
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        runtime.spawn(http::accept(listener, Arc::clone(&state), options.page));
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

    /// Every message stored so far.
    pub fn messages(&self) -> Vec<Message> {
        self.state().messages.clone()
    }

    /// Every webhook request so far, with its answer.
    pub fn requests(&self) -> Vec<Request> {
        self.state().requests.clone()
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
