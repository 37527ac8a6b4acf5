//! One-time codes by email as a second factor, for people without an authenticator app (an
//! emailed code is weaker: NIST SP 800-63B §5.1.3.1 does not count email for AAL2, so upstreams
//! see `acr = "aal1"` for it).
//!
//! A code is 6 to 8 digits (`mfa.email_code_digits`), works once, for ten minutes, and allows five
//! tries; a new code replaces the old one. Sending is rate-limited per account (no new code while
//! an unused one is under a minute old, ten an hour), so the proxy cannot flood an inbox.
//! Outstanding codes are kept as HMACs under the data directory's pepper, as a flow
//! ([`Flows`]): in memory for one process (a restart simply means asking for a new one), in the
//! shared store for replicas, so a code mailed by one is accepted by another, once.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::base::clock::UnixTime;
use crate::base::secret::{Secret, random_bytes};
use crate::domain::flows::Flows;

/// How long a code works.
pub const VALID_SECONDS: i64 = 600;
/// Wrong tries a code survives.
pub const TRIES: u8 = 5;
/// At most one code per account in this many seconds...
pub const RESEND_AFTER: i64 = 60;
/// ...and at most this many an hour.
pub const PER_HOUR: usize = 10;

/// What a code is for: signing in, or confirming an address before it becomes a factor. A code
/// for one purpose never passes for the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    SignIn,
    Confirm { address: String },
}

#[derive(Serialize, Deserialize)]
struct Issued {
    digest: [u8; 32],
    purpose: Purpose,
    issued_at: UnixTime,
    expires_at: UnixTime,
    tries_left: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmailCodeError {
    #[error("no code is outstanding")]
    NoCode,
    #[error("the code has expired")]
    Expired,
    #[error("the code is wrong")]
    Wrong,
    #[error("too many codes were sent; the next may be sent in {retry_after} s")]
    Throttled { retry_after: i64 },
    /// The shared store did not answer (logged where it happened).
    #[error("emailed codes cannot be read or kept now")]
    Unavailable,
}

/// How long an account's codes and sends are kept after the last change: the hourly cap's hour.
const KEPT_FOR: Duration = Duration::from_secs(3600);

/// Outstanding codes and recent sends, per account.
pub struct EmailCodes {
    flows: Flows,
}

/// One account's: its outstanding code, and when codes were sent (for the hourly cap).
#[derive(Default, Serialize, Deserialize)]
struct AccountCodes {
    issued: Option<Issued>,
    sent: Vec<UnixTime>,
}

impl EmailCodes {
    pub fn new(flows: Flows) -> Self {
        Self { flows }
    }

    /// Reads an account's codes, lets `change` decide, and keeps the result.
    async fn change<T>(
        &self,
        user: &str,
        mut change: impl FnMut(&mut AccountCodes) -> Result<T, EmailCodeError>,
    ) -> Result<T, EmailCodeError> {
        let outcome = self
            .flows
            .update(&format!("email-codes:{user}"), KEPT_FOR, |current| {
                let mut codes: AccountCodes = current.and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
                let outcome = change(&mut codes);
                let empty = codes.issued.is_none() && codes.sent.is_empty();
                (if empty { None } else { serde_json::to_vec(&codes).ok() }, outcome)
            })
            .await;
        outcome.unwrap_or_else(|e| {
            tracing::error!(target: "portcullis::store", "emailed codes could not be read or kept: {e}");
            Err(EmailCodeError::Unavailable)
        })
    }

    /// Makes a new code for `user` (replacing any outstanding one) unless sending is throttled.
    /// Returns the code to mail; it is not kept.
    pub async fn issue(
        &self,
        user: &str,
        purpose: Purpose,
        digits: u32,
        pepper: &Secret,
        now: UnixTime,
    ) -> Result<String, EmailCodeError> {
        let code = generate(digits);
        let digest = digest(pepper, &code);
        self.change(user, |codes| {
            // No new code while the last one for the same purpose is fresh and unused: it is
            // still on its way. Once it is spent (or for another purpose), a new one may go at
            // once; the hourly cap counts every mail.
            if let Some(issued) = &codes.issued
                && issued.purpose == purpose
                && now - issued.issued_at < RESEND_AFTER
            {
                return Err(EmailCodeError::Throttled { retry_after: RESEND_AFTER - (now - issued.issued_at) });
            }
            codes.sent.retain(|t| now - t < 3600);
            if codes.sent.len() >= PER_HOUR {
                return Err(EmailCodeError::Throttled { retry_after: 3600 - (now - codes.sent[0]) });
            }
            codes.sent.push(now);
            codes.issued = Some(Issued {
                digest,
                purpose: purpose.clone(),
                issued_at: now,
                expires_at: now + VALID_SECONDS,
                tries_left: TRIES,
            });
            Ok(())
        })
        .await?;
        Ok(code)
    }

    /// Whether a code for `purpose` is outstanding and unexpired (so a typed code may be one).
    pub async fn outstanding(&self, user: &str, purpose: &Purpose, now: UnixTime) -> bool {
        let found = self.change(user, |codes| {
            Ok(codes.issued.as_ref().is_some_and(|i| &i.purpose == purpose && now < i.expires_at))
        });
        found.await.unwrap_or(false)
    }

    /// Checks `code`; a right one is spent, a wrong one costs a try (the last try spends it).
    /// Read, decision and write are one compare-and-swap, so one code cannot be accepted twice by
    /// two requests at once, on one replica or two.
    pub async fn check(
        &self,
        user: &str,
        purpose: &Purpose,
        code: &str,
        pepper: &Secret,
        now: UnixTime,
    ) -> Result<(), EmailCodeError> {
        let given = digest(pepper, code.trim());
        self.change(user, |codes| {
            let Some(issued) = codes.issued.as_mut() else { return Err(EmailCodeError::NoCode) };
            if &issued.purpose != purpose {
                return Err(EmailCodeError::NoCode);
            }
            if now >= issued.expires_at {
                codes.issued = None;
                return Err(EmailCodeError::Expired);
            }
            if bool::from(given.ct_eq(&issued.digest)) {
                codes.issued = None;
                return Ok(());
            }
            issued.tries_left = issued.tries_left.saturating_sub(1);
            if issued.tries_left == 0 {
                codes.issued = None;
            }
            Err(EmailCodeError::Wrong)
        })
        .await
    }

    /// Drops codes and send records in memory that ran out (a shared store expires its own).
    pub fn sweep(&self) {
        self.flows.sweep();
    }
}

/// `digits` random decimal digits. A 64-bit random number reduced modulo 10^8 or less: the bias
/// is below 10^-11.
fn generate(digits: u32) -> String {
    let n = u64::from_le_bytes(random_bytes::<8>()) % 10u64.pow(digits);
    format!("{n:0width$}", width = digits as usize)
}

fn digest(pepper: &Secret, code: &str) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(pepper.expose()).expect("HMAC takes any key length");
    mac.update(b"email-code:");
    mac.update(code.as_bytes());
    mac.finalize().into_bytes().into()
}

/// An address as shown on pages: enough to recognise, not enough to harvest (`a•••@example.com`).
pub fn masked(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}•••@{domain}")
        }
        None => "•••".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pepper() -> Secret {
        Secret::new(vec![7; 32])
    }

    fn codes() -> EmailCodes {
        EmailCodes::new(Flows::in_memory())
    }

    #[tokio::test]
    async fn a_code_works_once_for_its_purpose_only() {
        let codes = codes();
        let code = codes.issue("alice", Purpose::SignIn, 6, &pepper(), 1000).await.unwrap();
        assert_eq!(code.len(), 6);
        assert!(code.bytes().all(|b| b.is_ascii_digit()));
        let confirm = Purpose::Confirm { address: "a@example.com".into() };
        assert_eq!(codes.check("alice", &confirm, &code, &pepper(), 1001).await, Err(EmailCodeError::NoCode));
        assert_eq!(codes.check("bob", &Purpose::SignIn, &code, &pepper(), 1001).await, Err(EmailCodeError::NoCode));
        assert_eq!(codes.check("alice", &Purpose::SignIn, &code, &pepper(), 1001).await, Ok(()));
        assert_eq!(codes.check("alice", &Purpose::SignIn, &code, &pepper(), 1002).await, Err(EmailCodeError::NoCode));
    }

    #[tokio::test]
    async fn a_code_expires_after_ten_minutes_and_survives_only_five_wrong_tries() {
        let codes = codes();
        let code = codes.issue("alice", Purpose::SignIn, 8, &pepper(), 1000).await.unwrap();
        assert_eq!(code.len(), 8);
        assert_eq!(
            codes.check("alice", &Purpose::SignIn, &code, &pepper(), 1000 + VALID_SECONDS).await,
            Err(EmailCodeError::Expired)
        );

        let code = codes.issue("bob", Purpose::SignIn, 6, &pepper(), 1000).await.unwrap();
        let wrong = if code == "000000" { "000001" } else { "000000" };
        for _ in 0..TRIES {
            assert_eq!(codes.check("bob", &Purpose::SignIn, wrong, &pepper(), 1001).await, Err(EmailCodeError::Wrong));
        }
        assert_eq!(
            codes.check("bob", &Purpose::SignIn, &code, &pepper(), 1002).await,
            Err(EmailCodeError::NoCode),
            "spent by the fifth wrong try"
        );
    }

    #[tokio::test]
    async fn sending_is_rate_limited_per_account() {
        let codes = codes();
        let p = pepper();
        let first = codes.issue("alice", Purpose::SignIn, 6, &p, 1000).await.unwrap();
        assert_eq!(
            codes.issue("alice", Purpose::SignIn, 6, &p, 1030).await,
            Err(EmailCodeError::Throttled { retry_after: 30 })
        );
        assert!(codes.issue("bob", Purpose::SignIn, 6, &p, 1030).await.is_ok(), "another account is not affected");
        let confirm = Purpose::Confirm { address: "a@example.com".into() };
        assert!(codes.issue("carol", confirm, 6, &p, 1000).await.is_ok());
        let code = codes.issue("carol", Purpose::SignIn, 6, &p, 1001).await.unwrap();
        assert_eq!(codes.check("carol", &Purpose::SignIn, &code, &p, 1002).await, Ok(()));
        assert!(
            codes.issue("carol", Purpose::SignIn, 6, &p, 1003).await.is_ok(),
            "a spent code does not hold up the next"
        );
        // A new code replaces the old one.
        let second = codes.issue("alice", Purpose::SignIn, 6, &p, 1000 + RESEND_AFTER).await.unwrap();
        if first != second {
            assert_eq!(codes.check("alice", &Purpose::SignIn, &first, &p, 1100).await, Err(EmailCodeError::Wrong));
        }
        let mut t = 1000 + RESEND_AFTER;
        for _ in 2..PER_HOUR {
            t += RESEND_AFTER;
            codes.issue("alice", Purpose::SignIn, 6, &p, t).await.unwrap();
        }
        assert!(matches!(
            codes.issue("alice", Purpose::SignIn, 6, &p, t + RESEND_AFTER).await,
            Err(EmailCodeError::Throttled { .. })
        ));
        assert!(
            codes.issue("alice", Purpose::SignIn, 6, &p, 1000 + 3600 + RESEND_AFTER).await.is_ok(),
            "an hour later"
        );
    }

    #[test]
    fn addresses_are_masked() {
        assert_eq!(masked("alice@example.com"), "a•••@example.com");
        assert_eq!(masked("nonsense"), "•••");
    }
}
