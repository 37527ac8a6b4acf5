//! A lingering close for a connection closed to make room for a newcomer.
//!
//! Such a connection is idle as far as the proxy can tell: its last answer has been written, but
//! may still sit in the kernel's send buffer, unread by a slow client. Closed outright, the next
//! bytes the client sends (a pipelined request, an HTTP/2 PING or WINDOW_UPDATE) meet a closed
//! socket, the kernel answers them with a reset, drops what it had not sent yet, and the client's
//! kernel throws away what the client had not read (RFC 9293 §3.10.7.4; RFC 9112 §9.6 warns of
//! exactly this). So the socket is shut down for writing (its FIN follows the answer) and kept
//! open, reading and discarding, until the client closes its side or [`LINGER_FOR`] has passed:
//! what nginx's `lingering_close` does.
//!
//! The connection's place goes to the newcomer at once; the lingering socket is held outside
//! `limits.max_connections`, so at most [`MAX_LINGERING`] linger at a time, each for at most
//! [`LINGER_FOR`]. Past that bound a displaced connection is closed outright, as before: a client
//! cannot turn making room into a way of holding sockets.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Semaphore;

use crate::server::capacity::{Activity, Signal};

/// The longest a displaced connection lingers (nginx's `lingering_timeout` default).
pub(super) const LINGER_FOR: Duration = Duration::from_secs(5);
/// The most displaced connections lingering at once, in the whole process.
pub(super) const MAX_LINGERING: usize = 1024;

static LINGERING: Semaphore = Semaphore::const_new(MAX_LINGERING);

/// The client's socket, closed with a linger when its connection was asked to make room.
pub(super) struct Lingering<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// Always there until it is dropped (taken out only by `Drop`).
    io: Option<I>,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Lingering<I> {
    pub fn new(io: I, activity: Arc<Activity>) -> Self {
        Self { io: Some(io), activity }
    }

    fn io(&mut self) -> io::Result<Pin<&mut I>> {
        self.io.as_mut().map(Pin::new).ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Lingering<I> {
    fn drop(&mut self) {
        if self.activity.signal() != Some(Signal::MakeRoom) {
            return;
        }
        let (Some(io), Ok(runtime)) = (self.io.take(), tokio::runtime::Handle::try_current()) else { return };
        let Ok(permit) = LINGERING.try_acquire() else {
            tracing::debug!("{MAX_LINGERING} displaced connections lingering already: closed outright");
            return;
        };
        runtime.spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(LINGER_FOR, linger(io)).await;
        });
    }
}

/// Shuts `io` down for writing, then reads and discards until the client closes or fails.
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(mut io: I) {
    if io.shutdown().await.is_err() {
        return;
    }
    let mut discard = [0u8; 1024];
    while matches!(io.read(&mut discard).await, Ok(n) if n > 0) {}
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Lingering<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.io() {
            Ok(io) => io.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.io() {
            Ok(io) => io.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.io() {
            Ok(io) => io.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(I::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io() {
            Ok(io) => io.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io() {
            Ok(io) => io.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_displaced_connection_is_shut_down_and_read_until_the_client_closes() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Activity::for_tests();
        let io = Lingering::new(server, activity.clone());
        activity.ask_to_close_for_tests();
        let before = LINGERING.available_permits();
        drop(io);
        // The proxy's side is shut down: the client reads the end of what was sent...
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        // ...and what the client sends after it is read and discarded, not refused.
        client.write_all(b"GET /next HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(LINGERING.available_permits(), before - 1, "lingering, counted");
        client.shutdown().await.unwrap();
        drop(client);
        let given_back = async {
            while LINGERING.available_permits() != before {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(LINGER_FOR / 2, given_back).await.expect("done when the client closed, not at the limit");

        // With as many lingering as may, the next displaced connection is closed outright.
        let all = LINGERING.acquire_many(MAX_LINGERING as u32).await.unwrap();
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Activity::for_tests();
        activity.ask_to_close_for_tests();
        drop(Lingering::new(server, activity));
        assert!(client.write_all(b"GET /next HTTP/1.1\r\n\r\n").await.is_err(), "not held past the bound");
        drop(all);
    }

    #[tokio::test]
    async fn a_connection_closed_for_any_other_reason_does_not_linger() {
        let (mut client, server) = tokio::io::duplex(64);
        drop(Lingering::new(server, Activity::for_tests()));
        assert!(client.write_all(b"x").await.is_err(), "closed at once");
    }
}
