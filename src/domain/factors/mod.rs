//! Second factors, owned by the *account* (not by a login method): an authenticator app (TOTP),
//! codes by email, one-time recovery codes, and remembered browsers standing in for them, kept
//! security keys and passkeys (WebAuthn), kept together in one [`AccountRecord`] per user ([`Accounts`]).
//!
//! Checking a factor happens here ([`SecondFactors`]), and only here can a
//! [`proof::SecondFactorProof`] be made: what a session needs to become full.

pub mod accounts;
pub mod email;
pub mod passwordless;
pub mod proof;
pub mod providers;
pub mod qr;
pub mod records;
pub mod recovery;
pub mod remembered;
pub mod sealing;
pub mod security_key;
pub mod service;
pub mod totp;
pub mod webauthn;

pub use accounts::Accounts;
pub use records::{AccountRecord, EmailFactorRecord, FactorKind, LinkedIdentity, RecoveryLinkRecord, TotpRecord};
pub use service::SecondFactors;
