//! Security keys and passkeys through the real binary: a software authenticator answers the
//! options our pages carry (as `static/webauthn.js` would hand them to the browser), and the
//! answer is posted in the form as the script posts it. Every security rule is tried as an
//! attack: another origin, a captured answer replayed in another session, a key whose counter
//! went backwards (a clone).

use std::sync::Arc;

use reqwest::cookie::Jar;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};

use crate::harness::{ALICE, Browser, PATIENCE, Proxy, form_field, proxy};
use crate::upstream::Upstream;

/// WebAuthn needs a domain name as the relying party ID (an IP address is refused) and a secure
/// context (https, or http on `localhost`), so these proxies are `http://localhost:<port>`.
pub(crate) const HOST: &str = "localhost";

pub(crate) fn keyed_proxy(upstream: &Upstream, extra: &str) -> (Proxy, String) {
    let proxy = proxy(&upstream.url()).public_host(HOST).toml(extra).start();
    let base = format!("http://{HOST}:{}", proxy.addr.port());
    (proxy, base)
}

pub(crate) fn browser(proxy: &Proxy) -> Browser {
    let jar = Arc::new(Jar::default());
    let http = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(PATIENCE)
        .resolve(HOST, proxy.addr)
        .build()
        .unwrap();
    Browser { http, jar }
}

/// The page's `data-options`, as the browser hands the attribute to the script.
pub(crate) fn options(html: &str) -> String {
    let marker = "data-options=\"";
    let start = html.find(marker).expect("the page carries WebAuthn options") + marker.len();
    let raw = &html[start..start + html[start..].find('"').unwrap()];
    raw.replace("&#34;", "\"").replace("&quot;", "\"").replace("&#39;", "'").replace("&#38;", "&").replace("&amp;", "&")
}

pub(crate) fn key() -> SoftPasskey {
    // `true`: the soft key says it verified the user, which our ceremonies require.
    SoftPasskey::new(true)
}

pub(crate) async fn page(browser: &Browser, url: &str) -> (reqwest::StatusCode, reqwest::header::HeaderMap, String) {
    let response = browser.navigate(url).await;
    let (status, headers) = (response.status(), response.headers().clone());
    (status, headers, response.text().await.unwrap())
}

pub(crate) async fn post(browser: &Browser, base: &str, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
    browser.http.post(format!("{base}{path}")).header("origin", base).form(form).send().await.unwrap()
}

/// Registers `key` from the account page's link; returns the response to the form.
async fn register(browser: &Browser, base: &str, key: &mut SoftPasskey, name: &str) -> reqwest::Response {
    let url = format!("{base}/.portcullis/security-keys/new?rd=%2F.portcullis%2Faccount%3Fdone%3Dkey-on");
    let (status, headers, html) = page(browser, &url).await;
    assert_eq!(status, 200, "{html}");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    assert!(html.contains("<script src=\"/.portcullis/static/webauthn.js\"></script>"));
    let creation: CreationChallengeResponse = serde_json::from_str(&options(&html)).unwrap();
    let credential = key.do_registration(Url::parse(base).unwrap(), creation).unwrap();
    let credential = serde_json::to_string(&credential).unwrap();
    let (csrf, rd) = (form_field(&html, "csrf").unwrap(), form_field(&html, "rd").unwrap());
    let form = [("csrf", csrf.as_str()), ("rd", rd.as_str()), ("name", name), ("credential", credential.as_str())];
    post(browser, base, "/.portcullis/security-keys/new", &form).await
}

/// Signs in with the password; returns the challenge page (which must offer the key first).
pub(crate) async fn password(browser: &Browser, base: &str) -> String {
    let response = browser.submit_login_at(base, ALICE.name, ALICE.password, "/").await;
    assert_eq!(response.status(), 303);
    let next = response.headers()["location"].to_str().unwrap().to_string();
    assert!(next.contains("/.portcullis/challenge"), "{next}");
    let (status, headers, html) = page(browser, &next).await;
    assert_eq!(status, 200);
    assert!(html.contains("Use your security key") && html.contains("data-webauthn=\"get\""), "key first: {html}");
    assert!(html.contains("Use a recovery code"), "the other ways stay offered");
    assert!(headers["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
    html
}

/// The key's answer to the challenge page's options, as the form field the script fills.
pub(crate) fn answer(key: &mut impl WebauthnAuthenticator, origin: &str, html: &str) -> String {
    let request: RequestChallengeResponse = serde_json::from_str(&options(html)).unwrap();
    serde_json::to_string(&key.do_authentication(Url::parse(origin).unwrap(), request).unwrap()).unwrap()
}

pub(crate) async fn submit(
    browser: &Browser,
    base: &str,
    html: &str,
    credential: &str,
    remember: bool,
) -> reqwest::Response {
    let csrf = form_field(html, "csrf").unwrap();
    let mut form = vec![("csrf", csrf.as_str()), ("rd", "/"), ("use", "key"), ("credential", credential)];
    if remember {
        form.push(("remember", "yes"));
    }
    post(browser, base, "/.portcullis/challenge", &form).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_registered_on_the_account_page_signs_in_and_refuses_clones_replays_and_other_sites() {
    let upstream = Upstream::start().await;
    let (proxy, base) = keyed_proxy(&upstream, "");
    let mut key = key();

    let owner = browser(&proxy);
    assert_eq!(owner.submit_login_at(&base, ALICE.name, ALICE.password, "/").await.status(), 303);
    let (_, _, account) = page(&owner, &format!("{base}/.portcullis/account")).await;
    assert!(account.contains("Add a security key or passkey"), "offered on the account page");
    let added = register(&owner, &base, &mut key, "Blue key").await;
    assert_eq!(added.status(), 303);
    let next = added.headers()["location"].to_str().unwrap();
    assert!(next.contains("/.portcullis/recovery-codes"), "a first factor comes with recovery codes: {next}");
    proxy.wait_for_mail("The security key or passkey \"Blue key\" was added");
    let (_, _, account) = page(&owner, &format!("{base}/.portcullis/account")).await;
    assert!(account.contains("Blue key") && account.contains("/.portcullis/security-keys/remove?key="));

    // Sign in elsewhere: password, then the key.
    let laptop = browser(&proxy);
    let challenge = password(&laptop, &base).await;
    // Without JavaScript the key's button stays hidden and the page says why; a form that still
    // arrives without an answer costs no attempt.
    assert!(challenge.contains("data-webauthn-start hidden") && challenge.contains("<noscript>"));
    let csrf = form_field(&challenge, "csrf").unwrap();
    for _ in 0..4 {
        let form = [("csrf", csrf.as_str()), ("rd", "/"), ("use", "key"), ("credential", "")];
        let empty = post(&laptop, &base, "/.portcullis/challenge", &form).await;
        assert_eq!(empty.status(), 400);
        assert!(empty.text().await.unwrap().contains("No answer came from a key"));
    }
    let (_, _, challenge) = page(&laptop, &format!("{base}/.portcullis/challenge?use=key")).await;
    let credential = answer(&mut key, &base, &challenge);
    let signed_in = submit(&laptop, &base, &challenge, &credential, false).await;
    assert_eq!(signed_in.status(), 303);
    assert_eq!(laptop.navigate(&format!("{base}/")).await.status(), 200);
    let seen = upstream.seen().into_iter().last().unwrap();
    let jwks: jsonwebtoken::jwk::JwkSet =
        laptop.http.get(format!("{base}/.portcullis/jwks.json")).send().await.unwrap().json().await.unwrap();
    let token = seen.header("x-portcullis-assertion").unwrap();
    let claims = crate::harness::verify_with_jwks(token, &jwks, &base).unwrap();
    let amr: Vec<&str> = claims["amr"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(amr, ["pwd", "hwk"], "{claims}");
    assert_eq!(claims["acr"], "aal2");

    // The captured answer, replayed by someone who also has the password: its challenge was for
    // another session's ceremony, and that one is used up.
    let before = upstream.count();
    let thief = browser(&proxy);
    let thiefs_challenge = password(&thief, &base).await;
    let replayed = submit(&thief, &base, &thiefs_challenge, &credential, false).await;
    assert_eq!(replayed.status(), 401);
    assert!(replayed.text().await.unwrap().contains("key's answer was not accepted"));
    // The refused answer used up that ceremony too: the same page's options are no good again.
    let fresh = answer(&mut key, &base, &thiefs_challenge);
    assert_eq!(submit(&thief, &base, &thiefs_challenge, &fresh, false).await.status(), 401, "used once");

    // Another site under the same name relays our options to the key: the key signs for the
    // origin it is on, which is not ours (WebAuthn L3 §7.2 step 13).
    let phished = browser(&proxy);
    let challenge = password(&phished, &base).await;
    let evil = format!("http://{HOST}:{}", proxy.addr.port() ^ 1);
    let relayed = answer(&mut key, &evil, &challenge);
    assert_eq!(submit(&phished, &base, &challenge, &relayed, false).await.status(), 401, "another origin");

    // A cloned key: two answers signed in one order and presented in the other. The second one
    // presented has a counter the account has already seen.
    let (first, second) = (browser(&proxy), browser(&proxy));
    let (first_page, second_page) = (password(&first, &base).await, password(&second, &base).await);
    let early = answer(&mut key, &base, &first_page);
    let late = answer(&mut key, &base, &second_page);
    assert_eq!(submit(&second, &base, &second_page, &late, false).await.status(), 303);
    let cloned = submit(&first, &base, &first_page, &early, false).await;
    assert_eq!(cloned.status(), 401);
    proxy.wait_for_mail("signature counter went backwards");
    assert_eq!(first.navigate(&format!("{base}/")).await.status(), 303, "still half signed in");
    assert_eq!(upstream.count(), before, "nothing refused reached the application");
    assert!(!proxy.stderr.all().iter().any(|l| l.contains(&credential[..40])), "answers are never logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_a_key_needs_a_fresh_second_step_and_keys_survive_a_restart() {
    let upstream = Upstream::start().await;
    let (proxy, base) = keyed_proxy(&upstream, "[mfa]\nremember_device = \"30d\"");
    let mut key = key();
    let owner = browser(&proxy);
    assert_eq!(owner.submit_login_at(&base, ALICE.name, ALICE.password, "/").await.status(), 303);
    assert_eq!(register(&owner, &base, &mut key, "Phone").await.status(), 303);

    let mut proxy = proxy;
    proxy.stop();
    let proxy = crate::harness::proxy(&upstream.url())
        .public_host(HOST)
        .toml("[mfa]\nremember_device = \"30d\"")
        .restart_of(&proxy)
        .start();

    // Signed in with the key, and this browser remembered.
    let laptop = browser(&proxy);
    let challenge = password(&laptop, &base).await;
    let credential = answer(&mut key, &base, &challenge);
    assert_eq!(submit(&laptop, &base, &challenge, &credential, true).await.status(), 303, "the key outlived a restart");

    // Next time the remembered browser skips the key, so it has proven no second step now.
    let (_, _, signing_out) = page(&laptop, &format!("{base}/.portcullis/logout")).await;
    let csrf = form_field(&signing_out, "csrf").unwrap();
    assert_eq!(post(&laptop, &base, "/.portcullis/logout", &[("csrf", csrf.as_str())]).await.status(), 200);
    assert_eq!(laptop.submit_login_at(&base, ALICE.name, ALICE.password, "/").await.status(), 303);
    let (_, _, account) = page(&laptop, &format!("{base}/.portcullis/account")).await;
    let marker = "/.portcullis/security-keys/remove?key=";
    let start = account.find(marker).unwrap();
    let remove = account[start..start + account[start..].find('"').unwrap()].to_string();
    let asked = laptop.navigate(&format!("{base}{remove}")).await;
    assert_eq!(asked.status(), 303);
    let step_up = asked.headers()["location"].to_str().unwrap().to_string();
    assert!(step_up.contains("/.portcullis/challenge"), "step-up first: {step_up}");
    let before = proxy.mail_files();
    let refused = post(&laptop, &base, &remove, &[("csrf", form_field(&account, "csrf").unwrap().as_str())]).await;
    assert_eq!(refused.status(), 303, "a POST without a fresh second step is sent to prove one");
    assert!(refused.headers()["location"].to_str().unwrap().contains("/.portcullis/challenge"));

    // Prove the key again, and come back to the confirmation.
    let (_, _, challenge) = page(&laptop, &step_up).await;
    assert!(challenge.contains("Confirm it"), "a step-up page");
    let credential = answer(&mut key, &base, &challenge);
    let csrf = form_field(&challenge, "csrf").unwrap();
    let rd = form_field(&challenge, "rd").unwrap();
    let form = [("csrf", csrf.as_str()), ("rd", rd.as_str()), ("use", "key"), ("credential", credential.as_str())];
    let proven = post(&laptop, &base, "/.portcullis/challenge", &form).await;
    assert_eq!(proven.status(), 303);
    let back = proven.headers()["location"].to_str().unwrap().to_string();
    assert!(back.contains(&remove), "{back}");
    let (status, _, confirm) = page(&laptop, &back).await;
    assert_eq!(status, 200);
    assert!(confirm.contains("Remove the key"), "{confirm}");
    let removed = post(&laptop, &base, &remove, &[("csrf", form_field(&confirm, "csrf").unwrap().as_str())]).await;
    assert_eq!(removed.status(), 303);
    assert!(removed.headers()["location"].to_str().unwrap().contains("done=removed"), "the only factor: 2FA is off");
    proxy.wait_for_new_mail(&before, "Two-step verification was turned off");
    let (_, _, account) = page(&laptop, &format!("{base}/.portcullis/account")).await;
    assert!(!account.contains("Phone"), "gone");
}

#[tokio::test(flavor = "multi_thread")]
async fn where_a_second_step_is_required_a_key_can_be_set_up_inline_and_javascript_off_is_told() {
    let upstream = Upstream::start().await;
    let (proxy, base) = keyed_proxy(&upstream, "[mfa]\npolicy = \"required\"");
    let newcomer = browser(&proxy);
    let response = newcomer.submit_login_at(&base, ALICE.name, ALICE.password, "/notes").await;
    let enroll = response.headers()["location"].to_str().unwrap().to_string();
    assert!(enroll.contains("/.portcullis/enroll"), "{enroll}");
    let (_, _, html) = page(&newcomer, &enroll).await;
    let marker = "id=\"use-security-key\" href=\"";
    let start = html.find(marker).expect("the inline setup offers a key") + marker.len();
    let link = html[start..start + html[start..].find('"').unwrap()].replace("&amp;", "&").replace("&#38;", "&");
    assert!(link.starts_with("/.portcullis/security-keys/new?rd="), "{link}");

    // JavaScript off: the form posts no answer, and the page says why instead of failing.
    let (_, _, setup) = page(&newcomer, &format!("{base}{link}")).await;
    assert!(setup.contains("<noscript>"));
    let csrf = form_field(&setup, "csrf").unwrap();
    let rd = form_field(&setup, "rd").unwrap();
    let form = [("csrf", csrf.as_str()), ("rd", rd.as_str()), ("name", "Key"), ("credential", "")];
    let no_js = post(&newcomer, &base, "/.portcullis/security-keys/new", &form).await;
    assert_eq!(no_js.status(), 401);
    assert!(no_js.text().await.unwrap().contains("needs JavaScript"));

    let mut key = key();
    let url = format!("{base}{link}");
    let (_, _, setup) = page(&newcomer, &url).await;
    let creation: CreationChallengeResponse = serde_json::from_str(&options(&setup)).unwrap();
    let credential =
        serde_json::to_string(&key.do_registration(Url::parse(&base).unwrap(), creation).unwrap()).unwrap();
    let form = [
        ("csrf", form_field(&setup, "csrf").unwrap()),
        ("rd", form_field(&setup, "rd").unwrap()),
        ("name", "Blue key".to_string()),
        ("credential", credential),
    ];
    let done = newcomer
        .http
        .post(format!("{base}/.portcullis/security-keys/new"))
        .header("origin", &base)
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 303);
    assert!(done.headers()["location"].to_str().unwrap().contains("/.portcullis/recovery-codes"));
    assert_eq!(upstream.count(), 0, "not before the recovery codes are confirmed");
}

#[tokio::test(flavor = "multi_thread")]
async fn challenges_and_answers_stay_out_of_the_log_even_at_trace_level() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).public_host(HOST).env("RUST_LOG", "trace").start();
    let base = format!("http://{HOST}:{}", proxy.addr.port());
    let owner = browser(&proxy);
    assert_eq!(owner.submit_login_at(&base, ALICE.name, ALICE.password, "/").await.status(), 303);
    let url = format!("{base}/.portcullis/security-keys/new?rd=%2F");
    let (_, _, html) = page(&owner, &url).await;
    let creation: CreationChallengeResponse = serde_json::from_str(&options(&html)).unwrap();
    let challenge = serde_json::to_value(&creation).unwrap()["publicKey"]["challenge"].as_str().unwrap().to_string();
    let mut key = key();
    let credential = key.do_registration(Url::parse(&base).unwrap(), creation).unwrap();
    let raw_id = serde_json::to_value(&credential).unwrap()["rawId"].as_str().unwrap().to_string();
    let credential = serde_json::to_string(&credential).unwrap();
    let (csrf, rd) = (form_field(&html, "csrf").unwrap(), form_field(&html, "rd").unwrap());
    let form = [("csrf", csrf.as_str()), ("rd", rd.as_str()), ("name", "Key"), ("credential", credential.as_str())];
    assert_eq!(post(&owner, &base, "/.portcullis/security-keys/new", &form).await.status(), 303);
    let mark = proxy.stderr.wait_for(0, |l| l.contains("security key added"));
    assert!(mark.is_some(), "the event is logged");
    let lines = proxy.stderr.all();
    assert!(lines.iter().any(|l| l.contains("TRACE")), "the log really is at trace level");
    for secret in [&challenge, &raw_id] {
        assert!(!lines.iter().any(|l| l.contains(secret.as_str())), "{secret} was logged");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retiring_key_provider_keeps_keys_working_and_a_disabled_one_makes_them_count_no_more() {
    let upstream = Upstream::start().await;
    let provider = |id: &str, kind: &str, status: &str| {
        format!("[[mfa.provider]]\nid = \"{id}\"\nkind = \"{kind}\"\nstatus = \"{status}\"\n")
    };
    let app = provider("totp", "totp", "active");
    let (proxy, base) = keyed_proxy(&upstream, &format!("{app}{}", provider("keys", "webauthn", "active")));
    let config = std::fs::read_to_string(proxy.config_path()).unwrap();
    let plain = config.split("[[mfa.provider]]").next().unwrap().to_string();
    let mut key = key();
    let owner = browser(&proxy);
    assert_eq!(owner.submit_login_at(&base, ALICE.name, ALICE.password, "/").await.status(), 303);
    assert_eq!(register(&owner, &base, &mut key, "Blue key").await.status(), 303);

    // Retiring: the key still signs in, and no new one can be added.
    crate::providers::reload_with(&proxy, &plain, &format!("{app}{}", provider("keys", "webauthn", "deprecated")));
    let laptop = browser(&proxy);
    let challenge = password(&laptop, &base).await;
    let signed_in = submit(&laptop, &base, &challenge, &answer(&mut key, &base, &challenge), false).await;
    assert_eq!(signed_in.status(), 303);
    assert_eq!(laptop.navigate(&format!("{base}/wiki")).await.status(), 200);
    let (_, _, account) = page(&laptop, &format!("{base}/.portcullis/account")).await;
    assert!(!account.contains("Add a security key or passkey"), "no new keys: {account}");
    let new_key = laptop.navigate(&format!("{base}/.portcullis/security-keys/new")).await;
    assert_eq!(new_key.status(), 303, "the setup page sends the browser back to the account");

    // Switched off: the key proves nothing, so the account (optional 2FA) has no second step left.
    crate::providers::reload_with(&proxy, &plain, &format!("{app}{}", provider("keys", "webauthn", "disabled")));
    let phone = browser(&proxy);
    let response = phone.submit_login_at(&base, ALICE.name, ALICE.password, "/").await;
    assert_eq!(response.status(), 303);
    let next = response.headers()["location"].to_str().unwrap().to_string();
    assert!(!next.contains("/.portcullis/challenge"), "no key is asked for: {next}");
}

/// Two key providers, one switched off: the sessions its keys made lose their second step (they
/// are sent to prove one again), while those made with the other provider's keys go on. The
/// session remembers which provider's factor it proved, not only that it was "a key".
#[tokio::test(flavor = "multi_thread")]
async fn disabling_one_of_two_key_providers_downgrades_only_the_sessions_its_keys_made() {
    let upstream = Upstream::start().await;
    let provider = |id: &str, status: &str| {
        format!("[[mfa.provider]]\nid = \"{id}\"\nkind = \"webauthn\"\nstatus = \"{status}\"\n")
    };
    let app = "[[mfa.provider]]\nid = \"totp\"\nkind = \"totp\"\nstatus = \"active\"\n";
    let (proxy, base) = keyed_proxy(&upstream, &format!("{app}{}", provider("old-keys", "active")));
    let config = std::fs::read_to_string(proxy.config_path()).unwrap();
    let plain = config.split("[[mfa.provider]]").next().unwrap().to_string();
    let (mut old_key, mut new_key) = (key(), key());
    let owner = browser(&proxy);
    assert_eq!(owner.submit_login_at(&base, ALICE.name, ALICE.password, "/").await.status(), 303);
    assert_eq!(register(&owner, &base, &mut old_key, "Old key").await.status(), 303);
    let moving = format!("{app}{}{}", provider("old-keys", "deprecated"), provider("new-keys", "active"));
    crate::providers::reload_with(&proxy, &plain, &moving);
    assert_eq!(register(&owner, &base, &mut new_key, "New key").await.status(), 303);

    let laptop = browser(&proxy);
    let challenge = password(&laptop, &base).await;
    let response = submit(&laptop, &base, &challenge, &answer(&mut old_key, &base, &challenge), false).await;
    assert_eq!(response.status(), 303);
    let phone = browser(&proxy);
    let challenge = password(&phone, &base).await;
    let response = submit(&phone, &base, &challenge, &answer(&mut new_key, &base, &challenge), false).await;
    assert_eq!(response.status(), 303);
    for browser in [&laptop, &phone] {
        assert_eq!(browser.navigate(&format!("{base}/wiki")).await.status(), 200);
    }

    let switched_off = format!("{app}{}{}", provider("old-keys", "disabled"), provider("new-keys", "active"));
    crate::providers::reload_with(&proxy, &plain, &switched_off);
    let refused = laptop.navigate(&format!("{base}/wiki")).await;
    assert_eq!(refused.status(), 303, "the old key's session must prove a second step again");
    let next = refused.headers()["location"].to_str().unwrap();
    assert!(next.contains("/.portcullis/challenge"), "{next}");
    assert_eq!(phone.navigate(&format!("{base}/wiki")).await.status(), 200, "the new key's session goes on");
    let requests = upstream.count();
    assert_eq!(laptop.navigate(&format!("{base}/wiki")).await.status(), 303);
    assert_eq!(upstream.count(), requests, "nothing of the downgraded session reached the app");
}
