//! `chattail send`: one message through the agent's own Chat client, with Chat's
//! refusals turned into advice. The first thing to try with a real webhook.

use std::time::Duration;

use crate::clock::unix_now_ms;
use crate::config::Config;
use crate::deliver::chat_client::{ChatClient, PostLabels, PostOutcome};
use crate::pipeline::chat_text;

/// How many times a transient failure (429, 5xx, timeout, connection) is tried again.
const ATTEMPTS: u32 = 5;
/// The longest wait between attempts, whatever `Retry-After` says.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// What became of the message.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Chat stored it, in this thread (when its answer named one).
    Posted {
        thread: Option<String>,
        thread_key: String,
        /// The text was over Chat's limit: how long it was, in UTF-16 code units as Chat
        /// counts (it was cut).
        cut: Option<usize>,
    },
    /// Chat refused it: the advice says why and what to do. Retrying will not help.
    Refused { status: u16, advice: String },
    /// Chat did not take it after every attempt (the last reason given).
    GaveUp { attempts: u32, reason: String },
}

/// Why nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no webhook named `{name}` in the config (it has: {known})")]
    UnknownWebhook { name: String, known: String },
    #[error("webhook `{0}` has no usable URL")]
    NoUrl(String),
    #[error("the message is empty; Chat refuses empty messages")]
    Empty,
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// The most characters a message may have; longer ones are cut.
pub use crate::pipeline::chat_text::MAX_TEXT_CHARS;

/// Posts `text` to the webhook `name` of `config`, into the thread `thread_key` (a new
/// thread when `None`), retrying transient failures with one `requestId`.
pub async fn send(
    config: &Config,
    name: &str,
    thread_key: Option<&str>,
    text: &str,
) -> Result<Sent, SendError> {
    let webhook = config
        .webhooks
        .iter()
        .find(|w| w.name == name)
        .ok_or_else(|| SendError::UnknownWebhook {
            name: name.to_owned(),
            known: config
                .webhooks
                .iter()
                .map(|w| format!("`{}`", w.name))
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let url = webhook
        .url
        .as_ref()
        .ok_or_else(|| SendError::NoUrl(name.to_owned()))?;
    if text.trim().is_empty() {
        return Err(SendError::Empty);
    }
    // NUL shown as in log lines; a text over Chat's limit is cut (and the caller says so).
    let shown = chat_text::show_nul(text);
    // Chat counts UTF-16 code units, and so does `fit`.
    let length = chat_text::utf16_len(&shown);
    let text = chat_text::fit(shown);
    let cut = (length > MAX_TEXT_CHARS).then_some(length);
    let client = ChatClient::new(config.delivery.request_timeout)
        .map_err(|e| SendError::Client(e.to_string()))?;
    let now = unix_now_ms();
    // The key is mapped as a rule's is (`chat_thread_key`), so `send --thread` replies
    // into the thread an agent opened with that rendered key. A key of its own gives a
    // new thread, as a message without a key would.
    let thread_key = thread_key
        .map(crate::pipeline::thread_key::chat_thread_key)
        .unwrap_or_else(|| format!("chattail-send-{now}"));
    // One id for every attempt: a retry after a lost answer does not post twice.
    let request_id = format!("chattail-send-{now}-{}", std::process::id());
    let mut reason = String::new();
    for attempt in 1..=ATTEMPTS {
        let labels = PostLabels {
            host: &config.host,
            rules: &[],
        };
        match client
            .post(url, &thread_key, (&text, None), &request_id, labels)
            .await
        {
            PostOutcome::Accepted { thread } => {
                return Ok(Sent::Posted {
                    thread,
                    thread_key,
                    cut,
                });
            }
            PostOutcome::Refused { status, message } => {
                return Ok(Sent::Refused {
                    status,
                    advice: advice(status, &message),
                });
            }
            PostOutcome::Retry { after, reason: why } => {
                reason = why;
                if attempt < ATTEMPTS {
                    let backoff = Duration::from_secs(1 << (attempt - 1));
                    tokio::time::sleep(after.unwrap_or(backoff).min(MAX_WAIT)).await;
                }
            }
        }
    }
    Ok(Sent::GaveUp {
        attempts: ATTEMPTS,
        reason,
    })
}

/// What a refusal means for the operator, with Chat's own words.
pub fn advice(status: u16, message: &str) -> String {
    let said = if message.is_empty() {
        String::new()
    } else {
        format!(" Chat said: \"{message}\"")
    };
    match status {
        401 => format!(
            "Chat answered 401 (UNAUTHENTICATED): the URL's key or token is not accepted. Copy \
             the webhook URL again from the space (Apps & integrations → Webhooks).{said}"
        ),
        403 => format!(
            "Chat answered 403 (PERMISSION_DENIED): the token does not belong to this space's \
             webhook, or the Google Workspace admin restricts apps and incoming webhooks for \
             this space or organisation. Check the URL; if it is right, ask the admin to allow \
             incoming webhooks.{said}"
        ),
        404 => format!(
            "Chat answered 404 (NOT_FOUND): the space or the webhook no longer exists (deleted, \
             or removed from the space). Create a new webhook in the space and put its URL in \
             the config.{said}"
        ),
        400 => format!(
            "Chat answered 400 (INVALID_ARGUMENT): it refused the request as malformed.{said}"
        ),
        0 => format!("The webhook URL cannot be used.{said}"),
        _ => format!("Chat refused the message with status {status}.{said}"),
    }
}
