//! A connection's activity as the budget of places sees it (`server::capacity`): its requests in
//! flight and since when it has had none, what its requests wait on from its client, and what it
//! has been told (make room, stop).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;

use super::idlest::went_quiet;
use super::shares::Claim;
use crate::base::socket::socket_is_quiet;

/// What a place holds: a permit of the budget, and a place in an address's share. Handed from a
/// connection that makes room to the newcomer that asked for it.
pub(super) struct Held {
    pub(super) permit: OwnedSemaphorePermit,
    pub(super) claim: Claim,
}

/// How long a connection's client may take nothing of its answers (every one held back by its
/// HTTP/2 flow control, or a write to its socket blocked) before the connection may give way to
/// a newcomer as an idle one would: the patience a displaced socket gets to take in what it was
/// sent (`connection::linger`). A client that takes its answers at any pace takes something
/// sooner and is never asked; one reading slower than its receive buffer drains (a window
/// reopened only once half of it is free, RFC 9293 §3.8.6.2.2) can go about that long at
/// 20 KB/s, and is asked only when every place is taken.
pub(super) const CLIENT_STALLED: Duration = Duration::from_secs(5);

/// How long a connection's client may take nothing of its answers before the connection gives
/// way to a newcomer from an address holding fewer places than its own by two or more
/// (`server::crowd`): a client reconnecting faster than [`CLIENT_STALLED`] lets its connections
/// age otherwise kept every place young. Long enough that a client taking its answers at any
/// pace (a write blocked while the kernel's buffers drain, a window reopened) has taken some.
pub(super) const STALLED_IN_A_CROWD: Duration = Duration::from_secs(1);

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
    /// Microseconds after `opened` when the write now blocked began to wait.
    blocked_since_us: AtomicU64,
    /// HTTP/2 answers ready and waiting for their client's flow-control window (a frame handed
    /// to hyper and not yet let through), and since when the client has let nothing through.
    answers_waiting: AtomicUsize,
    waiting_since_us: AtomicU64,
    /// Forms of ours in flight waiting for their client's next bytes (`ClientBody::read_as_form`).
    forms_waiting: AtomicUsize,
    pub(super) asked_to_close: AtomicBool,
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
    pub(super) nothing_idle: Arc<AtomicBool>,
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
    pub(super) fn new(nothing_idle: Arc<AtomicBool>) -> Self {
        Self {
            nothing_idle,
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            quiet_since_us: AtomicU64::new(0),
            write_blocked: AtomicBool::new(false),
            blocked_since_us: AtomicU64::new(0),
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
        if blocked {
            self.mark_now(&self.blocked_since_us);
        }
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
        let quiet_since = self.marked(&self.quiet_since_us);
        Some(now.saturating_duration_since(quiet_since))
    }

    /// How long a write to the client has been blocked, waiting for it to read; `None` while
    /// nothing is.
    pub fn write_stalled_for(&self, now: Instant) -> Option<Duration> {
        if !self.write_blocked.load(Ordering::SeqCst) {
            return None;
        }
        let since = self.marked(&self.blocked_since_us);
        Some(now.saturating_duration_since(since))
    }

    /// How long the client has taken nothing of its answers: a write to it blocked, or every
    /// request in flight waiting on it with answers among them held back by HTTP/2 flow control.
    pub fn client_stalled_for(&self, now: Instant) -> Option<Duration> {
        self.write_stalled_for(now).or_else(|| self.answers_waiting_for(now))
    }

    /// Whether the connection, asked to make room, ends at once rather than finishing what is in
    /// flight: it was asked as it may be ([`Activity::displaceable_for`], or stalled in a crowd,
    /// [`STALLED_IN_A_CROWD`]), and what is in flight waits on its client, who takes nothing.
    pub fn gives_way_at_once(&self, now: Instant) -> bool {
        self.displaceable_for(now).is_some() || self.client_stalled_for(now).is_some_and(|s| s >= STALLED_IN_A_CROWD)
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
                let since = self.marked(&self.waiting_since_us);
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
    /// a write to its socket blocked [`CLIENT_STALLED`] or longer (a client that asked for
    /// answers, pipelined, and reads none of them: otherwise it held its place for all of
    /// `limits.send_timeout`, and a few new connections a second kept every place); with every
    /// request in flight waiting on its client, answers among them waiting [`CLIENT_STALLED`] or
    /// longer; or with only forms of ours still arriving, since its last request ended, as a
    /// connection with half a request head is (a form is read whole before anything is done with
    /// it, and a browser sends one at once).
    pub fn displaceable_for(&self, now: Instant) -> Option<Duration> {
        if let Some(idle) = self.idle_for(now) {
            return Some(idle);
        }
        if let Some(stalled) = self.write_stalled_for(now) {
            return (stalled >= CLIENT_STALLED).then_some(stalled);
        }
        match self.held_by_client()? {
            true => self.answers_waiting_for(now).filter(|waited| *waited >= CLIENT_STALLED),
            false => {
                let quiet_since = self.marked(&self.quiet_since_us);
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
        self.mark_now(&self.waiting_since_us);
    }

    /// Records now in `at`, one of the moments kept as microseconds after `opened` (an atomic,
    /// where an `Instant` would need a lock).
    fn mark_now(&self, at: &AtomicU64) {
        at.store(self.opened.elapsed().as_micros() as u64, Ordering::Release);
    }

    /// The moment kept in `at` ([`Activity::mark_now`]).
    fn marked(&self, at: &AtomicU64) -> Instant {
        self.opened + Duration::from_micros(at.load(Ordering::Acquire))
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

    /// Whether the connection may be asked to give way to a newcomer now: displaceable
    /// ([`Activity::displaceable_for`]), and, unless its client has stopped reading, with no
    /// request waiting in its socket unread. A client that stopped reading with requests
    /// pipelined behind (the bytes of one unread) is not spared for them: it will read none of
    /// their answers either.
    pub(super) fn may_give_way(&self, now: Instant) -> bool {
        match self.displaceable_for(now) {
            None => false,
            Some(_) if self.write_blocked.load(Ordering::SeqCst) => true,
            Some(_) => !self.has_bytes_waiting(),
        }
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
    pub(super) fn ask_to_close(&self, newcomer: &mut Option<oneshot::Sender<Held>>) -> bool {
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
    pub(super) fn give_up_place(&self) -> Option<oneshot::Sender<Held>> {
        match std::mem::replace(&mut *self.lock_handoff(), Handoff::GivenUp) {
            Handoff::To(newcomer) => Some(newcomer),
            Handoff::Unasked | Handoff::GivenUp => None,
        }
    }

    fn lock_handoff(&self) -> std::sync::MutexGuard<'_, Handoff> {
        // Held only to set or take the sender: nothing in between can panic.
        self.handoff.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.waiting.wake();
    }

    /// Whether the connection has been asked to make room, registering the task to be woken
    /// when it is: for a write that waits on its client, which then waits no longer.
    pub fn poll_asked_to_make_room(&self, cx: &mut std::task::Context<'_>) -> bool {
        let asked = || self.asked_to_close.load(Ordering::Acquire);
        if asked() {
            return true;
        }
        self.waiting.register(cx.waker());
        asked()
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
        activity.mark_now(&activity.quiet_since_us);
        // Sequentially consistent, then the flag: see `NothingIdle` (on x86 the same locked
        // instruction as before, and a plain load).
        activity.in_flight.fetch_sub(1, Ordering::SeqCst);
        went_quiet(&activity.nothing_idle);
    }
}
