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
//! Links are flows ([`Flows`]): in memory for one process (a restart voids them; asking again is
//! cheap), sealed in the shared store for replicas, so a link sent by one is opened, or its code
//! typed, on any. Each is single use, lives [`LIFETIME`], and is kept under its token's hash; one
//! per account (a new one voids the last). Asking is throttled per account and per client, and
//! the answer is the same for known and unknown addresses (the web layer shows one page for
//! both). Every decision a race could exploit (taking a link, counting a wrong code, counting a
//! request against a throttle) is one compare-and-swap of one record, so two replicas never both
//! accept one link or one code, and the throttles count the requests of every replica.
//!
//! The records, each under its own key: `link:{token hash}` (the link), `link-account:{account
//! key}` (its outstanding link and the hour's sends), `link-browser:{nonce hash}` (the link that
//! browser asked for last) and `link-client:{address}` (the hour's requests). Tokens and nonces
//! are kept only as SHA-256 hashes; the code is kept as it is (it is shown where the link is
//! opened elsewhere), sealed like every flow in a shared store.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::base::clock::UnixTime;
use crate::base::secret::{random_bytes, random_token};
use crate::base::text::hex;
use crate::domain::flows::Flows;
use crate::domain::regulation::Subject;
use crate::domain::users::{User, UserDirectory};
use crate::store::StoreError;

/// How long a link works (15 minutes).
pub const LIFETIME: i64 = 900;
/// No new link for an account while its last one, whatever became of it, is younger than this.
pub const RESEND_AFTER: i64 = 60;
/// Links one account may be sent in an hour.
pub const PER_HOUR_PER_ACCOUNT: usize = 5;
/// Links one client (an address, an IPv6 /64) may ask for in an hour, for any addresses.
pub const PER_HOUR_PER_CLIENT: usize = 20;
/// Wrong codes before a link is void.
pub const CODE_TRIES: u8 = 5;
/// Digits of the code shown when the link is opened in another browser.
pub const CODE_DIGITS: usize = 6;
/// Bound on the links one process keeps in memory at once, whatever clients do. A shared store
/// is not bounded here: it expires every record by itself, and what one client can make it hold
/// is bounded by the throttles ([`PER_HOUR_PER_CLIENT`] requests, each leaving one link and one
/// browser record for at most [`LIFETIME`]).
const MAX_OUTSTANDING: usize = 10_000;

/// A link's record and its browser's are kept as long as a link works (a wrong code, which
/// rewrites the link, extends that; the link's own `issued_at` still ends it in time).
const LINK_KEPT: Duration = Duration::from_secs(LIFETIME as u64);
/// The throttle records are kept for the hour they count.
const HOUR_KEPT: Duration = Duration::from_secs(3600);
/// What every link's key begins with (and no other record's), to count them.
const LINK_PREFIX: &str = "link:";

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

/// The shared store did not answer; logged where it happened. Nothing is decided without it:
/// no link is sent, opened or counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sign-in links cannot be read or kept now")]
pub struct LinksUnavailable;

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
    #[error(transparent)]
    Unavailable(#[from] LinksUnavailable),
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
    #[error(transparent)]
    Unavailable(#[from] LinksUnavailable),
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

type Hash = [u8; 32];

#[derive(Serialize, Deserialize)]
struct Link {
    /// Empty for a decoy (see [`EmailLinks::decoy`]): it signs nobody in.
    account_key: String,
    user: String,
    /// The address it was sent to: a link works only while the account still has it.
    address: String,
    browser: Hash,
    code: String,
    return_to: String,
    issued_at: UnixTime,
    tries_left: u8,
}

impl Link {
    fn live(&self, now: UnixTime) -> bool {
        now >= self.issued_at && now - self.issued_at < LIFETIME
    }
}

/// One account's: its outstanding link, and when it was sent links in the last hour (for the
/// throttles; the newest is the last issue, which [`RESEND_AFTER`] counts from).
#[derive(Default, Serialize, Deserialize)]
struct AccountLinks {
    current: Option<Hash>,
    sent: Vec<UnixTime>,
}

/// What a change does to a record.
enum Next<T> {
    /// Leaves it as it is (not written: a read extends nothing and contends with nobody).
    Keep,
    Put(T),
    Forget,
}

/// What a link, opened, leads to before the account is checked.
enum Step {
    Elsewhere(String),
    Taken(Link),
}

/// Outstanding links, and what was sent recently (for the throttles).
pub struct EmailLinks {
    flows: Flows,
}

/// The account an address stands in for, whether an account has it or not: named after the
/// address, in a form no user name can take (user names begin with a letter or digit), so codes
/// typed for it are counted and paused like an account's without ever being one's.
fn stand_in_account(address: &str) -> String {
    format!("~{}", address.trim().to_ascii_lowercase())
}

fn digest(text: &str) -> Hash {
    Sha256::digest(text.as_bytes()).into()
}

fn link_key(token_hash: &Hash) -> String {
    format!("{LINK_PREFIX}{}", hex(token_hash))
}

fn account_key(account_key: &str) -> String {
    format!("link-account:{account_key}")
}

fn browser_key(nonce_hash: &Hash) -> String {
    format!("link-browser:{}", hex(nonce_hash))
}

fn client_key(client: IpAddr) -> String {
    format!("link-client:{}", Subject::address(client).store_key())
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

fn unavailable(e: StoreError) -> LinksUnavailable {
    tracing::error!(target: "portcullis::store", "sign-in links could not be read or kept: {e}");
    LinksUnavailable
}

fn recent(times: &mut Vec<UnixTime>, now: UnixTime) -> usize {
    times.retain(|t| now - t < 3600);
    times.len()
}

impl EmailLinks {
    /// Kept in `flows`: the shared store's when replicas share one, else memory.
    pub fn new(flows: Flows) -> Self {
        Self { flows }
    }

    /// Reads the record at `key` and lets `change` decide, as one compare-and-swap (retried
    /// when another request changed the record meanwhile, so `change` decides from what it is
    /// given each time). An unreadable record is none.
    async fn update<T: Serialize + DeserializeOwned, R>(
        &self,
        key: &str,
        lasts: Duration,
        mut change: impl FnMut(Option<T>) -> (Next<T>, R),
    ) -> Result<R, LinksUnavailable> {
        let outcome = self.flows.update(key, lasts, |current| {
            let (next, outcome) = change(current.and_then(|bytes| serde_json::from_slice(bytes).ok()));
            let bytes = match next {
                Next::Keep => current.map(<[u8]>::to_vec),
                Next::Put(record) => serde_json::to_vec(&record).ok(),
                Next::Forget => None,
            };
            (bytes, outcome)
        });
        outcome.await.map_err(unavailable)
    }

    /// Writes a new record (under a key nobody else writes: a fresh token's hash).
    async fn put<T: Serialize>(&self, key: &str, lasts: Duration, record: &T) -> Result<(), LinksUnavailable> {
        let bytes = serde_json::to_vec(record).ok();
        self.flows.update(key, lasts, |_| (bytes.clone(), ())).await.map_err(unavailable)
    }

    async fn read<T: Serialize + DeserializeOwned>(&self, key: &str) -> Result<Option<T>, LinksUnavailable> {
        self.update(key, LINK_KEPT, |record| (Next::Keep, record)).await
    }

    /// Whether this process keeps as many links in memory as it may (see [`MAX_OUTSTANDING`]).
    fn full(&self) -> bool {
        self.flows.count_in_memory(LINK_PREFIX).is_some_and(|links| links >= MAX_OUTSTANDING)
    }

    /// Counts a request from `client` (known address or not, so both cost the same); refused
    /// past [`PER_HOUR_PER_CLIENT`] an hour, counted over every replica.
    pub async fn note_request(&self, client: IpAddr, now: UnixTime) -> Result<(), LinkRefused> {
        self.update(&client_key(client), HOUR_KEPT, |asked: Option<Vec<UnixTime>>| {
            let mut asked = asked.unwrap_or_default();
            if recent(&mut asked, now) >= PER_HOUR_PER_CLIENT {
                return (Next::Keep, Err(LinkRefused::ClientLimit));
            }
            asked.push(now);
            (Next::Put(asked), Ok(()))
        })
        .await?
    }

    /// A link for `user`, bound to the browser holding `browser_nonce`, leading to `return_to`
    /// (already validated). Voids the account's outstanding link.
    pub async fn issue(
        &self,
        user: &User,
        browser_nonce: &str,
        return_to: &str,
        now: UnixTime,
    ) -> Result<Issued, LinkRefused> {
        let full = self.full();
        let (token, code) = (random_token(), new_code());
        let (hash, browser) = (digest(&token), digest(browser_nonce));
        // From this moment the link it replaces is void on every replica (see `proof`).
        let replaced = self.claim(&account_key(&user.account_key), hash, now, full).await??;
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
        self.put(&link_key(&hash), LINK_KEPT, &link).await?;
        let previous = self.update(&browser_key(&browser), LINK_KEPT, |previous| (Next::Put(hash), previous)).await?;
        // Already void (the account's record names the new link); removed to free the space.
        if let Some(old) = replaced {
            self.flows.end(&link_key(&old)).await.map_err(unavailable)?;
        }
        if let Some(previous) = previous.filter(|p| Some(*p) != replaced) {
            self.forget_if_decoy(&previous).await?;
        }
        Ok(Issued { token, code })
    }

    /// A link that is never sent and signs nobody in, bound to the browser holding
    /// `browser_nonce`: what a request for an unknown address (or a held-back one) leaves, so that
    /// the asking browser's code form answers exactly as it would for a real link ("wrong code,
    /// tries left") and tells a stranger nothing about which addresses have accounts.
    ///
    /// A decoy is kept the way a link is, step for step, so that asking for an address no account
    /// has costs the same store round trips as asking for one that has (a timing difference
    /// would tell them apart), and its codes are regulated under a stand-in account named after
    /// the address, so that wrong codes pause it as they would pause an account.
    pub async fn decoy(&self, browser_nonce: &str, address: &str, now: UnixTime) -> Result<(), LinksUnavailable> {
        if self.full() {
            return Ok(());
        }
        let hash = digest(&random_token());
        let browser = digest(browser_nonce);
        let stand_in = stand_in_account(address);
        // Its own throttles say nothing (a decoy is placed whatever they say); the round trip
        // and what it replaces are what count.
        let replaced = self.claim(&account_key(&hex(&digest(&stand_in))), hash, now, false).await?.ok().flatten();
        let link = Link {
            account_key: String::new(),
            user: String::new(),
            address: address.trim().to_string(),
            browser,
            code: new_code(),
            return_to: "/".into(),
            issued_at: now,
            tries_left: CODE_TRIES,
        };
        if let Some(old) = replaced {
            self.flows.end(&link_key(&old)).await.map_err(unavailable)?;
        }
        self.put(&link_key(&hash), LINK_KEPT, &link).await?;
        let previous = self.update(&browser_key(&browser), LINK_KEPT, |previous| (Next::Put(hash), previous)).await?;
        if let Some(previous) = previous {
            self.forget_if_decoy(&previous).await?;
        }
        Ok(())
    }

    /// Counts a link sent to the account whose record is at `key` and makes `hash` its one
    /// outstanding link, in one compare-and-swap, unless a throttle refuses: what it replaces, if
    /// anything.
    async fn claim(
        &self,
        key: &str,
        hash: Hash,
        now: UnixTime,
        full: bool,
    ) -> Result<Result<Option<Hash>, LinkRefused>, LinksUnavailable> {
        self.update(key, HOUR_KEPT, |record: Option<AccountLinks>| {
            let mut record = record.unwrap_or_default();
            // From the last link sent, whatever became of it: voiding one with wrong codes does
            // not buy a new one sooner.
            if record.sent.iter().max().is_some_and(|last| now - last < RESEND_AFTER) {
                return (Next::Keep, Err(LinkRefused::TooSoon));
            }
            if full {
                return (Next::Keep, Err(LinkRefused::Full));
            }
            if recent(&mut record.sent, now) >= PER_HOUR_PER_ACCOUNT {
                return (Next::Keep, Err(LinkRefused::AccountLimit));
            }
            record.sent.push(now);
            let replaced = record.current.replace(hash);
            (Next::Put(record), Ok(replaced))
        })
        .await
    }

    /// Removes a decoy nothing points to any more. A real link stays: it still works from its
    /// mail until it is used, replaced or runs out.
    async fn forget_if_decoy(&self, hash: &Hash) -> Result<(), LinksUnavailable> {
        self.update(&link_key(hash), LINK_KEPT, |link: Option<Link>| {
            let decoy = link.is_some_and(|l| l.account_key.is_empty());
            (if decoy { Next::Forget } else { Next::Keep }, ())
        })
        .await
    }

    /// The accounts the codes typed in the browser holding `browser_nonce` are counted against:
    /// the stand-in named after the address asked for, real link or decoy alike, and for a real
    /// link its account too. So wrong codes pause an address the same way whether an account has
    /// it or not, and a link held back for a paused account answers as a decoy for a paused
    /// stranger does.
    pub async fn regulated_as(&self, browser_nonce: &str) -> Result<Vec<String>, LinksUnavailable> {
        let Some(hash) = self.read::<Hash>(&browser_key(&digest(browser_nonce))).await? else {
            return Ok(Vec::new());
        };
        let Some(link) = self.read::<Link>(&link_key(&hash)).await? else { return Ok(Vec::new()) };
        let mut accounts = vec![stand_in_account(&link.address)];
        if !link.user.is_empty() {
            accounts.push(link.user);
        }
        Ok(accounts)
    }

    /// Opens the link whose token is `token`, in a browser holding `browser_nonce` (if any).
    pub async fn open(
        &self,
        users: &UserDirectory,
        token: &str,
        browser_nonce: Option<&str>,
        now: UnixTime,
    ) -> Result<Opened, LinkInvalid> {
        let hash = digest(token);
        let browser = browser_nonce.map(digest);
        // Taken in the same step as it is found live and in its browser: once, on any replica.
        let key = link_key(&hash);
        let step = self.update(&key, LINK_KEPT, |link: Option<Link>| {
            // Unknown: nothing to change (and nothing written for a stranger's made-up token).
            let Some(link) = link else { return (Next::Keep, Err(LinkInvalid::Invalid)) };
            if !link.live(now) {
                return (Next::Forget, Err(LinkInvalid::Invalid));
            }
            if !browser.is_some_and(|b| bool::from(link.browser.ct_eq(&b))) {
                return (Next::Keep, Ok(Step::Elsewhere(link.code)));
            }
            (Next::Forget, Ok(Step::Taken(link)))
        });
        match step.await?? {
            Step::Elsewhere(code) => Ok(Opened::Elsewhere { code }),
            Step::Taken(link) => {
                let proof = self.proof(users, &hash, &link).await?;
                Ok(Opened::SignedIn { proof, return_to: link.return_to })
            }
        }
    }

    /// The code shown where the link was opened, typed into the browser that asked (the one
    /// holding `browser_nonce`). [`CODE_TRIES`] wrong codes void the link, wherever typed.
    pub async fn enter_code(
        &self,
        users: &UserDirectory,
        browser_nonce: &str,
        code: &str,
        now: UnixTime,
    ) -> Result<(EmailLinkProof, String), LinkInvalid> {
        let browser = digest(browser_nonce);
        let hash = self.read::<Hash>(&browser_key(&browser)).await?.ok_or(LinkInvalid::Invalid)?;
        let code: String = code.chars().filter(|c| c.is_ascii_digit()).collect();
        // The check and the count (or the taking) in one step: two replicas never both accept the
        // code, and wrong codes typed at both add up.
        let key = link_key(&hash);
        let taken = self.update(&key, LINK_KEPT, |link: Option<Link>| {
            let Some(mut link) = link else { return (Next::Keep, Err(LinkInvalid::Invalid)) };
            if !link.live(now) || !bool::from(link.browser.ct_eq(&browser)) {
                return (Next::Forget, Err(LinkInvalid::Invalid));
            }
            if bool::from(link.code.as_bytes().ct_eq(code.as_bytes())) {
                return (Next::Forget, Ok(link));
            }
            link.tries_left = link.tries_left.saturating_sub(1);
            let tries_left = link.tries_left;
            (if tries_left > 0 { Next::Put(link) } else { Next::Forget }, Err(LinkInvalid::WrongCode { tries_left }))
        });
        let link = taken.await??;
        let proof = self.proof(users, &hash, &link).await?;
        Ok((proof, link.return_to))
    }

    /// What a link just taken proves: nothing if it is a decoy, or if its account was sent a
    /// newer link meanwhile (on any replica: the account's record says which link is current);
    /// else its account, if that still exists as the same account with the address the link
    /// went to (a link sent to an address the account no longer has proves nothing).
    async fn proof(&self, users: &UserDirectory, hash: &Hash, link: &Link) -> Result<EmailLinkProof, LinkInvalid> {
        if link.account_key.is_empty() {
            return Err(LinkInvalid::Invalid);
        }
        let record = self.read::<AccountLinks>(&account_key(&link.account_key)).await?;
        let current = record.and_then(|r| r.current).is_some_and(|current| bool::from(current.ct_eq(hash)));
        if !current {
            return Err(LinkInvalid::Invalid);
        }
        let user = users
            .get(&link.user)
            .filter(|u| u.account_key == link.account_key && u.email.eq_ignore_ascii_case(&link.address))
            .ok_or(LinkInvalid::AccountGone)?;
        Ok(EmailLinkProof { user })
    }

    /// Drops links and throttle records in memory that ran out (a shared store expires its own).
    pub fn sweep(&self) {
        self.flows.sweep();
    }
}

#[cfg(test)]
#[path = "email_link_tests.rs"]
mod tests;
