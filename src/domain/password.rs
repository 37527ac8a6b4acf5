//! Password hashing (argon2id, RFC 9106) kept off the async workers.
//!
//! Hashing is deliberately expensive: tens of milliseconds of a core and ~19 MiB of memory per
//! attempt. Run on the tokio workers, a burst of logins would stall every proxied request. So each
//! hash runs on the blocking pool, at most `hash_workers` at once, and when more than
//! `queue_limit` logins are already waiting, new ones are turned away at once ([`HashError::Busy`])
//! instead of queueing without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::{Argon2, PasswordHasher as _, PasswordVerifier as _};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("too many sign-ins are being checked right now")]
    Busy,
    #[error("password hashing failed: {0}")]
    Internal(String),
}

/// Hashes a new password with argon2id and the crate's recommended parameters (OWASP's: 19 MiB,
/// 2 passes, 1 lane). Synchronous: for the CLI, or inside [`PasswordChecker`].
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

fn verify_sync(password: &[u8], hash: &str) -> bool {
    Argon2::default().verify_password(password, hash).is_ok()
}

pub struct PasswordChecker {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue_limit: usize,
    /// Checked when the user does not exist, so an unknown name costs the same time as a wrong
    /// password and timing does not reveal which accounts exist.
    decoy_hash: String,
}

impl PasswordChecker {
    pub fn new(hash_workers: usize, queue_limit: usize) -> Result<Self, HashError> {
        let decoy = crate::base::secret::random_bytes::<32>();
        Ok(Self {
            slots: Arc::new(Semaphore::new(hash_workers)),
            waiting: AtomicUsize::new(0),
            queue_limit,
            decoy_hash: hash(&decoy)?,
        })
    }

    /// Checks `password` against `stored` (the user's hash, or `None` for an unknown user, which
    /// never matches but takes as long).
    pub async fn verify(&self, password: Zeroizing<String>, stored: Option<&str>) -> Result<bool, HashError> {
        let user_exists = stored.is_some();
        let hash = stored.unwrap_or(&self.decoy_hash).to_string();
        let matched = self.on_a_slot(move || Ok(verify_sync(password.as_bytes(), &hash))).await?;
        Ok(matched && user_exists)
    }

    /// Hashes a new password, on the same bounded slots as sign-ins.
    pub async fn hash(&self, password: Zeroizing<String>) -> Result<String, HashError> {
        self.on_a_slot(move || hash(password.as_bytes())).await
    }

    /// Runs `work` on the blocking pool once a hashing slot is free, or refuses at once when the
    /// queue for slots is full.
    async fn on_a_slot<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue_limit {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(HashError::Busy);
        }
        let permit = self.slots.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let permit = permit.map_err(|e| HashError::Internal(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| HashError::Internal(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn right_password_matches_wrong_and_unknown_do_not() {
        let checker = PasswordChecker::new(1, 4).unwrap();
        let stored = hash(b"correct horse").unwrap();
        assert!(stored.starts_with("$argon2id$"));
        let ok = checker.verify(Zeroizing::new("correct horse".into()), Some(&stored)).await.unwrap();
        let wrong = checker.verify(Zeroizing::new("battery staple".into()), Some(&stored)).await.unwrap();
        let unknown = checker.verify(Zeroizing::new("correct horse".into()), None).await.unwrap();
        assert_eq!((ok, wrong, unknown), (true, false, false));
    }

    #[tokio::test]
    async fn a_full_queue_turns_logins_away_instead_of_growing() {
        let checker = Arc::new(PasswordChecker::new(1, 1).unwrap());
        let stored = hash(b"pw").unwrap();
        // Hold the only hashing slot so the next caller has to wait in the queue.
        let held = checker.slots.clone().acquire_owned().await.unwrap();
        let waiting = {
            let (checker, stored) = (checker.clone(), stored.clone());
            tokio::spawn(async move { checker.verify(Zeroizing::new("pw".into()), Some(&stored)).await })
        };
        while checker.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        let turned_away = checker.verify(Zeroizing::new("pw".into()), Some(&stored)).await;
        assert!(matches!(turned_away, Err(HashError::Busy)));
        drop(held);
        assert!(waiting.await.unwrap().unwrap());
    }
}
