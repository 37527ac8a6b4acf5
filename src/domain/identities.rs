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
use crate::domain::users::{User, UserDirectory};
use crate::store::StoreError;

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
    let mfa = |user: &User| {
        let said_mfa = identity.amr.iter().any(|value| OidcProvider::MFA_VALUES.contains(&value.as_str()));
        (provider.trust_provider_mfa && said_mfa).then(|| SecondFactorProof::from_trusted_provider(user, &provider.id))
    };
    if let Some(user) =
        accounts.owner_of_identity(&identity.issuer, &identity.subject).and_then(|key| users.by_account_key(&key))
    {
        let provider_mfa = mfa(&user);
        return Ok(Resolved::Account { proof: OidcProof { user }, linked_now: false, provider_mfa });
    }
    if !(provider.link_by_verified_email && identity.email_verified) {
        return Ok(Resolved::Unknown);
    }
    let Some(address) = &identity.email else { return Ok(Resolved::Unknown) };
    // Only the users file's accounts, and only one: an address two accounts share links neither.
    let owners: Vec<Arc<User>> = users
        .all()
        .into_iter()
        .filter(|u| u.email.eq_ignore_ascii_case(address) && users.get_local(u.name.as_str()).is_some())
        .collect();
    let user = match owners.as_slice() {
        [only] => only.clone(),
        _ => return Ok(Resolved::Unknown),
    };
    match link(accounts, &user, (&provider.id, &identity.issuer, &identity.subject), "verified-email", now).await {
        Ok(_) => {}
        Err(LinkError::OtherAccount) => return Ok(Resolved::Unknown),
        Err(e) => return Err(e),
    }
    let provider_mfa = mfa(&user);
    Ok(Resolved::Account { proof: OidcProof { user }, linked_now: true, provider_mfa })
}
