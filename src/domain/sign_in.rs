//! The first factor: one way to check a password, for every form that asks for one (sign-in,
//! a recovery link, a password change).
//!
//! A check is regulated before it is made: the attempt is reserved (so forty parallel guesses
//! cannot all slip under the limit), then the slow hash runs on its own bounded pool, and the
//! attempt is recorded as a failure unless the password was right. An unknown name costs the
//! same hash as a real one, so timing does not tell which accounts exist.

use std::net::IpAddr;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::base::clock::{SharedClock, UnixTime};
use crate::base::text::Escaped;
use crate::config::ldap::LdapSettings;
use crate::domain::directory::{Directory, DirectoryRefused};
use crate::domain::known_browser::KnownBrowsers;
use crate::domain::notify::{Notifier, SecurityEvent};
use crate::domain::password::{HashError, PasswordChecker, PasswordProof};
use crate::domain::regulation::{Factor, Refusal, Regulator, Subject, Who};
use crate::domain::users::{UserDirectory, Username};

/// Why a password did not prove anything.
#[derive(Debug, thiserror::Error)]
pub enum PasswordRefused {
    /// Wrong password, or no such user: the two are never told apart.
    #[error("wrong user name or password")]
    Wrong,
    /// Not checked: the account, the address or this browser is paused until then.
    #[error("password attempts are paused until {until} ({who:?})")]
    Paused { until: UnixTime, who: Who },
    /// Not checked: too many checks for the same subject are running at once.
    #[error("too many password checks at once")]
    Crowded,
    /// Not checked: the hashing queue is full.
    #[error("the password hashing queue is full")]
    Busy,
    #[error("the password could not be checked: {0}")]
    Internal(String),
    /// The directory (`[login.ldap]`) could not be asked.
    #[error("the directory cannot be reached")]
    DirectoryUnavailable,
}

/// Checks passwords. Shares the user directory, the regulator and the notifier with the rest of
/// the proxy; the hashing pool is its own.
pub struct SignIn {
    pub users: Arc<UserDirectory>,
    pub passwords: PasswordChecker,
    pub regulator: Arc<Regulator>,
    /// Signs and recognises known-browser cookies (see `known_browser.rs`).
    pub known_browsers: KnownBrowsers,
    pub notifier: Arc<Notifier>,
    pub clock: SharedClock,
    /// Checks passwords of names the users file lacks against `[login.ldap]`.
    pub directory: Directory,
}

impl SignIn {
    /// Checks `password` for `username` from `client`. `browser_cookies` are the browser's
    /// known-browser cookie values: a browser that knows this account is regulated on its own
    /// (OWASP "device cookies"), so someone guessing from elsewhere cannot lock its owner out;
    /// any other attempt counts against the account and the client's address. When a failure
    /// pauses the account, its owner is told.
    ///
    /// A name the users file does not have is checked against the directory when `ldap` is set
    /// (`[login.ldap]`), under exactly the same regulation.
    pub async fn check_password<'a>(
        &self,
        username: &str,
        password: Zeroizing<String>,
        client: IpAddr,
        (browser_cookies, ldap): (impl IntoIterator<Item = &'a str>, Option<&LdapSettings>),
    ) -> Result<PasswordProof, PasswordRefused> {
        let now = self.clock.now();
        // In logs, what the client typed is escaped: a name is not known to be one yet.
        let logged = Escaped(username);
        let user = self.users.get(username);
        let known = user.as_ref().and_then(|user| {
            browser_cookies.into_iter().find_map(|value| self.known_browsers.recognise(value, user, now))
        });
        let subjects = match known {
            Some(id) => vec![Subject::Browser(id)],
            // Something that cannot be a user name has no account to protect (and is not kept as
            // one in the regulation store); the address still counts it.
            None if Username::parse(username).is_err() => vec![Subject::address(client)],
            None => vec![Subject::Account(username.to_string()), Subject::address(client)],
        };
        let attempt = match self.regulator.reserve(&subjects, Factor::Password).await {
            Ok(attempt) => attempt,
            Err(refusal) => {
                crate::base::metrics::login("locked");
                tracing::warn!(target: "portcullis::security", user = %logged, %client, ?refusal, "password not checked: paused");
                return Err(match refusal {
                    Refusal::Banned { until, who } => PasswordRefused::Paused { until, who },
                    // Only the second factor can be locked; for a password it is never the answer.
                    Refusal::Crowded | Refusal::SecondFactorLocked => PasswordRefused::Crowded,
                });
            }
        };
        let local = self.users.get_local(username);
        let checked = match (local, ldap, Username::parse(username)) {
            (None, Some(ldap), Ok(name)) => match self.directory.check(ldap, &name, &password).await {
                Ok(proof) => {
                    self.users.remember_from_directory(proof.user().clone());
                    Ok(Some(proof))
                }
                Err(DirectoryRefused::Wrong) => Ok(None),
                Err(DirectoryRefused::Unavailable(why)) => {
                    // Nothing was decided about the password: not counted either way.
                    drop(attempt);
                    tracing::error!(target: "portcullis::security", user = %logged, "password not checked: {why}");
                    return Err(PasswordRefused::DirectoryUnavailable);
                }
            },
            (local, _, _) => self.passwords.verify(password, local.as_ref()).await,
        };
        match checked {
            Ok(Some(proof)) => {
                if let Err(e) = attempt.succeeded().await {
                    tracing::error!("could not record a right password: {e}");
                }
                Ok(proof)
            }
            Ok(None) => {
                crate::base::metrics::login("failed");
                tracing::warn!(target: "portcullis::security", user = %logged, %client, "login failed");
                let outcome = attempt.failed().await.unwrap_or_else(|e| {
                    tracing::error!("could not record a wrong password: {e}");
                    Default::default()
                });
                let Some(until) = outcome.until() else { return Err(PasswordRefused::Wrong) };
                crate::base::metrics::lockout();
                tracing::warn!(target: "portcullis::security", user = %logged, %client, banned = ?outcome.banned, "paused after repeated wrong passwords");
                // Only the account's own pause is news for its owner (and only a real account has
                // one): a shared address paused by others' mistakes says nothing about it.
                if outcome.banned(Who::Account)
                    && let Some(account) = &user
                {
                    self.notifier.send(account, SecurityEvent::Locked { by_codes: false }, now, false);
                }
                let who = outcome.banned.first().map_or(Who::Account, |(who, _)| *who);
                Err(PasswordRefused::Paused { until, who })
            }
            Err(HashError::Busy) => {
                tracing::warn!(target: "portcullis::security", "password check turned away: hashing queue full");
                Err(PasswordRefused::Busy)
            }
            Err(e) => Err(PasswordRefused::Internal(e.to_string())),
        }
    }
}
