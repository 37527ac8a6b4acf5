//! A store that forgets everything on exit, for unit tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::{Shared, Space, Store, StoreError, StoreFuture, Write};

/// One keyspace: keys to values, in key order (as sled keeps them).
type Keyspace = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Default)]
pub struct MemoryStore {
    spaces: Mutex<HashMap<Space, Keyspace>>,
    /// Set by [`MemoryStore::shared`]: acts as a store other processes write too (no messages
    /// are sent; tests call `refresh` themselves).
    shared: Option<Shared>,
}

impl MemoryStore {
    /// A store that says it is shared, for testing what replicas do.
    pub fn shared() -> Self {
        Self { spaces: Mutex::default(), shared: Some(Shared::new(std::time::Duration::from_secs(30))) }
    }
}

impl Store for MemoryStore {
    fn apply(&self, writes: Vec<Write>) -> StoreFuture<'_, ()> {
        let mut spaces = self.spaces.lock().unwrap_or_else(|p| p.into_inner());
        for write in writes {
            match write {
                Write::Put { space, key, value } => {
                    spaces.entry(space).or_default().insert(key, value);
                }
                Write::Delete { space, key } => {
                    spaces.entry(space).or_default().remove(&key);
                }
            }
        }
        Box::pin(std::future::ready(Ok::<_, StoreError>(())))
    }

    fn scan(&self, space: Space) -> StoreFuture<'_, Vec<(Vec<u8>, Vec<u8>)>> {
        let spaces = self.spaces.lock().unwrap_or_else(|p| p.into_inner());
        let all =
            spaces.get(&space).map(|s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
        Box::pin(std::future::ready(Ok(all)))
    }

    fn get(&self, space: Space, key: &[u8]) -> StoreFuture<'_, Option<Vec<u8>>> {
        let spaces = self.spaces.lock().unwrap_or_else(|p| p.into_inner());
        let found = spaces.get(&space).and_then(|s| s.get(key).cloned());
        Box::pin(std::future::ready(Ok(found)))
    }

    fn swap(
        &self,
        space: Space,
        key: &[u8],
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
        _expires_in: Option<std::time::Duration>,
    ) -> StoreFuture<'_, bool> {
        let mut spaces = self.spaces.lock().unwrap_or_else(|p| p.into_inner());
        let keyspace = spaces.entry(space).or_default();
        let swapped = keyspace.get(key) == expected.as_ref();
        if swapped {
            match new {
                Some(value) => keyspace.insert(key.to_vec(), value),
                None => keyspace.remove(key),
            };
        }
        Box::pin(std::future::ready(Ok(swapped)))
    }

    fn shared(&self) -> Option<&Shared> {
        self.shared.as_ref()
    }
}
