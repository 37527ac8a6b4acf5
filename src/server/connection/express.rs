//! The connection's side of the express lane (`web::express`): an HTTP/1.1 connection reads its
//! request heads here while each is one the lane takes (a signed-in GET or HEAD without a body),
//! and is handed to hyper, with every byte read so far, the moment one is not.
//!
//! The head is parsed by `httparse`, the parser hyper itself uses, under the same limits
//! (`limits.max_header_bytes`, 100 fields, `limits.header_read_timeout` from its first byte).
//! Whatever it cannot read, or reads as anything but a plain GET or HEAD, hyper reads again and
//! answers as it always has: a malformed head gets hyper's 400, an oversized one its 431.

use std::time::Instant as StdInstant;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::client_io::{ClientIo, stalled_writing, warn_stopped_reading};
use super::clock::{PARK_AFTER, Watch};
use std::sync::Arc;

use crate::base::fields::Head;
use crate::config::Limits;
use crate::server::capacity::Activity;
use crate::web::error::WebError;
use crate::web::express::{self, Relayed};
use crate::web::forward::ForwardError;
use crate::web::forward::Forwarder;
use crate::web::gate::Served;
use crate::web::raw_upstream::RelayError;
use crate::web::state::{App, Connection};

/// The most fields a request head may have, as hyper is configured (`serve_http1`).
const MAX_FIELDS: usize = 100;

/// Why the lane gave the connection up.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Lane {
    /// A request the lane does not take: its bytes are back in the connection, for hyper.
    Declined,
    /// Quiet for [`PARK_AFTER`] between requests: nothing is held, the connection waits for its
    /// next bytes the way a parked one does.
    Quiet,
    /// The connection is to close (the client went, the server stops, room was asked for, or an
    /// answer broke off).
    Close,
}

/// A request head read whole, as the lane sees it.
enum Parsed<'a> {
    Partial,
    /// Not the lane's: malformed, too large, or not a plain signed-in GET or HEAD.
    Declined,
    Offered(Offered<'a>),
}

/// A head the lane may be offered: `length` bytes, its method and target read as hyper reads
/// them, and its fields as `httparse` found them, borrowing the bytes they were read from. No
/// map is built (see `base::fields`).
struct Offered<'a> {
    length: usize,
    method: Method,
    uri: Uri,
    fields: Vec<httparse::Header<'a>>,
}

impl Offered<'_> {
    fn head(&self) -> Head<'_, [httparse::Header<'_>]> {
        Head { method: &self.method, uri: &self.uri, version: Version::HTTP_11, fields: &self.fields[..] }
    }
}

/// What the lane needs of the connection's request handler.
pub(super) struct Carrier<'a> {
    pub app: &'a Arc<App>,
    pub forwarder: &'a Forwarder,
    pub conn: &'a Connection,
    pub activity: &'a Arc<Activity>,
}

thread_local! {
    /// How many connections of this thread's worker are on the lane. Each worker is one thread
    /// with a current-thread runtime, so its connections never move to another.
    static ON_THE_LANE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A connection's place in [`ON_THE_LANE`], for as long as it is on the lane.
struct OnTheLane;

impl OnTheLane {
    fn join() -> Self {
        ON_THE_LANE.set(ON_THE_LANE.get() + 1);
        OnTheLane
    }

    fn others() -> bool {
        ON_THE_LANE.get() > 1
    }
}

impl Drop for OnTheLane {
    fn drop(&mut self) {
        ON_THE_LANE.set(ON_THE_LANE.get().saturating_sub(1));
    }
}

/// Serves requests on the lane until one is not its own, the connection goes quiet, or it is
/// to close.
pub(super) async fn serve<I>(io: &mut ClientIo<I>, handler: Carrier<'_>, watch: &mut Watch, limits: &Limits) -> Lane
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _on_the_lane = OnTheLane::join();
    let mut read = BytesMut::from(&io.take_unread()[..]);
    loop {
        if read.is_empty() {
            match next_bytes(io, &mut read, watch, Instant::now() + PARK_AFTER).await {
                Waited::Bytes => {}
                Waited::Quiet => return Lane::Quiet,
                Waited::Close => return Lane::Close,
            }
        }
        // The whole head, within `limits.header_read_timeout` of its first byte. Most heads come
        // whole in their first read: the clock is read only for one that did not.
        let mut deadline = None;
        let mut whole;
        let offered = loop {
            whole = read.split().freeze();
            match parse(&whole) {
                Parsed::Partial if whole.len() < limits.max_header_bytes => {}
                Parsed::Partial | Parsed::Declined => {
                    io.put_back(whole);
                    return Lane::Declined;
                }
                // A head that came whole in one read may be past the limit: hyper's to refuse.
                Parsed::Offered(offered) if offered.length > limits.max_header_bytes => {
                    drop(offered);
                    io.put_back(whole);
                    return Lane::Declined;
                }
                Parsed::Offered(offered) => break offered,
            }
            take_back(&mut read, whole);
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + limits.header_read_timeout);
            match next_bytes(io, &mut read, watch, deadline).await {
                Waited::Bytes => {}
                // Half a head for longer than the limit: as hyper does, the connection ends.
                Waited::Quiet | Waited::Close => return Lane::Close,
            }
        };
        let length = offered.length;
        // Boxed: the request's future (the gate, the upstream exchange) is about 1 KiB, and the
        // connection's task would otherwise be sized for it while it idles. The rare ways on
        // (dialling, a shared store's look-up, chunked answers, error pages) are boxed where they
        // are taken, which keeps this one within the allocator's per-thread cache (glibc's tcache,
        // up to 1,032 bytes): at 4.8 KiB it took the allocator's slow path, about 500
        // instructions a request.
        let carried = Box::pin(carry(io, &handler, &offered.head(), path_of(&whole[..length]), watch)).await;
        drop(offered);
        match carried {
            Carried::Declined => {
                io.put_back(whole);
                return Lane::Declined;
            }
            Carried::Close => return Lane::Close,
            Carried::Answered => {}
        }
        // What came after the head (a pipelined request) is read next, in the same buffer.
        take_back(&mut read, whole);
        let _ = read.split_to(length);
    }
}

/// Makes `whole`, split off `read` to be parsed, the read buffer again. `read` (the room left
/// after it) lets go of the allocation first, so that `whole` holds it alone and becomes the
/// buffer with all its room: a copy would be grown (reallocated) by the next read.
fn take_back(read: &mut BytesMut, whole: Bytes) {
    *read = BytesMut::new();
    *read = whole.try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]));
}

enum Carried {
    /// Not the lane's after all (the gate's answer is the full path's to give).
    Declined,
    Answered,
    /// Answered, and the connection is to close.
    Close,
}

/// One request the lane may carry: the gate's ticket, the exchange, the access-log line.
async fn carry<I>(
    io: &mut ClientIo<I>,
    handler: &Carrier<'_>,
    request: &Head<'_, [httparse::Header<'_>]>,
    path: std::borrow::Cow<'_, str>,
    watch: &mut Watch,
) -> Carried
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = StdInstant::now();
    let _in_flight = handler.activity.begin();
    let method = request.method;
    let head_request = method == Method::HEAD;
    let Some(ticket) = handler.app.express_ticket(request, handler.conn, handler.forwarder).await else {
        return Carried::Declined;
    };
    let peer = watch.peer;
    let outcome = handler.forwarder.express(&ticket, io, OnTheLane::others(), watch.check.as_mut()).await;
    let served = |upstream_time| Served { method, path: &path, client: ticket.client_ip, started, upstream_time };
    match outcome {
        Ok(Relayed { status, upstream_time, broke_off }) => {
            crate::base::metrics::express_request();
            // Logged as the full path logs it, whether or not the client read it all.
            served(Some(upstream_time)).record(status, Some(ticket.user.name.as_str()));
            match broke_off {
                None => Carried::Answered,
                Some(RelayError::Client(e)) if stalled_writing(&e) => {
                    warn_stopped_reading(peer);
                    Carried::Close
                }
                Some(RelayError::Client(e)) => {
                    tracing::debug!(peer = %peer, "the client went during an answer: {e}");
                    Carried::Close
                }
                Some(e) => {
                    tracing::warn!(peer = %peer, "an answer from the upstream broke off; the client's connection is closed: {e}");
                    Carried::Close
                }
            }
        }
        Err(ForwardError::ClientLeft) => {
            // Logged as nginx does (499: the client closed the request); nobody reads an answer.
            let closed = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
            served(None).record(closed, Some(ticket.user.name.as_str()));
            tracing::debug!(peer = %peer, "the client went before the upstream answered");
            Carried::Close
        }
        Err(e) => {
            let page = WebError::from(e).into_response();
            served(None).record(page.status(), Some(ticket.user.name.as_str()));
            // Boxed: an error is rare, and its page's future would grow every request's.
            let page = Box::pin(express::encode_page(page, head_request)).await;
            let _ = io.write_all(&page).await;
            let _ = io.flush().await;
            Carried::Close
        }
    }
}

enum Waited {
    Bytes,
    /// Nothing came within the time given.
    Quiet,
    Close,
}

/// Reads more of the client's bytes into `read`, waiting until `deadline` at most.
///
/// The wait is timed by the connection's own clock ([`Watch`]'s `check`), moved only when it
/// would ring too late: a new timer for each request would cost a wake-up of the runtime's
/// driver (a system call) every time, as its deadline is always the nearest one.
async fn next_bytes<I>(io: &mut ClientIo<I>, read: &mut BytesMut, watch: &mut Watch, deadline: Instant) -> Waited
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    if watch.activity.signal().is_some() {
        return Waited::Close;
    }
    if watch.check.deadline() > deadline {
        watch.check.as_mut().reset(deadline);
    }
    read.reserve(4096);
    loop {
        tokio::select! {
            biased;
            signal = watch.activity.signalled() => {
                watch.closing_idle(signal);
                return Waited::Close;
            }
            got = io.read_buf(read) => return match got {
                Ok(n) if n > 0 => Waited::Bytes,
                _ => Waited::Close,
            },
            () = watch.check.as_mut() => {
                if Instant::now() >= deadline {
                    return Waited::Quiet;
                }
                watch.check.as_mut().reset(deadline);
            }
        }
    }
}

/// The request target's path, for the access log: never its query, which can carry tokens.
/// Borrowed from the head, which outlives the request (the log line is most often not written).
fn path_of(head: &[u8]) -> std::borrow::Cow<'_, str> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let target = line.split(|&b| b == b' ').nth(1).unwrap_or_default();
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    String::from_utf8_lossy(path)
}

/// Reads a request head from `whole` and, if it is one the lane may be offered, reads its method
/// and target (the target shares `whole`'s memory, as hyper's does).
fn parse(whole: &Bytes) -> Parsed<'_> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut head = httparse::Request::new(&mut fields);
    let length = match head.parse(whole) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Declined,
    };
    let (Some(method), Some(target), Some(1)) = (head.method, head.path, head.version) else {
        return Parsed::Declined;
    };
    if !express::may_offer(method, target, head.headers) {
        return Parsed::Declined;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parsed::Declined };
    let Ok(uri) = Uri::from_maybe_shared(whole.slice_ref(target.as_bytes())) else { return Parsed::Declined };
    Parsed::Offered(Offered { length, method, uri, fields: head.headers.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    /// A field as read: its name and value.
    type Field = (String, Vec<u8>);

    /// The method, the target and the fields of a head the lane is offered.
    fn offered(head: &str) -> Option<(Method, Uri, Vec<Field>)> {
        match parse(&Bytes::copy_from_slice(head.as_bytes())) {
            Parsed::Offered(offered) => {
                assert_eq!(offered.length, head.len());
                let fields = offered.fields.iter().map(|f| (f.name.to_string(), f.value.to_vec())).collect();
                Some((offered.method, offered.uri, fields))
            }
            _ => None,
        }
    }

    #[test]
    fn a_connection_alone_on_its_workers_lane_knows_it_and_one_among_others_does_too() {
        let first = OnTheLane::join();
        assert!(!OnTheLane::others(), "alone: its request is sent at once");
        let second = OnTheLane::join();
        assert!(OnTheLane::others(), "two: each waits for the other's request to go with it");
        drop(first);
        assert!(!OnTheLane::others(), "a connection that left the lane is not counted");
        // Another worker's connections are not this one's company.
        std::thread::spawn(|| {
            let _elsewhere = OnTheLane::join();
            assert!(!OnTheLane::others());
        })
        .join()
        .unwrap();
        drop(second);
        assert_eq!(ON_THE_LANE.get(), 0);
    }

    #[test]
    fn the_read_buffer_keeps_its_allocation_from_one_request_to_the_next() {
        let mut read = BytesMut::with_capacity(8192);
        read.extend_from_slice(b"GET / HTTP/1.1\r\n\r\nGET /next");
        let start = read.as_ptr();
        let whole = read.split().freeze();
        take_back(&mut read, whole);
        let _ = read.split_to(18);
        assert_eq!(&read[..], b"GET /next", "what came after the head is kept");
        assert_eq!(read.as_ptr(), start.wrapping_add(18), "in the same allocation");
        assert!(read.capacity() >= 8192 - 18, "with its room: the next read needs no new allocation");
    }

    #[test]
    fn a_signed_in_get_is_offered_with_its_fields() {
        let (method, uri, fields) =
            offered("GET /wiki?x=1 HTTP/1.1\r\nHost: a.test\r\nCookie: portcullis=t\r\nX-A: 1\r\nX-A: 2\r\n\r\n")
                .expect("offered");
        assert_eq!(method, Method::GET);
        assert_eq!(uri, "/wiki?x=1");
        let a: Vec<&[u8]> = fields.iter().filter(|(n, _)| n == "X-A").map(|(_, v)| &v[..]).collect();
        assert_eq!(a, [b"1", b"2"], "as sent: in order, the name's case kept");
        assert_eq!(path_of(b"GET /wiki?token=secret HTTP/1.1\r\n"), "/wiki");
    }

    /// The gate reads the lane's fields as `httparse` found them, where hyper's path reads them
    /// from an `http` map: every byte `httparse` takes in a name or a value, `http` must take
    /// too, or the lane would carry a field the full path refuses.
    #[test]
    fn every_byte_httparse_takes_in_a_field_http_takes_too() {
        let parses = |head: &[u8]| {
            let mut fields = [httparse::EMPTY_HEADER; 4];
            let mut request = httparse::Request::new(&mut fields);
            matches!(request.parse(head), Ok(httparse::Status::Complete(_)))
        };
        let (mut names, mut values) = (0, 0);
        // A colon ends a name: what follows it is the value.
        for byte in (0..=255u8).filter(|&b| b != b':') {
            let name = [b'X', byte, b'a'];
            let head = [&b"GET / HTTP/1.1\r\n"[..], &name, b": v\r\n\r\n"].concat();
            if parses(&head) {
                names += 1;
                assert!(HeaderName::from_bytes(&name).is_ok(), "name byte {byte:#04x}");
            }
        }
        for byte in 0..=255u8 {
            let value = [b'a', byte, b'b'];
            let head = [&b"GET / HTTP/1.1\r\nX: "[..], &value, b"\r\n\r\n"].concat();
            if parses(&head) {
                values += 1;
                assert!(HeaderValue::from_bytes(&value).is_ok(), "value byte {byte:#04x}");
            }
        }
        // Not vacuous: the tokens' characters, and visible bytes, tab and obs-text.
        assert_eq!(names, 77, "RFC 9110 §5.6.2 tchar");
        assert!(values >= 95 + 1 + 128, "{values}");
    }

    #[test]
    fn anything_with_a_body_an_upgrade_or_an_odd_shape_is_declined() {
        for head in [
            "POST / HTTP/1.1\r\nHost: a\r\nCookie: p=t\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nCookie: p=t\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nCookie: p=t\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nCookie: p=t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nCookie: p=t\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nCookie: p=t\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nCookie: p=t\r\nConnection: close\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\nCookie: p=t\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\nCookie: p=t\r\n\r\n",
            "GET * HTTP/1.1\r\nHost: a\r\nCookie: p=t\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nCookie: p=t\r\nBad Name: x\r\n\r\n",
        ] {
            assert!(offered(head).is_none(), "{head:?}");
        }
        let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\nCookie: p=t\r\n");
        for i in 0..MAX_FIELDS {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert!(offered(&many).is_none(), "over the field limit");
        assert!(matches!(parse(&Bytes::from_static(b"GET / HTTP/1.1\r\nHost: a\r\n")), Parsed::Partial));
        // Bare LF line ends: read as hyper reads them (RFC 9112 §2.2 lets a recipient), since it
        // is the same parser; the upstream is sent CRLF either way.
        assert!(offered("GET / HTTP/1.1\nHost: a\nCookie: p=t\n\n").is_some());
    }
}
