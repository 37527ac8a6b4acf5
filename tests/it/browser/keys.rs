//! A security key in a real Chromium: a virtual authenticator (DevTools `WebAuthn` domain) stands
//! in for the key, so `static/webauthn.js` runs for real against the browser's WebAuthn API.

use serde_json::json;

use super::checks;
use super::flows::{SUBMIT, sign_in, sign_out, upstream_saw};
use super::webdriver::{Browser, Viewport};
use crate::harness::{ALICE, proxy};
use crate::upstream::Upstream;

/// A CTAP2 key with a PIN it always verifies, as WebAuthn L3 §6 requires for our ceremonies.
async fn plug_in_a_key(browser: &Browser) -> String {
    browser.cdp("WebAuthn.enable", json!({})).await;
    let options = json!({"options": {
        "protocol": "ctap2",
        "transport": "usb",
        "hasResidentKey": true,
        "hasUserVerification": true,
        "isUserVerified": true,
        "automaticPresenceSimulation": true,
    }});
    let added = browser.cdp("WebAuthn.addVirtualAuthenticator", options).await;
    added["authenticatorId"].as_str().unwrap_or_else(|| panic!("{added}")).to_string()
}

/// The proxy's published keys, fetched as an upstream would.
async fn jwks(proxy: &crate::harness::Proxy, base: &str) -> jsonwebtoken::jwk::JwkSet {
    let client = reqwest::Client::builder().resolve("localhost", proxy.addr).build().unwrap();
    client.get(format!("{base}/.portcullis/jwks.json")).send().await.unwrap().json().await.unwrap()
}

pub async fn security_key_from_the_account_page_to_sign_in(viewport: Viewport, test: &str) {
    let Some((browser, _permit)) = super::open(viewport, test).await else { return };
    let upstream = Upstream::start().await;
    // A domain name (browsers refuse an IP address as the relying party), and a secure context.
    let proxy = proxy(&upstream.url()).public_host("localhost").start();
    let base = format!("http://localhost:{}", proxy.addr.port());
    plug_in_a_key(&browser).await;

    browser.goto(&format!("{base}/.portcullis/account")).await;
    sign_in(&browser, "alice", ALICE.password).await;
    assert!(browser.url().await.contains("/.portcullis/account"), "{}", browser.url().await);
    browser.click_and_wait(&browser.find("#add-security-key").await).await;
    assert!(browser.url().await.contains("/.portcullis/security-keys/new"), "{}", browser.url().await);
    checks::page(&browser, "security-key-new").await;
    browser.fill("#name", "Virtual key").await;
    browser.submit(SUBMIT).await;
    // A first factor comes with recovery codes, then the account page says the key is on.
    assert!(browser.url().await.contains("/.portcullis/recovery-codes"), "{}", browser.text().await);
    browser.find("input[name=saved]").await.click(&browser).await;
    browser.submit(SUBMIT).await;
    let text = browser.text().await;
    assert!(text.contains("Your security key is added") && text.contains("Virtual key"), "{text}");
    checks::page(&browser, "account-with-key").await;
    sign_out(&browser).await;

    // Sign in: password, then the key (offered first; the other ways stay offered).
    browser.goto(&format!("{base}/notes")).await;
    sign_in(&browser, "alice", ALICE.password).await;
    assert!(browser.url().await.contains("/.portcullis/challenge"), "{}", browser.url().await);
    let text = browser.text().await;
    assert!(text.contains("Use your security key") && text.contains("Use a recovery code"), "{text}");
    checks::page(&browser, "challenge-security-key").await;
    browser.submit("#use-key").await;
    assert_eq!(browser.url().await, format!("{base}/notes"), "lands where it was going");
    let seen = upstream_saw(&browser).await;
    assert_eq!(seen["headers"]["x-forwarded-user"][0], "alice");
    let token = seen["headers"]["x-portcullis-assertion"][0].as_str().unwrap();
    let claims = crate::harness::verify_with_jwks(token, &jwks(&proxy, &base).await, &base).unwrap();
    assert_eq!(claims["amr"], json!(["pwd", "hwk"]), "{claims}");
    assert_eq!(claims["acr"], "aal2");
}

/// `webauthn.passwordless`: a passkey kept on the authenticator (a resident credential) signs in
/// from the login page with no name and no password, and lands where the visitor was going.
pub async fn a_passkey_signs_in_without_a_password(viewport: Viewport, test: &str) {
    let Some((browser, _permit)) = super::open(viewport, test).await else { return };
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).public_host("localhost").toml("[webauthn]\npasswordless = true\n").start();
    let base = format!("http://localhost:{}", proxy.addr.port());
    let authenticator = plug_in_a_key(&browser).await;

    browser.goto(&format!("{base}/.portcullis/security-keys/new")).await;
    sign_in(&browser, "alice", ALICE.password).await;
    browser.fill("#name", "Laptop passkey").await;
    browser.submit(SUBMIT).await;
    browser.find("input[name=saved]").await.click(&browser).await;
    browser.submit(SUBMIT).await;
    let kept = browser.cdp("WebAuthn.getCredentials", json!({"authenticatorId": authenticator})).await;
    let credentials = kept["credentials"].as_array().unwrap();
    assert_eq!(credentials.len(), 1, "{kept}");
    assert_eq!(credentials[0]["isResidentCredential"], true, "registered as a discoverable passkey: {kept}");
    browser.goto(&format!("{base}/.portcullis/account")).await;
    sign_out(&browser).await;

    browser.goto(&format!("{base}/notes?from=passkey")).await;
    assert!(browser.url().await.contains("/.portcullis/login"), "{}", browser.url().await);
    browser.wait_until("!document.querySelector('#use-passkey').hidden").await;
    let autocomplete = browser.attribute("#username", "autocomplete").await;
    assert_eq!(autocomplete.as_deref(), Some("username webauthn"), "autofill may offer the passkey");
    checks::page(&browser, "login-with-passkey").await;
    browser.submit("#use-passkey").await;
    assert_eq!(browser.url().await, format!("{base}/notes?from=passkey"), "{}", browser.text().await);
    let seen = upstream_saw(&browser).await;
    assert_eq!(seen["headers"]["x-forwarded-user"][0], "alice");
    let token = seen["headers"]["x-portcullis-assertion"][0].as_str().unwrap();
    let claims = crate::harness::verify_with_jwks(token, &jwks(&proxy, &base).await, &base).unwrap();
    assert_eq!(claims["amr"], json!(["hwk", "user"]), "no password: {claims}");
}
