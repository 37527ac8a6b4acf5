//! `limits.max_connections`: one budget of client connections for every worker, and what happens
//! when it is spent.
//!
//! A newcomer is not turned away while some connection sits idle: the one idle longest (a
//! keep-alive connection between requests, or a socket that never sent one) is asked to close,
//! and the newcomer takes its place. Only when every connection is busy (a request in flight, or
//! a tunnel such as a WebSocket) does the newcomer get the 503. So a client that fills the budget
//! with idle connections cannot keep anyone else out; it only cycles its own connections. An idle
//! HTTP/1.1 connection may be closed at any time (RFC 9112 §9.5), and clients retry on another.
//!
//! One address may hold at most `limits.max_connections_per_address` of the places (an IPv6 /64
//! counts as one address: whoever has one address in it has them all). At its share, a
//! newcomer from that address takes the place of that address's own idlest connection, or gets the
//! 503 when all of them are busy: one client's slow or unfinished requests (login posts dribbled
//! within their time limit, again and again) cannot take the whole budget. `trusted_proxies` are
//! exempt: every client behind a front proxy shares its address, and it does its own limiting.
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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

use super::idlest::Idlest;

/// How long a newcomer waits for the connection it displaced to give its place back.
const MAKE_ROOM_WITHIN: Duration = Duration::from_secs(1);

pub(super) struct Capacity {
    permits: Arc<Semaphore>,
    open: DashMap<u64, (Option<Address>, Arc<Activity>)>,
    next_id: AtomicU64,
    /// Places held per address (exempt addresses are not counted).
    per_address: DashMap<Address, usize>,
    per_address_limit: usize,
    exempt: Vec<ipnet::IpNet>,
    /// The server is stopping: every connection open, and any admitted from now on, is told.
    stopping: AtomicBool,
    /// The idlest connections the last look found, per address (`None`: among all).
    idlest: Idlest<Option<Address>>,
}

/// A client address as limits count it: IPv4 whole, IPv6 by its /64 (RFC 4291 §2.5.4: the
/// interface identifier is the holder's to choose), an IPv4-mapped IPv6 address as the IPv4 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Address(IpAddr);

impl Address {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Self(IpAddr::V6(prefix.into()))
            }
            v4 => Self(v4),
        }
    }
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
        if let Some(newcomer) = self.activity.take_handoff() {
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

/// A place in an address's share (`None`: an exempt address, not counted), given back on drop.
struct Claim {
    address: Option<Address>,
    capacity: Arc<Capacity>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.capacity.unclaim(self.address);
    }
}

impl Capacity {
    pub fn new(max_connections: usize, per_address_limit: usize, exempt: Vec<ipnet::IpNet>) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(max_connections)),
            open: DashMap::new(),
            next_id: AtomicU64::new(0),
            per_address: DashMap::new(),
            per_address_limit,
            exempt,
            stopping: AtomicBool::new(false),
            idlest: Idlest::default(),
        })
    }

    /// A free place for a new connection from `peer`, if there is one and its address has not
    /// used up its share.
    pub fn try_admit(self: &Arc<Self>, peer: IpAddr) -> Option<Admitted> {
        let claim = self.claim_within_share(peer)?;
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(self.admitted(Held { permit, claim }))
    }

    /// With no place free (or `peer`'s share used up): the place of the connection idle longest
    /// (of `peer`'s own, at its share), asked to close for it and handed over as it closes.
    /// `None` at once when every connection that could give way is busy, so newcomers wait only
    /// for connections that are going; `None` too when the one asked does not go within
    /// [`MAKE_ROOM_WITHIN`] (asked just as a request came in, it finishes that first).
    pub async fn make_room(self: &Arc<Self>, peer: IpAddr) -> Option<Admitted> {
        let held = match self.claim_within_share(peer) {
            Some(claim) => {
                if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                    return Some(self.admitted(Held { permit, claim }));
                }
                let freed = self.wait_for(self.displace_the_idlest(None)?).await?;
                // The budget's place is the newcomer's; the share the closed connection held
                // goes back to its address (the newcomer has its own claim).
                let Held { permit, claim: theirs } = freed;
                drop(theirs);
                Held { permit, claim }
            }
            None => {
                let Some(freed) = self.displace_the_idlest(Some(Address::of(peer))) else {
                    tracing::debug!(%peer, "every connection of an address at limits.max_connections_per_address is busy");
                    return None;
                };
                // The address's own connection: its place in the budget and in the share both.
                self.wait_for(freed).await?
            }
        };
        Some(self.admitted(held))
    }

    async fn wait_for(&self, freed: oneshot::Receiver<Held>) -> Option<Held> {
        tokio::time::timeout(MAKE_ROOM_WITHIN, freed).await.ok()?.ok()
    }

    /// A place in `peer`'s share (not counted for an exempt address), or `None` when the share
    /// is used up.
    fn claim_within_share(self: &Arc<Self>, peer: IpAddr) -> Option<Claim> {
        if self.exempt.iter().any(|net| net.contains(&peer.to_canonical())) {
            return Some(Claim { address: None, capacity: self.clone() });
        }
        let address = Address::of(peer);
        let mut held = self.per_address.entry(address).or_insert(0);
        if *held >= self.per_address_limit {
            return None;
        }
        *held += 1;
        Some(Claim { address: Some(address), capacity: self.clone() })
    }

    fn unclaim(&self, address: Option<Address>) {
        if let Some(address) = address {
            self.per_address.alter(&address, |_, held| held.saturating_sub(1));
            self.per_address.remove_if(&address, |_, held| *held == 0);
        }
    }

    fn admitted(self: &Arc<Self>, held: Held) -> Admitted {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new());
        let address = held.claim.address;
        self.open.insert(id, (address, activity.clone()));
        // After the insert: either `stop_all` finds this connection among the open ones, or it
        // had set the flag before and this sees it (both sequentially consistent).
        if self.stopping.load(Ordering::SeqCst) {
            activity.stop();
        }
        let place = Place { held: Some(held), activity: activity.clone() };
        Admitted { permit: place, entry: Entry { id, activity, capacity: self.clone() } }
    }

    /// Asks the connection idle longest (of `address`, or of all), and not yet asked, to close,
    /// and gives back where its place will be handed over. `None` if none is idle. The idlest are
    /// listed by one look for the newcomers after it too (`server::idlest`): a newcomer does not
    /// look through every open connection.
    fn displace_the_idlest(&self, address: Option<Address>) -> Option<oneshot::Receiver<Held>> {
        let now = Instant::now();
        let look = || {
            let mut idle = Vec::new();
            for entry in &self.open {
                let (of, activity) = entry.value();
                if (address.is_none() || *of == address) && !activity.asked_to_close.load(Ordering::Acquire) {
                    idle.extend(activity.idle_for(now).map(|for_how_long| (for_how_long, *entry.key())));
                }
            }
            idle
        };
        let (newcomer, freed) = oneshot::channel();
        let mut newcomer = Some(newcomer);
        // Asked again when taken from the list: it may have closed, or have a request in flight.
        let ask = |id| {
            self.open
                .get(&id)
                .is_some_and(|entry| entry.1.idle_for(now).is_some() && entry.1.ask_to_close(&mut newcomer))
        };
        self.idlest.ask_one(address, now, look, ask).then_some(freed)
    }

    /// Tells every connection, open now or admitted later, that the server is stopping.
    pub fn stop_all(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for entry in &self.open {
            entry.1.stop();
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
        self.capacity.open.remove(&self.id);
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
    asked_to_close: AtomicBool,
    /// The newcomer that asked this connection to close, waiting for its place. Set under the
    /// lock before `asked_to_close`, so the connection cannot give up its place in between.
    handoff: Mutex<Option<oneshot::Sender<Held>>>,
    stopping: AtomicBool,
    /// The connection's task, while it waits for a [`Signal`]. A connection is one task, so one
    /// waker is all there is to wake.
    waiting: AtomicWaker,
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
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            quiet_since_us: AtomicU64::new(0),
            write_blocked: AtomicBool::new(false),
            asked_to_close: AtomicBool::new(false),
            handoff: Mutex::new(None),
            stopping: AtomicBool::new(false),
            waiting: AtomicWaker::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn for_tests() -> Arc<Self> {
        Arc::new(Self::new())
    }

    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
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
        self.write_blocked.store(blocked, Ordering::Release);
    }

    /// How long the connection has had nothing in flight and nothing left to send, or `None`
    /// while it has (a slow reader is cut off by `limits.send_timeout`, never as idle).
    pub fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.in_flight() > 0 || self.write_blocked.load(Ordering::Acquire) {
            return None;
        }
        let quiet_since = self.opened + Duration::from_micros(self.quiet_since_us.load(Ordering::Acquire));
        Some(now.saturating_duration_since(quiet_since))
    }

    /// Claims this connection for closing, its place to be handed to `newcomer` (taken from it
    /// when claimed); false if someone already had.
    fn ask_to_close(&self, newcomer: &mut Option<oneshot::Sender<Held>>) -> bool {
        let mut handoff = self.lock_handoff();
        if self.asked_to_close.load(Ordering::Acquire) {
            return false;
        }
        *handoff = newcomer.take();
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

    /// Whoever asked this connection to make room, once (when it gives up its place).
    fn take_handoff(&self) -> Option<oneshot::Sender<Held>> {
        self.lock_handoff().take()
    }

    fn lock_handoff(&self) -> std::sync::MutexGuard<'_, Option<oneshot::Sender<Held>>> {
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

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        let us = activity.opened.elapsed().as_micros() as u64;
        activity.quiet_since_us.store(us, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[tokio::test]
    async fn stopping_reaches_every_connection_waiting_or_not_and_any_admitted_after() {
        let capacity = Capacity::new(4, 4, vec![]);
        let waiting = capacity.try_admit(CLIENT).unwrap();
        let busy = capacity.try_admit(CLIENT).unwrap();
        let _request = busy.entry.activity().begin();
        let activity = waiting.entry.activity().clone();
        let heard = tokio::spawn(async move { activity.signalled().await });
        tokio::task::yield_now().await;
        assert!(!heard.is_finished(), "nothing said yet");
        assert_eq!(waiting.entry.activity().signal(), None);

        capacity.stop_all();
        let heard = tokio::time::timeout(Duration::from_secs(5), heard).await.expect("woken").unwrap();
        assert_eq!(heard, Signal::Stop, "the waiting connection is woken");
        assert_eq!(busy.entry.activity().signal(), Some(Signal::Stop), "a busy one sees it at its next look");
        let late = capacity.try_admit(CLIENT).unwrap();
        assert_eq!(late.entry.activity().signal(), Some(Signal::Stop), "one admitted meanwhile is told too");
        // Stopping outranks making room, and making room is heard by itself.
        assert!(late.entry.activity().ask_to_close(&mut None));
        assert_eq!(late.entry.activity().signal(), Some(Signal::Stop));
        let room = Capacity::new(1, 1, vec![]).try_admit(CLIENT).unwrap();
        assert!(
            room.entry.activity().ask_to_close(&mut None) && !room.entry.activity().ask_to_close(&mut None),
            "claimed once"
        );
        assert_eq!(room.entry.activity().signal(), Some(Signal::MakeRoom));
        tokio::time::timeout(Duration::from_secs(5), room.entry.activity().close_requested()).await.expect("at once");
    }

    #[tokio::test(start_paused = true)]
    async fn the_connection_idle_longest_makes_room_and_busy_ones_never_do() {
        let capacity = Capacity::new(3, 3, vec![]);
        let oldest = capacity.make_room(CLIENT).await.unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        let busy = capacity.make_room(CLIENT).await.unwrap();
        let _request = busy.entry.activity().begin();
        let recent = capacity.make_room(CLIENT).await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(capacity.open_count(), 3);

        // Full: the newcomer waits for the idlest to go, and only the idlest is asked.
        let waiting = tokio::spawn({
            let capacity = capacity.clone();
            async move { capacity.make_room(CLIENT).await }
        });
        tokio::time::timeout(Duration::from_millis(100), oldest.entry.activity().close_requested())
            .await
            .expect("the connection idle longest was asked to close");
        assert!(!busy.entry.activity().asked_to_close.load(Ordering::Acquire), "never one with a request in flight");
        assert!(!recent.entry.activity().asked_to_close.load(Ordering::Acquire), "nor a younger idle one");
        drop(oldest);
        let _newcomer = waiting.await.unwrap().expect("its place went to the newcomer");

        // The next newcomer displaces the recent idle one; with only busy connections left, none.
        let next = capacity.make_room(CLIENT);
        let (admitted, ()) = tokio::join!(next, async {
            recent.entry.activity().close_requested().await;
            drop(recent);
        });
        assert!(admitted.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_connection_busy_a_newcomer_is_refused() {
        let capacity = Capacity::new(2, 2, vec![]);
        let first = capacity.make_room(CLIENT).await.unwrap();
        let second = capacity.make_room(CLIENT).await.unwrap();
        let _a = first.entry.activity().begin();
        let _b = second.entry.activity().begin();
        assert!(capacity.make_room(CLIENT).await.is_none());
        assert_eq!(capacity.open_count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn one_address_holds_only_its_share_and_cycles_its_own_idle_connections() {
        let capacity = Capacity::new(10, 2, vec!["10.0.0.0/8".parse().unwrap()]);
        let first = capacity.make_room(CLIENT).await.unwrap();
        let first_busy = first.entry.activity().begin();
        tokio::time::advance(Duration::from_secs(1)).await;
        let second = capacity.make_room(CLIENT).await.unwrap();
        let second_busy = second.entry.activity().begin();
        // Both busy: the third from the same address is refused, though the budget has room.
        assert!(capacity.try_admit(CLIENT).is_none());
        assert!(capacity.make_room(CLIENT).await.is_none());
        // Another address, and an exempt front proxy, are not held back by it.
        let elsewhere: IpAddr = "198.51.100.7".parse().unwrap();
        let other = capacity.try_admit(elsewhere).unwrap();
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let _behind_the_proxy: Vec<_> = (0..5).map(|_| capacity.try_admit(proxy).unwrap()).collect();
        // An IPv6 client is one address across its /64.
        let six = |last: u16| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last));
        let _v6 = (capacity.try_admit(six(1)).unwrap(), capacity.try_admit(six(2)).unwrap());
        assert!(capacity.try_admit(six(3)).is_none());
        assert!(capacity.make_room(six(3)).await.is_none());

        // With one of its own idle, the address's newcomer takes that one's place.
        drop(second_busy);
        // The budget is spent too (10 places held): the newcomer waits for that one to go.
        let (newcomer, ()) = tokio::join!(capacity.make_room(CLIENT), async {
            second.entry.activity().close_requested().await;
            drop(second);
        });
        assert!(newcomer.is_some(), "its own idle connection gave way");
        assert!(!first.entry.activity().asked_to_close.load(Ordering::Acquire), "never its busy one");
        assert!(!other.entry.activity().asked_to_close.load(Ordering::Acquire), "nor another address's");
        drop((newcomer, first_busy, first));
        assert!(!capacity.per_address.contains_key(&Address::of(CLIENT)), "counts go when the places do");
    }

    #[tokio::test(start_paused = true)]
    async fn the_place_made_goes_to_the_newcomer_that_asked_not_to_whoever_comes_first() {
        let other: IpAddr = "198.51.100.7".parse().unwrap();
        let third: IpAddr = "203.0.113.9".parse().unwrap();
        // At the address's share (one place each), and with the budget spent (two places).
        for (budget, share, newcomer_from) in [(1, 1, CLIENT), (1, 5, other)] {
            let capacity = Capacity::new(budget, share, vec![]);
            let idle = capacity.make_room(CLIENT).await.unwrap();
            let newcomer = tokio::spawn({
                let capacity = capacity.clone();
                async move { capacity.make_room(newcomer_from).await }
            });
            idle.entry.activity().close_requested().await;
            drop(idle);
            // Someone else arrives the instant the place is given up: it is already taken.
            assert!(capacity.try_admit(CLIENT).is_none() && capacity.try_admit(third).is_none());
            let admitted = newcomer.await.unwrap().expect("the newcomer that made room has it");
            assert_eq!(capacity.open_count(), 1);
            let held_by = |ip| capacity.per_address.get(&Address::of(ip)).map(|held| *held);
            assert_eq!((held_by(newcomer_from), held_by(third)), (Some(1), None), "{budget}/{share}");
            if newcomer_from != CLIENT {
                assert_eq!(held_by(CLIENT), None, "the closed connection's share went back to its address");
            }
            drop(admitted);
            assert!(capacity.try_admit(third).is_some(), "and it is given back when that one closes");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_place_made_for_a_newcomer_that_gave_up_is_free_for_anyone() {
        let capacity = Capacity::new(1, 1, vec![]);
        let idle = capacity.make_room(CLIENT).await.unwrap();
        let newcomer = tokio::spawn({
            let capacity = capacity.clone();
            async move { capacity.make_room(CLIENT).await }
        });
        // Asked, but it finishes something first, past the newcomer's patience.
        idle.entry.activity().close_requested().await;
        tokio::time::advance(MAKE_ROOM_WITHIN + Duration::from_millis(1)).await;
        assert!(newcomer.await.unwrap().is_none());
        drop(idle);
        assert!(capacity.try_admit(CLIENT).is_some(), "given back, not lost");
    }
}
