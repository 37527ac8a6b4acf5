//! Sessions on other hosts. The session cookie never leaves the main host (host-only, `__Host-`
//! on https: a grain or a subdomain app could otherwise read or toss it), so another host gets a
//! session of its own, handed over from a full session on the main host: same user, same proof,
//! same family, its own id and CSRF token, valid on that host only.

use std::sync::Arc;

use super::id::{SessionId, SessionKey};
use super::record::SessionRecord;
use super::state::{FullSession, LiveStage};
use super::{SessionError, Sessions};

impl Sessions {
    /// A session for `host`, made from the full session `parent` on the main host. It proves what
    /// `parent` proved (when and how), and ends when `parent`'s family does, or at `parent`'s
    /// absolute end.
    pub(crate) async fn for_host(
        &self,
        parent: &FullSession,
        host: &str,
    ) -> Result<(SessionId, FullSession), SessionError> {
        let now = self.clock.now();
        let record = SessionRecord {
            host: Some(host.to_string()),
            created_at: now,
            last_seen: now,
            csrf_token: crate::base::secret::random_token(),
            ..parent.entry.snapshot()
        };
        let (id, key, entry) = self.store_new(record, LiveStage::Full(parent.stage().clone()), None).await?;
        Ok((id, FullSession { key, entry, user: Arc::clone(&parent.user) }))
    }

    /// Ends the session `key` and every session of its family: signing out on the main host signs
    /// out of every host it was handed to. Returns how many ended.
    pub async fn end_family(&self, key: &SessionKey) -> Result<usize, SessionError> {
        let Some(family) = self.cache.get(key).map(|e| e.value().family().to_string()) else {
            self.end(key).await?;
            return Ok(0);
        };
        let members: Vec<SessionKey> = self
            .cache
            .iter()
            .filter(|e| e.key() == key || (!family.is_empty() && e.value().family() == family))
            .map(|e| e.key().clone())
            .collect();
        for member in &members {
            self.end(member).await?;
        }
        Ok(members.len())
    }
}
