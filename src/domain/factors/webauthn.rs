//! The WebAuthn ceremonies' steps on an account's factors (WebAuthn Level 3 §7.1 registration,
//! §7.2 authentication): the only place a security key yields a [`SecondFactorProof`]. What is
//! stored and the rules the steps apply are in `security_key.rs`.

use webauthn_rs::prelude::{
    AttestationMetadata, AuthenticationResult, CreationChallengeResponse, Passkey, PublicKeyCredential,
    RegisterPublicKeyCredential, RequestChallengeResponse, WebauthnError,
};

use webauthn_rs_proto::ResidentKeyRequirement;

use super::proof::{AuthMethod, SecondFactorProof};
use super::security_key::{
    KeyError, MAX_PER_ACCOUNT, NewKeyRules, RegistrationCeremony, RegistrationState, RelyingParty, SecurityKeyRecord,
    SignInCeremony, clean_name, counter_acceptable, handle_of, registered_flags, still_valid, user_handle,
};
use super::service::{Enrolled, RemoveError, SecondFactors, Verified};
use crate::base::clock::UnixTime;
use crate::domain::users::User;

/// The longest credential id accepted (WebAuthn L3 §7.1 step 25).
const MAX_CREDENTIAL_ID_BYTES: usize = 1023;

fn method_for(backup_eligible: bool) -> AuthMethod {
    if backup_eligible { AuthMethod::Swk } else { AuthMethod::Hwk }
}

impl SecondFactors {
    /// Starts registering a new key for `user` (the browser is told to skip keys it has already),
    /// under `rules`. With `discoverable` (passkeys may sign in by themselves), the authenticator
    /// is asked to keep the credential so it can offer it at the login page (`residentKey:
    /// "preferred"`, WebAuthn L3 §5.4.6): a key that cannot still registers, as a second step
    /// only. With `attested`, the key is asked for direct attestation (§5.4.7), which the finish
    /// checks against the allowed roots and models (§7.1 steps 19–23, §8).
    pub fn start_key_registration(
        &self,
        rp: &RelyingParty,
        user: &User,
        rules: NewKeyRules,
        now: UnixTime,
    ) -> Result<(CreationChallengeResponse, RegistrationCeremony), KeyError> {
        let record = self.accounts.get(user);
        if record.security_keys.len() >= MAX_PER_ACCOUNT {
            return Err(KeyError::TooMany);
        }
        let exclude = Some(record.security_keys.iter().map(|k| k.passkey.cred_id().clone()).collect());
        let unavailable = |e: WebauthnError| KeyError::Unavailable(e.to_string());
        let (handle, name, display) = (user_handle(user), user.name.as_str(), user.display_name.as_str());
        let (mut options, state) = match rules.attested {
            None => rp
                .start_passkey_registration(handle, name, display, exclude)
                .map(|(options, state)| (options, RegistrationState::Plain(state)))
                .map_err(unavailable)?,
            Some(roots) => rp
                .start_attested_passkey_registration(handle, name, display, exclude, roots, None)
                .map(|(options, state)| (options, RegistrationState::Attested(state)))
                .map_err(unavailable)?,
        };
        if rules.discoverable
            && let Some(selection) = options.public_key.authenticator_selection.as_mut()
        {
            selection.resident_key = Some(ResidentKeyRequirement::Preferred);
        }
        Ok((options, RegistrationCeremony { state, account: user.account_key.clone(), started_at: now }))
    }

    /// Finishes a registration with the browser's `response` (JSON): the key is saved under
    /// `name`, and its attestation proves the factor (with user verification, §7.1 step 16).
    pub async fn finish_key_registration(
        &self,
        rp: &RelyingParty,
        user: &User,
        ceremony: RegistrationCeremony,
        response: &str,
        (name, provider, providers): (&str, &crate::config::ProviderId, &crate::config::Providers),
        now: UnixTime,
    ) -> Result<Enrolled, KeyError> {
        still_valid(&ceremony.account, ceremony.started_at, user, now)?;
        let name = clean_name(name)?;
        let credential: RegisterPublicKeyCredential =
            serde_json::from_str(response).map_err(|_| KeyError::Malformed)?;
        let refused = |e: WebauthnError| KeyError::Refused(e.to_string());
        let (passkey, attested_model) = match &ceremony.state {
            RegistrationState::Plain(state) => {
                (rp.finish_passkey_registration(&credential, state).map_err(refused)?, None)
            }
            RegistrationState::Attested(state) => {
                let attested = rp.finish_attested_passkey_registration(&credential, state).map_err(refused)?;
                let model = match &attested.attestation().metadata {
                    AttestationMetadata::Packed { aaguid } | AttestationMetadata::Tpm { aaguid, .. } => {
                        Some(aaguid.to_string())
                    }
                    _ => None,
                };
                (Passkey::from(attested), model)
            }
        };
        // §7.1 step 25 (L3): a credential id longer than 1023 bytes is refused; it is no real
        // authenticator's, and would bloat every record and options list it joins.
        if passkey.cred_id().len() > MAX_CREDENTIAL_ID_BYTES {
            return Err(KeyError::Refused(format!("a credential id over {MAX_CREDENTIAL_ID_BYTES} bytes")));
        }
        let (backup_eligible, sign_count) = registered_flags(&passkey);
        let id = handle_of(&passkey);
        let method = method_for(backup_eligible);
        let record = SecurityKeyRecord {
            id,
            name,
            passkey,
            created_at: now,
            last_used_at: Some(now),
            backup_eligible,
            sign_count,
            provider: provider.clone(),
            attested_model,
        };
        let pepper = self.sealer().pepper();
        self.accounts
            .update(user, |account| {
                // One credential, one account (§7.1 step 25): the same key registered to a second
                // account would make a passwordless sign-in ambiguous, and lets one account's
                // owner vouch for another. Checked under the accounts' write lock.
                let cred_id: &[u8] = record.passkey.cred_id().as_ref();
                if self.accounts.owner_of_key(cred_id).is_some() {
                    return Err(KeyError::AlreadyRegistered);
                }
                if account.security_keys.len() >= MAX_PER_ACCOUNT {
                    return Err(KeyError::TooMany);
                }
                // The first factor that counts gets a new set of codes, as the app and email do:
                // codes left from factors whose provider was disabled went with them.
                let first = !super::providers::has_counting_factor(account, providers);
                let proof = SecondFactorProof::of_key(method, user, provider, &record.id);
                account.security_keys.push(record.clone());
                let new_codes = super::service::first_factor_codes(account, first, pepper, now);
                Ok(Enrolled { proof, new_codes })
            })
            .await
    }

    /// Starts an assertion with any of `user`'s keys (§7.2), with user verification required.
    pub fn start_key_sign_in(
        &self,
        rp: &RelyingParty,
        user: &User,
        providers: &crate::config::Providers,
        now: UnixTime,
    ) -> Result<(RequestChallengeResponse, SignInCeremony), KeyError> {
        let record = self.accounts.get(user);
        // Only keys whose provider still counts are asked for (a disabled one's prove nothing).
        let passkeys: Vec<Passkey> = record
            .security_keys
            .iter()
            .filter(|k| super::providers::standing(providers.get(&k.provider)).counts)
            .map(|k| k.passkey.clone())
            .collect();
        if passkeys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        let (options, state) =
            rp.start_passkey_authentication(&passkeys).map_err(|e| KeyError::Unavailable(e.to_string()))?;
        Ok((options, SignInCeremony { state, account: user.account_key.clone(), started_at: now }))
    }

    /// Checks an assertion (`response`, JSON) against the ceremony and the stored key: the only
    /// way a key yields a [`SecondFactorProof`]. The counter is compared with the stored one under
    /// the account's write lock, so two assertions signed out of order (what a cloned key
    /// produces) cannot both pass.
    pub async fn verify_key(
        &self,
        rp: &RelyingParty,
        user: &User,
        ceremony: SignInCeremony,
        response: &str,
        providers: &crate::config::Providers,
        now: UnixTime,
    ) -> Result<Verified, KeyError> {
        still_valid(&ceremony.account, ceremony.started_at, user, now)?;
        let credential: PublicKeyCredential = serde_json::from_str(response).map_err(|_| KeyError::Malformed)?;
        let clone_of = |cred_id: &[u8]| {
            let record = self.accounts.get(user);
            let name = record.security_keys.iter().find(|k| {
                let id: &[u8] = k.passkey.cred_id().as_ref();
                id == cred_id
            });
            KeyError::PossibleClone { name: name.map_or_else(String::new, |k| k.name.clone()) }
        };
        let result = rp.finish_passkey_authentication(&credential, &ceremony.state).map_err(|e| match e {
            WebauthnError::CredentialPossibleCompromise => clone_of(&credential.raw_id),
            other => KeyError::Refused(other.to_string()),
        })?;
        let proof = self.record_assertion(user, &result, providers, now).await?;
        Ok(Verified { proof, recovery_codes_left: None })
    }

    /// Records a verified assertion on the key that made it, and proves the factor: the counter is
    /// compared with the stored one under the account's write lock, so two assertions signed out
    /// of order (what a cloned key produces) cannot both pass, and only a key whose provider still
    /// counts proves anything.
    pub(super) async fn record_assertion(
        &self,
        user: &User,
        result: &AuthenticationResult,
        providers: &crate::config::Providers,
        now: UnixTime,
    ) -> Result<SecondFactorProof, KeyError> {
        self.accounts
            .update(user, |account| {
                let key = account
                    .security_keys
                    .iter_mut()
                    .find(|k| k.passkey.cred_id() == result.cred_id())
                    .filter(|k| super::providers::standing(providers.get(&k.provider)).counts)
                    .ok_or(KeyError::UnknownKey)?;
                let seen = result.counter();
                if !counter_acceptable(key.sign_count, seen) {
                    return Err(KeyError::PossibleClone { name: key.name.clone() });
                }
                key.sign_count = seen;
                key.passkey.update_credential(result);
                key.last_used_at = Some(now);
                // The BE flag may only go from false to true (§6.1.3); a synced passkey is "swk".
                key.backup_eligible |= result.backup_eligible();
                let method = method_for(key.backup_eligible);
                Ok(SecondFactorProof::of_key(method, user, &key.provider, &key.id))
            })
            .await
    }

    /// Removes one key (by its handle). Returns its name and whether another factor remains;
    /// with the last factor gone, 2FA is off and its backups go too. Where it is `required`, the
    /// last factor stays.
    pub async fn remove_key(
        &self,
        user: &User,
        id: &str,
        required: bool,
        providers: &crate::config::Providers,
    ) -> Result<(String, bool), RemoveError> {
        use super::providers::{counts, standing};
        use super::records::FactorKind;
        self.accounts
            .update(user, |record| {
                let index = record.security_keys.iter().position(|k| k.id == id).ok_or(RemoveError::NothingToRemove)?;
                // Another factor that counts (a disabled provider's factors do not).
                let others = record
                    .security_keys
                    .iter()
                    .enumerate()
                    .any(|(i, k)| i != index && standing(providers.get(&k.provider)).counts)
                    || counts(record, providers, FactorKind::Totp)
                    || counts(record, providers, FactorKind::Email);
                if required && !others {
                    return Err(RemoveError::LastRequired);
                }
                let removed = record.security_keys.remove(index);
                if !others {
                    record.recovery_codes.clear();
                    record.recovery_generated_at = None;
                    record.primary = None;
                    record.remembered.clear();
                }
                Ok((removed.name, others))
            })
            .await
    }
}

#[cfg(test)]
#[path = "webauthn_tests.rs"]
mod tests;
