//! `limits.max_connections`: one budget of client connections for every worker, and what happens
//! when it is spent.
//!
//! A newcomer is not turned away while some connection sits idle: the one idle longest (a
//! keep-alive connection between requests, or a socket that never sent one) is asked to close,
//! and the newcomer takes its place. A connection whose client has taken nothing of its answers
//! for `CLIENT_STALLED` (5 s) counts as idle too (a write to its socket blocked that long, or,
//! over HTTP/2, every answer ready and held back by flow control): the proxy's work for it is
//! done, and it is reset rather than kept for `limits.send_timeout`. Only when every connection
//! is busy (a request in flight, or a tunnel such as a WebSocket) does the newcomer get the 503.
//! So a client that fills the budget with idle connections cannot keep anyone else out; it only
//! cycles its own connections. An idle HTTP/1.1 connection may be closed at any time (RFC 9112
//! §9.5), and clients retry on another.
//!
//! With none of those, a newcomer may still take the place of a connection whose client has taken
//! nothing for a second, if that connection's address holds at least two places more than the
//! newcomer's (`server::crowd`): a client reconnecting faster than the 5 s cannot keep out a
//! lighter one.
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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;

use super::activity::Held;
pub(super) use super::activity::{Activity, InFlight, Signal};
use super::crowd::{Crowd, STALLED_IN_A_CROWD, heavier_than};
use super::idlest::{Idlest, NothingIdle, went_quiet};
use super::pressure::{GaveWay, Pressure, REPORT_EVERY, TurnedAway};
use super::shares::{Address, Claim, Group, Shares};

/// How long a newcomer waits for the connection it displaced to give its place back.
const MAKE_ROOM_WITHIN: Duration = Duration::from_secs(1);

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
    /// Heavy holders' stalled connections, the last look's.
    crowd: Crowd,
    /// `limits.max_connections`.
    max: usize,
    /// Newcomers turned away and connections that gave way, for the operator.
    pressure: Pressure,
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
            crowd: Crowd::default(),
            max: max_connections,
            pressure: Pressure::new(),
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
    /// Either way the operator is told (`server::pressure`).
    pub async fn make_room(self: &Arc<Self>, peer: IpAddr) -> Option<Admitted> {
        match self.room_for(peer).await {
            Ok(admitted) => Some(admitted),
            Err(why) => {
                self.pressure.turned_away(why, self.max);
                None
            }
        }
    }

    async fn room_for(self: &Arc<Self>, peer: IpAddr) -> Result<Admitted, TurnedAway> {
        let held = match self.shares.claim(peer) {
            Ok(claim) => {
                let claim = match self.with_free_place(claim) {
                    Ok(admitted) => return Ok(admitted),
                    Err(claim) => claim,
                };
                let displaced = self
                    .displace_the_idlest(None)
                    .map(|freed| (freed, GaveWay::Idlest))
                    .or_else(|| self.displace_in_a_crowd(&claim).map(|freed| (freed, GaveWay::Crowd)));
                let Some((freed, rule)) = displaced else {
                    // None to ask; a place may have come free meanwhile (a connection that
                    // closed just before it could be asked gives its place back as usual).
                    return self.with_free_place(claim).map_err(|_| TurnedAway::AllBusy);
                };
                self.pressure.gave_way(rule, self.max);
                let freed = self.wait_for(freed).await.ok_or(TurnedAway::NotGivenInTime)?;
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
                    Group::Site(_) => Some(self.shares.claim_address(peer).map_err(|_| TurnedAway::ShareBusy)?),
                    Group::Address(_) => None,
                };
                let Some(freed) = self.displace_the_idlest(Some(full)) else {
                    drop(mine);
                    if let Some(admitted) = self.try_admit(peer) {
                        return Ok(admitted);
                    }
                    tracing::debug!(%peer, ?full, "every connection of an address or /48 at its share is busy");
                    return Err(TurnedAway::ShareBusy);
                };
                self.pressure.gave_way(GaveWay::OwnShare, self.max);
                let Held { permit, claim: mut theirs } =
                    self.wait_for(freed).await.ok_or(TurnedAway::NotGivenInTime)?;
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
        Ok(self.admitted(held))
    }

    /// Places held now (by connections, and tunnels they became).
    pub fn places_held(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// Tells the log, once a minute, what happened under pressure in that minute, if anything
    /// did (`server::pressure`). Runs until the server stops.
    pub async fn report_pressure(self: Arc<Self>) {
        let mut tick = tokio::time::interval_at(Instant::now() + REPORT_EVERY, REPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(report) = self.pressure.take_report(self.places_held(), self.max) {
                report.tell();
            }
        }
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
            activity.is_some_and(|activity| activity.may_give_way(now) && activity.ask_to_close(&mut newcomer))
        };
        self.idlest.ask_one(group, now, look, ask).then_some(freed)
    }

    /// With none to displace by the usual rules: asks a connection of an address holding at
    /// least two places more than the newcomer's, whose client has taken nothing for
    /// [`STALLED_IN_A_CROWD`], to close (`server::crowd`), the heaviest holder's first.
    fn displace_in_a_crowd(&self, claim: &Claim) -> Option<oneshot::Receiver<Held>> {
        let mine = self.shares.held_by_claimant(claim).unwrap_or(1);
        let now = Instant::now();
        let stalled = |activity: &Activity| {
            let asked = activity.asked_to_close.load(Ordering::Acquire);
            activity.client_stalled_for(now).filter(|stalled| !asked && *stalled >= STALLED_IN_A_CROWD)
        };
        let look = || {
            let mut candidates = Vec::new();
            for (held, open) in self.shares.holding_at_least(heavier_than(1)) {
                for id in open {
                    let Some(activity) = self.open.get(&id).map(|entry| entry.clone()) else { continue };
                    candidates.extend(stalled(&activity).map(|for_how_long| (held, for_how_long, id)));
                }
            }
            candidates
        };
        let (newcomer, freed) = oneshot::channel();
        let mut newcomer = Some(newcomer);
        let ask = |id| {
            let activity = self.open.get(&id).map(|entry| entry.clone());
            activity.is_some_and(|activity| stalled(&activity).is_some() && activity.ask_to_close(&mut newcomer))
        };
        self.crowd.ask_one(now, mine, look, ask).then_some(freed)
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

#[cfg(test)]
#[path = "capacity_tests.rs"]
mod tests;
