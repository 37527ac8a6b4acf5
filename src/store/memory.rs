//! A store that forgets everything on exit, for unit tests.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Store, StoreError};
use crate::domain::factors::AccountRecord;
use crate::domain::regulation::RegulationRecord;
use crate::domain::session::{SessionKey, SessionRecord};

#[derive(Default)]
pub struct MemoryStore {
    sessions: Mutex<HashMap<SessionKey, SessionRecord>>,
    accounts: Mutex<HashMap<String, AccountRecord>>,
    regulation: Mutex<HashMap<String, RegulationRecord>>,
}

impl Store for MemoryStore {
    fn put_session(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), record.clone());
        Ok(())
    }

    fn delete_session(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        Ok(())
    }

    fn sessions(&self) -> Result<Vec<(SessionKey, SessionRecord)>, StoreError> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        Ok(sessions.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn put_account(&self, user: &str, record: &AccountRecord) -> Result<(), StoreError> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner()).insert(user.to_string(), record.clone());
        Ok(())
    }

    fn delete_account(&self, key: &str) -> Result<(), StoreError> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        Ok(())
    }

    fn accounts(&self) -> Result<Vec<(String, AccountRecord)>, StoreError> {
        let accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        Ok(accounts.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn put_regulation(&self, key: &str, record: &RegulationRecord) -> Result<(), StoreError> {
        self.regulation.lock().unwrap_or_else(|p| p.into_inner()).insert(key.to_string(), record.clone());
        Ok(())
    }

    fn delete_regulation(&self, key: &str) -> Result<(), StoreError> {
        self.regulation.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        Ok(())
    }

    fn regulation(&self) -> Result<Vec<(String, RegulationRecord)>, StoreError> {
        let map = self.regulation.lock().unwrap_or_else(|p| p.into_inner());
        Ok(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
