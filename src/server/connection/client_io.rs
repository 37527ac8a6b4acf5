//! The client's socket as hyper sees it: writes that must make progress, bytes read before hyper
//! took the connection (to tell HTTP/1.1 from HTTP/2, or to wake a parked connection), and a
//! shutdown that can be held back while a connection is parked.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::server::capacity::Activity;
use crate::web::client_body::BodyWatcher;
use crate::web::express::LaneClient;

/// How many bytes a connection reads on its own when it wakes: enough to tell the HTTP/2
/// connection preface (RFC 9113 §3.4, 24 bytes) from an HTTP/1.1 request line.
pub(super) const PEEK: usize = 24;

/// The most a client may send while the proxy waits for the upstream's answer to its request
/// that is read and kept ([`ClientIo::poll_gone`]): a pipelined request or two. Past it, nothing
/// more is read until the answer is written.
const KEPT_WHILE_WAITING: usize = 8 * 1024;

/// What the connection's driver and its request handler share about the socket while hyper
/// holds it.
#[derive(Default)]
pub(super) struct Transport {
    /// Parking: hyper's shutdown of the socket is not passed on, the connection stays open.
    hold_open: AtomicBool,
    /// Since hyper took the socket, a request asked to upgrade, or a request body was left
    /// unread: hyper may still be reading (or have given up on) bytes that belong to it, so the
    /// socket must never be taken back from hyper, only closed by it.
    unparkable: AtomicBool,
    /// Request bodies hyper has handed on and nobody has read to the end yet. While any is, the
    /// socket is not at a request's first byte.
    bodies_unread: AtomicUsize,
}

impl Transport {
    pub fn hold_open(&self, hold: bool) {
        self.hold_open.store(hold, Ordering::Release);
    }

    pub fn forbid_parking(&self) {
        self.unparkable.store(true, Ordering::Release);
    }

    /// For a fresh hyper connection on the socket.
    pub fn allow_parking(&self) {
        self.unparkable.store(false, Ordering::Release);
    }

    /// A request body has begun; [`BodyWatcher::read_to_end`] says when it has been read to its end.
    pub fn body_begins(&self) {
        self.bodies_unread.fetch_add(1, Ordering::AcqRel);
    }

    pub fn may_park(&self) -> bool {
        !self.unparkable.load(Ordering::Acquire) && self.bodies_unread.load(Ordering::Acquire) == 0
    }

    /// Whether the connection may be parked, asked while no request is in flight: a body still
    /// unread then was dropped half-read (its answer is out), and will never be read to the end
    /// by us; hyper has drained the rest or will end the connection, and which is not ours to
    /// guess, so the connection stays with hyper for good.
    pub fn may_park_when_idle(&self) -> bool {
        if self.bodies_unread.load(Ordering::Acquire) > 0 {
            self.forbid_parking();
        }
        self.may_park()
    }
}

/// What a connection hears of its request bodies: their ends (for parking, [`Transport`]) and
/// forms waiting on the client (for making room, `Activity`).
pub(super) struct Bodies {
    pub transport: Arc<Transport>,
    pub activity: Arc<Activity>,
}

impl BodyWatcher for Bodies {
    fn read_to_end(&self) {
        self.transport.bodies_unread.fetch_sub(1, Ordering::AcqRel);
    }

    fn form_waits_for_client(&self, waiting: bool) {
        self.activity.form_waits_for_client(waiting);
    }
}

/// A client connection: writes that make no progress for `send_timeout` fail (a client that
/// stops reading cannot hold a connection forever), and bytes read ahead are read again first.
pub(super) struct ClientIo<I> {
    io: I,
    unread: Bytes,
    send_timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    transport: Arc<Transport>,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + AsyncWrite + Unpin> ClientIo<I> {
    pub fn new(io: I, send_timeout: Duration, transport: Arc<Transport>, activity: Arc<Activity>) -> Self {
        Self { io, unread: Bytes::new(), send_timeout, stalled: None, transport, activity }
    }

    /// Bytes read but not yet handed on.
    pub fn unread(&self) -> &[u8] {
        &self.unread
    }

    /// Takes the bytes read but not yet handed on, to be read by whoever takes them.
    pub fn take_unread(&mut self) -> Bytes {
        std::mem::take(&mut self.unread)
    }

    /// Puts bytes back to be read first (what hyper had read past the last request), before any
    /// read ahead since. They are copied: `bytes` is a view into hyper's whole read buffer, which
    /// would otherwise stay.
    pub fn put_back(&mut self, bytes: Bytes) {
        self.unread = match (bytes.is_empty(), self.unread.is_empty()) {
            (true, _) => std::mem::take(&mut self.unread),
            (false, true) => Bytes::copy_from_slice(&bytes),
            (false, false) => [&bytes[..], &self.unread[..]].concat().into(),
        };
    }

    /// Keeps `bytes`, just read from the client, to be read after what is kept already.
    fn keep(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut joined = BytesMut::with_capacity(self.unread.len() + bytes.len());
        joined.extend_from_slice(&self.unread);
        joined.extend_from_slice(bytes);
        self.unread = joined.freeze();
    }

    /// Waits for the client's next bytes (at most [`PEEK`]) and keeps them to be read first.
    /// Nothing is allocated while waiting. `Ok(0)` when the client has closed.
    pub async fn read_ahead(&mut self) -> io::Result<usize> {
        let mut ahead = [0u8; PEEK];
        let room = PEEK.saturating_sub(self.unread.len()).max(1);
        let n = self.io.read(&mut ahead[..room]).await?;
        self.keep(&ahead[..n]);
        Ok(n)
    }

    /// The outcome of a write attempt: progress clears the clock; being blocked starts it, and
    /// being blocked past the limit is an error.
    fn watch<T>(&mut self, cx: &mut Context<'_>, attempt: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match attempt {
            Poll::Ready(outcome) => {
                if self.stalled.take().is_some() {
                    self.activity.set_write_blocked(false);
                }
                Poll::Ready(outcome)
            }
            Poll::Pending => {
                let limit = self.send_timeout;
                let activity = &self.activity;
                // Asked to make room while the client takes nothing (`Activity::may_give_way`,
                // `server::crowd`): the newcomer has its place as soon as this write stops
                // waiting. The express lane writes here with no ear for the request otherwise. A
                // write that only just blocked, in a connection asked as it was idle and given a
                // request just then, is finished as before (a graceful close).
                if activity.poll_asked_to_make_room(cx) && activity.gives_way_at_once(tokio::time::Instant::now()) {
                    activity.cut_off();
                    tracing::debug!("a client taking nothing of its answer gave its place to a newcomer");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the client took nothing of its answer and its place went to a newcomer",
                    )));
                }
                let stalled = self.stalled.get_or_insert_with(|| {
                    activity.set_write_blocked(true);
                    Box::pin(tokio::time::sleep(limit))
                });
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        // What the client never took goes with the connection (reset when
                        // closed), not to the kernel after it (`connection::linger`).
                        activity.cut_off();
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client stopped reading: nothing could be written for limits.send_timeout",
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> LaneClient for ClientIo<I> {
    /// Reads what the client sends while its answer is awaited (up to [`KEPT_WHILE_WAITING`],
    /// kept to be read first), to see it close. No system call when nothing came: the runtime
    /// knows the socket was read dry (a short read clears its readiness).
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut ahead = [0u8; 1024];
        loop {
            let room = KEPT_WHILE_WAITING.saturating_sub(self.unread.len()).min(ahead.len());
            if room == 0 {
                return Poll::Pending;
            }
            let mut buf = ReadBuf::new(&mut ahead[..room]);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    let filled = buf.filled().len();
                    self.keep(&ahead[..filled]);
                }
                // Closed (a read of nothing) or failed.
                Poll::Ready(_) => return Poll::Ready(()),
            }
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientIo<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientIo<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let attempt = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, attempt)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let attempt = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, attempt)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let attempt = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, attempt)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.transport.hold_open.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        let attempt = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, attempt)
    }
}

/// Whether a connection ended because [`ClientIo`] gave up on a client that stopped reading.
pub(super) fn stalled_writing(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(error) = current {
        if error.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::TimedOut) {
            return true;
        }
        current = error.source();
    }
    false
}

/// The security log's line for a connection closed because its client stopped reading, on
/// either path (hyper's or the express lane's).
pub(super) fn warn_stopped_reading(peer: std::net::SocketAddr) {
    tracing::warn!(
        target: "portcullis::security",
        peer = %peer,
        "a client stopped reading; its connection was closed after limits.send_timeout"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn bytes_read_ahead_are_read_again_first_then_the_socket() {
        let (client, server) = tokio::io::duplex(64);
        let mut io = ClientIo::new(server, Duration::from_secs(1), Arc::default(), Activity::for_tests());
        let mut client = client;
        client.write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n").await.unwrap();
        assert_eq!(io.read_ahead().await.unwrap(), PEEK);
        assert_eq!(io.unread(), b"GET / HTTP/1.1\r\nHost: ex");
        let mut all = vec![0u8; 33];
        io.read_exact(&mut all).await.unwrap();
        assert_eq!(&all, b"GET / HTTP/1.1\r\nHost: example\r\n\r\n");
        assert!(io.unread().is_empty());
    }

    #[tokio::test]
    async fn while_an_answer_is_awaited_what_the_client_sends_is_kept_and_its_close_is_seen() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = ClientIo::new(server, Duration::from_secs(1), Arc::default(), Activity::for_tests());
        let gone = |io: &mut ClientIo<_>| {
            let waker = futures_util::task::noop_waker();
            io.poll_gone(&mut Context::from_waker(&waker)).is_ready()
        };
        assert!(!gone(&mut io), "nothing sent: still there");
        client.write_all(b"GET /next HTTP/1.1\r\n").await.unwrap();
        assert!(!gone(&mut io), "a pipelined request: still there");
        assert_eq!(io.unread(), b"GET /next HTTP/1.1\r\n", "and its bytes are kept");
        // What hyper had read past the last request goes before them.
        io.put_back(Bytes::from_static(b"earlier "));
        assert_eq!(io.unread(), b"earlier GET /next HTTP/1.1\r\n");
        drop(client);
        assert!(gone(&mut io), "closed");
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"earlier GET /next HTTP/1.1\r\n", "nothing lost");
    }

    #[tokio::test]
    async fn a_held_open_connection_is_not_shut_down() {
        let (mut client, server) = tokio::io::duplex(64);
        let transport = Arc::new(Transport::default());
        let mut io = ClientIo::new(server, Duration::from_secs(1), transport.clone(), Activity::for_tests());
        transport.hold_open(true);
        io.shutdown().await.unwrap();
        io.write_all(b"still open").await.unwrap();
        let mut got = [0u8; 10];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"still open");
        transport.hold_open(false);
        io.shutdown().await.unwrap();
        assert_eq!(client.read(&mut got).await.unwrap(), 0, "closed for real");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_never_reads_fails_after_the_limit_and_is_seen_as_busy() {
        let (_client, server) = tokio::io::duplex(8);
        let activity = Activity::for_tests();
        let mut io = ClientIo::new(server, Duration::from_secs(3), Arc::default(), activity.clone());
        let write = io.write_all(&[0u8; 64]);
        let error = write.await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(!activity.is_quiet(), "the bytes still waiting make the connection busy");
        assert_eq!(activity.idle_for(tokio::time::Instant::now()), None, "never closed as idle");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_blocked_past_the_stall_gives_way_to_a_newcomer_and_not_before() {
        use crate::server::activity::CLIENT_STALLED;
        let (_client, server) = tokio::io::duplex(8);
        let activity = Activity::for_tests();
        let mut io = ClientIo::new(server, Duration::from_secs(60), Arc::default(), activity.clone());
        let mut write = std::pin::pin!(io.write_all(&[0u8; 64]));
        assert!(futures_util::poll!(write.as_mut()).is_pending());
        tokio::time::advance(CLIENT_STALLED - Duration::from_millis(1)).await;
        assert!(!activity.may_give_way(tokio::time::Instant::now()), "busy while the stall is young");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(activity.may_give_way(tokio::time::Instant::now()));
        assert!(activity.ask_to_close_for_tests());
        let error = write.await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted, "not kept until limits.send_timeout");
        assert!(activity.was_cut_off(), "reset, what it never took dropped");
    }
}
