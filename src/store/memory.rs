//! A store that forgets everything on exit, for unit tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::{Space, Store, StoreError, StoreFuture, Write};

/// One keyspace: keys to values, in key order (as sled keeps them).
type Keyspace = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Default)]
pub struct MemoryStore {
    spaces: Mutex<HashMap<Space, Keyspace>>,
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
}
