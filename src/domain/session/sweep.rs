//! Keeping the sessions in memory and in the store in step, off the hot path: expiry, and the
//! `last_seen` of busy sessions written at most once a minute.

use super::record::{delete, put};
use super::{Sessions, SweepReport};
use crate::store::StoreError;

impl Sessions {
    /// Drops expired sessions and persists `last_seen` for sessions that were used, at most
    /// once a minute each. Runs on a timer and at shutdown, off the hot path.
    pub async fn sweep(&self) -> Result<SweepReport, StoreError> {
        let now = self.clock.now();
        let mut report = SweepReport::default();
        let mut expired = Vec::new();
        let mut writes = Vec::new();
        let mut ran_out = Vec::new();
        let mut touched = Vec::new();
        for item in self.cache.iter() {
            let entry = item.value();
            let last_seen = entry.last_seen();
            if self.expiry(entry, now).is_err() {
                ran_out.push((item.key().clone(), entry.clone()));
            } else if last_seen.saturating_sub(entry.persisted_last_seen()) >= 60 {
                if self.shared() {
                    touched.push((item.key().clone(), last_seen));
                } else {
                    writes.push(put(item.key(), &entry.snapshot())?);
                }
                entry.persisted_at(last_seen);
                report.touched += 1;
            }
        }
        for (key, last_seen) in touched {
            self.touch_stored(&key, last_seen).await?;
        }
        for (key, entry) in ran_out {
            if !self.expired_everywhere(&key, &entry).await? {
                continue;
            }
            // A half-logged-in session that ran out: the password was right, the second step
            // never came. The caller decides whether that is worth telling the user.
            if !entry.is_full() {
                report.abandoned.push(entry.user().to_string());
            }
            expired.push(key);
        }
        for key in expired {
            self.cache.remove(&key);
            writes.push(delete(&key));
            report.expired += 1;
        }
        if !writes.is_empty() {
            self.store.apply(writes).await?;
        }
        Ok(report)
    }

    /// Persists every session's latest activity, for a clean shutdown. Not with a shared store:
    /// other replicas may have changed these sessions, and the sweep kept `last_seen` within a
    /// minute anyway.
    pub async fn persist_all(&self) -> Result<(), StoreError> {
        if self.shared() {
            return Ok(());
        }
        let writes =
            self.cache.iter().map(|item| put(item.key(), &item.value().snapshot())).collect::<Result<Vec<_>, _>>()?;
        self.store.apply(writes).await
    }
}
