use super::*;
use crate::base::clock::{Clock, FixedClock};
use crate::store::memory::MemoryStore;
use crate::store::{Space, decode};
use std::time::Duration;

fn settings() -> SessionSettings {
    SessionSettings {
        cookie_name: "portcullis".into(),
        idle_timeout: Duration::from_secs(30 * 60),
        lifetime: Duration::from_secs(12 * 3600),
        partial_timeout: Duration::from_secs(10 * 60),
    }
}

fn directory(dir: &std::path::Path) -> UserDirectory {
    let path = dir.join("users.toml");
    let hash = crate::domain::password::hash(b"pw").unwrap();
    crate::domain::users::edit::add(
        &path,
        crate::domain::users::edit::NewUser {
            name: "alice",
            display_name: None,
            email: "a@example.com",
            groups: &[],
            password_hash: &hash,
        },
    )
    .unwrap();
    UserDirectory::load(&path).unwrap()
}

/// The proof a right password gives (made here as the verifier would).
fn password(users: &UserDirectory, name: &str) -> crate::domain::password::PasswordProof {
    crate::domain::password::PasswordProof::for_tests(users.get(name).unwrap())
}

/// The policy's word that a password suffices (optional 2FA, no factor).
fn enough() -> PasswordIsEnough {
    match crate::domain::policy::after_password(crate::domain::policy::Requirement::Optional, false) {
        crate::domain::policy::AfterPassword::Done(enough) => enough,
        other => panic!("{other:?}"),
    }
}

fn found(lookup: Lookup) -> Session {
    match lookup {
        Lookup::Found(s) => s,
        Lookup::Rejected(why) => panic!("rejected: {why:?}"),
        Lookup::NoCookie => panic!("no cookie"),
    }
}

fn rejected(lookup: Lookup) -> Rejected {
    match lookup {
        Lookup::Rejected(why) => why,
        _ => panic!("expected a rejection"),
    }
}

#[tokio::test]
async fn promotion_rotates_the_id_and_kills_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path());
    let clock = FixedClock::at(1_700_000_000);
    let sessions = Sessions::open(Arc::new(MemoryStore::default()), settings(), Arc::new(clock.clone())).await.unwrap();
    let (partial_id, partial) = sessions.begin(password(&users, "alice"), Device::default()).await.unwrap();
    assert!(matches!(found(sessions.resolve([partial_id.cookie_value().as_str()], &users)), Session::Partial(_)));
    let (full_id, full) = sessions.promote_with_password(partial, enough()).await.unwrap();
    assert_ne!(partial_id.cookie_value(), full_id.cookie_value());
    assert_eq!(full.amr(), &[AuthMethod::Pwd]);
    assert_eq!(rejected(sessions.resolve([partial_id.cookie_value().as_str()], &users)), Rejected::Unknown);
    assert!(matches!(found(sessions.resolve([full_id.cookie_value().as_str()], &users)), Session::Full(_)));
}

#[tokio::test]
async fn idle_absolute_and_partial_timeouts_apply() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path());
    let clock = FixedClock::at(1_700_000_000);
    let sessions = Sessions::open(Arc::new(MemoryStore::default()), settings(), Arc::new(clock.clone())).await.unwrap();

    let (partial_id, _) = sessions.begin(password(&users, "alice"), Device::default()).await.unwrap();
    clock.advance(10 * 60);
    assert_eq!(rejected(sessions.resolve([partial_id.cookie_value().as_str()], &users)), Rejected::Expired);

    let (_, partial) = sessions.begin(password(&users, "alice"), Device::default()).await.unwrap();
    let (id, _) = sessions.promote_with_password(partial, enough()).await.unwrap();
    let cookie = id.cookie_value();
    // Activity every 29 minutes keeps it alive until the 12 h lifetime ends.
    for _ in 0..24 {
        clock.advance(29 * 60);
        if clock.now() >= 1_700_000_000 + 10 * 60 + 12 * 3600 {
            break;
        }
        found(sessions.resolve([cookie.as_str()], &users));
    }
    clock.advance(29 * 60);
    assert_eq!(rejected(sessions.resolve([cookie.as_str()], &users)), Rejected::Expired);

    let (_, partial) = sessions.begin(password(&users, "alice"), Device::default()).await.unwrap();
    let (idle_id, _) = sessions.promote_with_password(partial, enough()).await.unwrap();
    clock.advance(30 * 60);
    assert_eq!(rejected(sessions.resolve([idle_id.cookie_value().as_str()], &users)), Rejected::Expired);
}

#[tokio::test]
async fn the_sweep_reports_half_logged_in_sessions_that_ran_out() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path());
    let clock = FixedClock::at(1_700_000_000);
    let sessions = Sessions::open(Arc::new(MemoryStore::default()), settings(), Arc::new(clock.clone())).await.unwrap();
    let _ = sessions.begin(password(&users, "alice"), Device::default()).await.unwrap();
    let (_, partial) = sessions.begin(password(&users, "alice"), Device::default()).await.unwrap();
    sessions.promote_with_password(partial, enough()).await.unwrap();
    clock.advance(11 * 60);
    let report = sessions.sweep().await.unwrap();
    assert_eq!(report.abandoned, vec!["alice".to_string()], "only the partial one was abandoned");
    assert_eq!(report.expired, 1);
}

#[tokio::test]
async fn garbage_cookies_are_malformed_and_sessions_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path());
    let clock: SharedClock = Arc::new(FixedClock::at(1_700_000_000));
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let sessions = Sessions::open(store.clone(), settings(), clock.clone()).await.unwrap();
    for garbage in ["", "x", "%%%", &"A".repeat(43), &"A".repeat(44)] {
        let why = rejected(sessions.resolve([garbage], &users));
        assert!(matches!(why, Rejected::Malformed | Rejected::Unknown), "{garbage}: {why:?}");
    }
    let (_, partial) = sessions.begin(password(&users, "alice"), Device::default()).await.unwrap();
    let (id, _) = sessions.promote_with_password(partial, enough()).await.unwrap();
    drop(sessions);
    let reopened = Sessions::open(store, settings(), clock).await.unwrap();
    assert!(matches!(found(reopened.resolve([id.cookie_value().as_str()], &users)), Session::Full(_)));
    assert!(store_keys_are_hashes(&reopened, &id));
}

#[tokio::test]
async fn a_planted_cookie_never_shadows_or_swaps_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path());
    crate::domain::users::edit::add(
        &dir.path().join("users.toml"),
        crate::domain::users::edit::NewUser {
            name: "mallory",
            display_name: None,
            email: "m@example.com",
            groups: &[],
            password_hash: &crate::domain::password::hash(b"pw").unwrap(),
        },
    )
    .unwrap();
    users.reload().unwrap();
    let clock = FixedClock::at(1_700_000_000);
    let sessions = Sessions::open(Arc::new(MemoryStore::default()), settings(), Arc::new(clock.clone())).await.unwrap();
    let (_, partial) = sessions.begin(password(&users, "alice"), Device::default()).await.unwrap();
    let (full_id, _) = sessions.promote_with_password(partial, enough()).await.unwrap();
    let (planted_partial, _) = sessions.begin(password(&users, "alice"), Device::default()).await.unwrap();
    let (mallory, _) = sessions.begin(password(&users, "mallory"), Device::default()).await.unwrap();
    let (full, planted, other) = (full_id.cookie_value(), planted_partial.cookie_value(), mallory.cookie_value());
    for order in [[planted.as_str(), full.as_str()], [full.as_str(), planted.as_str()]] {
        assert!(matches!(found(sessions.resolve(order, &users)), Session::Full(_)), "the strongest wins");
    }
    assert_eq!(rejected(sessions.resolve([other.as_str(), full.as_str()], &users)), Rejected::Ambiguous);
    assert!(matches!(found(sessions.resolve(["garbage", full.as_str()], &users)), Session::Full(_)));
}

fn store_keys_are_hashes(sessions: &Sessions, id: &SessionId) -> bool {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(id.cookie_value()).unwrap();
    let stored: Vec<(SessionKey, SessionRecord)> =
        futures_util::FutureExt::now_or_never(sessions.store.scan(Space::Sessions))
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|(k, v)| (SessionKey::from_slice(&k).unwrap(), decode(&v).unwrap()))
            .collect();
    stored.iter().all(|(key, _)| key.as_bytes() != raw.as_slice()) && stored.iter().any(|(key, _)| *key == id.key())
}

proptest::proptest! {
    /// Cookie values from anywhere: never a panic, and only our exact encoding is an id.
    #[test]
    fn cookie_decoding_is_total_and_strict(value in ".{0,80}") {
        if let Some(id) = SessionId::from_cookie(&value) {
            proptest::prop_assert_eq!(id.cookie_value(), value);
        }
    }
}

#[tokio::test]
async fn a_proof_for_another_account_never_promotes_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path());
    let hash = crate::domain::password::hash(b"pw").unwrap();
    crate::domain::users::edit::add(
        &dir.path().join("users.toml"),
        crate::domain::users::edit::NewUser {
            name: "bob",
            display_name: None,
            email: "b@example.com",
            groups: &[],
            password_hash: &hash,
        },
    )
    .unwrap();
    users.reload().unwrap();
    let sessions =
        Sessions::open(Arc::new(MemoryStore::default()), settings(), Arc::new(FixedClock::at(1_700_000_000)))
            .await
            .unwrap();
    let bob = users.get("bob").unwrap();
    let (_, partial) = sessions.begin(password(&users, "alice"), Device::default()).await.unwrap();
    let bobs_code = SecondFactorProof::for_tests(AuthMethod::Otp, &bob);
    assert!(matches!(sessions.promote(partial, bobs_code).await, Err(SessionError::ProofForAnotherAccount)));

    let (_, partial) = sessions.begin(password(&users, "alice"), Device::default()).await.unwrap();
    let (_, full) = sessions.promote_with_password(partial, enough()).await.unwrap();
    let bobs_code = SecondFactorProof::for_tests(AuthMethod::Otp, &bob);
    assert!(matches!(sessions.step_up(full, bobs_code).await, Err(SessionError::ProofForAnotherAccount)));
}

#[tokio::test]
async fn a_session_handed_to_another_host_works_there_only_and_ends_with_its_family() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path());
    let sessions =
        Sessions::open(Arc::new(MemoryStore::default()), settings(), Arc::new(FixedClock::at(1_700_000_000)))
            .await
            .unwrap();
    let (_, partial) = sessions.begin(password(&users, "alice"), Device::default()).await.unwrap();
    let (main_id, main) = sessions.promote_with_password(partial, enough()).await.unwrap();
    let (wiki_id, _) = sessions.for_host(&main, "wiki.example.com").await.unwrap();
    let on = |id: &SessionId, host: Option<&str>| sessions.resolve_on([id.cookie_value().as_str()], &users, host);
    assert!(matches!(on(&wiki_id, Some("wiki.example.com")), Lookup::Found(Session::Full(_))));
    assert!(matches!(on(&wiki_id, None), Lookup::Rejected(Rejected::Unknown)), "not on the main host");
    assert!(matches!(on(&wiki_id, Some("notes.example.com")), Lookup::Rejected(Rejected::Unknown)));
    assert!(matches!(on(&main_id, Some("wiki.example.com")), Lookup::Rejected(Rejected::Unknown)));

    // Ending the main session from the list of sessions ends what was handed out from it.
    assert!(sessions.end_by_handle("alice", &main.key().handle()).await.unwrap());
    assert!(matches!(on(&wiki_id, Some("wiki.example.com")), Lookup::Rejected(_) | Lookup::NoCookie));
}

#[tokio::test]
async fn a_session_stored_before_families_gets_one_of_its_own() {
    let record = SessionRecord {
        user: "alice".into(),
        stage: Stage::Partial { first_factor_at: 1, first_factor: AuthMethod::Pwd },
        created_at: 1,
        last_seen: 1,
        expires_at: 2,
        credential_stamp: [0; 16],
        csrf_token: "t".into(),
        device: Device::default(),
        host: None,
        family: String::new(),
    };
    let (a, b) = (Entry::from_record(record.clone()), Entry::from_record(record));
    assert!(!a.family().is_empty() && a.family() != b.family(), "never one shared empty family");
}

/// Two replicas over one shared store: what one ends or downgrades, the other's sweep never
/// writes back (it would bring a signed-out session back to life, or a downgraded one back to
/// full).
#[tokio::test]
async fn a_replicas_sweep_never_revives_what_another_ended_or_downgraded() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path());
    let clock = FixedClock::at(1_700_000_000);
    let store: Arc<dyn crate::store::Store> = Arc::new(MemoryStore::shared());
    let a = Sessions::open(store.clone(), settings(), Arc::new(clock.clone())).await.unwrap();
    let b = Sessions::open(store.clone(), settings(), Arc::new(clock.clone())).await.unwrap();

    let (_, partial) = a.begin(password(&users, "alice"), Device::default()).await.unwrap();
    let (ended_id, _) = a.promote_with_password(partial, enough()).await.unwrap();
    let (_, partial) = a.begin(password(&users, "alice"), Device::default()).await.unwrap();
    let (lowered_id, _) = a.promote_with_password(partial, enough()).await.unwrap();
    // B learns of both from the store, as it would from a cookie it does not know.
    for id in [&ended_id, &lowered_id] {
        assert!(b.fetch([id.cookie_value().as_str()]).await.unwrap());
    }
    // Both are used on A a few minutes later, so A's sweep has `last_seen` to write.
    clock.advance(120);
    for id in [&ended_id, &lowered_id] {
        assert!(matches!(found(a.resolve([id.cookie_value().as_str()], &users)), Session::Full(_)));
    }
    // Meanwhile B ends one and downgrades the other.
    b.end(&ended_id.key()).await.unwrap();
    let Session::Full(full) = found(b.resolve([lowered_id.cookie_value().as_str()], &users)) else { panic!() };
    assert!(b.downgrade(full).await.is_some());

    let report = a.sweep().await.unwrap();
    assert_eq!(report.touched, 2);
    assert!(store.get(Space::Sessions, ended_id.key().as_bytes()).await.unwrap().is_none(), "still ended");
    let stored: SessionRecord =
        decode(&store.get(Space::Sessions, lowered_id.key().as_bytes()).await.unwrap().unwrap()).unwrap();
    assert!(matches!(stored.stage, Stage::Partial { .. }), "still partial: {stored:?}");
    assert_eq!(stored.last_seen, 1_700_000_120, "only last_seen moved");
    // A reads both again (the change messages) and agrees.
    a.refresh(ended_id.key().as_bytes()).await.unwrap();
    a.refresh(lowered_id.key().as_bytes()).await.unwrap();
    assert_eq!(rejected(a.resolve([ended_id.cookie_value().as_str()], &users)), Rejected::Unknown);
    assert!(matches!(found(a.resolve([lowered_id.cookie_value().as_str()], &users)), Session::Partial(_)));
}

/// A request carrying many cookies costs the shared store at most two lookups.
#[tokio::test]
async fn unknown_cookies_are_looked_up_two_at_most_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path());
    let clock = FixedClock::at(1_700_000_000);
    let store: Arc<dyn crate::store::Store> = Arc::new(MemoryStore::shared());
    let a = Sessions::open(store.clone(), settings(), Arc::new(clock.clone())).await.unwrap();
    let b = Sessions::open(store.clone(), settings(), Arc::new(clock.clone())).await.unwrap();
    let mut cookies = Vec::new();
    for _ in 0..3 {
        let (id, _) = a.begin(password(&users, "alice"), Device::default()).await.unwrap();
        cookies.push(id.cookie_value());
    }
    assert!(b.fetch(cookies.iter().map(String::as_str)).await.unwrap());
    assert_eq!(b.len(), 2, "two looked up, the third not");
}

/// Every live session holds an entry: 100,000 of them are what `bench/scale.sh rss` weighs. This
/// holds the size reached (one allocation of 176 bytes with the `Arc`'s counts and malloc's
/// header) against a field added without thought.
#[test]
fn a_live_entry_stays_within_one_small_allocation() {
    let size = std::mem::size_of::<super::state::Entry>();
    assert!(size <= 152, "an entry is {size} bytes");
}

/// The entry keeps its instants as 32-bit offsets from its creation: each comes back exactly,
/// including one before the creation (a clock stepped back), and uses only ever move forward.
#[test]
fn an_entrys_instants_come_back_as_they_went_in() {
    let created = 1_700_000_000;
    let record = SessionRecord {
        user: "alice".into(),
        stage: Stage::Partial { first_factor_at: created, first_factor: AuthMethod::Pwd },
        created_at: created,
        last_seen: created - 30,
        expires_at: created + 90 * 86_400,
        credential_stamp: [0; 16],
        csrf_token: "t".into(),
        device: Device::default(),
        host: None,
        family: "f".into(),
    };
    let entry = Entry::from_record(record.clone());
    assert_eq!(entry.snapshot(), record);
    assert_eq!(entry.persisted_last_seen(), created - 30);
    entry.seen_at(created + 500);
    entry.seen_at(created + 400);
    assert_eq!(entry.last_seen(), created + 500, "an earlier use does not move it back");
    entry.persisted_at(created + 500);
    entry.persisted_at(created + 100);
    assert_eq!(entry.persisted_last_seen(), created + 500);
    assert_eq!(entry.expires_at(), created + 90 * 86_400);
    // Decades away: held to what 32 bits keep, so an expiry only ever comes earlier.
    let far = Entry::from_record(SessionRecord { expires_at: i64::MAX, ..record.clone() });
    assert_eq!(far.expires_at(), created + i64::from(i32::MAX));
    // Made by a clock 80 years ahead, with an expiry and a last use from a right one: both read
    // as long past, never as 68 years after the creation (which is later than they were).
    let eighty_years = 80 * 365 * 86_400;
    let ahead = Entry::from_record(SessionRecord { created_at: created + eighty_years, ..record });
    assert!(ahead.expires_at() <= created + 90 * 86_400, "{}", ahead.expires_at());
    assert!(ahead.last_seen() <= created, "{}", ahead.last_seen());
    let settings = settings();
    assert!(super::record::check_expiry(None, ahead.expires_at(), ahead.last_seen(), created, &settings).is_err());
}
