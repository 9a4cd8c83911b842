//! Accepted connections for leakbloom's gRPC servers (a node's client and peer ports, a
//! router's port): [`Incoming`] is what each hands to tonic's `serve_with_incoming_shutdown`
//! in place of tonic's own `TcpIncoming`, with TCP_NODELAY as before, and its connections
//! ([`Conn`]) close themselves when they stall:
//! - a connection that has not sent the 24-byte HTTP/2 client preface within
//!   [`Timeouts::handshake`] (default [`DEFAULT_HANDSHAKE_TIMEOUT`]) is closed;
//! - a connection that has received no byte for [`Timeouts::idle`] (default
//!   [`DEFAULT_IDLE_TIMEOUT`]) is closed.
//!
//! # Layout
//! - [`Timeouts`]: the two limits, with their defaults.
//! - [`Incoming`]: the accept stream over a bound `TcpListener`.
//! - [`Conn`]: one accepted connection: the TCP stream, the bytes of preface seen so far, when
//!   a byte last arrived, and one timer.
//! - [`free_port`] (module `port`): a port for a server whose peers must know its address
//!   before it binds.
//!
//! # Why
//! Neither tonic nor hyper closes a server connection that says nothing: a client that
//! connects and never speaks, or connects, speaks and walks away, holds a socket and a task
//! for ever, and enough of them exhaust the process's file descriptors. HTTP/2 keepalive pings
//! from the server do not help, since an idle but live client answers them. Counting received
//! bytes does: every client of ours sends something well within the idle timeout (routers and
//! nodes ping their channels every few seconds), so only abandoned connections go that long
//! in silence.
//!
//! # How
//! A connection is only looked at when the server reads it: each read that returns bytes
//! notes the time (one clock read, no timer work); a read that must wait polls the one timer,
//! which is moved only when it fires early (activity since) or when the preface completes. A
//! timed-out read returns `ErrorKind::TimedOut`, and hyper drops the connection.
//!
//! # Caveats
//! - The close is abrupt (no GOAWAY): a client that sent nothing for the idle timeout sees its
//!   connection reset, and a call it starts at that very moment fails (retryable, as a broken
//!   connection). A call that waits longer than the idle timeout for its answer on a
//!   connection that sends nothing meanwhile (no keepalive pings) is cut off.
//! - Only reads are timed: a client that keeps sending but never reads is not caught here
//!   (HTTP/2 flow control stops the server writing to it).
//! - The number of connections is not limited here.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

mod port;
pub use port::free_port;

/// Length of the HTTP/2 client connection preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`), the
/// first bytes every gRPC client sends.
pub const PREFACE_LEN: usize = 24;

/// Default time to send the preface: a client sends it as soon as it connects, so this is a
/// stalled or hostile client even on a loaded machine.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time without a received byte: routers and nodes ping their channels every 5 s, so
/// only an abandoned connection is silent this long.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// When a connection that stalls is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From accepting a connection to its last preface byte.
    pub handshake: Duration,
    /// Without a received byte, once the preface is in.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            handshake: DEFAULT_HANDSHAKE_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// Accepted connections of a listener, with TCP_NODELAY (small replies must not wait for
/// Nagle's algorithm: with it a forwarding hop was measured at ~1 K requests/s instead of
/// ~20 K), each closed when it stalls (see the [crate docs](crate)).
#[derive(Debug)]
pub struct Incoming {
    inner: TcpIncoming,
    timeouts: Timeouts,
}

impl Incoming {
    /// Accepts on `listener`; its connections close after `timeouts`.
    pub fn new(listener: TcpListener, timeouts: Timeouts) -> Incoming {
        Incoming {
            inner: TcpIncoming::from(listener).with_nodelay(Some(true)),
            timeouts,
        }
    }
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let timeouts = self.timeouts;
        let accepted = ready!(Pin::new(&mut self.inner).poll_next(cx));
        Poll::Ready(accepted.map(|stream| stream.map(|stream| Conn::new(stream, timeouts))))
    }
}

/// One accepted connection: a `TcpStream` whose reads fail with `ErrorKind::TimedOut` once it
/// has stalled past its [`Timeouts`].
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    timeouts: Timeouts,
    /// The other end, for the log.
    peer: Option<SocketAddr>,
    accepted: Instant,
    /// Bytes received so far, counted up to [`PREFACE_LEN`].
    preface: usize,
    /// When a byte last arrived.
    last_read: Instant,
    /// Fires at or before the deadline; moved when it fires early.
    timer: Pin<Box<Sleep>>,
}

impl Conn {
    /// Wraps a connection accepted just now.
    pub fn new(stream: TcpStream, timeouts: Timeouts) -> Conn {
        let now = Instant::now();
        Conn {
            peer: stream.peer_addr().ok(),
            stream,
            timeouts,
            accepted: now,
            preface: 0,
            last_read: now,
            timer: Box::pin(tokio::time::sleep_until(now + timeouts.handshake)),
        }
    }

    /// When the connection times out unless a byte arrives first.
    fn deadline(&self) -> Instant {
        if self.preface < PREFACE_LEN {
            self.accepted + self.timeouts.handshake
        } else {
            self.last_read + self.timeouts.idle
        }
    }

    /// Notes `n` bytes received.
    fn received(&mut self, n: usize) {
        self.last_read = Instant::now();
        if self.preface < PREFACE_LEN {
            self.preface = (self.preface + n).min(PREFACE_LEN);
            if self.preface == PREFACE_LEN {
                // The idle deadline may come before the handshake one the timer is set to.
                let deadline = self.deadline();
                self.timer.as_mut().reset(deadline);
            }
        }
    }

    /// Ready with the error to fail the read with once the deadline has passed.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let deadline = self.deadline();
            if Instant::now() < deadline {
                // Bytes arrived since the timer was set.
                self.timer.as_mut().reset(deadline);
                continue;
            }
            let why = if self.preface < PREFACE_LEN {
                format!(
                    "no HTTP/2 preface within {:?} ({} of {PREFACE_LEN} bytes)",
                    self.timeouts.handshake, self.preface
                )
            } else {
                format!("idle for {:?}", self.timeouts.idle)
            };
            tracing::debug!(peer = ?self.peer, reason = %why, "closing a connection");
            return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, why));
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    this.received(n);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => this.poll_expired(cx).map(Err),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const PREFACE: &[u8; PREFACE_LEN] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// A listener whose connections close after `timeouts`, and a client connected to it; the
    /// server side is returned unread.
    async fn pair(timeouts: Timeouts) -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Incoming::new(listener, timeouts);
        let client = TcpStream::connect(addr).await.unwrap();
        let conn = incoming.next().await.unwrap().unwrap();
        assert!(conn.stream.nodelay().unwrap());
        (conn, client)
    }

    /// Reads `conn` until it fails; returns the error and how long that took.
    async fn read_until_closed(mut conn: Conn) -> (io::Error, Duration) {
        let start = Instant::now();
        let mut buf = [0u8; 64];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) => panic!("the client closed first"),
                Ok(_) => {}
                Err(error) => return (error, start.elapsed()),
            }
        }
    }

    const SHORT: Timeouts = Timeouts {
        handshake: Duration::from_millis(300),
        idle: Duration::from_millis(600),
    };

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
        let (conn, _client) = pair(SHORT).await;
        let (error, after) = read_until_closed(conn).await;
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(error.to_string().contains("0 of 24 bytes"), "{error}");
        assert!(after >= SHORT.handshake, "{after:?}");
    }

    #[tokio::test]
    async fn a_partial_preface_is_closed_after_the_handshake_timeout() {
        let (conn, mut client) = pair(SHORT).await;
        client.write_all(&PREFACE[..10]).await.unwrap();
        let (error, after) = read_until_closed(conn).await;
        assert!(error.to_string().contains("10 of 24 bytes"), "{error}");
        assert!(after >= SHORT.handshake, "{after:?}");
    }

    #[tokio::test]
    async fn a_connection_is_closed_once_idle_and_not_while_bytes_arrive() {
        let timeouts = Timeouts {
            handshake: Duration::from_secs(10),
            ..SHORT
        };
        let (conn, mut client) = pair(timeouts).await;
        let start = Instant::now();
        let reader = tokio::spawn(read_until_closed(conn));
        client.write_all(PREFACE).await.unwrap();
        // A byte every idle/3, for 4 idle periods: the connection stays open.
        for _ in 0..12 {
            tokio::time::sleep(timeouts.idle / 3).await;
            assert!(!reader.is_finished(), "closed after {:?}", start.elapsed());
            client.write_all(b"x").await.unwrap();
        }
        let last = Instant::now();
        let (error, _) = reader.await.unwrap();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(error.to_string().contains("idle"), "{error}");
        // Closed idle after the last byte, long before the handshake timeout.
        assert!(last.elapsed() >= timeouts.idle, "{:?}", last.elapsed());
        assert!(
            start.elapsed() < timeouts.handshake,
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn the_client_sees_the_close() {
        let (conn, mut client) = pair(SHORT).await;
        tokio::spawn(async move {
            // The server drops the connection once its read fails, as hyper does.
            let _ = read_until_closed(conn).await;
        });
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
            .await
            .expect("the connection was not closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
