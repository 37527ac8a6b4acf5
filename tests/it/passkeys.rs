//! Signing in with a passkey alone (`webauthn.passwordless`), through the real binary.
//!
//! The software authenticator cannot keep discoverable credentials, so the test does what a
//! discoverable one does on its behalf: it answers the login page's options (which allow any
//! credential) with the key registered earlier, and returns the user handle stored with it at
//! registration (WebAuthn L3 §5.4.3; the handle travels beside the signature, not in it, which is
//! why the proxy must check that it belongs to the credential's account). Chromium's virtual
//! authenticator walks the same sign-in with a real resident key in `browser/passkeys.rs`.

use serde_json::{Value, json};
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};

use crate::harness::{ALICE, Browser, form_field};
use crate::security_keys::{browser, key, keyed_proxy, options, page, post};
use crate::upstream::Upstream;

pub(crate) const PASSWORDLESS: &str = "[webauthn]\npasswordless = true\n";

/// What a registration leaves the test holding: the credential id and the user handle the
/// authenticator would keep with a discoverable credential (both base64url, as on the wire).
pub(crate) struct Registered {
    pub(crate) raw_id: String,
    pub(crate) user_handle: String,
}

/// Registers `key` for the signed-in `owner`, checking the options ask for a discoverable one.
pub(crate) async fn register(owner: &Browser, base: &str, key: &mut SoftPasskey) -> Registered {
    let (status, _, html) = page(owner, &format!("{base}/.portcullis/security-keys/new")).await;
    assert_eq!(status, 200, "{html}");
    let raw: Value = serde_json::from_str(&options(&html)).unwrap();
    let selection = &raw["publicKey"]["authenticatorSelection"];
    assert_eq!(selection["residentKey"], "preferred", "passkeys are asked to be discoverable: {selection}");
    assert_eq!(selection["userVerification"], "required");
    let user_handle = raw["publicKey"]["user"]["id"].as_str().unwrap().to_string();
    let creation: CreationChallengeResponse = serde_json::from_value(raw).unwrap();
    let credential = key.do_registration(Url::parse(base).unwrap(), creation).unwrap();
    let credential = serde_json::to_value(&credential).unwrap();
    let raw_id = credential["rawId"].as_str().unwrap().to_string();
    let (csrf, rd) = (form_field(&html, "csrf").unwrap(), form_field(&html, "rd").unwrap());
    let credential = credential.to_string();
    let form = [("csrf", csrf.as_str()), ("rd", rd.as_str()), ("name", "Phone"), ("credential", credential.as_str())];
    assert_eq!(post(owner, base, "/.portcullis/security-keys/new", &form).await.status(), 303);
    Registered { raw_id, user_handle }
}

/// The login page, which must offer the passkey (button, autofill, script).
pub(crate) async fn login_page(browser: &Browser, base: &str, rd: &str) -> String {
    let url = format!("{base}/.portcullis/login?rd={}", urlencoding(rd));
    let (status, headers, html) = page(browser, &url).await;
    assert_eq!(status, 200);
    assert!(html.contains("data-webauthn=\"passkey\"") && html.contains("Sign in with a passkey"), "{html}");
    assert!(html.contains("autocomplete=\"username webauthn\""), "autofill may offer passkeys");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    html
}

fn urlencoding(text: &str) -> String {
    serde_urlencoded::to_string([("x", text)]).unwrap().trim_start_matches("x=").to_string()
}

/// The passkey's answer to the login page's options, as a discoverable credential gives it,
/// signed for `origin`, carrying `user_handle`.
pub(crate) fn passkey_answer(
    key: &mut SoftPasskey,
    origin: &str,
    html: &str,
    registered: &Registered,
    user_handle: &str,
) -> String {
    let mut raw: Value = serde_json::from_str(&options(html)).unwrap();
    assert_eq!(raw["mediation"], "conditional", "the browser may offer it in autofill");
    assert_eq!(raw["publicKey"]["allowCredentials"], json!([]), "any discoverable credential: no account named");
    assert_eq!(raw["publicKey"]["userVerification"], "required");
    raw["publicKey"]["allowCredentials"] = json!([{ "type": "public-key", "id": registered.raw_id }]);
    let request: RequestChallengeResponse = serde_json::from_value(raw).unwrap();
    let answer = key.do_authentication(Url::parse(origin).unwrap(), request).unwrap();
    let mut answer = serde_json::to_value(&answer).unwrap();
    answer["response"]["userHandle"] = json!(user_handle);
    answer.to_string()
}

pub(crate) async fn submit(
    browser: &Browser,
    base: &str,
    origin: &str,
    html: &str,
    credential: &str,
) -> reqwest::Response {
    let (csrf, rd) = (form_field(html, "csrf").unwrap(), form_field(html, "rd").unwrap());
    let form = [("csrf", csrf.as_str()), ("rd", rd.as_str()), ("credential", credential)];
    browser
        .http
        .post(format!("{base}/.portcullis/login/passkey"))
        .header("origin", origin)
        .form(&form)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_passkey_signs_in_with_no_password_and_every_forgery_is_refused() {
    let upstream = Upstream::start().await;
    let (proxy, base) = keyed_proxy(&upstream, PASSWORDLESS);
    let mut key = key();
    let owner = browser(&proxy);
    assert_eq!(owner.submit_login_at(&base, ALICE.name, ALICE.password, "/").await.status(), 303);
    let registered = register(&owner, &base, &mut key).await;
    let handle = registered.user_handle.clone();

    // A visitor going to a deep link signs in with the passkey and lands there.
    let phone = browser(&proxy);
    let gate = phone.navigate(&format!("{base}/wiki/Deep?x=1")).await;
    assert_eq!(gate.status(), 303);
    let html = login_page(&phone, &base, "/wiki/Deep?x=1").await;
    let credential = passkey_answer(&mut key, &base, &html, &registered, &handle);
    let signed_in = submit(&phone, &base, &base, &html, &credential).await;
    assert_eq!(signed_in.status(), 303, "{}", signed_in.text().await.unwrap());
    assert_eq!(signed_in.headers()["location"], format!("{base}/wiki/Deep?x=1").as_str());
    assert_eq!(phone.navigate(&format!("{base}/wiki/Deep?x=1")).await.status(), 200);
    let seen = upstream.seen().pop().unwrap();
    let jwks: jsonwebtoken::jwk::JwkSet =
        phone.http.get(format!("{base}/.portcullis/jwks.json")).send().await.unwrap().json().await.unwrap();
    let claims =
        crate::harness::verify_with_jwks(seen.header("x-portcullis-assertion").unwrap(), &jwks, &base).unwrap();
    assert_eq!(claims["amr"], json!(["hwk", "user"]), "a key and its user verification, no password: {claims}");
    assert_eq!(claims["acr"], "aal2");
    assert_eq!(seen.header("x-forwarded-user"), Some(ALICE.name));
    let log = proxy.stderr.wait_for(0, |l| l.contains("login ok: passkey")).expect("logged");
    assert!(!log.contains(&registered.raw_id) && !log.contains(&credential[..40]), "no key material in the log: {log}");

    let before = upstream.count();
    // The same answer again: its ceremony was used up (§13.4.3).
    let replayed = submit(&phone, &base, &base, &html, &credential).await;
    assert_eq!(replayed.status(), 401);
    assert!(replayed.text().await.unwrap().contains("took too long, or the request was already used"));

    // Captured and replayed from another browser: that browser's challenge is another one.
    let thief = browser(&proxy);
    let thiefs = login_page(&thief, &base, "/").await;
    let stolen = submit(&thief, &base, &base, &thiefs, &credential).await;
    assert_eq!(stolen.status(), 401);
    assert!(stolen.text().await.unwrap().contains("That passkey did not sign you in"));

    // A real answer paired with a user handle that is not its account's.
    let swapped = browser(&proxy);
    let html = login_page(&swapped, &base, "/").await;
    let other_handle = "AAAAAAAAAAAAAAAAAAAAAA";
    let forged = passkey_answer(&mut key, &base, &html, &registered, other_handle);
    assert_eq!(submit(&swapped, &base, &base, &html, &forged).await.status(), 401);

    // Signed by the key on another site that relayed our options (§7.2 step 13).
    let phished = browser(&proxy);
    let html = login_page(&phished, &base, "/").await;
    let evil = format!("http://{}:{}", crate::security_keys::HOST, proxy.addr.port() ^ 1);
    let relayed = passkey_answer(&mut key, &evil, &html, &registered, &handle);
    assert_eq!(submit(&phished, &base, &base, &html, &relayed).await.status(), 401);

    // Posted from another origin (login CSRF), or without this browser's login token.
    let html = login_page(&phished, &base, "/").await;
    let fine = passkey_answer(&mut key, &base, &html, &registered, &handle);
    assert_eq!(submit(&phished, &base, "http://evil.example", &html, &fine).await.status(), 403);
    let stranger = browser(&proxy);
    assert_eq!(submit(&stranger, &base, &base, &html, &fine).await.status(), 403, "no login cookie, no sign-in");
    // Nothing of this reached the application, and no one is signed in.
    for browser in [&thief, &swapped, &phished, &stranger] {
        assert_eq!(browser.navigate(&format!("{base}/wiki")).await.status(), 303);
    }
    assert_eq!(upstream.count(), before, "nothing refused reached the application");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_passkey_of_a_switched_off_provider_signs_in_no_more_and_without_the_setting_there_is_no_passkey_form() {
    let upstream = Upstream::start().await;
    let providers = |status: &str| {
        format!(
            "[[mfa.provider]]\nid = \"totp\"\nkind = \"totp\"\nstatus = \"active\"\n[[mfa.provider]]\nid = \"keys\"\nkind = \"webauthn\"\nstatus = \"{status}\"\n"
        )
    };
    let (proxy, base) = keyed_proxy(&upstream, &format!("{PASSWORDLESS}{}", providers("active")));
    let config = std::fs::read_to_string(proxy.config_path()).unwrap();
    let plain = config.split("[[mfa.provider]]").next().unwrap().to_string();
    let mut key = key();
    let owner = browser(&proxy);
    assert_eq!(owner.submit_login_at(&base, ALICE.name, ALICE.password, "/").await.status(), 303);
    let registered = register(&owner, &base, &mut key).await;

    crate::providers::reload_with(&proxy, &plain, &providers("disabled"));
    // Keys are no longer offered at all, so neither is the passkey form...
    let visitor = browser(&proxy);
    let (_, _, html) = page(&visitor, &format!("{base}/.portcullis/login")).await;
    assert!(!html.contains("data-webauthn") && !html.contains("webauthn.js"), "{html}");
    // ...and an answer to options from before the switch is refused.
    crate::providers::reload_with(&proxy, &plain, &providers("active"));
    let html = login_page(&visitor, &base, "/").await;
    let credential = passkey_answer(&mut key, &base, &html, &registered, &registered.user_handle);
    crate::providers::reload_with(&proxy, &plain, &providers("disabled"));
    assert_eq!(submit(&visitor, &base, &base, &html, &credential).await.status(), 404, "no passkey sign-in now");

    // Without webauthn.passwordless: no form, no autofill, and the endpoint does not exist.
    let (plain_proxy, plain_base) = keyed_proxy(&upstream, "");
    let stranger = browser(&plain_proxy);
    let (_, headers, html) = page(&stranger, &format!("{plain_base}/.portcullis/login")).await;
    assert!(!html.contains("data-webauthn") && html.contains("autocomplete=\"username\""));
    assert!(!headers["content-security-policy"].to_str().unwrap().contains("script-src"), "no script on the page");
    let csrf = form_field(&html, "csrf").unwrap();
    let form = [("csrf", csrf.as_str()), ("rd", "/"), ("credential", "{}")];
    assert_eq!(post(&stranger, &plain_base, "/.portcullis/login/passkey", &form).await.status(), 404);
}

/// Signs in with the passkey alone in a new browser; returns it, signed in.
async fn passkey_session(
    proxy: &crate::harness::Proxy,
    base: &str,
    key: &mut SoftPasskey,
    registered: &Registered,
) -> Browser {
    let browser = browser(proxy);
    let html = login_page(&browser, base, "/").await;
    let credential = passkey_answer(key, base, &html, registered, &registered.user_handle);
    let response = submit(&browser, base, base, &html, &credential).await;
    assert_eq!(response.status(), 303, "{}", response.text().await.unwrap());
    assert_eq!(browser.navigate(&format!("{base}/wiki")).await.status(), 200);
    browser
}

/// Where a browser is sent for `/wiki`: a session that was ended goes to the login page, never
/// to a second step or a setup page.
async fn sent_to_login(browser: &Browser, base: &str) {
    let response = browser.navigate(&format!("{base}/wiki")).await;
    assert_eq!(response.status(), 303);
    let next = response.headers()["location"].to_str().unwrap();
    assert!(next.contains("/.portcullis/login"), "ended, not sent to prove more: {next}");
    for page in ["/.portcullis/enroll", "/.portcullis/security-keys/new", "/.portcullis/challenge"] {
        let response = browser.navigate(&format!("{base}{page}")).await;
        let next = response.headers().get("location").map(|l| l.to_str().unwrap().to_string()).unwrap_or_default();
        assert!(next.contains("/.portcullis/login"), "{page} needs a sign-in: {next}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_passkey_session_lasts_only_while_its_key_and_the_setting_do() {
    let upstream = Upstream::start().await;
    let (proxy, base) = keyed_proxy(&upstream, PASSWORDLESS);
    let config = std::fs::read_to_string(proxy.config_path()).unwrap();
    let plain = config.replace(PASSWORDLESS, "");
    let mut key = key();
    let owner = browser(&proxy);
    assert_eq!(owner.submit_login_at(&base, ALICE.name, ALICE.password, "/").await.status(), 303);
    let registered = register(&owner, &base, &mut key).await;

    // The setting turned off: sessions that rest on it end.
    let phone = passkey_session(&proxy, &base, &mut key, &registered).await;
    crate::providers::reload_with(&proxy, &plain, "[webauthn]\npasswordless = false\n");
    sent_to_login(&phone, &base).await;

    // The key removed by its owner: the session it made ends, though 2FA is optional and the
    // account is left with no factor (a password session would go on; this one has no password).
    crate::providers::reload_with(&proxy, &plain, PASSWORDLESS);
    let thief = passkey_session(&proxy, &base, &mut key, &registered).await;
    let (_, _, account) = page(&owner, &format!("{base}/.portcullis/account")).await;
    let marker = "/.portcullis/security-keys/remove?key=";
    let start = account.find(marker).unwrap();
    let remove = account[start..start + account[start..].find('"').unwrap()].to_string();
    let (status, _, confirm) = page(&owner, &format!("{base}{remove}")).await;
    assert_eq!(status, 200, "the owner proved the key just now: {confirm}");
    let removed = post(&owner, &base, &remove, &[("csrf", form_field(&confirm, "csrf").unwrap().as_str())]).await;
    assert_eq!(removed.status(), 303);
    sent_to_login(&thief, &base).await;
    let html = login_page(&thief, &base, "/").await;
    let again = passkey_answer(&mut key, &base, &html, &registered, &registered.user_handle);
    assert_eq!(submit(&thief, &base, &base, &html, &again).await.status(), 401, "the removed key signs in no more");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_passkey_session_is_ended_not_sent_back_to_a_second_step() {
    let upstream = Upstream::start().await;
    let providers = |keys: &str| {
        format!(
            "[[mfa.provider]]\nid = \"totp\"\nkind = \"totp\"\n[[mfa.provider]]\nid = \"keys\"\nkind = \"webauthn\"\nstatus = \"{keys}\"\n"
        )
    };
    let (proxy, base) = keyed_proxy(&upstream, &format!("{PASSWORDLESS}{}", providers("active")));
    let config = std::fs::read_to_string(proxy.config_path()).unwrap();
    let plain = config.split("[[mfa.provider]]").next().unwrap().to_string();
    let mut key = key();
    let owner = browser(&proxy);
    assert_eq!(owner.submit_login_at(&base, ALICE.name, ALICE.password, "/").await.status(), 303);
    let registered = register(&owner, &base, &mut key).await;

    // 2FA becomes required and the key provider is switched off (the keys were stolen): the
    // passkey session is not turned into a half-signed-in one that could set up a factor of its
    // own (it proved no password); it ends.
    let thief = passkey_session(&proxy, &base, &mut key, &registered).await;
    let required = format!("[mfa]\npolicy = \"required\"\n{}", providers("disabled"));
    crate::providers::reload_with(&proxy, &plain.replace("[mfa]\n", "[mfa-was]\n"), &required);
    sent_to_login(&thief, &base).await;

    // An administrator asks every session to prove its second step again: a passkey session is
    // ended rather than left to prove a "second" step on top of a password it never gave.
    crate::providers::reload_with(&proxy, &plain, &providers("active"));
    let phone = passkey_session(&proxy, &base, &mut key, &registered).await;
    let output = proxy.cli(&["admin", "downgrade-all"], "");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    sent_to_login(&phone, &base).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_second_step_pauses_the_passkey_too() {
    let upstream = Upstream::start().await;
    // More wrong codes per half-signed-in session than the account's pause needs (5).
    let (proxy, base) = keyed_proxy(&upstream, &format!("{PASSWORDLESS}[mfa]\nattempts = 10\n"));
    let mut key = key();
    let owner = browser(&proxy);
    assert_eq!(owner.submit_login_at(&base, ALICE.name, ALICE.password, "/").await.status(), 303);
    let registered = register(&owner, &base, &mut key).await;

    // Someone with the password guesses codes until the account's second step is paused.
    let guesser = browser(&proxy);
    assert_eq!(guesser.submit_login_at(&base, ALICE.name, ALICE.password, "/").await.status(), 303);
    let (_, _, challenge) = page(&guesser, &format!("{base}/.portcullis/challenge?use=recovery")).await;
    let csrf = form_field(&challenge, "csrf").unwrap();
    let mut last = 0;
    for _ in 0..8 {
        let form = [("csrf", csrf.as_str()), ("rd", "/"), ("use", "recovery"), ("code", "aaaa-bbbb-cccc")];
        last = post(&guesser, &base, "/.portcullis/challenge", &form).await.status().as_u16();
        if last == 429 {
            break;
        }
    }
    assert_eq!(last, 429, "the account's codes are paused");

    // The passkey is that account's second factor too: paused alike, as it is at the challenge.
    let visitor = browser(&proxy);
    let html = login_page(&visitor, &base, "/").await;
    let credential = passkey_answer(&mut key, &base, &html, &registered, &registered.user_handle);
    let refused = submit(&visitor, &base, &base, &html, &credential).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(visitor.navigate(&format!("{base}/wiki")).await.status(), 303, "not signed in");
}
