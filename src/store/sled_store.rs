//! The embedded default store: one sled database in `data_dir/store`, a tree per keyspace. Each
//! call runs on the blocking pool; each batch is flushed before it returns.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::{Space, Store, StoreError, StoreFuture, Write};

pub struct SledStore {
    path: PathBuf,
    /// `None` only while [`Store::loaded`] closes the database to open it again.
    open: Arc<RwLock<Option<Arc<Opened>>>>,
}

/// An open database and its trees.
struct Opened {
    db: sled::Db,
    trees: HashMap<Space, sled::Tree>,
}

/// The most sled keeps in its page cache.
const SLED_CACHE_BYTES: u64 = 16 * 1024 * 1024;

impl Opened {
    fn open(path: &Path) -> Result<Self, StoreError> {
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
}

impl SledStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self { path: path.to_path_buf(), open: Arc::new(RwLock::new(Some(Arc::new(Opened::open(path)?)))) })
    }

    /// The open database, for one call. Each call clones its handles, so a closed-and-reopened
    /// database is never used half and half.
    fn opened(&self) -> Result<Arc<Opened>, StoreError> {
        self.open
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Backend("the store is being reopened".into()))
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
        let opened = self.opened();
        Box::pin(blocking(move || {
            let opened = opened?;
            for write in writes {
                let space = match &write {
                    Write::Put { space, .. } | Write::Delete { space, .. } => *space,
                };
                let tree = &opened.trees[&space];
                match write {
                    Write::Put { key, value, .. } => tree.insert(key, value).map(|_| ()),
                    Write::Delete { key, .. } => tree.remove(key).map(|_| ()),
                }
                .map_err(backend)?;
            }
            opened.db.flush().map_err(backend)?;
            Ok(())
        }))
    }

    fn scan(&self, space: Space) -> StoreFuture<'_, Vec<(Vec<u8>, Vec<u8>)>> {
        let opened = self.opened();
        Box::pin(blocking(move || {
            opened?.trees[&space]
                .iter()
                .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend))
                .collect()
        }))
    }

    fn get(&self, space: Space, key: &[u8]) -> StoreFuture<'_, Option<Vec<u8>>> {
        let (opened, key) = (self.opened(), key.to_vec());
        Box::pin(blocking(move || Ok(opened?.trees[&space].get(key).map_err(backend)?.map(|v| v.to_vec()))))
    }

    fn swap(
        &self,
        space: Space,
        key: &[u8],
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
        _expires_in: Option<std::time::Duration>,
    ) -> StoreFuture<'_, bool> {
        let (opened, key) = (self.opened(), key.to_vec());
        Box::pin(blocking(move || {
            let opened = opened?;
            let swapped = opened.trees[&space].compare_and_swap(key, expected, new).map_err(backend)?.is_ok();
            if swapped {
                opened.db.flush().map_err(backend)?;
            }
            Ok(swapped)
        }))
    }

    /// Closes the database and opens it again. Reading every keyspace at start-up leaves sled
    /// holding the decoded tree nodes it read, whatever its cache is capped at (44 MiB with
    /// 100,000 sessions, `bench/scale.sh rss` under heaptrack), all of it already kept above the
    /// store; a database opened again holds only what is read or written from then on.
    fn loaded(&self) -> StoreFuture<'_, ()> {
        let (slot, path) = (self.open.clone(), self.path.clone());
        Box::pin(blocking(move || {
            let mut held = slot.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            let Some(opened) = held.take() else { return Ok(()) };
            match Arc::try_unwrap(opened) {
                Ok(opened) => {
                    opened.db.flush().map_err(backend)?;
                    // Dropping the last handle stops sled's flusher and lets go of its lock file.
                    drop(opened);
                    // Opened from a thread of its own: on this pool thread, which read every
                    // record for the loads, the new database's lasting structures would sit among
                    // the loads' freed memory in this thread's malloc arena and keep its pages
                    // resident (5 MiB in one start in ten at 100,000 sessions, `bench/scale.sh rss`).
                    let reopened = std::thread::scope(|scope| scope.spawn(|| Opened::open(&path)).join());
                    let reopened = reopened.map_err(|_| StoreError::Backend("reopening the database failed".into()))?;
                    *held = Some(Arc::new(reopened?));
                }
                // A call still in flight holds the database: keep it as it is.
                Err(opened) => *held = Some(opened),
            }
            Ok(())
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{SledStore, Space, Store, Write};

    fn put(key: &[u8], value: &[u8]) -> Write {
        Write::Put { space: Space::Sessions, key: key.to_vec(), value: value.to_vec() }
    }

    #[tokio::test]
    async fn the_database_opened_again_after_the_start_up_loads_keeps_everything_and_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("store")).unwrap();
        store.apply(vec![put(b"one", b"1"), put(b"two", b"2")]).await.unwrap();
        assert_eq!(store.scan(Space::Sessions).await.unwrap().len(), 2);
        let first = Arc::downgrade(&store.opened().unwrap());
        store.loaded().await.unwrap();
        assert!(first.upgrade().is_none(), "the first handle, and what sled kept with it, is gone");
        assert_eq!(store.get(Space::Sessions, b"one").await.unwrap().as_deref(), Some(&b"1"[..]));
        store.apply(vec![put(b"three", b"3")]).await.unwrap();
        assert!(store.swap(Space::Sessions, b"two", Some(b"2".to_vec()), None, None).await.unwrap());
        let keys: Vec<_> = store.scan(Space::Sessions).await.unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, [b"one".to_vec(), b"three".to_vec()]);
    }

    #[tokio::test]
    async fn a_database_still_in_use_is_not_closed_under_its_user() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("store")).unwrap();
        let in_use = store.opened().unwrap();
        store.loaded().await.unwrap();
        assert!(Arc::ptr_eq(&in_use, &store.opened().unwrap()));
        in_use.trees[&Space::Sessions].insert(b"k", b"v".to_vec()).unwrap();
        assert_eq!(store.get(Space::Sessions, b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
    }
}
