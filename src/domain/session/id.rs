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
        // Into the stack: 43 characters may hold 33 bytes to a decoder that has not looked at
        // the last one yet, so the buffer has room for them and the length is checked after.
        let mut bytes = [0u8; 33];
        match URL_SAFE_NO_PAD.decode_slice(value, &mut bytes) {
            Ok(32) => Some(Self(bytes[..32].try_into().ok()?)),
            _ => None,
        }
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
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey([u8; 32]);

impl std::hash::Hash for SessionKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

/// Hashes [`SessionKey`]s for the in-memory map by taking their first 8 bytes as they are. A key
/// is a SHA-256 output, already spread evenly, and only keys of sessions the proxy made (from 256
/// random bits) are ever stored, so there is nothing for a keyed hash (SipHash, the default) to
/// defend against: a cookie an attacker picks is only ever looked up, and a lookup's cost depends
/// on the stored keys alone. It saves SipHash over 32 bytes, twice per lookup, on every request.
#[derive(Clone, Copy, Default)]
pub struct KeyHash;

impl std::hash::BuildHasher for KeyHash {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }

    /// Only [`SessionKey`] is hashed with this; anything else still gets every byte mixed in.
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

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

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn keys_sharing_their_first_bytes_are_still_told_apart() {
        let a = SessionId::generate().key();
        let mut twin = a.0;
        twin[31] ^= 1;
        let b = SessionKey(twin);
        assert_eq!(KeyHash.hash_one(&a), KeyHash.hash_one(&b), "only the first 8 bytes are hashed");
        let map = dashmap::DashMap::with_hasher(KeyHash);
        map.insert(a.clone(), 1);
        map.insert(b.clone(), 2);
        assert_eq!((map.len(), *map.get(&a).unwrap(), *map.get(&b).unwrap()), (2, 1, 2));
        assert_ne!(KeyHash.hash_one(&a), KeyHash.hash_one(SessionId::generate().key()));
    }

    #[test]
    fn a_cookie_is_read_back_only_in_the_exact_encoding_we_hand_out() {
        let id = SessionId::generate();
        let cookie = id.cookie_value();
        assert_eq!(SessionId::from_cookie(&cookie).map(|back| back.0), Some(id.0));
        // The last of 43 characters carries 4 bits: its 2 low bits must be zero, so no second
        // spelling of the same id is accepted.
        let last = cookie.as_bytes()[42];
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let index = alphabet.iter().position(|&c| c == last).unwrap();
        let twin = format!("{}{}", &cookie[..42], alphabet[index | 1] as char);
        assert!(SessionId::from_cookie(&twin).is_none(), "non-canonical last character accepted");
        for bad in [&cookie[..42], &format!("{cookie}A"), &format!("{}=", &cookie[..42]), &format!("+{}", &cookie[1..])]
        {
            assert!(SessionId::from_cookie(bad).is_none(), "{bad:?} accepted");
        }
        assert!(SessionId::from_cookie(&"A".repeat(43)).is_some_and(|zero| zero.0 == [0; 32]));
    }
}
