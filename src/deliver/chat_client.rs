//! One HTTP request to a Chat incoming webhook, and what its answer means.
//!
//! This is the only place that sees a webhook URL in full. Every error that leaves it has
//! the URL stripped (`reqwest::Error::without_url`), and the text of Chat's own error
//! messages has the webhook's key and token removed before anyone logs it.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::webhook_url::WebhookUrl;

/// What Chat's answer means for the post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostOutcome {
    /// Stored by Chat (or already stored under this request id), in this thread when the
    /// answer names it.
    Accepted { thread: Option<String> },
    /// Try again later: 429, 5xx, a timeout or a connection failure.
    Retry {
        /// `Retry-After`, when Chat sent one.
        after: Option<Duration>,
        /// A short, bounded reason for logs and metrics (`429`, `503`, `timeout`, ...).
        reason: String,
    },
    /// Chat refused (400, 401, 403, 404, ...): retrying the same request will not help.
    Refused { status: u16, message: String },
}

/// Where a post comes from, sent along as `x-chattail-host` and `x-chattail-rule` request
/// headers to any host but Google's (a sandbox or a proxy), which shows them next to each
/// message. Google gets no more than the message itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostLabels<'a> {
    pub host: &'a str,
    pub rules: &'a [String],
}

/// A Chat client: one pooled HTTP client with explicit timeouts and no redirects.
#[derive(Clone, Debug)]
pub struct ChatClient {
    http: reqwest::Client,
}

impl ChatClient {
    pub fn new(request_timeout: Duration) -> Result<Self, reqwest::Error> {
        // The process's TLS provider is ring (see Cargo.toml); installing it again, for a
        // second client, is refused harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(2)
            // A redirect would carry the secret query to another host.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("chattail/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(reqwest::Error::without_url)?;
        Ok(Self { http })
    }

    /// Posts `text` (with `card`, a `cardsV2` entry as JSON, when given) into the thread
    /// `thread_key` with an idempotency `request_id`.
    pub async fn post(
        &self,
        url: &WebhookUrl,
        thread_key: &str,
        (text, card): (&str, Option<&str>),
        request_id: &str,
        labels: PostLabels<'_>,
    ) -> PostOutcome {
        let mut target = match url::Url::parse(url.expose_secret()) {
            Ok(u) => u,
            Err(_) => {
                return PostOutcome::Refused {
                    status: 0,
                    message: "the webhook URL cannot be parsed".to_owned(),
                };
            }
        };
        target
            .query_pairs_mut()
            .append_pair("messageReplyOption", "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD")
            .append_pair("requestId", request_id);
        let mut body = json!({ "text": text, "thread": { "threadKey": thread_key } });
        // A stored card that cannot be read (it was written by this code, so only a
        // damaged database) is left out: the text alone is still the alert.
        if let Some(entry) = card.and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok()) {
            body["cardsV2"] = json!([entry]);
            // Where cards cannot be shown (some clients, notifications): the text's start.
            body["fallbackText"] = json!(text.chars().take(200).collect::<String>());
        }
        let response = self
            .http
            .post(target)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/json; charset=UTF-8",
            )
            .headers(if url.host() == crate::webhook_url::CHAT_API_HOST {
                reqwest::header::HeaderMap::new()
            } else {
                label_headers(labels)
            })
            .body(body.to_string())
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(error) => {
                let error = error.without_url();
                let reason = if error.is_timeout() {
                    "timeout"
                } else if error.is_connect() {
                    "connect"
                } else {
                    "network"
                };
                tracing::debug!(%error, reason, "Chat request failed.");
                return PostOutcome::Retry {
                    after: None,
                    reason: reason.to_owned(),
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| parse_retry_after(v.as_bytes()));
        // Read the body with a cap, so a hostile server cannot make the agent hold
        // megabytes (errors give their message; a success names the thread).
        let body = read_capped(response, 16 * 1024).await;
        classify(status, retry_after, &body, url)
    }
}

/// The labels as headers; a value that is not a valid header value is left out.
fn label_headers(labels: PostLabels<'_>) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    let rules = labels.rules.join(", ");
    for (name, value) in [
        ("x-chattail-host", labels.host),
        ("x-chattail-rule", &rules),
    ] {
        if let Ok(value) = reqwest::header::HeaderValue::from_str(value)
            && !value.is_empty()
        {
            headers.insert(name, value);
        }
    }
    headers
}

/// A `Retry-After` header in seconds (the form Google sends). An HTTP date, a negative
/// or fractional number or junk gives `None` (the backoff alone decides); a huge number
/// is kept as it is, because the worker caps every wait at `max_backoff`.
fn parse_retry_after(value: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Digits only: a value past u64 seconds saturates instead of being dropped.
    Some(Duration::from_secs(text.parse::<u64>().unwrap_or(u64::MAX)))
}

async fn read_capped(mut response: reqwest::Response, cap: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = cap.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= cap {
            break;
        }
    }
    body
}

fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    url: &WebhookUrl,
) -> PostOutcome {
    // 409 ALREADY_EXISTS: a message with this id is stored already.
    if status.is_success() || status == StatusCode::CONFLICT {
        let thread = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.pointer("/thread/name")?.as_str().map(str::to_owned));
        return PostOutcome::Accepted { thread };
    }
    let code = status.as_u16();
    if code == 429 || code == 408 || status.is_server_error() {
        return PostOutcome::Retry {
            after: retry_after,
            reason: code.to_string(),
        };
    }
    PostOutcome::Refused {
        status: code,
        message: error_message(body, url),
    }
}

/// Chat's `error.message`, or the start of a non-JSON body, cleaned for a log line.
fn error_message(body: &[u8], url: &WebhookUrl) -> String {
    let text = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    // Redact the whole text before cutting it, so a key or token that straddles the cut
    // cannot survive as a prefix the redaction no longer recognises.
    let text: String = url
        .redact(&text)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    text.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any header bytes: no panic; digits only give a duration, saturating.
        #[test]
        fn retry_after_takes_any_bytes(value in proptest::collection::vec(any::<u8>(), 0..40)) {
            let parsed = parse_retry_after(&value);
            let digits = std::str::from_utf8(&value)
                .map(|t| t.trim())
                .is_ok_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()));
            prop_assert_eq!(parsed.is_some(), digits);
        }

        /// Any body, any status: the message is one line of at most 300 characters and
        /// never holds the webhook's key or token.
        #[test]
        fn error_bodies_never_leak_or_grow(
            junk in proptest::collection::vec(any::<u8>(), 0..600),
            message in ".{0,500}",
            status in 400u16..600,
        ) {
            let json = serde_json::json!({"error": {"code": status, "message": format!("{message} KEY123 TOK456")}});
            for body in [junk, json.to_string().into_bytes()] {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                if let PostOutcome::Refused { message, .. } = classify(status, None, &body, &url()) {
                    prop_assert!(message.chars().count() <= 300);
                    prop_assert!(!message.contains('\n') && !message.contains('\r'));
                    prop_assert!(!message.contains("KEY123") && !message.contains("TOK456"));
                }
            }
        }
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after(b"3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(b" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after(b"18446744073709551616"),
            Some(Duration::from_secs(u64::MAX))
        );
        for junk in [
            &b""[..],
            b"-1",
            b"1.5",
            b"Wed, 21 Oct 2026 07:28:00 GMT",
            b"\xff",
        ] {
            assert_eq!(parse_retry_after(junk), None);
        }
    }

    fn url() -> WebhookUrl {
        WebhookUrl::parse(
            "https://chat.googleapis.com/v1/spaces/S/messages?key=KEY123&token=TOK456",
        )
        .unwrap()
    }

    #[test]
    fn classifies_chats_answers() {
        let ok = classify(StatusCode::OK, None, b"not json", &url());
        assert!(matches!(ok, PostOutcome::Accepted { .. }));
        let busy = classify(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(3)),
            b"",
            &url(),
        );
        assert_eq!(
            busy,
            PostOutcome::Retry {
                after: Some(Duration::from_secs(3)),
                reason: "429".into()
            }
        );
        let down = classify(StatusCode::SERVICE_UNAVAILABLE, None, b"", &url());
        assert!(matches!(down, PostOutcome::Retry { .. }));
        let body = br#"{"error":{"code":403,"message":"The API is called without a valid token TOK456.\nInstructions","status":"PERMISSION_DENIED"}}"#;
        match classify(StatusCode::FORBIDDEN, None, body, &url()) {
            PostOutcome::Refused { status, message } => {
                assert_eq!(status, 403);
                assert_eq!(
                    message,
                    "The API is called without a valid token …. Instructions"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
