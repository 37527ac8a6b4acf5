//! Signing in with a link sent by email (`[login.email_link]`), through the real binary and its
//! file mail transport: the link signs in the browser that asked and no other, is single use,
//! and leads to the same partial session a password does, so the account's second factor still
//! follows. The same page answers known and unknown addresses.

use std::collections::HashSet;

use crate::harness::{ALICE, Browser, Proxy, form_field, proxy};
use crate::mfa::{code, enroll, submit_code};
use crate::upstream::Upstream;

pub(crate) const LINKS: &str = "[login.email_link]\nenabled = true\n";

async fn post(browser: &Browser, proxy: &Proxy, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    browser.http.post(proxy.url(path)).header("origin", proxy.origin()).form(fields).send().await.unwrap()
}

/// Asks for a link for `address` from `browser` (going to `rd`); returns the page's answer.
pub(crate) async fn ask(browser: &Browser, proxy: &Proxy, address: &str, rd: &str) -> (reqwest::StatusCode, String) {
    let login = browser.navigate(&proxy.url(&format!("/.portcullis/login?rd={}", rd.replace('/', "%2F")))).await;
    let login = login.text().await.unwrap();
    let start = login.find("/.portcullis/login/email?rd=").expect("the login page offers a link");
    let url = login[start..start + login[start..].find('"').unwrap()].replace("&amp;", "&");
    let page = browser.navigate(&proxy.url(&url)).await.text().await.unwrap();
    let (csrf, rd) = (form_field(&page, "csrf").unwrap(), form_field(&page, "rd").unwrap());
    let sent =
        post(browser, proxy, "/.portcullis/login/email", &[("csrf", &csrf), ("rd", &rd), ("email", address)]).await;
    (sent.status(), sent.text().await.unwrap())
}

/// The link in the newest mail that arrived since `before`.
fn link_in_new_mail(proxy: &Proxy, before: &HashSet<std::path::PathBuf>) -> String {
    link_in(proxy, &proxy.wait_for_new_mail(before, "Your sign-in link"))
}

/// The sign-in link in a mail as sent (quoted-printable soft breaks and `=3D` undone).
pub(crate) fn link_in(proxy: &Proxy, mail: &str) -> String {
    let mail = mail.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=");
    let marker = "/.portcullis/login/email/open?token=";
    let start = mail.find(marker).unwrap() + marker.len();
    let token: String = mail[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || "-_".contains(*c)).collect();
    proxy.url(&format!("{marker}{token}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_signs_in_the_browser_that_asked_once_and_the_second_factor_still_follows() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml(LINKS).start();
    // Alice has an authenticator app: the link is her first factor, the app still her second.
    let setup = Browser::new();
    setup.login(&proxy, &ALICE).await;
    let (secret, _, _) = enroll(&setup, &proxy, &proxy.url("/.portcullis/enroll?rd=%2F.portcullis%2Faccount")).await;

    let laptop = Browser::new();
    let before = proxy.mail_files();
    let (status, page) = ask(&laptop, &proxy, "Alice@Example.com", "/wiki/Deep").await;
    assert_eq!(status, 200);
    assert!(page.contains("Check your email"), "{page}");
    let link = link_in_new_mail(&proxy, &before);

    // Opened on the phone (no cookie of the asking browser): a code, no session.
    let phone = Browser::new();
    let elsewhere = phone.navigate(&link).await;
    assert_eq!(elsewhere.status(), 200);
    let shown = elsewhere.text().await.unwrap();
    assert!(shown.contains("Finish on the browser that asked"), "{shown}");
    assert_eq!(phone.navigate(&proxy.url("/wiki")).await.status(), 303, "the phone is not signed in");

    // Opened in the asking browser: the first factor; the app's code is asked next.
    let opened = laptop.navigate(&link).await;
    assert_eq!(opened.status(), 303);
    let challenge = opened.headers()["location"].to_str().unwrap().to_string();
    assert!(challenge.contains("/.portcullis/challenge"), "2FA belongs to the account: {challenge}");
    let before_upstream = upstream.count();
    assert_eq!(laptop.navigate(&proxy.url("/wiki/Deep")).await.status(), 303, "half signed in reaches nothing");
    assert_eq!(upstream.count(), before_upstream);
    let signed_in = submit_code(&laptop, &proxy, &challenge, &code(&secret, 1)).await;
    assert_eq!(signed_in.status(), 303);
    assert_eq!(signed_in.headers()["location"], proxy.url("/wiki/Deep").as_str(), "lands where it was going");
    assert_eq!(laptop.navigate(&proxy.url("/wiki/Deep")).await.status(), 200);
    let seen = upstream.seen().pop().unwrap();
    let token = seen.header("x-portcullis-assertion").unwrap();
    let jwks: jsonwebtoken::jwk::JwkSet =
        laptop.http.get(proxy.url("/.portcullis/jwks.json")).send().await.unwrap().json().await.unwrap();
    let claims = crate::harness::verify_with_jwks(token, &jwks, &proxy.origin()).unwrap();
    assert_eq!(claims["amr"], serde_json::json!(["link", "otp"]), "{claims}");

    // Used once: opening it again signs nobody in, anywhere.
    let again = Browser::new();
    assert_eq!(again.navigate(&link).await.status(), 410);
    assert_eq!(laptop.navigate(&link).await.status(), 410);
    let log = proxy.stderr.all().join("\n");
    let token = link.rsplit('=').next().unwrap();
    assert!(!log.contains(token), "the link's token is never logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_code_from_another_device_signs_in_the_asking_browser_and_strangers_learn_nothing() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml(LINKS).start();
    let laptop = Browser::new();
    let before = proxy.mail_files();
    let (_, known) = ask(&laptop, &proxy, ALICE.email, "/").await;
    let link = link_in_new_mail(&proxy, &before);

    // An unknown address gets the same page, and no mail.
    let stranger = Browser::new();
    let mails = proxy.mail_files();
    let (status, unknown) = ask(&stranger, &proxy, "nobody@example.com", "/").await;
    assert_eq!(status, 200);
    let strip = |page: &str| {
        let mut page = page.to_string();
        for field in ["csrf"] {
            if let Some(value) = form_field(&page, field) {
                page = page.replace(&value, "");
            }
        }
        page
    };
    assert_eq!(strip(&known), strip(&unknown), "one answer for known and unknown addresses");
    // Asking again for Alice within the minute: the same page, no second mail.
    let (status, _) = ask(&stranger, &proxy, ALICE.email, "/").await;
    assert_eq!(status, 200);
    assert_eq!(proxy.mail_files().len(), mails.len(), "no mail for the unknown address nor the repeat");

    // The code form answers alike whether a link went out or not: wrong codes have tries left.
    let page = stranger.navigate(&proxy.url("/.portcullis/login/email?rd=%2F")).await.text().await.unwrap();
    let stranger_csrf = form_field(&page, "csrf").unwrap();
    let guess = [("csrf", stranger_csrf.as_str()), ("rd", "/"), ("code", "123456")];
    let decoy = post(&stranger, &proxy, "/.portcullis/login/email/code", &guess).await;
    assert_eq!(decoy.status(), 401, "as for a real link");
    assert!(decoy.text().await.unwrap().contains("tries left"));

    // The phone shows the code; a wrong one is counted, the right one signs the laptop in.
    let opened = Browser::new().navigate(&link).await;
    assert_eq!(opened.headers()["referrer-policy"], "no-referrer", "the token in its URL goes nowhere");
    let shown = opened.text().await.unwrap();
    assert!(shown.contains("<link rel=\"icon\" href=\"data:,\">"), "no favicon request either");
    let start = shown.find("class=\"code\"").unwrap();
    let code: String = shown[start..].chars().skip_while(|c| *c != '>').filter(char::is_ascii_digit).take(6).collect();
    assert_eq!(code.len(), 6);
    let page = laptop.navigate(&proxy.url("/.portcullis/login/email?rd=%2F")).await.text().await.unwrap();
    let csrf = form_field(&page, "csrf").unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    // The code typed into a browser that never asked is refused.
    let refused =
        post(&stranger, &proxy, "/.portcullis/login/email/code", &[("csrf", &csrf), ("rd", "/"), ("code", &code)])
            .await;
    assert_eq!(refused.status(), 403, "no login cookie there");
    let wrong =
        post(&laptop, &proxy, "/.portcullis/login/email/code", &[("csrf", &csrf), ("rd", "/"), ("code", wrong)]).await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.text().await.unwrap().contains("4 tries left"));
    let right =
        post(&laptop, &proxy, "/.portcullis/login/email/code", &[("csrf", &csrf), ("rd", "/"), ("code", &code)]).await;
    assert_eq!(right.status(), 303, "Alice has no second factor here: signed in");
    assert_eq!(laptop.navigate(&proxy.url("/wiki")).await.status(), 200);
    // Cross-site posts are refused like every other form.
    let forged = laptop
        .http
        .post(proxy.url("/.portcullis/login/email"))
        .header("origin", "https://evil.example")
        .form(&[("csrf", csrf.as_str()), ("email", ALICE.email)])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_link_an_emailed_code_is_not_a_second_factor_and_without_the_setting_there_are_no_links() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml(&format!("{LINKS}[mfa]\nemail_otp = true\ntotp = false\n")).start();
    // Alice's only second step is codes by email.
    let setup = Browser::new();
    setup.login(&proxy, &ALICE).await;
    let page = setup.navigate(&proxy.url("/.portcullis/enroll/email?rd=%2F")).await.text().await.unwrap();
    let csrf = form_field(&page, "csrf").unwrap();
    let before = proxy.mail_files();
    assert_eq!(post(&setup, &proxy, "/.portcullis/enroll/email", &[("csrf", &csrf), ("rd", "/")]).await.status(), 303);
    let mail = proxy.wait_for_new_mail(&before, "Confirm your address");
    let start = mail.find("Your confirmation code is ").unwrap() + "Your confirmation code is ".len();
    let confirmation: String = mail[start..].chars().take(6).collect();
    let confirmed = post(
        &setup,
        &proxy,
        "/.portcullis/enroll/email/confirm",
        &[("csrf", &csrf), ("rd", "/"), ("code", &confirmation)],
    )
    .await;
    assert_eq!(confirmed.status(), 303);

    // A link, then: the mailbox cannot be the second step as well. No code is sent, and the page
    // says to use the password.
    let laptop = Browser::new();
    let before = proxy.mail_files();
    ask(&laptop, &proxy, ALICE.email, "/").await;
    let link = link_in_new_mail(&proxy, &before);
    let opened = laptop.navigate(&link).await;
    assert_eq!(opened.status(), 303);
    let challenge = laptop.navigate(opened.headers()["location"].to_str().unwrap()).await;
    assert_eq!(challenge.status(), 403);
    assert!(challenge.text().await.unwrap().contains("Sign in with your password"));
    let mails = proxy.mail_files().len();
    assert_eq!(laptop.navigate(&proxy.url("/wiki")).await.status(), 303);
    assert_eq!(proxy.mail_files().len(), mails, "no sign-in code was sent after the link");

    // Without [login.email_link]: no offer on the login page, and the pages do not exist.
    let plain = crate::harness::proxy(&upstream.url()).start();
    let stranger = Browser::new();
    let login = stranger.navigate(&plain.url("/.portcullis/login")).await.text().await.unwrap();
    assert!(!login.contains("sign-in link"), "{login}");
    assert_eq!(stranger.navigate(&plain.url("/.portcullis/login/email")).await.status(), 404);
    assert_eq!(stranger.navigate(&plain.url("/.portcullis/login/email/open?token=x")).await.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn link_codes_are_regulated_like_passwords_and_a_link_never_sets_up_codes_by_email() {
    let upstream = Upstream::start().await;
    let config = format!("{LINKS}[mfa]\npolicy = \"required\"\nemail_otp = true\n");
    let proxy = proxy(&upstream.url()).toml(&config).start();
    // Someone with Alice's mailbox in another browser (not her laptop) guesses codes: five wrong
    // ones pause the account's sign-ins, as five wrong passwords would.
    let guesser = Browser::new();
    let before = proxy.mail_files();
    ask(&guesser, &proxy, ALICE.email, "/").await;
    let _ = link_in_new_mail(&proxy, &before);
    let page = guesser.navigate(&proxy.url("/.portcullis/login/email?rd=%2F")).await.text().await.unwrap();
    let csrf = form_field(&page, "csrf").unwrap();
    let mut statuses = Vec::new();
    for guess in ["000001", "000002", "000003", "000004", "000005"] {
        let form = [("csrf", csrf.as_str()), ("rd", "/"), ("code", guess)];
        statuses.push(post(&guesser, &proxy, "/.portcullis/login/email/code", &form).await.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 410], "the fifth wrong code voids the link");
    // Asking again at once buys no new link (a minute from the last one sent, used or not).
    let mails = proxy.mail_files().len();
    ask(&guesser, &proxy, ALICE.email, "/").await;
    assert_eq!(proxy.mail_files().len(), mails, "no new link within the minute");
    let password = Browser::new().submit_login(&proxy, ALICE.name, ALICE.password, "/").await;
    assert_eq!(password.status(), 429, "the account is paused, whatever the way in");

    // A fresh proxy: Alice (no factor yet, 2FA required) opens her link; she must set up a
    // second step, and codes by email (the same mailbox) are not among the choices.
    let proxy = crate::harness::proxy(&upstream.url()).toml(&config).start();
    let laptop = Browser::new();
    let before = proxy.mail_files();
    ask(&laptop, &proxy, ALICE.email, "/").await;
    let link = link_in_new_mail(&proxy, &before);
    let opened = laptop.navigate(&link).await;
    let enroll = opened.headers()["location"].to_str().unwrap().to_string();
    assert!(enroll.contains("/.portcullis/enroll"), "{enroll}");
    let page = laptop.navigate(&enroll).await.text().await.unwrap();
    assert!(!page.contains("/.portcullis/enroll/email"), "no email codes offered after a link: {page}");
    let csrf = form_field(&page, "csrf").unwrap();
    let forced = post(&laptop, &proxy, "/.portcullis/enroll/email", &[("csrf", &csrf), ("rd", "/")]).await;
    assert_ne!(forced.status(), 200);
    let confirmation = forced.headers().get("location").map(|l| l.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(!confirmation.contains("/.portcullis/enroll/email?"), "no confirmation code was sent: {confirmation}");
    assert!(!proxy.mails().iter().any(|m| m.contains("Confirm your address")), "no mail to confirm the same mailbox");
}

/// Five wrong codes for an address pause its codes, whether an account has the address or not:
/// the code form of the next browser to ask answers alike (an attack pass told addresses apart
/// when only real links were counted against an account).
#[tokio::test(flavor = "multi_thread")]
async fn wrong_codes_pause_an_address_alike_whether_an_account_has_it_or_not() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml(LINKS).start();
    async fn guess(browser: &Browser, proxy: &Proxy) -> (u16, String) {
        let page = browser.navigate(&proxy.url("/.portcullis/login/email?rd=%2F")).await.text().await.unwrap();
        let csrf = form_field(&page, "csrf").unwrap();
        let answer =
            post(browser, proxy, "/.portcullis/login/email/code", &[("csrf", &csrf), ("rd", "/"), ("code", "000000")])
                .await;
        let status = answer.status().as_u16();
        let text = answer.text().await.unwrap();
        let said = text.split("<p").find(|p| p.contains("tries left") || p.contains("paused")).unwrap_or("");
        let said = said.split("</p>").next().unwrap_or("").to_string();
        (status, said)
    }
    let mut answers = Vec::new();
    for address in [ALICE.email, "nobody@example.com"] {
        let first = Browser::new();
        ask(&first, &proxy, address, "/").await;
        let mut wrong = Vec::new();
        for _ in 0..5 {
            wrong.push(guess(&first, &proxy).await.0);
        }
        // Another browser asks for the same address at once (a real account's link is held
        // back for a minute), and types a code.
        let second = Browser::new();
        ask(&second, &proxy, address, "/").await;
        answers.push((wrong, guess(&second, &proxy).await));
    }
    assert_eq!(answers[0].0, [401, 401, 401, 401, 410], "five wrong codes void the link");
    assert_eq!(answers[0], answers[1], "the same answers for a known and an unknown address");
    assert_eq!(answers[1].1.0, 429, "paused, for both: {:?}", answers[1].1);
}
