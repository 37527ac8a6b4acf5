//! `limits.max_connections`: one budget of client connections for every worker, and what happens
//! when it is spent.
//!
//! A newcomer is not turned away while some connection sits idle: the one idle longest (a
//! keep-alive connection between requests, or a socket that never sent one) is asked to close,
//! and the newcomer takes its place. An HTTP/2 connection whose answers are all ready and have
//! waited [`ANSWERS_STALLED`] for a client that lets none of them through counts as idle too: the
//! proxy's work for it is done. Only when every connection is busy (a request in flight, or a
//! tunnel such as a WebSocket) does the newcomer get the 503. So a client that fills the budget
//! with idle connections cannot keep anyone else out; it only cycles its own connections. An idle
//! HTTP/1.1 connection may be closed at any time (RFC 9112 §9.5), and clients retry on another.
//!
//! One client holds at most its share of the places (`server::shares`: an address, an IPv6 /48).
//! At its share, a newcomer takes the place of that address's (or /48's) own idlest connection,
//! or gets the 503 when all of them are busy: one client's slow or unfinished requests (login
//! posts dribbled within their time limit, again and again) cannot take the whole budget.
//!
//! The bookkeeping is per connection (atomics in its [`Activity`]) and a sharded map touched when
//! a connection opens or closes; a request never takes a lock here. Only a newcomer that finds the
//! budget spent looks through the open connections, and its look serves the newcomers after it
//! (`server::idlest`); the server stopping tells each of them.
//!
//! A connection hears both (make room, stop) through its [`Activity`]: two flags and the waker of
//! its task. Waiting for either costs a connection two atomic operations each time it waits for
//! its next request. (With tokio's `Notify` and `watch`, each wait put a waiter into a list under
//! a mutex and took it out again, twice a request: about 1,000 instructions of 34,000.)

use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

use super::idlest::{Idlest, NothingIdle, went_quiet};
use super::shares::{Address, Claim, Group, Shares};
use crate::base::socket::socket_is_quiet;

/// How long a newcomer waits for the connection it displaced to give its place back.
const MAKE_ROOM_WITHIN: Duration = Duration::from_secs(1);

/// How long every answer of a connection may wait on its client's HTTP/2 flow control, with
/// nothing let through, before the connection may give way to a newcomer as an idle one would:
/// the patience a displaced socket gets to take in what it was sent (`connection::linger`). A
/// client that takes its answers at any pace lets a frame through sooner and is never asked.
pub(super) const ANSWERS_STALLED: Duration = Duration::from_secs(5);

pub(super) struct Capacity {
    permits: Arc<Semaphore>,
    open: DashMap<u64, Arc<Activity>>,
    next_id: AtomicU64,
    /// Places held per address and per IPv6 /48, and their connections open.
    shares: Arc<Shares>,
    /// The server is stopping: every connection open, and any admitted from now on, is told.
    stopping: AtomicBool,
    /// The idlest connections the last look found, per group at its share (`None`: among all).
    idlest: Idlest<Option<Group>>,
    /// The last look among all found none idle, and none has gone quiet since.
    nothing_idle: NothingIdle,
}

/// What a newcomer gets: its place in the budget (held for as long as the connection, or a tunnel
/// it becomes, is open) and its entry among the connections that may be asked to make room.
pub(super) struct Admitted {
    pub permit: Place,
    pub entry: Entry,
}

/// A connection's place: in the budget, and in its address's share of it. When the connection
/// was asked to make room, the newcomer that asked gets the place as it is given up, not whoever
/// comes first: otherwise a third newcomer could take it, and the one that made room would be
/// refused after waiting for it.
pub(super) struct Place {
    held: Option<Held>,
    activity: Arc<Activity>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else { return };
        if let Some(newcomer) = self.activity.give_up_place() {
            // A newcomer that gave up waiting has dropped its end: the place is then given back
            // as any other.
            let _ = newcomer.send(held);
        }
    }
}

/// What a place holds: a permit of the budget, and a place in an address's share.
pub(super) struct Held {
    permit: OwnedSemaphorePermit,
    claim: Claim,
}

impl Capacity {
    pub fn new(max_connections: usize, shares: Arc<Shares>) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(max_connections)),
            open: DashMap::new(),
            next_id: AtomicU64::new(0),
            shares,
            stopping: AtomicBool::new(false),
            idlest: Idlest::default(),
            nothing_idle: NothingIdle::default(),
        })
    }

    /// A free place for a new connection from `peer`, if there is one and its shares are not
    /// used up.
    pub fn try_admit(self: &Arc<Self>, peer: IpAddr) -> Option<Admitted> {
        self.with_free_place(self.shares.claim(peer).ok()?).ok()
    }

    /// Admits a connection with `claim` if the budget has a place free; the claim back if not.
    fn with_free_place(self: &Arc<Self>, claim: Claim) -> Result<Admitted, Claim> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Ok(self.admitted(Held { permit, claim })),
            Err(_) => Err(claim),
        }
    }

    /// With no place free (or a share of `peer`'s used up): the place of the connection idle
    /// longest (of the address or /48 at its share, if one is), asked to close for it and handed
    /// over as it closes. `None` at once when every connection that could give way is busy, so
    /// newcomers wait only for connections that are going; `None` too when the one asked does not
    /// go within [`MAKE_ROOM_WITHIN`] (asked just as a request came in, it finishes that first).
    pub async fn make_room(self: &Arc<Self>, peer: IpAddr) -> Option<Admitted> {
        let held = match self.shares.claim(peer) {
            Ok(claim) => {
                let claim = match self.with_free_place(claim) {
                    Ok(admitted) => return Some(admitted),
                    Err(claim) => claim,
                };
                let Some(freed) = self.displace_the_idlest(None) else {
                    // None to ask; a place may have come free meanwhile (a connection that
                    // closed just before it could be asked gives its place back as usual).
                    return self.with_free_place(claim).ok();
                };
                let freed = self.wait_for(freed).await?;
                // The budget's place is the newcomer's; the shares the closed connection held
                // go back (the newcomer has its own claim).
                let Held { permit, claim: theirs } = freed;
                drop(theirs);
                Held { permit, claim }
            }
            Err(full) => {
                // At the /48's share, the newcomer's own address still needs a place (it may
                // be a neighbour's that gives way); at the address's, the place given up is one.
                let mine = match full {
                    Group::Site(_) => Some(self.shares.claim_address(peer).ok()?),
                    Group::Address(_) => None,
                };
                let Some(freed) = self.displace_the_idlest(Some(full)) else {
                    drop(mine);
                    if let Some(admitted) = self.try_admit(peer) {
                        return Some(admitted);
                    }
                    tracing::debug!(%peer, ?full, "every connection of an address or /48 at its share is busy");
                    return None;
                };
                let Held { permit, claim: mut theirs } = self.wait_for(freed).await?;
                match mine {
                    // The /48's place comes from the neighbour; its address's goes back to it.
                    Some(mut mine) => {
                        mine.take_site_of(&mut theirs);
                        drop(theirs);
                        Held { permit, claim: mine }
                    }
                    // The address's own connection: its place in the budget and in the shares.
                    None => Held { permit, claim: theirs },
                }
            }
        };
        Some(self.admitted(held))
    }

    async fn wait_for(&self, freed: oneshot::Receiver<Held>) -> Option<Held> {
        tokio::time::timeout(MAKE_ROOM_WITHIN, freed).await.ok()?.ok()
    }

    fn admitted(self: &Arc<Self>, held: Held) -> Admitted {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new(self.nothing_idle.flag()));
        // Idle from now until its first request is read: a kept "nothing idle" no longer holds.
        went_quiet(&activity.nothing_idle);
        let address = held.claim.address();
        self.open.insert(id, activity.clone());
        if let Some(address) = address {
            self.shares.opened(id, address);
        }
        // After the insert: either `stop_all` finds this connection among the open ones, or it
        // had set the flag before and this sees it (both sequentially consistent).
        if self.stopping.load(Ordering::SeqCst) {
            activity.stop();
        }
        let place = Place { held: Some(held), activity: activity.clone() };
        Admitted { permit: place, entry: Entry { id, address, activity, capacity: self.clone() } }
    }

    /// Asks the connection idle longest (of `group`, or of all), and not yet asked, to close,
    /// and gives back where its place will be handed over. `None` if none is idle. The idlest are
    /// listed by one look for the newcomers after it too (`server::idlest`): a newcomer does not
    /// look through every open connection.
    fn displace_the_idlest(&self, group: Option<Group>) -> Option<oneshot::Receiver<Held>> {
        let now = Instant::now();
        let idle = |id: u64, activity: &Activity| {
            let asked = activity.asked_to_close.load(Ordering::Acquire);
            activity.displaceable_for(now).filter(|_| !asked).map(|for_how_long| (for_how_long, id))
        };
        // Among all: every open connection. Among one group's: only its own, however many
        // other connections are open (so many addresses at their share, each needing a look of
        // its own, cost each newcomer its address's connections, not all).
        if group.is_none() && self.nothing_idle.holds(now) {
            return None;
        }
        let look = || match group {
            None => self
                .nothing_idle
                .look(now, || self.open.iter().filter_map(|entry| idle(*entry.key(), entry.value())).collect()),
            Some(group) => self
                .shares
                .open_in(group)
                .into_iter()
                .filter_map(|id| self.open.get(&id).and_then(|entry| idle(id, &entry)))
                .collect(),
        };
        let (newcomer, freed) = oneshot::channel();
        let mut newcomer = Some(newcomer);
        // Asked again when taken from the list: it may have closed, or have a request in flight,
        // or one waiting in its socket, not read yet (a connection just admitted, most often).
        // The entry's shard lock is let go first: the look into the socket is a system call.
        let ask = |id| {
            let activity = self.open.get(&id).map(|entry| entry.clone());
            activity.is_some_and(|activity| {
                activity.displaceable_for(now).is_some()
                    && !activity.has_bytes_waiting()
                    && activity.ask_to_close(&mut newcomer)
            })
        };
        self.idlest.ask_one(group, now, look, ask).then_some(freed)
    }

    /// Tells every connection, open now or admitted later, that the server is stopping.
    pub fn stop_all(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for entry in &self.open {
            entry.stop();
        }
    }

    /// Connections open and counted (for tests and the log).
    #[cfg(test)]
    fn open_count(&self) -> usize {
        self.open.len()
    }
}

/// A connection's entry among the open ones; dropped when the connection ends (a tunnel it
/// became keeps only its permit: a tunnel is never idle in this sense).
pub(super) struct Entry {
    id: u64,
    address: Option<Address>,
    activity: Arc<Activity>,
    capacity: Arc<Capacity>,
}

impl Entry {
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let capacity = &self.capacity;
        capacity.open.remove(&self.id);
        if let Some(address) = self.address {
            capacity.shares.closed(self.id, address);
        }
    }
}

/// Requests in flight on a connection, and since when it has had none. Per connection: no lock,
/// and nothing shared between connections.
pub(super) struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    served: AtomicUsize,
    /// Microseconds after `opened` when the last request in flight finished (fine enough to tell
    /// apart connections that finished one after the other).
    quiet_since_us: AtomicU64,
    /// Bytes of an answer are still waiting for the client to read them: busy, though no
    /// request is in flight any more (hyper holds the rest of the response).
    write_blocked: AtomicBool,
    /// HTTP/2 answers ready and waiting for their client's flow-control window (a frame handed
    /// to hyper and not yet let through), and since when the client has let nothing through.
    answers_waiting: AtomicUsize,
    waiting_since_us: AtomicU64,
    /// Forms of ours in flight waiting for their client's next bytes (`ClientBody::read_as_form`).
    forms_waiting: AtomicUsize,
    asked_to_close: AtomicBool,
    /// Cut off for not reading (`limits.send_timeout`): its socket is reset when closed, what it
    /// never took dropped.
    cut_off: AtomicBool,
    /// The connection's socket (-1 until it is known), looked into before it is asked to make
    /// room: a request waiting there unread makes it busy, not idle.
    socket: AtomicI32,
    /// Who gets this connection's place when it gives it up. Set under the lock before
    /// `asked_to_close`, so the connection cannot give up its place in between.
    handoff: Mutex<Handoff>,
    stopping: AtomicBool,
    /// Cleared when this connection may have gone quiet ([`NothingIdle`]).
    nothing_idle: Arc<AtomicBool>,
    /// The connection's task, while it waits for a [`Signal`]. A connection is one task, so one
    /// waker is all there is to wake.
    waiting: AtomicWaker,
}

/// Who a connection's place goes to when it gives it up.
enum Handoff {
    /// Nobody asked: back to the budget, for anyone.
    Unasked,
    /// The newcomer that asked this connection to make room.
    To(oneshot::Sender<Held>),
    /// Given up already: asking now would wait for a place that has gone back to the budget.
    GivenUp,
}

/// What a connection can be told from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signal {
    /// The server is stopping: finish what is in flight, take nothing new.
    Stop,
    /// A newcomer needs this connection's place.
    MakeRoom,
}

impl Activity {
    fn new(nothing_idle: Arc<AtomicBool>) -> Self {
        Self {
            nothing_idle,
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            quiet_since_us: AtomicU64::new(0),
            write_blocked: AtomicBool::new(false),
            answers_waiting: AtomicUsize::new(0),
            waiting_since_us: AtomicU64::new(0),
            forms_waiting: AtomicUsize::new(0),
            asked_to_close: AtomicBool::new(false),
            cut_off: AtomicBool::new(false),
            socket: AtomicI32::new(-1),
            handoff: Mutex::new(Handoff::Unasked),
            stopping: AtomicBool::new(false),
            waiting: AtomicWaker::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn for_tests() -> Arc<Self> {
        Arc::new(Self::new(Arc::default()))
    }

    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Nothing in flight and nothing left to send.
    pub fn is_quiet(&self) -> bool {
        self.in_flight() == 0 && !self.write_blocked.load(Ordering::Acquire)
    }

    pub fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    /// Whether a write to the client is waiting for it to read (set by the connection's I/O).
    pub fn set_write_blocked(&self, blocked: bool) {
        // Sequentially consistent, as the look that reads it (`NothingIdle`).
        self.write_blocked.store(blocked, Ordering::SeqCst);
        if !blocked {
            went_quiet(&self.nothing_idle);
        }
    }

    /// How long the connection has had nothing in flight and nothing left to send, or `None`
    /// while it has (a slow reader is cut off by `limits.send_timeout`, never as idle).
    pub fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.in_flight() > 0 || self.write_blocked.load(Ordering::SeqCst) {
            return None;
        }
        let quiet_since = self.opened + Duration::from_micros(self.quiet_since_us.load(Ordering::Acquire));
        Some(now.saturating_duration_since(quiet_since))
    }

    /// How long every request in flight has had its answer ready, waiting for the client to let
    /// it through, with nothing let through meanwhile; `None` while any is still being worked on
    /// (or none is in flight). An HTTP/2 client's flow control holds an answer inside the proxy,
    /// not in the socket, so the socket never blocks and a client that opens no window would
    /// otherwise hold its place for as long as it likes (RFC 9113 §6.9: a receiver may leave a
    /// window closed).
    ///
    /// Forms of ours still arriving count as waiting on the client too: a client could otherwise
    /// keep one always in flight beside the answers it holds back (a new sign-in post every few
    /// seconds, each within its time limit).
    pub fn answers_waiting_for(&self, now: Instant) -> Option<Duration> {
        match self.held_by_client() {
            Some(true) => {
                let since = self.opened + Duration::from_micros(self.waiting_since_us.load(Ordering::Acquire));
                Some(now.saturating_duration_since(since))
            }
            _ => None,
        }
    }

    /// Whether every request in flight waits on the client, and if so whether answers are among
    /// them (`Some(true)`) or only forms still arriving (`Some(false)`).
    fn held_by_client(&self) -> Option<bool> {
        let in_flight = self.in_flight();
        let answers = self.answers_waiting.load(Ordering::SeqCst);
        let forms = self.forms_waiting.load(Ordering::SeqCst);
        let held = in_flight > 0 && answers + forms >= in_flight && !self.write_blocked.load(Ordering::Acquire);
        held.then_some(answers > 0)
    }

    /// How long the connection could give way to a newcomer: idle ([`Activity::idle_for`]); with
    /// every request in flight waiting on its client, answers among them waiting
    /// [`ANSWERS_STALLED`] or longer; or with only forms of ours still arriving, since its last
    /// request ended, as a connection with half a request head is (a form is read whole before
    /// anything is done with it, and a browser sends one at once).
    pub fn displaceable_for(&self, now: Instant) -> Option<Duration> {
        if let Some(idle) = self.idle_for(now) {
            return Some(idle);
        }
        match self.held_by_client()? {
            true => self.answers_waiting_for(now).filter(|waited| *waited >= ANSWERS_STALLED),
            false => {
                let quiet_since = self.opened + Duration::from_micros(self.quiet_since_us.load(Ordering::Acquire));
                Some(now.saturating_duration_since(quiet_since))
            }
        }
    }

    /// A form of ours began or stopped waiting for its client's next bytes.
    pub fn form_waits_for_client(&self, waiting: bool) {
        if waiting {
            self.forms_waiting.fetch_add(1, Ordering::SeqCst);
            // It may give way now: a kept "nothing idle" no longer holds.
            went_quiet(&self.nothing_idle);
        } else {
            self.forms_waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// An answer began waiting for its client to let it through.
    pub fn answer_waits(&self) {
        if self.answers_waiting.fetch_add(1, Ordering::SeqCst) == 0 {
            self.mark_waiting_since_now();
        }
    }

    /// An answer no longer waits for its client (it is being worked on, done, or dropped).
    pub fn answer_stops_waiting(&self) {
        self.answers_waiting.fetch_sub(1, Ordering::SeqCst);
    }

    /// The client let an answer's frame through: what waits has waited from now on.
    pub fn client_took_some(&self) {
        self.mark_waiting_since_now();
    }

    fn mark_waiting_since_now(&self) {
        self.waiting_since_us.store(self.opened.elapsed().as_micros() as u64, Ordering::Release);
    }

    /// The client stopped reading and is cut off (`limits.send_timeout`).
    pub fn cut_off(&self) {
        self.cut_off.store(true, Ordering::Release);
    }

    pub fn was_cut_off(&self) -> bool {
        self.cut_off.load(Ordering::Acquire)
    }

    /// The socket to look into before asking this connection to make room.
    pub fn watch_socket(&self, socket: RawFd) {
        self.socket.store(socket, Ordering::Release);
    }

    /// The connection's socket, once known.
    pub fn socket(&self) -> Option<RawFd> {
        let socket = self.socket.load(Ordering::Acquire);
        (socket >= 0).then_some(socket)
    }

    /// Whether bytes are waiting in the connection's socket, not read yet (or it was closed by
    /// the client, which its task is about to see). A connection just admitted is idle until its
    /// task has read the request it came with; displaced then, it would be closed unanswered.
    /// The entry leaves the open ones just after its socket closes; a look in that instant may
    /// find the number reused by another socket, and at worst spares a connection once.
    fn has_bytes_waiting(&self) -> bool {
        self.socket().is_some_and(|socket| !socket_is_quiet(socket))
    }

    /// Claims this connection for closing, its place to be handed to `newcomer` (taken from it
    /// when claimed); false if someone already had, or the place is already given up (the
    /// connection is ending: its place went back to the budget for anyone).
    fn ask_to_close(&self, newcomer: &mut Option<oneshot::Sender<Held>>) -> bool {
        let mut handoff = self.lock_handoff();
        if self.asked_to_close.load(Ordering::Acquire) || matches!(*handoff, Handoff::GivenUp) {
            return false;
        }
        if let Some(newcomer) = newcomer.take() {
            *handoff = Handoff::To(newcomer);
        }
        self.asked_to_close.store(true, Ordering::Release);
        drop(handoff);
        // The flag stays: a connection not waiting yet sees it at its next look.
        self.waiting.wake();
        true
    }

    #[cfg(test)]
    pub(crate) fn ask_to_close_for_tests(&self) -> bool {
        self.ask_to_close(&mut None)
    }

    /// The place is being given up: whoever asked for it, once; nobody may ask after.
    fn give_up_place(&self) -> Option<oneshot::Sender<Held>> {
        match std::mem::replace(&mut *self.lock_handoff(), Handoff::GivenUp) {
            Handoff::To(newcomer) => Some(newcomer),
            Handoff::Unasked | Handoff::GivenUp => None,
        }
    }

    fn lock_handoff(&self) -> std::sync::MutexGuard<'_, Handoff> {
        // Held only to set or take the sender: nothing in between can panic.
        self.handoff.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.waiting.wake();
    }

    /// What the connection has been told, if anything: the server stopping first.
    pub fn signal(&self) -> Option<Signal> {
        if self.stopping.load(Ordering::Acquire) {
            Some(Signal::Stop)
        } else if self.asked_to_close.load(Ordering::Acquire) {
            Some(Signal::MakeRoom)
        } else {
            None
        }
    }

    /// Completes when the connection is told something ([`Activity::signal`]).
    pub fn signalled(&self) -> impl std::future::Future<Output = Signal> + '_ {
        self.told(Activity::signal)
    }

    /// Completes when a newcomer needs this connection's place.
    pub fn close_requested(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.told(|activity| activity.asked_to_close.load(Ordering::Acquire).then_some(()))
    }

    /// Completes when `look` finds something. The waker is registered before the second look,
    /// so a signal set in between is not missed: its `wake` finds the waker.
    fn told<'a, T>(&'a self, look: impl Fn(&Self) -> Option<T> + 'a) -> impl std::future::Future<Output = T> + 'a {
        std::future::poll_fn(move |cx| {
            if let Some(found) = look(self) {
                return std::task::Poll::Ready(found);
            }
            self.waiting.register(cx.waker());
            match look(self) {
                Some(found) => std::task::Poll::Ready(found),
                None => std::task::Poll::Pending,
            }
        })
    }
}

/// One request in flight, until its response body is sent or dropped.
pub(super) struct InFlight(Arc<Activity>);

impl InFlight {
    pub fn activity(&self) -> &Activity {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        let us = activity.opened.elapsed().as_micros() as u64;
        activity.quiet_since_us.store(us, Ordering::Release);
        // Sequentially consistent, then the flag: see `NothingIdle` (on x86 the same locked
        // instruction as before, and a plain load).
        activity.in_flight.fetch_sub(1, Ordering::SeqCst);
        went_quiet(&activity.nothing_idle);
    }
}

#[cfg(test)]
#[path = "capacity_tests.rs"]
mod tests;
