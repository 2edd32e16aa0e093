//! A listener for the HTTP servers chattail runs (the admin endpoint, the sandbox) whose
//! connections are bounded: at most a number open at once, and each closed after a time
//! without progress. Idle or half-sent connections (a port scanner, a stuck client, a
//! hostile peer) therefore cannot take the descriptors that reading and delivery need,
//! nor starve the server itself for long. Connections beyond the cap wait in the kernel's
//! backlog, which costs no descriptor.
//!
//! A handler can also close its own connection without an answer ([`Closer`], taken as
//! connect info), as a lost reply would: the sandbox's fault injection needs that.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The admin endpoint's bounds: at most 32 connections, each closed after 10 s without
/// a byte read or written.
pub const ADMIN_CONNECTIONS: usize = 32;
pub const ADMIN_IDLE: Duration = Duration::from_secs(10);

/// A listener that holds a permit per open connection.
pub struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    idle: Duration,
}

impl LimitedListener {
    /// At most `max` connections open at once, each closed after `idle` without progress.
    pub fn new(inner: TcpListener, max: usize, idle: Duration) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(max)),
            idle,
        }
    }
}

/// Closes the connection a request came on, without an answer: what the handler then
/// returns is never written.
#[derive(Debug, Clone)]
pub struct Closer(Arc<AtomicBool>);

impl Closer {
    pub fn close(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, LimitedListener>>
    for Closer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, LimitedListener>) -> Self {
        stream.io().closer.clone()
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
                        idle_for: self.idle,
                        idle: Box::pin(tokio::time::sleep(self.idle)),
                        closer: Closer(Arc::new(AtomicBool::new(false))),
                    };
                    return (conn, addr);
                }
                Err(error) => {
                    // Out of descriptors (or a connection reset before accept): wait
                    // rather than spin; the agent's other work goes on.
                    tracing::debug!(%error, "Cannot accept a connection.");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection that gives its permit back when dropped, times out when idle
/// and ends when its [`Closer`] says so.
pub struct LimitedConn {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle_for: Duration,
    idle: Pin<Box<Sleep>>,
    closer: Closer,
}

impl LimitedConn {
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        self.idle.as_mut().poll(cx).is_ready()
    }

    fn progressed(&mut self) {
        let idle_for = self.idle_for;
        self.idle.as_mut().reset(Instant::now() + idle_for);
    }

    fn closed(&self) -> bool {
        self.closer.0.load(Ordering::Relaxed)
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle")
}

fn closed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by its handler",
    )
}

impl AsyncRead for LimitedConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed() {
            return Poll::Ready(Err(closed_error()));
        }
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
        if this.closed() {
            return Poll::Ready(Err(closed_error()));
        }
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
