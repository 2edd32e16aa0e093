//! A small Redis client for the few commands fleet mode needs: `AUTH`, `SELECT`,
//! `SCRIPT LOAD`, `EVALSHA` (with `EVAL` when the server lost its scripts) and `PING`,
//! over RESP2 on one TCP connection. A reply is bounded as a whole (its items and their
//! bytes together), so a hostile or broken server cannot make the agent hold megabytes.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use secrecy::ExposeSecret;

use crate::redis_url::RedisTarget;

/// The error code of a server's refusal of a login, when it is one Redis uses (`WRONGPASS`,
/// `NOAUTH`, `NOPERM`, `ERR`), and nothing else of its text: a server or proxy may start
/// its text with the password it was sent.
fn error_code(text: &str) -> String {
    let first = text.split_whitespace().next().unwrap_or("");
    match first {
        "WRONGPASS" | "NOAUTH" | "NOPERM" | "ERR" => first.to_owned(),
        _ => "an unknown error code".to_owned(),
    }
}

/// What one reply may take, in bytes: its strings' lengths plus [`ITEM_COST`] per item,
/// whatever their nesting. Fleet mode's largest reply is a window's totals, a few KiB.
const MAX_REPLY_BYTES: usize = 1024 * 1024;
/// What an item costs against [`MAX_REPLY_BYTES`] beside its bytes (about its size in
/// memory).
const ITEM_COST: usize = 32;

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    #[error("cannot reach Redis: {0}")]
    Io(#[from] std::io::Error),
    #[error("Redis answered an error: {0}")]
    Server(String),
    #[error("Redis sent a reply that is not RESP: {0}")]
    Protocol(&'static str),
    /// The login failed. The server's text is never kept: some servers echo the password.
    #[error("Redis refused the user or password ({0})")]
    Auth(String),
}

impl RespError {
    /// Whether the server lost its script cache (after a restart).
    pub fn is_noscript(&self) -> bool {
        matches!(self, RespError::Server(m) if m.starts_with("NOSCRIPT"))
    }
}

/// A byte stream to Redis: plain TCP or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// One connection.
pub struct Connection {
    stream: BufReader<Box<dyn Io>>,
}

impl Connection {
    /// Connects and logs in (`AUTH`, `SELECT` when needed).
    pub async fn open(target: &RedisTarget<'_>) -> Result<Self, RespError> {
        let tcp = TcpStream::connect((target.host, target.port)).await?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Io> = if target.tls {
            use rustls_platform_verifier::ConfigVerifierExt;
            // The process's TLS provider is ring (as for Chat); refused harmlessly when
            // it is installed already.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let config = rustls::ClientConfig::with_platform_verifier()
                .map_err(|e| RespError::Io(std::io::Error::other(e)))?;
            let name = rustls::pki_types::ServerName::try_from(target.host.to_owned())
                .map_err(|e| RespError::Io(std::io::Error::other(e)))?;
            let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
            Box::new(connector.connect(name, tcp).await?)
        } else {
            Box::new(tcp)
        };
        let mut conn = Self {
            stream: BufReader::new(stream),
        };
        let login = match (&target.user, &target.password) {
            (Some(user), Some(password)) => Some(
                conn.call(&[
                    b"AUTH",
                    user.expose_secret().as_bytes(),
                    password.expose_secret().as_bytes(),
                ])
                .await,
            ),
            (None, Some(password)) => Some(
                conn.call(&[b"AUTH", password.expose_secret().as_bytes()])
                    .await,
            ),
            _ => None,
        };
        match login {
            Some(Err(RespError::Server(text))) => return Err(RespError::Auth(error_code(&text))),
            Some(Err(other)) => return Err(other),
            _ => {}
        }
        if target.db != 0 {
            conn.call(&[b"SELECT", target.db.to_string().as_bytes()])
                .await?;
        }
        Ok(conn)
    }

    /// Sends one command and reads its reply; an error reply is an `Err`.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Value, RespError> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&out).await?;
        let mut budget = MAX_REPLY_BYTES;
        self.read_value(0, &mut budget).await
    }

    async fn read_line(&mut self) -> Result<String, RespError> {
        let mut line = Vec::new();
        let n = (&mut self.stream)
            .take(64 * 1024)
            .read_until(b'\n', &mut line)
            .await?;
        // Nothing, or a line cut short before its newline: the connection ended (a Redis
        // restarted or gone), which is not a protocol error.
        if n == 0 || (!line.ends_with(b"\n") && line.len() < 64 * 1024) {
            return Err(RespError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection to Redis lost (closed by the server)",
            )));
        }
        if !line.ends_with(b"\r\n") {
            return Err(RespError::Protocol("a line without CRLF"));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|_| RespError::Protocol("a line that is not UTF-8"))
    }

    /// Reads one value, charging it (and everything in it) to `budget`.
    fn read_value<'a>(
        &'a mut self,
        depth: usize,
        budget: &'a mut usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, RespError>> + Send + 'a>>
    {
        Box::pin(async move {
            if depth > 8 {
                return Err(RespError::Protocol("arrays nested too deep"));
            }
            *budget = budget
                .checked_sub(ITEM_COST)
                .ok_or(RespError::Protocol("a reply too large"))?;
            let line = self.read_line().await?;
            *budget = budget
                .checked_sub(line.len())
                .ok_or(RespError::Protocol("a reply too large"))?;
            // The type is one ASCII byte; anything else is not RESP (and must not be split
            // inside a multi-byte character).
            let Some((kind, rest)) = line
                .get(..1)
                .filter(|k| k.is_ascii())
                .map(|k| (k, &line[1..]))
            else {
                return Err(RespError::Protocol("an unknown reply type"));
            };
            let number = || {
                rest.parse::<i64>()
                    .map_err(|_| RespError::Protocol("a length that is not a number"))
            };
            match kind {
                "+" => Ok(Value::Simple(rest.to_owned())),
                // Kept whole: the caller redacts the password, then cuts it.
                "-" => Err(RespError::Server(rest.to_owned())),
                ":" => Ok(Value::Int(number()?)),
                "$" => {
                    let len = number()?;
                    if len < 0 {
                        return Ok(Value::Bulk(None));
                    }
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    *budget = budget
                        .checked_sub(len)
                        .ok_or(RespError::Protocol("a reply too large"))?;
                    let mut data = vec![0; len + 2];
                    self.stream.read_exact(&mut data).await?;
                    data.truncate(len);
                    Ok(Value::Bulk(Some(data)))
                }
                "*" => {
                    let len = number()?;
                    if len < 0 {
                        return Ok(Value::Array(None));
                    }
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    if len.saturating_mul(ITEM_COST) > *budget {
                        return Err(RespError::Protocol("a reply too large"));
                    }
                    let mut items = Vec::with_capacity(len.min(64));
                    for _ in 0..len {
                        items.push(self.read_value(depth + 1, budget).await?);
                    }
                    Ok(Value::Array(Some(items)))
                }
                _ => Err(RespError::Protocol("an unknown reply type")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A server that answers the first command with `reply`, then closes.
    async fn answering(reply: Vec<u8>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
            let _ = stream.write_all(&reply).await;
        });
        port
    }

    async fn call_with(reply: Vec<u8>) -> Result<Value, RespError> {
        let port = answering(reply).await;
        let target = RedisTarget {
            tls: false,
            host: "127.0.0.1",
            port,
            db: 0,
            user: None,
            password: None,
        };
        let mut conn = Connection::open(&target).await?;
        conn.call(&[b"PING"]).await
    }

    #[tokio::test]
    async fn a_reply_is_bounded_as_a_whole_not_per_item() {
        // A thousand arrays of a thousand small items: each array is small enough, the
        // whole is not, and reading stops at the budget instead of holding it all.
        let mut reply = b"*1000\r\n".to_vec();
        for _ in 0..100 {
            reply.extend_from_slice(b"*1000\r\n");
            for _ in 0..1000 {
                reply.extend_from_slice(b":1\r\n");
            }
        }
        assert!(matches!(
            call_with(reply).await,
            Err(RespError::Protocol("a reply too large"))
        ));
        // One bulk string over the budget is refused before it is read.
        let reply = format!("${}\r\n", MAX_REPLY_BYTES + 1).into_bytes();
        assert!(matches!(
            call_with(reply).await,
            Err(RespError::Protocol("a reply too large"))
        ));
        // Ordinary replies pass.
        let reply = b"*2\r\n:5\r\n$3\r\nabc\r\n".to_vec();
        assert_eq!(
            call_with(reply).await.unwrap(),
            Value::Array(Some(vec![
                Value::Int(5),
                Value::Bulk(Some(b"abc".to_vec()))
            ]))
        );
    }

    #[tokio::test]
    async fn a_connection_closed_mid_reply_is_a_lost_connection_not_a_protocol_error() {
        for reply in [b"*2\r\n:1".to_vec(), Vec::new(), b"+O".to_vec()] {
            let error = call_with(reply.clone()).await.unwrap_err();
            assert!(
                matches!(error, RespError::Io(_))
                    && error.to_string().contains("connection to Redis lost"),
                "{reply:?}: {error}"
            );
        }
        // A line that ends in a bare newline is a protocol error.
        assert!(matches!(
            call_with(b"+OK\n".to_vec()).await,
            Err(RespError::Protocol("a line without CRLF"))
        ));
    }
}
