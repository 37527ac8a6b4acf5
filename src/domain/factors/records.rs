//! What is kept per account: its second factors, their backups and what stands in for them.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::recovery::{self, RecoveryCodeRecord};
use super::remembered::{MAX_PER_ACCOUNT, RememberedBrowser, digest_of};
pub use super::security_key::SecurityKeyRecord;
use crate::base::clock::UnixTime;
use crate::config::ProviderId;
use crate::domain::users::User;

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
    pub remembered: Vec<RememberedBrowser>,
    /// Deprecated providers the user was mailed about, so each is mailed once.
    #[serde(default)]
    pub retirement_mailed: std::collections::BTreeSet<ProviderId>,
    /// Security keys and passkeys (WebAuthn credentials), several per account.
    #[serde(default)]
    pub security_keys: Vec<SecurityKeyRecord>,
    /// Ways in besides the password: OpenID Connect identities linked to this account.
    #[serde(default)]
    pub identities: Vec<LinkedIdentity>,
}

/// An OpenID Connect identity linked to an account: signing in with it is signing in to the
/// account (its second factor still follows). An identity is its issuer and `sub` together
/// (OpenID Connect Core §2: `sub` is unique only within its issuer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedIdentity {
    /// The `[[login.oidc]]` id it came through.
    pub provider: String,
    pub issuer: String,
    pub subject: String,
    pub linked_at: UnixTime,
    /// `operator` (`user link`) or `verified-email` (`link_by_verified_email`).
    pub how: String,
}

impl LinkedIdentity {
    /// The key an identity is known by across accounts.
    pub fn key(issuer: &str, subject: &str) -> String {
        format!("{issuer}\0{subject}")
    }
}

/// The kinds of second factor an account can have (recovery codes are their backup, not a kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FactorKind {
    Totp,
    Email,
    /// One or more security keys or passkeys.
    SecurityKey,
}

/// Codes by email to a confirmed address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailFactorRecord {
    /// The address the confirmation code reached; codes go there, even if the users file later
    /// names another (that one was never proven).
    pub address: String,
    pub enrolled_at: UnixTime,
    pub last_used_at: Option<UnixTime>,
    /// The provider this factor belongs to; records from before providers belong to `email`.
    #[serde(default = "ProviderId::email")]
    pub provider: ProviderId,
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
        crate::base::text::hex(&sha2::Sha256::digest(token.as_bytes()))
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
        self.totp.is_some() || self.email.is_some() || !self.security_keys.is_empty()
    }

    /// Whether the account has a factor of `kind`.
    pub fn has(&self, kind: FactorKind) -> bool {
        match kind {
            FactorKind::Totp => self.totp.is_some(),
            FactorKind::Email => self.email.is_some(),
            FactorKind::SecurityKey => !self.security_keys.is_empty(),
        }
    }

    /// When two-step verification was turned on: the earliest factor still in place (an app or
    /// codes by email, whichever came first).
    pub fn enrolled_at(&self) -> Option<UnixTime> {
        let app = self.totp.as_ref().map(|t| t.enrolled_at);
        let email = self.email.as_ref().map(|e| e.enrolled_at);
        let keys = self.security_keys.iter().map(|k| k.created_at);
        app.into_iter().chain(email).chain(keys).min()
    }

    /// The factor to offer first: a security key whenever there is one (it cannot be phished,
    /// unlike a code), else the chosen one if it is still there, else whichever exists.
    pub fn primary_factor(&self) -> Option<FactorKind> {
        let has = |kind: &FactorKind| self.has(*kind);
        if self.has(FactorKind::SecurityKey) {
            return Some(FactorKind::SecurityKey);
        }
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
    /// The shared secret, sealed with the data directory's secrets key (see [`super::sealing`]).
    pub sealed_secret: Vec<u8>,
    pub enrolled_at: UnixTime,
    pub last_used_at: Option<UnixTime>,
    /// The last RFC 6238 time step accepted. Only later steps are accepted, so a code, once used,
    /// can never be used again: not in another session, not after a restart.
    pub last_step: u64,
    /// The provider this factor belongs to; records from before providers belong to `totp`.
    #[serde(default = "ProviderId::totp")]
    pub provider: ProviderId,
}

impl std::fmt::Debug for TotpRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpRecord")
            .field("enrolled_at", &self.enrolled_at)
            .field("last_used_at", &self.last_used_at)
            .field("last_step", &self.last_step)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl AccountRecord {
    /// Adds a remembered browser, dropping run-out ones and, past the cap, the oldest.
    pub fn add_remembered(&mut self, browser: RememberedBrowser, now: UnixTime) {
        self.remembered.retain(|b| b.expires_at > now);
        self.remembered.push(browser);
        while self.remembered.len() > MAX_PER_ACCOUNT {
            self.remembered.remove(0);
        }
    }

    /// The remembered browser whose cookie holds `token`, if it has not run out and was
    /// remembered under `user`'s current password. Every digest is compared in constant time.
    pub fn remembered_by_token(&self, token: &str, user: &User, now: UnixTime) -> Option<usize> {
        let given = digest_of(token);
        let password = user.password_tag();
        let mut found = None;
        for (index, browser) in self.remembered.iter().enumerate() {
            let same = bool::from(browser.digest.as_bytes().ct_eq(given.as_bytes()));
            if same && browser.expires_at > now && browser.password == password {
                found = Some(index);
            }
        }
        found
    }

    /// The browsers still remembered at `now`.
    pub fn remembered_at(&self, now: UnixTime) -> impl Iterator<Item = &RememberedBrowser> {
        self.remembered.iter().filter(move |b| b.expires_at > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::factors::remembered::remember;

    fn alice(password_hash: &str) -> User {
        User {
            name: crate::domain::users::Username::parse("alice").unwrap(),
            display_name: "Alice".into(),
            email: "alice@example.com".into(),
            groups: vec![],
            password_hash: password_hash.into(),
            credential_stamp: crate::domain::users::credential_stamp(password_hash),
            account_key: "alice".into(),
        }
    }

    #[test]
    fn two_step_verification_dates_from_the_first_factor_of_either_kind() {
        let email = EmailFactorRecord {
            address: "a@example.com".into(),
            enrolled_at: 500,
            last_used_at: None,
            provider: ProviderId::email(),
        };
        let app = TotpRecord {
            sealed_secret: Vec::new(),
            enrolled_at: 900,
            last_used_at: None,
            last_step: 0,
            provider: ProviderId::totp(),
        };
        let email_only = AccountRecord { email: Some(email.clone()), ..Default::default() };
        assert_eq!(email_only.enrolled_at(), Some(500), "codes by email alone");
        let both = AccountRecord { email: Some(email), totp: Some(app.clone()), ..Default::default() };
        assert_eq!(both.enrolled_at(), Some(500), "the earlier of the two");
        let app_only = AccountRecord { totp: Some(app), ..Default::default() };
        assert_eq!(app_only.enrolled_at(), Some(900));
        assert_eq!(AccountRecord::default().enrolled_at(), None);
    }

    #[test]
    fn a_token_finds_its_browser_until_it_runs_out_or_the_password_changes() {
        let user = alice("$argon2id$one");
        let mut account = AccountRecord::default();
        let (token, record) = remember(&user, "Firefox on Linux".into(), "192.0.2.1".into(), 1_000, 100);
        assert!(!record.digest.contains(&token), "only the digest is kept");
        account.add_remembered(record, 1_000);
        assert_eq!(account.remembered_by_token(&token, &user, 1_050), Some(0));
        assert_eq!(account.remembered_by_token("another token", &user, 1_050), None);
        assert_eq!(account.remembered_by_token(&token, &alice("$argon2id$two"), 1_050), None, "a new password");
        assert_eq!(account.remembered_by_token(&token, &user, 1_100), None, "run out");
        for n in 0..MAX_PER_ACCOUNT {
            let (_, more) = remember(&user, format!("browser {n}"), String::new(), 1_000, 100);
            account.add_remembered(more, 1_000);
        }
        assert_eq!(account.remembered.len(), MAX_PER_ACCOUNT);
        assert_eq!(account.remembered_by_token(&token, &user, 1_050), None, "the oldest was forgotten");
    }
}
