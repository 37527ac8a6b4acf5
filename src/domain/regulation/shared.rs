//! Regulation records as the store holds them: every change is made to the store's version with a
//! compare-and-swap, so failures counted by several replicas at once all count, and a ban set by
//! one holds on all (each reads the record again when another writes it).

use super::{Attempt, Factor, RESERVATION_SECONDS, Refusal, RegulationRecord, Regulator, Reservation, Subject};
use crate::store::{Space, StoreError, decode, encode, text_key};

impl Regulator {
    /// Applies `change` to the subject's record as stored (with this process's attempts in flight,
    /// which are not stored), writes it, and keeps the result in memory. Returns what `change`
    /// returned.
    pub(super) async fn change<T>(
        &self,
        subject: &Subject,
        mut change: impl FnMut(&mut RegulationRecord) -> T,
    ) -> Result<T, StoreError> {
        let key = subject.store_key();
        let in_flight = || self.records.get(&key).map(|r| r.in_flight).unwrap_or_default();
        let mut written = None;
        let outcome = crate::store::update(&*self.store, Space::Regulation, key.as_bytes(), |current| {
            let mut record = current.map(decode::<RegulationRecord>).transpose()?.unwrap_or_default().upgraded();
            record.in_flight = in_flight();
            let outcome = change(&mut record);
            let bytes = encode(&record)?;
            written = Some(record);
            Ok::<_, StoreError>((Some(bytes), outcome))
        })
        .await?;
        if let Some(record) = written {
            self.install(key, record);
        }
        Ok(outcome)
    }

    /// Keeps `record` in memory for `key`, with this process's attempts in flight kept as they are.
    fn install(&self, key: String, mut record: RegulationRecord) {
        let mut held = self.records.entry(key).or_default();
        record.in_flight = held.in_flight;
        *held = record;
    }

    /// Reads one subject's record again after another replica wrote or deleted it.
    pub async fn refresh(&self, key: &[u8]) -> Result<(), StoreError> {
        let subject = text_key(key)?;
        match self.store.get(Space::Regulation, key).await? {
            Some(bytes) => self.install(subject, decode::<RegulationRecord>(&bytes)?.upgraded()),
            None => {
                // Lifted elsewhere: nothing is held against it any more but our own attempts.
                if let Some(mut held) = self.records.get_mut(&subject) {
                    let in_flight = held.in_flight;
                    *held = RegulationRecord { in_flight, ..RegulationRecord::default() };
                }
            }
        }
        Ok(())
    }

    /// Reads every record again (changes from other replicas may have been missed).
    pub async fn reload(&self) -> Result<(), StoreError> {
        let mut seen = std::collections::HashSet::new();
        for (key, value) in self.store.scan(Space::Regulation).await? {
            let subject = text_key(&key)?;
            self.install(subject.clone(), decode::<RegulationRecord>(&value)?.upgraded());
            seen.insert(subject);
        }
        for mut held in self.records.iter_mut() {
            if !seen.contains(held.key()) {
                let in_flight = held.in_flight;
                *held = RegulationRecord { in_flight, ..RegulationRecord::default() };
            }
        }
        Ok(())
    }
}

impl Regulator {
    /// [`Regulator::reserve`] with a shared store: each subject's reservation is added to its
    /// record as the store holds it, next to the other replicas' reservations, and refused when
    /// those and the failures reach the limit. A store that cannot be reached refuses the attempt
    /// (as "too many at once": try again in a moment).
    pub(super) async fn reserve_shared(&self, subjects: &[Subject], factor: Factor) -> Result<Attempt<'_>, Refusal> {
        let now = self.clock.now();
        let window = self.settings.window.as_secs() as i64;
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|_| Refusal::Crowded)?;
        let id = u64::from_le_bytes(id);
        let mut reserved: Vec<Subject> = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let decided = self
                .change(subject, |record| {
                    record.forget_old(now, window);
                    record.settle(None, now);
                    match self.refusal(subject, record, factor, now, true) {
                        Some(refusal) => Err(refusal),
                        None => {
                            let until = now + RESERVATION_SECONDS;
                            record.reserved.push(Reservation { id, factor: factor as u8, until });
                            Ok(())
                        }
                    }
                })
                .await;
            let refusal = match decided {
                Ok(Ok(())) => {
                    reserved.push(subject.clone());
                    continue;
                }
                Ok(Err(refusal)) => refusal,
                Err(e) => {
                    tracing::error!(target: "portcullis::store", "an attempt could not be reserved: {e}");
                    Refusal::Crowded
                }
            };
            for earlier in &reserved {
                if let Err(e) = self.change(earlier, |record| record.settle(Some(id), now)).await {
                    tracing::warn!(target: "portcullis::store", "a reservation is left to run out: {e}");
                }
            }
            return Err(refusal);
        }
        Ok(Attempt { regulator: self, subjects: reserved, factor, settled: false, reservation: Some(id) })
    }
}
