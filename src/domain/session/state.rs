//! A live session in memory, and the two kinds a request can hold.
//!
//! A [`PartialSession`] and a [`FullSession`] are different types, made in one place
//! (`Sessions::resolve`) from what the session's entry says it is. Only a `FullSession` can
//! produce the identity that forwarding requires (see `identity.rs`), so a half-logged-in visitor
//! reaching the upstream is not a runtime check that could be forgotten: it does not compile.
//!
//! ```compile_fail,E0599
//! fn forward(partial: &portcullis::domain::session::PartialSession, signer: &portcullis::domain::identity::AssertionSigner) {
//!     let _ = partial.upstream_identity(signer); // a partial session has no identity to give
//! }
//! ```

use std::any::Any;
use std::num::NonZeroI64;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use arc_swap::ArcSwapOption;

use super::id::SessionKey;
use super::methods::Methods;
use super::record::{SessionRecord, Stage};
use super::texts::Texts;
use crate::base::clock::UnixTime;
use crate::config::ProviderId;
use crate::domain::factors::proof::AuthMethod;
use crate::domain::users::User;

/// What a full session proved, kept in its entry and read through every request's
/// [`FullSession`] (no copy on the hot path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullStage {
    /// When the last factor was proven (the `auth_time` claim).
    pub auth_time: UnixTime,
    pub amr: Methods,
    /// When a second factor was last proven in this session (for step-up). Eight bytes where an
    /// `Option<i64>` takes sixteen; no session proved one at the instant 0.
    pub second_factor_at: Option<NonZeroI64>,
    /// The providers of the factors proven in this session, so that disabling one takes back what
    /// its factors earned (`domain::factors::providers::proof_counts`).
    pub providers: Box<[ProviderId]>,
    /// The security keys (their handles) that answered in this session: one removed since, or
    /// whose provider no longer counts, proves nothing any more.
    pub keys: Box<[String]>,
}

/// The stage of a live session: the one place it is kept in memory.
pub(super) enum LiveStage {
    Partial {
        first_factor_at: UnixTime,
        first_factor: AuthMethod,
    },
    /// Inside the entry rather than in an allocation of its own: 100,000 sessions held 12 MiB
    /// more that way (`bench/scale.sh rss`).
    Full(FullStage),
}

impl LiveStage {
    /// As the store keeps it.
    pub(super) fn stored(&self) -> Stage {
        match self {
            Self::Partial { first_factor_at, first_factor } => {
                Stage::Partial { first_factor_at: *first_factor_at, first_factor: *first_factor }
            }
            Self::Full(full) => Stage::Full {
                auth_time: full.auth_time,
                amr: full.amr.to_vec(),
                second_factor_at: full.second_factor_at.map(NonZeroI64::get),
                providers: full.providers.to_vec(),
                keys: full.keys.to_vec(),
            },
        }
    }
}

/// Room for one value derived from a session that is costly to make on every request (the signed
/// assertion, see `identity.rs`). The session only keeps it; whoever fills it knows its type.
///
/// One pointer wide (a `Mutex` around the value took three): every live session has one, and
/// few ever fill it.
#[derive(Default)]
pub struct Memo(ArcSwapOption<Arc<dyn Any + Send + Sync>>);

impl Memo {
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let kept = self.0.load();
        kept.as_deref().and_then(|value| Arc::clone(value).downcast::<T>().ok())
    }

    pub fn set<T: Any + Send + Sync>(&self, value: Arc<T>) {
        let value: Arc<dyn Any + Send + Sync> = value;
        self.0.store(Some(Arc::new(value)));
    }
}

/// `at` as seconds after `from`, held to what 32 bits keep. Every instant a session holds is
/// within its lifetime of its creation, far inside that range. One beyond it (a clock stepped by
/// decades, a record written by hand) is held so that the session can only end sooner: later
/// than the range keeps its top, and earlier than the range becomes [`LONG_BEFORE`], read back as
/// the earliest instant there is (see [`instant`]).
fn seconds_after(from: UnixTime, at: UnixTime) -> i32 {
    let after = at.saturating_sub(from);
    i32::try_from(after).unwrap_or(if after < 0 { LONG_BEFORE } else { i32::MAX })
}

/// An instant more than 68 years before the session's creation.
const LONG_BEFORE: i32 = i32::MIN;

/// The instant `after` seconds after `from` (the inverse of [`seconds_after`]).
fn instant(from: UnixTime, after: i32) -> UnixTime {
    if after == LONG_BEFORE { UnixTime::MIN } else { from + i64::from(after) }
}

/// A live session.
pub(super) struct Entry {
    /// The user name, CSRF token, family, device and host.
    pub(super) texts: Texts,
    pub(super) stage: LiveStage,
    pub(super) created_at: UnixTime,
    // The other instants are kept as seconds after `created_at` in 32 bits (68 years either
    // way), read and written through the methods below: with `failures` they share 16 bytes
    // where four `i64`s took 32, which brings 100,000 live entries down one malloc size class
    // (`bench/scale.sh rss`).
    /// The absolute end, whatever the activity.
    expires_after: i32,
    last_seen_after: AtomicI32,
    /// The `last_seen` the store has (the sweep writes it at most once a minute).
    persisted_after: AtomicI32,
    pub(super) credential_stamp: [u8; 16],
    memo: Memo,
    /// Wrong second-factor codes tried in this session.
    failures: AtomicU32,
}

impl Entry {
    /// How the session's first factor was proven. For a full session, the first `amr` value,
    /// which is always the first factor (`pwd`, `link`, or a passkey that signed in by itself):
    /// what stays proven when it drops back to partial.
    pub(super) fn first_factor(&self) -> AuthMethod {
        match &self.stage {
            LiveStage::Partial { first_factor, .. } => *first_factor,
            LiveStage::Full(full) => full.amr.first().copied().unwrap_or(AuthMethod::Pwd),
        }
    }

    /// An entry for a stored record (at start-up).
    pub(super) fn from_record(record: SessionRecord) -> Arc<Self> {
        let stage = match &record.stage {
            Stage::Partial { first_factor_at, first_factor } => {
                LiveStage::Partial { first_factor_at: *first_factor_at, first_factor: *first_factor }
            }
            Stage::Full { auth_time, amr, second_factor_at, providers, keys } => LiveStage::Full(FullStage {
                auth_time: *auth_time,
                amr: Methods::new(amr),
                second_factor_at: second_factor_at.and_then(NonZeroI64::new),
                providers: providers.as_slice().into(),
                keys: keys.as_slice().into(),
            }),
        };
        Self::new(record, stage)
    }

    /// An entry for `record` at `stage` (the record's own stage is what `stage` stores as).
    pub(super) fn new(record: SessionRecord, stage: LiveStage) -> Arc<Self> {
        // Sessions stored before families existed get one of their own.
        let family = if record.family.is_empty() { crate::base::secret::random_token() } else { record.family };
        Arc::new(Self {
            texts: Texts::new(&record.user, &record.csrf_token, &family, &record.device, record.host.as_deref()),
            stage,
            created_at: record.created_at,
            expires_after: seconds_after(record.created_at, record.expires_at),
            last_seen_after: AtomicI32::new(seconds_after(record.created_at, record.last_seen)),
            persisted_after: AtomicI32::new(seconds_after(record.created_at, record.last_seen)),
            credential_stamp: record.credential_stamp,
            memo: Memo::default(),
            failures: AtomicU32::new(0),
        })
    }

    /// The entry as the store keeps it, with its latest activity.
    pub(super) fn snapshot(&self) -> SessionRecord {
        SessionRecord {
            user: self.user().to_string(),
            stage: self.stage.stored(),
            created_at: self.created_at,
            last_seen: self.last_seen(),
            expires_at: self.expires_at(),
            credential_stamp: self.credential_stamp,
            csrf_token: self.csrf_token().to_string(),
            device: self.texts.device(),
            host: self.texts.host().map(str::to_string),
            family: self.family().to_string(),
        }
    }

    /// The absolute end, whatever the activity.
    pub(super) fn expires_at(&self) -> UnixTime {
        instant(self.created_at, self.expires_after)
    }

    /// When the session was last used, on this replica or (once told) another.
    pub(super) fn last_seen(&self) -> UnixTime {
        instant(self.created_at, self.last_seen_after.load(Ordering::Relaxed))
    }

    /// Records a use at `at`; an earlier instant changes nothing. Only writes when the second
    /// changed, so busy sessions do not bounce a cache line.
    pub(super) fn seen_at(&self, at: UnixTime) {
        let after = seconds_after(self.created_at, at);
        if self.last_seen_after.load(Ordering::Relaxed) < after {
            self.last_seen_after.fetch_max(after, Ordering::Relaxed);
        }
    }

    /// The `last_seen` the store holds, as far as this process knows.
    pub(super) fn persisted_last_seen(&self) -> UnixTime {
        instant(self.created_at, self.persisted_after.load(Ordering::Relaxed))
    }

    /// The store holds `last_seen` as of `at` (or later).
    pub(super) fn persisted_at(&self, at: UnixTime) {
        self.persisted_after.fetch_max(seconds_after(self.created_at, at), Ordering::Relaxed);
    }

    pub(super) fn user(&self) -> &str {
        self.texts.user()
    }

    pub(super) fn csrf_token(&self) -> &str {
        self.texts.csrf_token()
    }

    pub(super) fn family(&self) -> &str {
        self.texts.family()
    }

    pub(super) fn device(&self) -> super::record::Device {
        self.texts.device()
    }

    pub(super) fn host(&self) -> Option<&str> {
        self.texts.host()
    }

    pub(super) fn is_full(&self) -> bool {
        matches!(self.stage, LiveStage::Full(_))
    }

    fn record_failure(&self) -> u32 {
        self.failures.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// First factor proven, more to do. It can show challenge pages; it cannot reach the upstream.
pub struct PartialSession {
    pub(super) key: SessionKey,
    pub(super) entry: Arc<Entry>,
    pub(super) user: Arc<User>,
    pub(super) first_factor_at: UnixTime,
    /// How the first factor was proven: the first `amr` value of the full session it becomes.
    pub(super) first_factor: AuthMethod,
}

/// Every required factor proven: the only kind of session that is forwarded.
pub struct FullSession {
    pub(super) key: SessionKey,
    /// A full entry: a `FullSession` is made only from one (`Sessions::typed`), and an entry's
    /// stage never changes (a new stage is a new entry).
    pub(super) entry: Arc<Entry>,
    pub(super) user: Arc<User>,
}

impl PartialSession {
    pub fn user(&self) -> &Arc<User> {
        &self.user
    }

    /// How the first factor was proven (`pwd`, `link`; `hwk`/`swk` for a passkey session sent
    /// back to prove a second step).
    pub fn first_factor(&self) -> AuthMethod {
        self.first_factor
    }

    pub fn key(&self) -> &SessionKey {
        &self.key
    }

    pub fn csrf_token(&self) -> &str {
        self.entry.csrf_token()
    }

    /// Counts a wrong code; returns how many there have been.
    pub fn record_failure(&self) -> u32 {
        self.entry.record_failure()
    }
}

impl FullSession {
    pub fn user(&self) -> &Arc<User> {
        &self.user
    }

    pub(super) fn stage(&self) -> &FullStage {
        match &self.entry.stage {
            LiveStage::Full(stage) => stage,
            LiveStage::Partial { .. } => unreachable!("a full session is only made from a full entry"),
        }
    }

    /// When the last factor was proven (the `auth_time` claim).
    pub fn auth_time(&self) -> UnixTime {
        self.stage().auth_time
    }

    pub fn amr(&self) -> &[AuthMethod] {
        &self.stage().amr
    }

    /// The providers of the factors this session proved (none recorded before providers were).
    pub fn proven_with(&self) -> &[ProviderId] {
        &self.stage().providers
    }

    /// The security keys (handles) that answered in this session.
    pub fn keys_used(&self) -> &[String] {
        &self.stage().keys
    }

    /// Whether a passkey signed this session in by itself (no password, no link): it stands only
    /// as long as that key does, and is ended rather than sent back to a second step.
    pub fn signed_in_by_passkey(&self) -> bool {
        matches!(self.amr().first(), Some(AuthMethod::Hwk | AuthMethod::Swk))
    }

    /// When this session last proved a second factor, if it ever did.
    pub fn second_factor_at(&self) -> Option<UnixTime> {
        self.stage().second_factor_at.map(NonZeroI64::get)
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
        self.entry.record_failure()
    }

    pub fn expires_at(&self) -> UnixTime {
        self.entry.expires_at()
    }

    pub fn created_at(&self) -> UnixTime {
        self.entry.created_at
    }

    pub fn csrf_token(&self) -> &str {
        self.entry.csrf_token()
    }

    /// See [`Memo`].
    pub fn memo(&self) -> &Memo {
        &self.entry.memo
    }
}

pub enum Session {
    Partial(PartialSession),
    Full(FullSession),
}

impl Session {
    fn entry(&self) -> &Arc<Entry> {
        match self {
            Self::Partial(s) => &s.entry,
            Self::Full(s) => &s.entry,
        }
    }

    pub fn key(&self) -> &SessionKey {
        match self {
            Self::Partial(s) => &s.key,
            Self::Full(s) => &s.key,
        }
    }

    pub fn user(&self) -> &Arc<User> {
        match self {
            Self::Partial(s) => &s.user,
            Self::Full(s) => &s.user,
        }
    }

    pub fn csrf_token(&self) -> &str {
        self.entry().csrf_token()
    }

    /// How this session's first factor was proven (`pwd`, `link`, a passkey's `hwk`/`swk`).
    pub fn first_factor(&self) -> AuthMethod {
        self.entry().first_factor()
    }

    pub fn created_at(&self) -> UnixTime {
        self.entry().created_at
    }
}

pub enum Lookup {
    NoCookie,
    Rejected(super::record::Rejected),
    Found(Session),
}

/// See `Sessions::store_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreState {
    Reachable,
    Grace,
    Closed,
}
