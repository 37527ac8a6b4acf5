//! Passkey sign-ins in progress (`webauthn.passwordless`), kept server side between the login
//! page that starts one and the form that finishes it. There is no session yet, so each belongs to
//! the browser's login-form token (the login CSRF cookie, which the finishing form must present
//! too): one per browser, replaced by a newer page, taken (used at most once) by the form.
//!
//! Anyone can load the login page, so the number kept is bounded: past [`MAX_OUTSTANDING`] the
//! ones that ran out are dropped first, and if all are live the page offers no passkey until some
//! end (signing in with the password still works). Memory stays bounded whatever a client does.

use dashmap::DashMap;
use sha2::Digest;

use crate::base::clock::UnixTime;
use crate::domain::factors::passwordless::PasskeyCeremony;

/// More outstanding passkey sign-ins than an install sees in five minutes (each is a few hundred
/// bytes).
pub const MAX_OUTSTANDING: usize = 10_000;

#[derive(Default)]
pub struct PasskeyLogins(DashMap<[u8; 32], PasskeyCeremony>);

/// The map's key for a login-form token: its digest, so the tokens themselves are not kept.
fn slot(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

impl PasskeyLogins {
    /// Keeps `ceremony` for the browser holding `token`. Returns false (and keeps nothing) when
    /// [`MAX_OUTSTANDING`] live ceremonies are kept already.
    pub fn put(&self, token: &str, ceremony: PasskeyCeremony, now: UnixTime) -> bool {
        if self.0.len() >= MAX_OUTSTANDING {
            self.0.retain(|_, kept| kept.is_live(now));
            if self.0.len() >= MAX_OUTSTANDING && !self.0.contains_key(&slot(token)) {
                return false;
            }
        }
        self.0.insert(slot(token), ceremony);
        true
    }

    /// Takes the ceremony of the browser holding `token`, if it has one.
    pub fn take(&self, token: &str) -> Option<PasskeyCeremony> {
        self.0.remove(&slot(token)).map(|(_, ceremony)| ceremony)
    }

    /// Drops ceremonies that ran out (called with the other periodic sweeps).
    pub fn sweep(&self, now: UnixTime) {
        self.0.retain(|_, kept| kept.is_live(now));
    }
}
