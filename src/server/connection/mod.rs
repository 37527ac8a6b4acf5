//! One client connection, served by hyper (HTTP/1.1 or HTTP/2, upgrades allowed), with the time
//! limits hyper does not keep on its own, and with as little memory as an idle connection can hold:
//!
//! * **Idle.** A connection with no request in flight for `limits.header_read_timeout` is closed,
//!   whatever its protocol and stage: before the first request (a client that connects and sends
//!   nothing, or only an HTTP/2 preface, or finishes a TLS handshake and goes quiet), and between
//!   requests (an HTTP/2 connection kept open with pings). hyper's own header timeout only starts
//!   once it has settled on HTTP/1, so without this, sockets that never speak would fill
//!   `limits.max_connections` for everyone.
//! * **Parked.** hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for as long as an
//!   HTTP/1.1 connection lives. A connection is given to hyper only once the client has sent
//!   something, and an HTTP/1.1 connection quiet for [`PARK_AFTER`] between requests is taken back
//!   from hyper (its buffers freed) and only its socket watched until the next request. Idle
//!   keep-alive connections, which browsers hold by the dozen, then cost about what their socket
//!   and task do.
//! * **Stalled writes.** A client that stops reading (slow-read attacks) makes every write wait;
//!   a write that makes no progress for `limits.send_timeout` fails, and the connection with it.
//! * **The connection's slot** in `limits.max_connections` is shared with a tunnel it turns into
//!   (a WebSocket), so open tunnels count as the connections they are.

mod client_io;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use self::client_io::{ClientIo, PEEK, Transport, stalled_writing};
use crate::config::Limits;
use crate::server::capacity::{Activity, Admitted, InFlight};
use crate::web::forward::{Forwarder, TunnelSlot};
use crate::web::pages::{Body, BoxError};
use crate::web::state::{App, Connection};

/// After asking an idle connection to close (an HTTP/2 GOAWAY), how long it may take.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long an HTTP/1.1 connection is quiet between requests before it is parked. Long enough
/// that a client sending requests back to back never pays for the parking; short enough that the
/// connections a browser keeps open between pages hold almost nothing.
const PARK_AFTER: Duration = Duration::from_millis(100);

/// The HTTP/2 connection preface (RFC 9113 §3.4): how a client with prior knowledge starts.
const HTTP2_PREFACE: &[u8; PEEK] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one connection until it ends, the server stops, or it idles past its limit.
pub(super) async fn serve<I>(
    io: I,
    conn: Connection,
    app: Arc<App>,
    forwarder: Arc<Forwarder>,
    admitted: Admitted,
    stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = app.config().limits.clone();
    let Admitted { permit, entry } = admitted;
    let activity = entry.activity().clone();
    let transport = Arc::new(Transport::default());
    let mut io = ClientIo::new(io, limits.send_timeout, transport.clone(), activity.clone());
    let mut watch = Watch::new(activity.clone(), limits.header_read_timeout, stop, conn.peer);

    // Nothing of hyper's until the client has said which protocol it speaks.
    let http2 = loop {
        if !watch.wait_for_bytes(&mut io).await {
            // Nothing was ever asked: there is no one to say goodbye to.
            return;
        }
        let seen = io.unread();
        if !HTTP2_PREFACE.starts_with(seen) {
            break false;
        }
        if seen.len() == HTTP2_PREFACE.len() {
            break true;
        }
    };
    let slot = TunnelSlot::new(Arc::new(permit));
    let handler = Handler { app, forwarder, activity, transport: transport.clone(), slot, conn };
    if http2 {
        // Boxed: an HTTP/2 connection's future is larger, and every connection's task would
        // otherwise be sized for it.
        Box::pin(serve_http2(io, handler, &mut watch, &transport, &limits)).await;
    } else {
        serve_http1(io, handler, &mut watch, &transport, &limits).await;
    }
}

/// HTTP/1.1, parked whenever it is quiet between requests.
async fn serve_http1<I>(
    mut io: ClientIo<I>,
    mut handler: Handler,
    watch: &mut Watch,
    transport: &Transport,
    limits: &Limits,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(100);
    loop {
        transport.allow_parking();
        let mut connection = Box::new(builder.serve_connection(TokioIo::new(io), handler).with_upgrades());
        let driven =
            watch.drive(&mut connection, transport, |connection| Pin::new(&mut **connection).graceful_shutdown()).await;
        if driven == Driven::Ended {
            return;
        }
        // Parked: hyper's state and buffers go; what it had read past the last request (part
        // of the next one) is read again first.
        let Some(parts) = connection.into_parts() else { return };
        transport.hold_open(false);
        tracing::debug!(peer = %watch.peer, "connection parked between requests");
        (io, handler) = (parts.io.into_inner(), parts.service);
        io.put_back(parts.read_buf);
        if io.unread().is_empty() && !watch.wait_for_bytes(&mut io).await {
            // Closed between requests, as an idle HTTP/1.1 connection may be (RFC 9112 §9.6).
            let _ = io.shutdown().await;
            return;
        }
    }
}

/// HTTP/2 (prior knowledge, or `h2` over TLS): hyper holds it until it ends.
async fn serve_http2<I>(io: ClientIo<I>, handler: Handler, watch: &mut Watch, transport: &Transport, limits: &Limits)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new()).max_concurrent_streams(250).max_header_list_size(limits.max_header_bytes as u32);
    let mut connection = Box::pin(builder.serve_connection(TokioIo::new(io), handler));
    transport.forbid_parking();
    watch.drive(&mut connection, transport, |connection| connection.as_mut().graceful_shutdown()).await;
}

#[derive(Debug, PartialEq, Eq)]
enum Driven {
    Ended,
    Parked,
}

/// A connection's clock and what may end it: the server stopping, a newcomer needing its place
/// (see `capacity.rs`), or being idle past `limits.header_read_timeout`.
struct Watch {
    activity: Arc<Activity>,
    idle_limit: Duration,
    stop: watch::Receiver<bool>,
    check: Pin<Box<Sleep>>,
    peer: SocketAddr,
}

impl Watch {
    fn new(activity: Arc<Activity>, idle_limit: Duration, stop: watch::Receiver<bool>, peer: SocketAddr) -> Self {
        let check = Box::pin(tokio::time::sleep(idle_limit));
        Self { activity, idle_limit, stop, check, peer }
    }

    /// Waits, with no request in flight and nothing of hyper's held, for the client's next
    /// bytes. False when the connection should close instead.
    async fn wait_for_bytes<I: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut ClientIo<I>) -> bool {
        if *self.stop.borrow() {
            return false;
        }
        loop {
            tokio::select! {
                // A connection asked to make room goes, even if its next request has just come:
                // the newcomer was promised its place (an idle HTTP/1.1 connection may be closed
                // at any time, RFC 9112 §9.6, and clients send again on a new one).
                biased;
                _ = self.stop.changed() => return false,
                _ = self.activity.close_requested() => {
                    tracing::debug!(peer = %self.peer, served = self.activity.served(), "idle connection closed to make room");
                    return false;
                }
                read = io.read_ahead() => return matches!(read, Ok(n) if n > 0),
                _ = self.check.as_mut() => {
                    let now = Instant::now();
                    match self.activity.idle_for(now) {
                        Some(idle) if idle >= self.idle_limit => {
                            tracing::debug!(peer = %self.peer, served = self.activity.served(), "idle connection closed");
                            return false;
                        }
                        Some(idle) => self.check.as_mut().reset(now + (self.idle_limit - idle)),
                        None => self.check.as_mut().reset(now + self.idle_limit),
                    }
                }
            }
        }
    }

    /// Drives hyper's connection until it ends, or (while `transport` allows parking) until it
    /// has been quiet between requests for [`PARK_AFTER`] and hyper has let go of it.
    async fn drive<C>(
        &mut self,
        connection: &mut C,
        transport: &Transport,
        mut graceful_shutdown: impl FnMut(&mut C),
    ) -> Driven
    where
        C: Future<Output = hyper::Result<()>> + Unpin,
    {
        let mut closing: Option<Instant> = None;
        // While requests are in flight the clock looks less and less often (a long download or
        // an event stream does not wake it ten times a second); a quiet look starts over.
        let first_look = if transport.may_park() { PARK_AFTER } else { self.idle_limit };
        let mut busy_look = first_look;
        // hyper counts a connection as idle only between exchanges: not before its first request
        // has been read (a request may arrive in pieces), only after one has been answered.
        let served_before = self.activity.served();
        self.check.as_mut().reset(Instant::now() + first_look);
        loop {
            tokio::select! {
                ended = &mut *connection => {
                    self.ended(ended);
                    return Driven::Ended;
                }
                _ = self.stop.changed(), if closing.is_none() => {
                    // The server is stopping: finish what is in flight (the accept loop bounds
                    // the wait by `proxy.shutdown_grace`), take nothing new.
                    graceful_shutdown(connection);
                    closing = Some(Instant::now());
                }
                _ = self.activity.close_requested(), if closing.is_none() => {
                    // Only an idle connection is asked. With nothing in flight (at most part of a
                    // request head, or an HTTP/2 connection with no stream open) it goes at once:
                    // a graceful close would wait for the rest of a head, or for an HTTP/2 client
                    // to acknowledge the GOAWAY, longer than the newcomer waits for its place.
                    tracing::debug!(peer = %self.peer, served = self.activity.served(), "idle connection closed to make room");
                    if self.activity.is_quiet() {
                        return Driven::Ended;
                    }
                    graceful_shutdown(connection);
                    closing = Some(Instant::now());
                    self.check.as_mut().reset(Instant::now() + CLOSE_GRACE);
                }
                _ = self.check.as_mut() => {
                    let now = Instant::now();
                    if let Some(since) = closing {
                        // Not while an answer is still being sent: a slow reader is cut off by
                        // `limits.send_timeout`, and never loses the end of an answer here.
                        if now - since >= CLOSE_GRACE && self.activity.is_quiet() {
                            return Driven::Ended;
                        }
                        self.check.as_mut().reset(now + CLOSE_GRACE);
                        continue;
                    }
                    let Some(idle) = self.activity.idle_for(now) else {
                        self.check.as_mut().reset(now + busy_look);
                        busy_look = (busy_look * 2).min(self.idle_limit);
                        continue;
                    };
                    busy_look = first_look;
                    if idle >= self.idle_limit {
                        tracing::debug!(peer = %self.peer, served = self.activity.served(), "idle connection closed");
                        graceful_shutdown(connection);
                        closing = Some(now);
                        self.check.as_mut().reset(now + CLOSE_GRACE);
                        continue;
                    }
                    if !transport.may_park() {
                        self.check.as_mut().reset(now + (self.idle_limit - idle));
                        continue;
                    }
                    if idle < PARK_AFTER {
                        self.check.as_mut().reset(now + (PARK_AFTER - idle));
                        continue;
                    }
                    if self.activity.served() == served_before {
                        // The first request still being read: look again a little later.
                        self.check.as_mut().reset(now + PARK_AFTER);
                        continue;
                    }
                    // Closing an idle HTTP/1.1 connection in hyper writes and reads nothing;
                    // with the shutdown held back, hyper hands the socket back untouched, and a
                    // request arriving meanwhile waits in the socket for the next hyper. Only
                    // requests without a body were served on it (`Transport::forbid_parking`),
                    // so hyper has not given up on any byte that belongs to a request (it would
                    // end the connection itself for that, which must never look like a park).
                    // Not polled first: hyper would read a request that had just arrived and be
                    // busy, and closing a busy connection ends its keep-alive. If it was not
                    // idle after all, hyper finishes the exchange and then closes.
                    transport.hold_open(true);
                    graceful_shutdown(connection);
                    match poll_once(connection).await {
                        Poll::Ready(Ok(())) => return Driven::Parked,
                        Poll::Ready(ended) => {
                            self.ended(ended);
                            return Driven::Ended;
                        }
                        Poll::Pending => {
                            transport.hold_open(false);
                            transport.forbid_parking();
                            self.check.as_mut().reset(now + (self.idle_limit - idle));
                        }
                    }
                }
            }
        }
    }

    fn ended(&self, ended: hyper::Result<()>) {
        match ended {
            Err(e) if stalled_writing(&e) => tracing::warn!(
                target: "portcullis::security",
                peer = %self.peer,
                "a client stopped reading; its connection was closed after limits.send_timeout"
            ),
            Err(e) => tracing::debug!(peer = %self.peer, "connection ended with an error: {e}"),
            Ok(()) => {}
        }
    }
}

/// Polls a future once, in the calling task's context.
async fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *future).poll(cx))).await
}

/// What hyper calls for each request on a connection.
struct Handler {
    app: Arc<App>,
    forwarder: Arc<Forwarder>,
    activity: Arc<Activity>,
    transport: Arc<Transport>,
    slot: TunnelSlot,
    conn: Connection,
}

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = Response<Body>;
    type Error = Infallible;
    // Boxed: hyper keeps a slot for the service's future for as long as the connection is open,
    // sized for the whole request's future (4 KiB); boxed, it is a pointer, and the future is
    // allocated only while a request is in flight.
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let (app, forwarder, conn) = (self.app.clone(), self.forwarder.clone(), self.conn);
        request.extensions_mut().insert(self.slot.clone());
        // A body (hyper may give up on part of it, and then ends the connection itself), or an
        // upgrade (hyper hands the socket to it): the socket is hyper's to close from now on.
        let upgrade =
            request.headers().contains_key(hyper::header::UPGRADE) || request.method() == hyper::Method::CONNECT;
        if upgrade || !request.body().is_end_stream() {
            self.transport.forbid_parking();
        }
        // In flight from the moment hyper has the request, not from the future's first poll: a
        // connection asked to make room in between would otherwise be dropped with it.
        let in_flight = self.activity.begin();
        Box::pin(async move {
            let response = app.handle(request, conn, &forwarder).await;
            Ok(response.map(|body| Body::new(Tracked { body, _in_flight: in_flight })))
        })
    }
}

/// A response body that keeps its request counted as in flight until it is done.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Answers a connection over `limits.max_connections`: a short, honest 503, then closed. On a TLS
/// listener the answer goes through TLS (a plain-text one would reach the browser as a protocol
/// error), within the same two seconds, handshake included.
pub(super) async fn refuse_busy(stream: tokio::net::TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 38\r\nretry-after: 5\r\nconnection: close\r\n\r\nToo many connections; try again soon.\n";
    async fn answer<S: AsyncWrite + Unpin>(mut stream: S) {
        let _ = stream.write_all(BUSY).await;
        let _ = stream.shutdown().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        match tls {
            None => answer(stream).await,
            Some(acceptor) => {
                if let Ok(stream) = acceptor.accept(stream).await {
                    answer(stream).await;
                }
            }
        }
    })
    .await;
}
