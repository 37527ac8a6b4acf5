//! One-time codes by email as a second factor, for people without an authenticator app (an
//! emailed code is weaker: NIST SP 800-63B §5.1.3.1 does not count email for AAL2, so upstreams
//! see `acr = "aal1"` for it).
//!
//! A code is 6 to 8 digits (`mfa.email_code_digits`), works once, for ten minutes, and allows five
//! tries; a new code replaces the old one. Sending is rate-limited per account (no new code while
//! an unused one is under a minute old, ten an hour), so the proxy cannot flood an inbox. Outstanding codes
//! live in memory only, as HMACs under the data directory's pepper: a restart simply means asking
//! for a new one.

use dashmap::DashMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::base::clock::UnixTime;
use crate::base::secret::{Secret, random_bytes};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    SignIn,
    Confirm { address: String },
}

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
}

/// Outstanding codes and recent sends, per account.
#[derive(Default)]
pub struct EmailCodes {
    issued: DashMap<String, Issued>,
    /// When codes were sent, for the hourly cap.
    sent: DashMap<String, Vec<UnixTime>>,
}

impl EmailCodes {
    /// Makes a new code for `user` (replacing any outstanding one) unless sending is throttled.
    /// Returns the code to mail; it is not kept.
    pub fn issue(
        &self,
        user: &str,
        purpose: Purpose,
        digits: u32,
        pepper: &Secret,
        now: UnixTime,
    ) -> Result<String, EmailCodeError> {
        {
            // No new code while the last one for the same purpose is fresh and unused: it is
            // still on its way. Once it is spent (or for another purpose), a new one may go at
            // once; the hourly cap counts every mail.
            if let Some(issued) = self.issued.get(user)
                && issued.purpose == purpose
                && now - issued.issued_at < RESEND_AFTER
            {
                return Err(EmailCodeError::Throttled { retry_after: RESEND_AFTER - (now - issued.issued_at) });
            }
            let mut sent = self.sent.entry(user.to_string()).or_default();
            sent.retain(|t| now - t < 3600);
            if sent.len() >= PER_HOUR {
                return Err(EmailCodeError::Throttled { retry_after: 3600 - (now - sent[0]) });
            }
            sent.push(now);
        }
        let code = generate(digits);
        let issued = Issued {
            digest: digest(pepper, &code),
            purpose,
            issued_at: now,
            expires_at: now + VALID_SECONDS,
            tries_left: TRIES,
        };
        self.issued.insert(user.to_string(), issued);
        Ok(code)
    }

    /// Whether a code for `purpose` is outstanding and unexpired (so a typed code may be one).
    pub fn outstanding(&self, user: &str, purpose: &Purpose, now: UnixTime) -> bool {
        self.issued.get(user).is_some_and(|i| &i.purpose == purpose && now < i.expires_at)
    }

    /// Checks `code`; a right one is spent, a wrong one costs a try (the last try spends it).
    pub fn check(
        &self,
        user: &str,
        purpose: &Purpose,
        code: &str,
        pepper: &Secret,
        now: UnixTime,
    ) -> Result<(), EmailCodeError> {
        let given = digest(pepper, code.trim());
        // The entry stays locked from the comparison to the removal, so one code cannot be
        // accepted twice by two requests at once.
        let dashmap::Entry::Occupied(mut entry) = self.issued.entry(user.to_string()) else {
            return Err(EmailCodeError::NoCode);
        };
        let issued = entry.get_mut();
        if &issued.purpose != purpose {
            return Err(EmailCodeError::NoCode);
        }
        if now >= issued.expires_at {
            entry.remove();
            return Err(EmailCodeError::Expired);
        }
        if bool::from(given.ct_eq(&issued.digest)) {
            entry.remove();
            return Ok(());
        }
        issued.tries_left = issued.tries_left.saturating_sub(1);
        if issued.tries_left == 0 {
            entry.remove();
        }
        Err(EmailCodeError::Wrong)
    }

    /// Drops expired codes and old send records.
    pub fn sweep(&self, now: UnixTime) {
        self.issued.retain(|_, i| now < i.expires_at);
        self.sent.retain(|_, sent| sent.iter().any(|t| now - t < 3600));
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

    #[test]
    fn a_code_works_once_for_its_purpose_only() {
        let codes = EmailCodes::default();
        let code = codes.issue("alice", Purpose::SignIn, 6, &pepper(), 1000).unwrap();
        assert_eq!(code.len(), 6);
        assert!(code.bytes().all(|b| b.is_ascii_digit()));
        let confirm = Purpose::Confirm { address: "a@example.com".into() };
        assert_eq!(codes.check("alice", &confirm, &code, &pepper(), 1001), Err(EmailCodeError::NoCode));
        assert_eq!(codes.check("bob", &Purpose::SignIn, &code, &pepper(), 1001), Err(EmailCodeError::NoCode));
        assert_eq!(codes.check("alice", &Purpose::SignIn, &code, &pepper(), 1001), Ok(()));
        assert_eq!(codes.check("alice", &Purpose::SignIn, &code, &pepper(), 1002), Err(EmailCodeError::NoCode));
    }

    #[test]
    fn a_code_expires_after_ten_minutes_and_survives_only_five_wrong_tries() {
        let codes = EmailCodes::default();
        let code = codes.issue("alice", Purpose::SignIn, 8, &pepper(), 1000).unwrap();
        assert_eq!(code.len(), 8);
        assert_eq!(
            codes.check("alice", &Purpose::SignIn, &code, &pepper(), 1000 + VALID_SECONDS),
            Err(EmailCodeError::Expired)
        );

        let code = codes.issue("bob", Purpose::SignIn, 6, &pepper(), 1000).unwrap();
        let wrong = if code == "000000" { "000001" } else { "000000" };
        for _ in 0..TRIES {
            assert_eq!(codes.check("bob", &Purpose::SignIn, wrong, &pepper(), 1001), Err(EmailCodeError::Wrong));
        }
        assert_eq!(
            codes.check("bob", &Purpose::SignIn, &code, &pepper(), 1002),
            Err(EmailCodeError::NoCode),
            "spent by the fifth wrong try"
        );
    }

    #[test]
    fn sending_is_rate_limited_per_account() {
        let codes = EmailCodes::default();
        let p = pepper();
        let first = codes.issue("alice", Purpose::SignIn, 6, &p, 1000).unwrap();
        assert_eq!(
            codes.issue("alice", Purpose::SignIn, 6, &p, 1030),
            Err(EmailCodeError::Throttled { retry_after: 30 })
        );
        assert!(codes.issue("bob", Purpose::SignIn, 6, &p, 1030).is_ok(), "another account is not affected");
        let confirm = Purpose::Confirm { address: "a@example.com".into() };
        assert!(codes.issue("carol", confirm, 6, &p, 1000).is_ok());
        let code = codes.issue("carol", Purpose::SignIn, 6, &p, 1001).unwrap();
        assert_eq!(codes.check("carol", &Purpose::SignIn, &code, &p, 1002), Ok(()));
        assert!(codes.issue("carol", Purpose::SignIn, 6, &p, 1003).is_ok(), "a spent code does not hold up the next");
        // A new code replaces the old one.
        let second = codes.issue("alice", Purpose::SignIn, 6, &p, 1000 + RESEND_AFTER).unwrap();
        if first != second {
            assert_eq!(codes.check("alice", &Purpose::SignIn, &first, &p, 1100), Err(EmailCodeError::Wrong));
        }
        let mut t = 1000 + RESEND_AFTER;
        for _ in 2..PER_HOUR {
            t += RESEND_AFTER;
            codes.issue("alice", Purpose::SignIn, 6, &p, t).unwrap();
        }
        assert!(matches!(
            codes.issue("alice", Purpose::SignIn, 6, &p, t + RESEND_AFTER),
            Err(EmailCodeError::Throttled { .. })
        ));
        assert!(codes.issue("alice", Purpose::SignIn, 6, &p, 1000 + 3600 + RESEND_AFTER).is_ok(), "an hour later");
    }

    #[test]
    fn addresses_are_masked() {
        assert_eq!(masked("alice@example.com"), "a•••@example.com");
        assert_eq!(masked("nonsense"), "•••");
    }
}
