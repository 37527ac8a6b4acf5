//! A sign-in link in a real Chromium: the browser decides what it sends (its `Origin` on the
//! form, the `SameSite=Lax` nonce cookie on the link's navigation), so the binding of a link to
//! the browser that asked is walked here, not only with a cookie-jar client.

use super::checks;
use super::flows::{SUBMIT, upstream_saw};
use super::webdriver::Viewport;
use crate::harness::{ALICE, proxy};
use crate::upstream::Upstream;

pub async fn a_sign_in_link_signs_in_the_browser_that_asked(viewport: Viewport, test: &str) {
    let Some((browser, _permit)) = super::open(viewport, test).await else { return };
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml(crate::email_links::LINKS).start();

    browser.goto(&proxy.url("/notes?from=link")).await;
    assert!(browser.url().await.contains("/.portcullis/login"), "{}", browser.url().await);
    browser.click_and_wait(&browser.find("a[href*='/.portcullis/login/email']").await).await;
    checks::page(&browser, "sign-in-link-request").await;
    browser.fill("#email", ALICE.email).await;
    let before = proxy.mail_files();
    browser.submit(SUBMIT).await;
    assert!(browser.text().await.contains("Check your email"), "{}", browser.text().await);
    checks::page(&browser, "sign-in-link-sent").await;
    let link = crate::email_links::link_in(&proxy, &proxy.wait_for_new_mail(&before, "Your sign-in link"));

    // Opened in the same browser: its nonce cookie comes along, and it lands where it was going.
    browser.goto(&link).await;
    assert_eq!(browser.url().await, proxy.url("/notes?from=link"), "{}", browser.text().await);
    let seen = upstream_saw(&browser).await;
    assert_eq!(seen["headers"]["x-forwarded-user"][0], ALICE.name);
    assert!(seen["headers"].get("referer").is_none_or(|r| !r.to_string().contains("token=")), "{seen}");
}
