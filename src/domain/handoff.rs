//! Handing a signed-in session from the main host to another host the proxy serves: a code made
//! on the main host, carried in a top-level redirect, and exchanged on the other host for a
//! session of its own. A code works once, for [`CODE_LIFETIME`], on the one host it was made
//! for. Only its digest is kept, so the store never holds a usable code. Codes are flows
//! ([`Flows`]): with replicas, a code made by one is exchanged on any, once.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::base::clock::UnixTime;
use crate::domain::flows::Flows;
use crate::domain::session::SessionKey;

/// How long a code may take from the redirect to the exchange: a browser follows a redirect at
/// once; anything slower is a copied link.
pub const CODE_LIFETIME: i64 = 30;

#[derive(Serialize, Deserialize)]
struct Pending {
    /// The main-host session's key.
    parent: Vec<u8>,
    host: String,
    /// The digest of the state the other host gave the browser that asked: only that browser
    /// can use the code (else an attacker's code would sign a victim's browser in as the attacker).
    state: [u8; 32],
    expires_at: UnixTime,
}

/// Codes made and not yet used.
pub struct HandoffCodes(Flows);

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

fn flow_key(code: &str) -> String {
    let hex: String = crate::base::text::hex(&digest(code));
    format!("handoff:{hex}")
}

/// Kept a little longer than a code works, so an expired code is told apart from an unknown one.
const KEPT_FOR: Duration = Duration::from_secs(CODE_LIFETIME as u64 + 30);

impl HandoffCodes {
    pub fn new(flows: Flows) -> Self {
        Self(flows)
    }

    /// A new code handing the full session `parent` (its key) to `host`, for the browser that
    /// holds `state` there.
    pub async fn issue(
        &self,
        parent: &SessionKey,
        host: &str,
        state: &str,
        now: UnixTime,
    ) -> Result<String, crate::store::StoreError> {
        let code = crate::base::secret::random_token();
        let pending = Pending {
            parent: parent.as_bytes().to_vec(),
            host: host.to_string(),
            state: digest(state),
            expires_at: now + CODE_LIFETIME,
        };
        let bytes = serde_json::to_vec(&pending).ok();
        self.0.update(&flow_key(&code), KEPT_FOR, |_| (bytes.clone(), ())).await?;
        Ok(code)
    }

    /// Spends `code` on `host`: the main-host session it hands over. A code is gone after its
    /// first use, whatever the outcome, so a replay finds nothing.
    pub async fn redeem(
        &self,
        code: &str,
        host: &str,
        state: &str,
        now: UnixTime,
    ) -> Result<SessionKey, HandoffRefused> {
        let taken = self.0.update(&flow_key(code), KEPT_FOR, |current| (None, current.map(<[u8]>::to_vec))).await;
        let taken = taken.unwrap_or_else(|e| {
            tracing::error!(target: "portcullis::store", "a handoff code could not be read: {e}");
            None
        });
        let pending: Pending =
            taken.and_then(|bytes| serde_json::from_slice(&bytes).ok()).ok_or(HandoffRefused::Unknown)?;
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
        SessionKey::from_slice(&pending.parent).ok_or(HandoffRefused::Unknown)
    }

    /// Forgets codes nobody used (a shared store forgets its own).
    pub fn sweep(&self) {
        self.0.sweep();
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn parent() -> SessionKey {
        SessionKey::from_slice(&[7; 32]).unwrap()
    }

    #[tokio::test]
    async fn a_code_works_once_in_time_on_its_own_host() {
        let codes = HandoffCodes::new(Flows::in_memory());
        let code = codes.issue(&parent(), "wiki.example.com", "state", 1_000).await.unwrap();
        assert_eq!(codes.redeem(&code, "wiki.example.com", "state", 1_000 + CODE_LIFETIME).await, Ok(parent()));
        assert_eq!(codes.redeem(&code, "wiki.example.com", "state", 1_001).await, Err(HandoffRefused::Unknown), "used");

        let late = codes.issue(&parent(), "wiki.example.com", "state", 1_000).await.unwrap();
        assert_eq!(
            codes.redeem(&late, "wiki.example.com", "state", 1_000 + CODE_LIFETIME + 1).await,
            Err(HandoffRefused::Expired)
        );
        let misplaced = codes.issue(&parent(), "wiki.example.com", "state", 1_000).await.unwrap();
        assert_eq!(codes.redeem(&misplaced, "notes.example.com", "state", 1_001).await, Err(HandoffRefused::OtherHost));
        assert_eq!(
            codes.redeem(&misplaced, "wiki.example.com", "state", 1_001).await,
            Err(HandoffRefused::Unknown),
            "spent by the attempt"
        );
        assert_eq!(codes.redeem("made-up", "wiki.example.com", "state", 1_001).await, Err(HandoffRefused::Unknown));

        let attackers = codes.issue(&parent(), "wiki.example.com", "attacker's state", 1_000).await.unwrap();
        assert_eq!(
            codes.redeem(&attackers, "wiki.example.com", "victim's state", 1_001).await,
            Err(HandoffRefused::OtherBrowser)
        );
    }
}
