//! A connection's clock and what may end it, while it waits for bytes and while hyper drives it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use super::client_io::{ClientIo, Transport, stalled_writing, warn_stopped_reading};
use super::linger::LINGER_STALLED;
use crate::base::socket::unacknowledged_bytes;
use crate::config::Limits;
use crate::server::capacity::{Activity, Signal};

/// After asking an idle connection to close (an HTTP/2 GOAWAY), how long it may take.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How often an idle connection whose client is still taking in its last answer is looked at.
const DELIVERY_LOOK: Duration = Duration::from_secs(1);

/// How long an HTTP/1.1 connection is quiet between requests before it is parked. Long enough
/// that a client sending requests back to back never pays for the parking; short enough that the
/// connections a browser keeps open between pages hold almost nothing.
pub(super) const PARK_AFTER: Duration = Duration::from_millis(100);

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Driven {
    Ended,
    Parked,
}

/// A connection's clock and what may end it: the server stopping, a newcomer needing its place
/// (see `capacity.rs`: both come as a [`Signal`] through its activity), or being idle past
/// `limits.header_read_timeout`.
pub(super) struct Watch {
    pub activity: Arc<Activity>,
    idle_limit: Duration,
    /// How long a client may let nothing of its answers through (`limits.send_timeout`).
    send_timeout: Duration,
    pub check: Pin<Box<Sleep>>,
    pub peer: SocketAddr,
    /// Bytes written that the client had not acknowledged at the last look, and since when.
    delivering: Option<(usize, Instant)>,
}

impl Watch {
    pub fn new(activity: Arc<Activity>, limits: &Limits, peer: SocketAddr) -> Self {
        let idle_limit = limits.header_read_timeout;
        let check = Box::pin(tokio::time::sleep(idle_limit));
        Self { activity, idle_limit, send_timeout: limits.send_timeout, check, peer, delivering: None }
    }

    /// Whether the client has let nothing of its answers through for `limits.send_timeout`
    /// (HTTP/2 flow control, `answer`): then it is cut off as a client that stopped reading its
    /// socket is (`client_io`). Otherwise, when to look again at the latest.
    fn answers_stalled(&self, now: Instant) -> Result<(), Duration> {
        match self.activity.answers_waiting_for(now) {
            Some(waited) if waited >= self.send_timeout => {
                self.activity.cut_off();
                warn_stopped_reading(self.peer);
                Ok(())
            }
            Some(waited) => Err(self.send_timeout - waited),
            None => Err(self.send_timeout),
        }
    }

    /// Whether the client is still taking in what it was sent. An answer written whole into the
    /// kernel's buffers leaves its connection with nothing in flight, idle as far as the proxy
    /// can tell, while a slow client may need longer than the idle limit to read it. Closed
    /// then, the client's next bytes (an HTTP/2 WINDOW_UPDATE, a pipelined request) meet a
    /// closed socket and a reset, and it loses the rest (RFC 9293 §3.10.7.4): a download at
    /// 20 KB/s over HTTP/2 lost the second half of 1 MB at the 20 s mark, with no attacker. So a
    /// connection whose client has acknowledged more since the last look, or stalled for less
    /// than a lingering socket may ([`LINGER_STALLED`]), is not idle yet.
    fn still_delivering(&mut self, now: Instant) -> bool {
        let queued = self.activity.socket().and_then(unacknowledged_bytes).unwrap_or(0);
        match self.delivering {
            _ if queued == 0 => {
                self.delivering = None;
                false
            }
            Some((last, since)) if last == queued => now - since < LINGER_STALLED,
            _ => {
                self.delivering = Some((queued, now));
                true
            }
        }
    }

    /// Logs why a connection goes (or starts to) when it was told to.
    pub fn closing_idle(&self, signal: Signal) {
        if signal == Signal::MakeRoom {
            tracing::debug!(peer = %self.peer, served = self.activity.served(), "idle connection closed to make room");
        }
    }

    /// Waits, with no request in flight and nothing of hyper's held, for the client's next
    /// bytes. False when the connection should close instead.
    pub async fn wait_for_bytes<I: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut ClientIo<I>) -> bool {
        if self.activity.signal().is_some() {
            return false;
        }
        loop {
            tokio::select! {
                // A connection asked to make room goes, even if its next request has just come:
                // the newcomer was promised its place (an idle HTTP/1.1 connection may be closed
                // at any time, RFC 9112 §9.6, and clients send again on a new one).
                biased;
                signal = self.activity.signalled() => {
                    self.closing_idle(signal);
                    return false;
                }
                read = io.read_ahead() => return matches!(read, Ok(n) if n > 0),
                _ = self.check.as_mut() => {
                    let now = Instant::now();
                    match self.activity.idle_for(now) {
                        Some(idle) if idle >= self.idle_limit && self.still_delivering(now) => {
                            self.check.as_mut().reset(now + DELIVERY_LOOK);
                        }
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
    pub async fn drive<C>(
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
        let first_look = if transport.may_park() { PARK_AFTER } else { self.idle_limit.min(self.send_timeout / 4) };
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
                signal = self.activity.signalled(), if closing.is_none() => {
                    // Stopping: finish what is in flight (the accept loop bounds the wait by
                    // `proxy.shutdown_grace`), take nothing new. Asked to make room: only an idle
                    // connection is asked. With nothing in flight (at most part of a request
                    // head, or an HTTP/2 connection with no stream open) it goes at once: a
                    // graceful close would wait for the rest of a head, or for an HTTP/2 client
                    // to acknowledge the GOAWAY, longer than the newcomer waits for its place.
                    self.closing_idle(signal);
                    if signal == Signal::MakeRoom {
                        // Asked only while idle, or while its client took nothing (a write
                        // blocked, answers held back by HTTP/2 flow control) or every request in
                        // flight waited on it (forms still arriving): those go unanswered or unsent.
                        if self.activity.gives_way_at_once(Instant::now()) {
                            if self.activity.write_stalled_for(Instant::now()).is_some() {
                                // What its client never took goes with it (reset), not to a
                                // lingering socket: it was taking nothing.
                                self.activity.cut_off();
                            }
                            return Driven::Ended;
                        }
                        self.check.as_mut().reset(Instant::now() + CLOSE_GRACE);
                    }
                    graceful_shutdown(connection);
                    closing = Some(Instant::now());
                }
                _ = self.check.as_mut() => {
                    let now = Instant::now();
                    let stalled_look = match self.answers_stalled(now) {
                        Ok(()) => return Driven::Ended,
                        Err(look_again) => look_again,
                    };
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
                        // An answer may start waiting on its client at any time: looked at
                        // within a quarter of the send timeout, so it is cut off at most that late.
                        self.check.as_mut().reset(now + busy_look.min(stalled_look));
                        busy_look = (busy_look * 2).min(self.idle_limit).min(self.send_timeout / 4);
                        continue;
                    };
                    busy_look = first_look;
                    if idle >= self.idle_limit && self.still_delivering(now) {
                        self.check.as_mut().reset(now + DELIVERY_LOOK);
                        continue;
                    }
                    if idle >= self.idle_limit {
                        tracing::debug!(peer = %self.peer, served = self.activity.served(), "idle connection closed");
                        graceful_shutdown(connection);
                        closing = Some(now);
                        self.check.as_mut().reset(now + CLOSE_GRACE);
                        continue;
                    }
                    if !transport.may_park_when_idle() {
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
                    // requests whose bodies (if any) were read to the end were served on it
                    // (`Transport::may_park`), so hyper has not given up on any byte that belongs
                    // to a request (it would end the connection itself for that, which must
                    // never look like a park).
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
            Err(e) if stalled_writing(&e) => warn_stopped_reading(self.peer),
            Err(e) => tracing::debug!(peer = %self.peer, "connection ended with an error: {e}"),
            Ok(()) => {}
        }
    }
}

/// Polls a future once, in the calling task's context.
async fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *future).poll(cx))).await
}
