//! One-time codes by email as a second factor, read from the mails the proxy writes: setting it
//! up (the address is proven first), signing in with it, choosing it as the alternate or the
//! primary factor, and its limits.

use std::collections::HashSet;
use std::path::PathBuf;

use crate::harness::{ALICE, Browser, Proxy, form_field, proxy};
use crate::mfa::{enroll, password, submit_code};
use crate::upstream::Upstream;

pub(crate) const EMAIL_REQUIRED: &str = "[mfa]\npolicy = \"required\"\nemail_otp = true";

/// Waits for a mail containing `needle` that was not among `before`; returns its text.
pub(crate) fn new_mail(proxy: &Proxy, before: &HashSet<PathBuf>, needle: &str) -> String {
    proxy.wait_for_new_mail(before, needle)
}

pub(crate) fn mails(proxy: &Proxy) -> HashSet<PathBuf> {
    proxy.mail_files()
}

/// The digits after `lead` in a mail.
pub(crate) fn code_after(mail: &str, lead: &str) -> String {
    let start = mail.find(lead).unwrap_or_else(|| panic!("{lead:?} not in mail")) + lead.len();
    mail[start..].chars().take_while(char::is_ascii_digit).collect()
}

pub(crate) async fn post(browser: &Browser, proxy: &Proxy, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    browser.http.post(proxy.url(path)).header("origin", proxy.origin()).form(fields).send().await.unwrap()
}

/// Sets up codes by email from the page at `enroll_url`; returns the answer to the right code.
pub(crate) async fn enroll_email(browser: &Browser, proxy: &Proxy, page_url: &str) -> reqwest::Response {
    let page = browser.navigate(page_url).await.text().await.unwrap();
    assert!(page.contains("a•••@example.com"), "the address is shown masked");
    let csrf = form_field(&page, "csrf").unwrap();
    let rd = form_field(&page, "rd").unwrap_or_else(|| "/.portcullis/account".into());
    let before = mails(proxy);
    let sent = post(browser, proxy, "/.portcullis/enroll/email", &[("csrf", &csrf), ("rd", &rd)]).await;
    assert_eq!(sent.status(), 303);
    let confirm_url = sent.headers()["location"].to_str().unwrap().to_string();
    assert!(confirm_url.starts_with(&proxy.url("/.portcullis/enroll/email?")), "{confirm_url}");
    let mail = new_mail(proxy, &before, "Confirm your address for sign-in codes");
    assert!(mail.contains("alice@example.com"));
    let code = code_after(&mail, "Your confirmation code is ");
    assert_eq!(code.len(), 6);

    let page = browser.navigate(&confirm_url).await.text().await.unwrap();
    assert!(page.contains("A code is on its way"));
    let wrong = if code == "000000" { "000001" } else { "000000" };
    let refused =
        post(browser, proxy, "/.portcullis/enroll/email/confirm", &[("csrf", &csrf), ("rd", &rd), ("code", wrong)])
            .await;
    assert_eq!(refused.status(), 401);
    post(browser, proxy, "/.portcullis/enroll/email/confirm", &[("csrf", &csrf), ("rd", &rd), ("code", &code)]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn codes_by_email_alone_protect_an_account() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml(EMAIL_REQUIRED).start();
    let browser = Browser::new();
    let enroll_url = password(&browser, &proxy, &ALICE, "/wiki").await;
    assert!(enroll_url.contains("/.portcullis/enroll"), "required: enroll inline");

    let confirmed = enroll_email(&browser, &proxy, &enroll_url).await;
    assert_eq!(confirmed.status(), 303);
    let codes_page = confirmed.headers()["location"].to_str().unwrap().to_string();
    assert!(codes_page.contains("/.portcullis/recovery-codes"), "the first factor comes with recovery codes");
    let html = browser.navigate(&codes_page).await.text().await.unwrap();
    let csrf = form_field(&html, "csrf").unwrap();
    let rd = form_field(&html, "rd").unwrap();
    let saved =
        post(&browser, &proxy, "/.portcullis/recovery-codes", &[("csrf", &csrf), ("rd", &rd), ("saved", "yes")]).await;
    assert_eq!(saved.headers()["location"], proxy.url("/wiki").as_str(), "back where she was going");
    assert_eq!(browser.navigate(&proxy.url("/wiki")).await.status(), 200);
    proxy.wait_for_mail("Sign-in codes by email were turned on");

    // Signing in again: the code is mailed as the password is accepted.
    let later = Browser::new();
    let before = mails(&proxy);
    let challenge = password(&later, &proxy, &ALICE, "/notes").await;
    let page = later.navigate(&challenge).await.text().await.unwrap();
    assert!(page.contains("Enter the code we emailed to <strong>a•••@example.com</strong>"), "{page}");
    let code = code_after(&new_mail(&proxy, &before, "Your sign-in code"), "Your code is ");
    let in_ = submit_code(&later, &proxy, &challenge, &code).await;
    assert_eq!(in_.headers()["location"], proxy.url("/notes").as_str());
    assert_eq!(later.navigate(&proxy.url("/notes")).await.status(), 200);

    // The upstream can tell how the second step was made.
    let seen = upstream.seen().into_iter().rev().find(|s| s.path == "/notes").unwrap();
    let token = seen.header("x-portcullis-assertion").unwrap();
    let claims = proxy.verify_assertion(token).await;
    assert_eq!(claims["amr"], serde_json::json!(["pwd", "email"]));
    assert_eq!(claims["acr"], "aal1", "NIST SP 800-63B does not accept email for AAL2");

    // A code works once.
    let third = Browser::new();
    let before = mails(&proxy);
    let challenge = password(&third, &proxy, &ALICE, "/").await;
    new_mail(&proxy, &before, "Your sign-in code");
    let replay = submit_code(&third, &proxy, &challenge, &code).await;
    assert_eq!(replay.status(), 401);
    assert_eq!(third.http.get(proxy.url("/")).send().await.unwrap().status(), 401);

    // Operators see the factor, and when two-step verification was turned on, in every view.
    let json = proxy.cli(&["admin", "users", "--json"], "");
    let users: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let alice = users["users"].as_array().unwrap().iter().find(|u| u["name"] == "alice").unwrap().clone();
    assert_eq!(alice["factors"], serde_json::json!(["email", "recovery_codes"]));
    assert!(alice["enrolled_at"].as_i64().is_some(), "enrolled with email alone: {alice}");
    let factors = String::from_utf8(proxy.cli(&["admin", "factors"], "").stdout).unwrap();
    assert!(factors.lines().any(|l| l.starts_with("email:") && l.contains("alice")), "{factors}");
}

#[tokio::test(flavor = "multi_thread")]
async fn email_is_the_alternate_when_the_app_is_unavailable_and_can_be_made_primary() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[mfa]\nemail_otp = true").start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let (secret, _, _) = enroll(&browser, &proxy, &proxy.url("/.portcullis/enroll")).await;
    // Just proven with the app, so adding email codes needs no further step-up.
    let added = enroll_email(&browser, &proxy, &proxy.url("/.portcullis/account")).await;
    let location = added.headers()["location"].to_str().unwrap();
    assert_eq!(location, proxy.url("/.portcullis/account?done=email-on"), "no second set of codes");
    let account = browser.navigate(&proxy.url("/.portcullis/account")).await.text().await.unwrap();
    assert!(account.contains("Codes by email") && account.contains("Offer email codes first"));

    // The app comes first; nothing is mailed until asked for.
    let phone_lost = Browser::new();
    let before = mails(&proxy);
    let challenge = password(&phone_lost, &proxy, &ALICE, "/").await;
    let page = phone_lost.navigate(&challenge).await.text().await.unwrap();
    assert!(page.contains("Email me a code at a•••@example.com instead"));
    let sent_since = proxy.mail_files().into_iter().filter(|p| !before.contains(p));
    assert!(sent_since.filter_map(|p| std::fs::read_to_string(p).ok()).all(|m| !m.contains("Your sign-in code")));
    let csrf = form_field(&page, "csrf").unwrap();
    let rd = form_field(&page, "rd").unwrap();
    let asked = post(&phone_lost, &proxy, "/.portcullis/challenge/email", &[("csrf", &csrf), ("rd", &rd)]).await;
    assert_eq!(asked.status(), 303);
    let code = code_after(&new_mail(&proxy, &before, "Your sign-in code"), "Your code is ");
    let notice = phone_lost.navigate(asked.headers()["location"].to_str().unwrap()).await.text().await.unwrap();
    assert!(notice.contains("We emailed a code to <strong>a•••@example.com</strong>"), "{notice}");
    assert!(notice.contains("inputmode=\"numeric\""), "and asks for its digits");
    // Asking again at once is refused: an inbox cannot be flooded through the proxy.
    let again = post(&phone_lost, &proxy, "/.portcullis/challenge/email", &[("csrf", &csrf), ("rd", &rd)]).await;
    assert_eq!(again.status(), 429);
    assert!(again.text().await.unwrap().contains("you can ask for another in"));
    assert_eq!(submit_code(&phone_lost, &proxy, &challenge, &code).await.status(), 303);
    assert_eq!(phone_lost.navigate(&proxy.url("/")).await.status(), 200);

    // Email first: the code is mailed at sign-in; the app still works in the same box.
    let account = browser.navigate(&proxy.url("/.portcullis/account")).await.text().await.unwrap();
    let csrf = form_field(&account, "csrf").unwrap();
    post(&browser, &proxy, "/.portcullis/account/primary-email", &[("csrf", &csrf)]).await;
    let third = Browser::new();
    let before = mails(&proxy);
    let challenge = password(&third, &proxy, &ALICE, "/").await;
    new_mail(&proxy, &before, "Your sign-in code");
    let page = third.navigate(&challenge).await.text().await.unwrap();
    assert!(page.contains("Enter the code we emailed") && page.contains("Or enter a code from your authenticator app"));
    assert_eq!(submit_code(&third, &proxy, &challenge, &crate::mfa::code(&secret, 1)).await.status(), 303);
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_one_of_two_factors_keeps_the_other() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml(EMAIL_REQUIRED).start();
    let browser = Browser::new();
    let enroll_url = password(&browser, &proxy, &ALICE, "/").await;
    enroll(&browser, &proxy, &enroll_url).await;
    enroll_email(&browser, &proxy, &proxy.url("/.portcullis/account")).await;
    let account = browser.navigate(&proxy.url("/.portcullis/account")).await.text().await.unwrap();
    let csrf = form_field(&account, "csrf").unwrap();
    assert!(account.contains("Remove the authenticator app"), "one of two may go, even where 2FA is required");
    let removed = post(&browser, &proxy, "/.portcullis/account/remove-totp", &[("csrf", &csrf)]).await;
    assert_eq!(removed.status(), 303);
    proxy.wait_for_mail("A second step was removed from your account");
    let account = browser.navigate(&proxy.url("/.portcullis/account")).await.text().await.unwrap();
    assert!(account.contains("Recovery codes left: <strong>10</strong>"), "the codes stay with the remaining factor");
    assert!(!account.contains("remove-email"), "the last factor cannot go where 2FA is required");
    let refused = post(&browser, &proxy, "/.portcullis/account/remove-email", &[("csrf", &csrf)]).await;
    assert_eq!(refused.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn where_apps_are_not_allowed_email_codes_are_the_whole_setup() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[mfa]\npolicy = \"required\"\ntotp = false\nemail_otp = true").start();
    let browser = Browser::new();
    let enroll_url = password(&browser, &proxy, &ALICE, "/").await;
    let page = browser.navigate(&enroll_url).await.text().await.unwrap();
    assert!(!page.contains("otpauth://") && !page.contains("data:image/png"), "no authenticator setup offered");
    let confirmed = enroll_email(&browser, &proxy, &enroll_url).await;
    assert!(confirmed.headers()["location"].to_str().unwrap().contains("/.portcullis/recovery-codes"));
    // An app cannot be added behind the operator's back.
    let refused = browser.navigate(&proxy.url("/.portcullis/enroll")).await;
    assert!(!refused.text().await.unwrap().contains("otpauth://"));
}
