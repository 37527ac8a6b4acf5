//! TOTP (RFC 6238) with the parameters every authenticator app accepts: HMAC-SHA1, 6 digits,
//! 30-second steps, and one step of tolerance either side for clock drift and typing time.

use totp_rs::{Algorithm, Builder, Secret, Totp};

use crate::base::clock::UnixTime;

pub const DIGITS: u8 = 6;
pub const STEP_SECONDS: u64 = 30;
/// Steps accepted either side of now: ±30 s, RFC 6238 §5.2's recommended "at most one".
pub const SKEW: u16 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TotpError {
    #[error("the secret is not usable: {0}")]
    BadSecret(String),
    #[error("that code is not right")]
    Wrong,
    #[error("that code was already used")]
    Replayed,
}

/// A fresh 160-bit secret (RFC 4226 §4 recommends 160 bits).
pub fn new_secret() -> Vec<u8> {
    crate::base::secret::random_bytes::<20>().to_vec()
}

fn totp(secret: &[u8], issuer: &str, account: &str) -> Result<Totp, TotpError> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(DIGITS)
        .with_step_duration(STEP_SECONDS)
        .with_skew(SKEW)
        .with_secret(Secret::from(secret.to_vec()))
        .with_issuer(Some(issuer))
        .with_account_name(account)
        .build()
        .map_err(|e| TotpError::BadSecret(e.to_string()))
}

/// Base32 (RFC 4648, no padding), for typing into an app by hand.
pub fn base32(secret: &[u8]) -> String {
    Secret::from(secret.to_vec()).to_base32()
}

/// The secret in groups of four characters, easier to read off a screen.
pub fn grouped(base32: &str) -> String {
    base32.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(" ")
}

/// The `otpauth://totp/...` URI authenticator apps read from a QR code or a tap.
pub fn provisioning_uri(secret: &[u8], issuer: &str, account: &str) -> Result<String, TotpError> {
    totp(secret, issuer, account)?.to_url().map_err(|e| TotpError::BadSecret(e.to_string()))
}

/// Checks `code` at time `now`. Returns the matched step, which must be later than `last_step`
/// (the last one accepted for this account): a code is good once.
pub fn verify(secret: &[u8], code: &str, now: UnixTime, last_step: u64) -> Result<u64, TotpError> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TotpError::Wrong);
    }
    let totp = totp(secret, "portcullis", "check")?;
    // `check` compares in constant time and returns the step that matched.
    let step = totp.check(&code, now.max(0) as u64).ok_or(TotpError::Wrong)?;
    if step <= last_step { Err(TotpError::Replayed) } else { Ok(step) }
}

/// The code for `now`; used by tests and the clock-skew self-check.
pub fn code_at(secret: &[u8], now: UnixTime) -> Result<String, TotpError> {
    Ok(totp(secret, "portcullis", "check")?.generate(now.max(0) as u64).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1 rows (8 digits, the 20-byte ASCII secret "1234...890").
    #[test]
    fn rfc_6238_appendix_b_vectors() {
        let secret = b"12345678901234567890";
        let vectors = [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ];
        let totp = Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(8)
            .with_step_duration(30)
            .with_secret(Secret::from(secret.to_vec()))
            .build()
            .unwrap();
        for (time, expected) in vectors {
            assert_eq!(totp.generate(time).to_string(), expected, "t = {time}");
        }
        // And our 6-digit codes are the last six digits of the same values (RFC 4226 truncation).
        assert_eq!(code_at(secret, 59).unwrap(), "287082");
    }

    #[test]
    fn one_step_either_side_is_accepted_two_are_not() {
        let secret = new_secret();
        let now = 1_800_000_015; // mid-step
        for (offset, ok) in [(-60, false), (-30, true), (0, true), (30, true), (60, false)] {
            let code = code_at(&secret, now + offset).unwrap();
            assert_eq!(verify(&secret, &code, now, 0).is_ok(), ok, "offset {offset}");
        }
    }

    #[test]
    fn a_step_once_accepted_is_never_accepted_again() {
        let secret = new_secret();
        let now = 1_800_000_015;
        let code = code_at(&secret, now).unwrap();
        let step = verify(&secret, &code, now, 0).unwrap();
        assert_eq!(verify(&secret, &code, now, step), Err(TotpError::Replayed));
        // Nor an older one, even if still inside the window.
        let previous = code_at(&secret, now - 30).unwrap();
        assert_eq!(verify(&secret, &previous, now, step), Err(TotpError::Replayed));
        // The next step is fine.
        let next = code_at(&secret, now + 30).unwrap();
        assert!(verify(&secret, &next, now + 30, step).is_ok());
    }

    #[test]
    fn malformed_codes_are_wrong_not_errors() {
        let secret = new_secret();
        for code in ["", "12345", "1234567", "abcdef", "12 34 5x"] {
            assert_eq!(verify(&secret, code, 1_800_000_000, 0), Err(TotpError::Wrong), "{code:?}");
        }
        let code = code_at(&secret, 1_800_000_000).unwrap();
        let spaced = format!("{} {}", &code[..3], &code[3..]);
        assert!(verify(&secret, &spaced, 1_800_000_000, 0).is_ok(), "spaces are ignored");
    }

    /// Cross-check against a real TOTP client (Debian's `oathtool`); the RFC vectors above are
    /// the authority, this only catches an encoding mix-up in base32. CI installs it, so there
    /// its absence is a failure; elsewhere the skip is said out loud.
    #[test]
    fn agrees_with_oathtool() {
        let secret = new_secret();
        let now = 1_800_000_000;
        let Ok(output) = std::process::Command::new("oathtool")
            .args(["--totp", "-b", &base32(&secret), "--now", "2027-01-15 08:00:00 UTC"])
            .output()
        else {
            assert!(std::env::var_os("CI").is_none(), "CI must run the oathtool cross-check: install oathtool");
            eprintln!(
                "\n*** SKIPPED the oathtool cross-check: oathtool is not installed (apt-get install oathtool) ***\n"
            );
            return;
        };
        let theirs = String::from_utf8_lossy(&output.stdout).trim().to_string();
        assert_eq!(theirs, code_at(&secret, now).unwrap());
    }

    #[test]
    fn provisioning_uri_names_issuer_account_and_parameters() {
        let secret = new_secret();
        let uri = provisioning_uri(&secret, "Example Wiki", "alice").unwrap();
        assert!(uri.starts_with("otpauth://totp/Example%20Wiki:alice?"), "{uri}");
        assert!(uri.contains(&format!("secret={}", base32(&secret))));
        assert!(uri.contains("issuer=Example%20Wiki"));
    }
}
