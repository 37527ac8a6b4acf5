//! Known browsers: OWASP's "Slow Down Online Guessing Attacks with Device Cookies".
//!
//! After a complete sign-in (every factor the account needs), the browser gets a cookie naming
//! the account, signed with a key only the proxy has. When it later tries that account again, its
//! password attempts are regulated against the cookie alone, not against the account or the client
//! address: an attacker guessing the password from elsewhere, or a shared address paused by
//! someone else's mistakes, does not lock out a person on the browser they always use. The cookie
//! grants nothing else; the password is still checked, and a cookie that guesses wrong is paused
//! like an account.
//!
//! Two rules keep it from becoming a way around the limits: it is issued only once the session is
//! full (someone with only a stolen password cannot mint any for an account with a second factor),
//! and it names the password it was earned with (see [`User::password_tag`]), so a new password
//! makes every cookie earned with the old one worthless.
//!
//! The value is `payload.mac`, both base64url: the payload is the account, the password tag, a
//! random id (the regulation subject) and the issue time; the MAC is HMAC-SHA256 under a key
//! derived from `secrets.key`. Nothing is stored server side.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::base::clock::UnixTime;
use crate::base::secret::Secret;
use crate::domain::users::User;

/// How long a browser stays known after its last complete sign-in (each one renews it).
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

    /// A new cookie value for a browser that just signed in to `user` completely.
    pub fn issue(&self, user: &User, now: UnixTime) -> String {
        let id = URL_SAFE_NO_PAD.encode(crate::base::secret::random_bytes::<16>());
        let payload = format!("v2\n{}\n{}\n{id}\n{now}", user.name, user.password_tag());
        let mac = self.mac(payload.as_bytes()).finalize().into_bytes();
        format!("{}.{}", URL_SAFE_NO_PAD.encode(payload), URL_SAFE_NO_PAD.encode(mac))
    }

    /// The cookie's id, if `value` is a cookie we issued for `user`, under their current password,
    /// that has not run out.
    pub fn recognise(&self, value: &str, user: &User, now: UnixTime) -> Option<String> {
        let (payload, mac) = value.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        // Constant time: a forged cookie learns nothing from how long the refusal took.
        self.mac(&payload).verify_slice(&mac).ok()?;
        let text = String::from_utf8(payload).ok()?;
        let fields: Vec<&str> = text.split('\n').collect();
        let ["v2", named, tag, id, issued] = fields.as_slice() else { return None };
        let issued: UnixTime = issued.parse().ok()?;
        let current = *named == user.name.as_str() && *tag == user.password_tag();
        (current && now - issued < LIFETIME_SECONDS && issued <= now).then(|| id.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, password_hash: &str) -> User {
        User {
            name: crate::domain::users::Username::parse(name).unwrap(),
            display_name: name.into(),
            email: format!("{name}@example.com"),
            groups: vec![],
            password_hash: password_hash.into(),
            credential_stamp: crate::domain::users::credential_stamp(password_hash),
            account_key: name.into(),
        }
    }

    #[test]
    fn a_cookie_is_known_for_its_account_and_password_only_and_only_while_it_lasts() {
        let browsers = KnownBrowsers::new(&Secret::new(vec![7; 32]));
        let alice = user("alice", "$argon2id$one");
        let cookie = browsers.issue(&alice, 1_000);
        let id = browsers.recognise(&cookie, &alice, 2_000).expect("known");
        assert_eq!(id.len(), 22);
        let bob = user("bob", "$argon2id$one");
        assert_eq!(browsers.recognise(&cookie, &bob, 2_000), None, "another account");
        assert_eq!(browsers.recognise(&cookie, &user("alice", "$argon2id$two"), 2_000), None, "a new password");
        assert_eq!(browsers.recognise(&cookie, &alice, 1_000 + LIFETIME_SECONDS), None, "run out");
        let other_key = KnownBrowsers::new(&Secret::new(vec![8; 32]));
        assert_eq!(other_key.recognise(&cookie, &alice, 2_000), None, "not signed by us");
        // A forged payload with the old MAC.
        let (_, mac) = cookie.split_once('.').unwrap();
        let payload = format!("v2\nbob\n{}\nxyz\n1000", bob.password_tag());
        let forged = format!("{}.{mac}", URL_SAFE_NO_PAD.encode(payload));
        assert_eq!(browsers.recognise(&forged, &bob, 2_000), None);
        for garbage in ["", ".", "a.b", "%%%.%%%", &cookie[1..]] {
            assert_eq!(browsers.recognise(garbage, &alice, 2_000), None, "{garbage}");
        }
    }
}
