//! Persistence: records as bytes in a few keyspaces, behind a small trait of our own, so a
//! backend is one module and knows nothing of what it stores.
//!
//! Each domain module encodes its own records ([`encode`], [`decode`]) and keeps everything it
//! needs on the hot path in memory; the store is written on the rare events (a sign-in, a code
//! accepted, a pause) and read once at start-up. The trait is asynchronous so that a networked
//! backend fits as well as the embedded one: sled ([`sled_store`], the default) runs its calls on
//! the blocking pool. sled has had no stable release since 2021 and has open reports of databases
//! that do not reopen after a hard kill, so nothing outside this module knows it is sled, and
//! every batch of writes is durable (flushed) before it returns.
//!
//! A store may be **shared** by several processes (Redis, [`redis_store`]). Then each process still
//! serves from memory, and the store tells it what the others changed ([`Shared::subscribe`]), so
//! it can reload those records; a change that must happen once across all of them (a TOTP step
//! accepted, a recovery code used) is a compare-and-swap ([`Store::swap`], [`update`]), never a
//! read followed by a write.

mod keyspace;
#[cfg(test)]
pub mod memory;
pub mod redis_store;
mod shared;
pub mod sled_store;

pub use keyspace::Space;
pub use shared::{Change, Shared};

use std::future::Future;
use std::pin::Pin;

/// One write in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put { space: Space, key: Vec<u8>, value: Vec<u8> },
    Delete { space: Space, key: Vec<u8> },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the data store failed: {0}")]
    Backend(String),
    #[error("a stored record could not be decoded: {0}")]
    Corrupt(String),
    /// Other processes kept changing the record while this one tried to (see [`update`]).
    #[error("a stored record changed under us {0} times in a row")]
    Contended(usize),
    #[error(
        "the data store at {path} is locked by another process; is another portcullis running with the same data_dir?"
    )]
    Locked { path: String },
}

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What the proxy keeps across restarts. The proxied hot path never calls it.
pub trait Store: Send + Sync + 'static {
    /// Applies the writes, in order, and makes them durable before returning.
    fn apply(&self, writes: Vec<Write>) -> StoreFuture<'_, ()>;
    /// Every record of a keyspace, for loading the in-memory caches at start-up.
    fn scan(&self, space: Space) -> StoreFuture<'_, Vec<(Vec<u8>, Vec<u8>)>>;
    /// One record as the store holds it now.
    fn get(&self, space: Space, key: &[u8]) -> StoreFuture<'_, Option<Vec<u8>>>;
    /// Replaces the record at `key` with `new` (`None`: deletes it) if it is still `expected`
    /// (`None`: absent), atomically for every process using the store, and durably. Returns
    /// whether it did. With `expires_in`, the store forgets the record after that long (a shared
    /// store's [`Space::Flows`]); without, a record keeps the expiry it had.
    fn swap(
        &self,
        space: Space,
        key: &[u8],
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
        expires_in: Option<std::time::Duration>,
    ) -> StoreFuture<'_, bool>;
    /// For a store other processes write too: their changes, and whether it can be reached.
    /// `None` for a store this process has to itself.
    fn shared(&self) -> Option<&Shared> {
        None
    }
    /// Called once the start-up loads have read every keyspace into the caches above the store:
    /// a store may let go of what it kept from reading them.
    fn loaded(&self) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// Copies every record of every keyspace from `from` to `to`, which must hold none (so a copy
/// never mixes two installs' accounts). Returns how many records each keyspace had.
pub async fn copy_all(from: &dyn Store, to: &dyn Store) -> Result<Vec<(Space, usize)>, CopyError> {
    for space in Space::ALL {
        let already = to.scan(space).await?.len();
        if already > 0 {
            return Err(CopyError::NotEmpty { space: space.name(), records: already });
        }
    }
    let mut copied = Vec::new();
    for space in Space::ALL {
        let records = from.scan(space).await?;
        copied.push((space, records.len()));
        for chunk in records.chunks(500) {
            let writes = chunk.iter().map(|(key, value)| Write::Put { space, key: key.clone(), value: value.clone() });
            to.apply(writes.collect()).await?;
        }
        let landed = to.scan(space).await?.len();
        if landed != records.len() {
            return Err(CopyError::Incomplete { space: space.name(), expected: records.len(), found: landed });
        }
    }
    Ok(copied)
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the destination already holds {records} {space} record(s); a copy goes into an empty store only. Fix: point it at an empty store (another store.key_prefix or Redis database, or a data_dir without a store)"
    )]
    NotEmpty { space: &'static str, records: usize },
    #[error("after the copy the destination holds {found} {space} record(s), not {expected}")]
    Incomplete { space: &'static str, expected: usize, found: usize },
}

/// How often [`update`] tries before it gives up on a record others keep changing.
const MAX_SWAP_TRIES: usize = 16;

/// Reads the record at `key`, lets `change` decide its new value (`None`: delete) from the
/// current one, and writes that only if nobody changed the record in between; otherwise reads it
/// again and asks `change` again. So a decision such as "this TOTP step is newer than the last
/// one accepted" is made once across every replica. `change` may refuse by returning `Err`, and
/// then nothing is written.
pub async fn update<T, E: From<StoreError>>(
    store: &dyn Store,
    space: Space,
    key: &[u8],
    change: impl FnMut(Option<&[u8]>) -> Result<(Option<Vec<u8>>, T), E>,
) -> Result<T, E> {
    update_expiring(store, space, key, None, change).await
}

/// [`update`] for a record the store forgets `expires_in` after it is written.
pub async fn update_expiring<T, E: From<StoreError>>(
    store: &dyn Store,
    space: Space,
    key: &[u8],
    expires_in: Option<std::time::Duration>,
    mut change: impl FnMut(Option<&[u8]>) -> Result<(Option<Vec<u8>>, T), E>,
) -> Result<T, E> {
    for _ in 0..MAX_SWAP_TRIES {
        let current = store.get(space, key).await?;
        let (new, outcome) = change(current.as_deref())?;
        if new == current || store.swap(space, key, current, new, expires_in).await? {
            return Ok(outcome);
        }
    }
    Err(StoreError::Contended(MAX_SWAP_TRIES).into())
}

/// A record as stored (JSON: readable with any tool when something needs looking into).
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A key that is text (an account key, a regulation subject), read back.
pub fn text_key(key: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(key.to_vec()).map_err(|e| StoreError::Corrupt(e.to_string()))
}
