//! The sandbox's HTTP/1.1 server: keep-alive connections (as Google's front ends keep
//! them), bounded heads and bodies, and three kinds of routes: the webhook API under
//! `/v1/`, the page at `/` and the JSON it polls at `/api/state`.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::chat::{self, Incoming, Reply};
use super::{Fault, Shared, lock, page};

/// The largest request head read; a larger one closes the connection.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The largest body read; Chat refuses far smaller messages anyway.
const MAX_BODY_BYTES: usize = 1024 * 1024;

pub(super) async fn accept(listener: TcpListener, state: Shared, page: bool) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: wait a moment rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _ = serve(stream, state, page).await;
        });
    }
}

/// One parsed request.
struct Parsed {
    method: String,
    target: String,
    body: Vec<u8>,
    close: bool,
    /// `x-chattail-host` and `x-chattail-rule`, which chattail sends along.
    host: Option<String>,
    rules: Option<String>,
    /// The `Host` header names an IP address or `localhost`, not a domain: a web page
    /// from elsewhere that rebinds its domain to this address cannot read the state.
    direct: bool,
}

/// Reads the next request from `stream`; `None` at the end of the connection or on a
/// request too large to take.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Parsed>> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let version = parts.next().unwrap_or_default();
    let mut length = 0usize;
    let mut close = version != "HTTP/1.1";
    let (mut host, mut rules) = (None, None);
    let mut direct = false;
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        let value = value.trim();
        if name.eq_ignore_ascii_case("host") {
            let name = match value.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => value,
            };
            let name = name.trim_start_matches('[').trim_end_matches(']');
            direct =
                name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok();
        } else if name.eq_ignore_ascii_case("x-chattail-host") {
            host = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("x-chattail-rule") {
            rules = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().unwrap_or(usize::MAX);
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    if length > MAX_BODY_BYTES {
        return Ok(None);
    }
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + length].to_vec();
    buf.drain(..head_end + length);
    Ok(Some(Parsed {
        method,
        target,
        body,
        close,
        host,
        rules,
        direct,
    }))
}

async fn serve(mut stream: TcpStream, state: Shared, page: bool) -> std::io::Result<()> {
    let mut buf = Vec::new();
    while let Some(request) = read_request(&mut stream, &mut buf).await? {
        let (path, query) = request
            .target
            .split_once('?')
            .unwrap_or((request.target.as_str(), ""));
        let reply = if path.starts_with("/v1/") {
            webhook(&request, path, query, &state).await
        } else {
            match (request.method.as_str(), path, page && request.direct) {
                ("GET", "/", true) => Reply::Respond {
                    status: 200,
                    content_type: "text/html; charset=utf-8",
                    body: page::HTML.to_owned(),
                    headers: Vec::new(),
                },
                ("GET", "/api/state", true) => Reply::Respond {
                    status: 200,
                    content_type: "application/json; charset=utf-8",
                    body: page::state_json(&lock(&state)),
                    headers: vec![("cache-control".into(), "no-store".into())],
                },
                _ => Reply::Respond {
                    status: 404,
                    content_type: "text/html",
                    body: "<h1>Not Found</h1><h2>Error 404</h2>".into(),
                    headers: Vec::new(),
                },
            }
        };
        match reply {
            Reply::Respond {
                status,
                content_type,
                body,
                headers,
            } => {
                let mut out = format!(
                    "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
                    reason(status),
                    body.len()
                );
                if request.close {
                    out.push_str("connection: close\r\n");
                }
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                out.push_str(&body);
                stream.write_all(out.as_bytes()).await?;
                stream.flush().await?;
            }
            Reply::Drop => return Ok(()),
        }
        if request.close {
            return Ok(());
        }
    }
    Ok(())
}

async fn webhook(request: &Parsed, path: &str, query: &str, state: &Shared) -> Reply {
    let delay = lock(state).delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let injected = {
        let mut s = lock(state);
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
    let incoming = Incoming {
        method: &request.method,
        path,
        query,
        body: &request.body,
        host: request.host.as_deref(),
        rules: request.rules.as_deref(),
    };
    chat::handle(&incoming, &mut lock(state), Instant::now())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
