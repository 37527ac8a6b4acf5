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
//! The bookkeeping is per connection (atomics in its [`Activity`]) and a sharded map touched when
//! a connection opens or closes; a request never takes a lock here. Only a newcomer that finds the
//! budget spent looks through the open connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// How long a newcomer waits for the connection it displaced to give its place back.
const MAKE_ROOM_WITHIN: Duration = Duration::from_secs(1);

pub(super) struct Capacity {
    permits: Arc<Semaphore>,
    open: DashMap<u64, Arc<Activity>>,
    next_id: AtomicU64,
}

/// What a newcomer gets: its place in the budget (held for as long as the connection, or a tunnel
/// it becomes, is open) and its entry among the connections that may be asked to make room.
pub(super) struct Admitted {
    pub permit: OwnedSemaphorePermit,
    pub entry: Entry,
}

impl Capacity {
    pub fn new(max_connections: usize) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(max_connections)),
            open: DashMap::new(),
            next_id: AtomicU64::new(0),
        })
    }

    /// A free place for a new connection, if there is one.
    pub fn try_admit(self: &Arc<Self>) -> Option<Admitted> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(self.admitted(permit))
    }

    /// With no place free: the place of the connection idle longest, asked to close for it.
    /// `None` at once when every connection is busy, so newcomers wait only for connections
    /// that are going.
    pub async fn make_room(self: &Arc<Self>) -> Option<Admitted> {
        if let Some(admitted) = self.try_admit() {
            return Some(admitted);
        }
        self.displace_the_idlest()?;
        // Its place comes back when it has closed (another newcomer may be quicker).
        let permit = tokio::time::timeout(MAKE_ROOM_WITHIN, self.permits.clone().acquire_owned()).await.ok()?.ok()?;
        Some(self.admitted(permit))
    }

    fn admitted(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Admitted {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new());
        self.open.insert(id, activity.clone());
        Admitted { permit, entry: Entry { id, activity, capacity: self.clone() } }
    }

    /// Asks the connection idle longest, and not yet asked, to close. `None` if none is idle.
    fn displace_the_idlest(&self) -> Option<()> {
        let now = Instant::now();
        // A few tries: another newcomer may claim the same connection between the look and the ask.
        for _ in 0..4 {
            let idlest = self
                .open
                .iter()
                .filter(|entry| !entry.asked_to_close.load(Ordering::Acquire))
                .filter_map(|entry| entry.idle_for(now).map(|idle| (idle, entry.value().clone())))
                .max_by_key(|(idle, _)| *idle)?;
            if idlest.1.ask_to_close() {
                return Some(());
            }
        }
        None
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
    close: Notify,
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
            close: Notify::new(),
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

    /// Claims this connection for closing; false if someone already had.
    fn ask_to_close(&self) -> bool {
        let claimed = !self.asked_to_close.swap(true, Ordering::AcqRel);
        if claimed {
            // Kept if nobody waits yet: the connection sees it at its next look.
            self.close.notify_one();
        }
        claimed
    }

    /// Completes when a newcomer needs this connection's place.
    pub async fn close_requested(&self) {
        self.close.notified().await
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

    #[tokio::test(start_paused = true)]
    async fn the_connection_idle_longest_makes_room_and_busy_ones_never_do() {
        let capacity = Capacity::new(3);
        let oldest = capacity.make_room().await.unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        let busy = capacity.make_room().await.unwrap();
        let _request = busy.entry.activity().begin();
        let recent = capacity.make_room().await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(capacity.open_count(), 3);

        // Full: the newcomer waits for the idlest to go, and only the idlest is asked.
        let waiting = tokio::spawn({
            let capacity = capacity.clone();
            async move { capacity.make_room().await }
        });
        tokio::time::timeout(Duration::from_millis(100), oldest.entry.activity().close_requested())
            .await
            .expect("the connection idle longest was asked to close");
        assert!(!busy.entry.activity().asked_to_close.load(Ordering::Acquire), "never one with a request in flight");
        assert!(!recent.entry.activity().asked_to_close.load(Ordering::Acquire), "nor a younger idle one");
        drop(oldest);
        let _newcomer = waiting.await.unwrap().expect("its place went to the newcomer");

        // The next newcomer displaces the recent idle one; with only busy connections left, none.
        let next = capacity.make_room();
        let (admitted, ()) = tokio::join!(next, async {
            recent.entry.activity().close_requested().await;
            drop(recent);
        });
        assert!(admitted.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_connection_busy_a_newcomer_is_refused() {
        let capacity = Capacity::new(2);
        let first = capacity.make_room().await.unwrap();
        let second = capacity.make_room().await.unwrap();
        let _a = first.entry.activity().begin();
        let _b = second.entry.activity().begin();
        assert!(capacity.make_room().await.is_none());
        assert_eq!(capacity.open_count(), 2);
    }
}
