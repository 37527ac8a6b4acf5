//! The embedded default store: one sled database in `data_dir/store`.

use std::path::Path;

use super::{Store, StoreError, decode, encode};
use crate::domain::factors::AccountRecord;
use crate::domain::regulation::RegulationRecord;
use crate::domain::session::{SessionKey, SessionRecord};

pub struct SledStore {
    db: sled::Db,
    sessions: sled::Tree,
    accounts: sled::Tree,
    regulation: sled::Tree,
}

impl SledStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(path).open().map_err(|e| match e {
            // sled reports its lock file being held only through the message text.
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                StoreError::Locked { path: path.display().to_string() }
            }
            other => StoreError::Backend(other.to_string()),
        })?;
        let sessions = db.open_tree("sessions").map_err(backend)?;
        let accounts = db.open_tree("accounts").map_err(backend)?;
        let regulation = db.open_tree("regulation").map_err(backend)?;
        Ok(Self { db, sessions, accounts, regulation })
    }
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl Store for SledStore {
    fn put_session(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError> {
        self.sessions.insert(key.as_bytes(), encode(record)?).map_err(backend)?;
        Ok(())
    }

    fn delete_session(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.sessions.remove(key.as_bytes()).map_err(backend)?;
        Ok(())
    }

    fn sessions(&self) -> Result<Vec<(SessionKey, SessionRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self.sessions.iter() {
            let (key, value) = item.map_err(backend)?;
            let Some(key) = SessionKey::from_slice(&key) else {
                return Err(StoreError::Corrupt("a session key of the wrong length".into()));
            };
            out.push((key, decode(&value)?));
        }
        Ok(out)
    }

    fn put_account(&self, user: &str, record: &AccountRecord) -> Result<(), StoreError> {
        self.accounts.insert(user.as_bytes(), encode(record)?).map_err(backend)?;
        Ok(())
    }

    fn delete_account(&self, key: &str) -> Result<(), StoreError> {
        self.accounts.remove(key.as_bytes()).map_err(backend)?;
        Ok(())
    }

    fn accounts(&self) -> Result<Vec<(String, AccountRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self.accounts.iter() {
            let (key, value) = item.map_err(backend)?;
            let user = String::from_utf8(key.to_vec()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.push((user, decode(&value)?));
        }
        Ok(out)
    }

    fn put_regulation(&self, key: &str, record: &RegulationRecord) -> Result<(), StoreError> {
        self.regulation.insert(key.as_bytes(), encode(record)?).map_err(backend)?;
        Ok(())
    }

    fn delete_regulation(&self, key: &str) -> Result<(), StoreError> {
        self.regulation.remove(key.as_bytes()).map_err(backend)?;
        Ok(())
    }

    fn regulation(&self) -> Result<Vec<(String, RegulationRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self.regulation.iter() {
            let (key, value) = item.map_err(backend)?;
            out.push((String::from_utf8_lossy(&key).into_owned(), decode(&value)?));
        }
        Ok(out)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(backend)?;
        Ok(())
    }
}
