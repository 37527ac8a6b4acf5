//! Signing in through an OpenID Connect provider in a real Chromium. The proxy is at
//! `localhost` and the provider at `127.0.0.1`: two sites, as in any real install, so the way
//! back from the provider is a cross-site navigation, and the browser decides which of the
//! proxy's cookies come along (the sign-in's nonce cookie must, the session cookie must work
//! on the page it lands on). A cookie-jar client sends every cookie it has and cannot tell.

use super::checks;
use super::flows::upstream_saw;
use super::webdriver::Viewport;
use crate::harness::{ALICE, proxy};
use crate::oidc::{on_a_chosen_port, provider_toml};
use crate::upstream::Upstream;

pub async fn an_openid_provider_on_another_site_signs_in_and_lands_on_the_deep_link(viewport: Viewport, test: &str) {
    let Some((browser, _permit)) = super::open(viewport, test).await else { return };
    let upstream = Upstream::start().await;
    let chosen = on_a_chosen_port(test, "localhost", |port, provider| {
        proxy(&upstream.url()).port(port).public_host("localhost").toml(&provider_toml(provider, ""))
    });
    let Some((proxy, provider, port)) = chosen else { return };
    let base = format!("http://localhost:{port}");
    let linked = proxy.cli(&["user", "link", "alice", "--oidc", "test", "--subject", "carol"], "");
    assert!(linked.status.success(), "{}", String::from_utf8_lossy(&linked.stderr));

    browser.goto(&format!("{base}/wiki/Deep?x=1")).await;
    assert!(browser.url().await.starts_with(&format!("{base}/.portcullis/login")), "{}", browser.url().await);
    checks::page(&browser, "login-with-provider").await;
    browser.click_and_wait(&browser.find("a[href*='/.portcullis/login/oidc/test']").await).await;
    let at_provider = browser.url().await;
    assert!(at_provider.starts_with(&format!("http://127.0.0.1:{}/", provider.addr().port())), "{at_provider}");
    browser.fill("input[name=login]", "carol").await;
    browser.fill("input[name=password]", "anything").await;
    browser.submit("form[action$='/login'] button[type=submit]").await;

    assert_eq!(browser.url().await, format!("{base}/wiki/Deep?x=1"), "{}", browser.text().await);
    let seen = upstream_saw(&browser).await;
    assert_eq!(seen["headers"]["x-forwarded-user"][0], ALICE.name, "{seen}");
    // And the session holds on the next page, opened from the proxy's own site.
    browser.goto(&format!("{base}/wiki/Next")).await;
    assert_eq!(browser.url().await, format!("{base}/wiki/Next"));
    assert_eq!(upstream_saw(&browser).await["headers"]["x-forwarded-user"][0], ALICE.name);
}
