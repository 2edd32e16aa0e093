//! The webhook URL, held so that it cannot be printed.
//!
//! A Google Chat incoming-webhook URL carries the `key` and `token` that let anyone post
//! into the space. `WebhookUrl` keeps the whole URL in a [`secrecy::SecretString`] and only
//! exposes what is safe to show: the host and the space id. `Debug` prints those two and
//! nothing else; there is no `Display`. The sender is the one caller of
//! [`WebhookUrl::expose_secret`].

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use thiserror::Error;

/// The host of Google's Chat API; URLs for it are checked strictly.
pub const CHAT_API_HOST: &str = "chat.googleapis.com";

/// Why a webhook URL was refused. No variant carries any part of the URL except the scheme
/// or the space id, because the rest may hold the secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UrlError {
    #[error("is not a valid URL ({0})")]
    Syntax(String),
    #[error("must use https:// or http://, not `{0}:`")]
    Scheme(String),
    #[error("must use https:// for {CHAT_API_HOST}")]
    ChatNeedsHttps,
    #[error(
        "must have the path /v1/spaces/SPACE/messages for {CHAT_API_HOST} \
         (copy the whole URL from the space's Apps & integrations page)"
    )]
    ChatPath,
    #[error("is missing the `{0}` query parameter that {CHAT_API_HOST} requires")]
    ChatQuery(&'static str),
    #[error("has an empty host")]
    NoHost,
}

/// A validated webhook URL whose secret parts never reach a log.
#[derive(Clone)]
pub struct WebhookUrl {
    secret: SecretString,
    host: String,
    space: Option<String>,
}

impl WebhookUrl {
    /// Validates `raw` and takes ownership of it.
    ///
    /// For `chat.googleapis.com` the URL must be https, have the path
    /// `/v1/spaces/SPACE/messages` and carry non-empty `key` and `token` query parameters.
    /// Other hosts are accepted over http or https so that a proxy or a local sandbox can
    /// stand in for Chat; their space id is taken from the same path shape when present.
    pub fn parse(raw: &str) -> Result<Self, UrlError> {
        // The url crate's error text never includes the input, so it is safe to pass on.
        let parsed = url::Url::parse(raw.trim()).map_err(|e| UrlError::Syntax(e.to_string()))?;
        let scheme = parsed.scheme();
        if scheme != "https" && scheme != "http" {
            return Err(UrlError::Scheme(scheme.to_owned()));
        }
        // `chat.googleapis.com.` (a fully qualified name) is the same host: normalise
        // before the https-only rule, so a trailing dot cannot sidestep it.
        let host = match parsed.host_str() {
            Some(h) if !h.trim_end_matches('.').is_empty() => {
                h.trim_end_matches('.').to_ascii_lowercase()
            }
            _ => return Err(UrlError::NoHost),
        };
        let space = space_from_path(parsed.path());
        if host == CHAT_API_HOST {
            if scheme != "https" {
                return Err(UrlError::ChatNeedsHttps);
            }
            if space.is_none() {
                return Err(UrlError::ChatPath);
            }
            for required in ["key", "token"] {
                let present = parsed
                    .query_pairs()
                    .any(|(name, value)| name == required && !value.is_empty());
                if !present {
                    return Err(UrlError::ChatQuery(required));
                }
            }
        }
        let host = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host,
        };
        Ok(Self {
            secret: SecretString::from(raw.trim().to_owned()),
            host,
            space,
        })
    }

    /// The host (and port, when one is given), safe to show.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The Chat space id from the path, safe to show. Webhooks of one space share its
    /// posting quota, so the sender groups by this.
    pub fn space(&self) -> Option<&str> {
        self.space.as_deref()
    }

    /// `text` with the URL's secret parts (the values of its query parameters and the
    /// whole URL) replaced by `…`, for text that came back from the server.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.replace(self.secret.expose_secret(), "…");
        if let Ok(parsed) = url::Url::parse(self.secret.expose_secret()) {
            for (_, value) in parsed.query_pairs() {
                if value.len() >= 2 {
                    out = out.replace(value.as_ref(), "…");
                }
            }
            if let Some(query) = parsed.query() {
                for part in query.split('&') {
                    if let Some((_, raw)) = part.split_once('=')
                        && raw.len() >= 2
                    {
                        out = out.replace(raw, "…");
                    }
                }
            }
        }
        out
    }

    /// The full URL including its secret. Only the HTTP sender may call this, and it must
    /// strip the URL from every error it logs.
    pub fn expose_secret(&self) -> &str {
        self.secret.expose_secret()
    }

    /// Whether two URLs are the same, secret included, without showing either.
    pub fn same_as(&self, other: &Self) -> bool {
        self.secret.expose_secret() == other.secret.expose_secret()
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookUrl")
            .field("host", &self.host)
            .field("space", &self.space)
            .finish_non_exhaustive()
    }
}

/// Returns SPACE from a path of the form `/v1/spaces/SPACE/messages`.
fn space_from_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v1/spaces/")?;
    let space = rest.strip_suffix("/messages")?;
    let valid = !space.is_empty()
        && space
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then(|| space.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "https://chat.googleapis.com/v1/spaces/AAAAk6lGXyM/messages?key=SECRETKEY&token=SECRETTOKEN%3D";

    #[test]
    fn accepts_a_chat_url_and_shows_only_host_and_space() {
        let url = WebhookUrl::parse(GOOD).unwrap();
        assert_eq!(url.space(), Some("AAAAk6lGXyM"));
        assert_eq!(url.host(), "chat.googleapis.com");
        assert_eq!(url.expose_secret(), GOOD);
        let debug = format!("{url:?}");
        assert!(!debug.contains("SECRET"), "{debug}");
        assert!(debug.contains("AAAAk6lGXyM"), "{debug}");
    }

    #[test]
    fn refuses_chat_urls_that_cannot_work() {
        let cases = [
            (
                "http://chat.googleapis.com/v1/spaces/A/messages?key=k&token=t",
                UrlError::ChatNeedsHttps,
            ),
            (
                "https://chat.googleapis.com/v1/spaces/A/webhooks?key=k&token=t",
                UrlError::ChatPath,
            ),
            (
                "https://chat.googleapis.com/v1/spaces/A/messages?token=t",
                UrlError::ChatQuery("key"),
            ),
            (
                "https://chat.googleapis.com/v1/spaces/A/messages?key=k&token=",
                UrlError::ChatQuery("token"),
            ),
            ("ftp://example.com/x", UrlError::Scheme("ftp".into())),
        ];
        for (raw, want) in cases {
            assert_eq!(WebhookUrl::parse(raw).err(), Some(want), "{raw}");
        }
    }

    #[test]
    fn errors_never_contain_the_secret() {
        for raw in [
            "https://chat.googleapis.com/v1/spaces/A/messages?token=SECRETTOKEN",
            "not a url SECRETTOKEN",
            "https://[SECRETTOKEN/",
        ] {
            let err = WebhookUrl::parse(raw).unwrap_err().to_string();
            assert!(!err.contains("SECRET"), "{err}");
        }
    }

    #[test]
    fn other_hosts_are_allowed_for_proxies_and_sandboxes() {
        let url = WebhookUrl::parse("http://127.0.0.1:8080/v1/spaces/LOCAL/messages?key=k&token=t")
            .unwrap();
        assert_eq!(url.host(), "127.0.0.1:8080");
        assert_eq!(url.space(), Some("LOCAL"));
        let proxy = WebhookUrl::parse("https://proxy.internal/chat-relay").unwrap();
        assert_eq!(proxy.space(), None);
    }
}
