//! What the store keeps per session, and the expiry rules.

use serde::{Deserialize, Serialize};

use super::id::SessionKey;
use crate::base::clock::UnixTime;
use crate::config::{ProviderId, SessionSettings};
use crate::domain::factors::proof::AuthMethod;
use crate::store::{Space, StoreError, Write, encode};

/// How far a session has come, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    Partial {
        first_factor_at: UnixTime,
        /// How the first factor was proven (sessions stored before this was kept: a password).
        #[serde(default = "AuthMethod::password")]
        first_factor: AuthMethod,
    },
    Full {
        auth_time: UnixTime,
        amr: Vec<AuthMethod>,
        /// When a second factor was last proven in this session (for step-up).
        #[serde(default)]
        second_factor_at: Option<UnixTime>,
        /// The providers of the factors proven (empty in sessions stored before providers were
        /// recorded: those are weighed by the kind of factor alone).
        #[serde(default)]
        providers: Vec<ProviderId>,
        /// The security keys (handles) that answered in this session.
        #[serde(default)]
        keys: Vec<String>,
    },
}

/// Where a session was started, for the account page's list of sessions: the client address and
/// a short description of the browser ("Firefox on Windows"), never the whole `User-Agent`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub address: String,
    pub browser: String,
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
    /// The host this session is for, when it is not the main host: a session handed to another
    /// host (see `hosts.rs`) works there and nowhere else.
    #[serde(default)]
    pub host: Option<String>,
    /// Shared by a session, the sessions it becomes (new ids at each privilege change) and those
    /// handed to other hosts: signing out ends the whole family.
    #[serde(default)]
    pub family: String,
}

/// Why a cookie did not lead to a session. Each of these clears the cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    Malformed,
    Unknown,
    Expired,
    UserRemoved,
    PasswordChanged,
    /// Live sessions of two different users arrived together (see `Sessions::resolve`).
    Ambiguous,
}

/// The expiry rules, in one pure function: absolute lifetime for every session, the idle timeout
/// for full ones, and the short partial timeout for half-logged-in ones (`partial_since`: when
/// its first factor was proven).
pub fn check_expiry(
    partial_since: Option<UnixTime>,
    expires_at: UnixTime,
    last_seen: UnixTime,
    now: UnixTime,
    settings: &SessionSettings,
) -> Result<(), Rejected> {
    let expired = match partial_since {
        // Saturating: an instant read from the store may be anything, and wrapping would turn a
        // session that never ends into one that already has (or the other way round).
        Some(first_factor_at) => now >= first_factor_at.saturating_add(settings.partial_timeout.as_secs() as i64),
        None => now >= last_seen.saturating_add(settings.idle_timeout.as_secs() as i64),
    };
    if expired || now >= expires_at { Err(Rejected::Expired) } else { Ok(()) }
}

impl SessionRecord {
    /// When its first factor was proven, if it is half logged in.
    pub fn partial_since(&self) -> Option<UnixTime> {
        match self.stage {
            Stage::Partial { first_factor_at, .. } => Some(first_factor_at),
            Stage::Full { .. } => None,
        }
    }
}

pub fn put(key: &SessionKey, record: &SessionRecord) -> Result<Write, StoreError> {
    Ok(Write::Put { space: Space::Sessions, key: key.as_bytes().to_vec(), value: encode(record)? })
}

pub fn delete(key: &SessionKey) -> Write {
    Write::Delete { space: Space::Sessions, key: key.as_bytes().to_vec() }
}
