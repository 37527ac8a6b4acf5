//! Session ids and the keys sessions are stored under.
//!
//! Ids are 256 random bits in the cookie. The store and the in-memory cache key sessions by the
//! SHA-256 of the id, so a copied database holds no usable cookie, and looking a session up by its
//! hash leaks nothing useful through timing.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::base::secret::random_bytes;

/// The secret a browser holds. Never logged, never stored.
pub struct SessionId([u8; 32]);

impl SessionId {
    pub(super) fn generate() -> Self {
        Self(random_bytes())
    }

    /// Accepts exactly the encoding we hand out: 43 base64url characters, 32 bytes.
    pub fn from_cookie(value: &str) -> Option<Self> {
        if value.len() != 43 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(value).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    pub fn cookie_value(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    pub fn key(&self) -> SessionKey {
        SessionKey(Sha256::digest(self.0).into())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(<redacted>)")
    }
}

/// How a session is stored and found: the SHA-256 of its id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    /// A short, non-secret reference for logs (a prefix of the hash, not of the id).
    pub fn log_ref(&self) -> String {
        crate::base::text::hex(&self.0[..4])
    }

    /// How the account page names a session in its "sign out this one" form: a prefix of the
    /// hash (not of the id, so it cannot be turned into a cookie), only ever matched against the
    /// same user's sessions.
    pub fn handle(&self) -> String {
        crate::base::text::hex(&self.0[..8])
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({}…)", self.log_ref())
    }
}
