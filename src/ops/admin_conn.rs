//! Connections to the admin endpoint, bounded: at most [`MAX_CONNECTIONS`] at once, and
//! each closed after [`IDLE_TIMEOUT`] without progress. Idle or half-sent connections
//! (a port scanner, a stuck client, a hostile peer) therefore cannot take the descriptors
//! that reading and delivery need, nor starve `/healthz` itself for long. Connections
//! beyond the cap wait in the kernel's backlog, which costs the agent no descriptor.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The most admin connections open at once.
pub const MAX_CONNECTIONS: usize = 32;
/// A connection with no byte read or written for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener that holds a permit per open connection.
pub struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

impl LimitedListener {
    pub fn new(inner: TcpListener) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed, so this waits for a permit and never fails; the
        // fallback keeps the type honest without a panic.
        let permit = loop {
            if let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await {
                break permit;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let conn = LimitedConn {
                        stream,
                        _permit: permit,
                        idle: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
                    };
                    return (conn, addr);
                }
                Err(error) => {
                    // Out of descriptors (or a connection reset before accept): wait
                    // rather than spin; the agent's other work goes on.
                    tracing::debug!(%error, "The admin endpoint cannot accept a connection.");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection that gives its permit back when dropped and times out when
/// idle.
pub struct LimitedConn {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Pin<Box<Sleep>>,
}

impl LimitedConn {
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        self.idle.as_mut().poll(cx).is_ready()
    }

    fn progressed(&mut self) {
        self.idle.as_mut().reset(Instant::now() + IDLE_TIMEOUT);
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "admin connection idle")
}

impl AsyncRead for LimitedConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending if this.timed_out(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for LimitedConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                this.progressed();
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending if this.timed_out(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
