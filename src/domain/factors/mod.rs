//! Second factors, owned by the *account* (not by a login method): a TOTP authenticator and a set
//! of one-time recovery codes, kept together in one [`AccountRecord`] per user.
//!
//! [`Accounts`] holds every account's record in memory (the gate consults it on every request to
//! evaluate the policy, so that must not touch disk) and writes changes through to the store,
//! flushed, because an accepted TOTP step or a used recovery code must never be forgotten by a
//! crash: that would reopen a replay.

pub mod email;
pub mod qr;
pub mod recovery;
pub mod remembered;
pub mod sealing;
pub mod totp;

use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::base::clock::UnixTime;
use crate::domain::users::User;
use crate::store::{Space, Store, StoreError, Write, decode, encode, text_key};

/// One account's second factors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    pub totp: Option<TotpRecord>,
    #[serde(default)]
    pub recovery_codes: Vec<RecoveryCodeRecord>,
    pub recovery_generated_at: Option<UnixTime>,
    /// The last time this account completed a sign-in, for the operator's overview.
    #[serde(default)]
    pub last_sign_in: Option<UnixTime>,
    /// One-time codes by email, once the address was confirmed with a code.
    #[serde(default)]
    pub email: Option<EmailFactorRecord>,
    /// The factor the challenge page offers first, when there are two.
    #[serde(default)]
    pub primary: Option<FactorKind>,
    /// When 2FA was last suggested after sign-in (see `mfa.nudge_every`), and whether the user
    /// asked not to be asked again.
    #[serde(default)]
    pub nudged_at: Option<UnixTime>,
    #[serde(default)]
    pub nudge_declined: bool,
    /// A one-time recovery link an administrator made (at most one; a new one replaces it).
    #[serde(default)]
    pub recovery_link: Option<RecoveryLinkRecord>,
    /// Browsers that skip the second factor at sign-in (`mfa.remember_device`).
    #[serde(default)]
    pub remembered: Vec<remembered::RememberedBrowser>,
}

/// The kinds of second factor an account can have (recovery codes are their backup, not a kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FactorKind {
    Totp,
    Email,
}

/// Codes by email to a confirmed address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailFactorRecord {
    /// The address the confirmation code reached; codes go there, even if the users file later
    /// names another (that one was never proven).
    pub address: String,
    pub enrolled_at: UnixTime,
    pub last_used_at: Option<UnixTime>,
}

/// An admin-issued recovery link, as stored: only the SHA-256 of its token, like session ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryLinkRecord {
    /// SHA-256 of the link's token, hex.
    pub digest: String,
    pub expires_at: UnixTime,
    pub issued_by: String,
    pub issued_at: UnixTime,
}

impl RecoveryLinkRecord {
    pub fn digest_of(token: &str) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `token` is this link's and it has not expired. Constant time in the token.
    pub fn admits(&self, token: &str, now: UnixTime) -> bool {
        use subtle::ConstantTimeEq;
        let given = Self::digest_of(token);
        now < self.expires_at && bool::from(given.as_bytes().ct_eq(self.digest.as_bytes()))
    }
}

impl AccountRecord {
    /// Whether the account can prove a second factor. Recovery codes only count alongside an
    /// authenticator: they are its backup, not a factor of their own.
    pub fn has_second_factor(&self) -> bool {
        self.totp.is_some() || self.email.is_some()
    }

    /// The factor to offer first: the chosen one if it is still there, else whichever exists.
    pub fn primary_factor(&self) -> Option<FactorKind> {
        let has = |kind: &FactorKind| match kind {
            FactorKind::Totp => self.totp.is_some(),
            FactorKind::Email => self.email.is_some(),
        };
        self.primary.filter(has).or_else(|| [FactorKind::Totp, FactorKind::Email].into_iter().find(has))
    }

    /// Makes a set of recovery codes if the account has none left; returns the new codes to show.
    /// (A second factor added later keeps the codes the first one came with.)
    pub fn ensure_recovery_codes(
        &mut self,
        pepper: &crate::base::secret::Secret,
        now: UnixTime,
    ) -> Option<Vec<String>> {
        if self.recovery_codes_left() > 0 {
            return None;
        }
        let (codes, records) = recovery::new_set(pepper);
        self.recovery_codes = records;
        self.recovery_generated_at = Some(now);
        Some(codes)
    }

    pub fn recovery_codes_left(&self) -> usize {
        self.recovery_codes.iter().filter(|c| c.used_at.is_none()).count()
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotpRecord {
    /// The shared secret, sealed with the data directory's secrets key (see [`sealing`]).
    pub sealed_secret: Vec<u8>,
    pub enrolled_at: UnixTime,
    pub last_used_at: Option<UnixTime>,
    /// The last RFC 6238 time step accepted. Only later steps are accepted, so a code, once used,
    /// can never be used again: not in another session, not after a restart.
    pub last_step: u64,
}

impl std::fmt::Debug for TotpRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpRecord")
            .field("enrolled_at", &self.enrolled_at)
            .field("last_used_at", &self.last_used_at)
            .field("last_step", &self.last_step)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryCodeRecord {
    /// HMAC-SHA256 of the normalised code under the data directory's pepper, hex.
    pub digest: String,
    pub used_at: Option<UnixTime>,
}

/// Every account's factors, in memory, written through to the store.
pub struct Accounts {
    records: DashMap<String, Arc<AccountRecord>>,
    store: Arc<dyn Store>,
    /// Serialises read-modify-write cycles, so two code checks for one account cannot both accept
    /// the same time step, and writes reach the store in order. Never taken on the hot path.
    write: tokio::sync::Mutex<()>,
}

impl Accounts {
    pub async fn open(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let records = DashMap::new();
        for (key, value) in store.scan(Space::Accounts).await? {
            records.insert(text_key(&key)?, Arc::new(decode::<AccountRecord>(&value)?));
        }
        Ok(Self { records, store, write: tokio::sync::Mutex::new(()) })
    }

    /// The account's record (an empty one if it has never enrolled anything). Memory only.
    ///
    /// Records are found by the user's [`User::account_key`], never by name, so a new account
    /// that is given a removed account's name starts with nothing.
    pub fn get(&self, user: &User) -> Arc<AccountRecord> {
        self.records.get(&user.account_key).map(|r| r.value().clone()).unwrap_or_default()
    }

    /// Forgets an account's record entirely (its user was removed). Returns whether there was one.
    pub async fn forget(&self, account_key: &str) -> Result<bool, StoreError> {
        let _serial = self.write.lock().await;
        let existed = self.records.remove(account_key).is_some();
        self.store.apply(vec![Write::Delete { space: Space::Accounts, key: account_key.as_bytes().to_vec() }]).await?;
        Ok(existed)
    }

    /// Remembers when the account last signed in (best effort: a failure is logged, not fatal).
    pub async fn record_sign_in(&self, user: &User, at: UnixTime) {
        let noted = self
            .update(user, |record| {
                record.last_sign_in = Some(at);
                Ok::<_, std::convert::Infallible>(())
            })
            .await;
        if let Err(e) = noted {
            tracing::error!(user = %user.name, "could not record a sign-in: {e}");
        }
    }

    /// Applies `change` to the account's record and persists the result before returning it.
    /// `change` decides on the current record and may refuse (returning `Err`), in which case
    /// nothing is written.
    pub async fn update<T, E>(
        &self,
        user: &User,
        change: impl FnOnce(&mut AccountRecord) -> Result<T, E>,
    ) -> Result<Result<T, E>, StoreError> {
        let _serial = self.write.lock().await;
        let mut record = (*self.get(user)).clone();
        let outcome = match change(&mut record) {
            Ok(value) => value,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let key = user.account_key.as_bytes().to_vec();
        self.store.apply(vec![Write::Put { space: Space::Accounts, key, value: encode(&record)? }]).await?;
        self.records.insert(user.account_key.clone(), Arc::new(record));
        Ok(Ok(outcome))
    }
}
