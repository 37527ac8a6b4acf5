//! Handing a signed-in session from the main host to another host the proxy serves: a code made
//! on the main host, carried in a top-level redirect, and exchanged on the other host for a
//! session of its own. A code works once, for [`CODE_LIFETIME`], on the one host it was made
//! for. Only its digest is kept, so the map never holds a usable code.

use dashmap::DashMap;
use sha2::{Digest, Sha256};

use crate::base::clock::UnixTime;
use crate::domain::session::SessionKey;

/// How long a code may take from the redirect to the exchange: a browser follows a redirect at
/// once; anything slower is a copied link.
pub const CODE_LIFETIME: i64 = 30;

struct Pending {
    parent: SessionKey,
    host: String,
    /// The digest of the state the other host gave the browser that asked: only that browser
    /// can use the code (else an attacker's code would sign a victim's browser in as the attacker).
    state: [u8; 32],
    expires_at: UnixTime,
}

/// Codes made and not yet used.
#[derive(Default)]
pub struct HandoffCodes(DashMap<[u8; 32], Pending>);

/// Why a code did not hand over a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandoffRefused {
    #[error("unknown or already used")]
    Unknown,
    #[error("expired")]
    Expired,
    #[error("made for another host")]
    OtherHost,
    #[error("made for another browser")]
    OtherBrowser,
}

fn digest(code: &str) -> [u8; 32] {
    Sha256::digest(code.as_bytes()).into()
}

impl HandoffCodes {
    /// A new code handing the full session `parent` (its key) to `host`, for the browser that
    /// holds `state` there.
    pub fn issue(&self, parent: &SessionKey, host: &str, state: &str, now: UnixTime) -> String {
        let code = crate::base::secret::random_token();
        let pending = Pending {
            parent: parent.clone(),
            host: host.to_string(),
            state: digest(state),
            expires_at: now + CODE_LIFETIME,
        };
        self.0.insert(digest(&code), pending);
        code
    }

    /// Spends `code` on `host`: the main-host session it hands over. A code is gone after its
    /// first use, whatever the outcome, so a replay finds nothing.
    pub fn redeem(&self, code: &str, host: &str, state: &str, now: UnixTime) -> Result<SessionKey, HandoffRefused> {
        let (_, pending) = self.0.remove(&digest(code)).ok_or(HandoffRefused::Unknown)?;
        if now > pending.expires_at {
            return Err(HandoffRefused::Expired);
        }
        if pending.host != host {
            return Err(HandoffRefused::OtherHost);
        }
        // Digests of random tokens, compared in constant time all the same.
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&pending.state[..], &digest(state)[..])) {
            return Err(HandoffRefused::OtherBrowser);
        }
        Ok(pending.parent)
    }

    /// Forgets codes nobody used.
    pub fn sweep(&self, now: UnixTime) {
        self.0.retain(|_, pending| pending.expires_at >= now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent() -> SessionKey {
        SessionKey::from_slice(&[7; 32]).unwrap()
    }

    #[test]
    fn a_code_works_once_in_time_on_its_own_host() {
        let codes = HandoffCodes::default();
        let code = codes.issue(&parent(), "wiki.example.com", "state", 1_000);
        assert_eq!(codes.redeem(&code, "wiki.example.com", "state", 1_000 + CODE_LIFETIME), Ok(parent()));
        assert_eq!(codes.redeem(&code, "wiki.example.com", "state", 1_001), Err(HandoffRefused::Unknown), "used");

        let late = codes.issue(&parent(), "wiki.example.com", "state", 1_000);
        assert_eq!(
            codes.redeem(&late, "wiki.example.com", "state", 1_000 + CODE_LIFETIME + 1),
            Err(HandoffRefused::Expired)
        );
        let misplaced = codes.issue(&parent(), "wiki.example.com", "state", 1_000);
        assert_eq!(codes.redeem(&misplaced, "notes.example.com", "state", 1_001), Err(HandoffRefused::OtherHost));
        assert_eq!(
            codes.redeem(&misplaced, "wiki.example.com", "state", 1_001),
            Err(HandoffRefused::Unknown),
            "spent by the attempt"
        );
        assert_eq!(codes.redeem("made-up", "wiki.example.com", "state", 1_001), Err(HandoffRefused::Unknown));

        let attackers = codes.issue(&parent(), "wiki.example.com", "attacker's state", 1_000);
        assert_eq!(
            codes.redeem(&attackers, "wiki.example.com", "victim's state", 1_001),
            Err(HandoffRefused::OtherBrowser)
        );

        let abandoned = codes.issue(&parent(), "wiki.example.com", "state", 1_000);
        codes.sweep(1_000 + CODE_LIFETIME + 1);
        assert_eq!(codes.redeem(&abandoned, "wiki.example.com", "state", 1_001), Err(HandoffRefused::Unknown), "swept");
    }
}
