//! The express lane's side of the upstream: HTTP/1.1 over plain TCP, written and read here, for
//! requests without a body (see `web::express`).
//!
//! A response is read strictly (RFC 9112): its head with `httparse`, at most [`MAX_HEAD`] bytes
//! and [`MAX_HEADERS`] fields; its body framed by RFC 9112 §6.3 alone, and passed on framed by us,
//! never by the upstream's bytes: a length body with its one length, everything else re-chunked
//! after decoding. An answer the client could frame differently from us (two different lengths, a
//! length that is not a number, a broken chunk) is never passed on: before its head has gone out
//! it is a 502, after, the client's connection is closed.
//!
//! Connections are kept per worker, last in first out (`web::idle_stack`). A connection goes back
//! only when its answer was read exactly to its end and the upstream did not ask to close; one
//! that broke, or carried bytes past its answer, is closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::base::socket::{ResetIfUnacknowledged, socket_is_quiet};
pub use crate::web::answer_framing::Framing;
pub(crate) use crate::web::answer_framing::{Interpreted, interpret};
use crate::web::idle_stack::{IdleStack, Verdict};
use crate::web::upstream_pool::reap_while_alive;

/// The most an upstream's response head may take: hyper's own client allows about as much.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most fields in a response head, as hyper's client.
pub const MAX_HEADERS: usize = 100;
/// The most a chunk-size line (with extensions) or a trailer line may take.
const MAX_LINE: usize = 4096;
/// How much of a body is read at once.
const READ_AT_ONCE: usize = 64 * 1024;
/// Idle connections kept per worker at most.
const MAX_IDLE: usize = 1024;
/// The read buffer an exchange starts with. It is kept with its connection while idle (up to
/// this size: a buffer a large body grew is dropped), so a request on a kept connection
/// allocates none: an allocation this large is glibc's slow path, which also consolidates the
/// small chunks the request freed.
const READ_BUFFER: usize = 8 * 1024;

/// Why no answer came to pass on.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Unreachable(String),
    /// The upstream answered in a way that cannot be passed on.
    #[error("{0}")]
    BadResponse(String),
}

/// A connection to the upstream: reset if abandoned with some of its request unacknowledged.
type Connection = ResetIfUnacknowledged<TcpStream>;

/// Connects to `address` (`host:port`) with a fixed receive buffer: each address it resolves to
/// in turn, as `TcpStream::connect` does, until one answers.
async fn dial(address: &str, receive_buffer: usize) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host(address).await? {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_recv_buffer_size(u32::try_from(receive_buffer).unwrap_or(u32::MAX))?;
        match socket.connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address")))
}

/// What the reader makes of an answer's head, for the writer of the client's head (see
/// [`RawUpstream::send`]).
pub struct Answer<'a> {
    pub status: StatusCode,
    pub framing: Framing,
    /// For an answer without a body ([`Framing::Empty`]): the length it announces, when that is
    /// one plain number (RFC 9110 §8.6); the only `Content-Length` it may pass on.
    pub announced_length: Option<u64>,
    /// The fields as read: names are tokens and values free of control bytes (`httparse`
    /// refuses a head with anything else).
    pub fields: &'a [httparse::Header<'a>],
}

/// Writes the client's head for an answer, or says why it cannot be passed on.
pub trait WriteHead: Fn(&Answer<'_>) -> Result<Vec<u8>, String> {}
impl<F: Fn(&Answer<'_>) -> Result<Vec<u8>, String>> WriteHead for F {}

/// An answer's head, read: how its body is framed, and its head as the client gets it.
pub struct AnswerHead {
    pub status: StatusCode,
    pub framing: Framing,
    /// Written by the caller's [`WriteHead`] while the fields were at hand.
    for_client: Vec<u8>,
    /// Whether the connection may carry another request once this answer has been read.
    reusable: bool,
}

/// Keep-alive HTTP/1.1 connections to a plain-http upstream.
pub struct RawUpstream {
    /// `host:port`, as dialled.
    address: String,
    dial: Dial,
    idle_timeout: Duration,
    idle: IdleStack<Idle>,
    reaper_started: AtomicBool,
}

/// A kept connection, its read buffer (empty) and when it went idle.
struct Idle {
    stream: Connection,
    read: BytesMut,
    since: Instant,
}

/// One exchange: the connection it runs on and what has been read past the answer's head.
pub struct Exchange {
    stream: Connection,
    read: BytesMut,
    pub head: AnswerHead,
    /// Whether any byte of the answer has been written to the client.
    sent: bool,
}

/// How a new upstream connection is made.
#[derive(Debug, Clone, Copy)]
pub struct Dial {
    /// `proxy.connect_timeout`, the lookup of the address included.
    pub connect_timeout: Duration,
    /// `proxy.upstream_receive_buffer_bytes`: set before connecting, so the window scale the
    /// handshake agrees on fits it (RFC 7323 §2.2), and fixed, so the kernel does not grow it.
    pub receive_buffer: usize,
}

impl RawUpstream {
    pub fn new(address: String, dial: Dial, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            address,
            dial,
            idle_timeout,
            idle: IdleStack::new(MAX_IDLE),
            reaper_started: AtomicBool::new(false),
        })
    }

    /// Sends a request head (a request without a body) and reads the answer's head, which
    /// `write_head` turns into the client's (one pass over the fields as read: no map of them).
    ///
    /// A kept connection is looked at before it is used: one with bytes waiting (an answer nobody
    /// asked for) or closed by the upstream is dropped, never used. One the upstream closes in the
    /// instant between that look and the request fails with nothing of an answer read; the
    /// request is then sent once more, on a new connection, and never again. That is safe only
    /// because the request is GET or HEAD (RFC 9110 §9.2.2: idempotent; RFC 9112 §9.3.1 allows
    /// retrying it), and once is all: an upstream that closes on a request without answering it
    /// (nginx's `return 444`) is asked twice at most, not once per kept connection.
    pub async fn send(
        self: &Arc<Self>,
        request_head: &[u8],
        head_request: bool,
        write_head: impl WriteHead,
    ) -> Result<Exchange, SendError> {
        let mut may_retry = true;
        loop {
            let (mut stream, mut read, reused) = match self.take_idle().filter(|_| may_retry) {
                Some((stream, read)) => (stream, read, true),
                // Boxed: dialling is rare (connections are kept), and its future (a timer, the
                // address lookup) would be a third of every request's on the express lane.
                None => (Box::pin(self.connect()).await?, BytesMut::new(), false),
            };
            read.reserve(READ_BUFFER);
            let retry = reused && may_retry;
            may_retry = false;
            if let Err(e) = stream.write_all(request_head).await {
                if retry {
                    continue;
                }
                return Err(SendError::Unreachable(format!("sending the request: {e}")));
            }
            match read_head(&mut stream, &mut read, head_request, &write_head).await {
                Ok(head) => return Ok(Exchange { stream, read, head, sent: false }),
                Err(HeadError::Closed { answered_in_part: false }) if retry => continue,
                Err(HeadError::Closed { .. }) => {
                    return Err(SendError::Unreachable("the upstream closed the connection without answering".into()));
                }
                Err(HeadError::Io { error, answered_in_part: false }) if retry => {
                    tracing::debug!("a kept upstream connection failed: {error}");
                    continue;
                }
                Err(HeadError::Io { error, .. }) => {
                    return Err(SendError::Unreachable(format!("reading the answer: {error}")));
                }
                Err(HeadError::Bad(why)) => return Err(SendError::BadResponse(why)),
            }
        }
    }

    /// The most recently kept connection that is still fit to use, with its read buffer.
    fn take_idle(&self) -> Option<(Connection, BytesMut)> {
        let verdict = |idle: &mut Idle| {
            if idle.since.elapsed() <= self.idle_timeout && is_quiet(&idle.stream) {
                Verdict::Take
            } else {
                Verdict::Close
            }
        };
        self.idle.take(verdict).map(|Idle { stream, read, .. }| (stream, read))
    }

    async fn connect(self: &Arc<Self>) -> Result<Connection, SendError> {
        let limit = self.dial.connect_timeout;
        let stream = match tokio::time::timeout(limit, dial(&self.address, self.dial.receive_buffer)).await {
            Err(_) => return Err(SendError::Unreachable(format!("connecting took over {limit:?}"))),
            Ok(Err(e)) => return Err(SendError::Unreachable(format!("connecting: {e}"))),
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        if !self.idle_timeout.is_zero() && !self.reaper_started.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap_while_alive(Arc::downgrade(self), self.idle_timeout, Self::reap_idle));
        }
        let socket = std::os::fd::AsRawFd::as_raw_fd(&stream);
        Ok(ResetIfUnacknowledged::new(stream, socket))
    }

    /// Keeps a connection whose answer was read exactly to its end (`read` is empty), unless
    /// connections are not kept at all (an idle timeout of zero: `proxy.upstream_keepalive`).
    fn give_back(&self, stream: Connection, mut read: BytesMut) {
        if self.idle_timeout.is_zero() {
            return;
        }
        read.clear();
        // Takes back the room before the read position (the buffer is empty and not shared).
        read.reserve(READ_BUFFER);
        if read.capacity() > READ_BUFFER {
            read = BytesMut::new();
        }
        self.idle.push(Idle { stream, read, since: Instant::now() });
    }

    fn reap_idle(&self) {
        self.idle.retain(|idle| idle.since.elapsed() <= self.idle_timeout && is_quiet(&idle.stream));
    }
}

enum HeadError {
    /// The upstream closed before a whole head came; `answered_in_part` if any byte had come
    /// (an interim answer included).
    Closed {
        answered_in_part: bool,
    },
    Io {
        error: std::io::Error,
        answered_in_part: bool,
    },
    /// An answer that cannot be passed on.
    Bad(String),
}

/// Whether a kept connection has nothing to say: asked of the socket, not the runtime (why:
/// `UpstreamPool::take_idle`).
fn is_quiet(stream: &Connection) -> bool {
    socket_is_quiet(stream.socket())
}

/// Reads the final answer's head (interim 1xx answers other than 101 are read and dropped, as
/// hyper's client does), leaving what follows it in `read`.
async fn read_head(
    stream: &mut TcpStream,
    read: &mut BytesMut,
    head_request: bool,
    write_head: &impl WriteHead,
) -> Result<AnswerHead, HeadError> {
    let mut answered_in_part = false;
    loop {
        // Nothing read yet (the usual case right after sending): nothing to parse.
        if !read.is_empty() {
            match parse_head(read, head_request, write_head, &mut answered_in_part)? {
                Some(head) => return Ok(head),
                None if read.len() >= MAX_HEAD => {
                    return Err(HeadError::Bad(format!("a response head over {MAX_HEAD} bytes")));
                }
                None => {}
            }
        }
        read.reserve(4096);
        answered_in_part = answered_in_part || !read.is_empty();
        match stream.read_buf(read).await {
            Ok(0) => return Err(HeadError::Closed { answered_in_part }),
            Ok(_) => {}
            Err(error) => return Err(HeadError::Io { error, answered_in_part }),
        }
    }
}

/// The answer's head, if `read` holds all of it; interim answers (1xx) before it are skipped, and
/// set `answered_in_part`. Not async: the parser's table of fields (3 KiB) lives on the stack for
/// the parse, not in the exchange's future across every wait for the upstream.
fn parse_head(
    read: &mut BytesMut,
    head_request: bool,
    write_head: &impl WriteHead,
    answered_in_part: &mut bool,
) -> Result<Option<AnswerHead>, HeadError> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut answer = httparse::Response::new(&mut fields);
        match answer.parse(read) {
            Ok(httparse::Status::Complete(length)) => {
                let Some(read_as) = interpret(&answer, head_request).map_err(HeadError::Bad)? else {
                    // An interim answer, skipped.
                    read.advance(length);
                    *answered_in_part = true;
                    continue;
                };
                let Interpreted { status, framing, announced_length, reusable } = read_as;
                let for_client = write_head(&Answer { status, framing, announced_length, fields: answer.headers })
                    .map_err(HeadError::Bad)?;
                read.advance(length);
                return Ok(Some(AnswerHead { status, framing, for_client, reusable }));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(HeadError::Bad(format!("an unreadable response head: {e}"))),
        }
    }
}

/// How a relay ended badly.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Before a byte of it had been written to the client: it can still be told (a 502).
    #[error("the upstream's answer cannot be passed on: {0}")]
    Unanswered(String),
    #[error("the upstream's answer broke off: {0}")]
    Upstream(String),
    #[error("the client could not be written to: {0}")]
    Client(#[source] std::io::Error),
}

impl Exchange {
    /// Writes the answer's head as the client gets it and the body to `client`, framed by us;
    /// gives the connection back to `pool` if it may carry another request.
    pub async fn relay<W: AsyncWrite + Unpin>(mut self, client: &mut W, pool: &RawUpstream) -> Result<(), RelayError> {
        let head = std::mem::take(&mut self.head.for_client);
        match self.relay_body(head, client).await {
            Err(RelayError::Upstream(why)) if !self.sent => Err(RelayError::Unanswered(why)),
            Err(e) => Err(e),
            Ok(done) => {
                // Bytes past the answer were not asked for: the connection cannot be trusted again.
                if done && self.head.reusable && self.read.is_empty() {
                    pool.give_back(self.stream, self.read);
                }
                Ok(())
            }
        }
    }

    /// Writes `bytes` to the client.
    async fn write<W: AsyncWrite + Unpin>(&mut self, client: &mut W, bytes: &[u8]) -> Result<(), RelayError> {
        client.write_all(bytes).await.map_err(RelayError::Client)?;
        self.sent = true;
        Ok(())
    }

    /// The head and the body; whether the answer was read exactly to its end.
    async fn relay_body<W: AsyncWrite + Unpin>(
        &mut self,
        mut head: Vec<u8>,
        client: &mut W,
    ) -> Result<bool, RelayError> {
        let done = match self.head.framing {
            Framing::Empty => {
                self.write(client, &head).await?;
                true
            }
            Framing::Length(length) => self.relay_length(head, length, client).await?,
            // Boxed: their futures are most of the relay's, which the express lane allocates
            // with every request's; one allocation for a whole answer costs them little.
            Framing::Chunked => {
                Box::pin(self.relay_chunked(&mut head, client)).await?;
                true
            }
            Framing::UntilClose => {
                Box::pin(self.relay_until_close(&mut head, client)).await?;
                false
            }
        };
        client.flush().await.map_err(RelayError::Client)?;
        Ok(done)
    }

    /// More of the body; an error if the upstream closed first.
    async fn fill(&mut self) -> Result<(), RelayError> {
        self.read.reserve(READ_AT_ONCE);
        match self.stream.read_buf(&mut self.read).await {
            Ok(0) => Err(RelayError::Upstream("closed before the end of the body".into())),
            Ok(_) => Ok(()),
            Err(e) => Err(RelayError::Upstream(e.to_string())),
        }
    }

    async fn relay_length<W: AsyncWrite + Unpin>(
        &mut self,
        mut head: Vec<u8>,
        length: u64,
        client: &mut W,
    ) -> Result<bool, RelayError> {
        let mut left = length;
        // The head and what came with it in one write: a small answer is one system call.
        let first = (self.read.len() as u64).min(left) as usize;
        head.extend_from_slice(&self.read[..first]);
        self.read.advance(first);
        left -= first as u64;
        self.write(client, &head).await?;
        while left > 0 {
            self.fill().await?;
            let take = (self.read.len() as u64).min(left) as usize;
            client.write_all(&self.read[..take]).await.map_err(RelayError::Client)?;
            self.read.advance(take);
            left -= take as u64;
        }
        Ok(true)
    }

    /// Decodes the upstream's chunks (RFC 9112 §7.1) and writes them re-chunked, without
    /// extensions or trailers. Output is gathered and written whenever more must be read.
    async fn relay_chunked<W: AsyncWrite + Unpin>(
        &mut self,
        out: &mut Vec<u8>,
        client: &mut W,
    ) -> Result<(), RelayError> {
        loop {
            let size = loop {
                match chunk_size_line(&self.read)? {
                    Some((size, line)) => {
                        self.read.advance(line);
                        break size;
                    }
                    None => self.more(out, client).await?,
                }
            };
            if size == 0 {
                // Trailers, dropped, up to the empty line that ends the message.
                loop {
                    match line_end(&self.read)? {
                        Some(0) => {
                            self.read.advance(2);
                            out.extend_from_slice(b"0\r\n\r\n");
                            self.write(client, out).await?;
                            return Ok(());
                        }
                        Some(line) => self.read.advance(line + 2),
                        None => self.more(out, client).await?,
                    }
                }
            }
            out.extend_from_slice(format!("{size:x}\r\n").as_bytes());
            let mut left = size;
            while left > 0 {
                if self.read.is_empty() {
                    self.more(out, client).await?;
                }
                let take = (self.read.len() as u64).min(left) as usize;
                out.extend_from_slice(&self.read[..take]);
                self.read.advance(take);
                left -= take as u64;
            }
            while self.read.len() < 2 {
                self.more(out, client).await?;
            }
            if &self.read[..2] != b"\r\n" {
                return Err(RelayError::Upstream("a chunk not followed by CRLF".into()));
            }
            self.read.advance(2);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Writes what is gathered, then reads more from the upstream.
    async fn more<W: AsyncWrite + Unpin>(&mut self, out: &mut Vec<u8>, client: &mut W) -> Result<(), RelayError> {
        if !out.is_empty() {
            self.write(client, out).await?;
            out.clear();
        }
        self.fill().await
    }

    async fn relay_until_close<W: AsyncWrite + Unpin>(
        &mut self,
        out: &mut Vec<u8>,
        client: &mut W,
    ) -> Result<(), RelayError> {
        loop {
            if !self.read.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", self.read.len()).as_bytes());
                out.extend_from_slice(&self.read);
                out.extend_from_slice(b"\r\n");
                self.read.clear();
            }
            self.write(client, out).await?;
            out.clear();
            self.read.reserve(READ_AT_ONCE);
            match self.stream.read_buf(&mut self.read).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(RelayError::Upstream(e.to_string())),
            }
        }
        self.write(client, b"0\r\n\r\n").await
    }
}

/// Where the line at the start of `read` ends (the index of its CR), once it has: a line ends
/// with CRLF, and a bare CR or LF inside it is an error.
fn line_end(read: &[u8]) -> Result<Option<usize>, RelayError> {
    let window = &read[..read.len().min(MAX_LINE + 2)];
    match window.iter().position(|&b| b == b'\n' || b == b'\r') {
        Some(at) if window[at] == b'\r' => match window.get(at + 1) {
            Some(b'\n') => Ok(Some(at)),
            Some(_) => Err(RelayError::Upstream("a bare CR in a chunk line".into())),
            None => Ok(None),
        },
        Some(_) => Err(RelayError::Upstream("a bare LF in a chunk line".into())),
        None if window.len() > MAX_LINE => Err(RelayError::Upstream("a chunk line too long".into())),
        None => Ok(None),
    }
}

/// A chunk-size line (`1*HEXDIG [ chunk-ext ] CRLF`): the size and the line's whole length.
fn chunk_size_line(read: &[u8]) -> Result<Option<(u64, usize)>, RelayError> {
    let Some(end) = line_end(read)? else { return Ok(None) };
    let line = &read[..end];
    // Extensions (after `;`) mean nothing to us and are not passed on.
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = digits.strip_suffix(b" ").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(RelayError::Upstream("a malformed chunk size".into()));
    }
    let size = u64::from_str_radix(std::str::from_utf8(digits).unwrap_or("x"), 16)
        .map_err(|_| RelayError::Upstream("a malformed chunk size".into()))?;
    Ok(Some((size, end + 2)))
}

#[cfg(test)]
#[path = "raw_upstream_tests.rs"]
mod tests;
