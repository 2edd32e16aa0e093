//! The Redis URL of fleet mode (`fleet.redis`), treated like a webhook URL: the user and
//! password in it are secret, so it is shown as host, port and database only.

use secrecy::{ExposeSecret, SecretString};

/// Why a Redis URL was refused. No variant carries any part of the URL except the scheme.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisUrlError {
    #[error("is not a URL ({0})")]
    Syntax(String),
    #[error("must use redis:// or rediss:// (TLS), not `{0}:`")]
    Scheme(String),
    #[error("has no host")]
    NoHost,
    #[error("names database `{0}`; write a number, e.g. redis://host:6379/0")]
    Database(String),
}

/// A validated `redis://[user:password@]host[:port][/db]` URL.
pub struct RedisUrl {
    secret: SecretString,
    host: String,
    port: u16,
    db: u32,
    /// `rediss://`: TLS, verified against the OS's trust store.
    tls: bool,
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrl({}:{}/{})", self.host, self.port, self.db)
    }
}

impl Clone for RedisUrl {
    fn clone(&self) -> Self {
        Self {
            secret: SecretString::from(self.secret.expose_secret().to_owned()),
            host: self.host.clone(),
            port: self.port,
            db: self.db,
            tls: self.tls,
        }
    }
}

impl PartialEq for RedisUrl {
    fn eq(&self, other: &Self) -> bool {
        self.secret.expose_secret() == other.secret.expose_secret()
    }
}

/// What a connection needs, with the secret parts (kept secret: `Debug` shows none).
pub struct RedisTarget<'a> {
    pub tls: bool,
    pub host: &'a str,
    pub port: u16,
    pub db: u32,
    pub user: Option<SecretString>,
    pub password: Option<SecretString>,
}

/// Percent-decodes a URL's user or password as RFC 3986 userinfo: `%40` is `@`, and a
/// literal `+` or `&` is itself (it is not a form, where `+` would be a space).
fn decode_userinfo(raw: &str) -> SecretString {
    SecretString::from(
        percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

impl RedisUrl {
    pub fn parse(raw: &str) -> Result<Self, RedisUrlError> {
        // The url crate's error text never includes the input.
        let parsed =
            url::Url::parse(raw.trim()).map_err(|e| RedisUrlError::Syntax(e.to_string()))?;
        let tls = match parsed.scheme() {
            "redis" => false,
            "rediss" => true,
            other => return Err(RedisUrlError::Scheme(other.to_owned())),
        };
        let host = parsed
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            .filter(|h| !h.is_empty())
            .ok_or(RedisUrlError::NoHost)?;
        let path = parsed.path().trim_start_matches('/');
        let db = if path.is_empty() {
            0
        } else {
            path.parse()
                .map_err(|_| RedisUrlError::Database(path.chars().take(20).collect()))?
        };
        Ok(Self {
            secret: SecretString::from(raw.trim().to_owned()),
            host,
            port: parsed.port().unwrap_or(6379),
            db,
            tls,
        })
    }

    /// `host:port/db` (with ` (TLS)` for rediss://), safe to show.
    pub fn display(&self) -> String {
        let tls = if self.tls { " (TLS)" } else { "" };
        format!("{}:{}/{}{tls}", self.host, self.port, self.db)
    }

    /// Where to connect and how to log in. Only the fleet client calls this.
    pub fn target(&self) -> RedisTarget<'_> {
        let parsed = url::Url::parse(self.secret.expose_secret()).ok();
        let user = parsed
            .as_ref()
            .map(url::Url::username)
            .filter(|u| !u.is_empty())
            .map(decode_userinfo);
        let password = parsed
            .as_ref()
            .and_then(url::Url::password)
            .map(decode_userinfo);
        RedisTarget {
            tls: self.tls,
            host: &self.host,
            port: self.port,
            db: self.db,
            user,
            password,
        }
    }

    /// `text` with the URL's user and password replaced by `***`, in their decoded and
    /// their written (percent-encoded) forms. A secret too short to replace without
    /// mangling the text (under 4 bytes) that appears in it withholds the whole text.
    pub fn redact(&self, text: &str) -> String {
        let target = self.target();
        let parsed = url::Url::parse(self.secret.expose_secret()).ok();
        let written = parsed.as_ref().map(|p| {
            [
                p.username().to_owned(),
                p.password().unwrap_or("").to_owned(),
            ]
        });
        let mut secrets: Vec<String> = [target.password, target.user]
            .into_iter()
            .flatten()
            .map(|s| s.expose_secret().to_owned())
            .chain(written.into_iter().flatten())
            .filter(|s| !s.is_empty())
            .collect();
        // Longest first, so a secret that contains another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut out = text.to_owned();
        for secret in &secrets {
            if !out.contains(secret.as_str()) {
                continue;
            }
            if secret.len() < 4 {
                return "(text withheld: it may contain the Redis password)".to_owned();
            }
            out = out.replace(secret.as_str(), "***");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_host_port_and_db_only() {
        let url = RedisUrl::parse("redis://agent:s3cr%40t@redis.internal:6380/2").unwrap();
        assert_eq!(url.display(), "redis.internal:6380/2");
        let debug = format!("{url:?}");
        assert!(
            !debug.contains("s3cr") && !debug.contains("agent"),
            "{debug}"
        );
        let target = url.target();
        assert_eq!(target.user.unwrap().expose_secret(), "agent");
        assert_eq!(target.password.unwrap().expose_secret(), "s3cr@t");
        assert_eq!(url.redact("auth s3cr@t failed"), "auth *** failed");
        assert_eq!(url.redact("auth s3cr%40t failed"), "auth *** failed");
    }

    #[test]
    fn userinfo_is_decoded_as_rfc_3986_not_as_a_form() {
        let url = RedisUrl::parse("redis://us%2Ber:a+b&c%40d:e@localhost:6379").unwrap();
        let target = url.target();
        assert_eq!(target.user.unwrap().expose_secret(), "us+er");
        assert_eq!(target.password.unwrap().expose_secret(), "a+b&c@d:e");
    }

    #[test]
    fn short_secrets_withhold_the_text_that_holds_them() {
        for password in ["Z", "Zq", "Zqx"] {
            let url = RedisUrl::parse(&format!("redis://:{password}@localhost")).unwrap();
            let echoed = format!("ERR invalid password '{password}'");
            let shown = url.redact(&echoed);
            assert!(!shown.contains(password), "{shown}");
        }
        let url = RedisUrl::parse("redis://:Zq@localhost").unwrap();
        assert_eq!(url.redact("Connection refused"), "Connection refused");
    }

    #[test]
    fn refusals_name_no_secret() {
        for (raw, expected) in [
            ("http://u:pw@host", RedisUrlError::Scheme("http".into())),
            (
                "redis://u:pw@host/zero",
                RedisUrlError::Database("zero".into()),
            ),
        ] {
            let error = RedisUrl::parse(raw).unwrap_err();
            assert_eq!(error, expected);
            assert!(!error.to_string().contains("pw"));
        }
        assert_eq!(
            RedisUrl::parse("redis://localhost").unwrap().display(),
            "localhost:6379/0"
        );
        assert_eq!(
            RedisUrl::parse("rediss://u:pw@cache.example:6380")
                .unwrap()
                .display(),
            "cache.example:6380/0 (TLS)"
        );
    }
}
