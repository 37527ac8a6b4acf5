//! Secrets at rest. TOTP secrets must be readable by the proxy (it computes codes from them), so
//! they cannot be hashed; they are sealed with XChaCha20-Poly1305 under a key kept in the data
//! directory (`secrets.key`, mode 0600), separate from the database. A stolen database without
//! the key reveals no secret. The same key file also yields the pepper for recovery codes.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use crate::base::secret::{Secret, random_bytes};

const NONCE: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("a sealed secret could not be opened: wrong secrets.key, or the record is damaged")]
    Open,
    #[error("sealing failed")]
    Seal,
}

/// Keys derived from the secrets key file, one per purpose (domain-separated hashes of a
/// high-entropy key, so no two uses can ever be confused).
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    pepper: Secret,
    browser_key: Secret,
}

fn derive(master: &Secret, purpose: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"portcullis v1 ");
    hash.update(purpose.as_bytes());
    hash.update([0]);
    hash.update(master.expose());
    hash.finalize().into()
}

impl Sealer {
    pub fn new(master: &Secret) -> Self {
        let key: Key = derive(master, "seal totp secrets").into();
        Self {
            cipher: XChaCha20Poly1305::new(&key),
            pepper: Secret::new(derive(master, "recovery code pepper").to_vec()),
            browser_key: Secret::new(derive(master, "known browser cookies").to_vec()),
        }
    }

    pub fn pepper(&self) -> &Secret {
        &self.pepper
    }

    /// The key that signs known-browser cookies (see `known_browser.rs`).
    pub fn browser_key(&self) -> &Secret {
        &self.browser_key
    }

    /// `nonce || ciphertext`.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let nonce_bytes = random_bytes::<NONCE>();
        let nonce: XNonce = nonce_bytes.into();
        let sealed = self.cipher.encrypt(&nonce, plaintext).map_err(|_| SealError::Seal)?;
        Ok([nonce_bytes.as_slice(), &sealed].concat())
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Secret, SealError> {
        if sealed.len() <= NONCE {
            return Err(SealError::Open);
        }
        let (nonce_bytes, body) = sealed.split_at(NONCE);
        let nonce: XNonce = <[u8; NONCE]>::try_from(nonce_bytes).map_err(|_| SealError::Open)?.into();
        self.cipher.decrypt(&nonce, body).map(Secret::new).map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_the_right_key() {
        let sealer = Sealer::new(&Secret::new(b"k".repeat(64)));
        let sealed = sealer.seal(b"totp secret bytes").unwrap();
        assert!(!sealed.windows(17).any(|w| w == b"totp secret bytes"));
        assert_eq!(sealer.open(&sealed).unwrap().expose(), b"totp secret bytes");
        let other = Sealer::new(&Secret::new(b"j".repeat(64)));
        assert!(other.open(&sealed).is_err());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(sealer.open(&tampered).is_err());
    }
}
