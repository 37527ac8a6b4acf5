//! The embedded default store: one sled database in `data_dir/store`, a tree per keyspace. Each
//! call runs on the blocking pool; each batch is flushed before it returns.

use std::collections::HashMap;
use std::path::Path;

use super::{Space, Store, StoreError, StoreFuture, Write};

pub struct SledStore {
    db: sled::Db,
    trees: HashMap<Space, sled::Tree>,
}

/// The most sled keeps in its page cache.
const SLED_CACHE_BYTES: u64 = 16 * 1024 * 1024;

impl SledStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // Everything the proxy reads often is kept in memory above the store (sessions, accounts,
        // bans), so sled's own cache (up to 1 GiB by default) only duplicates it: capped, it
        // held 8 MiB less with 100,000 sessions (bench/scale.sh rss).
        let db = sled::Config::new().path(path).cache_capacity(SLED_CACHE_BYTES).open().map_err(|e| match e {
            // sled reports its lock file being held only through the message text.
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                StoreError::Locked { path: path.display().to_string() }
            }
            other => StoreError::Backend(other.to_string()),
        })?;
        let mut trees = HashMap::new();
        // Flows are never written to the embedded store, but a tree keeps a mistake from panicking.
        for space in Space::ALL.into_iter().chain([Space::Flows]) {
            trees.insert(space, db.open_tree(space.name()).map_err(backend)?);
        }
        Ok(Self { db, trees })
    }

    fn tree(&self, space: Space) -> sled::Tree {
        self.trees[&space].clone()
    }
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| StoreError::Backend(format!("a store task failed: {e}")))?
}

impl Store for SledStore {
    fn apply(&self, writes: Vec<Write>) -> StoreFuture<'_, ()> {
        let db = self.db.clone();
        let trees: Vec<(Write, sled::Tree)> = writes
            .into_iter()
            .map(|w| {
                let space = match &w {
                    Write::Put { space, .. } | Write::Delete { space, .. } => *space,
                };
                (w, self.tree(space))
            })
            .collect();
        Box::pin(blocking(move || {
            for (write, tree) in trees {
                match write {
                    Write::Put { key, value, .. } => tree.insert(key, value).map(|_| ()),
                    Write::Delete { key, .. } => tree.remove(key).map(|_| ()),
                }
                .map_err(backend)?;
            }
            db.flush().map_err(backend)?;
            Ok(())
        }))
    }

    fn scan(&self, space: Space) -> StoreFuture<'_, Vec<(Vec<u8>, Vec<u8>)>> {
        let tree = self.tree(space);
        Box::pin(blocking(move || {
            tree.iter().map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend)).collect()
        }))
    }

    fn get(&self, space: Space, key: &[u8]) -> StoreFuture<'_, Option<Vec<u8>>> {
        let (tree, key) = (self.tree(space), key.to_vec());
        Box::pin(blocking(move || Ok(tree.get(key).map_err(backend)?.map(|v| v.to_vec()))))
    }

    fn swap(
        &self,
        space: Space,
        key: &[u8],
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
        _expires_in: Option<std::time::Duration>,
    ) -> StoreFuture<'_, bool> {
        let (db, tree, key) = (self.db.clone(), self.tree(space), key.to_vec());
        Box::pin(blocking(move || {
            let swapped = tree.compare_and_swap(key, expected, new).map_err(backend)?.is_ok();
            if swapped {
                db.flush().map_err(backend)?;
            }
            Ok(swapped)
        }))
    }
}
