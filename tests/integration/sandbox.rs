//! The sandbox answers as the reference says Chat does (the cases the tests' old mock
//! covered, now checked against the product's own stand-in), and `chattail send` posts
//! through it and explains every refusal without printing the URL.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};

use crate::mock_chat::{Fault, MockChat};
use crate::support::{chattail, text};

/// One request over a fresh connection: the status, the headers (lowercase) and the body.
fn request(addr: SocketAddr, method: &str, target: &str, body: &str) -> (u16, String, String) {
    crate::support::http(&addr.to_string(), method, target, body)
}

fn post(addr: SocketAddr, query: &str, body: &Value) -> (u16, Value) {
    let (status, _, body) = request(
        addr,
        "POST",
        &format!("/v1/spaces/S1/messages?{query}"),
        &body.to_string(),
    );
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn chat_error(body: &Value) -> (&str, &str) {
    (
        body.pointer("/error/status")
            .and_then(Value::as_str)
            .unwrap_or(""),
        body.pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or(""),
    )
}

const REPLY: &str = "messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD";

#[test]
fn authentication_and_validation_answer_like_chat() {
    let chat = MockChat::start();
    chat.set_rate(None, None);
    chat.webhook("S1", "K1", "T1");
    let hi = json!({"text": "hi"});
    let cases: Vec<(String, Value, u16, &str, &str)> = vec![
        (
            "token=T1".into(),
            hi.clone(),
            403,
            "PERMISSION_DENIED",
            "unregistered callers",
        ),
        (
            "key=WRONG&token=T1".into(),
            hi.clone(),
            400,
            "INVALID_ARGUMENT",
            "API key not valid",
        ),
        (
            "key=K1&token=WRONG".into(),
            hi.clone(),
            403,
            "PERMISSION_DENIED",
            "without a valid token",
        ),
        (
            "key=K1&token=T1&messageReplyOption=SOMETIMES".into(),
            hi.clone(),
            400,
            "INVALID_ARGUMENT",
            "message_reply_option",
        ),
        (
            "key=K1&token=T1&colour=red".into(),
            hi.clone(),
            400,
            "INVALID_ARGUMENT",
            "Unknown name \"colour\"",
        ),
        (
            "key=K1&token=T1".into(),
            json!({"text": "hi", "priority": 1}),
            400,
            "INVALID_ARGUMENT",
            "Unknown name \"priority\"",
        ),
        (
            "key=K1&token=T1".into(),
            json!({"text": ""}),
            400,
            "INVALID_ARGUMENT",
            "cannot be empty",
        ),
        (
            "key=K1&token=T1".into(),
            json!({"text": "x".repeat(4097)}),
            400,
            "INVALID_ARGUMENT",
            "longer than 4096",
        ),
    ];
    for (query, body, status, canonical, words) in cases {
        let (got, answer) = post(chat.addr, &query, &body);
        assert_eq!(got, status, "{query}: {answer}");
        let (got_canonical, message) = chat_error(&answer);
        assert_eq!(got_canonical, canonical, "{query}");
        assert!(message.contains(words), "{query}: {message}");
    }
    // Exactly 4,096 characters are taken.
    let (status, _) = post(
        chat.addr,
        "key=K1&token=T1",
        &json!({"text": "é".repeat(4096)}),
    );
    assert_eq!(status, 200);
    // Paths Chat does not serve to webhooks.
    let (status, _, body) = request(
        chat.addr,
        "POST",
        "/v1/spaces/S1/webhooks?key=K1&token=T1",
        "{}",
    );
    assert_eq!(status, 400, "{body}");
    let (status, _, _) = request(
        chat.addr,
        "GET",
        "/v1/spaces/S1/messages/M1?key=K1&token=T1",
        "",
    );
    assert_eq!(status, 403);
    let (status, _, _) = request(chat.addr, "GET", "/nowhere", "");
    assert_eq!(status, 404);
    // A revoked webhook answers 404 NOT_FOUND.
    chat.revoke("T1", Some(404));
    let (status, answer) = post(chat.addr, "key=K1&token=T1", &hi);
    assert_eq!((status, chat_error(&answer).0), (404, "NOT_FOUND"));
    assert_eq!(
        chat.messages().len(),
        1,
        "only the valid message was stored"
    );
}

#[test]
fn thread_keys_bind_only_with_the_fallback_option_and_request_ids_replay() {
    let chat = MockChat::start();
    chat.set_rate(None, None);
    chat.webhook("S1", "K1", "T1");
    let keyed = |text: &str| json!({"text": text, "thread": {"threadKey": "db-a"}});
    let (_, first) = post(
        chat.addr,
        &format!("key=K1&token=T1&{REPLY}"),
        &keyed("one"),
    );
    let (_, second) = post(
        chat.addr,
        &format!("key=K1&token=T1&{REPLY}"),
        &keyed("two"),
    );
    let thread = first.pointer("/thread/name").unwrap();
    assert_eq!(second.pointer("/thread/name").unwrap(), thread);
    // Without the reply option Chat ignores the key: a new thread.
    let (_, third) = post(chat.addr, "key=K1&token=T1", &keyed("three"));
    assert_ne!(third.pointer("/thread/name").unwrap(), thread);
    // The same requestId returns the stored message and stores nothing new.
    let query = format!("key=K1&token=T1&{REPLY}&requestId=r-1");
    let (_, a) = post(chat.addr, &query, &keyed("four"));
    let (_, b) = post(chat.addr, &query, &keyed("four again"));
    assert_eq!(a.get("name"), b.get("name"));
    assert_eq!(b.get("text").and_then(Value::as_str), Some("four"));
    assert_eq!(chat.messages().len(), 4);
}

#[test]
fn the_quota_answers_429_with_chats_body_and_faults_are_injectable() {
    let chat = MockChat::start();
    chat.webhook("S1", "K1", "T1");
    chat.webhook("S2", "K1", "T2");
    chat.set_rate(Some(1.0), Some(7));
    let hi = json!({"text": "hi"});
    assert_eq!(post(chat.addr, "key=K1&token=T1", &hi).0, 200);
    let (status, _, body) = request(
        chat.addr,
        "POST",
        "/v1/spaces/S1/messages?key=K1&token=T1",
        &hi.to_string(),
    );
    assert_eq!(status, 429);
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(chat_error(&answer).0, "RESOURCE_EXHAUSTED");
    // The quota is per space.
    let (status, _, _) = request(
        chat.addr,
        "POST",
        "/v1/spaces/S2/messages?key=K1&token=T2",
        &hi.to_string(),
    );
    assert_eq!(status, 200);
    chat.set_rate(None, None);
    chat.push_fault(Fault::Status {
        status: 503,
        retry_after: Some(2),
    });
    let (status, head, _) = request(
        chat.addr,
        "POST",
        "/v1/spaces/S1/messages?key=K1&token=T1",
        &hi.to_string(),
    );
    assert_eq!(status, 503);
    assert!(head.contains("retry-after: 2"), "{head}");
    let statuses: Vec<u16> = chat.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 429, 200, 503]);
}

#[test]
fn connections_are_kept_alive_between_requests() {
    let chat = MockChat::start();
    chat.set_rate(None, None);
    chat.webhook("S1", "K1", "T1");
    let mut stream = TcpStream::connect(chat.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for n in 0..3 {
        let body = json!({"text": format!("message {n}")}).to_string();
        write!(
            stream,
            "POST /v1/spaces/S1/messages?key=K1&token=T1 HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            chat.addr,
            body.len()
        )
        .unwrap();
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
    }
    assert_eq!(chat.messages().len(), 3);
}

/// A config with one webhook pointing at `url`.
fn send_config(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let path = dir.join("chattail.yaml");
    std::fs::write(
        &path,
        format!(
            "state_dir: {}\nwebhooks:\n  oncall:\n    url: \"{url}\"\nfiles:\n  - path: {}/*.log\nrules:\n  - name: any\n    match: 'ERROR'\n    webhook: oncall\n",
            dir.join("state").display(),
            dir.display()
        ),
    )
    .unwrap();
    path
}

/// `chattail send --config CONFIG --webhook WEBHOOK hello`.
fn send_hello(config: &str, webhook: &str) -> std::process::Output {
    chattail(
        &["send", "--config", config, "--webhook", webhook, "hello"],
        &[],
        None,
    )
}

#[test]
fn send_posts_into_a_new_and_an_existing_thread() {
    let chat = MockChat::start();
    chat.set_rate(None, None);
    let url = chat.webhook("S1", "SECRETKEY", "SECRETTOKEN");
    let dir = tempfile::tempdir().unwrap();
    let config = send_config(dir.path(), &url);
    let config = config.to_str().unwrap();
    let first = chattail(
        &[
            "send",
            "--config",
            config,
            "--webhook",
            "oncall",
            "*deploy* started",
        ],
        &[],
        None,
    );
    assert!(first.status.success(), "{}", text(&first.stderr));
    let out = text(&first.stdout);
    let threads: Vec<String> = chat.messages().iter().map(|m| m.thread.clone()).collect();
    assert_eq!(threads.len(), 1);
    assert!(
        out.contains(&threads[0]),
        "prints the thread Chat chose: {out}"
    );
    // Twice into one named thread, the second text from standard input.
    for stdin in [None, Some(&b"from stdin"[..])] {
        let args = [
            "send",
            "--config",
            config,
            "--webhook",
            "oncall",
            "--thread",
            "deploys",
            "-",
        ];
        let args = if stdin.is_some() {
            &args[..]
        } else {
            &args[..7]
        };
        let mut args = args.to_vec();
        if stdin.is_none() {
            args.push("to the deploys thread");
        }
        let output = chattail(&args, &[], stdin);
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert!(text(&output.stdout).contains("thread key `deploys`"));
    }
    let messages = chat.messages();
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[1].thread, messages[2].thread);
    assert_ne!(messages[0].thread, messages[1].thread);
    assert_eq!(messages[2].text, "from stdin");
    assert!(messages.iter().all(|m| m.request_id.is_some()));
    // Labelled with the host (send posts for no rule).
    assert!(
        messages
            .iter()
            .all(|m| m.host.is_some() && m.rules.is_none())
    );
}

#[test]
fn send_explains_each_refusal_and_never_prints_the_url() {
    let chat = MockChat::start();
    chat.set_rate(None, None);
    let url = chat.webhook("S1", "SECRETKEY", "SECRETTOKEN");
    let dir = tempfile::tempdir().unwrap();
    let send = |url: &str| {
        let config = send_config(dir.path(), url);
        send_hello(config.to_str().unwrap(), "oncall")
    };
    let wrong_token = url.replace("SECRETTOKEN", "SECRETWRONG");
    // (what to set up, the URL to send to, the advice expected)
    type Case<'a> = (Box<dyn Fn() + 'a>, String, &'static str);
    let cases: Vec<Case<'_>> = vec![
        (Box::new(|| {}), wrong_token, "403 (PERMISSION_DENIED)"),
        (
            Box::new(|| chat.revoke("SECRETTOKEN", Some(404))),
            url.clone(),
            "404 (NOT_FOUND)",
        ),
        (
            Box::new(|| chat.revoke("SECRETTOKEN", Some(401))),
            url.clone(),
            "401 (UNAUTHENTICATED)",
        ),
        (
            Box::new(|| {
                chat.revoke("SECRETTOKEN", None);
                chat.push_fault(Fault::Status {
                    status: 400,
                    retry_after: None,
                });
            }),
            url.clone(),
            "400 (INVALID_ARGUMENT)",
        ),
    ];
    for (prepare, target, advice) in cases {
        prepare();
        let output = send(&target);
        let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
        assert_eq!(output.status.code(), Some(1), "{all}");
        assert!(all.contains(advice), "{advice}: {all}");
        assert!(!all.contains("SECRET"), "the key or token leaked: {all}");
    }
    // A transient failure is retried with the same request id, then posted once.
    chat.push_fault(Fault::Status {
        status: 503,
        retry_after: Some(0),
    });
    let output = send(&url);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let ids: Vec<_> = chat
        .requests()
        .iter()
        .rev()
        .take(2)
        .map(|r| r.request_id.clone())
        .collect();
    assert_eq!(ids[0], ids[1]);
    // An unknown webhook name and an invalid config exit 2.
    let config = send_config(dir.path(), &url);
    let unknown = send_hello(config.to_str().unwrap(), "nobody");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr).contains("no webhook named `nobody`"));
    std::fs::write(&config, "webhooks: [").unwrap();
    let broken = send_hello(config.to_str().unwrap(), "oncall");
    assert_eq!(broken.status.code(), Some(2));
}

#[test]
fn thread_names_or_fail_message_ids_and_error_details_follow_the_reference() {
    let chat = MockChat::start();
    chat.set_rate(None, None);
    chat.webhook("S1", "K1", "T1");
    let base = "key=K1&token=T1";
    let fail = format!("{base}&messageReplyOption=REPLY_MESSAGE_OR_FAIL");
    // OR_FAIL with a key no thread has: 404, nothing stored.
    let (status, answer) = post(
        chat.addr,
        &fail,
        &json!({"text": "x", "thread": {"threadKey": "k"}}),
    );
    assert_eq!((status, chat_error(&answer).0), (404, "NOT_FOUND"));
    // FALLBACK binds the key (snake_case spelling); OR_FAIL then replies into it.
    let (_, first) = post(
        chat.addr,
        &format!("{base}&{REPLY}"),
        &json!({"text": "a", "thread": {"thread_key": "k"}}),
    );
    let thread = first
        .pointer("/thread/name")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned();
    let (status, reply) = post(
        chat.addr,
        &fail,
        &json!({"text": "b", "thread": {"threadKey": "k"}}),
    );
    assert_eq!(status, 200);
    assert_eq!(
        reply.pointer("/thread/name").and_then(Value::as_str),
        Some(thread.as_str())
    );
    // The key may come in the query instead.
    let (_, by_query) = post(
        chat.addr,
        &format!("{base}&{REPLY}&threadKey=k"),
        &json!({"text": "c"}),
    );
    assert_eq!(
        by_query.pointer("/thread/name").and_then(Value::as_str),
        Some(thread.as_str())
    );
    // A known thread name is replied to; a malformed one is refused.
    let (_, by_name) = post(
        chat.addr,
        &format!("{base}&{REPLY}"),
        &json!({"text": "d", "thread": {"name": thread}}),
    );
    assert_eq!(
        by_name.pointer("/thread/name").and_then(Value::as_str),
        Some(thread.as_str())
    );
    let (status, answer) = post(
        chat.addr,
        &format!("{base}&{REPLY}"),
        &json!({"text": "e", "thread": {"name": "spaces/OTHER/threads/x"}}),
    );
    assert_eq!(status, 400);
    assert!(
        chat_error(&answer)
            .1
            .contains("invalid thread resource name")
    );
    // messageId names the message; a second use is 409; a bad one is 400.
    let (status, named) = post(
        chat.addr,
        &format!("{base}&messageId=client-deploy-1"),
        &json!({"text": "f"}),
    );
    assert_eq!(status, 200);
    assert_eq!(named["name"], "spaces/S1/messages/client-deploy-1");
    assert_eq!(named["clientAssignedMessageId"], "client-deploy-1");
    let (status, answer) = post(
        chat.addr,
        &format!("{base}&messageId=client-deploy-1"),
        &json!({"text": "g"}),
    );
    assert_eq!((status, chat_error(&answer).0), (409, "ALREADY_EXISTS"));
    let (status, _) = post(
        chat.addr,
        &format!("{base}&messageId=Deploy"),
        &json!({"text": "h"}),
    );
    assert_eq!(status, 400);
    // Cards alone are a message.
    let (status, _) = post(
        chat.addr,
        base,
        &json!({"cardsV2": [{"cardId": "c", "card": {}}]}),
    );
    assert_eq!(status, 200);
    // Error details as Chat sends them.
    let (_, answer) = post(chat.addr, "key=NOPE&token=T1", &json!({"text": "i"}));
    assert_eq!(
        answer
            .pointer("/error/details/0/reason")
            .and_then(Value::as_str),
        Some("API_KEY_INVALID")
    );
    let (_, answer) = post(chat.addr, base, &json!({"text": "j", "body": "x"}));
    assert_eq!(
        answer
            .pointer("/error/details/0/@type")
            .and_then(Value::as_str),
        Some("type.googleapis.com/google.rpc.BadRequest")
    );
    assert_eq!(chat.messages().len(), 6);
}

/// One raw request with the given extra header lines; the status and the body.
fn raw(addr: SocketAddr, head: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

/// A web page elsewhere cannot write to the sandbox: a `text/plain` POST (what a form or
/// `fetch` may send without asking) is refused, so is any POST from a foreign `Origin`,
/// and a `Host` that is not the sandbox's (a rebound domain) is refused on every route.
/// None of them leaves a message.
#[test]
fn cross_site_writes_and_foreign_hosts_are_refused() {
    let chat = MockChat::start();
    chat.set_rate(None, None);
    chat.webhook("S1", "K", "T");
    let addr = chat.addr;
    let target = "/v1/spaces/S1/messages?key=K&token=T";
    let body = r#"{"text": "<http://x(http://y/autofocus/onfocus=document.title=1|x>"}"#;
    let (status, answer) = raw(
        addr,
        &format!(
            "POST {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nOrigin: http://evil.example"
        ),
        body,
    );
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = raw(
        addr,
        &format!("POST {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain"),
        body,
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("application/json"), "{answer}");
    let (status, _) = raw(
        addr,
        &format!(
            "POST {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nOrigin: http://evil.example"
        ),
        body,
    );
    assert_eq!(status, 403);
    let (status, _) = raw(
        addr,
        &format!(
            "POST {target} HTTP/1.1\r\nHost: rebound.example:80\r\nContent-Type: application/json"
        ),
        body,
    );
    assert_eq!(status, 421);
    assert!(chat.messages().is_empty());
    // The same request from a program (no Origin, JSON) is taken.
    let (status, _) = raw(
        addr,
        &format!(
            "POST {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json; charset=UTF-8"
        ),
        body,
    );
    assert_eq!(status, 200);
    assert_eq!(chat.messages().len(), 1);
    // The refusals are on record, as Chat's own are.
    assert!(chat.requests().iter().any(|r| r.status == 403));
}

/// `chattail sandbox --listen 0.0.0.0:PORT` says what it exposes, and accepts only the
/// random key and token it prints; its page is served with a policy that forbids inline
/// script.
#[test]
fn an_exposed_sandbox_warns_and_takes_only_its_own_key() {
    use std::process::{Command, Stdio};
    let mut child = Command::new(crate::support::bin())
        .args(["sandbox", "--listen", "0.0.0.0:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut webhook = String::new();
    let mut page = String::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("webhook:") {
            webhook = rest.trim().to_owned();
        } else if let Some(rest) = line.trim().strip_prefix("page:") {
            page = rest.trim().trim_end_matches('/').to_owned();
        } else if line.starts_with("Stop") {
            break;
        }
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("warning: listening on 0.0.0.0:")
            && stderr.contains("other hosts can reach"),
        "{stderr}"
    );
    assert!(!webhook.contains("sandbox-key"), "{webhook}");
    let key = webhook
        .split("key=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    assert_eq!(key.len(), 16, "{webhook}");
    // An unspecified address is shown as loopback, which the sandbox answers to.
    assert!(page.starts_with("http://127.0.0.1:"), "{page}");
    assert!(webhook.starts_with("http://127.0.0.1:"), "{webhook}");

    // The page's policy, from a sandbox on loopback (this test's own).
    let options = chattail::sandbox::SandboxOptions {
        page: true,
        open: true,
        credentials: Some(("k".into(), "t".into())),
        ..Default::default()
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sandbox = chattail::sandbox::Sandbox::serve(listener, options).unwrap();
    let (status, head, _) = request(sandbox.addr, "GET", "/", "");
    assert_eq!(status, 200);
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    let (status, _, script) = request(sandbox.addr, "GET", "/page.js", "");
    assert_eq!(status, 200);
    assert!(script.contains("chattailMarkup") && !script.contains("innerHTML"));
    // Only its own key and token post.
    let body = json!({"text": "hi"});
    let (status, _) = post(sandbox.addr, "key=other&token=t", &body);
    assert_eq!(status, 400);
    let (status, _) = post(sandbox.addr, "key=k&token=t", &body);
    assert_eq!(status, 200);
}

/// What the sandbox keeps is bounded: past its caps the oldest messages are dropped and
/// counted, and a poll with `since` answers only what is new.
#[test]
fn the_sandbox_keeps_a_bounded_state_and_polls_are_incremental() {
    let options = chattail::sandbox::SandboxOptions {
        rate: None,
        page: true,
        open: true,
        max_messages: 50,
        max_requests: 60,
        ..Default::default()
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sandbox = chattail::sandbox::Sandbox::serve(listener, options).unwrap();
    for i in 0..120 {
        let (status, _) = post(
            sandbox.addr,
            &format!("key=k&token=t&requestId=r{i}"),
            &json!({"text": format!("message {i}")}),
        );
        assert_eq!(status, 200);
    }
    let messages = sandbox.messages();
    assert_eq!(messages.len(), 50);
    assert_eq!(messages[0].text, "message 70");
    assert_eq!(sandbox.requests().len(), 60);
    // A replay of a kept request id still answers its message.
    let (status, answer) = post(
        sandbox.addr,
        "key=k&token=t&requestId=r119",
        &json!({"text": "again"}),
    );
    assert_eq!(
        (status, answer["text"].as_str()),
        (200, Some("message 119"))
    );
    let (_, _, body) = request(sandbox.addr, "GET", "/api/state?since=0", "");
    let state: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["dropped"]["messages"], 70);
    assert_eq!(state["messages"].as_array().unwrap().len(), 50);
    let seq = state["seq"].as_u64().unwrap();
    post(sandbox.addr, "key=k&token=t", &json!({"text": "new"}));
    let (_, _, body) = request(sandbox.addr, "GET", &format!("/api/state?since={seq}"), "");
    let later: Value = serde_json::from_str(&body).unwrap();
    let texts: Vec<&str> = later["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(texts, ["new"]);
}

/// `send --thread` maps the key as rules do, so it replies into the thread an agent
/// opened with that key; stdin is decoded like log lines (invalid UTF-8 shown, NUL made
/// visible); a text over Chat's limit is cut and `send` says so.
#[test]
fn send_maps_thread_keys_like_rules_and_takes_any_bytes() {
    let chat = MockChat::start();
    chat.set_rate(None, None);
    let url = chat.webhook("S1", "K", "T");
    let dir = tempfile::tempdir().unwrap();
    let config = send_config(dir.path(), &url);
    let config = config.to_str().unwrap();
    let args = [
        "send",
        "--config",
        config,
        "--webhook",
        "oncall",
        "--thread",
        "key with spaces",
        "-",
    ];
    let output = chattail(&args, &[], Some(b"bad \xff byte and NUL \x00 here"));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let m = chat.messages().pop().unwrap();
    assert_eq!(
        m.thread_key.as_deref(),
        Some(chattail::pipeline::thread_key::chat_thread_key("key with spaces").as_str())
    );
    assert!(m.text.contains('\u{FFFD}') && m.text.contains('\u{2400}') && !m.text.contains('\0'));
    let long = "y".repeat(100_000);
    let output = chattail(
        &["send", "--config", config, "--webhook", "oncall", &long],
        &[],
        None,
    );
    assert!(output.status.success());
    assert!(
        text(&output.stderr).contains("it was cut"),
        "{}",
        text(&output.stderr)
    );
}
