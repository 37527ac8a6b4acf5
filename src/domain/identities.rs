//! Which account an OpenID Connect identity is: the one it is linked to. Linking is explicit: an
//! operator links (`portcullis user link`), or, where the operator allowed it for the provider
//! (`link_by_verified_email`), an identity whose address the provider verified is linked to the
//! one account of the users file with that address. An identity no one linked signs nobody in.
//!
//! A linked identity's sign-in is a first factor like a password ([`OidcProof`]): the account's
//! second factor follows, unless the operator trusts the provider's own MFA for it
//! (`trust_provider_mfa`) and its ID token says it did some.

use std::sync::Arc;

use crate::base::clock::UnixTime;
use crate::config::oidc::OidcProvider;
use crate::domain::factors::Accounts;
use crate::domain::factors::LinkedIdentity;
use crate::domain::factors::proof::SecondFactorProof;
use crate::domain::oidc::OidcIdentity;
use crate::domain::users::{User, UserDirectory, Username};
use crate::store::StoreError;
use sha2::Digest;

/// A linked identity just proven by its provider: a first factor for its account. Only
/// [`resolve`] makes one.
pub struct OidcProof {
    user: Arc<User>,
}

impl OidcProof {
    pub fn user(&self) -> &Arc<User> {
        &self.user
    }

    pub(crate) fn into_user(self) -> Arc<User> {
        self.user
    }
}

/// What an identity the provider proved comes to.
pub enum Resolved {
    /// The account it is linked to (`linked_now`: by its verified address, just now).
    Account { proof: OidcProof, linked_now: bool, provider_mfa: Option<SecondFactorProof> },
    /// No account: nobody linked it (and no verified address links it).
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Linked to another account already (an identity is one account's).
    #[error("that identity is linked to another account")]
    OtherAccount,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Links `identity` (of `provider`) to `user`'s account; nothing happens if it already is.
pub async fn link(
    accounts: &Accounts,
    user: &User,
    (provider, issuer, subject): (&str, &str, &str),
    how: &str,
    now: UnixTime,
) -> Result<bool, LinkError> {
    accounts
        .update(user, |record| {
            match accounts.owner_of_identity(issuer, subject) {
                Some(owner) if owner == user.account_key => return Ok(false),
                Some(_) => return Err(LinkError::OtherAccount),
                None => {}
            }
            record.identities.push(LinkedIdentity {
                provider: provider.to_string(),
                issuer: issuer.to_string(),
                subject: subject.to_string(),
                linked_at: now,
                how: how.to_string(),
            });
            Ok(true)
        })
        .await
}

/// Unlinks the identity `subject` of `provider` from `user`'s account. Whether it was linked.
pub async fn unlink(accounts: &Accounts, user: &User, provider: &str, subject: &str) -> Result<bool, StoreError> {
    accounts
        .update(user, |record| {
            let before = record.identities.len();
            record.identities.retain(|i| !(i.provider == provider && i.subject == subject));
            Ok(record.identities.len() != before)
        })
        .await
}

/// The account `identity` is, linking it by its verified address where `provider` allows.
pub async fn resolve(
    accounts: &Accounts,
    users: &UserDirectory,
    provider: &OidcProvider,
    identity: &OidcIdentity,
    now: UnixTime,
) -> Result<Resolved, LinkError> {
    let mfa = |user: &User| trusted_mfa(provider, identity, user, now);
    if let Some(user) =
        accounts.owner_of_identity(&identity.issuer, &identity.subject).and_then(|key| users.by_account_key(&key))
    {
        let provider_mfa = mfa(&user);
        return Ok(Resolved::Account { proof: OidcProof { user }, linked_now: false, provider_mfa });
    }
    if !(provider.link_by_verified_email && identity.email_verified) {
        return create(accounts, users, provider, identity, now).await;
    }
    let Some(address) = &identity.email else { return create(accounts, users, provider, identity, now).await };
    // Only the users file's accounts, and only one: an address two accounts share links neither.
    let owners: Vec<Arc<User>> = users
        .all()
        .into_iter()
        .filter(|u| u.email.eq_ignore_ascii_case(address) && users.get_local(u.name.as_str()).is_some())
        .collect();
    let user = match owners.as_slice() {
        [only] => only.clone(),
        _ => return create(accounts, users, provider, identity, now).await,
    };
    match link(accounts, &user, (&provider.id, &identity.issuer, &identity.subject), "verified-email", now).await {
        Ok(_) => {}
        Err(LinkError::OtherAccount) => return Ok(Resolved::Unknown),
        Err(e) => return Err(e),
    }
    let provider_mfa = mfa(&user);
    Ok(Resolved::Account { proof: OidcProof { user }, linked_now: true, provider_mfa })
}

/// An account of its own for an identity linked to none, where the provider allows it
/// (`create_accounts`): named after its `preferred_username` (or its address, or its subject),
/// with a name no other account has, in `default_groups`, its address only if the provider
/// verified it. The account key is derived from the identity, so the same identity always comes
/// back to the same account (its factors included), also after a restart.
async fn create(
    accounts: &Accounts,
    users: &UserDirectory,
    provider: &OidcProvider,
    identity: &OidcIdentity,
    now: UnixTime,
) -> Result<Resolved, LinkError> {
    if !provider.create_accounts {
        return Ok(Resolved::Unknown);
    }
    let digest = sha2::Sha256::digest(LinkedIdentity::key(&identity.issuer, &identity.subject).as_bytes());
    let hex: String = crate::base::text::hex(&digest[..16]);
    let account_key = format!("oidc:{hex}");
    let wanted = identity
        .preferred_username
        .clone()
        .or_else(|| identity.email.as_ref().and_then(|e| e.split('@').next().map(str::to_string)))
        .unwrap_or_default()
        .to_ascii_lowercase();
    let base: String = wanted.chars().filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c)).take(48).collect();
    let base = base.trim_start_matches(['.', '_', '-']).to_string();
    let base = if base.is_empty() { format!("user-{}", &hex[..8]) } else { base };
    let candidates = std::iter::once(base.clone()).chain((2..100).map(|n| format!("{base}-{n}")));
    let free = |name: &str| users.get(name).is_none_or(|u| u.account_key == account_key);
    let Some(name) = candidates.filter_map(|n| Username::parse(&n).ok()).find(|n| free(n.as_str())) else {
        return Ok(Resolved::Unknown);
    };
    let user = Arc::new(User {
        display_name: identity.name.clone().unwrap_or_else(|| name.to_string()),
        email: identity
            .email
            .clone()
            .filter(|e| identity.email_verified && crate::domain::users::check_email(e).is_ok())
            .unwrap_or_default(),
        groups: provider.default_groups.clone(),
        password_hash: String::new(),
        credential_stamp: sha2::Sha256::digest(account_key.as_bytes())[..16].try_into().unwrap_or([0; 16]),
        account_key,
        name,
    });
    users.remember_from_directory(user.clone());
    match link(accounts, &user, (&provider.id, &identity.issuer, &identity.subject), "created", now).await {
        Ok(_) => {}
        Err(LinkError::OtherAccount) => return Ok(Resolved::Unknown),
        Err(e) => return Err(e),
    }
    tracing::info!(target: "portcullis::security", user = %user.name, provider = %provider.id, "account made for a new identity");
    let provider_mfa = trusted_mfa(provider, identity, &user, now);
    Ok(Resolved::Account { proof: OidcProof { user }, linked_now: false, provider_mfa })
}

/// The provider's MFA as the second factor, where the operator trusts it for that and the ID
/// token says it did some within this sign-in (see [`provider_did_mfa`]).
fn trusted_mfa(
    provider: &OidcProvider,
    identity: &OidcIdentity,
    user: &User,
    now: UnixTime,
) -> Option<SecondFactorProof> {
    (provider.trust_provider_mfa && provider_did_mfa(&identity.amr, identity.auth_time, now))
        .then(|| SecondFactorProof::from_trusted_provider(user, &provider.id))
}

/// Whether an ID token says its provider did multi-factor authentication within this sign-in:
/// `amr` has "mfa", or two methods of which one is a second factor's (`["pwd","otp"]`); one
/// method alone (`["sms"]`, a passwordless login) is one factor, whatever it is. And
/// `auth_time` falls within the sign-in (the request asked for `max_age`): an old session at the
/// provider is not a factor proven now.
fn provider_did_mfa(amr: &[String], auth_time: Option<UnixTime>, now: UnixTime) -> bool {
    let values: std::collections::BTreeSet<&str> = amr.iter().map(String::as_str).collect();
    let said =
        values.contains("mfa") || (values.len() >= 2 && values.iter().any(|v| OidcProvider::MFA_VALUES.contains(v)));
    let recent = auth_time.is_some_and(|at| at <= now + 60 && now - at < crate::domain::oidc::LIFETIME);
    said && recent
}

#[cfg(test)]
mod tests {
    use super::provider_did_mfa;

    #[test]
    fn only_several_methods_done_just_now_are_a_providers_mfa() {
        let amr = |values: &[&str]| values.iter().map(|v| v.to_string()).collect::<Vec<_>>();
        let now = 1_800_000_000;
        assert!(provider_did_mfa(&amr(&["pwd", "mfa"]), Some(now - 5), now));
        assert!(provider_did_mfa(&amr(&["pwd", "otp"]), Some(now - 5), now));
        assert!(provider_did_mfa(&amr(&["mfa"]), Some(now), now));
        for single in ["sms", "otp", "hwk", "swk", "pwd"] {
            assert!(!provider_did_mfa(&amr(&[single]), Some(now), now), "{single} alone is one factor");
        }
        assert!(!provider_did_mfa(&amr(&["pwd", "mfa"]), Some(now - 30 * 86_400), now), "an old sign-in there");
        assert!(!provider_did_mfa(&amr(&["pwd", "mfa"]), None, now), "no auth_time: not known to be now");
        assert!(!provider_did_mfa(&amr(&["pwd", "MFA"]), Some(now), now), "values are case-sensitive");
    }
}
