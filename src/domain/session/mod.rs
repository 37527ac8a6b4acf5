//! Sessions: anonymous → partial (first factor proven) → full (every required factor proven).
//!
//! A session becomes partial only with a [`FirstFactorProof`] (a password, a sign-in link), and
//! full only with a
//! [`SecondFactorProof`] or the policy's [`PasswordIsEnough`]: values that only the verifiers
//! and the policy can make, so no caller can promote a session on its own say-so.
//!
//! Every live session is held in memory (loaded at start-up), so the hot path for a full session
//! never touches disk; the cache is sharded (`DashMap`), so it takes no global lock either. Writes
//! go through to the store on the rare events (login, promotion, logout) and `last_seen` is
//! persisted lazily by [`Sessions::sweep`].

mod hosts;
mod id;
mod methods;
mod record;
mod replicas;
mod state;
mod sweep;
mod texts;

pub use id::{SessionId, SessionKey};
pub use methods::Methods;
pub use record::{Device, Rejected, SessionRecord, Stage};
pub use state::{FullSession, FullStage, Lookup, Memo, PartialSession, Session, StoreState};

use std::num::NonZeroI64;
use std::sync::Arc;

use dashmap::DashMap;

use self::id::KeyHash;
use self::record::{check_expiry, delete, put};
use self::state::{Entry, LiveStage};
use crate::base::clock::{SharedClock, UnixTime};
use crate::config::SessionSettings;
use crate::domain::factors::proof::{AuthMethod, PasskeyProof, SecondFactorProof};
use crate::domain::first_factor::FirstFactorProof;
use crate::domain::policy::PasswordIsEnough;
use crate::domain::users::{User, UserDirectory};
use crate::store::{Space, Store, StoreError, decode};

/// One of a user's sessions, as the account page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    pub handle: String,
    pub device: Device,
    pub created_at: UnixTime,
    pub last_seen: UnixTime,
    pub full: bool,
    /// The other host it was handed to; `None` on the main host.
    pub host: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A proof of another account's factor: never a way into this one.
    #[error("the second factor was proven for another account")]
    ProofForAnotherAccount,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub expired: usize,
    pub touched: usize,
    /// Users whose half-logged-in sessions expired without the second step.
    pub abandoned: Vec<String>,
}

pub struct Sessions {
    cache: DashMap<SessionKey, Arc<Entry>, KeyHash>,
    store: Arc<dyn Store>,
    settings: SessionSettings,
    clock: SharedClock,
}

impl Sessions {
    /// Loads every stored session that is still alive into memory and deletes the rest.
    pub async fn open(
        store: Arc<dyn Store>,
        settings: SessionSettings,
        clock: SharedClock,
    ) -> Result<Self, StoreError> {
        let now = clock.now();
        let cache = DashMap::with_hasher(KeyHash);
        let mut expired = Vec::new();
        for (key, value) in store.scan(Space::Sessions).await? {
            let record: SessionRecord = decode(&value)?;
            let key = SessionKey::from_slice(&key)
                .ok_or_else(|| StoreError::Corrupt("a session key of the wrong length".into()))?;
            if check_expiry(record.partial_since(), record.expires_at, record.last_seen, now, &settings).is_ok() {
                cache.insert(key, Entry::from_record(record));
            } else {
                expired.push(delete(&key));
            }
        }
        store.apply(expired).await?;
        Ok(Self { cache, store, settings, clock })
    }

    pub fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    pub fn contains(&self, key: &SessionKey) -> bool {
        self.cache.contains_key(key)
    }

    fn expiry(&self, entry: &Entry, now: UnixTime) -> Result<(), Rejected> {
        let partial_since = match entry.stage {
            LiveStage::Partial { first_factor_at, .. } => Some(first_factor_at),
            LiveStage::Full(_) => None,
        };
        check_expiry(partial_since, entry.expires_at(), entry.last_seen(), now, &self.settings)
    }

    /// Finds the session for the values of our cookie in a request. In memory only: this is the
    /// hot path.
    ///
    /// Several copies can arrive, and only a planted one makes two *live* sessions (cookie tossing
    /// from a sibling host, where there is no `__Host-` prefix). Then the strongest wins when both
    /// belong to the same user (a full session over a planted partial one, which would otherwise
    /// hide it), and none when they belong to different users: one person's cookie must never
    /// make requests under another person's name.
    pub fn resolve<'a>(&self, cookie_values: impl IntoIterator<Item = &'a str>, users: &UserDirectory) -> Lookup {
        self.resolve_on(cookie_values, users, None)
    }

    /// [`Sessions::resolve`] for a request to `host` (`None`: the main host). A session belongs
    /// to one host: one handed to another host is unknown on the main host, and the other way
    /// round.
    pub fn resolve_on<'a>(
        &self,
        cookie_values: impl IntoIterator<Item = &'a str>,
        users: &UserDirectory,
        host: Option<&str>,
    ) -> Lookup {
        let mut found: Option<Session> = None;
        let mut rejected = None;
        for value in cookie_values {
            match (self.resolve_one(value, users, host), found.take()) {
                (Ok(session), None) => found = Some(session),
                (Ok(session), Some(other)) => {
                    if session.user().name != other.user().name {
                        tracing::warn!(target: "portcullis::security", "two sessions of different users in one request; both refused");
                        return Lookup::Rejected(Rejected::Ambiguous);
                    }
                    found = Some(if matches!(other, Session::Full(_)) { other } else { session });
                }
                (Err(why), kept) => {
                    rejected = Some(why);
                    found = kept;
                }
            }
        }
        match (found, rejected) {
            (Some(session), _) => Lookup::Found(session),
            (None, Some(why)) => Lookup::Rejected(why),
            (None, None) => Lookup::NoCookie,
        }
    }

    fn resolve_one(&self, value: &str, users: &UserDirectory, host: Option<&str>) -> Result<Session, Rejected> {
        let key = SessionId::from_cookie(value).ok_or(Rejected::Malformed)?.key();
        let entry = self.cache.get(&key).map(|e| e.value().clone()).ok_or(Rejected::Unknown)?;
        if entry.host() != host {
            return Err(Rejected::Unknown);
        }
        let now = self.clock.now();
        let verdict = self.expiry(&entry, now).and_then(|()| match users.get(entry.user()) {
            None => Err(Rejected::UserRemoved),
            Some(user) if user.credential_stamp != entry.credential_stamp => Err(Rejected::PasswordChanged),
            Some(user) => Ok(user),
        });
        let user = match verdict {
            Ok(user) => user,
            Err(problem) => {
                self.forget_in_background(key);
                return Err(problem);
            }
        };
        entry.seen_at(now);
        Ok(Self::typed(key, entry, user))
    }

    /// The kind of session an entry is: decided here, from the entry's own stage, and nowhere else.
    fn typed(key: SessionKey, entry: Arc<Entry>, user: Arc<User>) -> Session {
        match &entry.stage {
            LiveStage::Partial { first_factor_at, first_factor } => {
                let (first_factor_at, first_factor) = (*first_factor_at, *first_factor);
                Session::Partial(PartialSession { key, entry, user, first_factor_at, first_factor })
            }
            LiveStage::Full(_) => Session::Full(FullSession { key, entry, user }),
        }
    }

    /// The session `key` names, if it is still a live full session of a current user (for
    /// connections that outlive the request that authorised them). Memory only.
    pub fn live_full(&self, key: &SessionKey, users: &UserDirectory) -> Option<FullSession> {
        let entry = self.cache.get(key).map(|e| e.value().clone())?;
        if self.expiry(&entry, self.clock.now()).is_err() {
            return None;
        }
        let user = users.get(entry.user()).filter(|u| u.credential_stamp == entry.credential_stamp)?;
        match Self::typed(key.clone(), entry, user) {
            Session::Full(full) => Some(full),
            Session::Partial(_) => None,
        }
    }

    fn forget_in_background(&self, key: SessionKey) {
        if self.cache.remove(&key).is_some() {
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.apply(vec![delete(&key)]).await {
                    tracing::error!(session = %key.log_ref(), "could not delete an expired session: {e}");
                }
            });
        }
    }

    /// Stores a session at `stage` under a new id, replacing the session `replaces` (a privilege
    /// change must never keep a cookie an attacker may have planted or seen).
    async fn store_new(
        &self,
        record: SessionRecord,
        stage: LiveStage,
        replaces: Option<&SessionKey>,
    ) -> Result<(SessionId, SessionKey, Arc<Entry>), SessionError> {
        let id = SessionId::generate();
        let key = id.key();
        let record = SessionRecord { stage: stage.stored(), ..record };
        let mut writes = vec![put(&key, &record)?];
        writes.extend(replaces.map(delete));
        self.store.apply(writes).await?;
        if let Some(old) = replaces {
            self.cache.remove(old);
        }
        let entry = Entry::new(record, stage);
        self.cache.insert(key.clone(), entry.clone());
        Ok((id, key, entry))
    }

    /// A new session's record (its stage is set by [`Sessions::store_new`]).
    fn new_record(&self, user: &User, lifetime_from: UnixTime, device: Device) -> SessionRecord {
        let now = self.clock.now();
        SessionRecord {
            user: user.name.as_str().to_string(),
            stage: Stage::Partial { first_factor_at: now, first_factor: AuthMethod::Pwd },
            created_at: now,
            last_seen: now,
            expires_at: lifetime_from + self.settings.lifetime.as_secs() as i64,
            credential_stamp: user.credential_stamp,
            csrf_token: crate::base::secret::random_token(),
            device,
            host: None,
            family: crate::base::secret::random_token(),
        }
    }

    /// Starts a half-logged-in session for a user whose first factor was just proven.
    pub async fn begin(
        &self,
        proof: impl Into<FirstFactorProof>,
        device: Device,
    ) -> Result<(SessionId, PartialSession), SessionError> {
        let proof = proof.into();
        let (user, first_factor) = (proof.user().clone(), proof.method());
        let now = self.clock.now();
        let record = self.new_record(&user, now, device);
        let stage = LiveStage::Partial { first_factor_at: now, first_factor };
        let (id, key, entry) = self.store_new(record, stage, None).await?;
        Ok((id, PartialSession { key, entry, user, first_factor_at: now, first_factor }))
    }

    /// Starts a full session for a passkey that signed in by itself (both factors at once; see
    /// [`PasskeyProof`]): `amr` is the key's `hwk` or `swk` and `user`, with no password.
    pub(crate) async fn begin_with_passkey(
        &self,
        proof: PasskeyProof,
        device: Device,
    ) -> Result<(SessionId, FullSession), SessionError> {
        let user = proof.user().clone();
        let now = self.clock.now();
        let record = self.new_record(&user, now, device);
        let stage = FullStage {
            auth_time: now,
            amr: Methods::new(&[proof.method(), AuthMethod::User]),
            second_factor_at: NonZeroI64::new(now),
            providers: proof.provider().into_iter().cloned().collect(),
            keys: proof.key().into_iter().map(str::to_string).collect(),
        };
        let (id, key, entry) = self.store_new(record, LiveStage::Full(stage), None).await?;
        Ok((id, FullSession { key, entry, user }))
    }

    /// Makes a partial session full with the second factor it just proved. The id changes.
    pub(crate) async fn promote(
        &self,
        partial: PartialSession,
        proof: SecondFactorProof,
    ) -> Result<(SessionId, FullSession), SessionError> {
        if !proof.is_for(&partial.user) {
            return Err(SessionError::ProofForAnotherAccount);
        }
        let providers = proof.provider().into_iter().cloned().collect();
        let keys = proof.key().into_iter().map(str::to_string).collect();
        let amr = Methods::new(&[partial.first_factor, proof.method()]);
        self.make_full(partial, amr, (providers, keys)).await
    }

    /// Makes a partial session full where the policy says the password is enough. The id changes.
    pub(crate) async fn promote_with_password(
        &self,
        partial: PartialSession,
        _enough: PasswordIsEnough,
    ) -> Result<(SessionId, FullSession), SessionError> {
        let amr = Methods::new(&[partial.first_factor]);
        self.make_full(partial, amr, (Box::default(), Box::default())).await
    }

    async fn make_full(
        &self,
        partial: PartialSession,
        amr: Methods,
        (providers, keys): (Box<[crate::config::ProviderId]>, Box<[String]>),
    ) -> Result<(SessionId, FullSession), SessionError> {
        let now = self.clock.now();
        let second_factor_at = amr.iter().any(|m| m.is_fresh_second_factor()).then_some(now).and_then(NonZeroI64::new);
        let stage = FullStage { auth_time: now, amr, second_factor_at, providers, keys };
        let mut record = self.new_record(&partial.user, partial.first_factor_at, partial.entry.device());
        record.created_at = partial.entry.created_at;
        record.host = partial.entry.host().map(str::to_string);
        record.family = partial.entry.family().to_string();
        self.store_full(record, stage, &partial.key, partial.user).await
    }

    /// Stores a full session replacing `replaces`, and returns it.
    async fn store_full(
        &self,
        record: SessionRecord,
        stage: FullStage,
        replaces: &SessionKey,
        user: Arc<User>,
    ) -> Result<(SessionId, FullSession), SessionError> {
        let (id, key, entry) = self.store_new(record, LiveStage::Full(stage), Some(replaces)).await?;
        Ok((id, FullSession { key, entry, user }))
    }

    /// Records a second factor proven again in a full session (step-up before a sensitive
    /// change). A privilege change, so the id changes.
    pub(crate) async fn step_up(
        &self,
        full: FullSession,
        proof: SecondFactorProof,
    ) -> Result<(SessionId, FullSession), SessionError> {
        if !proof.is_for(&full.user) {
            return Err(SessionError::ProofForAnotherAccount);
        }
        let now = self.clock.now();
        let mut amr = full.stage().amr.clone();
        amr.add(proof.method());
        let mut providers = full.proven_with().to_vec();
        if let Some(provider) = proof.provider()
            && !providers.contains(provider)
        {
            providers.push(provider.clone());
        }
        let mut keys = full.keys_used().to_vec();
        if let Some(key) = proof.key()
            && !keys.iter().any(|k| k == key)
        {
            keys.push(key.to_string());
        }
        let second_factor_at = proof
            .method()
            .is_fresh_second_factor()
            .then_some(now)
            .or(full.second_factor_at())
            .and_then(NonZeroI64::new);
        let (providers, keys) = (providers.into_boxed_slice(), keys.into_boxed_slice());
        let stage = FullStage { auth_time: now, amr, second_factor_at, providers, keys };
        let record =
            SessionRecord { last_seen: now, csrf_token: crate::base::secret::random_token(), ..full.entry.snapshot() };
        self.store_full(record, stage, &full.key, full.user).await
    }

    /// Carries a full session over to the user's new password: the same proof, a new credential
    /// stamp (so it survives the change that ends every other session) and a new id.
    pub async fn renew_credentials(
        &self,
        full: FullSession,
        user: Arc<User>,
    ) -> Result<(SessionId, FullSession), SessionError> {
        let record = SessionRecord {
            credential_stamp: user.credential_stamp,
            last_seen: self.clock.now(),
            csrf_token: crate::base::secret::random_token(),
            ..full.entry.snapshot()
        };
        self.store_full(record, full.stage().clone(), &full.key, user).await
    }

    /// Turns a full session back into a partial one (the policy now asks for more than it
    /// proved). The id stays: this lowers privilege. The user gets `partial_timeout` from now to
    /// satisfy the policy again.
    ///
    /// A session a passkey signed in by itself is ended instead (`None`): it proved no password,
    /// so as a partial session it would hold a first factor it never had, and whoever holds it
    /// could set up factors of their own on the account (a stolen passkey, switched off by the
    /// operator, would become a way back in).
    pub async fn downgrade(&self, full: FullSession) -> Option<PartialSession> {
        if full.signed_in_by_passkey() {
            if let Err(e) = self.end(&full.key).await {
                tracing::error!(session = %full.key.log_ref(), "a passkey session could not be ended: {e}");
            }
            return None;
        }
        let (entry, first_factor_at) = self.make_partial(&full.key, &full.entry).await;
        let first_factor = entry.first_factor();
        Some(PartialSession { key: full.key, entry, user: full.user, first_factor_at, first_factor })
    }

    /// The one way a session drops back to partial. Memory first, so the lower privilege holds
    /// from this moment whatever the store does; then stored. Should storing fail (logged), a
    /// restart would load the session as full again, and the policy, checked on every request,
    /// would send it back here: the failure can only cost a repeat, never let anyone through.
    async fn make_partial(&self, key: &SessionKey, entry: &Entry) -> (Arc<Entry>, UnixTime) {
        let now = self.clock.now();
        let stage = LiveStage::Partial { first_factor_at: now, first_factor: entry.first_factor() };
        let record = SessionRecord { stage: stage.stored(), last_seen: now, ..entry.snapshot() };
        let partial = Entry::new(record.clone(), stage);
        self.cache.insert(key.clone(), partial.clone());
        let stored = async {
            if !self.shared() {
                return self.store.apply(vec![put(key, &record)?]).await;
            }
            // Ended on another replica meanwhile: it stays ended.
            if self.make_partial_stored(key, &record).await?.is_none() {
                self.cache.remove(key);
            }
            Ok(())
        };
        if let Err(e) = stored.await {
            tracing::error!(session = %key.log_ref(), "a downgraded session could not be stored: {e}");
        }
        (partial, now)
    }

    /// The live sessions of `user`, newest first. Memory only.
    pub fn sessions_of(&self, user: &str) -> Vec<SessionSummary> {
        let mut found: Vec<SessionSummary> = self
            .cache
            .iter()
            .filter(|e| e.value().user() == user)
            .map(|e| {
                let entry = e.value();
                SessionSummary {
                    handle: e.key().handle(),
                    device: entry.device(),
                    created_at: entry.created_at,
                    last_seen: entry.last_seen(),
                    full: entry.is_full(),
                    host: entry.host().map(str::to_string),
                }
            })
            .collect();
        found.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then(b.created_at.cmp(&a.created_at)));
        found
    }

    /// Ends the session of `user` whose [`SessionKey::handle`] is `handle`; returns whether there
    /// was one. Another user's session is never matched.
    pub async fn end_by_handle(&self, user: &str, handle: &str) -> Result<bool, SessionError> {
        let key =
            self.cache.iter().find(|e| e.value().user() == user && e.key().handle() == handle).map(|e| e.key().clone());
        match key {
            // A main-host session takes the sessions handed out from it along; one on another
            // host goes alone.
            Some(key) if self.cache.get(&key).is_some_and(|e| e.host().is_none()) => {
                self.end_family(&key).await.map(|_| true)
            }
            Some(key) => self.end(&key).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// Turns every full session of the users `matches` picks back into a partial one, so each
    /// must prove a second factor again at its next request (operator action after a reset or a
    /// policy change). The ids stay: this lowers privilege. Returns how many were downgraded.
    pub async fn downgrade_where(&self, matches: impl Fn(&str) -> bool) -> Result<usize, SessionError> {
        let chosen: Vec<(SessionKey, Arc<Entry>)> = self
            .cache
            .iter()
            .filter(|e| e.value().is_full() && matches(e.value().user()))
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        for (key, entry) in &chosen {
            // A passkey session is ended, never turned partial (see `downgrade`).
            if matches!(entry.first_factor(), AuthMethod::Hwk | AuthMethod::Swk) {
                self.end(key).await?;
            } else {
                self.make_partial(key, entry).await;
            }
        }
        Ok(chosen.len())
    }

    /// Ends every session of the users `matches` picks. Returns how many.
    pub async fn end_where(&self, matches: impl Fn(&str) -> bool) -> Result<usize, SessionError> {
        let keys: Vec<SessionKey> =
            self.cache.iter().filter(|e| matches(e.value().user())).map(|e| e.key().clone()).collect();
        for key in &keys {
            self.end(key).await?;
        }
        Ok(keys.len())
    }

    /// How many live sessions each user has, full and partial, for the operator's overview.
    pub fn count_by_user(&self) -> std::collections::HashMap<String, (usize, usize)> {
        let mut counts = std::collections::HashMap::<String, (usize, usize)>::new();
        for item in self.cache.iter() {
            let slot = counts.entry(item.value().user().to_string()).or_default();
            if item.value().is_full() {
                slot.0 += 1;
            } else {
                slot.1 += 1;
            }
        }
        counts
    }

    /// Ends every session of `user` but `keep` (after a password change made in `keep`).
    pub async fn end_all_but(&self, user: &str, keep: &SessionKey) -> Result<usize, SessionError> {
        let keys: Vec<SessionKey> = self
            .cache
            .iter()
            .filter(|e| e.value().user() == user && e.key() != keep)
            .map(|e| e.key().clone())
            .collect();
        for key in &keys {
            self.end(key).await?;
        }
        Ok(keys.len())
    }

    /// Ends every session of `user` ("sign out everywhere", password resets). Returns how many.
    pub async fn end_all_for(&self, user: &str) -> Result<usize, SessionError> {
        self.end_where(|name| name == user).await
    }

    /// Logs out: the session is gone server side, whatever the browser keeps.
    pub async fn end(&self, key: &SessionKey) -> Result<(), SessionError> {
        self.cache.remove(key);
        self.store.apply(vec![delete(key)]).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
