//! The password rules and the argon2id primitives (RFC 9106), with nothing else in them: the
//! users file checks its hashes with these, and the CLI hashes new passwords.

use argon2::{Argon2, PasswordHasher as _};

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("too many sign-ins are being checked right now")]
    Busy,
    #[error("password hashing failed: {0}")]
    Internal(String),
}

/// Hashes a new password with argon2id and the crate's recommended parameters (OWASP's: 19 MiB,
/// 2 passes, 1 lane). Synchronous: for the CLI, or inside [`super::PasswordChecker`].
pub fn hash(password: &[u8]) -> Result<String, HashError> {
    Argon2::default().hash_password(password).map(|h| h.to_string()).map_err(|e| HashError::Internal(e.to_string()))
}

/// Why a new password is refused (NIST SP 800-63B §3.1.1.2: at least 8 characters, and long
/// passphrases allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WeakPassword {
    #[error("the password must have at least 8 characters")]
    TooShort,
    #[error("the password is longer than 1024 bytes")]
    TooLong,
}

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The rule every new password must meet, whoever sets it (the CLI or the account page).
pub fn check_new_password(password: &str) -> Result<(), WeakPassword> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(WeakPassword::TooShort);
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(WeakPassword::TooLong);
    }
    Ok(())
}

/// Whether `hash` is a PHC string we can verify against.
pub fn is_valid_hash(hash: &str) -> bool {
    argon2::PasswordHash::new(hash).is_ok()
}
