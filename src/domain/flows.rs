//! Flows in progress: what a visitor's next page needs from the last one (a secret being set up,
//! codes to show once, a security-key ceremony), kept for minutes.
//!
//! One process keeps them in memory. Replicas sharing a store keep them there, sealed (they hold
//! secrets) and with an expiry, so a flow started on one replica finishes on any other; every
//! change is a compare-and-swap, so a ceremony taken by one request cannot be taken by another.
//! Callers see bytes (they encode their own state) and say how long a flow may last.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use zeroize::Zeroizing;

use crate::domain::factors::sealing::Sealer;
use crate::store::{Space, Store, StoreError, update_expiring};

pub struct Flows {
    backend: Backend,
}

enum Backend {
    Memory(DashMap<String, (Zeroizing<Vec<u8>>, Instant)>),
    Shared { store: Arc<dyn Store>, sealer: Sealer },
}

impl Flows {
    /// In the store if other processes share it, else in memory.
    pub fn for_store(store: &Arc<dyn Store>, sealer: &Sealer) -> Self {
        let backend = match store.shared() {
            Some(_) => Backend::Shared { store: store.clone(), sealer: sealer.clone() },
            None => Backend::Memory(DashMap::new()),
        };
        Self { backend }
    }

    pub fn in_memory() -> Self {
        Self { backend: Backend::Memory(DashMap::new()) }
    }

    /// Decides the flow state at `key` from the current one (`None`: none, or expired):
    /// `change` returns the new state (`None`: the flow ends) and what to give back. A new state
    /// lasts `lasts` from now.
    pub async fn update<T>(
        &self,
        key: &str,
        lasts: Duration,
        mut change: impl FnMut(Option<&[u8]>) -> (Option<Vec<u8>>, T),
    ) -> Result<T, StoreError> {
        match &self.backend {
            Backend::Memory(map) => {
                let now = Instant::now();
                // The entry lock makes the read and the write one step, like the store's swap.
                let mut slot = map.entry(key.to_string()).or_insert_with(|| (Zeroizing::new(Vec::new()), now));
                let current = (slot.1 > now).then(|| slot.0.as_slice());
                let (new, outcome) = change(current);
                match new {
                    // Only a change is kept, and only a change extends the flow's life: reading
                    // a flow must not keep it alive.
                    Some(bytes) if current == Some(bytes.as_slice()) => {}
                    Some(bytes) => *slot = (Zeroizing::new(bytes), now + lasts),
                    None => {
                        drop(slot);
                        map.remove(key);
                    }
                }
                Ok(outcome)
            }
            Backend::Shared { store, sealer } => {
                let sealed = |bytes: Vec<u8>| {
                    let bytes = Zeroizing::new(bytes);
                    sealer.seal(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
                };
                update_expiring(&**store, Space::Flows, key.as_bytes(), Some(lasts), |current| {
                    let opened = current.map(|c| sealer.open(c)).transpose();
                    // A record that does not open (another key, tampered) is no flow at all.
                    let opened = opened.unwrap_or(None);
                    let opened = opened.as_ref().map(|s| s.expose());
                    let (new, outcome) = change(opened);
                    if new.is_some() && new.as_deref() == opened {
                        // Unchanged: not written, so its expiry stays (a read does not extend it).
                        return Ok((current.map(<[u8]>::to_vec), outcome));
                    }
                    Ok::<_, StoreError>((new.map(sealed).transpose()?, outcome))
                })
                .await
            }
        }
    }

    /// Ends a flow, if there is one.
    pub async fn end(&self, key: &str) -> Result<(), StoreError> {
        self.update(key, Duration::ZERO, |_| (None, ())).await
    }

    /// How many live flows whose key starts with `prefix` this process keeps in memory, for
    /// callers that bound what strangers can make it hold. `None` with a shared store: that
    /// expires its own records, and counting them would mean scanning the server. A scan of the
    /// map: for rare requests (asking for a sign-in link), never the hot path.
    pub fn count_in_memory(&self, prefix: &str) -> Option<usize> {
        match &self.backend {
            Backend::Memory(map) => {
                let now = Instant::now();
                Some(map.iter().filter(|entry| entry.key().starts_with(prefix) && entry.value().1 > now).count())
            }
            Backend::Shared { .. } => None,
        }
    }

    /// Forgets flows in memory that ran out (a shared store expires its own).
    pub fn sweep(&self) {
        if let Backend::Memory(map) = &self.backend {
            let now = Instant::now();
            map.retain(|_, (_, until)| *until > now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::secret::Secret;
    use crate::store::memory::MemoryStore;

    async fn exercise(flows: &Flows) {
        let put =
            flows.update("k", Duration::from_secs(60), |current| (Some(b"one".to_vec()), current.is_none())).await;
        assert!(put.unwrap(), "nothing before");
        let taken = flows.update("k", Duration::from_secs(60), |current| (None, current.map(<[u8]>::to_vec))).await;
        assert_eq!(taken.unwrap().as_deref(), Some(&b"one"[..]));
        let again = flows.update("k", Duration::from_secs(60), |current| (None, current.map(<[u8]>::to_vec))).await;
        assert_eq!(again.unwrap(), None, "taken once");
    }

    #[tokio::test]
    async fn a_flow_is_taken_once_in_memory_and_in_a_shared_store() {
        let sealer = Sealer::new(&Secret::new(b"k".repeat(64)));
        exercise(&Flows::in_memory()).await;
        let store: Arc<dyn Store> = Arc::new(MemoryStore::shared());
        let flows = Flows::for_store(&store, &sealer);
        exercise(&flows).await;
        // Sealed in the store: the bytes are not there in the clear.
        flows.update("s", Duration::from_secs(60), |_| (Some(b"totp secret".to_vec()), ())).await.unwrap();
        let stored = store.get(Space::Flows, b"s").await.unwrap().unwrap();
        assert!(!stored.windows(11).any(|w| w == b"totp secret"));
        // Another install's key opens nothing.
        let other = Flows::for_store(&store, &Sealer::new(&Secret::new(b"j".repeat(64))));
        let seen = other.update("s", Duration::from_secs(60), |current| (None, current.is_some())).await.unwrap();
        assert!(!seen);
    }

    /// Reading a flow writes nothing: it does not extend the flow's life (a reader could keep a
    /// flow alive for ever) nor contend with the writes of others.
    #[tokio::test]
    async fn reading_a_flow_writes_nothing() {
        let sealer = Sealer::new(&Secret::new(b"k".repeat(64)));
        let store: Arc<dyn Store> = Arc::new(MemoryStore::shared());
        let flows = Flows::for_store(&store, &sealer);
        flows.update("k", Duration::from_secs(60), |_| (Some(b"state".to_vec()), ())).await.unwrap();
        let before = store.get(Space::Flows, b"k").await.unwrap();
        let read = flows.update("k", Duration::from_secs(60), |current| (current.map(<[u8]>::to_vec), ()));
        read.await.unwrap();
        assert_eq!(store.get(Space::Flows, b"k").await.unwrap(), before, "not sealed again, not written");
        let memory = Flows::in_memory();
        memory.update("k", Duration::ZERO, |_| (Some(b"state".to_vec()), ())).await.unwrap();
        let kept =
            memory.update("k", Duration::from_secs(60), |current| (current.map(<[u8]>::to_vec), current.is_some()));
        assert!(!kept.await.unwrap(), "a read did not revive it");
    }

    #[tokio::test]
    async fn a_flow_in_memory_runs_out() {
        let flows = Flows::in_memory();
        flows.update("k", Duration::ZERO, |_| (Some(b"x".to_vec()), ())).await.unwrap();
        let seen =
            flows.update("k", Duration::from_secs(1), |current| (current.map(<[u8]>::to_vec), current.is_some()));
        assert!(!seen.await.unwrap(), "expired at once");
        flows.sweep();
    }

    #[tokio::test]
    async fn flows_in_memory_are_counted_by_prefix_and_a_shared_store_is_not() {
        let flows = Flows::in_memory();
        for key in ["link:1", "link:2", "link-account:a", "other"] {
            flows.update(key, Duration::from_secs(60), |_| (Some(b"x".to_vec()), ())).await.unwrap();
        }
        flows.update("link:3", Duration::ZERO, |_| (Some(b"x".to_vec()), ())).await.unwrap();
        assert_eq!(flows.count_in_memory("link:"), Some(2), "live ones, of that prefix only");
        let store: Arc<dyn Store> = Arc::new(MemoryStore::shared());
        let shared = Flows::for_store(&store, &Sealer::new(&Secret::new(b"k".repeat(64))));
        assert_eq!(shared.count_in_memory("link:"), None);
    }
}
