//! Known browsers: OWASP's "Slow Down Online Guessing Attacks with Device Cookies".
//!
//! After a right password, the browser gets a cookie naming the account, signed with a key only
//! the proxy has. When it later tries that account again, its attempts are regulated against the
//! cookie alone, not against the account or the client address: an attacker guessing the password
//! from elsewhere, or a shared address paused by someone else's mistakes, does not lock out a
//! person on the browser they always use. The cookie grants nothing else; the password is still
//! checked, and a cookie that guesses wrong is paused like an account.
//!
//! The value is `payload.mac`, both base64url: the payload is the account, a random id (the
//! regulation subject) and the issue time; the MAC is HMAC-SHA256 under a key derived from
//! `secrets.key`. Nothing is stored server side.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::clock::UnixTime;
use crate::secret::Secret;

/// How long a browser stays known after its last right password (each sign-in renews it).
pub const LIFETIME_SECONDS: i64 = 180 * 24 * 3600;

pub struct KnownBrowsers {
    key: Secret,
}

impl KnownBrowsers {
    pub fn new(key: &Secret) -> Self {
        Self { key: key.clone() }
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.expose()).expect("HMAC takes any key length");
        mac.update(payload);
        mac
    }

    /// A new cookie value for a browser that just proved `user`'s password.
    pub fn issue(&self, user: &str, now: UnixTime) -> String {
        let id = URL_SAFE_NO_PAD.encode(crate::secret::random_bytes::<16>());
        let payload = format!("v1\n{user}\n{id}\n{now}");
        let mac = self.mac(payload.as_bytes()).finalize().into_bytes();
        format!("{}.{}", URL_SAFE_NO_PAD.encode(payload), URL_SAFE_NO_PAD.encode(mac))
    }

    /// The cookie's id, if `value` is a cookie we issued for `user` that has not run out.
    pub fn recognise(&self, value: &str, user: &str, now: UnixTime) -> Option<String> {
        let (payload, mac) = value.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        // Constant time: a forged cookie learns nothing from how long the refusal took.
        self.mac(&payload).verify_slice(&mac).ok()?;
        let text = String::from_utf8(payload).ok()?;
        let mut fields = text.split('\n');
        let (version, named, id, issued) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
        let issued: UnixTime = issued.parse().ok()?;
        (version == "v1"
            && named == user
            && fields.next().is_none()
            && now - issued < LIFETIME_SECONDS
            && issued <= now)
            .then(|| id.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_known_for_its_account_only_and_only_while_it_lasts() {
        let browsers = KnownBrowsers::new(&Secret::new(vec![7; 32]));
        let cookie = browsers.issue("alice", 1_000);
        let id = browsers.recognise(&cookie, "alice", 2_000).expect("known");
        assert_eq!(id.len(), 22);
        assert_eq!(browsers.recognise(&cookie, "bob", 2_000), None, "another account");
        assert_eq!(browsers.recognise(&cookie, "alice", 1_000 + LIFETIME_SECONDS), None, "run out");
        let other_key = KnownBrowsers::new(&Secret::new(vec![8; 32]));
        assert_eq!(other_key.recognise(&cookie, "alice", 2_000), None, "not signed by us");
        // A forged payload with the old MAC.
        let (_, mac) = cookie.split_once('.').unwrap();
        let forged = format!("{}.{mac}", URL_SAFE_NO_PAD.encode("v1\nbob\nxyz\n1000"));
        assert_eq!(browsers.recognise(&forged, "bob", 2_000), None);
        for garbage in ["", ".", "a.b", "%%%.%%%", &cookie[1..]] {
            assert_eq!(browsers.recognise(garbage, "alice", 2_000), None, "{garbage}");
        }
    }
}
