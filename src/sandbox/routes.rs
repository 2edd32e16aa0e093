//! The sandbox's HTTP server: axum on a bounded listener (at most [`MAX_CONNECTIONS`]
//! open, each closed after [`IDLE`] without progress), keep-alive as Google's front
//! ends keep it, and small handlers: the webhook API under `/v1/`, the page at `/` with
//! its script and style, and the JSON it polls at `/api/state`.
//!
//! Every request first passes [`guard`], the one place the sandbox defends itself as a
//! web server on a developer's machine: the `Host` must name this sandbox (a web page
//! whose domain was rebound to this address cannot use it), and a `POST` must be JSON
//! (as Chat requires) from no browser origin but the sandbox's own, so a page elsewhere
//! cannot plant messages. The page is served with a Content-Security-Policy that allows
//! no inline script or style: message texts are log lines, written by whoever can reach
//! the application.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use super::chat::{self, Incoming, Reply};
use super::{Fault, Shared, lock, page};
use crate::bounded_listener::{Closer, LimitedListener};

/// The most connections open at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;
/// A connection with no byte read or written for this long is closed.
const IDLE: Duration = Duration::from_secs(15);
/// The largest body read; Chat refuses far smaller messages anyway.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the page may load: its own script, style and JSON, nothing inline, no frames.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[derive(Clone)]
struct Ctx {
    state: Shared,
    /// The `Host` values that name this sandbox.
    hosts: Arc<Vec<String>>,
    page: bool,
}

/// Serves `listener` until the runtime stops.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    state: Shared,
    addr: SocketAddr,
    page: bool,
) {
    let ctx = Ctx {
        state,
        hosts: Arc::new(allowed_hosts(addr)),
        page,
    };
    let app = Router::new()
        .route("/", get(index))
        .route("/page.js", get(script))
        .route("/page.css", get(style))
        .route("/api/state", get(state_json))
        .route("/v1/{*rest}", any(webhook))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(ctx.clone(), guard))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(ctx);
    let listener = LimitedListener::new(listener, MAX_CONNECTIONS, IDLE);
    if let Err(error) = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<Closer>(),
    )
    .await
    {
        tracing::error!(%error, "The sandbox stopped serving.");
    }
}

/// The listen address, and `localhost`, `127.0.0.1` and `[::1]`, each with the port (and
/// without it on port 80, where clients leave it out).
fn allowed_hosts(addr: SocketAddr) -> Vec<String> {
    let port = addr.port();
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "[::1]".to_owned(),
    ];
    if !addr.ip().is_unspecified() {
        let own = match addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        if !names.contains(&own) {
            names.push(own);
        }
    }
    let mut hosts: Vec<String> = names.iter().map(|n| format!("{n}:{port}")).collect();
    if port == 80 {
        hosts.extend(names);
    }
    hosts
}

/// The checks every request passes before its handler (see the module's comment).
async fn guard(State(ctx): State<Ctx>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctx.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "This sandbox answers only to its own address (Host).\n",
        )
            .into_response();
    }
    if request.method() == Method::POST {
        let path = request.uri().path().to_owned();
        if let Some(origin) = headers.get(header::ORIGIN) {
            let own = ctx.hosts.iter().any(|h| {
                origin
                    .as_bytes()
                    .eq_ignore_ascii_case(format!("http://{h}").as_bytes())
            });
            if !own {
                return refuse(
                    &ctx,
                    &path,
                    403,
                    "PERMISSION_DENIED",
                    "Cross-site request refused: posts come from programs, not from web pages.",
                );
            }
        }
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| {
                t.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !json && path.starts_with("/v1/") {
            return refuse(
                &ctx,
                &path,
                400,
                "INVALID_ARGUMENT",
                "Invalid JSON payload received: the request's Content-Type must be application/json.",
            );
        }
    }
    next.run(request).await
}

/// A request refused by the guard, recorded like Chat's own refusals.
fn refuse(ctx: &Ctx, path: &str, status: u16, canonical: &str, message: &str) -> Response {
    let space = path
        .strip_prefix("/v1/spaces/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("")
        .to_owned();
    if !space.is_empty() {
        lock(&ctx.state).store_request(super::Request {
            seq: 0,
            space,
            status,
            request_id: None,
            thread_key: None,
            message: format!("{canonical}: {message}"),
            at: Instant::now(),
            posted_ms: crate::clock::unix_now_ms(),
        });
    }
    into_response(chat::error(status, canonical, message))
}

/// A page resource, with the policy and headers that keep it from being framed or sniffed.
fn page_response(ctx: &Ctx, content_type: &'static str, body: &'static str) -> Response {
    if !ctx.page {
        return not_found_now();
    }
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn index(State(ctx): State<Ctx>) -> Response {
    page_response(&ctx, "text/html; charset=utf-8", page::HTML)
}

async fn script(State(ctx): State<Ctx>) -> Response {
    page_response(&ctx, "text/javascript; charset=utf-8", page::SCRIPT)
}

async fn style(State(ctx): State<Ctx>) -> Response {
    page_response(&ctx, "text/css; charset=utf-8", page::STYLE)
}

/// What the page has not seen yet: everything after `?since=N`.
async fn state_json(State(ctx): State<Ctx>, uri: Uri) -> Response {
    if !ctx.page {
        return not_found_now();
    }
    let since = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|p| p.strip_prefix("since="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let body = page::state_json(&lock(&ctx.state), since);
    let mut response = (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A webhook request: faults and delays first (tests), then Chat's answer.
async fn webhook(
    State(ctx): State<Ctx>,
    ConnectInfo(closer): ConnectInfo<Closer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let delay = lock(&ctx.state).delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let injected = {
        let mut s = lock(&ctx.state);
        match s.faults.front() {
            Some(Fault::Delay(d)) => {
                let d = *d;
                s.faults.pop_front();
                Some(d)
            }
            _ => None,
        }
    };
    if let Some(d) = injected {
        tokio::time::sleep(d).await;
    }
    let label = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (host, rules) = (label("x-chattail-host"), label("x-chattail-rule"));
    let incoming = Incoming {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        body: &body,
        host: host.as_deref(),
        rules: rules.as_deref(),
    };
    let reply = chat::handle(&incoming, &mut lock(&ctx.state), Instant::now());
    if let Reply::Drop = reply {
        // A lost reply: the connection ends without an answer.
        closer.close();
    }
    into_response(reply)
}

fn into_response(reply: Reply) -> Response {
    match reply {
        Reply::Respond {
            status,
            content_type,
            body,
            headers,
        } => {
            let mut response = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                [(header::CONTENT_TYPE, content_type)],
                body,
            )
                .into_response();
            for (name, value) in headers {
                if let (Ok(name), Ok(value)) = (
                    header::HeaderName::try_from(name),
                    HeaderValue::try_from(value),
                ) {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
        // Never written: the connection is closed first.
        Reply::Drop => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn not_found() -> Response {
    not_found_now()
}

fn not_found_now() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/html")],
        "<h1>Not Found</h1><h2>Error 404</h2>",
    )
        .into_response()
}
