//! The flows a person walks, in Chromium: signing in and out, setting up and using every second
//! factor, inline enrollment, step-up, the admin page.

use std::collections::HashSet;
use std::path::PathBuf;

use serde_json::{Value, json};

use super::checks;
use super::webdriver::{Browser, Viewport};
use crate::harness::{ALICE, Proxy, free_port, metric, proxy};
use crate::mfa::code;
use crate::upstream::Upstream;

pub use super::keys::{a_passkey_signs_in_without_a_password, security_key_from_the_account_page_to_sign_in};
pub use super::links::a_sign_in_link_signs_in_the_browser_that_asked;
pub use super::oidc::an_openid_provider_on_another_site_signs_in_and_lands_on_the_deep_link;

pub(super) const SUBMIT: &str = "main form button[type=submit]";

/// Signs in on the login page the browser is showing.
pub(super) async fn sign_in(browser: &Browser, user: &str, password: &str) {
    assert!(browser.url().await.contains("/.portcullis/login"), "not on the login page: {}", browser.url().await);
    browser.fill("#username", user).await;
    browser.fill("#password", password).await;
    browser.submit("form[action='/.portcullis/login'] button").await;
}

/// What the recording upstream answered with: the request it saw, as JSON.
pub(super) async fn upstream_saw(browser: &Browser) -> Value {
    let text = browser.text().await;
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not an upstream page: {text}"))
}

fn header<'a>(seen: &'a Value, name: &str) -> Option<&'a str> {
    seen["headers"][name][0].as_str()
}

/// Signs out with the first sign-out button on the page.
pub(super) async fn sign_out(browser: &Browser) {
    browser.submit("form[action='/.portcullis/logout'] button").await;
    assert!(browser.text().await.contains("You are signed out"), "{}", browser.text().await);
}

/// Reads the TOTP secret from the enrollment page, checked to be what a phone would scan.
async fn secret_on_page(browser: &Browser) -> Vec<u8> {
    let secret = browser.attribute("#secret", "data-secret").await.unwrap();
    totp_rs::Secret::try_from_base32(&secret).unwrap().as_ref().to_vec()
}

/// On the enrollment page: it opens at its heading (nothing focused that would scroll the QR code
/// away), then a code from the secret turns two-step verification on; returns the secret and the
/// recovery codes, with the codes confirmed as saved.
async fn enroll_totp(browser: &Browser, name: &str) -> (Vec<u8>, Vec<String>) {
    assert!(browser.url().await.contains("/.portcullis/enroll"), "{}", browser.url().await);
    let at_top = browser.script("return [window.scrollY, document.activeElement.tagName]", json!([])).await;
    assert_eq!(at_top, json!([0, "BODY"]), "the enrollment page opens at its heading");
    checks::page(browser, name).await;
    let secret = secret_on_page(browser).await;
    browser.fill("#code", &code(&secret, 0)).await;
    browser.submit(SUBMIT).await;
    let codes = save_recovery_codes(browser, &format!("{name}-recovery-codes")).await;
    (secret, codes)
}

/// On the recovery codes page: reads them, checks their layout, confirms they were saved.
async fn save_recovery_codes(browser: &Browser, name: &str) -> Vec<String> {
    assert!(browser.url().await.contains("/.portcullis/recovery-codes"), "{}", browser.url().await);
    checks::page(browser, name).await;
    let codes =
        browser.script("return [...document.querySelectorAll('.codes code')].map(c => c.innerText)", json!([])).await;
    let codes: Vec<String> = serde_json::from_value(codes).unwrap();
    assert_eq!(codes.len(), 10);
    // No number or code touches another: each item's box, marker included, stands apart.
    let overlaps = browser
        .script(
            r#"const boxes = [...document.querySelectorAll('.codes li')].map(li => li.getBoundingClientRect());
               let n = 0;
               for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
                 const a = boxes[i], b = boxes[j];
                 if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) n++;
               }
               return n;"#,
            json!([]),
        )
        .await;
    assert_eq!(overlaps, json!(0), "recovery code items overlap");
    browser.find("input[name=saved]").await.click(browser).await;
    browser.submit(SUBMIT).await;
    codes
}

/// The newest mail to the demo mailbox that contains `lead`, and the digits after it.
fn mailed_code(proxy: &Proxy, lead: &str, before: &HashSet<PathBuf>) -> String {
    let mail = proxy.wait_for_new_mail(before, lead);
    let start = mail.find(lead).unwrap() + lead.len();
    mail[start..].chars().take_while(char::is_ascii_digit).collect()
}

pub async fn password_sign_in_and_out(viewport: Viewport, test: &str) {
    let Some((browser, _permit)) = super::open(viewport, test).await else { return };
    let upstream = Upstream::start().await;
    let metrics = free_port();
    let proxy = proxy(&upstream.url()).toml(&format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"")).start();

    browser.goto(&proxy.url("/wiki/Deep/Link?rev=7")).await;
    assert!(browser.url().await.starts_with(&proxy.url("/.portcullis/login?rd=")));
    checks::page(&browser, "login").await;

    sign_in(&browser, "alice", "not the password").await;
    assert!(browser.text().await.contains("do not match"), "{}", browser.text().await);
    checks::page(&browser, "login-wrong-password").await;
    assert_eq!(upstream.count(), 0, "a wrong password reaches nothing");

    sign_in(&browser, "alice", ALICE.password).await;
    assert_eq!(browser.url().await, proxy.url("/wiki/Deep/Link?rev=7"), "lands where it was going");
    let seen = upstream_saw(&browser).await;
    assert_eq!(header(&seen, "x-forwarded-user"), Some("alice"));
    assert!(header(&seen, "x-portcullis-assertion").is_some());
    assert!(!header(&seen, "cookie").unwrap_or("").contains("portcullis"), "our cookie never reaches the upstream");

    // A moment later (a person reading), the next page goes by the express lane, whichever
    // connection Chromium takes: the one that posted the form (its body read to the end, it was
    // taken back from hyper) or a fresh one.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let carried = metric(metrics, "portcullis_express_requests_total").await;
    browser.goto(&proxy.url("/wiki/Next?rev=8")).await;
    assert_eq!(header(&upstream_saw(&browser).await, "x-forwarded-user"), Some("alice"));
    assert!(metric(metrics, "portcullis_express_requests_total").await > carried, "the lane carried the next page");

    // A second session, elsewhere (a cookie-jar client), shows on the account page and can be
    // signed out from here.
    let elsewhere = crate::harness::Browser::new();
    elsewhere.login(&proxy, &ALICE).await;
    assert_eq!(elsewhere.navigate(&proxy.url("/")).await.status(), 200);
    browser.goto(&proxy.url("/.portcullis/account")).await;
    let text = browser.text().await;
    assert!(text.contains("This browser") && text.contains("Chrome on Linux"), "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");
    checks::page(&browser, "account-two-sessions").await;
    browser.submit("form[action='/.portcullis/account/sessions/end'] button").await;
    assert!(browser.text().await.contains("signed out that session"), "{}", browser.text().await);
    assert_eq!(elsewhere.navigate(&proxy.url("/")).await.status(), 303, "the other session is over");

    sign_out(&browser).await;
    checks::page(&browser, "signed-out").await;
    browser.goto(&proxy.url("/wiki")).await;
    assert!(browser.url().await.contains("/.portcullis/login"), "signed out for real");
}

pub async fn two_step_verification_from_setup_to_every_way_in(viewport: Viewport, test: &str) {
    let Some((browser, _permit)) = super::open(viewport, test).await else { return };
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[mfa]\nemail_otp = true\n[admin]\ngroup = \"wiki-admins\"").start();

    // Set up an authenticator app from the account page.
    browser.goto(&proxy.url("/.portcullis/account")).await;
    sign_in(&browser, "alice", ALICE.password).await;
    assert_eq!(browser.url().await, proxy.url("/.portcullis/account"));
    checks::page(&browser, "account-without-2fa").await;
    browser.click_and_wait(&browser.find("a[href^='/.portcullis/enroll']").await).await;
    let (secret, recovery) = enroll_totp(&browser, "enroll").await;
    assert!(browser.url().await.starts_with(&proxy.url("/.portcullis/account")));
    assert!(browser.text().await.contains("Two-step verification is on"), "{}", browser.text().await);
    checks::page(&browser, "account-with-totp").await;
    sign_out(&browser).await;

    // Sign in with the app: the code box asks for digits.
    browser.goto(&proxy.url("/wiki/totp")).await;
    sign_in(&browser, "alice", ALICE.password).await;
    assert!(browser.url().await.contains("/.portcullis/challenge"), "{}", browser.url().await);
    assert_eq!(browser.attribute("#code", "inputmode").await.as_deref(), Some("numeric"));
    checks::page(&browser, "challenge").await;
    browser.fill("#code", &code(&secret, 1)).await;
    browser.submit(SUBMIT).await;
    assert_eq!(browser.url().await, proxy.url("/wiki/totp"));
    assert_eq!(header(&upstream_saw(&browser).await, "x-forwarded-user"), Some("alice"));
    browser.goto(&proxy.url("/.portcullis/account")).await;
    sign_out(&browser).await;

    // With a recovery code, chosen with its own link: the box then takes letters.
    browser.goto(&proxy.url("/wiki/recovery")).await;
    sign_in(&browser, "alice", ALICE.password).await;
    browser.click_and_wait(&browser.find("#use-recovery").await).await;
    assert_ne!(browser.attribute("#code", "inputmode").await.as_deref(), Some("numeric"));
    checks::page(&browser, "challenge-recovery-code").await;
    browser.fill("#code", &recovery[0]).await;
    browser.submit(SUBMIT).await;
    assert_eq!(browser.url().await, proxy.url("/wiki/recovery"));

    // Codes by email as a second factor (the recovery code just proved one: no step-up).
    browser.goto(&proxy.url("/.portcullis/account")).await;
    let before = proxy.mail_files();
    browser.submit("form[action='/.portcullis/enroll/email'] button").await;
    checks::page(&browser, "enroll-email").await;
    browser.fill("#code", &mailed_code(&proxy, "Your confirmation code is ", &before)).await;
    browser.submit(SUBMIT).await;
    assert!(browser.url().await.starts_with(&proxy.url("/.portcullis/account")), "{}", browser.url().await);
    assert!(browser.text().await.contains("Codes by email are on"), "{}", browser.text().await);
    sign_out(&browser).await;

    // Sign in with an emailed code: the page says where it went and asks for it.
    browser.goto(&proxy.url("/wiki/email")).await;
    sign_in(&browser, "alice", ALICE.password).await;
    let before = proxy.mail_files();
    browser.submit("form[action='/.portcullis/challenge/email'] button").await;
    let text = browser.text().await;
    assert!(text.contains("We emailed a code to a•••@example.com"), "{text}");
    assert_eq!(browser.attribute("#code", "inputmode").await.as_deref(), Some("numeric"));
    checks::page(&browser, "challenge-email-sent").await;
    browser.fill("#code", &mailed_code(&proxy, "Your code is ", &before)).await;
    browser.submit(SUBMIT).await;
    assert_eq!(browser.url().await, proxy.url("/wiki/email"));

    // The admin page, in words a person reads, with every action in reach.
    browser.goto(&proxy.url("/.portcullis/admin")).await;
    let text = browser.text().await;
    assert!(text.contains("alice") && text.contains("Authenticator app"), "{text}");
    assert!(!text.contains("recovery_codes") && !text.contains("totp"), "internal names on the admin page: {text}");
    checks::page(&browser, "admin").await;

    browser.goto(&proxy.url("/.portcullis/account")).await;
    sign_out(&browser).await;
}

pub async fn required_policy_enrolls_inline_and_lands_on_the_deep_link(viewport: Viewport, test: &str) {
    let Some((browser, _permit)) = super::open(viewport, test).await else { return };
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[mfa]\npolicy = \"required\"").start();

    browser.goto(&proxy.url("/reports/q3?year=2026")).await;
    sign_in(&browser, "alice", ALICE.password).await;
    assert!(browser.text().await.contains("Your account needs a second step"), "{}", browser.text().await);
    enroll_totp(&browser, "enroll-required").await;
    assert_eq!(browser.url().await, proxy.url("/reports/q3?year=2026"), "lands on the deep link");
    let seen = upstream_saw(&browser).await;
    assert_eq!(header(&seen, "x-forwarded-user"), Some("alice"));
    // Nothing reached the upstream before the second factor: the first request it saw is the
    // deep link, and every one came with the identity (the browser's favicon request included).
    let all = upstream.seen();
    assert_eq!(all[0].path, "/reports/q3");
    assert!(all.iter().all(|s| s.header("x-forwarded-user") == Some("alice")), "{all:?}");
}

pub async fn step_up_carries_the_action_through(viewport: Viewport, test: &str) {
    let Some((browser, _permit)) = super::open(viewport, test).await else { return };
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[mfa]\nremember_device = \"30d\"").start();

    browser.goto(&proxy.url("/.portcullis/enroll")).await;
    sign_in(&browser, "alice", ALICE.password).await;
    let (secret, recovery) = enroll_totp(&browser, "enroll-from-link").await;
    assert_eq!(browser.url().await, proxy.url("/"), "after setting up, on to where it was going");
    browser.goto(&proxy.url("/.portcullis/account")).await;
    sign_out(&browser).await;

    // Remember this browser: the next sign-in skips the code (never the password).
    browser.goto(&proxy.url("/wiki")).await;
    sign_in(&browser, "alice", ALICE.password).await;
    browser.find("#remember").await.click(&browser).await;
    checks::page(&browser, "challenge-remember").await;
    browser.fill("#code", &code(&secret, 1)).await;
    browser.submit(SUBMIT).await;
    assert_eq!(browser.url().await, proxy.url("/wiki"));
    browser.goto(&proxy.url("/.portcullis/account")).await;
    sign_out(&browser).await;
    browser.goto(&proxy.url("/wiki/again")).await;
    sign_in(&browser, "alice", ALICE.password).await;
    assert_eq!(browser.url().await, proxy.url("/wiki/again"), "a remembered browser skips the code");
    let seen = upstream_saw(&browser).await;
    assert_eq!(header(&seen, "x-forwarded-user"), Some("alice"));

    // New recovery codes: a remembered browser proved no code in this session, so the action asks
    // for one, then shows its confirmation (with the warning), then happens.
    browser.goto(&proxy.url("/.portcullis/account")).await;
    assert!(browser.text().await.contains("Remembered browsers"), "{}", browser.text().await);
    browser.click_and_wait(&browser.find("a[href='/.portcullis/account/regenerate-codes']").await).await;
    assert!(browser.url().await.contains("/.portcullis/challenge"), "step-up first: {}", browser.url().await);
    assert!(browser.text().await.contains("Confirm it's you"));
    checks::page(&browser, "step-up").await;
    browser.click_and_wait(&browser.find("#use-recovery").await).await;
    browser.fill("#code", &recovery[0]).await;
    browser.submit(SUBMIT).await;
    assert!(browser.url().await.ends_with("/.portcullis/account/regenerate-codes"), "{}", browser.url().await);
    assert!(browser.text().await.contains("stop working"), "the warning comes first: {}", browser.text().await);
    checks::page(&browser, "confirm-new-codes").await;
    browser.submit(SUBMIT).await;
    let fresh = save_recovery_codes(&browser, "new-recovery-codes").await;
    assert!(!fresh.contains(&recovery[1]), "a new set");

    // Change the password (step-up is still fresh).
    browser.click_and_wait(&browser.find("a[href='/.portcullis/account/password']").await).await;
    checks::page(&browser, "change-password").await;
    browser.fill("#current", ALICE.password).await;
    browser.fill("#new", "a brand new passphrase").await;
    browser.fill("#confirm", "a brand new passphrase").await;
    browser.submit(SUBMIT).await;
    let text = browser.text().await;
    assert!(text.contains("Your password was changed"), "{text}");
    assert!(!text.contains("Remembered browsers"), "a new password forgets remembered browsers: {text}");

    // Turn two-step verification off: confirmation, then done.
    browser.click_and_wait(&browser.find("a[href='/.portcullis/account/remove-totp']").await).await;
    checks::page(&browser, "confirm-turn-off").await;
    browser.submit(SUBMIT).await;
    assert!(browser.text().await.contains("Two-step verification is off"), "{}", browser.text().await);
    sign_out(&browser).await;

    browser.goto(&proxy.url("/wiki/after")).await;
    sign_in(&browser, "alice", "a brand new passphrase").await;
    assert_eq!(browser.url().await, proxy.url("/wiki/after"), "the new password works, and no code is asked");
}

/// An operator retires the authenticator app alice set up, then switches it off: the account page
/// says so while it still works, and once it is off, the next page she opens explains it and sets
/// up its successor before anything else.
pub async fn a_retired_then_disabled_authenticator_is_explained(viewport: Viewport, test: &str) {
    let Some((browser, _permit)) = super::open(viewport, test).await else { return };
    let upstream = Upstream::start().await;
    let provider = |id: &str, status: &str| {
        format!(
            "[[mfa.provider]]\nid = \"{id}\"\nkind = \"totp\"\nname = \"Authenticator app\"\nstatus = \"{status}\"\n"
        )
    };
    let proxy = proxy(&upstream.url()).toml("[mfa]\npolicy = \"required\"").toml(&provider("totp", "active")).start();
    let base = std::fs::read_to_string(proxy.config_path()).unwrap();
    let base = base.split("[[mfa.provider]]").next().unwrap().to_string();

    browser.goto(&proxy.url("/notes")).await;
    sign_in(&browser, "alice", ALICE.password).await;
    enroll_totp(&browser, "providers-enroll").await;
    assert_eq!(browser.url().await, proxy.url("/notes"));

    let next = format!("{}{}", provider("totp", "deprecated"), provider("totp-2027", "active"));
    crate::providers::reload_with(&proxy, &base, &next);
    browser.goto(&proxy.url("/.portcullis/account")).await;
    assert!(browser.text().await.contains("retiring"), "{}", browser.text().await);
    checks::page(&browser, "account-provider-retiring").await;

    let off = format!("{}{}", provider("totp", "disabled"), provider("totp-2027", "active"));
    crate::providers::reload_with(&proxy, &base, &off);
    browser.goto(&proxy.url("/notes")).await;
    assert!(browser.url().await.contains("/.portcullis/enroll"), "{}", browser.url().await);
    assert!(browser.text().await.contains("no longer works"), "{}", browser.text().await);
    enroll_totp(&browser, "providers-enroll-again").await;
    assert_eq!(browser.url().await, proxy.url("/notes"), "back where she was going");
}
