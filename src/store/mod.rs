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

#[cfg(test)]
pub mod memory;
pub mod sled_store;

use std::future::Future;
use std::pin::Pin;

/// The keyspaces. A record's key is chosen by its domain module (a session's key hash, an
/// account key, a regulation subject).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    Sessions,
    Accounts,
    Regulation,
}

impl Space {
    pub const ALL: [Space; 3] = [Space::Sessions, Space::Accounts, Space::Regulation];

    pub fn name(self) -> &'static str {
        match self {
            Self::Sessions => "sessions",
            Self::Accounts => "accounts",
            Self::Regulation => "regulation",
        }
    }
}

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
