//! What a process needs to know about a store others write too: what they changed, and whether
//! the store can be reached (so full sessions in memory can go on for a short grace, then stop).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::keyspace::Space;

/// A change another process made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This record was written or deleted: read it again.
    Record { space: Space, key: Vec<u8> },
    /// Changes may have been missed (the connection was lost): read everything again.
    Resync,
}

/// Kept by a shared store, read by the services that cache its records.
pub struct Shared {
    changes: broadcast::Sender<Change>,
    /// Milliseconds since `epoch` when the store was found unreachable; 0 while it is reachable.
    down_since: AtomicU64,
    epoch: Instant,
    offline_grace: Duration,
    /// Whether this process is subscribed to the others' changes right now.
    subscribed: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn new(offline_grace: Duration) -> Self {
        // A burst of changes larger than this makes a slow listener resync everything instead.
        let (changes, _) = broadcast::channel(4096);
        Self {
            changes,
            down_since: AtomicU64::new(0),
            epoch: Instant::now(),
            offline_grace,
            subscribed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Other processes' changes, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    pub(super) fn announce(&self, change: Change) {
        // Nobody listening (the offline CLI) is fine.
        let _ = self.changes.send(change);
    }

    /// Whether the store answers (and this process hears the others' changes).
    pub fn reachable(&self) -> bool {
        self.down_since.load(Ordering::Relaxed) == 0
    }

    /// Whether sessions held in memory may still be served: the store is reachable, or has been
    /// unreachable for less than `offline_grace`. After that they may have been revoked by
    /// another replica without this one hearing of it, so the proxy refuses (fail closed).
    pub fn serving(&self) -> bool {
        match self.down_since.load(Ordering::Relaxed) {
            0 => true,
            since => {
                let down_for = self.epoch.elapsed().saturating_sub(Duration::from_millis(since));
                down_for < self.offline_grace
            }
        }
    }

    pub(super) fn mark_down(&self) {
        // `max(1)`: 0 means reachable.
        let now = (self.epoch.elapsed().as_millis() as u64).max(1);
        if self.down_since.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            tracing::error!(target: "portcullis::store", "the shared store cannot be reached; sessions in memory are served for store.offline_grace, sign-ins are refused");
        }
    }

    pub(super) fn mark_up(&self) {
        if self.down_since.swap(0, Ordering::Relaxed) != 0 {
            tracing::warn!(target: "portcullis::store", "the shared store can be reached again");
        }
    }

    pub(super) fn set_subscribed(&self, subscribed: bool) {
        self.subscribed.store(subscribed, Ordering::Relaxed);
    }

    /// The store answered again. If the subscription outlived the silence (a stalled server, a
    /// slow network: the connection never broke), no change message was lost, since the server
    /// kept them for us; everything is read again all the same, in case one was, and the store
    /// counts as reachable. Without a subscription it stays unreachable until the subscriber is
    /// back (and resyncs).
    pub(super) fn answered(&self) {
        if self.down_since.load(Ordering::Relaxed) != 0 && self.subscribed.load(Ordering::Relaxed) {
            self.announce(Change::Resync);
            self.mark_up();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_served_for_the_grace_then_refused() {
        let shared = Shared::new(Duration::from_millis(50));
        assert!(shared.reachable() && shared.serving());
        shared.mark_down();
        assert!(!shared.reachable());
        assert!(shared.serving(), "within the grace");
        let deadline = Instant::now() + Duration::from_secs(5);
        while shared.serving() && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(!shared.serving(), "past the grace: closed");
        shared.mark_up();
        assert!(shared.serving());
    }

    #[test]
    fn no_grace_means_closed_at_once() {
        let shared = Shared::new(Duration::ZERO);
        shared.mark_down();
        assert!(!shared.serving());
    }
}
