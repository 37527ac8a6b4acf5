//! Brute-force regulation for passwords and second-factor codes.
//!
//! Failures are counted per *subject* in a sliding window; reaching the subject's limit bans it
//! for `ban`, doubling with each ban in a row (capped at a day). State is persisted, so a restart
//! does not reset it, and keyed by account, client address or known browser rather than by
//! session, so starting the login over or opening a new session changes nothing
//! (caddy-security#271). Unknown accounts are regulated exactly like real ones, so a pause says
//! nothing about whether an account exists.
//!
//! * Passwords and second-factor codes are counted, and paused, apart, for every subject: a right
//!   password never forgives wrong codes (else "password, four wrong codes" could be repeated
//!   forever; only a proven second factor does), and wrong passwords typed elsewhere never stop
//!   the owner, who has the password, from proving their second factor.
//! * An **account** allows `max_failures` of each per window.
//! * An **address** allows `address_max_failures` of each, much more: many people can share one
//!   address (an office, a VPN), and one person's typos must not pause all of them. IPv6 clients
//!   are counted per /64, the block one subscriber usually gets, so they cannot hop addresses.
//! * A **known browser** is one that signed in to the account before (OWASP, "Slow Down Online
//!   Guessing Attacks with Device Cookies"): it carries a signed cookie for that account, and its
//!   attempts count against that cookie alone, so neither an attacker guessing the account's
//!   password from elsewhere nor a busy shared address locks its owner out.
//!
//! An attempt is **reserved** before it is checked ([`Regulator::reserve`]) and counts as a failure
//! until it succeeds, so forty guesses sent at once on one HTTP/2 connection cannot all be
//! evaluated while the first is still being hashed.
//!
//! Separately, an account's *consecutive* second-factor failures are capped at 100 (NIST SP
//! 800-63B §5.2.2): past that the second factor is refused until an operator resets it.

use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::base::clock::{SharedClock, UnixTime};
use crate::config::RegulationSettings;
use crate::store::{Space, Store, StoreError, Write, decode, text_key};

/// NIST SP 800-63B §5.2.2: at most 100 consecutive failed attempts on one authenticator.
pub const MAX_CONSECUTIVE_SECOND_FACTOR_FAILURES: u32 = 100;
const MAX_BAN_SECONDS: i64 = 24 * 3600;

/// Who is being regulated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Account(String),
    /// A client address block; made by [`Subject::address`].
    Address(AddressBlock),
    /// A browser holding a known-browser cookie, by the cookie's random id.
    Browser(String),
}

/// An IPv4 address, or the /64 of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressBlock(IpAddr);

/// Which kind of subject a ban is on, for words that say what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Account,
    Address,
    Browser,
}

impl Subject {
    /// The subject for a client address: an IPv4 address (or an IPv4-mapped IPv6 one) as it is,
    /// an IPv6 address by its /64, since one subscriber usually holds a whole /64 and could
    /// otherwise try from a new address every time.
    pub fn address(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::Address(AddressBlock(IpAddr::V4(v4))),
                None => {
                    let s = v6.segments();
                    Self::Address(AddressBlock(IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))))
                }
            },
            v4 => Self::Address(AddressBlock(v4)),
        }
    }

    /// The key this subject is persisted under.
    pub fn store_key(&self) -> String {
        match self {
            Self::Account(name) => format!("account:{name}"),
            Self::Address(AddressBlock(IpAddr::V6(v6))) => format!("address:{v6}/64"),
            Self::Address(AddressBlock(ip)) => format!("address:{ip}"),
            Self::Browser(id) => format!("browser:{id}"),
        }
    }

    pub fn who(&self) -> Who {
        match self {
            Self::Account(_) => Who::Account,
            Self::Address(_) => Who::Address,
            Self::Browser(_) => Who::Browser,
        }
    }
}

/// What is being tried: each has its own count on an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    Password,
    SecondFactor,
}

/// A pause on one kind of attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub until: Option<UnixTime>,
    /// Pauses in a row; each doubles the next.
    pub in_a_row: u32,
}

impl Pause {
    fn running(&self, now: UnixTime) -> Option<UnixTime> {
        self.until.filter(|until| *until > now)
    }
}

/// What is persisted per subject.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegulationRecord {
    /// Wrong passwords inside the current window (`failures` in records written before wrong
    /// codes were counted apart).
    #[serde(default, alias = "failures")]
    pub password_failures: Vec<UnixTime>,
    /// Wrong second-factor codes inside the current window.
    #[serde(default)]
    pub code_failures: Vec<UnixTime>,
    #[serde(default)]
    pub password_pause: Pause,
    #[serde(default)]
    pub code_pause: Pause,
    /// A pause from a record written before the two were kept apart; it applies to both.
    #[serde(default, rename = "banned_until", skip_serializing)]
    legacy_until: Option<UnixTime>,
    #[serde(default, rename = "bans", skip_serializing)]
    legacy_in_a_row: u32,
    /// Consecutive second-factor failures (accounts only), reset by a success.
    #[serde(default)]
    pub second_factor_streak: u32,
    /// Attempts being checked right now, counted as failures until they succeed. Not persisted:
    /// a restart ends every attempt in flight.
    #[serde(skip)]
    in_flight: [u32; 2],
    /// With a store several replicas share: the attempts in flight on every replica, each until
    /// it is settled or its time runs out (a replica that died mid-check). Counted like
    /// `in_flight`, so a burst spread over the replicas gets no more checks than one would.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    reserved: Vec<Reservation>,
}

/// One attempt in flight somewhere, in a shared store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    id: u64,
    /// 0: password, 1: second factor.
    factor: u8,
    until: UnixTime,
}

/// How long a reservation in a shared store holds if the replica that made it never settles it.
const RESERVATION_SECONDS: i64 = 60;

impl RegulationRecord {
    /// Moves a pause from an older record format onto both kinds of attempt.
    fn upgraded(mut self) -> Self {
        if self.legacy_until.is_some() || self.legacy_in_a_row > 0 {
            let pause = Pause { until: self.legacy_until.take(), in_a_row: std::mem::take(&mut self.legacy_in_a_row) };
            self.password_pause = pause;
            self.code_pause = pause;
        }
        self
    }

    fn failures(&mut self, factor: Factor) -> &mut Vec<UnixTime> {
        match factor {
            Factor::Password => &mut self.password_failures,
            Factor::SecondFactor => &mut self.code_failures,
        }
    }

    fn pause(&mut self, factor: Factor) -> &mut Pause {
        match factor {
            Factor::Password => &mut self.password_pause,
            Factor::SecondFactor => &mut self.code_pause,
        }
    }

    fn pause_of(&self, factor: Factor) -> Pause {
        match factor {
            Factor::Password => self.password_pause,
            Factor::SecondFactor => self.code_pause,
        }
    }

    fn in_flight(&mut self, factor: Factor) -> &mut u32 {
        &mut self.in_flight[factor as usize]
    }

    /// Failures and attempts in flight that count toward this subject's limit for `factor`.
    fn counted(&self, factor: Factor) -> usize {
        let list = match factor {
            Factor::Password => &self.password_failures,
            Factor::SecondFactor => &self.code_failures,
        };
        let reserved = self.reserved.iter().filter(|r| r.factor == factor as u8).count();
        list.len() + self.in_flight[factor as usize] as usize + reserved
    }

    /// Drops the reservation `id` (the attempt was settled) and those whose time ran out.
    fn settle(&mut self, id: Option<u64>, now: UnixTime) {
        self.reserved.retain(|r| Some(r.id) != id && r.until > now);
    }

    fn forget_old(&mut self, now: UnixTime, window: i64) {
        self.password_failures.retain(|t| now - t < window);
        self.code_failures.retain(|t| now - t < window);
    }
}

/// A ban or lock in force, as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restriction {
    /// `account:NAME`, `address:IP` or `browser:ID`.
    pub subject: String,
    pub banned_until: Option<UnixTime>,
    pub second_factor_locked: bool,
    pub bans_in_a_row: u32,
}

/// Why an attempt may not be made now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Paused until this time, because of failures counted against `who`.
    Banned { until: UnixTime, who: Who },
    /// So many attempts are being checked at once that one more could pass the limit: try again
    /// in a moment.
    Crowded,
    /// The account's second factor is locked until an operator resets it.
    SecondFactorLocked,
}

/// What a failed attempt led to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureOutcome {
    /// The subjects this failure banned, with the time each may try again.
    pub banned: Vec<(Who, UnixTime)>,
    /// How many more failures the strictest subject allows before it is paused.
    pub left: usize,
}

impl FailureOutcome {
    pub fn banned(&self, who: Who) -> bool {
        self.banned.iter().any(|(w, _)| *w == who)
    }

    /// When the last of the new bans ends, if this failure started any.
    pub fn until(&self) -> Option<UnixTime> {
        self.banned.iter().map(|(_, until)| *until).max()
    }
}

pub struct Regulator {
    records: DashMap<String, RegulationRecord>,
    store: Arc<dyn Store>,
    settings: RegulationSettings,
    clock: SharedClock,
}

/// An attempt that was let through and counts as a failure until settled. Dropping it unsettled
/// (an internal error before the answer was known) releases it without counting anything.
#[must_use = "settle the attempt with `failed` or `succeeded`"]
pub struct Attempt<'a> {
    regulator: &'a Regulator,
    subjects: Vec<Subject>,
    factor: Factor,
    settled: bool,
    /// Its reservation in a shared store (see [`RegulationRecord::reserved`]).
    reservation: Option<u64>,
}

impl Regulator {
    pub async fn open(
        store: Arc<dyn Store>,
        settings: RegulationSettings,
        clock: SharedClock,
    ) -> Result<Self, StoreError> {
        let records = DashMap::new();
        for (key, value) in store.scan(Space::Regulation).await? {
            records.insert(text_key(&key)?, decode::<RegulationRecord>(&value)?.upgraded());
        }
        Ok(Self { records, store, settings, clock })
    }

    fn limit(&self, subject: &Subject) -> usize {
        match subject {
            Subject::Address(_) => self.settings.address_max_failures as usize,
            _ => self.settings.max_failures as usize,
        }
    }

    /// Whether `subjects` may try `factor` now, without reserving anything (pages that only show
    /// a form use this). Memory only.
    pub fn check(&self, subjects: &[Subject], factor: Factor) -> Result<(), Refusal> {
        let now = self.clock.now();
        let mut refusal = None;
        for subject in subjects {
            let Some(record) = self.records.get(&subject.store_key()) else { continue };
            if let Some(found) = self.refusal(subject, &record, factor, now, false) {
                refusal = Some(stricter(refusal, found));
            }
        }
        refusal.map_or(Ok(()), Err)
    }

    fn refusal(
        &self,
        subject: &Subject,
        record: &RegulationRecord,
        factor: Factor,
        now: UnixTime,
        reserving: bool,
    ) -> Option<Refusal> {
        let locked = factor == Factor::SecondFactor
            && subject.who() == Who::Account
            && record.second_factor_streak >= MAX_CONSECUTIVE_SECOND_FACTOR_FAILURES;
        if locked {
            return Some(Refusal::SecondFactorLocked);
        }
        if let Some(until) = record.pause_of(factor).running(now) {
            return Some(Refusal::Banned { until, who: subject.who() });
        }
        (reserving && record.counted(factor) >= self.limit(subject)).then_some(Refusal::Crowded)
    }

    /// Lets one attempt through if no subject is paused and none is at its limit counting the
    /// attempts already in flight; the attempt then counts until it is settled.
    ///
    /// With a shared store the reservation is made in the store ([`Regulator::reserve_shared`]),
    /// so attempts in flight on other replicas count too.
    pub async fn reserve(&self, subjects: &[Subject], factor: Factor) -> Result<Attempt<'_>, Refusal> {
        if self.store.shared().is_some() {
            return self.reserve_shared(subjects, factor).await;
        }
        let now = self.clock.now();
        let window = self.settings.window.as_secs() as i64;
        let mut reserved: Vec<Subject> = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let mut record = self.records.entry(subject.store_key()).or_default();
            record.forget_old(now, window);
            if let Some(refusal) = self.refusal(subject, &record, factor, now, true) {
                drop(record);
                self.release(&reserved, factor);
                return Err(refusal);
            }
            *record.in_flight(factor) += 1;
            reserved.push(subject.clone());
        }
        Ok(Attempt { regulator: self, subjects: reserved, factor, settled: false, reservation: None })
    }

    fn release(&self, subjects: &[Subject], factor: Factor) {
        for subject in subjects {
            if let Some(mut record) = self.records.get_mut(&subject.store_key()) {
                let count = record.in_flight(factor);
                *count = count.saturating_sub(1);
            }
        }
    }

    /// Forgets subjects with nothing left to remember: no failures in the window, no ban running
    /// or within the last day (so repeat offenders still get longer bans), no second-factor
    /// streak, nothing in flight. Without this, every user name and address ever tried would be
    /// kept forever.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let window = self.settings.window.as_secs() as i64;
        let stale = |record: &RegulationRecord| {
            record.second_factor_streak == 0
                && record.in_flight == [0, 0]
                && record.reserved.iter().all(|r| r.until <= now)
                && record.password_failures.iter().chain(&record.code_failures).all(|t| now - t >= window)
                && [record.password_pause, record.code_pause]
                    .iter()
                    .all(|p| p.until.is_none_or(|until| now - until >= MAX_BAN_SECONDS))
        };
        let candidates: Vec<String> =
            self.records.iter().filter(|r| stale(r.value())).map(|r| r.key().clone()).collect();
        let mut removed = 0;
        for key in candidates {
            // Deleted only if the store's record is stale too: another replica may have counted a
            // failure since.
            let gone = crate::store::update(&*self.store, Space::Regulation, key.as_bytes(), |current| {
                let stored = current.map(decode::<RegulationRecord>).transpose()?.unwrap_or_default();
                Ok::<_, StoreError>(if stale(&stored) { (None, true) } else { (current.map(<[u8]>::to_vec), false) })
            })
            .await?;
            if gone && self.records.remove_if(&key, |_, record| stale(record)).is_some() {
                removed += 1;
            }
        }
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
                let until = record.password_pause.running(now).max(record.code_pause.running(now));
                (locked || until.is_some()).then(|| Restriction {
                    subject: r.key().clone(),
                    banned_until: until,
                    second_factor_locked: locked,
                    bans_in_a_row: record.password_pause.in_a_row.max(record.code_pause.in_a_row),
                })
            })
            .collect();
        found.sort_by(|a, b| a.subject.cmp(&b.subject));
        found
    }

    /// Lifts everything held against a subject (`account:NAME`, `address:IP`, `browser:ID`), in
    /// memory and in the store. Returns whether there was anything to lift.
    pub async fn clear(&self, store_key: &str) -> Result<bool, StoreError> {
        let existed = self.records.remove(store_key).is_some();
        self.store.apply(vec![Write::Delete { space: Space::Regulation, key: store_key.as_bytes().to_vec() }]).await?;
        Ok(existed)
    }
}

/// Of two refusals, the one to tell the person: a lock over a ban, the later ban over the
/// earlier, any ban over a crowd.
fn stricter(current: Option<Refusal>, found: Refusal) -> Refusal {
    match (current, found) {
        (Some(Refusal::SecondFactorLocked), _) | (_, Refusal::SecondFactorLocked) => Refusal::SecondFactorLocked,
        (Some(Refusal::Banned { until: a, who: wa }), Refusal::Banned { until: b, who: wb }) => {
            if a >= b {
                Refusal::Banned { until: a, who: wa }
            } else {
                Refusal::Banned { until: b, who: wb }
            }
        }
        (Some(banned @ Refusal::Banned { .. }), Refusal::Crowded) => banned,
        (_, found) => found,
    }
}

impl Attempt<'_> {
    /// Counts the attempt as a failure against every subject; says which ones it banned and how
    /// many tries the strictest one has left. Each subject's record is changed as the store holds
    /// it ([`Regulator::change`]), so failures counted at once by several replicas add up.
    pub async fn failed(mut self) -> Result<FailureOutcome, StoreError> {
        self.settled = true;
        let regulator = self.regulator;
        let (now, window) = (regulator.clock.now(), regulator.settings.window.as_secs() as i64);
        let base = regulator.settings.ban.as_secs() as i64;
        let mut outcome = FailureOutcome { banned: Vec::new(), left: usize::MAX };
        regulator.release(&self.subjects, self.factor);
        for subject in &self.subjects {
            let limit = regulator.limit(subject);
            let (factor, reservation) = (self.factor, self.reservation);
            let ban = regulator
                .change(subject, |record| {
                    record.forget_old(now, window);
                    record.settle(reservation, now);
                    record.failures(factor).push(now);
                    if factor == Factor::SecondFactor && subject.who() == Who::Account {
                        record.second_factor_streak += 1;
                    }
                    let counted = record.counted(factor);
                    if counted >= limit {
                        let pause = record.pause(factor);
                        let length = (base << pause.in_a_row.min(16)).min(MAX_BAN_SECONDS);
                        *pause = Pause { until: Some(now + length), in_a_row: pause.in_a_row + 1 };
                        record.failures(factor).clear();
                        Err(now + length)
                    } else {
                        Ok(limit - counted)
                    }
                })
                .await?;
            match ban {
                Err(until) => {
                    outcome.banned.push((subject.who(), until));
                    outcome.left = 0;
                }
                Ok(left) => outcome.left = outcome.left.min(left),
            }
        }
        Ok(outcome)
    }
    /// The attempt was right. For a password, the account's (or browser's) wrong passwords are
    /// forgiven, and the doubling of its password pauses starts over; for a second factor, both.
    /// An address is never forgiven: one right password from it does not excuse the guesses it
    /// made against other accounts. A pause already running stays.
    pub async fn succeeded(mut self) -> Result<(), StoreError> {
        self.settled = true;
        let regulator = self.regulator;
        let now = regulator.clock.now();
        regulator.release(&self.subjects, self.factor);
        for subject in &self.subjects {
            if subject.who() == Who::Address || !regulator.records.contains_key(&subject.store_key()) {
                // Not forgiven; only its reservation (in a shared store) ends.
                if self.reservation.is_some() {
                    regulator.change(subject, |record| record.settle(self.reservation, now)).await?;
                }
                continue;
            }
            let (factor, reservation) = (self.factor, self.reservation);
            regulator
                .change(subject, |record| {
                    record.settle(reservation, now);
                    let forgiven: &[Factor] = match factor {
                        Factor::Password => &[Factor::Password],
                        Factor::SecondFactor => &[Factor::Password, Factor::SecondFactor],
                    };
                    for factor in forgiven {
                        record.failures(*factor).clear();
                        if record.pause(*factor).running(now).is_none() {
                            *record.pause(*factor) = Pause::default();
                        }
                    }
                    if factor == Factor::SecondFactor {
                        record.second_factor_streak = 0;
                    }
                })
                .await?;
        }
        Ok(())
    }
}
impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.regulator.release(&self.subjects, self.factor);
        }
    }
}

mod shared;
#[cfg(test)]
mod tests;
