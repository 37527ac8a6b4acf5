//! Persistence behind a small trait of our own, so the backend is one module.
//!
//! sled is the embedded default ([`sled_store`]). It has had no stable release since 2021 and has
//! open reports of databases that do not reopen after a hard kill, so nothing outside this module
//! knows it is sled, and anything we must not lose is flushed explicitly.

pub mod memory;
pub mod sled_store;

use crate::domain::factors::AccountRecord;
use crate::domain::regulation::RegulationRecord;
use crate::domain::session::{SessionKey, SessionRecord};

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

/// What the proxy keeps across restarts. Implementations are synchronous; callers on async tasks
/// run them with `spawn_blocking`, and the proxied hot path never calls them at all.
pub trait Store: Send + Sync + 'static {
    fn put_session(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError>;
    fn delete_session(&self, key: &SessionKey) -> Result<(), StoreError>;
    /// Every stored session, for loading the in-memory cache at start-up.
    fn sessions(&self) -> Result<Vec<(SessionKey, SessionRecord)>, StoreError>;
    fn put_account(&self, key: &str, record: &AccountRecord) -> Result<(), StoreError>;
    fn delete_account(&self, key: &str) -> Result<(), StoreError>;
    /// Every account's factor record, for loading the in-memory directory at start-up.
    fn accounts(&self) -> Result<Vec<(String, AccountRecord)>, StoreError>;
    fn put_regulation(&self, key: &str, record: &RegulationRecord) -> Result<(), StoreError>;
    fn delete_regulation(&self, key: &str) -> Result<(), StoreError>;
    fn regulation(&self) -> Result<Vec<(String, RegulationRecord)>, StoreError>;
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}
