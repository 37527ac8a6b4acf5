//! What a provider's status means for the factors that point at it, as pure functions of the
//! account record and the configured [`Providers`].
//!
//! Every factor names its provider by id (`TotpRecord::provider`, `EmailFactorRecord::provider`;
//! records from before providers read as `totp` and `email`). [`factors_of`] is the one list of
//! an account's factors with their providers: a new kind of factor (WebAuthn credentials) joins
//! by adding its entries there, and every rule below then applies to it.
//!
//! Recovery codes are no provider's: they are the backup of the account's factors, so they count
//! only while some real factor counts. Otherwise an account whose factors were all disabled would
//! keep satisfying `required` with ten codes (and, through new codes, for ever) without any
//! factor the operator still accepts.

use std::collections::BTreeMap;

use super::accounts::Accounts;
use super::proof::AuthMethod;
use super::records::{AccountRecord, FactorKind};
use crate::base::clock::UnixTime;
use crate::config::{Provider, ProviderId, ProviderKind, ProviderStatus, Providers};
use crate::domain::notify::{Notifier, SecurityEvent};
use crate::domain::users::UserDirectory;
use crate::store::StoreError;

/// What a provider's status means for one factor pointing at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// The factor proves a second step (and so does the account's set of recovery codes).
    pub counts: bool,
    /// A new factor may be set up with this provider.
    pub can_add: bool,
    /// Users who have such a factor are told it is being retired (banner, one mail).
    pub nudged: bool,
}

/// The standing of a factor whose provider is `provider` (`None`: its id is not configured any
/// more, which counts as disabled: a factor never outlives its provider silently).
pub fn standing(provider: Option<&Provider>) -> Standing {
    let (counts, can_add, nudged) = match provider {
        None => (false, false, false),
        Some(p) => match p.status {
            ProviderStatus::Active => (true, true, false),
            ProviderStatus::Deprecated => (true, false, !p.from_switch),
            ProviderStatus::Disabled => (false, false, false),
        },
    };
    Standing { counts, can_add, nudged }
}

/// The provider kind that implements factors of `kind`.
pub fn kind_of(kind: FactorKind) -> ProviderKind {
    match kind {
        FactorKind::Totp => ProviderKind::Totp,
        FactorKind::Email => ProviderKind::Email,
        FactorKind::SecurityKey => ProviderKind::Webauthn,
    }
}

/// Every factor of the account, with the provider it points at (each security key apart).
pub fn factors_of(record: &AccountRecord) -> impl Iterator<Item = (FactorKind, &ProviderId)> {
    let app = record.totp.as_ref().map(|t| (FactorKind::Totp, &t.provider));
    let email = record.email.as_ref().map(|e| (FactorKind::Email, &e.provider));
    let keys = record.security_keys.iter().map(|k| (FactorKind::SecurityKey, &k.provider));
    app.into_iter().chain(email).chain(keys)
}

/// Whether the account has a factor of `kind` that counts.
pub fn counts(record: &AccountRecord, providers: &Providers, kind: FactorKind) -> bool {
    factors_of(record).any(|(k, id)| k == kind && standing(providers.get(id)).counts)
}

/// Whether the account has any second factor that counts: what the policy asks about.
pub fn has_counting_factor(record: &AccountRecord, providers: &Providers) -> bool {
    factors_of(record).any(|(_, id)| standing(providers.get(id)).counts)
}

/// The provider ids of the account's factors that do not count (disabled, or not configured).
pub fn not_counting<'a>(record: &'a AccountRecord, providers: &Providers) -> Vec<&'a ProviderId> {
    factors_of(record).filter(|(_, id)| !standing(providers.get(id)).counts).map(|(_, id)| id).collect()
}

/// An account that had second factors and has none that count now: stranded where 2FA is
/// required, without 2FA where it is optional.
pub fn is_stranded(record: &AccountRecord, providers: &Providers) -> bool {
    factors_of(record).next().is_some() && !has_counting_factor(record, providers)
}

/// The deprecated providers the account relies on, whose users are told.
pub fn retiring<'a>(record: &AccountRecord, providers: &'a Providers) -> Vec<&'a Provider> {
    let mut found: Vec<&Provider> =
        factors_of(record).filter_map(|(_, id)| providers.get(id)).filter(|p| standing(Some(p)).nudged).collect();
    found.dedup_by(|a, b| a.id == b.id);
    found
}

/// Whether a session's proof still stands: some second factor it used (`amr`, with the providers
/// of those factors, `proven_with`) still counts. A code from a factor whose provider was disabled
/// since proves nothing any more, so that session must prove a factor again, even when the
/// account has another factor of the same kind under a provider still on (two webauthn
/// providers, one switched off: the sessions its keys made are downgraded, the other's are not).
/// A recovery code or a remembered browser stands for the account's factors as long as one of
/// them counts. Sessions stored before providers were recorded (`proven_with` empty) are weighed
/// by the kind of factor alone. A security key counts only while that very key (`keys_used`, by
/// handle) is still on the account and its provider counts: removing a key takes back what it
/// proved, as the removal page promises.
pub fn proof_counts(
    amr: &[AuthMethod],
    (proven_with, keys_used): (&[ProviderId], &[String]),
    record: &AccountRecord,
    providers: &Providers,
) -> bool {
    let proven_kind = |kind: FactorKind| {
        factors_of(record).any(|(k, id)| {
            k == kind && standing(providers.get(id)).counts && (proven_with.is_empty() || proven_with.contains(id))
        })
    };
    let proven_key = || {
        if keys_used.is_empty() {
            return proven_kind(FactorKind::SecurityKey);
        }
        record.security_keys.iter().any(|k| keys_used.contains(&k.id) && standing(providers.get(&k.provider)).counts)
    };
    amr.iter().any(|method| match method {
        AuthMethod::Otp => proven_kind(FactorKind::Totp),
        AuthMethod::Email => proven_kind(FactorKind::Email),
        AuthMethod::Hwk | AuthMethod::Swk => proven_key(),
        AuthMethod::Rc | AuthMethod::RememberedBrowser => has_counting_factor(record, providers),
        // A provider's MFA (`mfa`) is weighed against the OIDC trust by the caller (`web/state.rs`).
        AuthMethod::Pwd | AuthMethod::Link | AuthMethod::User | AuthMethod::Fed | AuthMethod::Mfa => false,
    })
}

/// How many accounts have a factor pointing at each provider id (configured or not).
pub fn census<'a>(records: impl Iterator<Item = &'a AccountRecord>) -> BTreeMap<ProviderId, usize> {
    let mut users = BTreeMap::new();
    for record in records {
        let mut ids: Vec<&ProviderId> = factors_of(record).map(|(_, id)| id).collect();
        ids.sort();
        ids.dedup();
        for id in ids {
            *users.entry(id.clone()).or_insert(0) += 1;
        }
    }
    users
}

/// One provider as the operator sees it (`portcullis admin providers`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProviderRow {
    pub id: String,
    /// `totp`, `email`, `webauthn`; empty for an id factors point at that is not configured.
    pub kind: String,
    pub name: String,
    /// `active`, `deprecated`, `disabled`, or `not configured` (its factors count as disabled).
    pub status: String,
    /// Accounts with a factor pointing at it.
    pub users: usize,
}

/// The configured providers in their order, then ids factors point at that are not configured.
pub fn rows(providers: &Providers, census: &BTreeMap<ProviderId, usize>) -> Vec<ProviderRow> {
    let configured = providers.iter().map(|p| ProviderRow {
        id: p.id.to_string(),
        kind: p.kind.to_string(),
        name: p.name.clone(),
        status: p.status.to_string(),
        users: census.get(&p.id).copied().unwrap_or(0),
    });
    let unknown = census.iter().filter(|(id, _)| providers.get(id).is_none()).map(|(id, users)| ProviderRow {
        id: id.to_string(),
        kind: String::new(),
        name: String::new(),
        status: "not configured".into(),
        users: *users,
    });
    configured.chain(unknown).collect()
}

/// Logs every provider id that factors point at but the configuration no longer names: those
/// factors count as disabled, and the operator must hear so (at start-up and on reload).
pub fn warn_unconfigured(users: &UserDirectory, accounts: &Accounts, providers: &Providers) {
    let records: Vec<_> = users.all().iter().map(|user| accounts.get(user)).collect();
    for (id, count) in census(records.iter().map(|r| r.as_ref())) {
        if providers.get(&id).is_none() {
            tracing::warn!(
                provider = %id,
                accounts = count,
                "factors point at a provider that is not configured: they count as disabled (list it with status = \"disabled\" to say so, or \"active\" to bring them back)"
            );
        }
    }
}

/// Mails every user who relies on a deprecated provider, once per provider (remembered in the
/// account record, so neither a reload nor a restart mails them again). Returns how many mails
/// were queued.
pub async fn mail_retirements(
    users: &UserDirectory,
    accounts: &Accounts,
    notifier: &Notifier,
    providers: &Providers,
    now: UnixTime,
) -> Result<usize, StoreError> {
    let mut mailed = 0;
    let unmailed = |record: &AccountRecord| -> Vec<Provider> {
        retiring(record, providers).into_iter().filter(|p| !record.retirement_mailed.contains(&p.id)).cloned().collect()
    };
    for user in users.all() {
        if unmailed(&accounts.get(&user)).is_empty() {
            continue;
        }
        // Decided and remembered under the account's write lock, before the mail is queued: a
        // mail lost in a crash is better than one sent at every start.
        let unmailed = accounts
            .update(&user, |record| {
                let unmailed = unmailed(record);
                record.retirement_mailed.extend(unmailed.iter().map(|p| p.id.clone()));
                Ok::<_, StoreError>(unmailed)
            })
            .await?;
        if unmailed.is_empty() {
            continue;
        }
        let names = unmailed.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(" and ");
        let instead = providers.first_enrollable().map(|p| p.name.clone());
        tracing::info!(target: "portcullis::security", user = %user.name, providers = %names, "told of a retiring second step");
        notifier.send(&user, SecurityEvent::ProviderRetiring { names, instead }, now, false);
        mailed += 1;
    }
    Ok(mailed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::factors::{EmailFactorRecord, TotpRecord};

    fn provider(id: &str, kind: ProviderKind, status: ProviderStatus) -> Provider {
        Provider {
            id: ProviderId::parse(id).unwrap(),
            kind,
            name: kind.default_name().into(),
            status,
            from_switch: false,
        }
    }

    fn app_on(id: &str) -> AccountRecord {
        let totp = TotpRecord {
            sealed_secret: Vec::new(),
            enrolled_at: 1,
            last_used_at: None,
            last_step: 0,
            provider: ProviderId::parse(id).unwrap(),
        };
        AccountRecord { totp: Some(totp), ..Default::default() }
    }

    #[test]
    fn what_each_status_means() {
        use ProviderStatus::*;
        let table = [
            // status, from a switch, (counts, can add, nudged)
            (Some(Active), false, (true, true, false)),
            (Some(Deprecated), false, (true, false, true)),
            (Some(Deprecated), true, (true, false, false)), // mfa.totp = false: as before, silently
            (Some(Disabled), false, (false, false, false)),
            (None, false, (false, false, false)), // an id no longer configured: disabled
        ];
        for (status, from_switch, (counts, can_add, nudged)) in table {
            let p = status.map(|s| Provider { from_switch, ..provider("x", ProviderKind::Totp, s) });
            assert_eq!(standing(p.as_ref()), Standing { counts, can_add, nudged }, "{status:?} {from_switch}");
        }
    }

    #[test]
    fn an_account_counts_by_its_factors_providers() {
        let providers = Providers::new(vec![
            provider("totp", ProviderKind::Totp, ProviderStatus::Disabled),
            provider("totp-2", ProviderKind::Totp, ProviderStatus::Active),
            provider("email", ProviderKind::Email, ProviderStatus::Deprecated),
        ]);
        let stranded = app_on("totp");
        assert!(!has_counting_factor(&stranded, &providers));
        assert!(is_stranded(&stranded, &providers));
        assert_eq!(not_counting(&stranded, &providers), [&ProviderId::totp()]);
        assert!(!proof_counts(&[AuthMethod::Pwd, AuthMethod::Otp], (&[], &[]), &stranded, &providers));
        assert!(
            !proof_counts(&[AuthMethod::Pwd, AuthMethod::Rc], (&[], &[]), &stranded, &providers),
            "codes go with the factor"
        );
        assert!(!is_stranded(&AccountRecord::default(), &providers), "never had a factor: not stranded");

        let moved = app_on("totp-2");
        assert!(has_counting_factor(&moved, &providers) && counts(&moved, &providers, FactorKind::Totp));
        assert!(proof_counts(&[AuthMethod::Pwd, AuthMethod::Rc], (&[], &[]), &moved, &providers));
        let (old, new) = (ProviderId::totp(), ProviderId::parse("totp-2").unwrap());
        assert!(proof_counts(&[AuthMethod::Otp], (&[new], &[]), &moved, &providers));
        assert!(
            !proof_counts(&[AuthMethod::Otp], (&[old], &[]), &moved, &providers),
            "proven with the disabled provider's factor, though one of the same kind still counts"
        );

        let email = EmailFactorRecord {
            address: "a@example.com".into(),
            enrolled_at: 1,
            last_used_at: None,
            provider: ProviderId::email(),
        };
        let both = AccountRecord { email: Some(email), ..app_on("totp") };
        assert!(has_counting_factor(&both, &providers), "deprecated still counts");
        assert!(!counts(&both, &providers, FactorKind::Totp));
        assert!(proof_counts(&[AuthMethod::Email], (&[], &[]), &both, &providers));
        assert!(!proof_counts(&[AuthMethod::Otp], (&[], &[]), &both, &providers), "proven with the disabled app");
        assert_eq!(retiring(&both, &providers).iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["email"]);

        let unknown = app_on("gone");
        assert!(is_stranded(&unknown, &providers));
        let census = census([&stranded, &moved, &both, &unknown].into_iter());
        assert_eq!(census[&ProviderId::totp()], 2);
        assert_eq!(census[&ProviderId::email()], 1);
        assert_eq!(census[&ProviderId::parse("gone").unwrap()], 1);
    }

    #[test]
    fn stored_factors_from_before_providers_point_at_the_defaults() {
        let old = r#"{"totp":{"sealed_secret":[],"enrolled_at":1,"last_used_at":null,"last_step":0},
            "email":{"address":"a@example.com","enrolled_at":1,"last_used_at":null},"recovery_generated_at":null}"#;
        let record: AccountRecord = serde_json::from_str(old).unwrap();
        let ids: Vec<&str> = factors_of(&record).map(|(_, id)| id.as_str()).collect();
        assert_eq!(ids, ["totp", "email"]);
        assert!(has_counting_factor(&record, &Providers::from_switches(true, false)), "as before: both count");
    }
}
