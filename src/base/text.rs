//! Text for people and logs: times in words, and client text made safe for a log line.

/// Text a client chose (a user name typed into the login form, an `Upgrade` value), made safe for
/// a log line: control characters are written as `\u{..}` escapes, so a name with a newline in it
/// cannot forge a line in the human log, and very long text is cut. (The JSON audit trail escapes
/// on its own; the human log does not.)
pub struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        const MAX_CHARS: usize = 128;
        for c in self.0.chars().take(MAX_CHARS) {
            // Controls, line separators, and the bidirectional formatting characters that can
            // make a log line read differently from what it holds ("Trojan Source", CVE-2021-42574).
            let bidi =
                matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || c == '\u{2028}' || c == '\u{2029}' || bidi {
                write!(f, "\\u{{{:x}}}", c as u32)?;
            } else {
                f.write_char(c)?;
            }
        }
        if self.0.chars().nth(MAX_CHARS).is_some() {
            f.write_str("…")?;
        }
        Ok(())
    }
}

/// Whole minutes in `seconds`, rounded up and at least one: "try again in about N minutes".
pub fn whole_minutes(seconds: i64) -> i64 {
    (seconds.max(1) + 59) / 60
}

/// A Unix time as `2026-11-30 15:10:53 UTC`, for pages, mails and the CLI.
pub fn format_utc(t: crate::base::clock::UnixTime) -> String {
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
    let text = humantime::format_rfc3339_seconds(when).to_string();
    format!("{} UTC", text.trim_end_matches('Z').replace('T', " "))
}

/// Bytes as lower-case hex (digests, handles, keys in the store).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::{Escaped, format_utc};

    #[test]
    fn client_text_cannot_break_a_log_line() {
        let forged = "bob\n2026-11-30T12:00:00Z  INFO portcullis::security: login ok user=admin";
        let logged = Escaped(forged).to_string();
        assert!(!logged.contains('\n') && logged.starts_with("bob\\u{a}2026"), "{logged}");
        assert_eq!(Escaped("tab\there\r").to_string(), "tab\\u{9}here\\u{d}");
        assert_eq!(Escaped(&"x".repeat(200)).to_string().chars().count(), 129);
        assert_eq!(Escaped("alice").to_string(), "alice");
        assert_eq!(Escaped("admin\u{202e}nimda").to_string(), "admin\\u{202e}nimda", "bidi overrides too");
    }

    #[test]
    fn times_read_as_utc() {
        assert_eq!(format_utc(1_800_000_000), "2027-01-15 08:00:00 UTC");
        assert_eq!(format_utc(-5), "1970-01-01 00:00:00 UTC");
    }
}
