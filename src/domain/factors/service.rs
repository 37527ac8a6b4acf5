//! Everything done with an account's second factors: checking a code (which yields the only
//! [`SecondFactorProof`] there is), setting a factor up, removing one, new recovery codes,
//! remembered browsers, recovery links. The web layer asks; the rules are here.

use std::sync::Arc;

use super::accounts::Accounts;
use super::email::{EmailCodeError, EmailCodes, Purpose};
use super::proof::{AuthMethod, SecondFactorProof};
use super::providers::{counts, has_counting_factor};
use super::records::{AccountRecord, EmailFactorRecord, FactorKind, RecoveryLinkRecord, TotpRecord};
use super::recovery;
use super::remembered;
use super::sealing::{SealError, Sealer};
use super::totp;
use crate::base::clock::UnixTime;
use crate::base::secret::Secret;
use crate::config::{ProviderId, ProviderKind, Providers};
use crate::domain::clock_health::Drift;
use crate::domain::users::User;
use crate::store::StoreError;

/// Why a code did not prove a second factor.
#[derive(Debug, thiserror::Error)]
pub enum CodeRefused {
    #[error("the code is wrong")]
    Wrong,
    /// An emailed code that ran out (ten minutes, or too many tries), or none was sent.
    #[error("the emailed code has run out")]
    Expired,
    #[error("the code was already used")]
    Replayed,
    #[error("that is not a code")]
    Malformed,
    /// The account has nothing to prove with (it was reset meanwhile).
    #[error("the account has no second factor")]
    NoFactor,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sealing(#[from] SealError),
    #[error("the stored secret is unusable: {0}")]
    Secret(String),
    /// A security key's assertion that did not prove the factor.
    #[error(transparent)]
    Key(#[from] super::security_key::KeyError),
}

/// A code that proved a second factor.
#[derive(Debug)]
pub struct Verified {
    pub proof: SecondFactorProof,
    /// When it was a recovery code: how many are left.
    pub recovery_codes_left: Option<usize>,
}

/// Why a new factor was not set up.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("the code does not match")]
    Wrong,
    #[error("the code was already used")]
    Replayed,
    /// The confirmation code ran out or was never sent.
    #[error("the code has run out")]
    Expired,
    /// The account changed meanwhile (set up elsewhere, or reset): nothing was saved.
    #[error("the account changed meanwhile")]
    Changed,
    /// No active provider offers this kind (the configuration changed meanwhile).
    #[error("that kind of factor is not offered")]
    NotOffered,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sealing(#[from] SealError),
}

/// A new factor, saved, and proven by the code that set it up.
#[derive(Debug)]
pub struct Enrolled {
    pub proof: SecondFactorProof,
    /// Recovery codes made with it (an account's first factor), to show once.
    pub new_codes: Option<Vec<String>>,
}

/// Why a factor was not removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// The account does not have it (a stale page): nothing changes.
    #[error("the account does not have that factor")]
    NothingToRemove,
    /// It is the last one, and the account requires two-step verification.
    #[error("the last factor of an account that requires two-step verification")]
    LastRequired,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a recovery link did not work.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the link is expired, used or replaced")]
    Dead,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Recovery codes for a factor just added. The first factor that counts gets a new set: codes
/// left from factors whose provider was disabled were their backup and go with them (they may
/// sit beside the old device). A second factor keeps the codes the first came with.
pub(super) fn first_factor_codes(
    record: &mut AccountRecord,
    first: bool,
    pepper: &Secret,
    now: UnixTime,
) -> Option<Vec<String>> {
    if first {
        record.recovery_codes.clear();
    }
    record.ensure_recovery_codes(pepper, now)
}

pub struct SecondFactors {
    pub accounts: Arc<Accounts>,
    /// Outstanding emailed codes and recent sends, per account.
    pub email_codes: EmailCodes,
    sealer: Sealer,
    /// Which TOTP step accepted codes matched, for the clock-skew self-check.
    pub drift: Drift,
}

impl SecondFactors {
    /// With emailed codes kept in memory (one process).
    pub fn new(accounts: Arc<Accounts>, sealer: Sealer) -> Self {
        Self::with_flows(accounts, sealer, crate::domain::flows::Flows::in_memory())
    }

    /// With emailed codes kept in `flows` (the shared store, for replicas).
    pub fn with_flows(accounts: Arc<Accounts>, sealer: Sealer, flows: crate::domain::flows::Flows) -> Self {
        Self { accounts, email_codes: EmailCodes::new(flows), sealer, drift: Drift::default() }
    }

    /// Keys derived from `secrets.key` for other purposes (known-browser cookies).
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// Checks an app code, an emailed code or a recovery code for `user`, consuming it on
    /// success. Emailed codes are `email_digits` long. Only factors whose provider still counts
    /// are tried (see `providers.rs`), and recovery codes only while one does; emailed codes not
    /// after a first factor that proved the mailbox already (`after`, see
    /// [`AuthMethod::allows_email_codes_after`]).
    pub async fn verify_code(
        &self,
        user: &User,
        (code, after): (&str, AuthMethod),
        email_digits: u32,
        providers: &Providers,
        now: UnixTime,
    ) -> Result<Verified, CodeRefused> {
        let account = user.account_key.as_str();
        let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        let all_digits = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
        let looks_totp = digits.len() == totp::DIGITS as usize && all_digits;
        let record = self.accounts.get(user);
        let (has_app, has_email) = (
            counts(&record, providers, FactorKind::Totp),
            counts(&record, providers, FactorKind::Email) && after.allows_email_codes_after(),
        );
        let sign_in = Purpose::SignIn;
        // An emailed code, if one is outstanding and this could be it. Both kinds may be six
        // digits: when an emailed code is pending and the account also has an app, a code that is
        // not the emailed one is tried as an app code next.
        if all_digits
            && digits.len() == email_digits as usize
            && has_email
            && self.email_codes.outstanding(account, &sign_in, now).await
        {
            let could_be_totp = looks_totp && has_app;
            match self.email_codes.check(account, &sign_in, &digits, self.sealer.pepper(), now).await {
                Ok(()) => {
                    let provider = record.email.as_ref().map_or_else(ProviderId::email, |e| e.provider.clone());
                    let noted: Result<(), StoreError> = self
                        .accounts
                        .update(user, |record| {
                            if let Some(email) = record.email.as_mut() {
                                email.last_used_at = Some(now);
                            }
                            Ok(())
                        })
                        .await;
                    if let Err(e) = noted {
                        tracing::error!(user = %user.name, "could not record an emailed code's use: {e}");
                    }
                    return Ok(Verified {
                        proof: SecondFactorProof::of_provider(AuthMethod::Email, user, &provider),
                        recovery_codes_left: None,
                    });
                }
                Err(EmailCodeError::Unavailable) => {
                    return Err(CodeRefused::Store(StoreError::Backend("emailed codes cannot be read".into())));
                }
                Err(_) if could_be_totp => {}
                Err(EmailCodeError::Expired) => return Err(CodeRefused::Expired),
                Err(_) => return Err(CodeRefused::Wrong),
            }
        }
        if all_digits && !has_app && has_email {
            // Digits, no app, and no emailed code waiting: it was used, ran out or never sent.
            return Err(CodeRefused::Expired);
        }
        let sealer = &self.sealer;
        if looks_totp {
            return self
                .accounts
                .update(user, |record| {
                    if !counts(record, providers, FactorKind::Totp) {
                        return Err(CodeRefused::NoFactor);
                    }
                    let factor = record.totp.as_mut().ok_or(CodeRefused::NoFactor)?;
                    let secret = sealer.open(&factor.sealed_secret)?;
                    let step = totp::verify(secret.expose(), &digits, now, factor.last_step).map_err(|e| match e {
                        totp::TotpError::Replayed => CodeRefused::Replayed,
                        totp::TotpError::Wrong => CodeRefused::Wrong,
                        totp::TotpError::BadSecret(e) => CodeRefused::Secret(e),
                    })?;
                    factor.last_step = step;
                    factor.last_used_at = Some(now);
                    // Which step the code matched, relative to ours: the clock-skew telemetry.
                    self.drift.record(step as i64 - now / totp::STEP_SECONDS as i64);
                    let proof = SecondFactorProof::of_provider(AuthMethod::Otp, user, &factor.provider);
                    Ok(Verified { proof, recovery_codes_left: None })
                })
                .await;
        }
        if recovery::normalize(code).is_none() {
            return Err(CodeRefused::Malformed);
        }
        self.accounts
            .update(user, |record| {
                if !has_counting_factor(record, providers) {
                    return Err(CodeRefused::NoFactor);
                }
                let index =
                    recovery::find_unused(sealer.pepper(), &record.recovery_codes, code).ok_or(CodeRefused::Wrong)?;
                record.recovery_codes[index].used_at = Some(now);
                let left = Some(record.recovery_codes_left());
                Ok(Verified { proof: SecondFactorProof::new(AuthMethod::Rc, user), recovery_codes_left: left })
            })
            .await
    }

    /// Sets up (or, with `replace`, swaps in) an authenticator app from `secret`, once `code`
    /// from it is right: the code proves the new factor, which belongs to the active TOTP
    /// provider. An app whose provider no longer counts is replaced as if there were none.
    pub async fn enroll_totp(
        &self,
        user: &User,
        secret: &Secret,
        code: &str,
        replace: bool,
        providers: &Providers,
        now: UnixTime,
    ) -> Result<Enrolled, EnrollError> {
        let provider = providers.active(ProviderKind::Totp).ok_or(EnrollError::NotOffered)?.id.clone();
        let step = totp::verify(secret.expose(), code, now, 0).map_err(|e| match e {
            totp::TotpError::Replayed => EnrollError::Replayed,
            _ => EnrollError::Wrong,
        })?;
        let sealed = self.sealer.seal(secret.expose())?;
        let pepper = self.sealer.pepper();
        self.accounts
            .update(user, |record| {
                if counts(record, providers, FactorKind::Totp) != replace {
                    return Err(EnrollError::Changed);
                }
                let first = !has_counting_factor(record, providers);
                let proof = SecondFactorProof::of_provider(AuthMethod::Otp, user, &provider);
                record.totp = Some(TotpRecord {
                    sealed_secret: sealed.clone(),
                    enrolled_at: now,
                    last_used_at: Some(now),
                    last_step: step,
                    provider: provider.clone(),
                });
                let new_codes = first_factor_codes(record, first, pepper, now);
                Ok(Enrolled { proof, new_codes })
            })
            .await
    }

    /// A code that confirms `user`'s address, before codes by email become a factor.
    pub async fn issue_confirmation_code(
        &self,
        user: &User,
        digits: u32,
        now: UnixTime,
    ) -> Result<String, EmailCodeError> {
        let purpose = Purpose::Confirm { address: user.email.clone() };
        self.email_codes.issue(&user.account_key, purpose, digits, self.sealer.pepper(), now).await
    }

    /// Codes by email become a factor of the active email provider once the confirmation `code`
    /// is right: it proves the address, and the factor.
    pub async fn confirm_email(
        &self,
        user: &User,
        code: &str,
        providers: &Providers,
        now: UnixTime,
    ) -> Result<Enrolled, EnrollError> {
        let provider = providers.active(ProviderKind::Email).ok_or(EnrollError::NotOffered)?.id.clone();
        let purpose = Purpose::Confirm { address: user.email.clone() };
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        self.email_codes.check(&user.account_key, &purpose, &code, self.sealer.pepper(), now).await.map_err(
            |e| match e {
                EmailCodeError::Wrong => EnrollError::Wrong,
                EmailCodeError::Unavailable => {
                    EnrollError::Store(StoreError::Backend("emailed codes cannot be read".into()))
                }
                _ => EnrollError::Expired,
            },
        )?;
        let pepper = self.sealer.pepper();
        let address = user.email.clone();
        self.accounts
            .update(user, |record| {
                if counts(record, providers, FactorKind::Email) {
                    return Err(EnrollError::Changed);
                }
                let first = !has_counting_factor(record, providers);
                let proof = SecondFactorProof::of_provider(AuthMethod::Email, user, &provider);
                record.email = Some(EmailFactorRecord {
                    address: address.clone(),
                    enrolled_at: now,
                    last_used_at: Some(now),
                    provider: provider.clone(),
                });
                if record.primary.is_none() {
                    record.primary = Some(if record.totp.is_some() { FactorKind::Totp } else { FactorKind::Email });
                }
                let new_codes = first_factor_codes(record, first, pepper, now);
                Ok(Enrolled { proof, new_codes })
            })
            .await
    }

    /// A sign-in code for `user`, and the confirmed address it must go to (whatever the users
    /// file says now: only that one was proven). None for a factor that no longer counts.
    pub async fn issue_sign_in_code(
        &self,
        user: &User,
        digits: u32,
        providers: &Providers,
        now: UnixTime,
    ) -> Result<(String, String), EmailCodeError> {
        let record = self.accounts.get(user);
        let Some(factor) = record.email.clone().filter(|_| counts(&record, providers, FactorKind::Email)) else {
            return Err(EmailCodeError::NoCode);
        };
        let code =
            self.email_codes.issue(&user.account_key, Purpose::SignIn, digits, self.sealer.pepper(), now).await?;
        Ok((code, factor.address))
    }

    /// Removes one factor. Returns whether another that counts remains; with the last one,
    /// two-step verification is off and what stood in for it goes too (recovery codes, remembered
    /// browsers). Where it is `required`, the last one stays.
    pub async fn remove(
        &self,
        user: &User,
        kind: FactorKind,
        required: bool,
        providers: &Providers,
    ) -> Result<bool, RemoveError> {
        self.accounts
            .update(user, |record| {
                let has = counts(record, providers, kind);
                let other = [FactorKind::Totp, FactorKind::Email, FactorKind::SecurityKey]
                    .into_iter()
                    .any(|k| k != kind && counts(record, providers, k));
                // Keys go one at a time (`remove_key`), by their handle.
                if !has || kind == FactorKind::SecurityKey {
                    return Err(RemoveError::NothingToRemove);
                }
                if required && !other {
                    return Err(RemoveError::LastRequired);
                }
                match kind {
                    FactorKind::Totp => record.totp = None,
                    FactorKind::Email => record.email = None,
                    FactorKind::SecurityKey => {}
                }
                if !other {
                    record.recovery_codes.clear();
                    record.recovery_generated_at = None;
                    record.primary = None;
                    record.remembered.clear();
                }
                Ok(other)
            })
            .await
    }

    /// A new set of recovery codes, voiding the old one; `None` when the account has no factor
    /// that counts (codes are a factor's backup, never a factor of their own).
    pub async fn regenerate_codes(
        &self,
        user: &User,
        providers: &Providers,
        now: UnixTime,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let pepper = self.sealer.pepper();
        self.accounts
            .update(user, |record| {
                if !has_counting_factor(record, providers) {
                    return Ok(None);
                }
                let (codes, records) = recovery::new_set(pepper);
                record.recovery_codes = records;
                record.recovery_generated_at = Some(now);
                Ok(Some(codes))
            })
            .await
    }

    /// Which factor the challenge page offers first; only one the account has can be.
    pub async fn choose_primary(&self, user: &User, kind: FactorKind) -> Result<(), StoreError> {
        self.accounts
            .update(user, |record| {
                if record.has(kind) {
                    record.primary = Some(kind);
                }
                Ok(())
            })
            .await
    }

    /// Remembers a browser for `lifetime` seconds; returns the token for its cookie.
    pub async fn remember_browser(
        &self,
        user: &User,
        browser: String,
        address: String,
        lifetime: i64,
        now: UnixTime,
    ) -> Result<String, StoreError> {
        let (token, record) = remembered::remember(user, browser, address, now, lifetime);
        self.accounts
            .update(user, |account| {
                account.add_remembered(record.clone(), now);
                Ok(())
            })
            .await?;
        Ok(token)
    }

    /// The proof a remembered browser gives at sign-in, if `token` is one of `user`'s live ones
    /// (under their current password). Notes its use.
    pub async fn use_remembered(&self, user: &User, token: &str, now: UnixTime) -> Option<SecondFactorProof> {
        let used: Result<bool, StoreError> = self
            .accounts
            .update(user, |record| {
                let Some(index) = record.remembered_by_token(token, user, now) else { return Ok(false) };
                record.remembered[index].last_used_at = Some(now);
                Ok(true)
            })
            .await;
        match used {
            Ok(true) => Some(SecondFactorProof::new(AuthMethod::RememberedBrowser, user)),
            Ok(false) => None,
            Err(e) => {
                tracing::error!(user = %user.name, "could not check a remembered browser: {e}");
                None
            }
        }
    }

    /// Forgets one remembered browser (`Some(id)`), or all of them.
    pub async fn forget_browsers(&self, user: &User, id: Option<&str>) -> Result<(), StoreError> {
        if self.accounts.get(user).remembered.is_empty() {
            return Ok(());
        }
        self.accounts
            .update(user, |record| {
                record.remembered.retain(|b| id.is_some_and(|id| b.id != id));
                Ok(())
            })
            .await
    }

    /// Spends an admin-issued recovery link: if `token` is the account's live link, every old
    /// factor and code is voided in the same step (so two submissions cannot both use it).
    pub async fn spend_recovery_link(
        &self,
        user: &User,
        token: &str,
        now: UnixTime,
    ) -> Result<RecoveryLinkRecord, LinkError> {
        self.accounts
            .update(user, |record| {
                let link = record.recovery_link.take().filter(|link| link.admits(token, now)).ok_or(LinkError::Dead)?;
                *record = AccountRecord { last_sign_in: record.last_sign_in, ..Default::default() };
                Ok(link)
            })
            .await
    }
}
