//! Brute-force regulation for passwords, TOTP codes and recovery codes.
//!
//! Failures are counted per account *and* per client address, in a sliding window; reaching
//! `max_failures` bans that subject for `ban`, doubling with each ban in a row (capped at a day).
//! State is persisted, so a restart does not reset it, and keyed by account and address rather
//! than by session, so starting the login over or opening a new session changes nothing
//! (caddy-security#271). Unknown accounts are regulated exactly like real ones, so a lockout says
//! nothing about whether an account exists.
//!
//! Separately, an account's *consecutive* second-factor failures are capped at 100 (NIST SP
//! 800-63B §5.2.2): past that the second factor is refused until an operator resets it.

use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::clock::{SharedClock, UnixTime};
use crate::config::RegulationSettings;
use crate::store::{Store, StoreError};

/// NIST SP 800-63B §5.2.2: at most 100 consecutive failed attempts on one authenticator.
pub const MAX_CONSECUTIVE_SECOND_FACTOR_FAILURES: u32 = 100;
const MAX_BAN_SECONDS: i64 = 24 * 3600;

/// Who is being regulated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Account(String),
    Address(IpAddr),
}

impl Subject {
    /// The key this subject is persisted under.
    pub fn store_key(&self) -> String {
        match self {
            Self::Account(name) => format!("account:{name}"),
            Self::Address(ip) => format!("address:{ip}"),
        }
    }
}

/// What is persisted per subject.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegulationRecord {
    /// Failure times inside the current window.
    pub failures: Vec<UnixTime>,
    pub banned_until: Option<UnixTime>,
    /// Bans in a row; each doubles the next.
    pub bans: u32,
    /// Consecutive second-factor failures (accounts only), reset by a success.
    #[serde(default)]
    pub second_factor_streak: u32,
}

/// A ban or lock in force, as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restriction {
    /// `account:NAME` or `address:IP`.
    pub subject: String,
    pub banned_until: Option<UnixTime>,
    pub second_factor_locked: bool,
    pub bans_in_a_row: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Try again at this time.
    Banned(UnixTime),
    /// The account's second factor is locked until an operator resets it.
    SecondFactorLocked,
}

pub struct Regulator {
    records: DashMap<String, RegulationRecord>,
    store: Arc<dyn Store>,
    settings: RegulationSettings,
    clock: SharedClock,
}

impl Regulator {
    pub fn open(store: Arc<dyn Store>, settings: RegulationSettings, clock: SharedClock) -> Result<Self, StoreError> {
        let records = DashMap::new();
        for (key, record) in store.regulation()? {
            records.insert(key, record);
        }
        Ok(Self { records, store, settings, clock })
    }

    /// Whether these subjects may try now. Memory only.
    pub fn check(&self, subjects: &[Subject]) -> Verdict {
        let now = self.clock.now();
        let mut verdict = Verdict::Allowed;
        for subject in subjects {
            if let Some(record) = self.records.get(&subject.store_key()) {
                if record.second_factor_streak >= MAX_CONSECUTIVE_SECOND_FACTOR_FAILURES {
                    return Verdict::SecondFactorLocked;
                }
                if let Some(until) = record.banned_until.filter(|until| *until > now) {
                    verdict = match verdict {
                        Verdict::Banned(other) => Verdict::Banned(other.max(until)),
                        _ => Verdict::Banned(until),
                    };
                }
            }
        }
        verdict
    }

    /// Counts a failure against every subject; returns whether any of them is now banned.
    pub async fn failed(&self, subjects: &[Subject], second_factor: bool) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let window = self.settings.window.as_secs() as i64;
        let mut banned = false;
        let mut changed = Vec::new();
        for subject in subjects {
            let key = subject.store_key();
            let mut record = self.records.entry(key.clone()).or_default();
            record.failures.retain(|t| now - t < window);
            record.failures.push(now);
            if second_factor && matches!(subject, Subject::Account(_)) {
                record.second_factor_streak += 1;
            }
            if record.failures.len() as u32 >= self.settings.max_failures {
                let base = self.settings.ban.as_secs() as i64;
                let length = (base << record.bans.min(16)).min(MAX_BAN_SECONDS);
                record.banned_until = Some(now + length);
                record.bans += 1;
                record.failures.clear();
                banned = true;
            }
            changed.push((key, record.clone()));
        }
        self.persist(changed).await?;
        Ok(banned)
    }

    /// A success clears an account's failures and its second-factor streak (not its ban history
    /// while a ban is running, and never an address's: one right password from an address does
    /// not excuse the guesses it made against other accounts).
    pub async fn succeeded(&self, account: &str, second_factor: bool) -> Result<(), StoreError> {
        let key = Subject::Account(account.to_string()).store_key();
        let Some(mut record) = self.records.get_mut(&key) else { return Ok(()) };
        record.failures.clear();
        if second_factor {
            record.second_factor_streak = 0;
        }
        if record.banned_until.is_none_or(|until| until <= self.clock.now()) {
            record.bans = 0;
            record.banned_until = None;
        }
        let snapshot = record.clone();
        drop(record);
        self.persist(vec![(key, snapshot)]).await
    }

    /// Forgets subjects with nothing left to remember: no failures in the window, no ban running
    /// or within the last day (so repeat offenders still get longer bans), no second-factor
    /// streak. Without this, every user name and address ever tried would be kept forever.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let window = self.settings.window.as_secs() as i64;
        let stale: Vec<String> = self
            .records
            .iter()
            .filter(|r| {
                let record = r.value();
                record.second_factor_streak == 0
                    && record.failures.iter().all(|t| now - t >= window)
                    && record.banned_until.is_none_or(|until| now - until >= MAX_BAN_SECONDS)
            })
            .map(|r| r.key().clone())
            .collect();
        for key in &stale {
            self.records.remove(key);
        }
        let store = self.store.clone();
        let removed = stale.len();
        tokio::task::spawn_blocking(move || {
            for key in &stale {
                store.delete_regulation(key)?;
            }
            Ok::<_, StoreError>(())
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))??;
        Ok(removed)
    }

    /// Subjects that are banned now, or whose second factor is locked, for the operator.
    pub fn restrictions(&self) -> Vec<Restriction> {
        let now = self.clock.now();
        let mut found: Vec<Restriction> = self
            .records
            .iter()
            .filter_map(|r| {
                let record = r.value();
                let locked = record.second_factor_streak >= MAX_CONSECUTIVE_SECOND_FACTOR_FAILURES;
                let until = record.banned_until.filter(|until| *until > now);
                (locked || until.is_some()).then(|| Restriction {
                    subject: r.key().clone(),
                    banned_until: until,
                    second_factor_locked: locked,
                    bans_in_a_row: record.bans,
                })
            })
            .collect();
        found.sort_by(|a, b| a.subject.cmp(&b.subject));
        found
    }

    /// Lifts everything held against a subject (`account:NAME` or `address:IP`), in memory and in
    /// the store. Returns whether there was anything to lift.
    pub async fn clear(&self, store_key: &str) -> Result<bool, StoreError> {
        let existed = self.records.remove(store_key).is_some();
        let store = self.store.clone();
        let key = store_key.to_string();
        tokio::task::spawn_blocking(move || {
            store.delete_regulation(&key)?;
            store.flush()
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))??;
        Ok(existed)
    }

    async fn persist(&self, changed: Vec<(String, RegulationRecord)>) -> Result<(), StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            for (key, record) in &changed {
                store.put_regulation(key, record)?;
            }
            store.flush()
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, FixedClock};
    use crate::store::memory::MemoryStore;
    use std::time::Duration;

    fn regulator(clock: &FixedClock, store: Arc<dyn Store>) -> Regulator {
        let settings =
            RegulationSettings { max_failures: 5, window: Duration::from_secs(300), ban: Duration::from_secs(900) };
        Regulator::open(store, settings, Arc::new(clock.clone())).unwrap()
    }

    #[tokio::test]
    async fn five_failures_in_the_window_ban_and_bans_grow() {
        let clock = FixedClock::at(1_000_000);
        let reg = regulator(&clock, Arc::new(MemoryStore::default()));
        let who = [Subject::Account("alice".into()), Subject::Address("203.0.113.7".parse().unwrap())];
        for _ in 0..4 {
            assert!(!reg.failed(&who, false).await.unwrap());
        }
        assert_eq!(reg.check(&who), Verdict::Allowed);
        assert!(reg.failed(&who, false).await.unwrap());
        assert_eq!(reg.check(&who), Verdict::Banned(1_000_000 + 900));
        // Another account from the same address is banned too; the same account from elsewhere too.
        assert!(matches!(reg.check(&[Subject::Account("bob".into()), who[1].clone()]), Verdict::Banned(_)));
        assert!(matches!(
            reg.check(&[who[0].clone(), Subject::Address("198.51.100.1".parse().unwrap())]),
            Verdict::Banned(_)
        ));
        clock.advance(900);
        assert_eq!(reg.check(&who), Verdict::Allowed);
        for _ in 0..5 {
            reg.failed(&who, false).await.unwrap();
        }
        assert_eq!(reg.check(&who), Verdict::Banned(clock.now() + 1800), "the second ban is twice as long");
    }

    #[tokio::test]
    async fn failures_outside_the_window_do_not_add_up() {
        let clock = FixedClock::at(1_000_000);
        let reg = regulator(&clock, Arc::new(MemoryStore::default()));
        let who = [Subject::Account("alice".into())];
        // One failure every 100 s: never more than three in any 300-second window.
        for _ in 0..10 {
            assert!(!reg.failed(&who, false).await.unwrap());
            assert_eq!(reg.check(&who), Verdict::Allowed);
            clock.advance(100);
        }
    }

    #[tokio::test]
    async fn state_survives_a_restart() {
        let clock = FixedClock::at(1_000_000);
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let who = [Subject::Account("alice".into())];
        {
            let reg = regulator(&clock, store.clone());
            for _ in 0..5 {
                reg.failed(&who, false).await.unwrap();
            }
        }
        let reopened = regulator(&clock, store);
        assert!(matches!(reopened.check(&who), Verdict::Banned(_)));
    }

    #[tokio::test]
    async fn stale_records_are_swept_but_recent_offenders_are_kept() {
        let clock = FixedClock::at(1_000_000);
        let reg = regulator(&clock, Arc::new(MemoryStore::default()));
        let once = [Subject::Account("typo".into())];
        let offender = [Subject::Address("203.0.113.9".parse().unwrap())];
        reg.failed(&once, false).await.unwrap();
        for _ in 0..5 {
            reg.failed(&offender, false).await.unwrap();
        }
        clock.advance(3600);
        assert_eq!(reg.sweep().await.unwrap(), 1, "the single old failure is forgotten");
        assert!(reg.records.contains_key(&offender[0].store_key()), "a ban from the last day is remembered");
        clock.advance(2 * 24 * 3600);
        assert_eq!(reg.sweep().await.unwrap(), 1);
        assert!(reg.records.is_empty());
    }

    #[tokio::test]
    async fn a_hundred_consecutive_second_factor_failures_lock_the_factor() {
        let clock = FixedClock::at(1_000_000);
        let reg = regulator(&clock, Arc::new(MemoryStore::default()));
        let who = [Subject::Account("alice".into())];
        for _ in 0..MAX_CONSECUTIVE_SECOND_FACTOR_FAILURES {
            reg.failed(&who, true).await.unwrap();
            clock.advance(24 * 3600); // wait out every ban: the cap still applies
        }
        assert_eq!(reg.check(&who), Verdict::SecondFactorLocked);
        assert_eq!(reg.restrictions().len(), 1);
        assert!(reg.restrictions()[0].second_factor_locked);
        assert!(reg.clear(&who[0].store_key()).await.unwrap());
        assert_eq!(reg.check(&who), Verdict::Allowed);
        assert!(reg.restrictions().is_empty());
    }
}
