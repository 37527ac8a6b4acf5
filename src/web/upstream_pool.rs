//! Keep-alive HTTP/1.1 connections to the upstream, one pool per worker.
//!
//! Why not hyper-util's legacy client: its pool is built for many hosts and for HTTP/2. Every
//! request hashed the pool key (SipHash over the authority, twice), took a process-wide `Mutex`,
//! raced the checkout against a lazy connect, and spawned a task per response to wait for the
//! connection to be ready again: about 10,000 of the 70,000 instructions a proxied request cost
//! (`bench/instructions.sh`). We have one upstream and speak HTTP/1.1 to it, so the pool is a
//! stack of ready senders.
//!
//! What stays as it was: each upstream connection is driven by a task of its own, so that the
//! requests of many clients that arrive together are written, and their answers read, in one
//! wake-up of that task. (Driving the upstream connection inside each client connection's task
//! was measured slower: the upstream was woken once per request instead of once per batch.)
//!
//! A connection goes back to the queue when its exchange is over: the response body read to the
//! end *and* the request body sent to the end. It is closed instead when the response body is
//! dropped half-read (HTTP/1.1 has no way to abandon one response and go on: its unread rest
//! would be taken for the next answer), when the upstream answered before the request body was
//! all sent (a 401 or 413 to an upload: the rest of the upload would hold the connection for as
//! long as the client takes to send it), when the upstream closes it, or when it has been idle
//! for `proxy.pool_idle_timeout`. Taking a connection never waits on one: a connection not ready
//! this instant is passed over and a new one dialled, so no request can be made to wait behind
//! another's exchange. Connections are lent last in, first out (`web::idle_stack`).

use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use crate::base::socket::{ResetIfUnacknowledged, socket_is_quiet};
use crate::web::idle_stack::{IdleStack, Verdict};

/// A request body the pool can send: what hyper's HTTP/1.1 client asks of one.
pub trait OutgoingBody:
    Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + Unpin + 'static
{
}

impl<B> OutgoingBody for B where
    B: Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + Unpin + 'static
{
}

/// Idle connections kept per worker at most; more than this many at once are closed when done.
/// Each costs the upstream a socket, and a burst that needed more will dial again.
const MAX_IDLE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connecting: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("HTTP/1.1 handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("{0}")]
    Send(#[source] hyper::Error),
}

/// An upstream connection as the pool holds it: the sender its task takes requests from, and
/// its socket, to look at while it is idle.
struct Pooled<B> {
    sender: SendRequest<Sending<B>>,
    /// The TCP socket under it (under TLS too). Valid for as long as the sender is ready: the
    /// connection's task owns the socket, and a finished task has closed the sender's channel
    /// (one runtime: nothing runs between the two).
    socket: RawFd,
}

struct Idle<B> {
    conn: Pooled<B>,
    since: Instant,
}

/// A pool for request bodies of type `B` (the client's body, with its idle timeout).
pub struct UpstreamPool<B> {
    connector: HttpsConnector<HttpConnector>,
    /// What the connector dials: the upstream's scheme and authority.
    target: http::Uri,
    idle: IdleStack<Idle<B>>,
    idle_timeout: Duration,
    reaper_started: AtomicBool,
}

impl<B: OutgoingBody> UpstreamPool<B> {
    pub fn new(connector: HttpsConnector<HttpConnector>, target: http::Uri, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            connector,
            target,
            idle: IdleStack::new(MAX_IDLE),
            idle_timeout,
            reaper_started: AtomicBool::new(false),
        })
    }

    /// Sends `request` (origin-form URI, `Host` set) on an idle connection or a new one. The
    /// returned [`Lease`] is the connection: attach it to the response body to give it back.
    ///
    /// A request that an idle connection could not take (the upstream closed it while it sat in
    /// the queue) comes back unsent and is tried again on the next; hyper hands it back only if
    /// not a byte of it was written, so nothing is sent twice.
    pub async fn send(self: &Arc<Self>, request: Request<B>) -> Result<(Response<Incoming>, Lease<B>), PoolError> {
        let (mut request, request_sent) = Sending::wrap(request);
        loop {
            let (mut conn, reused) = match self.take_idle() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            match conn.sender.try_send_request(request).await {
                Ok(response) => {
                    return Ok((response, Lease { conn: Some(conn), request_sent, pool: self.clone() }));
                }
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) if reused => {
                        tracing::debug!("an idle upstream connection could not take a request: {}", failed.error());
                        request = unsent;
                    }
                    _ => return Err(PoolError::Send(failed.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection that is ready this instant, closing the stale and
    /// closed ones on the way. One still finishing its last exchange (its task has not run since,
    /// or it is still writing) is passed over and stays: waiting for it could mean waiting for a
    /// stranger's slow upload, or for an upstream that stopped reading. A ready one with bytes
    /// waiting in its socket is closed: the socket itself is asked, as the runtime learns that
    /// bytes came only at its next poll for events, and a connection taken again before that
    /// (given back and taken in the same pass, as a busy worker does) would be lent with an
    /// answer nobody asked for waiting in it, which the next request would read as its own (found
    /// by an attack pass on the express lane: 5 in 1,200 tries under load). Under TLS any record
    /// waiting counts: an idle connection has nothing to hear. The descriptor is open while the
    /// sender is ready (see `Pooled::socket`).
    fn take_idle(&self) -> Option<Pooled<B>> {
        let mut now = Context::from_waker(std::task::Waker::noop());
        let verdict = |idle: &mut Idle<B>| {
            if idle.since.elapsed() > self.idle_timeout {
                return Verdict::Close;
            }
            match idle.conn.sender.poll_ready(&mut now) {
                Poll::Ready(Ok(())) if socket_is_quiet(idle.conn.socket) => Verdict::Take,
                // Closed (by the upstream, `Connection: close`, or an error), or an answer nobody
                // asked for waiting in it.
                Poll::Ready(_) => Verdict::Close,
                Poll::Pending => Verdict::Keep,
            }
        };
        self.idle.take(verdict).map(|idle| idle.conn)
    }

    async fn connect(self: &Arc<Self>) -> Result<Pooled<B>, PoolError> {
        let io = self.connector.clone().call(self.target.clone()).await.map_err(PoolError::Connect)?;
        let socket = match &io {
            MaybeHttpsStream::Http(plain) => plain.inner().as_raw_fd(),
            MaybeHttpsStream::Https(tls) => tls.inner().get_ref().0.inner().inner().as_raw_fd(),
        };
        let io = ResetIfUnacknowledged::new(io, socket);
        let (sender, connection) = http1::Builder::new().handshake(io).await.map_err(PoolError::Handshake)?;
        tokio::spawn(async move {
            // With upgrades: a 101 hands the connection to the tunnel (forward.rs).
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        if !self.idle_timeout.is_zero() && !self.reaper_started.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap_while_alive(Arc::downgrade(self), self.idle_timeout, Self::reap_idle));
        }
        Ok(Pooled { sender, socket })
    }

    /// Keeps a connection for the next request, unless it is closed or connections are not kept
    /// at all (an idle timeout of zero: `proxy.upstream_keepalive`).
    fn give_back(&self, conn: Pooled<B>) {
        if conn.sender.is_closed() || self.idle_timeout.is_zero() {
            return;
        }
        self.idle.push(Idle { conn, since: Instant::now() });
    }

    /// Closes the connections idle for longer than `proxy.pool_idle_timeout` (or closed by the
    /// upstream); keeps the rest, in order.
    fn reap_idle(&self) {
        self.idle.retain(|idle| !idle.conn.sender.is_closed() && idle.since.elapsed() <= self.idle_timeout);
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.len()
    }
}

/// The request body as the pool sends it, noting when it has been sent to the end.
pub struct Sending<B> {
    body: B,
    sent: Option<Arc<AtomicBool>>,
}

impl<B: OutgoingBody> Sending<B> {
    /// A body with nothing to send (a GET) needs no note and gets none: the common case
    /// allocates nothing.
    fn wrap(request: Request<B>) -> (Request<Self>, Option<Arc<AtomicBool>>) {
        let (parts, body) = request.into_parts();
        let sent = (!body.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
        (Request::from_parts(parts, Self { body, sent: sent.clone() }), sent)
    }
}

impl<B: OutgoingBody> Body for Sending<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.body.is_end_stream(),
            _ => false,
        };
        if ended && let Some(sent) = &this.sent {
            sent.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Runs `reap` on `pool` twice per `idle_timeout`, for as long as the pool lives: on the worker
/// that dialled first, as a pool's connections belong to its worker.
pub(crate) async fn reap_while_alive<P>(pool: Weak<P>, idle_timeout: Duration, reap: impl Fn(&P)) {
    let mut every = tokio::time::interval((idle_timeout / 2).max(Duration::from_millis(100)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        reap(&pool);
    }
}

/// An upstream connection lent to one request. Dropped without [`Lease::give_back`], it closes
/// the connection.
pub struct Lease<B> {
    conn: Option<Pooled<B>>,
    /// Whether the request body has been sent to the end; `None`: it had nothing to send.
    request_sent: Option<Arc<AtomicBool>>,
    pool: Arc<UpstreamPool<B>>,
}

impl<B: OutgoingBody> Lease<B> {
    /// The response has ended: the connection goes back if its request has too, and is closed
    /// otherwise.
    fn give_back(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        match &self.request_sent {
            Some(sent) if !sent.load(Ordering::Acquire) => {
                tracing::debug!("upstream connection closed: it answered before the request body was all sent");
            }
            _ => self.pool.give_back(conn),
        }
    }

    /// The response body, which gives the connection back once it has been read to the end.
    pub fn attach(mut self, body: Incoming) -> PooledBody<B> {
        if body.is_end_stream() {
            self.give_back();
        }
        PooledBody { body, lease: self }
    }
}

/// An upstream response body holding its connection's [`Lease`].
pub struct PooledBody<B> {
    body: Incoming,
    lease: Lease<B>,
}

impl<B: OutgoingBody> Body for PooledBody<B> {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            // The last frame, or the end: the connection is free for the next request.
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.lease.give_back(),
            Poll::Ready(None) => this.lease.give_back(),
            // A broken body leaves the connection in an unknown state: it is closed.
            Poll::Ready(Some(Err(_))) => this.lease.conn = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// hyper's view of a connection that is reset if abandoned with its request unacknowledged.
impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for ResetIfUnacknowledged<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.get_pin_mut().poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for ResetIfUnacknowledged<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.get_pin_mut().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.get_pin_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        (**self).is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_pin_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.as_mut().note_shut_down();
        self.get_pin_mut().poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "upstream_pool_tests.rs"]
pub(crate) mod tests;
