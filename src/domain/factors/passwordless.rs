//! Signing in with a passkey alone (`webauthn.passwordless`): a discoverable credential (WebAuthn
//! L3 §6.2.2, a "client-side discoverable credential") tells the browser which account it belongs
//! to, so the login page asks for no name and no password. The authenticator must verify its user
//! (§6.2.3, UV), which makes the key and that verification two factors at once: the only
//! first factor here that yields a [`PasskeyProof`], and with it a full session.
//!
//! The assertion names its credential and the user handle stored with it (§5.4.3). Neither is
//! signed by itself, so the account is found by the credential id (registered to one account
//! only, see `accounts.rs`), and the user handle must be that account's: a response that pairs
//! one account's credential with another's handle proves nothing.

use std::sync::Arc;

use webauthn_rs::prelude::{DiscoverableAuthentication, PublicKeyCredential, RequestChallengeResponse, WebauthnError};

use super::proof::PasskeyProof;
use super::security_key::{CEREMONY_LIFETIME, KeyError, RelyingParty, user_handle};
use super::service::SecondFactors;
use crate::base::clock::UnixTime;
use crate::config::Providers;
use crate::domain::users::{User, UserDirectory};

/// A passkey sign-in in progress: kept server side for the browser that loaded the login page
/// (keyed by its login form token, see `web/pending_sign_ins.rs`), used once, for
/// [`CEREMONY_LIFETIME`].
#[derive(serde::Serialize, serde::Deserialize)]
pub struct PasskeyCeremony {
    state: DiscoverableAuthentication,
    started_at: UnixTime,
}

impl PasskeyCeremony {
    pub fn started_at(&self) -> UnixTime {
        self.started_at
    }

    /// Whether it may still be finished at `now`.
    pub fn is_live(&self, now: UnixTime) -> bool {
        now >= self.started_at && now - self.started_at < CEREMONY_LIFETIME
    }
}

impl std::fmt::Debug for PasskeyCeremony {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasskeyCeremony").field("started_at", &self.started_at).finish_non_exhaustive()
    }
}

/// Starts a passkey sign-in: options with no allowed credentials (the authenticator offers the
/// discoverable ones it holds for this RP ID), user verification required, and the browser told
/// it may offer them in the name field's autofill (conditional mediation, WebAuthn L3 §5.1.4.1).
pub fn start_passkey_sign_in(
    rp: &RelyingParty,
    now: UnixTime,
) -> Result<(RequestChallengeResponse, PasskeyCeremony), KeyError> {
    let (options, state) = rp.start_discoverable_authentication().map_err(|e| KeyError::Unavailable(e.to_string()))?;
    Ok((options, PasskeyCeremony { state, started_at: now }))
}

/// Why a passkey did not sign in, and whose key it was when that is known (a key whose counter
/// went backwards is its owner's news).
#[derive(Debug)]
pub struct PasskeyRefused {
    pub why: KeyError,
    pub owner: Option<Arc<User>>,
}

impl From<KeyError> for PasskeyRefused {
    fn from(why: KeyError) -> Self {
        Self { why, owner: None }
    }
}

impl SecondFactors {
    /// Finishes a passkey sign-in with the browser's `response` (JSON): finds the account the
    /// credential belongs to, checks the assertion against that key (signature, challenge,
    /// origin, RP ID, user verification), and records it as a sign-in with the key does (counter,
    /// provider). Every refusal is the same to the browser; the reason is for the log.
    pub async fn finish_passkey_sign_in(
        &self,
        rp: &RelyingParty,
        users: &UserDirectory,
        ceremony: PasskeyCeremony,
        response: &str,
        providers: &Providers,
        now: UnixTime,
    ) -> Result<PasskeyProof, PasskeyRefused> {
        if !ceremony.is_live(now) {
            return Err(KeyError::Expired.into());
        }
        let credential: PublicKeyCredential = serde_json::from_str(response).map_err(|_| KeyError::Malformed)?;
        let (handle, cred_id) =
            rp.identify_discoverable_authentication(&credential).map_err(|_| KeyError::Malformed)?;
        let user = self
            .accounts
            .owner_of_key(cred_id)
            .and_then(|account| users.by_account_key(&account))
            .ok_or(KeyError::UnknownKey)?;
        if user_handle(&user) != handle {
            return Err(KeyError::UnknownKey.into());
        }
        let refused = |why: KeyError| PasskeyRefused { why, owner: Some(Arc::clone(&user)) };
        let record = self.accounts.get(&user);
        let key = record
            .security_keys
            .iter()
            .find(|k| {
                let id: &[u8] = k.passkey.cred_id().as_ref();
                id == cred_id
            })
            .filter(|k| super::providers::standing(providers.get(&k.provider)).counts)
            .ok_or_else(|| refused(KeyError::UnknownKey))?;
        let result = rp
            .finish_discoverable_authentication_v2(&credential, ceremony.state, &key.passkey)
            .map_err(|e| match e {
                WebauthnError::CredentialPossibleCompromise => KeyError::PossibleClone { name: key.name.clone() },
                other => KeyError::Refused(other.to_string()),
            })
            .map_err(refused)?;
        // webauthn-rs asks for user verification and refuses an assertion without it; checked
        // again because everything here rests on it.
        if !result.user_verified() {
            return Err(refused(KeyError::Refused("the authenticator did not verify its user".into())));
        }
        let proof = self.record_assertion(&user, &result, providers, now).await.map_err(refused)?;
        Ok(PasskeyProof::new(proof, Arc::clone(&user)))
    }
}
