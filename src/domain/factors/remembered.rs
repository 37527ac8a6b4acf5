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
use subtle::ConstantTimeEq;

use super::AccountRecord;
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

fn digest_of(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
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

impl AccountRecord {
    /// Adds a remembered browser, dropping run-out ones and, past the cap, the oldest.
    pub fn add_remembered(&mut self, browser: RememberedBrowser, now: UnixTime) {
        self.remembered.retain(|b| b.expires_at > now);
        self.remembered.push(browser);
        while self.remembered.len() > MAX_PER_ACCOUNT {
            self.remembered.remove(0);
        }
    }

    /// The remembered browser whose cookie holds `token`, if it has not run out and was
    /// remembered under `user`'s current password. Every digest is compared in constant time.
    pub fn remembered_by_token(&self, token: &str, user: &User, now: UnixTime) -> Option<usize> {
        let given = digest_of(token);
        let password = user.password_tag();
        let mut found = None;
        for (index, browser) in self.remembered.iter().enumerate() {
            let same = bool::from(browser.digest.as_bytes().ct_eq(given.as_bytes()));
            if same && browser.expires_at > now && browser.password == password {
                found = Some(index);
            }
        }
        found
    }

    /// The browsers still remembered at `now`.
    pub fn remembered_at(&self, now: UnixTime) -> impl Iterator<Item = &RememberedBrowser> {
        self.remembered.iter().filter(move |b| b.expires_at > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice(password_hash: &str) -> User {
        User {
            name: crate::domain::users::Username::parse("alice").unwrap(),
            display_name: "Alice".into(),
            email: "alice@example.com".into(),
            groups: vec![],
            password_hash: password_hash.into(),
            credential_stamp: crate::domain::users::credential_stamp(password_hash),
            account_key: "alice".into(),
        }
    }

    #[test]
    fn a_token_finds_its_browser_until_it_runs_out_or_the_password_changes() {
        let user = alice("$argon2id$one");
        let mut account = AccountRecord::default();
        let (token, record) = remember(&user, "Firefox on Linux".into(), "192.0.2.1".into(), 1_000, 100);
        assert!(!record.digest.contains(&token), "only the digest is kept");
        account.add_remembered(record, 1_000);
        assert_eq!(account.remembered_by_token(&token, &user, 1_050), Some(0));
        assert_eq!(account.remembered_by_token("another token", &user, 1_050), None);
        assert_eq!(account.remembered_by_token(&token, &alice("$argon2id$two"), 1_050), None, "a new password");
        assert_eq!(account.remembered_by_token(&token, &user, 1_100), None, "run out");
        for n in 0..MAX_PER_ACCOUNT {
            let (_, more) = remember(&user, format!("browser {n}"), String::new(), 1_000, 100);
            account.add_remembered(more, 1_000);
        }
        assert_eq!(account.remembered.len(), MAX_PER_ACCOUNT);
        assert_eq!(account.remembered_by_token(&token, &user, 1_050), None, "the oldest was forgotten");
    }
}
