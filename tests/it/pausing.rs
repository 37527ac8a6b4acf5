//! Pausing sign-ins after failures, as the people behind one address live it: one person's typos
//! do not pause the office, an attacker guessing one account does not lock its owner out of the
//! browser they always use, wrong codes are never forgiven by a right password, and every page
//! says what happened and until when, without blaming anyone.

use futures_util::future::join_all;

use crate::harness::{ALICE, Browser, Proxy, proxy};
use crate::mfa::{BOB, code, enroll, log_out, password, submit_code};
use crate::upstream::Upstream;

async fn wrong_password(browser: &Browser, proxy: &Proxy, user: &str) -> reqwest::Response {
    browser.submit_login(proxy, user, "not the password", "/").await
}

#[tokio::test(flavor = "multi_thread")]
async fn one_persons_mistakes_do_not_pause_everyone_behind_the_address() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).account(&BOB).start();
    // Someone at the office keeps getting alice's password wrong.
    let typist = Browser::new();
    for _ in 0..4 {
        assert_eq!(wrong_password(&typist, &proxy, "alice").await.status(), 401);
    }
    let paused = wrong_password(&typist, &proxy, "alice").await;
    assert_eq!(paused.status(), 429);
    let page = paused.text().await.unwrap();
    assert!(page.contains("Signing in to this account is paused for about 15 minute(s)"), "{page}");
    // Bob, at the same address, signs in as usual.
    assert_eq!(Browser::new().submit_login(&proxy, "bob", BOB.password, "/").await.status(), 303);
    // Alice hears that someone got her password wrong: that is what happened.
    let mail = proxy.wait_for_mail("Subject: Signing in to your account was paused");
    assert!(mail.contains("alice@example.com") && mail.contains("Someone may be guessing your password"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_known_browser_still_signs_in_while_others_have_paused_its_account() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let laptop = Browser::new();
    laptop.login(&proxy, &ALICE).await;
    log_out(&laptop, &proxy).await;
    // An attacker elsewhere guesses until the account is paused.
    let attacker = Browser::new();
    for _ in 0..5 {
        wrong_password(&attacker, &proxy, "alice").await;
    }
    assert_eq!(Browser::new().submit_login(&proxy, "alice", ALICE.password, "/").await.status(), 429);
    // Alice's own browser knows the account: its attempts count on their own.
    assert_eq!(laptop.submit_login(&proxy, "alice", ALICE.password, "/").await.status(), 303);
    log_out(&laptop, &proxy).await;
    // A stolen known-browser cookie is no master key: its own guesses pause it.
    for _ in 0..4 {
        assert_eq!(wrong_password(&laptop, &proxy, "alice").await.status(), 401);
    }
    let page = wrong_password(&laptop, &proxy, "alice").await.text().await.unwrap();
    assert!(page.contains("Too many failed sign-ins from this browser"), "{page}");
    // And it knows only the account it signed in to.
    for _ in 0..5 {
        wrong_password(&attacker, &proxy, "bob").await;
    }
    assert_eq!(laptop.submit_login(&proxy, "bob", "anything", "/").await.status(), 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_network_paused_by_password_spraying_spares_browsers_that_signed_in_before() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).account(&BOB).toml("[regulation]\naddress_max_failures = 10").start();
    let bobs_browser = Browser::new();
    bobs_browser.login(&proxy, &BOB).await;
    log_out(&bobs_browser, &proxy).await;
    let sprayer = Browser::new();
    for n in 0..9 {
        assert_eq!(wrong_password(&sprayer, &proxy, &format!("user{n}")).await.status(), 401);
    }
    let paused = wrong_password(&sprayer, &proxy, "alice").await;
    assert_eq!(paused.status(), 429);
    let page = paused.text().await.unwrap();
    assert!(page.contains("Too many failed sign-ins came from your network"), "{page}");
    assert!(!page.contains("this account"), "the page does not blame the account: {page}");
    // Anyone else from this address is paused with the same words; Bob's browser is not.
    let stranger = Browser::new().submit_login(&proxy, "alice", ALICE.password, "/").await;
    assert!(stranger.text().await.unwrap().contains("came from your network"));
    assert_eq!(bobs_browser.submit_login(&proxy, "bob", BOB.password, "/").await.status(), 303);
    // Nobody's account was paused, so nobody is told someone is guessing their password.
    assert!(proxy.mails().iter().all(|m| !m.contains("was paused")), "{:?}", proxy.mails());
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_codes_count_across_sign_ins_and_the_pages_say_what_is_left() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let owner = Browser::new();
    owner.login(&proxy, &ALICE).await;
    let (secret, _, _) = enroll(&owner, &proxy, &proxy.url("/.portcullis/enroll")).await;

    // Someone with the password: three wrong codes end the half-logged-in session, and each page
    // before that says how many tries are left.
    let thief = Browser::new();
    let challenge = password(&thief, &proxy, &ALICE, "/").await;
    for left in ["2 tries left", "1 try left"] {
        let wrong = submit_code(&thief, &proxy, &challenge, "000000").await;
        assert_eq!(wrong.status(), 401);
        assert!(wrong.text().await.unwrap().contains(left), "{left}");
    }
    let ended = submit_code(&thief, &proxy, &challenge, "000000").await;
    let page = ended.text().await.unwrap();
    assert!(page.contains("you have been signed out") && page.contains("Sign in again"), "{page}");
    // Signing in again works (wrong codes never pause the password step by themselves)...
    let challenge = password(&thief, &proxy, &ALICE, "/").await;
    // ...but the right password forgives none of the wrong codes: two more, and codes pause.
    let wrong = submit_code(&thief, &proxy, &challenge, "000000").await;
    assert!(wrong.text().await.unwrap().contains("1 try left"), "the account's fourth wrong code");
    let paused = submit_code(&thief, &proxy, &challenge, "000000").await;
    assert_eq!(paused.status(), 429);
    assert!(paused.headers().contains_key("retry-after"));
    let page = paused.text().await.unwrap();
    assert!(page.contains("not checked for about 15 minute(s)") && !page.contains("Sign in again"), "{page}");
    // Codes stay paused for everyone, however they got past the password: even the right code
    // cannot be tried meanwhile, and the page says so.
    let owner = Browser::new();
    let challenge = password(&owner, &proxy, &ALICE, "/").await;
    let refused = submit_code(&owner, &proxy, &challenge, &code(&secret, 1)).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.text().await.unwrap().contains("codes for this account are not checked"));
    // The owner hears that someone has the password.
    let mail = proxy.wait_for_mail("too many wrong codes followed");
    assert!(mail.contains("someone knows your password"));
}

/// Signs in completely (password and code), which makes the browser a known one, and signs out.
async fn become_known(browser: &Browser, proxy: &Proxy, secret: &[u8], steps: i64) {
    let challenge = password(browser, proxy, &ALICE, "/").await;
    assert_eq!(submit_code(browser, proxy, &challenge, &code(secret, steps)).await.status(), 303);
    log_out(browser, proxy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_passwords_from_anywhere_never_stop_the_owner_proving_the_second_factor() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[regulation]\naddress_max_failures = 10").start();
    let laptop = Browser::new();
    laptop.login(&proxy, &ALICE).await;
    let (secret, codes, _) = enroll(&laptop, &proxy, &proxy.url("/.portcullis/enroll")).await;
    log_out(&laptop, &proxy).await;
    become_known(&laptop, &proxy, &secret, 1).await;
    // Anonymous wrong passwords pause the account's password step, and spraying pauses the address.
    for n in 0..10 {
        let _ = Browser::new().submit_login(&proxy, &format!("nobody{n}"), "x", "/").await;
    }
    for _ in 0..5 {
        let _ = Browser::new().submit_login(&proxy, "alice", "not it", "/").await;
    }
    assert_eq!(Browser::new().submit_login(&proxy, "alice", ALICE.password, "/").await.status(), 429);
    // Alice's browser is known: its password goes through, and so does her code.
    let challenge = password(&laptop, &proxy, &ALICE, "/wiki").await;
    let proven = submit_code(&laptop, &proxy, &challenge, &codes[0]).await;
    assert_eq!(proven.headers()["location"], proxy.url("/wiki").as_str(), "her code was checked");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_alone_earns_no_known_browser_and_a_new_password_voids_the_old_ones() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let laptop = Browser::new();
    laptop.login(&proxy, &ALICE).await;
    let (secret, _, _) = enroll(&laptop, &proxy, &proxy.url("/.portcullis/enroll")).await;
    log_out(&laptop, &proxy).await;

    // Someone with only the password: after it, no known-browser cookie.
    let thief = Browser::new();
    let answer = thief.submit_login(&proxy, "alice", ALICE.password, "/").await;
    let cookies: Vec<String> =
        answer.headers().get_all("set-cookie").iter().map(|c| c.to_str().unwrap().into()).collect();
    assert!(cookies.iter().all(|c| !c.starts_with("portcullis-known=")), "{cookies:?}");

    // The owner's browser earned one with the full sign-in...
    become_known(&laptop, &proxy, &secret, 1).await;
    // ...which stops counting once the password changes: its guesses fall on the account again.
    let mark = proxy.stderr.len();
    let changed = proxy.cli(&["user", "passwd", "alice"], "a different passphrase\n");
    assert!(changed.status.success());
    proxy.stderr.wait_for(mark, |l| l.contains("users file reloaded")).expect("the proxy reloads the users file");
    let mut last = 0;
    for n in 0..5 {
        last = laptop.submit_login(&proxy, "alice", &format!("guess {n}"), "/").await.status().as_u16();
    }
    assert_eq!(last, 429, "paused after five, like any browser");
    let bans = String::from_utf8_lossy(&proxy.cli(&["admin", "bans"], "").stdout).into_owned();
    assert!(bans.contains("account:alice"), "the account counted them: {bans}");
}

#[tokio::test(flavor = "multi_thread")]
async fn forty_guesses_at_once_are_not_all_checked() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[login]\nhash_workers = 1").start();
    // All forty on one HTTP/2 connection (prior knowledge on the cleartext listener).
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .cookie_provider(jar)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = h2.get(proxy.url("/.portcullis/login")).send().await.unwrap();
    assert_eq!(page.version(), reqwest::Version::HTTP_2);
    let csrf = crate::harness::form_field(&page.text().await.unwrap(), "csrf").unwrap();
    let guesses = (0..40).map(|n| {
        let guess = format!("guess number {n}");
        let fields =
            [("username", "alice".to_string()), ("password", guess), ("csrf", csrf.clone()), ("rd", "/".into())];
        let request = h2.post(proxy.url("/.portcullis/login")).header("origin", proxy.origin()).form(&fields);
        async move { request.send().await.unwrap().status().as_u16() }
    });
    let statuses = join_all(guesses).await;
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(checked + refused, 40, "{statuses:?}");
    assert!(checked <= 4, "at most the account's limit is checked, the pausing one included: {statuses:?}");
    assert_eq!(Browser::new().submit_login(&proxy, "alice", ALICE.password, "/").await.status(), 429);
}
