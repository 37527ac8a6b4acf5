//! The sign-in link rules, at fixed times.

use super::*;

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

fn signed_in(opened: Result<Opened, LinkInvalid>) -> (EmailLinkProof, String) {
    match opened {
        Ok(Opened::SignedIn { proof, return_to }) => (proof, return_to),
        Ok(Opened::Elsewhere { .. }) => panic!("shown a code instead"),
        Err(e) => panic!("refused: {e}"),
    }
}

#[test]
fn a_link_signs_in_once_in_the_browser_that_asked_and_nowhere_else() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path(), &["alice"]);
    let alice = users.get("alice").unwrap();
    let links = EmailLinks::default();
    let (asking, other) = (new_browser_nonce(), new_browser_nonce());
    let sent = links.issue(&alice, &asking, "/wiki", NOW).unwrap();
    assert_eq!(sent.code.len(), CODE_DIGITS);

    // Opened on a phone, by a mail scanner, or in another browser: a code, not a session.
    for nonce in [None, Some(other.as_str())] {
        match links.open(&users, &sent.token, nonce, NOW + 1) {
            Ok(Opened::Elsewhere { code }) => assert_eq!(code, sent.code),
            _ => panic!("another browser is shown the code"),
        }
    }
    let (proof, return_to) = signed_in(links.open(&users, &sent.token, Some(&asking), NOW + 2));
    assert_eq!((proof.user().name.as_str(), return_to.as_str()), ("alice", "/wiki"));
    assert_eq!(links.open(&users, &sent.token, Some(&asking), NOW + 3).err(), Some(LinkInvalid::Invalid), "once");
    assert_eq!(links.open(&users, "made-up", Some(&asking), NOW + 3).err(), Some(LinkInvalid::Invalid));
}

#[test]
fn the_code_works_only_in_the_asking_browser_and_only_a_few_tries() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path(), &["alice"]);
    let alice = users.get("alice").unwrap();
    let links = EmailLinks::default();
    let asking = new_browser_nonce();
    let sent = links.issue(&alice, &asking, "/", NOW).unwrap();
    let wrong = if sent.code == "000000" { "111111" } else { "000000" };
    assert!(links.enter_code(&users, &new_browser_nonce(), &sent.code, NOW).is_err(), "another browser");
    assert_eq!(
        links.enter_code(&users, &asking, wrong, NOW).err(),
        Some(LinkInvalid::WrongCode { tries_left: CODE_TRIES - 1 })
    );
    let spaced = format!("{} {}", &sent.code[..3], &sent.code[3..]);
    let (proof, _) = links.enter_code(&users, &asking, &spaced, NOW + 1).unwrap();
    assert_eq!(proof.user().name.as_str(), "alice");
    assert!(links.open(&users, &sent.token, Some(&asking), NOW + 2).is_err(), "the link is spent too");

    // Five wrong codes void the link, the right one included afterwards.
    let sent = links.issue(&alice, &asking, "/", NOW + RESEND_AFTER).unwrap();
    for _ in 0..CODE_TRIES {
        assert!(links.enter_code(&users, &asking, wrong, NOW + RESEND_AFTER).is_err());
    }
    assert_eq!(links.enter_code(&users, &asking, &sent.code, NOW + RESEND_AFTER).err(), Some(LinkInvalid::Invalid));
    assert!(links.open(&users, &sent.token, Some(&asking), NOW + RESEND_AFTER).is_err());
}

#[test]
fn links_run_out_are_replaced_and_are_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path(), &["alice"]);
    let alice = users.get("alice").unwrap();
    let links = EmailLinks::default();
    let asking = new_browser_nonce();
    let old = links.issue(&alice, &asking, "/", NOW).unwrap();
    assert_eq!(links.issue(&alice, &asking, "/", NOW + 10).err(), Some(LinkRefused::TooSoon));
    let new = links.issue(&alice, &asking, "/", NOW + RESEND_AFTER).unwrap();
    assert!(links.open(&users, &old.token, Some(&asking), NOW + RESEND_AFTER).is_err(), "replaced");
    assert!(
        links.open(&users, &new.token, Some(&asking), NOW + RESEND_AFTER + LIFETIME).is_err(),
        "15 minutes and no more"
    );
    let mut t = NOW + 10 * RESEND_AFTER;
    for _ in 2..PER_HOUR_PER_ACCOUNT {
        links.issue(&alice, &asking, "/", t).unwrap();
        t += RESEND_AFTER;
    }
    assert_eq!(links.issue(&alice, &asking, "/", t).err(), Some(LinkRefused::AccountLimit));
    assert!(links.issue(&alice, &asking, "/", NOW + 3600 + 10 * RESEND_AFTER).is_ok(), "an hour later");

    let client: IpAddr = "2001:db8::1".parse().unwrap();
    let neighbour: IpAddr = "2001:db8::2".parse().unwrap();
    for _ in 0..PER_HOUR_PER_CLIENT {
        links.note_request(client, NOW).unwrap();
    }
    assert_eq!(links.note_request(neighbour, NOW).err(), Some(LinkRefused::ClientLimit), "one /64");
    assert!(links.note_request("2001:db8:1::1".parse().unwrap(), NOW).is_ok());
}

#[test]
fn a_link_for_a_removed_account_signs_nobody_in() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path(), &["alice", "bob"]);
    let alice = users.get("alice").unwrap();
    let links = EmailLinks::default();
    let asking = new_browser_nonce();
    let sent = links.issue(&alice, &asking, "/", NOW).unwrap();
    crate::domain::users::edit::remove(&dir.path().join("users.toml"), "alice").unwrap();
    users.reload().unwrap();
    assert_eq!(links.open(&users, &sent.token, Some(&asking), NOW).err(), Some(LinkInvalid::AccountGone));
}

#[test]
fn a_link_works_only_while_the_account_keeps_the_address_it_went_to_and_decoys_sign_in_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let users = directory(dir.path(), &["alice"]);
    let alice = users.get("alice").unwrap();
    let links = EmailLinks::default();
    let asking = new_browser_nonce();
    let sent = links.issue(&alice, &asking, "/", NOW).unwrap();
    let path = dir.path().join("users.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace("alice@example.com", "alice@elsewhere.example");
    std::fs::write(&path, text).unwrap();
    users.reload().unwrap();
    assert_eq!(links.open(&users, &sent.token, Some(&asking), NOW + 1).err(), Some(LinkInvalid::AccountGone));

    let stranger = new_browser_nonce();
    links.decoy(&stranger, NOW);
    assert_eq!(links.asked_for(&stranger).as_deref(), Some(""));
    assert_eq!(
        links.enter_code(&users, &stranger, "123456", NOW).err(),
        Some(LinkInvalid::WrongCode { tries_left: CODE_TRIES - 1 }),
        "answers like a real link"
    );
}
