//! Sessions in a store several replicas share: each replica serves its sessions from memory, and
//! follows the others' changes. A session made on another replica may be asked for before its
//! change arrives, so a cookie this replica does not know is looked up in the store once
//! ([`Sessions::fetch`]); a session ended or downgraded elsewhere is read again when the change
//! arrives ([`Sessions::refresh`]), or when everything is reloaded after the connection to the
//! store was lost ([`Sessions::reload`]).

use std::collections::HashSet;
use std::sync::Arc;

use super::Sessions;
use super::id::{SessionId, SessionKey};
use super::record::{SessionRecord, check_expiry};
use super::state::{Entry, StoreState};
use crate::base::clock::UnixTime;
use crate::store::{Space, StoreError, decode, encode, update};

/// See [`Sessions::fetch`].
const MAX_LOOKUPS_PER_REQUEST: usize = 2;

impl Sessions {
    /// Whether other processes share the store (and so may know sessions this one does not).
    pub fn shared(&self) -> bool {
        self.store.shared().is_some()
    }

    /// What may be served now: everything while the store can be reached (always, for the
    /// embedded one); while it cannot, only full sessions already in memory, for
    /// `store.offline_grace`; after that nothing, since another replica may have ended them.
    pub fn store_state(&self) -> StoreState {
        match self.store.shared() {
            None => StoreState::Reachable,
            Some(shared) if shared.reachable() => StoreState::Reachable,
            Some(shared) if shared.serving() => StoreState::Grace,
            Some(_) => StoreState::Closed,
        }
    }

    /// Loads from the store the sessions that well-formed cookie values name but memory does not
    /// hold (made on another replica a moment ago). Returns whether it found any. Nothing is read
    /// for an embedded store, which only this process writes.
    pub async fn fetch<'a>(&self, cookie_values: impl IntoIterator<Item = &'a str>) -> Result<bool, StoreError> {
        if !self.shared() {
            return Ok(false);
        }
        let mut found = false;
        let unknown = cookie_values
            .into_iter()
            .filter_map(|value| SessionId::from_cookie(value).map(|id| id.key()))
            .filter(|key| !self.cache.contains_key(key));
        // A browser sends one or two of our cookies (one planted by a sibling host, at worst); a
        // request carrying fifty costs the store no more than one carrying two.
        for key in unknown.take(MAX_LOOKUPS_PER_REQUEST) {
            if let Some(bytes) = self.store.get(Space::Sessions, key.as_bytes()).await? {
                found |= self.install(key, decode(&bytes)?);
            }
        }
        Ok(found)
    }

    /// [`Sessions::fetch`] for a key (a session named by a handoff code, not by a cookie).
    pub async fn fetch_key(&self, key: &SessionKey) -> Result<bool, StoreError> {
        if !self.shared() || self.cache.contains_key(key) {
            return Ok(false);
        }
        match self.store.get(Space::Sessions, key.as_bytes()).await? {
            Some(bytes) => Ok(self.install(key.clone(), decode(&bytes)?)),
            None => Ok(false),
        }
    }

    /// Reads one session again after another replica wrote or deleted it.
    pub async fn refresh(&self, key: &[u8]) -> Result<(), StoreError> {
        let key = SessionKey::from_slice(key)
            .ok_or_else(|| StoreError::Corrupt("a session key of the wrong length".into()))?;
        match self.store.get(Space::Sessions, key.as_bytes()).await? {
            Some(bytes) => {
                self.install(key, decode(&bytes)?);
            }
            None => {
                self.cache.remove(&key);
            }
        }
        Ok(())
    }

    /// Reads every session again: drops those the store no longer has, takes the others' state.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let mut seen = HashSet::new();
        for (key, value) in self.store.scan(Space::Sessions).await? {
            let key = SessionKey::from_slice(&key)
                .ok_or_else(|| StoreError::Corrupt("a session key of the wrong length".into()))?;
            self.install(key.clone(), decode(&value)?);
            seen.insert(key);
        }
        self.cache.retain(|key, _| seen.contains(key));
        Ok(())
    }

    /// Puts a stored session in memory unless it has expired. A record that differs from the one
    /// in memory only by `last_seen` (another replica saw it used) moves `last_seen` forward and
    /// keeps the entry; any other difference (a new stage, a new id's record) replaces it.
    /// Returns whether the session is now held.
    fn install(&self, key: SessionKey, record: SessionRecord) -> bool {
        let now = self.clock.now();
        if check_expiry(record.partial_since(), record.expires_at, record.last_seen, now, &self.settings).is_err() {
            return false;
        }
        if let Some(held) = self.cache.get(&key) {
            let mut same = held.snapshot();
            same.last_seen = record.last_seen;
            if same == record {
                held.seen_at(record.last_seen);
                held.persisted_at(record.last_seen);
                return true;
            }
        }
        self.cache.insert(key, Entry::from_record(record));
        true
    }

    /// Moves a session's stored `last_seen` forward, and nothing else. Another replica may have
    /// changed the record since this one read it (ended it, downgraded it): writing this
    /// replica's copy back would bring it back to life, so only the stored record is touched, and
    /// only if it is still there.
    pub(super) async fn touch_stored(&self, key: &SessionKey, last_seen: UnixTime) -> Result<(), StoreError> {
        update(&*self.store, Space::Sessions, key.as_bytes(), |current| {
            let Some(bytes) = current else { return Ok((None, ())) };
            let mut record: SessionRecord = decode(bytes)?;
            if record.last_seen >= last_seen {
                return Ok((Some(bytes.to_vec()), ()));
            }
            record.last_seen = last_seen;
            Ok::<_, StoreError>((Some(encode(&record)?), ()))
        })
        .await
    }

    /// Turns the stored session back into a partial one, as the store holds it now. Returns the
    /// record written, or `None` if the session was ended elsewhere meanwhile (nothing written).
    pub(super) async fn make_partial_stored(
        &self,
        key: &SessionKey,
        partial: &SessionRecord,
    ) -> Result<Option<SessionRecord>, StoreError> {
        update(&*self.store, Space::Sessions, key.as_bytes(), |current| {
            let Some(bytes) = current else { return Ok((None, None)) };
            let mut record: SessionRecord = decode(bytes)?;
            record.stage = partial.stage.clone();
            record.last_seen = record.last_seen.max(partial.last_seen);
            Ok::<_, StoreError>((Some(encode(&record)?), Some(record)))
        })
        .await
    }

    /// For the sweep: whether a session this replica found expired is expired in the store too.
    /// Another replica may have served it since (its `last_seen` is newer there); then it is
    /// taken from the store instead of deleted.
    pub(super) async fn expired_everywhere(&self, key: &SessionKey, entry: &Arc<Entry>) -> Result<bool, StoreError> {
        if !self.shared() {
            return Ok(true);
        }
        let Some(bytes) = self.store.get(Space::Sessions, key.as_bytes()).await? else { return Ok(true) };
        let stored: SessionRecord = decode(&bytes)?;
        if stored.last_seen > entry.last_seen() && self.install(key.clone(), stored) {
            return Ok(false);
        }
        Ok(true)
    }
}
