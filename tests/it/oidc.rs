//! OpenID Connect sign-in against a real provider: panva's `oidc-provider` (npm, OpenID
//! certified), started by the test on a loopback port (`tests/oidc/provider.mjs`), with a
//! confidential client for the proxy and a few accounts. The cookie-jar client walks what a
//! browser walks: the proxy sends it to the provider, it signs in there, and the provider sends
//! it back to the proxy's callback with a code.

use std::path::PathBuf;
use std::process::Command;

use crate::front_proxy::Front;
use crate::harness::{ALICE, Browser, PATIENCE, Proxy, free_port, proxy};
use crate::mfa::{code, enroll, submit_code};
use crate::upstream::Upstream;

const CLIENT_SECRET: &str = "portcullis-test-secret";

fn provider_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// The provider, for a proxy whose callback is `redirect_uri`.
pub(crate) fn start_provider(test: &str, redirect_uri: &str) -> Option<Front> {
    if !provider_dir().join("node_modules/oidc-provider").exists() {
        let install = "npm ci --prefix tests/oidc";
        crate::harness::skip(test, "oidc-provider", install);
        return None;
    }
    let port = free_port();
    let mut command = Command::new("node");
    command
        .arg(provider_dir().join("provider.mjs"))
        .arg(port.to_string())
        .env("OIDC_CLIENT_ID", "portcullis")
        .env("OIDC_CLIENT_SECRET", CLIENT_SECRET)
        .env("OIDC_REDIRECT_URIS", redirect_uri);
    Some(Front::run(command, "listening http://", port, tempfile::tempdir().unwrap()))
}

/// A proxy with the provider `test` (and `extra` lines for it), and the provider itself.
fn proxy_and_provider(test: &str, upstream: &Upstream, extra: &str) -> Option<(Proxy, Front)> {
    let (proxy, provider, _) = on_a_chosen_port(test, "127.0.0.1", |port, provider| {
        proxy(&upstream.url()).port(port).toml(&provider_toml(provider, extra))
    })?;
    Some((proxy, provider))
}

/// The provider `test` for a proxy at `host` on a port chosen first (the callback it knows names
/// the port, so it must know it before the proxy starts), then the proxy `build` makes for that
/// port. Another process may take the port while the provider starts: then both are started
/// again on another. `None` if there is no provider to start (said by `start_provider`).
pub(crate) fn on_a_chosen_port(
    test: &str,
    host: &str,
    build: impl Fn(u16, &Front) -> crate::harness::ProxyBuilder,
) -> Option<(Proxy, Front, u16)> {
    for _ in 0..5 {
        let port = free_port();
        let provider = start_provider(test, &format!("http://{host}:{port}/.portcullis/login/oidc/test/callback"))?;
        if let Some(proxy) = build(port, &provider).try_start() {
            return Some((proxy, provider, port));
        }
    }
    panic!("no port stayed free for the proxy in five tries");
}

/// The `[[login.oidc]]` table for `provider` as `test` (and `extra` lines for it), its client
/// secret in a private file.
pub(crate) fn provider_toml(provider: &Front, extra: &str) -> String {
    let secrets = tempfile::tempdir().unwrap().keep();
    let secret_file = secrets.join("oidc.secret");
    std::fs::write(&secret_file, CLIENT_SECRET).unwrap();
    std::fs::set_permissions(&secret_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    format!(
        "[[login.oidc]]\nid = \"test\"\nname = \"Test ID\"\nissuer = \"http://127.0.0.1:{}\"\nclient_id = \"portcullis\"\nclient_secret_file = \"{}\"\n{extra}",
        provider.addr().port(),
        secret_file.display()
    )
}

/// Follows the proxy's redirect to the provider, signs in there as `login`, and stops at the
/// redirect back to the proxy's callback; returns that callback URL.
pub(crate) async fn at_provider(browser: &Browser, proxy: &Proxy, login: &str, rd: &str) -> String {
    let start = proxy.url(&format!("/.portcullis/login/oidc/test?rd={}", rd.replace('/', "%2F")));
    through_provider(browser, proxy, &start, login).await
}

/// From `start` (a proxy URL that sends the browser to the provider) to the callback URL.
async fn through_provider(browser: &Browser, proxy: &Proxy, start: &str, login: &str) -> String {
    let start = browser.navigate(start).await;
    assert_eq!(start.status(), 303, "{}", start.text().await.unwrap());
    let mut next = start.headers()["location"].to_str().unwrap().to_string();
    assert!(
        next.contains("code_challenge_method=S256") && next.contains("nonce=") && next.contains("state="),
        "{next}"
    );
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        assert!(std::time::Instant::now() < deadline, "never sent back to the proxy");
        if next.starts_with(&proxy.url("/.portcullis/login/oidc/test/callback")) {
            return next;
        }
        let response = browser.navigate(&next).await;
        let base = reqwest::Url::parse(&next).unwrap();
        if response.status() == 200 {
            // The provider's sign-in page: its login form (its cancel form for an empty login).
            let page = response.text().await.unwrap();
            let form = if login.is_empty() {
                page.find("/abort\"").map(|i| page[..i].rfind("action=\"").unwrap()).unwrap()
            } else {
                page.find("action=\"").unwrap()
            };
            let start = form + "action=\"".len();
            let action = &page[start..start + page[start..].find('"').unwrap()];
            let url = base.join(action).unwrap();
            let origin = url.origin().ascii_serialization();
            let posted = browser
                .http
                .post(url)
                .header("origin", origin)
                .form(&[("login", login), ("password", "anything")])
                .send()
                .await
                .unwrap();
            assert!(posted.status().is_redirection(), "the provider took the sign-in: {}", posted.status());
            next = base.join(posted.headers()["location"].to_str().unwrap()).unwrap().to_string();
        } else {
            assert!(response.status().is_redirection(), "{next}: {}", response.status());
            next = base.join(response.headers()["location"].to_str().unwrap()).unwrap().to_string();
        }
    }
}

/// The claims upstream received in the identity assertion of its latest request.
async fn upstream_claims(upstream: &Upstream, browser: &Browser, proxy: &Proxy) -> serde_json::Value {
    let seen = upstream.seen().pop().unwrap();
    let jwks: jsonwebtoken::jwk::JwkSet =
        browser.http.get(proxy.url("/.portcullis/jwks.json")).send().await.unwrap().json().await.unwrap();
    crate::harness::verify_with_jwks(seen.header("x-portcullis-assertion").unwrap(), &jwks, &proxy.origin()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_linked_identity_signs_in_to_its_account_and_the_account_keeps_its_second_factor() {
    let upstream = Upstream::start().await;
    let Some((proxy, _provider)) = proxy_and_provider("oidc linked identity", &upstream, "") else { return };

    // The person cancels at the provider: it says access_denied, the page says so, in our words.
    let cancelled = Browser::new();
    let callback = at_provider(&cancelled, &proxy, "", "/wiki").await;
    let page = cancelled.navigate(&callback).await;
    assert_eq!(page.status(), 403);
    let text = page.text().await.unwrap();
    assert!(text.contains("Test ID did not sign you in") && text.contains("access_denied"), "{text}");

    // Not linked: refused with a clear page, nothing forwarded.
    let stranger = Browser::new();
    let callback = at_provider(&stranger, &proxy, "carol", "/wiki").await;
    let refused = stranger.navigate(&callback).await;
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("not linked to an account here"));
    assert_eq!(upstream.count(), 0);

    // The operator links carol's identity to Alice's account; Alice is mailed.
    let output = proxy.cli(&["user", "link", "alice", "--oidc", "test", "--subject", "carol"], "");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    proxy.wait_for_mail("A new way to sign in was added");
    let listed = String::from_utf8(proxy.cli(&["admin", "users"], "").stdout).unwrap();
    assert!(listed.lines().any(|l| l.starts_with("alice") && l.contains("test:carol")), "{listed}");
    let login = Browser::new().navigate(&proxy.url("/.portcullis/login")).await.text().await.unwrap();
    assert!(login.contains("Sign in with Test ID"), "the login page offers the provider");
    let laptop = Browser::new();
    let callback = at_provider(&laptop, &proxy, "carol", "/wiki/Deep").await;
    let back = laptop.navigate(&callback).await;
    assert_eq!(back.status(), 303);
    assert_eq!(back.headers()["location"], proxy.url("/wiki/Deep").as_str(), "lands where it was going");
    assert_eq!(laptop.navigate(&proxy.url("/wiki/Deep")).await.status(), 200);
    let claims = upstream_claims(&upstream, &laptop, &proxy).await;
    assert_eq!((claims["sub"].as_str(), claims["amr"].clone()), (Some("alice"), serde_json::json!(["fed"])));

    // The callback again (a replayed code and state): this browser's sign-in was used up.
    assert_eq!(laptop.navigate(&callback).await.status(), 400);
    // The same callback in another browser, and one with a changed state: refused.
    assert_eq!(Browser::new().navigate(&callback).await.status(), 400);
    let other = Browser::new();
    let callback = at_provider(&other, &proxy, "carol", "/").await;
    let tampered = callback.replace("state=", "state=x");
    assert_eq!(other.navigate(&tampered).await.status(), 400);

    // Alice turns on an authenticator app: the provider is her first factor, the app still asked.
    let (secret, _, _) = enroll(&laptop, &proxy, &proxy.url("/.portcullis/enroll?rd=%2F.portcullis%2Faccount")).await;
    let phone = Browser::new();
    let callback = at_provider(&phone, &proxy, "carol", "/wiki").await;
    let back = phone.navigate(&callback).await;
    let challenge = back.headers()["location"].to_str().unwrap().to_string();
    assert!(challenge.contains("/.portcullis/challenge"), "2FA belongs to the account: {challenge}");
    assert_eq!(phone.navigate(&proxy.url("/wiki")).await.status(), 303, "half signed in reaches nothing");
    // Even with the provider saying it did MFA: not trusted for it here.
    let trusting = Browser::new();
    let callback = at_provider(&trusting, &proxy, "carol+mfa", "/wiki").await;
    let back = trusting.navigate(&callback).await;
    assert!(
        back.headers()["location"].to_str().unwrap().contains("/.portcullis/challenge"),
        "trust_provider_mfa is off"
    );
    assert_eq!(submit_code(&phone, &proxy, &challenge, &code(&secret, 1)).await.status(), 303);
    assert_eq!(phone.navigate(&proxy.url("/wiki")).await.status(), 200);
    let claims = upstream_claims(&upstream, &phone, &proxy).await;
    assert_eq!(claims["amr"], serde_json::json!(["fed", "otp"]));

    // A link the proxy refuses fails for scripts too (an unknown provider).
    let refused = proxy.cli(&["user", "link", "alice", "--oidc", "nope", "--subject", "carol"], "");
    assert!(!refused.status.success(), "a refused link exits with an error");
    // Unlinked: the identity signs nobody in again.
    let output = proxy.cli(&["user", "unlink", "alice", "--oidc", "test", "--subject", "carol"], "");
    assert!(output.status.success());
    let after = Browser::new();
    let callback = at_provider(&after, &proxy, "carol", "/").await;
    assert_eq!(after.navigate(&callback).await.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn verified_addresses_link_where_allowed_and_trusted_provider_mfa_counts_where_configured() {
    let upstream = Upstream::start().await;
    let extra = "link_by_verified_email = true\ntrust_provider_mfa = true\n[mfa]\npolicy = \"required\"\n";
    let Some((proxy, _provider)) = proxy_and_provider("oidc verified email and mfa", &upstream, extra) else { return };

    // An unverified address links nothing.
    let erin = Browser::new();
    let callback = at_provider(&erin, &proxy, "erin", "/").await;
    assert_eq!(erin.navigate(&callback).await.status(), 403);

    // "mallory" at the provider has Alice's address, verified by the provider: linked to Alice
    // (the operator allowed exactly this), and Alice is told. Her policy requires a second step,
    // which the provider's MFA gives.
    let browser = Browser::new();
    let callback = at_provider(&browser, &proxy, "mallory+mfa", "/wiki").await;
    let back = browser.navigate(&callback).await;
    assert_eq!(back.status(), 303);
    assert_eq!(back.headers()["location"], proxy.url("/wiki").as_str(), "the provider's MFA is trusted here");
    proxy.wait_for_mail("A new way to sign in was added");
    assert_eq!(browser.navigate(&proxy.url("/wiki")).await.status(), 200);
    let claims = upstream_claims(&upstream, &browser, &proxy).await;
    assert_eq!((claims["sub"].as_str(), claims["amr"].clone()), (Some(ALICE.name), serde_json::json!(["fed", "mfa"])));

    // Without MFA at the provider, Alice (who has no factor of her own) must set one up here.
    let plain = Browser::new();
    let callback = at_provider(&plain, &proxy, "mallory", "/wiki").await;
    let back = plain.navigate(&callback).await;
    assert!(back.headers()["location"].to_str().unwrap().contains("/.portcullis/enroll"), "required: set one up");
    assert_eq!(plain.navigate(&proxy.url("/wiki")).await.status(), 303);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_in_user_links_and_unlinks_an_identity_from_the_account_page() {
    let upstream = Upstream::start().await;
    let Some((proxy, _provider)) = proxy_and_provider("oidc account page", &upstream, "") else { return };
    let alice = Browser::new();
    alice.login(&proxy, &ALICE).await;
    let account = alice.navigate(&proxy.url("/.portcullis/account")).await.text().await.unwrap();
    assert!(account.contains("Link your Test ID account"), "{account}");

    // Linked from the account page: the provider's sign-in, then back to the account page.
    let callback = through_provider(&alice, &proxy, &proxy.url("/.portcullis/login/oidc/test?link=1"), "carol").await;
    let back = alice.navigate(&callback).await;
    assert_eq!(back.status(), 303);
    assert!(back.headers()["location"].to_str().unwrap().contains("done=identity-linked"));
    proxy.wait_for_mail("A new way to sign in was added");
    let account = alice.navigate(&proxy.url("/.portcullis/account")).await.text().await.unwrap();
    assert!(account.contains("Other ways to sign in") && account.contains("identities/unlink"), "{account}");

    // It signs in to Alice's account now.
    let laptop = Browser::new();
    let callback = at_provider(&laptop, &proxy, "carol", "/wiki").await;
    assert_eq!(laptop.navigate(&callback).await.status(), 303);
    assert_eq!(laptop.navigate(&proxy.url("/wiki")).await.status(), 200);
    assert_eq!(upstream.seen().pop().unwrap().header("x-forwarded-user"), Some(ALICE.name));

    // A visitor who is not signed in cannot start a linking (sent to sign in first).
    let stranger = Browser::new();
    let refused = stranger.navigate(&proxy.url("/.portcullis/login/oidc/test?link=1")).await;
    assert_eq!(refused.status(), 303);
    assert!(refused.headers()["location"].to_str().unwrap().contains("/.portcullis/login"));

    // Unlinked from the account page: it signs nobody in any more.
    let csrf = crate::harness::form_field(&account, "csrf").unwrap();
    let unlink = alice
        .http
        .post(proxy.url("/.portcullis/account/identities/unlink"))
        .header("origin", proxy.origin())
        .form(&[("csrf", csrf.as_str()), ("provider", "test"), ("subject", "carol")])
        .send()
        .await
        .unwrap();
    assert_eq!(unlink.status(), 303);
    proxy.wait_for_mail("A way to sign in was removed");
    let after = Browser::new();
    let callback = at_provider(&after, &proxy, "carol", "/").await;
    assert_eq!(after.navigate(&callback).await.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn where_allowed_a_new_identity_gets_an_account_of_its_own_in_the_default_groups() {
    let upstream = Upstream::start().await;
    let extra = "create_accounts = true\ndefault_groups = [\"guests\"]\n";
    let Some((proxy, _provider)) = proxy_and_provider("oidc new accounts", &upstream, extra) else { return };
    // erin: named after her address, in the default groups; her address is unverified, so the
    // account has none.
    let erin = Browser::new();
    let callback = at_provider(&erin, &proxy, "erin", "/wiki").await;
    assert_eq!(erin.navigate(&callback).await.status(), 303);
    assert_eq!(erin.navigate(&proxy.url("/wiki")).await.status(), 200);
    let seen = upstream.seen().pop().unwrap();
    assert_eq!(seen.header("x-forwarded-user"), Some("erin"));
    assert_eq!(seen.header("x-forwarded-groups"), Some("guests"));
    assert_eq!(seen.header("x-forwarded-email"), Some(""));
    // mallory's address names "alice", who exists: a name of her own, never Alice's account.
    let mallory = Browser::new();
    let callback = at_provider(&mallory, &proxy, "mallory", "/wiki").await;
    assert_eq!(mallory.navigate(&callback).await.status(), 303);
    assert_eq!(mallory.navigate(&proxy.url("/wiki")).await.status(), 200);
    assert_eq!(upstream.seen().pop().unwrap().header("x-forwarded-user"), Some("alice-2"));
    // The same identity again: the same account.
    let again = Browser::new();
    let callback = at_provider(&again, &proxy, "erin", "/wiki").await;
    assert_eq!(again.navigate(&callback).await.status(), 303);
    assert_eq!(again.navigate(&proxy.url("/wiki")).await.status(), 200);
    assert_eq!(upstream.seen().pop().unwrap().header("x-forwarded-user"), Some("erin"));
    // And a password cannot sign in to a made account.
    let guess = Browser::new().submit_login(&proxy, "erin", "anything at all", "/").await;
    assert_eq!(guess.status(), 401);
}

/// Against a hostile provider (`tests/oidc/hostile_provider.py`): ID tokens that verify but name
/// another audience, another issuer, another nonce, or ran out, sign nobody in. The same provider
/// with an honest token signs in, so the refusals are the claims', not the harness's.
#[tokio::test(flavor = "multi_thread")]
async fn id_tokens_for_another_audience_issuer_or_nonce_or_out_of_time_are_refused() {
    let upstream = Upstream::start().await;
    let port = free_port();
    let mut command = Command::new("python3");
    command.arg(provider_dir().join("hostile_provider.py")).arg(port.to_string()).arg("portcullis").arg(CLIENT_SECRET);
    let _hostile = Front::run(command, "listening http://", port, tempfile::tempdir().unwrap());
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("oidc.secret");
    std::fs::write(&secret_file, CLIENT_SECRET).unwrap();
    std::fs::set_permissions(&secret_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let config = format!(
        "[[login.oidc]]\nid = \"test\"\nname = \"Test ID\"\nissuer = \"http://127.0.0.1:{port}\"\nclient_id = \"portcullis\"\nclient_secret_file = \"{}\"\n",
        secret_file.display()
    );
    let proxy = proxy(&upstream.url()).toml(&config).start();
    let output = proxy.cli(&["user", "link", "alice", "--oidc", "test", "--subject", "carol"], "");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let control = reqwest::Client::new();
    let attempt = |mode: &'static str| {
        let (proxy, control) = (&proxy, &control);
        async move {
            let set = control.post(format!("http://127.0.0.1:{port}/mode")).body(mode).send().await.unwrap();
            assert_eq!(set.status(), 204);
            let browser = Browser::new();
            let to_provider = browser.navigate(&proxy.url("/.portcullis/login/oidc/test?rd=%2Fwiki")).await;
            let authorize = to_provider.headers()["location"].to_str().unwrap().to_string();
            let back = browser.navigate(&authorize).await;
            let callback = back.headers()["location"].to_str().unwrap().to_string();
            let status = browser.navigate(&callback).await.status();
            (status, browser.navigate(&proxy.url("/wiki")).await.status())
        }
    };
    assert_eq!(attempt("good").await, (reqwest::StatusCode::SEE_OTHER, reqwest::StatusCode::OK), "an honest token");
    let before = upstream.count();
    for mode in ["aud", "iss", "nonce", "expired"] {
        let (callback, wiki) = attempt(mode).await;
        assert_eq!(callback, 403, "a token with the wrong {mode} is refused");
        assert_eq!(wiki, 303, "and signs nobody in ({mode})");
    }
    assert_eq!(upstream.count(), before, "nothing reached the application");
}
