use super::*;
use crate::base::clock::{Clock, FixedClock};
use crate::store::memory::MemoryStore;
use std::time::Duration;

fn regulator(clock: &FixedClock, store: Arc<dyn Store>) -> Regulator {
    let settings = RegulationSettings {
        max_failures: 5,
        address_max_failures: 20,
        window: Duration::from_secs(300),
        ban: Duration::from_secs(900),
    };
    futures_util::FutureExt::now_or_never(Regulator::open(store, settings, Arc::new(clock.clone()))).unwrap().unwrap()
}

fn alice_from(ip: &str) -> [Subject; 2] {
    [Subject::Account("alice".into()), Subject::address(ip.parse().unwrap())]
}

async fn fail(reg: &Regulator, who: &[Subject], factor: Factor) -> FailureOutcome {
    reg.reserve(who, factor).await.unwrap().failed().await.unwrap()
}

#[tokio::test]
async fn five_wrong_passwords_pause_the_account_and_bans_grow() {
    let clock = FixedClock::at(1_000_000);
    let reg = regulator(&clock, Arc::new(MemoryStore::default()));
    let who = alice_from("203.0.113.7");
    for left in (1..5).rev() {
        let outcome = fail(&reg, &who, Factor::Password).await;
        assert_eq!((outcome.banned.len(), outcome.left), (0, left));
    }
    assert_eq!(reg.check(&who, Factor::Password), Ok(()));
    let outcome = fail(&reg, &who, Factor::Password).await;
    assert!(outcome.banned(Who::Account) && !outcome.banned(Who::Address));
    let paused = Refusal::Banned { until: 1_000_000 + 900, who: Who::Account };
    assert_eq!(reg.check(&who, Factor::Password), Err(paused));
    assert_eq!(reg.check(&who[..1], Factor::SecondFactor), Ok(()), "wrong passwords do not stop codes");
    // The same account from elsewhere is paused; another account from the same address is not.
    assert!(reg.check(&alice_from("198.51.100.1"), Factor::Password).is_err());
    let bob = [Subject::Account("bob".into()), who[1].clone()];
    assert_eq!(reg.check(&bob, Factor::Password), Ok(()), "one person's typos do not pause their office");
    clock.advance(900);
    assert_eq!(reg.check(&who, Factor::Password), Ok(()));
    for _ in 0..5 {
        fail(&reg, &who, Factor::Password).await;
    }
    let twice = Refusal::Banned { until: clock.now() + 1800, who: Who::Account };
    assert_eq!(reg.check(&who, Factor::Password), Err(twice), "the second ban is twice as long");
}

#[tokio::test]
async fn an_address_is_paused_only_at_its_much_looser_limit() {
    let clock = FixedClock::at(1_000_000);
    let reg = regulator(&clock, Arc::new(MemoryStore::default()));
    let address = Subject::address("203.0.113.7".parse().unwrap());
    // Password spraying: one guess at each of twenty accounts.
    for n in 0..20 {
        let who = [Subject::Account(format!("user{n}")), address.clone()];
        let outcome = fail(&reg, &who, Factor::Password).await;
        assert_eq!(outcome.banned(Who::Address), n == 19, "guess {n}");
    }
    let anyone = [Subject::Account("carol".into()), address];
    assert!(matches!(reg.check(&anyone, Factor::Password), Err(Refusal::Banned { who: Who::Address, .. })));
}

#[tokio::test]
async fn a_right_password_never_forgives_wrong_codes() {
    let clock = FixedClock::at(1_000_000);
    let reg = regulator(&clock, Arc::new(MemoryStore::default()));
    let who = alice_from("203.0.113.7");
    // Password, then four wrong codes, over and over: the fifth wrong code pauses the account.
    let mut paused_after = None;
    for round in 0..3 {
        reg.reserve(&who, Factor::Password).await.unwrap().succeeded().await.unwrap();
        for guess in 0..4 {
            let Ok(attempt) = reg.reserve(&who, Factor::SecondFactor).await else { break };
            if attempt.failed().await.unwrap().banned(Who::Account) {
                paused_after.get_or_insert((round, guess));
            }
        }
        if paused_after.is_some() {
            break;
        }
    }
    assert_eq!(paused_after, Some((1, 0)), "the fifth wrong code in the window");
    assert!(matches!(reg.reserve(&who, Factor::SecondFactor).await, Err(Refusal::Banned { who: Who::Account, .. })));
}

#[tokio::test]
async fn a_proven_second_factor_forgives_the_account_but_not_the_address() {
    let clock = FixedClock::at(1_000_000);
    let reg = regulator(&clock, Arc::new(MemoryStore::default()));
    let who = alice_from("203.0.113.7");
    for _ in 0..4 {
        fail(&reg, &who, Factor::SecondFactor).await;
    }
    reg.reserve(&who, Factor::SecondFactor).await.unwrap().succeeded().await.unwrap();
    assert_eq!(fail(&reg, &who, Factor::SecondFactor).await.left, 4, "the account starts over");
    let address = reg.records.get(&who[1].store_key()).unwrap();
    assert_eq!(address.code_failures.len(), 5, "the address keeps counting");
}

#[tokio::test]
async fn attempts_in_flight_count_until_they_are_settled() {
    let clock = FixedClock::at(1_000_000);
    let reg = regulator(&clock, Arc::new(MemoryStore::default()));
    let who = alice_from("203.0.113.7");
    // Forty guesses at once: five are let through, the rest are refused before any is checked.
    let mut through = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        match reg.reserve(&who, Factor::Password).await {
            Ok(attempt) => through.push(attempt),
            Err(Refusal::Crowded) => refused += 1,
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!((through.len(), refused), (5, 35));
    // One was right: it is refunded, and its slot is free again.
    through.pop().unwrap().succeeded().await.unwrap();
    let again = reg.reserve(&who, Factor::Password).await.unwrap();
    drop(again); // an attempt abandoned unsettled counts nothing
    let mut banned = false;
    for attempt in through {
        let outcome = attempt.failed().await.unwrap();
        eprintln!("{outcome:?}");
        banned |= outcome.banned(Who::Account);
    }
    assert!(!banned, "four failures are under the limit");
    assert!(reg.reserve(&who, Factor::Password).await.is_ok());
}

#[tokio::test]
async fn failures_outside_the_window_do_not_add_up() {
    let clock = FixedClock::at(1_000_000);
    let reg = regulator(&clock, Arc::new(MemoryStore::default()));
    let who = [Subject::Account("alice".into())];
    // One failure every 100 s: never more than three in any 300-second window.
    for _ in 0..10 {
        assert!(fail(&reg, &who, Factor::Password).await.banned.is_empty());
        assert_eq!(reg.check(&who, Factor::Password), Ok(()));
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
            fail(&reg, &who, Factor::Password).await;
        }
    }
    let reopened = regulator(&clock, store);
    assert!(matches!(reopened.check(&who, Factor::Password), Err(Refusal::Banned { .. })));
}

#[test]
fn records_from_before_the_split_read_their_failures_as_passwords_and_pause_both() {
    let old = r#"{"failures":[5,6],"banned_until":900,"bans":1,"second_factor_streak":3}"#;
    let record = serde_json::from_str::<RegulationRecord>(old).unwrap().upgraded();
    assert_eq!((&record.password_failures, &record.code_failures), (&vec![5, 6], &vec![]));
    let pause = Pause { until: Some(900), in_a_row: 1 };
    assert_eq!((record.password_pause, record.code_pause), (pause, pause));
    let written = serde_json::to_string(&record).unwrap();
    assert!(!written.contains("banned_until"), "{written}");
}

#[tokio::test]
async fn wrong_passwords_from_elsewhere_never_stop_the_owner_proving_the_second_factor() {
    let clock = FixedClock::at(1_000_000);
    let reg = regulator(&clock, Arc::new(MemoryStore::default()));
    let attacker = alice_from("198.51.100.66");
    for _ in 0..5 {
        fail(&reg, &attacker, Factor::Password).await;
    }
    assert!(reg.check(&attacker, Factor::Password).is_err(), "the password step is paused");
    // The owner got past the password with a known browser; her code is checked.
    let owner = alice_from("203.0.113.7");
    assert_eq!(reg.check(&owner, Factor::SecondFactor), Ok(()));
    reg.reserve(&owner, Factor::SecondFactor).await.unwrap().succeeded().await.unwrap();
    // Likewise an address paused by password spraying still lets its people prove codes.
    for n in 0..20 {
        fail(&reg, &[Subject::Account(format!("user{n}")), owner[1].clone()], Factor::Password).await;
    }
    assert!(reg.check(&owner[1..], Factor::Password).is_err());
    assert_eq!(reg.check(&owner, Factor::SecondFactor), Ok(()));
}

#[tokio::test]
async fn a_right_password_does_not_reset_the_doubling_of_code_pauses() {
    let clock = FixedClock::at(1_000_000);
    let reg = regulator(&clock, Arc::new(MemoryStore::default()));
    let who = alice_from("203.0.113.7");
    for _ in 0..5 {
        fail(&reg, &who, Factor::SecondFactor).await;
    }
    clock.advance(900);
    reg.reserve(&who, Factor::Password).await.unwrap().succeeded().await.unwrap();
    let mut until = None;
    for _ in 0..5 {
        until = fail(&reg, &who, Factor::SecondFactor).await.until().or(until);
    }
    assert_eq!(until, Some(clock.now() + 1800), "the second pause of codes is twice as long");
}

#[test]
fn ipv6_clients_are_counted_per_64() {
    let a = Subject::address("2001:db8:1:2::1".parse().unwrap());
    let b = Subject::address("2001:db8:1:2:ffff::99".parse().unwrap());
    let other = Subject::address("2001:db8:1:3::1".parse().unwrap());
    assert_eq!(a, b);
    assert_ne!(a, other);
    assert_eq!(a.store_key(), "address:2001:db8:1:2::/64");
    let mapped = Subject::address("::ffff:203.0.113.7".parse().unwrap());
    assert_eq!(mapped.store_key(), "address:203.0.113.7");
}

#[tokio::test]
async fn stale_records_are_swept_but_recent_offenders_are_kept() {
    let clock = FixedClock::at(1_000_000);
    let reg = regulator(&clock, Arc::new(MemoryStore::default()));
    let once = [Subject::Account("typo".into())];
    let offender = [Subject::Browser("b1".into())];
    fail(&reg, &once, Factor::Password).await;
    for _ in 0..5 {
        fail(&reg, &offender, Factor::Password).await;
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
        fail(&reg, &who, Factor::SecondFactor).await;
        clock.advance(24 * 3600); // wait out every ban: the cap still applies
    }
    assert_eq!(reg.check(&who, Factor::SecondFactor), Err(Refusal::SecondFactorLocked));
    assert_eq!(reg.check(&who, Factor::Password), Ok(()), "the password step is not locked");
    assert_eq!(reg.restrictions().len(), 1);
    assert!(reg.restrictions()[0].second_factor_locked);
    assert!(reg.clear(&who[0].store_key()).await.unwrap());
    assert_eq!(reg.check(&who, Factor::SecondFactor), Ok(()));
    assert!(reg.restrictions().is_empty());
}

/// Two replicas over one shared store: attempts in flight on both count against one limit, so a
/// burst split between them gets no more checks than one replica would allow; a settled attempt
/// frees its place, and failures on both add up to one ban.
#[tokio::test]
async fn attempts_in_flight_on_every_replica_share_one_limit() {
    let clock = FixedClock::at(1_000_000);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::shared());
    let (a, b) = (regulator(&clock, store.clone()), regulator(&clock, store.clone()));
    let who = [Subject::Account("alice".into())];
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(a.reserve(&who, Factor::Password).await.unwrap());
    }
    held.push(b.reserve(&who, Factor::Password).await.unwrap());
    held.push(b.reserve(&who, Factor::Password).await.unwrap());
    assert_eq!(b.reserve(&who, Factor::Password).await.err(), Some(Refusal::Crowded), "five in flight: B is full");
    assert_eq!(a.reserve(&who, Factor::Password).await.err(), Some(Refusal::Crowded), "and so is A");
    // One settles as a success (forgiving nothing in flight): a place is free again.
    held.pop().unwrap().succeeded().await.unwrap();
    let again = a.reserve(&who, Factor::Password).await.unwrap();
    // All five fail, on both replicas: the account is paused on both.
    // With four more in flight, the first failure reaches the limit (as on one replica).
    assert!(again.failed().await.unwrap().banned(Who::Account));
    for attempt in held {
        attempt.failed().await.unwrap();
    }
    b.refresh(b"account:alice").await.unwrap();
    assert!(matches!(b.check(&who, Factor::Password), Err(Refusal::Banned { .. })));
    // A replica that died holding a reservation frees it when its time runs out.
    clock.advance(900 + 1);
    let orphan = a.reserve(&who, Factor::Password).await.unwrap();
    std::mem::forget(orphan);
    clock.advance(RESERVATION_SECONDS + 1);
    for _ in 0..4 {
        std::mem::forget(b.reserve(&who, Factor::Password).await.unwrap());
    }
    assert!(b.reserve(&who, Factor::Password).await.is_ok(), "the orphan ran out");
}
