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
//!   With every place taken, one blocked for 5 s gives its place to a newcomer (`server::capacity`)
//!   and is reset.
//! * **The connection's slot** in `limits.max_connections` is shared with a tunnel it turns into
//!   (a WebSocket), so open tunnels count as the connections they are.

mod answer;
mod client_io;
mod clock;
mod express;
mod linger;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body as HttpBody, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use self::answer::Answer;
use self::client_io::{Bodies, ClientIo, PEEK, Transport};
use self::clock::{Driven, Watch};
use self::express::{Carrier, Lane};
use self::linger::{EntrySlot, IN_PLACE_STALLED_AT_LEAST, Lingering};
use crate::config::Limits;
use crate::server::capacity::{Activity, Admitted};
use crate::web::client_body::{BodyWatcher, ClientBody};
use crate::web::forward::{Forwarder, TunnelSlot};
use crate::web::pages::Body;
use crate::web::state::{App, Connection};

/// The HTTP/2 connection preface (RFC 9113 §3.4): how a client with prior knowledge starts.
const HTTP2_PREFACE: &[u8; PEEK] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one connection until it ends, the server stops, or it idles past its limit.
pub(super) async fn serve<I>(io: I, conn: Connection, app: Arc<App>, forwarder: Arc<Forwarder>, admitted: Admitted)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = app.config().limits.clone();
    let Admitted { permit, entry } = admitted;
    let activity = entry.activity().clone();
    let transport = Arc::new(Transport::default());
    // Held by the connection, a tunnel it becomes, and its socket while the last answer drains.
    let place = Arc::new(permit);
    // Declared before the socket, so dropped after it: a socket that lingers in its place takes
    // the entry first (a newcomer may still ask for the place); otherwise it goes when the
    // connection ends, and a tunnel the connection became, never idle, is never asked.
    let entry = EntrySlot::new(entry);
    let patience = limits.send_timeout.max(IN_PLACE_STALLED_AT_LEAST);
    let io =
        Lingering::new(io, activity.clone(), conn.peer.ip(), Some(place.clone()), patience).with_entry(entry.share());
    let mut io = ClientIo::new(io, limits.send_timeout, transport.clone(), activity.clone());
    let mut watch = Watch::new(activity.clone(), &limits, conn.peer);

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
    let slot = TunnelSlot::new(place);
    let bodies = Arc::new(Bodies { transport: transport.clone(), activity: activity.clone() });
    let handler = Handler { app, forwarder, activity, transport: transport.clone(), slot, conn, http2, bodies };
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
        let carrier = Carrier {
            app: &handler.app,
            forwarder: &handler.forwarder,
            conn: &handler.conn,
            activity: &handler.activity,
        };
        match express::serve(&mut io, carrier, watch, limits).await {
            Lane::Declined => {}
            Lane::Quiet if watch.wait_for_bytes(&mut io).await => continue,
            Lane::Quiet | Lane::Close => {
                let _ = io.shutdown().await;
                return;
            }
        }
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

/// What hyper calls for each request on a connection.
struct Handler {
    app: Arc<App>,
    forwarder: Arc<Forwarder>,
    activity: Arc<Activity>,
    transport: Arc<Transport>,
    slot: TunnelSlot,
    conn: Connection,
    /// Answers on HTTP/2 wait on the client's flow control (`answer`).
    http2: bool,
    bodies: Arc<Bodies>,
}

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = Response<Body>;
    type Error = Infallible;
    // Boxed: hyper keeps a slot for the service's future for as long as the connection is open,
    // sized for the whole request's future (4 KiB); boxed, it is a pointer, and the future is
    // allocated only while a request is in flight.
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let (app, forwarder, conn, http2) = (self.app.clone(), self.forwarder.clone(), self.conn, self.http2);
        request.extensions_mut().insert(self.slot.clone());
        // An upgrade (hyper hands the socket to it): the socket is hyper's to close from now on.
        // A body: not parked until it has been read to its end (hyper may give up on part of it,
        // and then ends the connection itself).
        let upgrade =
            request.headers().contains_key(hyper::header::UPGRADE) || request.method() == hyper::Method::CONNECT;
        if upgrade {
            self.transport.forbid_parking();
        }
        let request = if request.body().is_end_stream() {
            request.map(ClientBody::new)
        } else {
            self.transport.body_begins();
            let watcher: Arc<dyn BodyWatcher> = self.bodies.clone();
            request.map(|body| ClientBody::watched(body, watcher))
        };
        // In flight from the moment hyper has the request, not from the future's first poll: a
        // connection asked to make room in between would otherwise be dropped with it.
        let in_flight = self.activity.begin();
        Box::pin(async move {
            let response = app.handle(request, conn, &forwarder).await;
            Ok(response.map(|body| Body::new(Answer::new(body, in_flight, http2))))
        })
    }
}

/// How many refused TLS connections may be in their handshake at once. A refusal's handshake
/// holds its socket outside `limits.max_connections` (up to two seconds for a client that says
/// nothing); past this many, a refused TLS connection is closed unanswered, so that newcomers
/// arriving faster than they are refused cannot hold sockets without bound ("Too many open
/// files" at 9,000 a second without it).
pub(super) const MAX_TLS_REFUSALS: usize = 64;

static TLS_REFUSALS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_TLS_REFUSALS);

/// Answers a connection over `limits.max_connections`: a short, honest 503, then closed. On a TLS
/// listener the answer goes through TLS (a plain-text one would reach the browser as a protocol
/// error), within the same two seconds, handshake included, while fewer than
/// [`MAX_TLS_REFUSALS`] are; past that, the connection is closed unanswered.
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
                let Ok(_refusing) = TLS_REFUSALS.try_acquire() else {
                    tracing::debug!("{MAX_TLS_REFUSALS} refused TLS connections in their handshake: closed unanswered");
                    return;
                };
                if let Ok(stream) = acceptor.accept(stream).await {
                    answer(stream).await;
                }
            }
        }
    })
    .await;
}
