//! What a person does from the account page, and what must not be possible from it: signing out
//! another of one's sessions (never someone else's), changing the password, moving to a new
//! phone, and remembered browsers.

use crate::harness::{ALICE, Browser, Proxy, form_field, proxy};
use crate::mfa::{BOB, code, enroll, log_out, password, read_enrollment_page, submit_code};
use crate::upstream::Upstream;

async fn account_page(browser: &Browser, proxy: &Proxy) -> String {
    browser.navigate(&proxy.url("/.portcullis/account")).await.text().await.unwrap()
}

async fn post(browser: &Browser, proxy: &Proxy, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    browser.http.post(proxy.url(path)).header("origin", proxy.origin()).form(fields).send().await.unwrap()
}

/// The `value`s of every input called `name`.
fn all_fields(html: &str, name: &str) -> Vec<String> {
    let marker = format!("name=\"{name}\" value=\"");
    html.split(&marker).skip(1).map(|rest| rest[..rest.find('"').unwrap()].to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_session_can_be_signed_out_from_another_but_never_someone_elses() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).account(&BOB).start();
    let (laptop, phone, bob) = (Browser::new(), Browser::new(), Browser::new());
    laptop.login(&proxy, &ALICE).await;
    phone.login(&proxy, &ALICE).await;
    bob.login(&proxy, &BOB).await;
    let page = account_page(&laptop, &proxy).await;
    let handles = all_fields(&page, "session");
    assert_eq!(handles.len(), 1, "one other session listed with a sign-out button: {page}");
    assert!(page.contains("This browser") && page.contains("127.0.0.1"), "{page}");

    // Bob's session handle, posted from alice's page, ends nothing.
    let bobs = all_fields(&account_page(&bob, &proxy).await, "session");
    assert!(bobs.is_empty(), "bob has only his own session");
    let bob_page = account_page(&bob, &proxy).await;
    let bob_handle = bob_page.split("name=\"session\"").count();
    assert_eq!(bob_handle, 1, "bob's page offers no button for his only session");
    let csrf = form_field(&page, "csrf").unwrap();
    for guess in ["", "0000000000000000", "not-a-handle"] {
        let refused =
            post(&laptop, &proxy, "/.portcullis/account/sessions/end", &[("csrf", &csrf), ("session", guess)]).await;
        assert_eq!(refused.status(), 303);
    }
    assert_eq!(bob.navigate(&proxy.url("/")).await.status(), 200, "bob's session lives");
    assert_eq!(phone.navigate(&proxy.url("/")).await.status(), 200);

    let ended =
        post(&laptop, &proxy, "/.portcullis/account/sessions/end", &[("csrf", &csrf), ("session", &handles[0])]).await;
    assert_eq!(ended.headers()["location"], proxy.url("/.portcullis/account?done=session-ended").as_str());
    assert_eq!(phone.navigate(&proxy.url("/")).await.status(), 303, "the phone is signed out");
    assert_eq!(laptop.navigate(&proxy.url("/")).await.status(), 200, "this one carries on");
    // Without the session's own token, nothing happens.
    let forged =
        post(&laptop, &proxy, "/.portcullis/account/sessions/end", &[("csrf", "forged"), ("session", "x")]).await;
    assert_eq!(forged.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_password_from_the_account_page_ends_the_other_sessions_only() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let (here, elsewhere) = (Browser::new(), Browser::new());
    here.login(&proxy, &ALICE).await;
    elsewhere.login(&proxy, &ALICE).await;
    let form = here.navigate(&proxy.url("/.portcullis/account/password")).await.text().await.unwrap();
    let csrf = form_field(&form, "csrf").unwrap();
    let change = |current: &'static str, new: &'static str, confirm: &'static str| {
        let fields =
            [("csrf", csrf.clone()), ("current", current.into()), ("new", new.into()), ("confirm", confirm.into())];
        here.http.post(proxy.url("/.portcullis/account/password")).header("origin", proxy.origin()).form(&fields).send()
    };
    let refusals = [
        (change(ALICE.password, "short", "short").await.unwrap(), 400, "at least 8 characters"),
        (
            change(ALICE.password, "a long new passphrase", "a long other passphrase").await.unwrap(),
            400,
            "not the same",
        ),
        (change(ALICE.password, ALICE.password, ALICE.password).await.unwrap(), 400, "the password you have now"),
        (
            change("not my password", "a long new passphrase", "a long new passphrase").await.unwrap(),
            401,
            "do not match",
        ),
    ];
    for (response, status, words) in refusals {
        assert_eq!(response.status(), status, "{words}");
        assert!(response.text().await.unwrap().contains(words), "{words}");
    }
    assert_eq!(elsewhere.navigate(&proxy.url("/")).await.status(), 200, "nothing changed yet");

    let done = change(ALICE.password, "a long new passphrase", "a long new passphrase").await.unwrap();
    assert_eq!(done.headers()["location"], proxy.url("/.portcullis/account?done=password").as_str());
    let notice = here.navigate(&proxy.url("/.portcullis/account?done=password")).await.text().await.unwrap();
    assert!(notice.contains("Your password was changed"));
    assert_eq!(here.navigate(&proxy.url("/")).await.status(), 200, "this session carries on");
    assert_eq!(elsewhere.navigate(&proxy.url("/")).await.status(), 303, "every other session ended");
    assert_eq!(Browser::new().submit_login(&proxy, "alice", ALICE.password, "/").await.status(), 401);
    assert_eq!(Browser::new().submit_login(&proxy, "alice", "a long new passphrase", "/").await.status(), 303);
    let users = std::fs::read_to_string(proxy.users_file()).unwrap();
    assert!(!users.contains("a long new passphrase"), "only a hash is written");
    proxy.wait_for_mail("Subject: Your password was changed");

    // Guessing the current password here is regulated like a sign-in.
    let form = here.navigate(&proxy.url("/.portcullis/account/password")).await.text().await.unwrap();
    let csrf = form_field(&form, "csrf").unwrap();
    let mut last = 0;
    for n in 0..5 {
        let guess = format!("guess {n}");
        let fields =
            [("csrf", csrf.as_str()), ("current", &guess), ("new", "whatever long"), ("confirm", "whatever long")];
        last = post(&here, &proxy, "/.portcullis/account/password", &fields).await.status().as_u16();
    }
    assert_eq!(last, 429, "paused after five wrong passwords");
}

#[tokio::test(flavor = "multi_thread")]
async fn moving_to_a_new_phone_replaces_the_authenticator_without_turning_2fa_off() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[mfa]\npolicy = \"required\"").start();
    let browser = Browser::new();
    let enroll_url = password(&browser, &proxy, &ALICE, "/").await;
    let (old_secret, codes, _) = enroll(&browser, &proxy, &enroll_url).await;
    // Just enrolled, so the step-up is fresh: the page offers a new secret.
    let page =
        browser.navigate(&proxy.url("/.portcullis/enroll?rd=%2F.portcullis%2Faccount%3Fdone%3Dtotp-replaced")).await;
    let html = page.text().await.unwrap();
    assert!(html.contains("Move to a new authenticator app"), "{html}");
    let new_secret = read_enrollment_page(&html);
    assert_ne!(new_secret, old_secret);
    let csrf = form_field(&html, "csrf").unwrap();
    let rd = form_field(&html, "rd").unwrap();
    let refused =
        post(&browser, &proxy, "/.portcullis/enroll", &[("csrf", &csrf), ("rd", &rd), ("code", &code(&old_secret, 1))])
            .await;
    assert_eq!(refused.status(), 401, "a code from the old app does not confirm the new one");
    let moved =
        post(&browser, &proxy, "/.portcullis/enroll", &[("csrf", &csrf), ("rd", &rd), ("code", &code(&new_secret, 0))])
            .await;
    assert_eq!(
        moved.headers()["location"],
        proxy.url("/.portcullis/account?done=totp-replaced").as_str(),
        "no new codes to save"
    );
    let notice = browser.navigate(&proxy.url("/.portcullis/account?done=totp-replaced")).await.text().await.unwrap();
    assert!(notice.contains("Your new authenticator app is set up"));
    proxy.wait_for_mail("Subject: Your authenticator app was replaced");

    let later = Browser::new();
    let challenge = password(&later, &proxy, &ALICE, "/").await;
    assert_eq!(
        submit_code(&later, &proxy, &challenge, &code(&old_secret, 1)).await.status(),
        401,
        "the old phone is out"
    );
    assert_eq!(submit_code(&later, &proxy, &challenge, &code(&new_secret, 1)).await.status(), 303);
    // The recovery codes from the first setup still work.
    let third = Browser::new();
    let challenge = password(&third, &proxy, &ALICE, "/").await;
    assert_eq!(submit_code(&third, &proxy, &challenge, &codes[0]).await.status(), 303);
}

/// Proves the code on the challenge page with "remember this browser" ticked.
async fn sign_in_remembering(browser: &Browser, proxy: &Proxy, secret: &[u8], steps: i64) -> reqwest::Response {
    let challenge = password(browser, proxy, &ALICE, "/").await;
    let page = browser.navigate(&challenge).await.text().await.unwrap();
    let csrf = form_field(&page, "csrf").unwrap();
    let code = code(secret, steps);
    post(
        browser,
        proxy,
        "/.portcullis/challenge",
        &[("csrf", &csrf), ("rd", "/"), ("code", &code), ("remember", "yes")],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remembered_browser_skips_only_the_code_until_it_is_forgotten() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).account(&BOB).toml("[mfa]\nremember_device = \"30d\"").start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let (secret, codes, _) = enroll(&browser, &proxy, &proxy.url("/.portcullis/enroll")).await;
    log_out(&browser, &proxy).await;
    assert_eq!(sign_in_remembering(&browser, &proxy, &secret, 1).await.status(), 303);
    log_out(&browser, &proxy).await;

    // The password is still asked, and still checked.
    assert_eq!(browser.submit_login(&proxy, "alice", "wrong", "/").await.status(), 401);
    assert_eq!(password(&browser, &proxy, &ALICE, "/wiki").await, proxy.url("/wiki"), "no code asked");
    assert_eq!(browser.navigate(&proxy.url("/wiki")).await.status(), 200);
    let seen = upstream.seen();
    let claims = crate::mfa::claims(&proxy, seen.last().unwrap()).await;
    assert_eq!(claims["amr"], serde_json::json!(["pwd", "device"]));
    assert_eq!(claims["acr"], "aal1", "no second factor was proven in this session");
    let page = account_page(&browser, &proxy).await;
    assert!(page.contains("Remembered browsers") && page.contains("Forget"), "{page}");

    // The cookie is for alice's account only: bob, with his own factor, is asked for his code.
    log_out(&browser, &proxy).await;
    let bobs = Browser::new();
    bobs.login(&proxy, &BOB).await;
    enroll(&bobs, &proxy, &proxy.url("/.portcullis/enroll")).await;
    let bob = password(&browser, &proxy, &BOB, "/").await;
    assert!(bob.contains("/.portcullis/challenge"), "{bob}");
    let other = Browser::new();
    assert!(
        password(&other, &proxy, &ALICE, "/").await.contains("/.portcullis/challenge"),
        "another browser is not remembered"
    );

    // "Sign out everywhere" forgets every remembered browser.
    let challenge = password(&other, &proxy, &ALICE, "/").await;
    let proven = submit_code(&other, &proxy, &challenge, &codes[0]).await;
    assert_eq!(proven.headers()["location"], proxy.url("/").as_str());
    let page = account_page(&other, &proxy).await;
    let csrf = form_field(&page, "csrf").unwrap_or_else(|| panic!("{page}"));
    assert_eq!(
        post(&other, &proxy, "/.portcullis/account/sign-out-everywhere", &[("csrf", &csrf)]).await.status(),
        200
    );
    assert!(password(&browser, &proxy, &ALICE, "/").await.contains("/.portcullis/challenge"), "forgotten");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_remember_device_nothing_is_remembered() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let (secret, _, _) = enroll(&browser, &proxy, &proxy.url("/.portcullis/enroll")).await;
    log_out(&browser, &proxy).await;
    let challenge = password(&browser, &proxy, &ALICE, "/").await;
    assert!(!browser.navigate(&challenge).await.text().await.unwrap().contains("Remember this browser"));
    log_out_partial(&browser, &proxy, &challenge).await;
    let proven = sign_in_remembering(&browser, &proxy, &secret, 1).await;
    assert_eq!(proven.status(), 303);
    assert!(proven.headers().get_all("set-cookie").iter().all(|c| !c.to_str().unwrap().contains("-remember=")));
    log_out(&browser, &proxy).await;
    assert!(password(&browser, &proxy, &ALICE, "/").await.contains("/.portcullis/challenge"));
}

/// Cancels a half-finished sign-in from the challenge page.
async fn log_out_partial(browser: &Browser, proxy: &Proxy, challenge: &str) {
    let page = browser.navigate(challenge).await.text().await.unwrap();
    let csrf = form_field(&page, "csrf").unwrap();
    assert_eq!(post(browser, proxy, "/.portcullis/logout", &[("csrf", &csrf)]).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_the_policy_sent_back_cannot_use_the_account_page() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    // Someone signed in with the password while the account had no second factor...
    let intruder = Browser::new();
    intruder.login(&proxy, &ALICE).await;
    let csrf = form_field(&account_page(&intruder, &proxy).await, "csrf").unwrap();
    // ...then the owner set one up elsewhere.
    let owner = Browser::new();
    owner.login(&proxy, &ALICE).await;
    enroll(&owner, &proxy, &proxy.url("/.portcullis/enroll")).await;
    let owners = all_fields(&account_page(&intruder, &proxy).await, "session");
    assert!(owners.is_empty(), "the intruder sees no list of sessions");
    let page = intruder.navigate(&proxy.url("/.portcullis/account")).await;
    assert_eq!(page.status(), 303);
    assert!(page.headers()["location"].to_str().unwrap().contains("/.portcullis/challenge"));
    for (path, fields) in [
        ("/.portcullis/account/sign-out-everywhere", vec![("csrf", csrf.as_str())]),
        ("/.portcullis/account/primary-email", vec![("csrf", csrf.as_str())]),
        ("/.portcullis/account/browsers/forget", vec![("csrf", csrf.as_str()), ("browser", "x")]),
    ] {
        let refused = post(&intruder, &proxy, path, &fields).await;
        assert_ne!(refused.status(), 200, "{path}");
        if refused.status() == 303 {
            assert!(!refused.headers()["location"].to_str().unwrap().contains("done="), "{path}");
        }
    }
    assert_eq!(owner.navigate(&proxy.url("/")).await.status(), 200, "the owner's session lives");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_password_or_an_operator_forgets_remembered_browsers() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[mfa]\nremember_device = \"30d\"").start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let (secret, codes, _) = enroll(&browser, &proxy, &proxy.url("/.portcullis/enroll")).await;
    log_out(&browser, &proxy).await;
    assert_eq!(sign_in_remembering(&browser, &proxy, &secret, 1).await.status(), 303);
    log_out(&browser, &proxy).await;

    // The operator ends her sessions: remembered browsers go too.
    assert!(proxy.cli(&["admin", "revoke", "alice"], "").status.success());
    assert!(password(&browser, &proxy, &ALICE, "/").await.contains("/.portcullis/challenge"));
    let challenge = password(&browser, &proxy, &ALICE, "/").await;
    let page = browser.navigate(&challenge).await.text().await.unwrap();
    let csrf = form_field(&page, "csrf").unwrap();
    let fields = [("csrf", csrf.as_str()), ("rd", "/"), ("code", codes[0].as_str()), ("remember", "yes")];
    assert_eq!(post(&browser, &proxy, "/.portcullis/challenge", &fields).await.status(), 303);
    log_out(&browser, &proxy).await;
    assert_eq!(password(&browser, &proxy, &ALICE, "/").await, proxy.url("/"), "remembered again");
    log_out(&browser, &proxy).await;

    // A new password set by the operator (not on the account page) makes it worthless too.
    let mark = proxy.stderr.len();
    let changed = proxy.cli(&["user", "passwd", "alice"], "another long passphrase\n");
    assert!(changed.status.success());
    proxy.stderr.wait_for(mark, |l| l.contains("users file reloaded")).expect("the proxy reloads the users file");
    let answer = browser.submit_login(&proxy, "alice", "another long passphrase", "/").await;
    assert!(answer.headers()["location"].to_str().unwrap().contains("/.portcullis/challenge"));
}
