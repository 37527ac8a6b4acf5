//! The sign-in link rules, at fixed times, kept in memory and in a shared store; and two
//! replicas over one store, which accept a link or a code once and count throttles together.

use super::*;
use crate::base::secret::Secret;
use crate::domain::factors::sealing::Sealer;
use crate::store::Store;
use crate::store::memory::MemoryStore;

const NOW: UnixTime = 1_800_000_000;

fn directory(dir: &std::path::Path, names: &[&str]) -> UserDirectory {
    let path = dir.join("users.toml");
    let hash = crate::domain::password::hash(b"pw").unwrap();
    for name in names {
        let email = format!("{name}@example.com");
        let user = crate::domain::users::edit::NewUser {
            name,
            display_name: None,
            email: &email,
            groups: &[],
            password_hash: &hash,
        };
        crate::domain::users::edit::add(&path, user).unwrap();
    }
    UserDirectory::load(&path).unwrap()
}

fn sealer() -> Sealer {
    Sealer::new(&Secret::new(b"k".repeat(64)))
}

/// The same rules on both backends: one process's memory, and a store replicas share.
fn backends() -> [EmailLinks; 2] {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::shared());
    [EmailLinks::new(Flows::in_memory()), EmailLinks::new(Flows::for_store(&store, &sealer()))]
}

/// Two replicas: each its own `EmailLinks`, over one shared store.
fn replicas() -> (EmailLinks, EmailLinks) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::shared());
    (EmailLinks::new(Flows::for_store(&store, &sealer())), EmailLinks::new(Flows::for_store(&store, &sealer())))
}

fn signed_in(opened: Result<Opened, LinkInvalid>) -> (EmailLinkProof, String) {
    match opened {
        Ok(Opened::SignedIn { proof, return_to }) => (proof, return_to),
        Ok(Opened::Elsewhere { .. }) => panic!("shown a code instead"),
        Err(e) => panic!("refused: {e}"),
    }
}

fn wrong_code(right: &str) -> &'static str {
    if right == "000000" { "111111" } else { "000000" }
}

#[tokio::test]
async fn a_link_signs_in_once_in_the_browser_that_asked_and_nowhere_else() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path(), &["alice"]);
    let alice = users.get("alice").unwrap();
    for links in backends() {
        let (asking, other) = (new_browser_nonce(), new_browser_nonce());
        let sent = links.issue(&alice, &asking, "/wiki", NOW).await.unwrap();
        assert_eq!(sent.code.len(), CODE_DIGITS);

        // Opened on a phone, by a mail scanner, or in another browser: a code, not a session.
        for nonce in [None, Some(other.as_str())] {
            match links.open(&users, &sent.token, nonce, NOW + 1).await {
                Ok(Opened::Elsewhere { code }) => assert_eq!(code, sent.code),
                _ => panic!("another browser is shown the code"),
            }
        }
        let (proof, return_to) = signed_in(links.open(&users, &sent.token, Some(&asking), NOW + 2).await);
        assert_eq!((proof.user().name.as_str(), return_to.as_str()), ("alice", "/wiki"));
        let again = links.open(&users, &sent.token, Some(&asking), NOW + 3).await;
        assert_eq!(again.err(), Some(LinkInvalid::Invalid), "once");
        assert_eq!(links.open(&users, "made-up", Some(&asking), NOW + 3).await.err(), Some(LinkInvalid::Invalid));
    }
}

#[tokio::test]
async fn the_code_works_only_in_the_asking_browser_and_only_a_few_tries() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path(), &["alice"]);
    let alice = users.get("alice").unwrap();
    for links in backends() {
        let asking = new_browser_nonce();
        let sent = links.issue(&alice, &asking, "/", NOW).await.unwrap();
        let wrong = wrong_code(&sent.code);
        assert!(links.enter_code(&users, &new_browser_nonce(), &sent.code, NOW).await.is_err(), "another browser");
        assert_eq!(
            links.enter_code(&users, &asking, wrong, NOW).await.err(),
            Some(LinkInvalid::WrongCode { tries_left: CODE_TRIES - 1 })
        );
        let spaced = format!("{} {}", &sent.code[..3], &sent.code[3..]);
        let (proof, _) = links.enter_code(&users, &asking, &spaced, NOW + 1).await.unwrap();
        assert_eq!(proof.user().name.as_str(), "alice");
        assert!(links.open(&users, &sent.token, Some(&asking), NOW + 2).await.is_err(), "the link is spent too");

        // Five wrong codes void the link, the right one included afterwards.
        let t = NOW + RESEND_AFTER;
        let sent = links.issue(&alice, &asking, "/", t).await.unwrap();
        for _ in 0..CODE_TRIES {
            assert!(links.enter_code(&users, &asking, wrong, t).await.is_err());
        }
        assert_eq!(links.enter_code(&users, &asking, &sent.code, t).await.err(), Some(LinkInvalid::Invalid));
        assert!(links.open(&users, &sent.token, Some(&asking), t).await.is_err());
    }
}

#[tokio::test]
async fn links_run_out_are_replaced_and_are_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path(), &["alice"]);
    let alice = users.get("alice").unwrap();
    for links in backends() {
        let asking = new_browser_nonce();
        let old = links.issue(&alice, &asking, "/", NOW).await.unwrap();
        assert_eq!(links.issue(&alice, &asking, "/", NOW + 10).await.err(), Some(LinkRefused::TooSoon));
        let new = links.issue(&alice, &asking, "/", NOW + RESEND_AFTER).await.unwrap();
        assert!(links.open(&users, &old.token, Some(&asking), NOW + RESEND_AFTER).await.is_err(), "replaced");
        assert!(
            links.open(&users, &new.token, Some(&asking), NOW + RESEND_AFTER + LIFETIME).await.is_err(),
            "15 minutes and no more"
        );
        let mut t = NOW + 10 * RESEND_AFTER;
        for _ in 2..PER_HOUR_PER_ACCOUNT {
            links.issue(&alice, &asking, "/", t).await.unwrap();
            t += RESEND_AFTER;
        }
        assert_eq!(links.issue(&alice, &asking, "/", t).await.err(), Some(LinkRefused::AccountLimit));
        assert!(links.issue(&alice, &asking, "/", NOW + 3600 + 10 * RESEND_AFTER).await.is_ok(), "an hour later");

        let client: IpAddr = "2001:db8::1".parse().unwrap();
        let neighbour: IpAddr = "2001:db8::2".parse().unwrap();
        for _ in 0..PER_HOUR_PER_CLIENT {
            links.note_request(client, NOW).await.unwrap();
        }
        assert_eq!(links.note_request(neighbour, NOW).await.err(), Some(LinkRefused::ClientLimit), "one /64");
        assert!(links.note_request("2001:db8:1::1".parse().unwrap(), NOW).await.is_ok());
        assert!(links.note_request(client, NOW + 3600).await.is_ok(), "an hour later");
    }
}

#[tokio::test]
async fn a_link_for_a_removed_account_signs_nobody_in() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path(), &["alice", "bob"]);
    let alice = users.get("alice").unwrap();
    let [memory, shared] = backends();
    let asking = new_browser_nonce();
    let sent = [
        memory.issue(&alice, &asking, "/", NOW).await.unwrap(),
        shared.issue(&alice, &asking, "/", NOW).await.unwrap(),
    ];
    crate::domain::users::edit::remove(&dir.path().join("users.toml"), "alice").unwrap();
    users.reload().unwrap();
    for (links, sent) in [memory, shared].iter().zip(sent) {
        let opened = links.open(&users, &sent.token, Some(&asking), NOW).await;
        assert_eq!(opened.err(), Some(LinkInvalid::AccountGone));
    }
}

#[tokio::test]
async fn a_link_works_only_while_the_account_keeps_the_address_it_went_to_and_decoys_sign_in_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path(), &["alice"]);
    let alice = users.get("alice").unwrap();
    let [memory, shared] = backends();
    let asking = new_browser_nonce();
    let sent = [
        memory.issue(&alice, &asking, "/", NOW).await.unwrap(),
        shared.issue(&alice, &asking, "/", NOW).await.unwrap(),
    ];
    let path = dir.path().join("users.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace("alice@example.com", "alice@elsewhere.example");
    std::fs::write(&path, text).unwrap();
    users.reload().unwrap();
    for (links, sent) in [&memory, &shared].into_iter().zip(sent) {
        let opened = links.open(&users, &sent.token, Some(&asking), NOW + 1).await;
        assert_eq!(opened.err(), Some(LinkInvalid::AccountGone));

        let stranger = new_browser_nonce();
        links.decoy(&stranger, "nobody@example.com", NOW).await.unwrap();
        assert_eq!(links.regulated_as(&stranger).await.unwrap(), ["~nobody@example.com"]);
        assert_eq!(
            links.enter_code(&users, &stranger, "123456", NOW).await.err(),
            Some(LinkInvalid::WrongCode { tries_left: CODE_TRIES - 1 }),
            "answers like a real link"
        );
        // A second decoy for the same browser replaces the first: one record, not one per ask.
        links.decoy(&stranger, "nobody@example.com", NOW + 1).await.unwrap();
        assert_eq!(
            links.enter_code(&users, &stranger, "123456", NOW + 1).await.err(),
            Some(LinkInvalid::WrongCode { tries_left: CODE_TRIES - 1 }),
            "a fresh decoy"
        );
    }
    assert_eq!(memory.flows.count_in_memory(LINK_PREFIX), Some(1), "the first decoy was forgotten");
}

/// Two replicas over one store: a link asked for on one is opened on the other, once; its code
/// is accepted once; wrong codes and throttles count on both.
#[tokio::test]
async fn two_replicas_over_one_store_accept_a_link_once_and_count_together() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path(), &["alice", "bob"]);
    let (alice, bob) = (users.get("alice").unwrap(), users.get("bob").unwrap());
    let (a, b) = replicas();
    let asking = new_browser_nonce();

    // Asked on A, opened on B (elsewhere: the code), then in the asking browser on both at once.
    let sent = a.issue(&alice, &asking, "/wiki", NOW).await.unwrap();
    match b.open(&users, &sent.token, None, NOW + 1).await {
        Ok(Opened::Elsewhere { code }) => assert_eq!(code, sent.code),
        _ => panic!("B shows A's code elsewhere"),
    }
    assert_eq!(b.regulated_as(&asking).await.unwrap(), ["~alice@example.com", "alice"], "the address's stand-in too");
    let (on_a, on_b) = tokio::join!(
        a.open(&users, &sent.token, Some(&asking), NOW + 2),
        b.open(&users, &sent.token, Some(&asking), NOW + 2)
    );
    let accepted = [&on_a, &on_b].iter().filter(|o| matches!(o, Ok(Opened::SignedIn { .. }))).count();
    assert_eq!(accepted, 1, "once");
    assert!([on_a, on_b].iter().any(|o| o.as_ref().err() == Some(&LinkInvalid::Invalid)));

    // The code: typed into both at once, accepted once.
    let sent = b.issue(&bob, &asking, "/", NOW).await.unwrap();
    let (on_a, on_b) = tokio::join!(
        a.enter_code(&users, &asking, &sent.code, NOW + 1),
        b.enter_code(&users, &asking, &sent.code, NOW + 1)
    );
    assert_eq!([&on_a, &on_b].iter().filter(|o| o.is_ok()).count(), 1, "once");

    // Wrong codes split across both add up: the fifth, on A, voids the link.
    let t = NOW + RESEND_AFTER;
    let sent = a.issue(&bob, &asking, "/", t).await.unwrap();
    let wrong = wrong_code(&sent.code);
    for i in 0..CODE_TRIES {
        let replica = if i % 2 == 0 { &a } else { &b };
        let tries_left = CODE_TRIES - 1 - i;
        assert_eq!(
            replica.enter_code(&users, &asking, wrong, t).await.err(),
            Some(LinkInvalid::WrongCode { tries_left })
        );
    }
    assert_eq!(b.enter_code(&users, &asking, &sent.code, t).await.err(), Some(LinkInvalid::Invalid), "void on B");

    // A new link from B voids A's at once, on either: even before B has removed the old one
    // (put back here, as it is for a moment while B is still at work), the account's record
    // says which link is current.
    let t = t + RESEND_AFTER;
    let old = a.issue(&bob, &asking, "/", t).await.unwrap();
    assert_eq!(b.issue(&bob, &asking, "/", t + 1).await.err(), Some(LinkRefused::TooSoon), "A's minute holds on B");
    let old_key = link_key(&digest(&old.token));
    let old_link: Link = a.read(&old_key).await.unwrap().unwrap();
    b.issue(&bob, &asking, "/", t + RESEND_AFTER).await.unwrap();
    assert!(a.read::<Link>(&old_key).await.unwrap().is_none(), "removed");
    a.put(&old_key, LINK_KEPT, &old_link).await.unwrap();
    let opened = a.open(&users, &old.token, Some(&asking), t + RESEND_AFTER).await;
    assert_eq!(opened.err(), Some(LinkInvalid::Invalid), "replaced");

    // The account's hourly limit, split across both: the sixth is refused on either.
    let mut t = NOW + 2 * 3600;
    for i in 0..PER_HOUR_PER_ACCOUNT {
        let replica = if i % 2 == 0 { &a } else { &b };
        replica.issue(&alice, &asking, "/", t).await.unwrap();
        t += RESEND_AFTER;
    }
    assert_eq!(a.issue(&alice, &asking, "/", t).await.err(), Some(LinkRefused::AccountLimit));
    assert_eq!(b.issue(&alice, &asking, "/", t).await.err(), Some(LinkRefused::AccountLimit));

    // And the client's.
    let client: IpAddr = "192.0.2.7".parse().unwrap();
    for i in 0..PER_HOUR_PER_CLIENT {
        (if i % 2 == 0 { &a } else { &b }).note_request(client, NOW).await.unwrap();
    }
    assert_eq!(a.note_request(client, NOW).await.err(), Some(LinkRefused::ClientLimit));
    assert_eq!(b.note_request(client, NOW).await.err(), Some(LinkRefused::ClientLimit));
}

/// What the store holds: hashes, never a token or a nonce; sealed, so not the code either.
#[tokio::test]
async fn the_store_holds_no_token_nonce_or_code_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path(), &["alice"]);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::shared());
    let links = EmailLinks::new(Flows::for_store(&store, &sealer()));
    let asking = new_browser_nonce();
    let sent = links.issue(&users.get("alice").unwrap(), &asking, "/", NOW).await.unwrap();
    let held = store.scan(crate::store::Space::Flows).await.unwrap();
    assert_eq!(held.len(), 3, "the link, the account's record, the browser's");
    for (key, value) in held {
        for secret in [&sent.token, &asking, &sent.code] {
            let found = |bytes: &[u8]| bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found(&key) && !found(&value));
        }
    }
}

/// One process keeps at most [`MAX_OUTSTANDING`] links in memory, whatever clients do; past
/// that, no link and no decoy is added (and the throttles count nothing for a link not sent).
#[tokio::test]
async fn memory_holds_a_bounded_number_of_links() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path(), &["alice"]);
    let links = EmailLinks::new(Flows::in_memory());
    for i in 0..MAX_OUTSTANDING {
        links.put(&format!("{LINK_PREFIX}{i}"), LINK_KEPT, &i).await.unwrap();
    }
    let asking = new_browser_nonce();
    let alice = users.get("alice").unwrap();
    assert_eq!(links.issue(&alice, &asking, "/", NOW).await.err(), Some(LinkRefused::Full));
    links.decoy(&asking, "nobody@example.com", NOW).await.unwrap();
    assert_eq!(links.flows.count_in_memory(LINK_PREFIX), Some(MAX_OUTSTANDING));
    assert!(links.regulated_as(&asking).await.unwrap().is_empty(), "no decoy either");
    links.flows.end(&format!("{LINK_PREFIX}0")).await.unwrap();
    assert!(links.issue(&alice, &asking, "/", NOW).await.is_ok(), "room again, and the refusal counted nothing");
}

/// A shared store that does not answer.
struct Unreachable(crate::store::Shared);

impl Store for Unreachable {
    fn apply(&self, _: Vec<crate::store::Write>) -> crate::store::StoreFuture<'_, ()> {
        Box::pin(std::future::ready(Err(crate::store::StoreError::Backend("down".into()))))
    }
    fn scan(&self, _: crate::store::Space) -> crate::store::StoreFuture<'_, Vec<(Vec<u8>, Vec<u8>)>> {
        Box::pin(std::future::ready(Err(crate::store::StoreError::Backend("down".into()))))
    }
    fn get(&self, _: crate::store::Space, _: &[u8]) -> crate::store::StoreFuture<'_, Option<Vec<u8>>> {
        Box::pin(std::future::ready(Err(crate::store::StoreError::Backend("down".into()))))
    }
    fn swap(
        &self,
        _: crate::store::Space,
        _: &[u8],
        _: Option<Vec<u8>>,
        _: Option<Vec<u8>>,
        _: Option<Duration>,
    ) -> crate::store::StoreFuture<'_, bool> {
        Box::pin(std::future::ready(Err(crate::store::StoreError::Backend("down".into()))))
    }
    fn shared(&self) -> Option<&crate::store::Shared> {
        Some(&self.0)
    }
}

/// Without the store nothing is decided: no request counted as allowed, no link sent, opened or
/// taken by its code, and not one of them mistaken for "no such link".
#[tokio::test]
async fn without_the_store_every_step_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path(), &["alice"]);
    let store: Arc<dyn Store> = Arc::new(Unreachable(crate::store::Shared::new(Duration::from_secs(30))));
    let links = EmailLinks::new(Flows::for_store(&store, &sealer()));
    let nonce = new_browser_nonce();
    let down = LinksUnavailable;
    assert_eq!(links.note_request("192.0.2.1".parse().unwrap(), NOW).await, Err(LinkRefused::Unavailable(down)));
    let issued = links.issue(&users.get("alice").unwrap(), &nonce, "/", NOW).await;
    assert_eq!(issued.err(), Some(LinkRefused::Unavailable(down)));
    assert_eq!(links.decoy(&nonce, "nobody@example.com", NOW).await, Err(down));
    assert_eq!(links.regulated_as(&nonce).await, Err(down));
    assert_eq!(links.open(&users, "token", Some(&nonce), NOW).await.err(), Some(LinkInvalid::Unavailable(down)));
    assert_eq!(links.enter_code(&users, &nonce, "123456", NOW).await.err(), Some(LinkInvalid::Unavailable(down)));
}
