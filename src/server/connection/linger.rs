//! A lingering close for a connection closed to make room for a newcomer.
//!
//! Such a connection is idle as far as the proxy can tell: its last answer has been written, but
//! may still sit in the kernel's send buffer, not yet delivered to a slow client. Closed outright,
//! the next bytes the client sends (a pipelined request, an HTTP/2 PING or WINDOW_UPDATE) meet a
//! closed socket, the kernel answers them with a reset and drops what it had not sent (RFC 9293
//! §3.10.7.4; RFC 9112 §9.6 warns of exactly this). So the socket is shut down for writing (its
//! FIN follows the answer) and kept open, reading and discarding, for as long as the client is
//! still taking in what was sent: what nginx's `lingering_close` does.
//!
//! It lingers only while the client has not acknowledged everything (`SIOCOUTQ`): once it has,
//! the answer is in the client's own buffer, where a reset no longer reaches it, and the socket
//! is closed. A socket that never sent anything, or whose client has it all, does not linger at
//! all. Lingering also ends when the client closes, when [`LINGER_STALLED`] passes with nothing
//! more acknowledged (nginx's `lingering_timeout`), or after [`LINGER_AT_MOST`] in all (nginx's
//! `lingering_time`).
//!
//! The connection's place goes to the newcomer at once; lingering sockets are held outside
//! `limits.max_connections`, so at most [`MAX_LINGERING`] linger at a time, and at most
//! [`MAX_LINGERING_PER_ADDRESS`] of one client address (as `limits.max_connections_per_address`
//! counts them): one client holding answers it never reads cannot take every lingering place and
//! so bring back the reset for everyone else. Past either bound a displaced connection is closed
//! outright, as it was before lingering.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::base::socket::unacknowledged_bytes;
use crate::server::capacity::{Activity, Address, Signal};

/// With nothing more acknowledged by the client for this long, lingering ends.
pub(super) const LINGER_STALLED: Duration = Duration::from_secs(5);
/// The longest a displaced connection lingers in all.
pub(super) const LINGER_AT_MOST: Duration = Duration::from_secs(30);
/// How often a lingering socket is asked what the client has acknowledged.
const LOOK_EVERY: Duration = Duration::from_millis(100);
/// The most displaced connections lingering at once, in the whole process.
pub(super) const MAX_LINGERING: usize = 1024;
/// The most of them from one client address.
pub(super) const MAX_LINGERING_PER_ADDRESS: usize = MAX_LINGERING / 8;

static LINGERING: Semaphore = Semaphore::const_new(MAX_LINGERING);
static LINGERING_FROM: Mutex<BTreeMap<Address, usize>> = Mutex::new(BTreeMap::new());

/// The client's socket, closed with a linger when its connection was asked to make room.
pub(super) struct Lingering<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// Always there until it is dropped (taken out only by `Drop`).
    io: Option<I>,
    activity: Arc<Activity>,
    peer: IpAddr,
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Lingering<I> {
    pub fn new(io: I, activity: Arc<Activity>, peer: IpAddr) -> Self {
        Self { io: Some(io), activity, peer }
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
        let Some(socket) = self.activity.socket() else { return };
        // Nothing the client has not acknowledged: nothing a reset could take from it.
        if unacknowledged_bytes(socket).is_none_or(|queued| queued == 0) {
            return;
        }
        let (Some(io), Ok(runtime)) = (self.io.take(), tokio::runtime::Handle::try_current()) else { return };
        let Some(place) = Place::take(Address::of(self.peer)) else {
            tracing::debug!(peer = %self.peer, "as many displaced connections lingering as may: closed outright");
            return;
        };
        runtime.spawn(async move {
            let _place = place;
            // The bound covers the shutdown too: under TLS it writes a close_notify, which a
            // client keeping its window shut could otherwise make wait for ever.
            let _ = tokio::time::timeout(LINGER_AT_MOST, linger(io, socket)).await;
        });
    }
}

/// A place among the lingering, in all and for one address.
struct Place {
    _permit: SemaphorePermit<'static>,
    address: Address,
}

impl Place {
    fn take(address: Address) -> Option<Self> {
        let mut from = LINGERING_FROM.lock().unwrap_or_else(PoisonError::into_inner);
        let count = from.entry(address).or_insert(0);
        if *count >= MAX_LINGERING_PER_ADDRESS {
            return None;
        }
        let permit = LINGERING.try_acquire().ok()?;
        *count += 1;
        Some(Self { _permit: permit, address })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut from = LINGERING_FROM.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = from.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                from.remove(&self.address);
            }
        }
    }
}

/// How many displaced connections of `peer`'s address are lingering.
#[cfg(test)]
fn lingering_from(peer: IpAddr) -> usize {
    LINGERING_FROM.lock().unwrap_or_else(PoisonError::into_inner).get(&Address::of(peer)).copied().unwrap_or(0)
}

/// Shuts `io` down for writing, then reads and discards until the client closes, has
/// acknowledged everything, or stalls (the caller bounds it in all).
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(mut io: I, socket: RawFd) {
    if io.shutdown().await.is_err() {
        return;
    }
    let mut acknowledged_at = Instant::now();
    let mut left = usize::MAX;
    let mut look = tokio::time::interval(LOOK_EVERY);
    let mut discard = [0u8; 4096];
    loop {
        tokio::select! {
            read = io.read(&mut discard) => if !matches!(read, Ok(n) if n > 0) {
                return;
            },
            _ = look.tick() => {
                let now = Instant::now();
                match unacknowledged_bytes(socket) {
                    None | Some(0) => return,
                    Some(queued) if queued < left => (left, acknowledged_at) = (queued, now),
                    Some(_) => {}
                }
                if now - acknowledged_at >= LINGER_STALLED {
                    return;
                }
            }
        }
    }
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
#[path = "linger_tests.rs"]
mod tests;
