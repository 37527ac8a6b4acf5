//! Signing in with a link sent by email (`[login.email_link]`, the way Sandstorm signs people in):
//! the first factor is the mailbox. The link leads to the same partial session a password does;
//! the account's second factor follows.
//!
//! A link is bound to the browser that asked for it: that browser holds a random nonce in a
//! cookie, and the link signs in only where the nonce is. Opened anywhere else (a phone reading
//! the mail, a mail scanner following links) it signs nobody in; it shows a short code instead,
//! which works only when typed into the browser that asked. So a link that leaks (forwarded,
//! logged by a proxy, prefetched) is worth nothing without that browser, and nobody is signed in
//! on a device they did not choose.
//!
//! Links live in memory only: a restart voids them (asking again is cheap), and single use
//! needs no store. Each is single use, lives [`LIFETIME`], and is kept as a hash; one per account
//! (a new one replaces the last). Asking is throttled per account and per client, and the answer
//! is the same for known and unknown addresses (the web layer shows one page for both).

use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::base::clock::UnixTime;
use crate::base::secret::{random_bytes, random_token};
use crate::domain::regulation::Subject;
use crate::domain::users::{User, UserDirectory};

/// How long a link works (15 minutes).
pub const LIFETIME: i64 = 900;
/// No new link for an account while its last one, unused, is younger than this.
pub const RESEND_AFTER: i64 = 60;
/// Links one account may be sent in an hour.
pub const PER_HOUR_PER_ACCOUNT: usize = 5;
/// Links one client (an address, an IPv6 /64) may ask for in an hour, for any addresses.
pub const PER_HOUR_PER_CLIENT: usize = 20;
/// Wrong codes before a link is void.
pub const CODE_TRIES: u8 = 5;
/// Digits of the code shown when the link is opened in another browser.
pub const CODE_DIGITS: usize = 6;
/// Bound on the links kept at once, whatever clients do.
const MAX_OUTSTANDING: usize = 10_000;

/// A link just proven by the browser that asked for it: the mailbox, as a first factor. Only
/// [`EmailLinks`] makes one.
pub struct EmailLinkProof {
    user: Arc<User>,
}

impl EmailLinkProof {
    pub fn user(&self) -> &Arc<User> {
        &self.user
    }

    pub(crate) fn into_user(self) -> Arc<User> {
        self.user
    }
}

/// Why no link was sent (the page says the same in every case; the log tells them apart).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkRefused {
    #[error("a link was sent to this account less than a minute ago")]
    TooSoon,
    #[error("this account was sent as many links as it may this hour")]
    AccountLimit,
    #[error("this client asked for as many links as it may this hour")]
    ClientLimit,
    #[error("too many links are outstanding")]
    Full,
}

/// Why a link or its code signed nobody in.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkInvalid {
    /// Unknown, used, replaced by a newer one, or run out: never told apart.
    #[error("the link is not valid (used, replaced or expired)")]
    Invalid,
    #[error("the code is wrong")]
    WrongCode { tries_left: u8 },
    /// Its account was removed (or replaced by another of the same name) since.
    #[error("the account is gone")]
    AccountGone,
}

/// A link as sent: the token for the URL, and the code shown if it is opened elsewhere.
pub struct Issued {
    pub token: String,
    pub code: String,
}

/// What opening a link did.
pub enum Opened {
    /// In the browser that asked: signed in (the link is spent), going to `return_to`.
    SignedIn { proof: EmailLinkProof, return_to: String },
    /// In another browser: the code to type into the one that asked (the link stays valid).
    Elsewhere { code: String },
}

struct Link {
    /// Empty for a decoy (see [`EmailLinks::decoy`]): it signs nobody in.
    account_key: String,
    user: String,
    /// The address it was sent to: a link works only while the account still has it.
    address: String,
    browser: [u8; 32],
    code: String,
    return_to: String,
    issued_at: UnixTime,
    tries_left: u8,
}

/// Outstanding links, and what was sent recently (for the throttles).
#[derive(Default)]
pub struct EmailLinks {
    /// By the token's SHA-256.
    links: DashMap<[u8; 32], Link>,
    /// The token hash of each account's outstanding link (one per account).
    by_account: DashMap<String, [u8; 32]>,
    /// The token hash of the last link each browser asked for (by its nonce's hash).
    by_browser: DashMap<[u8; 32], [u8; 32]>,
    sent_to_account: DashMap<String, Vec<UnixTime>>,
    asked_by_client: DashMap<String, Vec<UnixTime>>,
    /// When each account was last sent a link, used or not (the [`RESEND_AFTER`] rule).
    last_issued: DashMap<String, UnixTime>,
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// A fresh nonce for a browser that asks for a link (kept in its cookie).
pub fn new_browser_nonce() -> String {
    random_token()
}

fn new_code() -> String {
    // 0..10^6 from 64 random bits: the bias is below 10^-13.
    let n = u64::from_le_bytes(random_bytes::<8>()) % 10u64.pow(CODE_DIGITS as u32);
    format!("{n:0width$}", width = CODE_DIGITS)
}

fn recent(times: &mut Vec<UnixTime>, now: UnixTime) -> usize {
    times.retain(|t| now - t < 3600);
    times.len()
}

impl EmailLinks {
    /// Counts a request from `client` (known address or not, so both cost the same); refused
    /// past [`PER_HOUR_PER_CLIENT`] an hour.
    pub fn note_request(&self, client: IpAddr, now: UnixTime) -> Result<(), LinkRefused> {
        let mut asked = self.asked_by_client.entry(Subject::address(client).store_key()).or_default();
        if recent(&mut asked, now) >= PER_HOUR_PER_CLIENT {
            return Err(LinkRefused::ClientLimit);
        }
        asked.push(now);
        Ok(())
    }

    /// A link for `user`, bound to the browser holding `browser_nonce`, leading to `return_to`
    /// (already validated). Replaces the account's outstanding link.
    pub fn issue(
        &self,
        user: &User,
        browser_nonce: &str,
        return_to: &str,
        now: UnixTime,
    ) -> Result<Issued, LinkRefused> {
        // From the last link sent, whatever became of it: voiding one with wrong codes does not
        // buy a new one sooner.
        if self.last_issued.get(&user.account_key).is_some_and(|last| now - *last < RESEND_AFTER) {
            return Err(LinkRefused::TooSoon);
        }
        if self.links.len() >= MAX_OUTSTANDING {
            self.sweep(now);
            if self.links.len() >= MAX_OUTSTANDING {
                return Err(LinkRefused::Full);
            }
        }
        {
            let mut sent = self.sent_to_account.entry(user.account_key.clone()).or_default();
            if recent(&mut sent, now) >= PER_HOUR_PER_ACCOUNT {
                return Err(LinkRefused::AccountLimit);
            }
            sent.push(now);
        }
        let (token, code) = (random_token(), new_code());
        let hash = digest(&token);
        let browser = digest(browser_nonce);
        self.last_issued.insert(user.account_key.clone(), now);
        let link = Link {
            account_key: user.account_key.clone(),
            user: user.name.as_str().to_string(),
            address: user.email.clone(),
            browser,
            code: code.clone(),
            return_to: return_to.to_string(),
            issued_at: now,
            tries_left: CODE_TRIES,
        };
        if let Some(old) = self.by_account.insert(user.account_key.clone(), hash) {
            self.links.remove(&old);
        }
        self.by_browser.insert(browser, hash);
        self.links.insert(hash, link);
        Ok(Issued { token, code })
    }

    /// A link that is never sent and signs nobody in, bound to the browser holding
    /// `browser_nonce`: what a request for an unknown address (or a held-back one) leaves, so that
    /// the asking browser's code form answers exactly as it would for a real link ("wrong code,
    /// tries left") and tells a stranger nothing about which addresses have accounts.
    pub fn decoy(&self, browser_nonce: &str, now: UnixTime) {
        if self.links.len() >= MAX_OUTSTANDING {
            return;
        }
        let hash = digest(&random_token());
        let browser = digest(browser_nonce);
        let link = Link {
            account_key: String::new(),
            user: String::new(),
            address: String::new(),
            browser,
            code: new_code(),
            return_to: "/".into(),
            issued_at: now,
            tries_left: CODE_TRIES,
        };
        if let Some(old) = self.by_browser.insert(browser, hash)
            && self.links.get(&old).is_some_and(|l| l.account_key.is_empty())
        {
            self.links.remove(&old);
        }
        self.links.insert(hash, link);
    }

    /// The user name whose link the browser holding `browser_nonce` asked for (empty for a
    /// decoy), for regulating the codes typed there.
    pub fn asked_for(&self, browser_nonce: &str) -> Option<String> {
        let hash = self.by_browser.get(&digest(browser_nonce)).map(|h| *h)?;
        self.links.get(&hash).map(|link| link.user.clone())
    }

    /// Opens the link whose token is `token`, in a browser holding `browser_nonce` (if any).
    pub fn open(
        &self,
        users: &UserDirectory,
        token: &str,
        browser_nonce: Option<&str>,
        now: UnixTime,
    ) -> Result<Opened, LinkInvalid> {
        let hash = digest(token);
        let Some(live) = self.links.get(&hash).map(|link| now >= link.issued_at && now - link.issued_at < LIFETIME)
        else {
            // Unknown: nothing to clean up (and nothing to scan for a stranger's made-up token).
            return Err(LinkInvalid::Invalid);
        };
        if !live {
            self.forget(&hash);
            return Err(LinkInvalid::Invalid);
        }
        let same_browser = browser_nonce.is_some_and(|nonce| {
            self.links.get(&hash).is_some_and(|link| bool::from(link.browser.ct_eq(&digest(nonce))))
        });
        if !same_browser {
            let code = self.links.get(&hash).map(|link| link.code.clone()).ok_or(LinkInvalid::Invalid)?;
            return Ok(Opened::Elsewhere { code });
        }
        let (_, link) = self.links.remove(&hash).ok_or(LinkInvalid::Invalid)?;
        self.forget(&hash);
        let proof = Self::proof(users, &link)?;
        Ok(Opened::SignedIn { proof, return_to: link.return_to })
    }

    /// The code shown where the link was opened, typed into the browser that asked (the one
    /// holding `browser_nonce`). [`CODE_TRIES`] wrong codes void the link.
    pub fn enter_code(
        &self,
        users: &UserDirectory,
        browser_nonce: &str,
        code: &str,
        now: UnixTime,
    ) -> Result<(EmailLinkProof, String), LinkInvalid> {
        let browser = digest(browser_nonce);
        let hash = self.by_browser.get(&browser).map(|h| *h).ok_or(LinkInvalid::Invalid)?;
        let code: String = code.chars().filter(|c| c.is_ascii_digit()).collect();
        let right = {
            let mut link = self.links.get_mut(&hash).ok_or(LinkInvalid::Invalid)?;
            if now < link.issued_at || now - link.issued_at >= LIFETIME || !bool::from(link.browser.ct_eq(&browser)) {
                drop(link);
                self.forget(&hash);
                return Err(LinkInvalid::Invalid);
            }
            let right = bool::from(link.code.as_bytes().ct_eq(code.as_bytes()));
            if !right {
                link.tries_left = link.tries_left.saturating_sub(1);
                if link.tries_left > 0 {
                    return Err(LinkInvalid::WrongCode { tries_left: link.tries_left });
                }
            }
            right
        };
        let (_, link) = self.links.remove(&hash).ok_or(LinkInvalid::Invalid)?;
        self.forget(&hash);
        if !right {
            return Err(LinkInvalid::WrongCode { tries_left: 0 });
        }
        let proof = Self::proof(users, &link)?;
        Ok((proof, link.return_to))
    }

    /// The account a spent link was for, if it still exists as the same account.
    /// (A link sent to an address the account no longer has proves nothing.)
    fn proof(users: &UserDirectory, link: &Link) -> Result<EmailLinkProof, LinkInvalid> {
        if link.account_key.is_empty() {
            return Err(LinkInvalid::Invalid);
        }
        let user = users
            .get(&link.user)
            .filter(|u| u.account_key == link.account_key && u.email.eq_ignore_ascii_case(&link.address))
            .ok_or(LinkInvalid::AccountGone)?;
        Ok(EmailLinkProof { user })
    }

    /// Drops a link's index entries (the link itself is gone or going).
    fn forget(&self, hash: &[u8; 32]) {
        self.links.remove(hash);
        self.by_account.retain(|_, h| h != hash);
        self.by_browser.retain(|_, h| h != hash);
    }

    /// Drops links that ran out and throttle records older than an hour.
    pub fn sweep(&self, now: UnixTime) {
        self.links.retain(|_, link| now - link.issued_at < LIFETIME);
        self.by_account.retain(|_, hash| self.links.contains_key(hash));
        self.by_browser.retain(|_, hash| self.links.contains_key(hash));
        self.sent_to_account.retain(|_, times| recent(times, now) > 0);
        self.last_issued.retain(|_, at| now - *at < RESEND_AFTER);
        self.asked_by_client.retain(|_, times| recent(times, now) > 0);
    }
}

#[cfg(test)]
#[path = "email_link_tests.rs"]
mod tests;
