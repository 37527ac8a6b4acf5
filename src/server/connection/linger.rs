//! A lingering close for a connection whose client has not yet taken in all it was sent: one
//! closed to make room for a newcomer, and one that closed of its own accord.
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
//! `lingering_time`). When it ends because the proxy stopped waiting (stalled, too long, or its
//! place taken back), and when a displaced connection gets no place at all, the socket is reset:
//! closed the usual way, the kernel would keep what the client has not acknowledged and go on
//! sending it as an orphan (tcp(7)), outside every limit here. A client that keeps its answers
//! unread had grown the kernel's TCP memory from 84 to 806 MiB in 40 s that way.
//!
//! A connection that closed of its own accord (`Connection: close`, HTTP/1.0, the idle limit)
//! lingers in its own place in `limits.max_connections`, for as long as its client acknowledges
//! something every `limits.send_timeout`, and at least every [`IN_PLACE_STALLED_AT_LEAST`]: so
//! answers asked for and never read are bounded by the budget and the client's share of it, as
//! the connections they were, and a slow reader gets the same answer whole whether it asked to
//! close or not. [`LINGER_STALLED`] was too short for that: a client reading steadily at 20 KB/s
//! reopens its receive window only once it has drained a good part of its buffer (receiver-side
//! silly window avoidance, RFC 9293 §3.8.6.2.2), and the sender's zero-window probes back off
//! meanwhile (§3.8.6.1), so nothing new is acknowledged for 6 s at a time; at 10 KB/s, 12 s (the
//! sixth attack pass: 1 MiB at 20 KB/s reset after 324 KB). With a whole answer of megabytes in
//! the buffers, longer still: `curl --limit-rate 20k` on 3 MiB, nothing else running, went 75 s
//! with nothing acknowledged while it read (its window stayed shut, the probes 51 s apart), and 2
//! of 4 such downloads were reset at `send_timeout` (the eleventh attack pass). Such a socket costs
//! its place and nothing else, and gives the place up when a newcomer needs it.
//!
//! A displaced connection's place goes to the newcomer at once; lingering sockets are held outside
//! `limits.max_connections`, so at most [`MAX_LINGERING`] linger at a time, and at most
//! [`MAX_LINGERING_PER_HOLDER`] of one holder (a client address as `limits.max_connections_per_address`
//! counts it: IPv4 whole, IPv6 by its /64). When every place is taken, a displaced connection
//! whose holder has fewer lingering than the largest holder takes the place of one of that
//! holder's, the one draining slowest, which is closed outright: so clients keeping many
//! answers unread from several addresses cannot take every place and bring back the reset for
//! everyone else. A holder with as many as the largest is closed outright, as before lingering.
//! Counting an IPv6 /48 as one holder was tried and dropped: it let one subscriber deny
//! lingering to every other in a /48 a carrier shares out by /64, while a client spreading over
//! many /64s gains nothing against the slowest-draining rule.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::base::socket::{reset_when_closed, unacknowledged_bytes};
use crate::server::capacity::{Activity, Entry, Place as ConnectionPlace, Signal};
use crate::server::shares::Address;

/// With nothing more acknowledged by the client for this long, lingering ends.
pub(super) const LINGER_STALLED: Duration = Duration::from_secs(5);
/// The least patience a socket lingering in its own place gets with a client that acknowledges
/// nothing, whatever `limits.send_timeout` says: the sender's zero-window probes back off to a
/// minute and more apart (RFC 9293 §3.8.6.1), so a client that reads slowly but steadily can go
/// that long with nothing acknowledged. Only its place is held, and a newcomer may take it.
pub(super) const IN_PLACE_STALLED_AT_LEAST: Duration = Duration::from_secs(300);
/// The longest a displaced connection lingers in all.
pub(super) const LINGER_AT_MOST: Duration = Duration::from_secs(30);
/// How often a lingering socket is asked what the client has acknowledged.
const LOOK_EVERY: Duration = Duration::from_millis(100);
/// How long a lingering socket has to show how fast its client drains it before its place can
/// be taken back.
const SHOWN_WITHIN: Duration = Duration::from_secs(1);
/// The most displaced connections lingering at once, in the whole process.
pub(super) const MAX_LINGERING: usize = 1024;
/// The most of them from one client address (an IPv6 /64).
pub(super) const MAX_LINGERING_PER_HOLDER: usize = MAX_LINGERING / 8;

/// A connection's entry among the open ones, held by the connection: dropped with it, unless its
/// socket took it to linger in its place (see `connection::serve`).
pub(super) struct EntrySlot(SharedEntry);

/// The socket's view of its connection's [`EntrySlot`].
#[derive(Clone)]
pub(super) struct SharedEntry(Arc<Mutex<Option<Entry>>>);

impl EntrySlot {
    pub fn new(entry: Entry) -> Self {
        Self(SharedEntry(Arc::new(Mutex::new(Some(entry)))))
    }

    pub fn share(&self) -> SharedEntry {
        self.0.clone()
    }
}

impl Drop for EntrySlot {
    fn drop(&mut self) {
        drop(self.0.take());
    }
}

impl SharedEntry {
    fn take(&self) -> Option<Entry> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// A lingering socket as the places know it.
struct Lingerer {
    id: u64,
    since: Instant,
    /// How fast its client has been taking in the answer ([`drain_score`]), kept by its task.
    draining: Arc<AtomicU64>,
    /// Tells its task the place was taken back.
    end: oneshot::Sender<()>,
}

impl Lingerer {
    /// The lower, the sooner its place is taken back: a socket in its first [`SHOWN_WITHIN`] has
    /// not had the time to show how fast it drains, and counts as the fastest.
    fn keep_score(&self, now: Instant) -> u64 {
        if now - self.since < SHOWN_WITHIN { u64::MAX } else { self.draining.load(Ordering::Relaxed) }
    }
}

/// The lingering places: how many are taken, and each holder's sockets, oldest first.
struct Places {
    taken: usize,
    next_id: u64,
    held: BTreeMap<Address, VecDeque<Lingerer>>,
}

static PLACES: Mutex<Places> = Mutex::new(Places { taken: 0, next_id: 0, held: BTreeMap::new() });

fn places() -> MutexGuard<'static, Places> {
    PLACES.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Places {
    fn count(&self, holder: Address) -> usize {
        self.held.get(&holder).map_or(0, VecDeque::len)
    }

    /// Takes back a place from the holder with the most lingering sockets, if it has more than
    /// `mine`: its socket whose client has been taking in its answer slowest, the oldest of
    /// those. Age alone would make the places a queue: clients from enough holders, each
    /// holding one, would push out a reader downloading at full speed by arriving fast enough
    /// (1,024 places at 150 a second: reset after 7 s, in the fourth attack pass). To keep its
    /// sockets, a client must now drain them faster than the one it would displace.
    fn make_room_for(&mut self, mine: usize, now: Instant) -> bool {
        let Some(largest) = self.held.values().map(VecDeque::len).max().filter(|&most| most > mine) else {
            return false;
        };
        let chosen = self
            .held
            .iter()
            .filter(|(_, sockets)| sockets.len() == largest)
            .flat_map(|(holder, sockets)| sockets.iter().enumerate().map(move |(at, socket)| (*holder, at, socket)))
            .min_by_key(|(_, _, socket)| (socket.keep_score(now), socket.id))
            .map(|(holder, at, _)| (holder, at));
        let Some((holder, at)) = chosen else { return false };
        let sockets = self.held.get_mut(&holder).expect("just found");
        if let Some(socket) = sockets.remove(at) {
            let _ = socket.end.send(());
            self.taken -= 1;
        }
        if sockets.is_empty() {
            self.held.remove(&holder);
        }
        true
    }
}

/// A place among the lingering, and its holder's.
struct Place {
    id: u64,
    holder: Address,
    draining: Arc<AtomicU64>,
}

impl Place {
    /// A place for `holder`, if it has fewer than its bound and one is free or can be made;
    /// the receiver hears when the place is taken back for another holder.
    fn take(holder: Address) -> Option<(Self, oneshot::Receiver<()>)> {
        let now = Instant::now();
        let mut places = places();
        let mine = places.count(holder);
        if mine >= MAX_LINGERING_PER_HOLDER || (places.taken >= MAX_LINGERING && !places.make_room_for(mine, now)) {
            return None;
        }
        let (end, ended) = oneshot::channel();
        let (id, draining) = (places.next_id, Arc::new(AtomicU64::new(0)));
        places.next_id += 1;
        places.taken += 1;
        places.held.entry(holder).or_default().push_back(Lingerer { id, since: now, draining: draining.clone(), end });
        Some((Self { id, holder, draining }, ended))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut places = places();
        let Some(sockets) = places.held.get_mut(&self.holder) else { return };
        // Not there when it was taken back for another holder: that freed it already.
        let Some(at) = sockets.iter().position(|socket| socket.id == self.id) else { return };
        sockets.remove(at);
        if sockets.is_empty() {
            places.held.remove(&self.holder);
        }
        places.taken -= 1;
    }
}

/// How fast a client takes in its answer: the bytes it acknowledged at each look, each earlier
/// look counting 7/8 of the one after it (so a look's bytes count half after about half a
/// second). A client that reads a little every few seconds, enough not to stall, scores near
/// nothing between its reads; one reading steadily keeps about 0.8 s of its rate.
fn drain_score(previous: u64, acknowledged: u64) -> u64 {
    (previous - previous / 8).saturating_add(acknowledged)
}

/// The client's socket, closed with a linger while its client has not taken in all it was sent.
pub(super) struct Lingering<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// Always there until it is dropped (taken out only by `Drop`).
    io: Option<I>,
    activity: Arc<Activity>,
    peer: IpAddr,
    /// The connection's place in `limits.max_connections` (shared with a tunnel it becomes),
    /// kept while a connection that closed of its own accord drains.
    place: Option<Arc<ConnectionPlace>>,
    /// How long a connection that closed of its own accord may go with nothing more
    /// acknowledged (`limits.send_timeout`, at least [`IN_PLACE_STALLED_AT_LEAST`]).
    patience: Duration,
    /// The connection's entry among the open ones, taken if the socket lingers in its place.
    entry: Option<SharedEntry>,
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Lingering<I> {
    pub fn new(
        io: I,
        activity: Arc<Activity>,
        peer: IpAddr,
        place: Option<Arc<ConnectionPlace>>,
        patience: Duration,
    ) -> Self {
        Self { io: Some(io), activity, peer, place, patience, entry: None }
    }

    /// Lingering in its place, the socket keeps `entry` too: a newcomer can then still ask for
    /// the place, as it would of an idle connection.
    pub fn with_entry(mut self, entry: SharedEntry) -> Self {
        self.entry = Some(entry);
        self
    }

    fn io(&mut self) -> io::Result<Pin<&mut I>> {
        self.io.as_mut().map(Pin::new).ok_or_else(|| io::ErrorKind::NotConnected.into())
    }

    /// Asked to make room: the place goes to the newcomer now, and the socket lingers in one of
    /// the lingering places if it gets one (bounded in all), or is reset.
    fn linger_displaced(&mut self, io: I, socket: RawFd, runtime: tokio::runtime::Handle) {
        self.place = None;
        if let Some(taken) = displaced_place(self.peer, socket) {
            runtime.spawn(linger_among_the_displaced(io, socket, self.peer, taken));
        }
    }

    /// Closed of its own accord (its answer written, `Connection: close`, HTTP/1.0, the idle
    /// limit, the server stopping): the socket lingers while the client is still taking in what
    /// was sent, keeping the connection's place in `limits.max_connections` and its address's
    /// share; the client must acknowledge something every `limits.send_timeout` (at least every
    /// [`IN_PLACE_STALLED_AT_LEAST`]). Closed at once,
    /// the kernel kept each such answer as an orphan for as long as its client kept its window
    /// shut (minutes), and an address that asked for answers it never read, as fast as it could,
    /// held them by the thousand (the fifth attack pass: 5,850 orphans, 1.5 GiB of the kernel's
    /// TCP memory in 40 s, the kernel under memory pressure and an honest download 30 times
    /// slower). No bound in all: a slow client downloading with `Connection: close` gets its
    /// answer whole, as it would from a busy connection.
    ///
    /// With nothing in flight, such a place is idle as the budget counts: a newcomer may ask for
    /// it as for any idle connection's, and the socket then lingers among the displaced (5 s
    /// without progress, 30 s in all). Otherwise clients asking for answers they barely read
    /// held every place for `limits.send_timeout`, and for ever by letting a few bytes through
    /// every minute (the eighth attack pass: 5 requests a second for the sign-in page, no
    /// account needed, kept everyone else out).
    fn linger_in_place(&mut self, io: I, socket: RawFd, runtime: tokio::runtime::Handle) {
        let (place, patience, peer) = (self.place.take(), self.patience, self.peer);
        let entry = self.entry.as_ref().and_then(SharedEntry::take);
        runtime.spawn(async move {
            let mut io = io;
            let asked = async {
                match &entry {
                    Some(entry) => entry.activity().close_requested().await,
                    None => std::future::pending().await,
                }
            };
            let unscored = AtomicU64::new(0);
            let ended = tokio::select! {
                ended = linger(&mut io, socket, &unscored, patience) => Some(ended),
                () = asked => None,
            };
            match ended {
                Some(ended) => {
                    if ended == Ended::GaveUp {
                        reset_when_closed(socket);
                    }
                    drop(io);
                }
                None => {
                    // The place goes to the newcomer that asked (`capacity::Place` hands it
                    // over as it is dropped), and the socket joins the displaced.
                    drop((place, entry));
                    if let Some(taken) = displaced_place(peer, socket) {
                        linger_among_the_displaced(io, socket, peer, taken).await;
                    }
                }
            }
        });
    }
}

/// A lingering place for a displaced connection's socket from `peer`, or none: then the socket
/// is to be reset as it closes.
fn displaced_place(peer: IpAddr, socket: RawFd) -> Option<(Place, oneshot::Receiver<()>)> {
    let taken = Place::take(Address::of(peer));
    if taken.is_none() {
        tracing::debug!(peer = %peer, "as many displaced connections lingering as may: closed outright");
        reset_when_closed(socket);
    }
    taken
}

/// A displaced connection's socket, its place in `limits.max_connections` given up, lingering in
/// `taken`, a lingering place (bounded in all).
async fn linger_among_the_displaced<I: AsyncRead + AsyncWrite + Unpin>(
    mut io: I,
    socket: RawFd,
    peer: IpAddr,
    (place, taken_back): (Place, oneshot::Receiver<()>),
) {
    let draining = place.draining.clone();
    let _place = place;
    let ended = tokio::select! {
        // The bound covers the shutdown too: under TLS it writes a close_notify, which a
        // client keeping its window shut could otherwise make wait for ever.
        ended = tokio::time::timeout(LINGER_AT_MOST, linger(&mut io, socket, &draining, LINGER_STALLED)) => {
            ended.unwrap_or(Ended::GaveUp)
        }
        _ = taken_back => {
            tracing::debug!(peer = %peer, "a lingering connection's place went to another client: closed outright");
            Ended::GaveUp
        }
    };
    if ended == Ended::GaveUp {
        reset_when_closed(socket);
    }
    drop(io);
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Lingering<I> {
    fn drop(&mut self) {
        let Some(socket) = self.activity.socket() else { return };
        if self.activity.was_cut_off() {
            reset_when_closed(socket);
            return;
        }
        // Nothing the client has not acknowledged: nothing a reset could take from it.
        if unacknowledged_bytes(socket).is_none_or(|queued| queued == 0) {
            return;
        }
        let (Some(io), Ok(runtime)) = (self.io.take(), tokio::runtime::Handle::try_current()) else { return };
        if self.activity.signal() == Some(Signal::MakeRoom) {
            self.linger_displaced(io, socket, runtime);
        } else {
            self.linger_in_place(io, socket, runtime);
        }
    }
}

/// How many displaced connections of `peer`'s holder are lingering.
#[cfg(test)]
fn lingering_from(peer: IpAddr) -> usize {
    places().count(Address::of(peer))
}

/// How a lingering close ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The client has everything, or has closed, or the socket failed: a plain close.
    Done,
    /// The proxy stopped waiting (stalled, too long, or the place taken back). What the client
    /// has not acknowledged is dropped with a reset: closed the usual way, the kernel would go on
    /// sending it as an orphan, outside every limit here, for as long as the client reads a
    /// little now and then.
    GaveUp,
}

/// Shuts `io` down for writing, then reads and discards until the client closes, has
/// acknowledged everything, or acknowledges nothing more for `patience`, the shutdown included
/// (under TLS it writes a close_notify, which waits for room in a full send buffer).
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(
    io: &mut I,
    socket: RawFd,
    draining: &AtomicU64,
    patience: Duration,
) -> Ended {
    let mut progress = Progress { socket, left: None, acknowledged_at: Instant::now(), patience };
    let mut look = tokio::time::interval(LOOK_EVERY);
    loop {
        tokio::select! {
            shut = io.shutdown() => if shut.is_err() {
                return Ended::Done;
            } else {
                break;
            },
            _ = look.tick() => if let Some(ended) = progress.look(draining) {
                return ended;
            }
        }
    }
    let mut discard = [0u8; 4096];
    loop {
        tokio::select! {
            read = io.read(&mut discard) => if !matches!(read, Ok(n) if n > 0) {
                return Ended::Done;
            },
            _ = look.tick() => if let Some(ended) = progress.look(draining) {
                return ended;
            }
        }
    }
}

/// What a lingering socket's client has acknowledged, look by look.
struct Progress {
    socket: RawFd,
    /// Unacknowledged bytes at the last look that found some acknowledged.
    left: Option<usize>,
    acknowledged_at: Instant,
    /// With nothing more acknowledged for this long, the client has stalled.
    patience: Duration,
}

impl Progress {
    /// How the linger ends, if it does now: the client has everything, or has stalled.
    fn look(&mut self, draining: &AtomicU64) -> Option<Ended> {
        let now = Instant::now();
        let Some(queued) = unacknowledged_bytes(self.socket).filter(|&queued| queued > 0) else {
            return Some(Ended::Done);
        };
        let acknowledged = self.left.map_or(0, |left| left.saturating_sub(queued));
        if self.left.is_none() || acknowledged > 0 {
            (self.left, self.acknowledged_at) = (Some(queued), now);
        }
        draining.store(drain_score(draining.load(Ordering::Relaxed), acknowledged as u64), Ordering::Relaxed);
        (now - self.acknowledged_at >= self.patience).then_some(Ended::GaveUp)
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
