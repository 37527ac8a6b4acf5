//! One client connection, served by hyper (HTTP/1.1 or HTTP/2, upgrades allowed), with the time
//! limits hyper does not keep on its own:
//!
//! * **Idle.** A connection with no request in flight for `limits.header_read_timeout` is closed,
//!   whatever its protocol and stage: before the first request (a client that connects and sends
//!   nothing, or only an HTTP/2 preface, or finishes a TLS handshake and goes quiet), and between
//!   requests (an HTTP/2 connection kept open with pings). hyper's own header timeout only starts
//!   once it has settled on HTTP/1, so without this, sockets that never speak would fill
//!   `limits.max_connections` for everyone.
//! * **Stalled writes.** A client that stops reading (slow-read attacks) makes every write wait;
//!   a write that makes no progress for `limits.send_timeout` fails, and the connection with it.
//! * **The connection's slot** in `limits.max_connections` is shared with a tunnel it turns into
//!   (a WebSocket), so open tunnels count as the connections they are.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::server::capacity::{Admitted, InFlight};
use crate::web::forward::{Forwarder, TunnelSlot};
use crate::web::pages::{Body, BoxError};
use crate::web::state::{App, Connection};

/// After asking an idle connection to close (an HTTP/2 GOAWAY), how long it may take.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves one connection until it ends, the server stops, or it idles past its limit.
pub(super) async fn serve<I>(
    io: I,
    conn: Connection,
    app: Arc<App>,
    forwarder: Arc<Forwarder>,
    admitted: Admitted,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = app.config().limits.clone();
    let Admitted { permit, entry } = admitted;
    let activity = entry.activity().clone();
    let slot = TunnelSlot::new(Arc::new(permit));
    let service = {
        let activity = activity.clone();
        service_fn(move |mut request| {
            let (app, forwarder, activity) = (app.clone(), forwarder.clone(), activity.clone());
            request.extensions_mut().insert(slot.clone());
            // Boxed: hyper keeps a slot for the service's future for as long as the connection
            // is open, sized for the whole request's future (4 KiB); boxed, an idle connection
            // holds a pointer, and the future is allocated only while a request is in flight.
            Box::pin(async move {
                let in_flight = activity.begin();
                let response = app.handle(request, conn, &forwarder).await;
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| Body::new(Tracked { body, _in_flight: in_flight })),
                )
            })
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(100);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(250)
        .max_header_list_size(limits.max_header_bytes as u32);
    let io = TokioIo::new(WriteDeadline::new(io, limits.send_timeout));
    let connection = builder.serve_connection_with_upgrades(io, service);
    let mut connection = std::pin::pin!(connection);

    let idle_limit = limits.header_read_timeout;
    let check = tokio::time::sleep(idle_limit);
    let mut check = std::pin::pin!(check);
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                match ended {
                    Err(e) if stalled_writing(&*e) => tracing::warn!(
                        target: "portcullis::security",
                        peer = %conn.peer,
                        "a client stopped reading; its connection was closed after limits.send_timeout"
                    ),
                    Err(e) => tracing::debug!(peer = %conn.peer, "connection ended with an error: {e}"),
                    Ok(()) => {}
                }
                return;
            }
            _ = stop.changed(), if closing.is_none() => {
                // The server is stopping: finish what is in flight (the accept loop bounds the
                // wait by `proxy.shutdown_grace`), take nothing new.
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            _ = activity.close_requested(), if closing.is_none() => {
                // A newcomer needs this place (see `capacity.rs`): only an idle connection is
                // asked, and one that never sent a request has no one to say goodbye to.
                tracing::debug!(peer = %conn.peer, served = activity.served(), "idle connection closed to make room");
                if activity.served() == 0 {
                    return;
                }
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
                check.as_mut().reset(Instant::now() + CLOSE_GRACE);
            }
            _ = check.as_mut() => {
                let now = Instant::now();
                if let Some(since) = closing {
                    if now - since >= CLOSE_GRACE && activity.in_flight() == 0 {
                        return;
                    }
                    check.as_mut().reset(now + CLOSE_GRACE);
                    continue;
                }
                match activity.idle_for(now) {
                    Some(idle) if idle >= idle_limit => {
                        tracing::debug!(peer = %conn.peer, served = activity.served(), "idle connection closed");
                        if activity.served() == 0 {
                            // Nothing was ever asked: there is no one to say goodbye to.
                            return;
                        }
                        connection.as_mut().graceful_shutdown();
                        closing = Some(now);
                        check.as_mut().reset(now + CLOSE_GRACE);
                    }
                    Some(idle) => check.as_mut().reset(now + (idle_limit - idle)),
                    // Busy: look again a full limit later.
                    None => check.as_mut().reset(now + idle_limit),
                }
            }
        }
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

/// A connection whose writes must make progress: a write (or flush) that stays blocked for
/// `limit`, because the client stopped reading, fails with `TimedOut`.
pub(super) struct WriteDeadline<I> {
    io: I,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<I> WriteDeadline<I> {
    pub(super) fn new(io: I, limit: Duration) -> Self {
        Self { io, limit, stalled: None }
    }

    /// The outcome of a write attempt: progress clears the clock; being blocked starts it, and
    /// being blocked past the limit is an error.
    fn watch<T>(&mut self, cx: &mut Context<'_>, attempt: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match attempt {
            Poll::Ready(outcome) => {
                self.stalled = None;
                Poll::Ready(outcome)
            }
            Poll::Pending => {
                let limit = self.limit;
                let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading: nothing could be written for limits.send_timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteDeadline<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<I> {
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
        let attempt = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, attempt)
    }
}

/// Whether a connection ended because [`WriteDeadline`] gave up on a client.
fn stalled_writing(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(error) = current {
        if error.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::TimedOut) {
            return true;
        }
        current = error.source();
    }
    false
}

/// Answers a connection over `limits.max_connections`: a short, honest 503, then closed.
pub(super) async fn refuse_busy(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 38\r\nretry-after: 5\r\nconnection: close\r\n\r\nToo many connections; try again soon.\n";
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(BUSY)).await;
    let _ = stream.shutdown().await;
}
