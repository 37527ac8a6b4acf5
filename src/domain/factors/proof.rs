//! Proofs: values only verification can make. A session becomes full with one of these, never
//! with a list of methods its caller writes down, so "the code was right" is a type fact: the
//! only way to hold a [`SecondFactorProof`] is to have had a code, a security key's answer (or a
//! remembered browser) checked by this module tree.
//!
//! ```compile_fail,E0451
//! use portcullis::domain::factors::proof::{AuthMethod, SecondFactorProof};
//! // Outside the factors module nobody can make one up...
//! let made_up = SecondFactorProof { method: AuthMethod::Otp, account: "alice".into(), provider: None, key: None };
//! ```
//!
//! ```compile_fail,E0624
//! use portcullis::domain::factors::proof::{AuthMethod, SecondFactorProof};
//! use portcullis::domain::users::User;
//! // ...nor call the constructor the verifiers use.
//! fn made_up(user: &User) -> SecondFactorProof {
//!     SecondFactorProof::new(AuthMethod::Otp, user)
//! }
//! ```
//!
//! And a session is promoted only with a proof, never with a list of methods, and only from
//! inside the crate (the web layer, after the domain checked the code):
//!
//! ```compile_fail,E0624
//! use portcullis::domain::factors::proof::SecondFactorProof;
//! use portcullis::domain::session::{PartialSession, Sessions};
//! async fn promote(sessions: &Sessions, partial: PartialSession, proof: SecondFactorProof) {
//!     let _ = sessions.promote(partial, proof).await;
//! }
//! ```

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::config::ProviderId;
use crate::domain::users::User;

/// How a factor was proven, as RFC 8176 "amr" values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// Password (RFC 8176 §2).
    Pwd,
    /// One-time password: a TOTP code (RFC 8176 §2).
    Otp,
    /// A one-time code sent by email. Not an RFC 8176 value either (its "otp" would hide which
    /// kind was used, and NIST SP 800-63B does not accept email for AAL2); documented likewise.
    Email,
    /// A one-time recovery code. Not an RFC 8176 value (it has none for backup codes); documented
    /// in the README so upstreams can tell a recovery from a normal login.
    Rc,
    /// A browser the user asked to be remembered after proving a second factor in it
    /// (`mfa.remember_device`). Not an RFC 8176 value: no factor was proven in this session, so it
    /// never counts as a fresh second factor (step-up still asks for one).
    #[serde(rename = "device")]
    RememberedBrowser,
    /// A security key or device-bound passkey: proof of possession of a hardware-protected key
    /// (RFC 8176 §2 "hwk"), with user verification (WebAuthn L3 §6.2.3).
    Hwk,
    /// A passkey the authenticator says may be synced between devices (WebAuthn L3 §6.1.3,
    /// the BE flag): a software-protected key (RFC 8176 §2 "swk").
    Swk,
    /// The second factor an OpenID Connect provider checked and the operator trusts it for
    /// (`trust_provider_mfa`): RFC 8176 §2 "mfa".
    Mfa,
    /// Signed in through an OpenID Connect provider: a federated identity, the first factor.
    /// Not an RFC 8176 value (it has none for federation); documented in the README.
    Fed,
    /// A one-time sign-in link sent by email (`[login.email_link]`): the first factor, proving
    /// the mailbox. Not an RFC 8176 value (it has none for it); documented in the README.
    Link,
    /// The authenticator verified its user (its PIN or a biometric; WebAuthn L3 §6.2.3, the UV
    /// flag) when a passkey signed in by itself. RFC 8176 §2 "user" names a test of the user at the
    /// device; it has no value for "PIN or biometric, not said which", and the authenticator does
    /// not say.
    User,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pwd => "pwd",
            Self::Otp => "otp",
            Self::Rc => "rc",
            Self::Email => "email",
            Self::RememberedBrowser => "device",
            Self::Hwk => "hwk",
            Self::Swk => "swk",
            Self::User => "user",
            Self::Link => "link",
            Self::Mfa => "mfa",
            Self::Fed => "fed",
        }
    }

    /// Whether an emailed code may be the second factor after this first factor. Not after a
    /// sign-in link: both would prove the same mailbox, one factor twice (NIST SP 800-63B §5.1.3:
    /// the out-of-band channel must be separate from the primary one).
    pub fn allows_email_codes_after(self) -> bool {
        self != Self::Link
    }

    /// What a record from before first factors were kept proved: a password.
    pub fn password() -> Self {
        Self::Pwd
    }

    /// Whether this stands in for the second factor the policy may ask for.
    pub fn is_second_factor(self) -> bool {
        matches!(self, Self::Otp | Self::Rc | Self::Email | Self::RememberedBrowser | Self::Hwk | Self::Swk | Self::Mfa)
    }

    /// Whether NIST SP 800-63B accepts this as the second factor of AAL2: an OTP device (§5.1.4)
    /// or a look-up secret (§5.1.2), or a multi-factor cryptographic authenticator (§5.1.9, a
    /// WebAuthn credential with user verification; synced passkeys count at AAL2). Not an emailed code (§5.1.3.1 rules out email for
    /// out-of-band authenticators) and not a remembered browser (nothing was proven now).
    pub fn meets_aal2(self) -> bool {
        matches!(self, Self::Otp | Self::Rc | Self::Hwk | Self::Swk)
    }

    /// Whether this is a second factor proven just now (what step-up asks for).
    pub fn is_fresh_second_factor(self) -> bool {
        matches!(self, Self::Otp | Self::Rc | Self::Email | Self::Hwk | Self::Swk | Self::Mfa)
    }
}

/// A second factor proven just now (an app code, an emailed code, a recovery code, a security
/// key), or a
/// remembered browser standing in for one at sign-in. Neither `Clone` nor `Copy`: promoting a
/// session spends it.
#[derive(Debug, PartialEq, Eq)]
pub struct SecondFactorProof {
    method: AuthMethod,
    /// Whose factor it was ([`User::account_key`]): a proof for one account never promotes
    /// another's session.
    account: String,
    /// The provider of the factor that was proven (`[[mfa.provider]]`); none for a recovery code
    /// or a remembered browser, which stand for the account's factors as a whole. A session keeps
    /// it, so disabling that provider takes back what the proof earned even when another provider
    /// of the same kind stays on.
    provider: Option<ProviderId>,
    /// The security key that answered (its handle, `SecurityKeyRecord::id`), for a key: a
    /// session made with a key lasts only as long as that key is on the account.
    key: Option<String>,
}

impl SecondFactorProof {
    /// Only the verifiers of this module tree prove factors. For a recovery code or a remembered
    /// browser (no provider of their own).
    pub(super) fn new(method: AuthMethod, user: &User) -> Self {
        debug_assert!(matches!(method, AuthMethod::Rc | AuthMethod::RememberedBrowser));
        Self { method, account: user.account_key.clone(), provider: None, key: None }
    }

    /// The second factor an OpenID Connect provider says it checked (its ID token's `amr`), for a
    /// provider the operator trusts for it (`trust_provider_mfa`). Recorded under the provider
    /// `oidc_<id>`, so a session made with it stands only while that trust does.
    pub(in crate::domain) fn from_trusted_provider(user: &User, oidc_provider: &str) -> Self {
        let provider = ProviderId::parse(&format!("oidc_{oidc_provider}"));
        Self { method: AuthMethod::Mfa, account: user.account_key.clone(), provider, key: None }
    }

    /// A factor of `provider` proven by `user`.
    pub(super) fn of_provider(method: AuthMethod, user: &User, provider: &ProviderId) -> Self {
        debug_assert!(method.is_fresh_second_factor());
        Self { method, account: user.account_key.clone(), provider: Some(provider.clone()), key: None }
    }

    /// The security key `key` (its handle), of `provider`, answered for `user`.
    pub(super) fn of_key(method: AuthMethod, user: &User, provider: &ProviderId, key: &str) -> Self {
        Self { key: Some(key.to_string()), ..Self::of_provider(method, user, provider) }
    }

    pub fn method(&self) -> AuthMethod {
        self.method
    }

    /// The provider of the factor proven, if it has one.
    pub fn provider(&self) -> Option<&ProviderId> {
        self.provider.as_ref()
    }

    /// The handle of the security key that answered, for a key.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Whether this proves `user`'s factor.
    pub fn is_for(&self, user: &User) -> bool {
        self.account == user.account_key
    }

    /// For unit tests of what happens after a second factor (sessions), without checking one.
    #[cfg(test)]
    pub(crate) fn for_tests(method: AuthMethod, user: &User) -> Self {
        Self { method, account: user.account_key.clone(), provider: None, key: None }
    }
}

/// A passkey that signed in by itself (`webauthn.passwordless`): a discoverable credential whose
/// authenticator verified its user (PIN or biometric, WebAuthn L3 §6.2.3). Possession of the key
/// and that verification are two factors at once (NIST SP 800-63B §5.1.9, a multi-factor
/// cryptographic authenticator), so the session it starts is full from the start, with `amr`
/// `["hwk", "user"]` (or `"swk"`), and no password. Only `passwordless.rs` makes one.
#[derive(Debug)]
pub struct PasskeyProof {
    key: SecondFactorProof,
    user: Arc<User>,
}

impl PasskeyProof {
    pub(super) fn new(key: SecondFactorProof, user: Arc<User>) -> Self {
        Self { key, user }
    }

    pub fn user(&self) -> &Arc<User> {
        &self.user
    }

    /// `hwk` or `swk`.
    pub fn method(&self) -> AuthMethod {
        self.key.method
    }

    /// The provider of the key.
    pub fn provider(&self) -> Option<&ProviderId> {
        self.key.provider.as_ref()
    }

    /// The key's handle: the session it starts lasts only as long as this key signs in.
    pub fn key(&self) -> Option<&str> {
        self.key.key()
    }
}

/// A proof as kept between two requests of one flow (the codes of a first setup are confirmed on
/// the next page): sealed with the install's key, so only this install makes one it will take
/// back, and a store that holds it learns nothing.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeptProof {
    method: AuthMethod,
    account: String,
    provider: Option<ProviderId>,
    key: Option<String>,
}

impl SecondFactorProof {
    /// Spends the proof into sealed bytes, for [`SecondFactorProof::unseal`] on a later request.
    pub fn seal(self, sealer: &super::sealing::Sealer) -> Option<Vec<u8>> {
        let kept = KeptProof { method: self.method, account: self.account, provider: self.provider, key: self.key };
        let bytes = zeroize::Zeroizing::new(serde_json::to_vec(&kept).ok()?);
        sealer.seal(&bytes).ok()
    }

    /// The proof [`SecondFactorProof::seal`] made, if `sealed` is one.
    pub fn unseal(sealer: &super::sealing::Sealer, sealed: &[u8]) -> Option<Self> {
        let opened = sealer.open(sealed).ok()?;
        let kept: KeptProof = serde_json::from_slice(opened.expose()).ok()?;
        Some(Self { method: kept.method, account: kept.account, provider: kept.provider, key: kept.key })
    }
}
