//! Setup state kept server side between page loads, per session: never in a cookie, and never
//! shared between two sessions of one user.

use dashmap::DashMap;

use crate::base::clock::UnixTime;
use crate::base::secret::Secret;
use crate::domain::factors::proof::SecondFactorProof;
use crate::domain::factors::security_key::{RegistrationCeremony, SignInCeremony};
use crate::domain::factors::totp;
use crate::domain::session::SessionKey;

#[derive(Default)]
pub struct Pending(DashMap<SessionKey, PendingState>);

#[derive(Default)]
struct PendingState {
    /// The secret being set up, until a code from it is entered.
    totp_secret: Option<(Secret, UnixTime)>,
    /// Recovery codes just made, until the user confirms they saved them.
    codes: Option<Vec<String>>,
    /// The proof of the factor just set up in a half-logged-in session, which makes the session
    /// full once the codes are saved.
    enrolled_with: Option<SecondFactorProof>,
    /// A security key registration in progress (WebAuthn L3 §7.1): one per session, replaced by
    /// a newer one, taken (so used at most once) by the form that finishes it.
    key_registration: Option<RegistrationCeremony>,
    /// A security key assertion in progress (§7.2), likewise.
    key_sign_in: Option<SignInCeremony>,
}

impl Pending {
    /// The secret being set up for this session, kept across reloads (so a code from an app that
    /// already scanned it still works) until it is `max_age` seconds old.
    pub fn secret(&self, key: &SessionKey, now: UnixTime, max_age: i64) -> Secret {
        let mut state = self.0.entry(key.clone()).or_default();
        match &state.totp_secret {
            Some((secret, made)) if now - made < max_age => secret.clone(),
            _ => {
                let secret = Secret::new(totp::new_secret());
                state.totp_secret = Some((secret.clone(), now));
                secret
            }
        }
    }

    /// Takes the secret being set up, if it is still fresh.
    pub fn take_secret(&self, key: &SessionKey, now: UnixTime, max_age: i64) -> Option<(Secret, UnixTime)> {
        let mut state = self.0.get_mut(key)?;
        state.totp_secret.take().filter(|(_, made)| now - made < max_age)
    }

    /// Puts back a secret whose code was wrong, so the next code from the same app works.
    pub fn keep_secret(&self, key: &SessionKey, secret: Secret, made: UnixTime) {
        self.0.entry(key.clone()).or_default().totp_secret = Some((secret, made));
    }

    pub fn put_key_registration(&self, key: &SessionKey, ceremony: RegistrationCeremony) {
        self.0.entry(key.clone()).or_default().key_registration = Some(ceremony);
    }

    pub fn take_key_registration(&self, key: &SessionKey) -> Option<RegistrationCeremony> {
        self.0.get_mut(key)?.key_registration.take()
    }

    pub fn put_key_sign_in(&self, key: &SessionKey, ceremony: SignInCeremony) {
        self.0.entry(key.clone()).or_default().key_sign_in = Some(ceremony);
    }

    pub fn take_key_sign_in(&self, key: &SessionKey) -> Option<SignInCeremony> {
        self.0.get_mut(key)?.key_sign_in.take()
    }

    pub fn put_codes(&self, key: &SessionKey, codes: Vec<String>) {
        self.0.entry(key.clone()).or_default().codes = Some(codes);
    }

    pub fn codes(&self, key: &SessionKey) -> Option<Vec<String>> {
        self.0.get(key).and_then(|s| s.codes.clone())
    }

    /// Keeps the proof of a factor set up in a half-logged-in session, with the codes to confirm.
    pub fn put_enrollment(&self, key: &SessionKey, codes: Vec<String>, proof: SecondFactorProof) {
        let mut state = self.0.entry(key.clone()).or_default();
        state.codes = Some(codes);
        state.enrolled_with = Some(proof);
    }

    /// Whether this session set up its first factor and has yet to confirm the codes.
    pub fn is_enrolling(&self, key: &SessionKey) -> bool {
        self.0.get(key).is_some_and(|s| s.enrolled_with.is_some())
    }

    /// Ends the setup: the proof it holds, if any.
    pub fn finish(&self, key: &SessionKey) -> Option<SecondFactorProof> {
        self.0.remove(key).and_then(|(_, state)| state.enrolled_with)
    }

    pub fn forget(&self, key: &SessionKey) {
        self.0.remove(key);
    }

    /// Drops state for sessions that no longer exist (abandoned enrollments).
    pub fn retain_live(&self, is_live: impl Fn(&SessionKey) -> bool) {
        self.0.retain(|key, _| is_live(key));
    }

    /// Moves state to a session's new id after rotation.
    pub fn rekey(&self, from: &SessionKey, to: &SessionKey) {
        if let Some((_, state)) = self.0.remove(from) {
            self.0.insert(to.clone(), state);
        }
    }
}
