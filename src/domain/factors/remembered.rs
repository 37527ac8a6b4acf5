//! "Remember this browser" (`mfa.remember_device`): after a second factor, a browser may be
//! remembered for a while, and then signing in from it asks only for the password.
//!
//! Each remembered browser is a record on the *account* (so it is listed on the account page and
//! can be forgotten one by one), holding only the SHA-256 of a 256-bit token that lives in the
//! browser's cookie, and the tag of the password it was remembered under (see
//! `User::password_tag`). It is forgotten when the user signs out everywhere, turns two-step
//! verification off, or an operator ends their sessions or resets it; and it stops working when
//! the password changes, however it is changed (the account page, the CLI, the users file). It stands in for the second factor
//! at sign-in only: it never counts as a fresh one, so sensitive changes still ask for a code.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::base::clock::UnixTime;
use crate::domain::users::User;

/// At most this many browsers per account; remembering one more forgets the oldest.
pub const MAX_PER_ACCOUNT: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RememberedBrowser {
    /// A random id for the account page's "forget" form (not the token).
    pub id: String,
    /// SHA-256 of the cookie's token, hex.
    pub digest: String,
    /// The password it was remembered under; another password does not match it.
    #[serde(default)]
    pub password: String,
    /// The browser in words, and the address it was remembered from.
    pub browser: String,
    pub address: String,
    pub created_at: UnixTime,
    pub expires_at: UnixTime,
    pub last_used_at: Option<UnixTime>,
}

pub(super) fn digest_of(token: &str) -> String {
    crate::base::text::hex(&Sha256::digest(token.as_bytes()))
}

/// A new token for the cookie, and the record that remembers it for `user`'s current password.
pub fn remember(
    user: &User,
    browser: String,
    address: String,
    now: UnixTime,
    lifetime: i64,
) -> (String, RememberedBrowser) {
    let token = crate::base::secret::random_token();
    let record = RememberedBrowser {
        id: crate::base::secret::random_token()[..16].to_string(),
        digest: digest_of(&token),
        password: user.password_tag(),
        browser,
        address,
        created_at: now,
        expires_at: now + lifetime,
        last_used_at: None,
    };
    (token, record)
}
