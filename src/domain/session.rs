//! Sessions: anonymous → partial (first factor proven) → full (every required factor proven).
//!
//! A [`PartialSession`] and a [`FullSession`] are different types. Only a `FullSession` can
//! produce the identity that forwarding requires (see `identity.rs`), so a half-logged-in visitor
//! reaching the upstream is not a runtime check that could be forgotten: it does not compile.
//!
//! Ids are 256 random bits in the cookie. The store and the in-memory cache key sessions by the
//! SHA-256 of the id, so a copied database holds no usable cookie, and looking a session up by its
//! hash leaks nothing useful through timing. Every live session is held in memory (loaded at
//! start-up), so the hot path for a full session never touches disk; the cache is sharded
//! (`DashMap`), so it takes no global lock either. Writes go through to the store on the rare
//! events (login, promotion, logout) and `last_seen` is persisted lazily by [`Sessions::sweep`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::base::clock::{SharedClock, UnixTime};
use crate::base::secret::random_bytes;
use crate::config::SessionSettings;
use crate::domain::identity::AssertionCache;
use crate::domain::users::{User, UserDirectory};
use crate::store::{Space, Store, StoreError, Write, decode, encode};

/// The secret a browser holds. Never logged, never stored.
pub struct SessionId([u8; 32]);

impl SessionId {
    fn generate() -> Self {
        Self(random_bytes())
    }

    /// Accepts exactly the encoding we hand out: 43 base64url characters, 32 bytes.
    pub fn from_cookie(value: &str) -> Option<Self> {
        if value.len() != 43 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(value).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    pub fn cookie_value(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    pub fn key(&self) -> SessionKey {
        SessionKey(Sha256::digest(self.0).into())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(<redacted>)")
    }
}

/// How a session is stored and found: the SHA-256 of its id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    /// A short, non-secret reference for logs (a prefix of the hash, not of the id).
    pub fn log_ref(&self) -> String {
        self.0[..4].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// How the account page names a session in its "sign out this one" form: a prefix of the
    /// hash (not of the id, so it cannot be turned into a cookie), only ever matched against the
    /// same user's sessions.
    pub fn handle(&self) -> String {
        self.0[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({}…)", self.log_ref())
    }
}

/// How a factor was proven, as RFC 8176 "amr" values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// Password (RFC 8176 §2).
    Pwd,
    /// One-time password: a TOTP code (RFC 8176 §2).
    Otp,
    /// A one-time code sent by email. Not an RFC 8176 value either (its "otp" would hide which
    /// kind was used, and NIST SP 800-63B does not accept email for AAL2); documented likewise.
    Email,
    /// A one-time recovery code. Not an RFC 8176 value (it has none for backup codes); documented
    /// in the README so upstreams can tell a recovery from a normal login.
    Rc,
    /// A browser the user asked to be remembered after proving a second factor in it
    /// (`mfa.remember_device`). Not an RFC 8176 value: no factor was proven in this session, so it
    /// never counts as a fresh second factor (step-up still asks for one).
    #[serde(rename = "device")]
    RememberedBrowser,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pwd => "pwd",
            Self::Otp => "otp",
            Self::Rc => "rc",
            Self::Email => "email",
            Self::RememberedBrowser => "device",
        }
    }

    /// Whether this stands in for the second factor the policy may ask for.
    pub fn is_second_factor(self) -> bool {
        matches!(self, Self::Otp | Self::Rc | Self::Email | Self::RememberedBrowser)
    }

    /// Whether NIST SP 800-63B accepts this as the second factor of AAL2: an OTP device (§5.1.4)
    /// or a look-up secret (§5.1.2). Not an emailed code (§5.1.3.1 rules out email for
    /// out-of-band authenticators) and not a remembered browser (nothing was proven now).
    pub fn meets_aal2(self) -> bool {
        matches!(self, Self::Otp | Self::Rc)
    }

    /// Whether this is a second factor proven just now (what step-up asks for).
    pub fn is_fresh_second_factor(self) -> bool {
        matches!(self, Self::Otp | Self::Rc | Self::Email)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    Partial {
        first_factor_at: UnixTime,
    },
    Full {
        auth_time: UnixTime,
        amr: Vec<AuthMethod>,
        /// When a second factor was last proven in this session (for step-up).
        #[serde(default)]
        second_factor_at: Option<UnixTime>,
    },
}

/// Where a session was started, for the account page's list of sessions: the client address and
/// a short description of the browser ("Firefox on Windows"), never the whole `User-Agent`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub address: String,
    pub browser: String,
}

/// One of a user's sessions, as the account page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    pub handle: String,
    pub device: Device,
    pub created_at: UnixTime,
    pub last_seen: UnixTime,
    pub full: bool,
}

/// What the store keeps per session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub user: String,
    pub stage: Stage,
    pub created_at: UnixTime,
    pub last_seen: UnixTime,
    /// Absolute end, whatever the activity.
    pub expires_at: UnixTime,
    /// The user's credential stamp when the session began; a new password invalidates it.
    pub credential_stamp: [u8; 16],
    /// Binds the session's forms to it (CSRF, double-checked with `Origin`).
    pub csrf_token: String,
    #[serde(default)]
    pub device: Device,
}

struct Entry {
    record: SessionRecord,
    last_seen: AtomicI64,
    persisted_last_seen: AtomicI64,
    assertion: AssertionCache,
    /// Wrong second-factor codes tried in this session.
    failures: AtomicU32,
}

impl Entry {
    fn new(record: SessionRecord) -> Arc<Self> {
        Arc::new(Self {
            last_seen: AtomicI64::new(record.last_seen),
            persisted_last_seen: AtomicI64::new(record.last_seen),
            assertion: AssertionCache::default(),
            failures: AtomicU32::new(0),
            record,
        })
    }

    fn snapshot(&self) -> SessionRecord {
        SessionRecord { last_seen: self.last_seen.load(Ordering::Relaxed), ..self.record.clone() }
    }
}

/// First factor proven, more to do. It can show challenge pages; it cannot reach the upstream.
pub struct PartialSession {
    key: SessionKey,
    entry: Arc<Entry>,
    user: Arc<User>,
}

/// Every required factor proven: the only kind of session that is forwarded.
pub struct FullSession {
    key: SessionKey,
    entry: Arc<Entry>,
    user: Arc<User>,
}

impl PartialSession {
    pub fn user(&self) -> &Arc<User> {
        &self.user
    }

    pub fn key(&self) -> &SessionKey {
        &self.key
    }

    pub fn csrf_token(&self) -> &str {
        &self.entry.record.csrf_token
    }

    /// Counts a wrong code; returns how many there have been.
    pub fn record_failure(&self) -> u32 {
        self.entry.failures.fetch_add(1, Ordering::AcqRel) + 1
    }
}

impl FullSession {
    pub fn user(&self) -> &Arc<User> {
        &self.user
    }

    /// When the last factor was proven (the `auth_time` claim).
    pub fn auth_time(&self) -> UnixTime {
        match &self.entry.record.stage {
            Stage::Full { auth_time, .. } => *auth_time,
            Stage::Partial { .. } => unreachable!("a FullSession is only built from a full record"),
        }
    }

    pub fn amr(&self) -> &[AuthMethod] {
        match &self.entry.record.stage {
            Stage::Full { amr, .. } => amr,
            Stage::Partial { .. } => unreachable!("a FullSession is only built from a full record"),
        }
    }

    /// When this session last proved a second factor, if it ever did.
    pub fn second_factor_at(&self) -> Option<UnixTime> {
        match &self.entry.record.stage {
            Stage::Full { second_factor_at, .. } => *second_factor_at,
            Stage::Partial { .. } => unreachable!("a FullSession is only built from a full record"),
        }
    }

    /// Whether this session's sign-in included a second factor (or a remembered browser standing
    /// in for one), which the 2FA policy asks for.
    pub fn proved_second_factor(&self) -> bool {
        self.amr().iter().any(|m| m.is_second_factor())
    }

    pub fn key(&self) -> &SessionKey {
        &self.key
    }

    /// Counts a wrong code during step-up; returns how many there have been.
    pub fn record_failure(&self) -> u32 {
        self.entry.failures.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub fn expires_at(&self) -> UnixTime {
        self.entry.record.expires_at
    }

    pub fn created_at(&self) -> UnixTime {
        self.entry.record.created_at
    }

    pub fn csrf_token(&self) -> &str {
        &self.entry.record.csrf_token
    }

    pub(crate) fn assertion_cache(&self) -> &AssertionCache {
        &self.entry.assertion
    }
}

pub enum Session {
    Partial(PartialSession),
    Full(FullSession),
}

impl Session {
    fn parts(&self) -> (&SessionKey, &Arc<Entry>, &Arc<User>) {
        match self {
            Self::Partial(s) => (&s.key, &s.entry, &s.user),
            Self::Full(s) => (&s.key, &s.entry, &s.user),
        }
    }

    pub fn key(&self) -> &SessionKey {
        self.parts().0
    }

    pub fn user(&self) -> &Arc<User> {
        self.parts().2
    }

    pub fn csrf_token(&self) -> &str {
        &self.parts().1.record.csrf_token
    }

    pub fn created_at(&self) -> UnixTime {
        self.parts().1.record.created_at
    }
}

/// Why a cookie did not lead to a session. Each of these clears the cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    Malformed,
    Unknown,
    Expired,
    UserRemoved,
    PasswordChanged,
    /// Live sessions of two different users arrived together (see [`Sessions::resolve`]).
    Ambiguous,
}

pub enum Lookup {
    NoCookie,
    Rejected(Rejected),
    Found(Session),
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a background store task failed: {0}")]
    Task(String),
}

pub struct Sessions {
    cache: DashMap<SessionKey, Arc<Entry>>,
    store: Arc<dyn Store>,
    settings: SessionSettings,
    clock: SharedClock,
}

impl Sessions {
    /// Loads every stored session that is still alive into memory and deletes the rest.
    pub async fn open(store: Arc<dyn Store>, settings: SessionSettings, clock: SharedClock) -> Result<Self, StoreError> {
        let now = clock.now();
        let cache = DashMap::new();
        let mut expired = Vec::new();
        for (key, value) in store.scan(Space::Sessions).await? {
            let record: SessionRecord = decode(&value)?;
            let key = SessionKey::from_slice(&key).ok_or_else(|| StoreError::Corrupt("a session key of the wrong length".into()))?;
            if check_expiry(&record, record.last_seen, now, &settings).is_ok() {
                cache.insert(key, Entry::new(record));
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

    /// Finds the session for the values of our cookie in a request. In memory only: this is the
    /// hot path.
    ///
    /// Several copies can arrive, and only a planted one makes two *live* sessions (cookie tossing
    /// from a sibling host, where there is no `__Host-` prefix). Then the strongest wins when both
    /// belong to the same user (a full session over a planted partial one, which would otherwise
    /// hide it), and none when they belong to different users: one person's cookie must never
    /// make requests under another person's name.
    pub fn resolve<'a>(&self, cookie_values: impl IntoIterator<Item = &'a str>, users: &UserDirectory) -> Lookup {
        let mut found: Option<Session> = None;
        let mut rejected = None;
        for value in cookie_values {
            match (self.resolve_one(value, users), found.take()) {
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

    fn resolve_one(&self, value: &str, users: &UserDirectory) -> Result<Session, Rejected> {
        let key = SessionId::from_cookie(value).ok_or(Rejected::Malformed)?.key();
        let entry = self.cache.get(&key).map(|e| e.value().clone()).ok_or(Rejected::Unknown)?;
        let now = self.clock.now();
        let verdict = check_expiry(&entry.record, entry.last_seen.load(Ordering::Relaxed), now, &self.settings)
            .and_then(|()| match users.get(&entry.record.user) {
                None => Err(Rejected::UserRemoved),
                Some(user) if user.credential_stamp != entry.record.credential_stamp => Err(Rejected::PasswordChanged),
                Some(user) => Ok(user),
            });
        let user = match verdict {
            Ok(user) => user,
            Err(problem) => {
                self.forget_in_background(key);
                return Err(problem);
            }
        };
        // Only write when the second changed, so busy sessions do not bounce a cache line.
        if entry.last_seen.load(Ordering::Relaxed) < now {
            entry.last_seen.fetch_max(now, Ordering::Relaxed);
        }
        Ok(match entry.record.stage {
            Stage::Partial { .. } => Session::Partial(PartialSession { key, entry, user }),
            Stage::Full { .. } => Session::Full(FullSession { key, entry, user }),
        })
    }

    /// The session `key` names, if it is still a live full session of a current user (for
    /// connections that outlive the request that authorised them). Memory only.
    pub fn live_full(&self, key: &SessionKey, users: &UserDirectory) -> Option<FullSession> {
        let entry = self.cache.get(key).map(|e| e.value().clone())?;
        let now = self.clock.now();
        if !matches!(entry.record.stage, Stage::Full { .. })
            || check_expiry(&entry.record, entry.last_seen.load(Ordering::Relaxed), now, &self.settings).is_err()
        {
            return None;
        }
        let user = users.get(&entry.record.user).filter(|u| u.credential_stamp == entry.record.credential_stamp)?;
        Some(FullSession { key: key.clone(), entry, user })
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

    fn new_record(&self, user: &User, stage: Stage, lifetime_from: UnixTime, device: Device) -> SessionRecord {
        let now = self.clock.now();
        SessionRecord {
            user: user.name.as_str().to_string(),
            stage,
            created_at: now,
            last_seen: now,
            expires_at: lifetime_from + self.settings.lifetime.as_secs() as i64,
            credential_stamp: user.credential_stamp,
            csrf_token: crate::base::secret::random_token(),
            device,
        }
    }

    async fn persist(
        &self,
        key: &SessionKey,
        record: &SessionRecord,
        replaces: Option<&SessionKey>,
    ) -> Result<(), SessionError> {
        let mut writes = vec![put(key, record)?];
        writes.extend(replaces.map(delete));
        self.store.apply(writes).await?;
        Ok(())
    }

    /// Starts a half-logged-in session for a user whose first factor was just proven.
    pub async fn begin(&self, user: Arc<User>, device: Device) -> Result<(SessionId, PartialSession), SessionError> {
        let now = self.clock.now();
        let record = self.new_record(&user, Stage::Partial { first_factor_at: now }, now, device);
        let id = SessionId::generate();
        let key = id.key();
        self.persist(&key, &record, None).await?;
        let entry = Entry::new(record);
        self.cache.insert(key.clone(), entry.clone());
        Ok((id, PartialSession { key, entry, user }))
    }

    /// Makes a partial session full. The id changes (a privilege change must never keep a
    /// cookie an attacker may have planted or seen), and the old one stops working at once.
    pub async fn promote(
        &self,
        partial: PartialSession,
        amr: Vec<AuthMethod>,
    ) -> Result<(SessionId, FullSession), SessionError> {
        let now = self.clock.now();
        let Stage::Partial { first_factor_at } = partial.entry.record.stage else {
            unreachable!("a PartialSession is only built from a partial record")
        };
        let second_factor_at = amr.iter().any(|m| m.is_fresh_second_factor()).then_some(now);
        let stage = Stage::Full { auth_time: now, amr, second_factor_at };
        let device = partial.entry.record.device.clone();
        let mut record = self.new_record(&partial.user, stage, first_factor_at, device);
        record.created_at = partial.entry.record.created_at;
        let id = SessionId::generate();
        let key = id.key();
        self.persist(&key, &record, Some(&partial.key)).await?;
        self.cache.remove(&partial.key);
        let entry = Entry::new(record);
        self.cache.insert(key.clone(), entry.clone());
        Ok((id, FullSession { key, entry, user: partial.user }))
    }

    /// Turns a full session back into a partial one (the policy now asks for more than it
    /// proved). The id stays: this lowers privilege. The user gets `partial_timeout` from now to
    /// satisfy the policy again.
    pub async fn downgrade(&self, full: FullSession) -> PartialSession {
        let entry = self.make_partial(&full.key, &full.entry.record).await;
        PartialSession { key: full.key, entry, user: full.user }
    }

    /// The one way a session drops back to partial. Memory first, so the lower privilege holds
    /// from this moment whatever the store does; then stored. Should storing fail (logged), a
    /// restart would load the session as full again, and the policy, checked on every request,
    /// would send it back here: the failure can only cost a repeat, never let anyone through.
    async fn make_partial(&self, key: &SessionKey, record: &SessionRecord) -> Arc<Entry> {
        let now = self.clock.now();
        let record = SessionRecord { stage: Stage::Partial { first_factor_at: now }, last_seen: now, ..record.clone() };
        let entry = Entry::new(record.clone());
        self.cache.insert(key.clone(), entry.clone());
        if let Err(e) = self.persist(key, &record, None).await {
            tracing::error!(session = %key.log_ref(), "a downgraded session could not be stored: {e}");
        }
        entry
    }

    /// Records a second factor proven again in a full session (step-up before a sensitive
    /// change). A privilege change, so the id changes.
    pub async fn step_up(
        &self,
        full: FullSession,
        method: AuthMethod,
    ) -> Result<(SessionId, FullSession), SessionError> {
        let now = self.clock.now();
        let mut amr = full.amr().to_vec();
        if !amr.contains(&method) {
            amr.push(method);
        }
        let record = SessionRecord {
            stage: Stage::Full { auth_time: now, amr, second_factor_at: Some(now) },
            last_seen: now,
            csrf_token: crate::base::secret::random_token(),
            ..full.entry.record.clone()
        };
        let id = SessionId::generate();
        let key = id.key();
        self.persist(&key, &record, Some(&full.key)).await?;
        self.cache.remove(&full.key);
        let entry = Entry::new(record);
        self.cache.insert(key.clone(), entry.clone());
        Ok((id, FullSession { key, entry, user: full.user }))
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
            ..full.entry.record.clone()
        };
        let id = SessionId::generate();
        let key = id.key();
        self.persist(&key, &record, Some(&full.key)).await?;
        self.cache.remove(&full.key);
        let entry = Entry::new(record);
        self.cache.insert(key.clone(), entry.clone());
        Ok((id, FullSession { key, entry, user }))
    }

    /// The live sessions of `user`, newest first. Memory only.
    pub fn sessions_of(&self, user: &str) -> Vec<SessionSummary> {
        let mut found: Vec<SessionSummary> = self
            .cache
            .iter()
            .filter(|e| e.value().record.user == user)
            .map(|e| {
                let entry = e.value();
                SessionSummary {
                    handle: e.key().handle(),
                    device: entry.record.device.clone(),
                    created_at: entry.record.created_at,
                    last_seen: entry.last_seen.load(Ordering::Relaxed),
                    full: matches!(entry.record.stage, Stage::Full { .. }),
                }
            })
            .collect();
        found.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then(b.created_at.cmp(&a.created_at)));
        found
    }

    /// Ends the session of `user` whose [`SessionKey::handle`] is `handle`; returns whether there
    /// was one. Another user's session is never matched.
    pub async fn end_by_handle(&self, user: &str, handle: &str) -> Result<bool, SessionError> {
        let key = self
            .cache
            .iter()
            .find(|e| e.value().record.user == user && e.key().handle() == handle)
            .map(|e| e.key().clone());
        match key {
            Some(key) => self.end(&key).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// Turns every full session of the users `matches` picks back into a partial one, so each
    /// must prove a second factor again at its next request (operator action after a reset or a
    /// policy change). The ids stay: this lowers privilege. Returns how many were downgraded.
    pub async fn downgrade_where(&self, matches: impl Fn(&str) -> bool) -> Result<usize, SessionError> {
        let chosen: Vec<(SessionKey, SessionRecord)> = self
            .cache
            .iter()
            .filter(|e| matches!(e.value().record.stage, Stage::Full { .. }) && matches(&e.value().record.user))
            .map(|e| (e.key().clone(), e.value().snapshot()))
            .collect();
        for (key, record) in &chosen {
            self.make_partial(key, record).await;
        }
        Ok(chosen.len())
    }

    /// Ends every session of the users `matches` picks. Returns how many.
    pub async fn end_where(&self, matches: impl Fn(&str) -> bool) -> Result<usize, SessionError> {
        let keys: Vec<SessionKey> =
            self.cache.iter().filter(|e| matches(&e.value().record.user)).map(|e| e.key().clone()).collect();
        for key in &keys {
            self.end(key).await?;
        }
        Ok(keys.len())
    }

    /// How many live sessions each user has, full and partial, for the operator's overview.
    pub fn count_by_user(&self) -> std::collections::HashMap<String, (usize, usize)> {
        let mut counts = std::collections::HashMap::<String, (usize, usize)>::new();
        for item in self.cache.iter() {
            let slot = counts.entry(item.value().record.user.clone()).or_default();
            match item.value().record.stage {
                Stage::Full { .. } => slot.0 += 1,
                Stage::Partial { .. } => slot.1 += 1,
            }
        }
        counts
    }

    /// Ends every session of `user` but `keep` (after a password change made in `keep`).
    pub async fn end_all_but(&self, user: &str, keep: &SessionKey) -> Result<usize, SessionError> {
        let keys: Vec<SessionKey> = self
            .cache
            .iter()
            .filter(|e| e.value().record.user == user && e.key() != keep)
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

    /// Drops expired sessions and persists `last_seen` for sessions that were used, at most
    /// once a minute each. Runs on a timer and at shutdown, off the hot path.
    pub async fn sweep(&self) -> Result<SweepReport, StoreError> {
        let now = self.clock.now();
        let mut report = SweepReport::default();
        let mut expired = Vec::new();
        let mut writes = Vec::new();
        for item in self.cache.iter() {
            let entry = item.value();
            let last_seen = entry.last_seen.load(Ordering::Relaxed);
            if check_expiry(&entry.record, last_seen, now, &self.settings).is_err() {
                expired.push(item.key().clone());
                // A half-logged-in session that ran out: the password was right, the second step
                // never came. The caller decides whether that is worth telling the user.
                if matches!(entry.record.stage, Stage::Partial { .. }) {
                    report.abandoned.push(entry.record.user.clone());
                }
            } else if last_seen - entry.persisted_last_seen.load(Ordering::Relaxed) >= 60 {
                writes.push(put(item.key(), &entry.snapshot())?);
                entry.persisted_last_seen.store(last_seen, Ordering::Relaxed);
                report.touched += 1;
            }
        }
        for key in expired {
            self.cache.remove(&key);
            writes.push(delete(&key));
            report.expired += 1;
        }
        if !writes.is_empty() {
            self.store.apply(writes).await?;
        }
        Ok(report)
    }

    /// Persists every session's latest activity, for a clean shutdown.
    pub async fn persist_all(&self) -> Result<(), StoreError> {
        let writes =
            self.cache.iter().map(|item| put(item.key(), &item.value().snapshot())).collect::<Result<Vec<_>, _>>()?;
        self.store.apply(writes).await
    }
}

fn put(key: &SessionKey, record: &SessionRecord) -> Result<Write, StoreError> {
    Ok(Write::Put { space: Space::Sessions, key: key.as_bytes().to_vec(), value: encode(record)? })
}

fn delete(key: &SessionKey) -> Write {
    Write::Delete { space: Space::Sessions, key: key.as_bytes().to_vec() }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub expired: usize,
    pub touched: usize,
    /// Users whose half-logged-in sessions expired without the second step.
    pub abandoned: Vec<String>,
}

/// The expiry rules, in one pure function: absolute lifetime for every session, the idle timeout
/// for full ones, and the short partial timeout for half-logged-in ones.
fn check_expiry(
    record: &SessionRecord,
    last_seen: UnixTime,
    now: UnixTime,
    settings: &SessionSettings,
) -> Result<(), Rejected> {
    let expired = match record.stage {
        Stage::Partial { first_factor_at } => now >= first_factor_at + settings.partial_timeout.as_secs() as i64,
        Stage::Full { .. } => now >= last_seen + settings.idle_timeout.as_secs() as i64,
    };
    if expired || now >= record.expires_at { Err(Rejected::Expired) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::clock::{Clock, FixedClock};
    use crate::store::memory::MemoryStore;
    use std::time::Duration;

    fn settings() -> SessionSettings {
        SessionSettings {
            cookie_name: "portcullis".into(),
            idle_timeout: Duration::from_secs(30 * 60),
            lifetime: Duration::from_secs(12 * 3600),
            partial_timeout: Duration::from_secs(10 * 60),
        }
    }

    fn directory(dir: &std::path::Path) -> UserDirectory {
        let path = dir.join("users.toml");
        let hash = crate::domain::password::hash(b"pw").unwrap();
        crate::domain::users::edit::add(
            &path,
            crate::domain::users::edit::NewUser {
                name: "alice",
                display_name: None,
                email: "a@example.com",
                groups: &[],
                password_hash: &hash,
            },
        )
        .unwrap();
        UserDirectory::load(&path).unwrap()
    }

    fn found(lookup: Lookup) -> Session {
        match lookup {
            Lookup::Found(s) => s,
            Lookup::Rejected(why) => panic!("rejected: {why:?}"),
            Lookup::NoCookie => panic!("no cookie"),
        }
    }

    fn rejected(lookup: Lookup) -> Rejected {
        match lookup {
            Lookup::Rejected(why) => why,
            _ => panic!("expected a rejection"),
        }
    }

    #[tokio::test]
    async fn promotion_rotates_the_id_and_kills_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let users = directory(dir.path());
        let clock = FixedClock::at(1_700_000_000);
        let sessions = Sessions::open(Arc::new(MemoryStore::default()), settings(), Arc::new(clock.clone())).await.unwrap();
        let (partial_id, partial) = sessions.begin(users.get("alice").unwrap(), Device::default()).await.unwrap();
        assert!(matches!(found(sessions.resolve([partial_id.cookie_value().as_str()], &users)), Session::Partial(_)));
        let (full_id, full) = sessions.promote(partial, vec![AuthMethod::Pwd]).await.unwrap();
        assert_ne!(partial_id.cookie_value(), full_id.cookie_value());
        assert_eq!(full.amr(), &[AuthMethod::Pwd]);
        assert_eq!(rejected(sessions.resolve([partial_id.cookie_value().as_str()], &users)), Rejected::Unknown);
        assert!(matches!(found(sessions.resolve([full_id.cookie_value().as_str()], &users)), Session::Full(_)));
    }

    #[tokio::test]
    async fn idle_absolute_and_partial_timeouts_apply() {
        let dir = tempfile::tempdir().unwrap();
        let users = directory(dir.path());
        let clock = FixedClock::at(1_700_000_000);
        let sessions = Sessions::open(Arc::new(MemoryStore::default()), settings(), Arc::new(clock.clone())).await.unwrap();

        let (partial_id, _) = sessions.begin(users.get("alice").unwrap(), Device::default()).await.unwrap();
        clock.advance(10 * 60);
        assert_eq!(rejected(sessions.resolve([partial_id.cookie_value().as_str()], &users)), Rejected::Expired);

        let (_, partial) = sessions.begin(users.get("alice").unwrap(), Device::default()).await.unwrap();
        let (id, _) = sessions.promote(partial, vec![AuthMethod::Pwd]).await.unwrap();
        let cookie = id.cookie_value();
        // Activity every 29 minutes keeps it alive until the 12 h lifetime ends.
        for _ in 0..24 {
            clock.advance(29 * 60);
            if clock.now() >= 1_700_000_000 + 10 * 60 + 12 * 3600 {
                break;
            }
            found(sessions.resolve([cookie.as_str()], &users));
        }
        clock.advance(29 * 60);
        assert_eq!(rejected(sessions.resolve([cookie.as_str()], &users)), Rejected::Expired);

        let (_, partial) = sessions.begin(users.get("alice").unwrap(), Device::default()).await.unwrap();
        let (idle_id, _) = sessions.promote(partial, vec![AuthMethod::Pwd]).await.unwrap();
        clock.advance(30 * 60);
        assert_eq!(rejected(sessions.resolve([idle_id.cookie_value().as_str()], &users)), Rejected::Expired);
    }

    #[tokio::test]
    async fn the_sweep_reports_half_logged_in_sessions_that_ran_out() {
        let dir = tempfile::tempdir().unwrap();
        let users = directory(dir.path());
        let clock = FixedClock::at(1_700_000_000);
        let sessions = Sessions::open(Arc::new(MemoryStore::default()), settings(), Arc::new(clock.clone())).await.unwrap();
        let _ = sessions.begin(users.get("alice").unwrap(), Device::default()).await.unwrap();
        let (_, partial) = sessions.begin(users.get("alice").unwrap(), Device::default()).await.unwrap();
        sessions.promote(partial, vec![AuthMethod::Pwd]).await.unwrap();
        clock.advance(11 * 60);
        let report = sessions.sweep().await.unwrap();
        assert_eq!(report.abandoned, vec!["alice".to_string()], "only the partial one was abandoned");
        assert_eq!(report.expired, 1);
    }

    #[tokio::test]
    async fn garbage_cookies_are_malformed_and_sessions_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let users = directory(dir.path());
        let clock: SharedClock = Arc::new(FixedClock::at(1_700_000_000));
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let sessions = Sessions::open(store.clone(), settings(), clock.clone()).await.unwrap();
        for garbage in ["", "x", "%%%", &"A".repeat(43), &"A".repeat(44)] {
            let why = rejected(sessions.resolve([garbage], &users));
            assert!(matches!(why, Rejected::Malformed | Rejected::Unknown), "{garbage}: {why:?}");
        }
        let (_, partial) = sessions.begin(users.get("alice").unwrap(), Device::default()).await.unwrap();
        let (id, _) = sessions.promote(partial, vec![AuthMethod::Pwd]).await.unwrap();
        drop(sessions);
        let reopened = Sessions::open(store, settings(), clock).await.unwrap();
        assert!(matches!(found(reopened.resolve([id.cookie_value().as_str()], &users)), Session::Full(_)));
        assert!(store_keys_are_hashes(&reopened, &id));
    }

    #[tokio::test]
    async fn a_planted_cookie_never_shadows_or_swaps_a_session() {
        let dir = tempfile::tempdir().unwrap();
        let users = directory(dir.path());
        crate::domain::users::edit::add(
            &dir.path().join("users.toml"),
            crate::domain::users::edit::NewUser {
                name: "mallory",
                display_name: None,
                email: "m@example.com",
                groups: &[],
                password_hash: &crate::domain::password::hash(b"pw").unwrap(),
            },
        )
        .unwrap();
        users.reload().unwrap();
        let clock = FixedClock::at(1_700_000_000);
        let sessions = Sessions::open(Arc::new(MemoryStore::default()), settings(), Arc::new(clock.clone())).await.unwrap();
        let (_, partial) = sessions.begin(users.get("alice").unwrap(), Device::default()).await.unwrap();
        let (full_id, _) = sessions.promote(partial, vec![AuthMethod::Pwd]).await.unwrap();
        let (planted_partial, _) = sessions.begin(users.get("alice").unwrap(), Device::default()).await.unwrap();
        let (mallory, _) = sessions.begin(users.get("mallory").unwrap(), Device::default()).await.unwrap();
        let (full, planted, other) = (full_id.cookie_value(), planted_partial.cookie_value(), mallory.cookie_value());
        for order in [[planted.as_str(), full.as_str()], [full.as_str(), planted.as_str()]] {
            assert!(matches!(found(sessions.resolve(order, &users)), Session::Full(_)), "the strongest wins");
        }
        assert_eq!(rejected(sessions.resolve([other.as_str(), full.as_str()], &users)), Rejected::Ambiguous);
        assert!(matches!(found(sessions.resolve(["garbage", full.as_str()], &users)), Session::Full(_)));
    }

    fn store_keys_are_hashes(sessions: &Sessions, id: &SessionId) -> bool {
        let stored: Vec<(SessionKey, SessionRecord)> = futures_util::FutureExt::now_or_never(sessions.store.scan(Space::Sessions))
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|(k, v)| (SessionKey::from_slice(&k).unwrap(), decode(&v).unwrap()))
            .collect();
        stored.iter().all(|(key, _)| key.as_bytes() != id.0) && stored.iter().any(|(key, _)| *key == id.key())
    }

    proptest::proptest! {
        /// Cookie values from anywhere: never a panic, and only our exact encoding is an id.
        #[test]
        fn cookie_decoding_is_total_and_strict(value in ".{0,80}") {
            if let Some(id) = SessionId::from_cookie(&value) {
                proptest::prop_assert_eq!(id.cookie_value(), value);
            }
        }
    }
}
