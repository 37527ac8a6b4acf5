//! Setup state kept server side between page loads, per session: never in a cookie, and never
//! shared between two sessions of one user. Held as a flow ([`Flows`]): in memory for one
//! process, sealed in the shared store for replicas, so a setup begun on one replica finishes on
//! another.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::base::clock::UnixTime;
use crate::base::secret::Secret;
use crate::domain::factors::proof::SecondFactorProof;
use crate::domain::factors::sealing::Sealer;
use crate::domain::factors::security_key::{RegistrationCeremony, SignInCeremony};
use crate::domain::factors::totp;
use crate::domain::flows::Flows;
use crate::domain::session::SessionKey;
use crate::store::StoreError;

/// How long setup state is kept after its last change. The steps themselves are shorter (a
/// secret is good for `session.partial_timeout`, a key ceremony for five minutes).
const KEPT_FOR: Duration = Duration::from_secs(30 * 60);

pub struct Pending {
    flows: Flows,
    /// Seals the proof a first setup earned until the codes are confirmed.
    sealer: Sealer,
}

#[derive(Default, Serialize, Deserialize)]
struct PendingState {
    /// The secret being set up, until a code from it is entered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    totp_secret: Option<(Vec<u8>, UnixTime)>,
    /// Recovery codes just made, until the user confirms they saved them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    codes: Option<Vec<String>>,
    /// The proof of the factor just set up in a half-logged-in session (sealed), which makes the
    /// session full once the codes are saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enrolled_with: Option<Vec<u8>>,
    /// A security key registration in progress (WebAuthn L3 §7.1): one per session, replaced by
    /// a newer one, taken (so used at most once) by the form that finishes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_registration: Option<RegistrationCeremony>,
    /// A security key assertion in progress (§7.2), likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_sign_in: Option<SignInCeremony>,
}

impl PendingState {
    fn is_empty(&self) -> bool {
        self.totp_secret.is_none()
            && self.codes.is_none()
            && self.enrolled_with.is_none()
            && self.key_registration.is_none()
            && self.key_sign_in.is_none()
    }
}

impl Drop for PendingState {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        if let Some((secret, _)) = &mut self.totp_secret {
            secret.zeroize();
        }
        if let Some(codes) = &mut self.codes {
            codes.iter_mut().for_each(Zeroize::zeroize);
        }
    }
}

fn flow_key(session: &SessionKey) -> String {
    let hex: String = crate::base::text::hex(session.as_bytes());
    format!("setup:{hex}")
}

impl Pending {
    pub fn new(flows: Flows, sealer: Sealer) -> Self {
        Self { flows, sealer }
    }

    /// Reads the session's state, lets `change` look at it and change it, and keeps the result.
    async fn change<T>(
        &self,
        session: &SessionKey,
        mut change: impl FnMut(&mut PendingState) -> T,
    ) -> Result<T, StoreError> {
        self.flows
            .update(&flow_key(session), KEPT_FOR, |current| {
                let mut state: PendingState = current.and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
                let outcome = change(&mut state);
                let new = if state.is_empty() { None } else { serde_json::to_vec(&state).ok() };
                (new, outcome)
            })
            .await
    }

    /// The secret being set up for this session, kept across reloads (so a code from an app that
    /// already scanned it still works) until it is `max_age` seconds old.
    pub async fn secret(&self, key: &SessionKey, now: UnixTime, max_age: i64) -> Result<Secret, StoreError> {
        let fresh = Secret::new(totp::new_secret());
        self.change(key, |state| match &state.totp_secret {
            Some((secret, made)) if now - made < max_age => Secret::new(secret.clone()),
            _ => {
                state.totp_secret = Some((fresh.expose().to_vec(), now));
                fresh.clone()
            }
        })
        .await
    }

    /// Takes the secret being set up, if it is still fresh.
    pub async fn take_secret(
        &self,
        key: &SessionKey,
        now: UnixTime,
        max_age: i64,
    ) -> Result<Option<(Secret, UnixTime)>, StoreError> {
        self.change(key, |state| {
            let (secret, made) = state.totp_secret.take()?;
            (now - made < max_age).then(|| (Secret::new(secret.clone()), made))
        })
        .await
    }

    /// Puts back a secret whose code was wrong, so the next code from the same app works.
    pub async fn keep_secret(&self, key: &SessionKey, secret: Secret, made: UnixTime) -> Result<(), StoreError> {
        self.change(key, |state| state.totp_secret = Some((secret.expose().to_vec(), made))).await
    }

    pub async fn put_key_registration(
        &self,
        key: &SessionKey,
        ceremony: RegistrationCeremony,
    ) -> Result<(), StoreError> {
        // Each try of the compare-and-swap needs its own copy (a ceremony is not `Clone`).
        let kept = serde_json::to_value(&ceremony).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.change(key, |state| state.key_registration = serde_json::from_value(kept.clone()).ok()).await
    }

    pub async fn take_key_registration(&self, key: &SessionKey) -> Result<Option<RegistrationCeremony>, StoreError> {
        self.change(key, |state| state.key_registration.take()).await
    }

    pub async fn put_key_sign_in(&self, key: &SessionKey, ceremony: SignInCeremony) -> Result<(), StoreError> {
        let kept = serde_json::to_value(&ceremony).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.change(key, |state| state.key_sign_in = serde_json::from_value(kept.clone()).ok()).await
    }

    pub async fn take_key_sign_in(&self, key: &SessionKey) -> Result<Option<SignInCeremony>, StoreError> {
        self.change(key, |state| state.key_sign_in.take()).await
    }

    pub async fn put_codes(&self, key: &SessionKey, codes: Vec<String>) -> Result<(), StoreError> {
        self.change(key, |state| state.codes = Some(codes.clone())).await
    }

    pub async fn codes(&self, key: &SessionKey) -> Result<Option<Vec<String>>, StoreError> {
        self.change(key, |state| state.codes.clone()).await
    }

    /// Keeps the proof of a factor set up in a half-logged-in session, with the codes to confirm.
    pub async fn put_enrollment(
        &self,
        key: &SessionKey,
        codes: Vec<String>,
        proof: SecondFactorProof,
    ) -> Result<(), StoreError> {
        let sealed =
            proof.seal(&self.sealer).ok_or_else(|| StoreError::Corrupt("a proof could not be sealed".into()))?;
        self.change(key, |state| {
            state.codes = Some(codes.clone());
            state.enrolled_with = Some(sealed.clone());
        })
        .await
    }

    /// Whether this session set up its first factor and has yet to confirm the codes.
    pub async fn is_enrolling(&self, key: &SessionKey) -> Result<bool, StoreError> {
        self.change(key, |state| state.enrolled_with.is_some()).await
    }

    /// Ends the setup: the proof it holds, if any.
    pub async fn finish(&self, key: &SessionKey) -> Result<Option<SecondFactorProof>, StoreError> {
        let sealed = self.change(key, |state| std::mem::take(state).enrolled_with.take()).await?;
        Ok(sealed.and_then(|sealed| SecondFactorProof::unseal(&self.sealer, &sealed)))
    }

    /// Ends whatever the session was setting up (logged, not returned: nothing depends on it
    /// but tidiness, and the state runs out by itself).
    pub async fn forget(&self, key: &SessionKey) {
        if let Err(e) = self.flows.end(&flow_key(key)).await {
            tracing::warn!(session = %key.log_ref(), "setup state left to run out: {e}");
        }
    }

    /// Drops setup state that ran out (a shared store drops its own).
    pub fn sweep(&self) {
        self.flows.sweep();
    }

    /// Moves state to a session's new id after rotation, but never the proof of a first setup:
    /// it was for the half-logged-in session, and the new one is full already (left in place, a
    /// session sent back to the second step later could spend it instead of proving a factor).
    pub async fn rekey(&self, from: &SessionKey, to: &SessionKey) -> Result<(), StoreError> {
        let moved = self.flows.update(&flow_key(from), KEPT_FOR, |current| (None, current.map(<[u8]>::to_vec))).await?;
        let Some(mut state) = moved.and_then(|bytes| serde_json::from_slice::<PendingState>(&bytes).ok()) else {
            return Ok(());
        };
        state.enrolled_with = None;
        if state.is_empty() {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.flows.update(&flow_key(to), KEPT_FOR, |_| (Some(bytes.clone()), ())).await
    }
}
