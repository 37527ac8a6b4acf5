//! Cross-site request forgery is refused by a strict check of `Origin` on every POST; that only
//! works if our own pages let browsers send their real origin.

use crate::harness::{ALICE, Browser, ORIGIN_SENDING_POLICIES, proxy};
use crate::upstream::Upstream;

/// Under `Referrer-Policy: no-referrer` a browser sends `Origin: null` on a form POST, and the
/// same-origin check then refuses the proxy's own forms: nobody could sign in. Every page the
/// proxy renders (error pages included) must carry a policy, in the header and in the page, under
/// which browsers send their real origin on same-origin posts.
#[tokio::test(flavor = "multi_thread")]
async fn every_own_page_lets_browsers_send_their_origin_on_posts() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[mfa]\nemail_otp = true").start();
    let browser = Browser::new();
    let mut pages = Vec::new();
    for path in ["/.portcullis/login", "/.portcullis/logout", "/.portcullis/nope", "/.portcullis/recover?token=x"] {
        pages.push((path.to_string(), browser.navigate(&proxy.url(path)).await));
    }
    let refused = browser.http.post(proxy.url("/.portcullis/login")).header("origin", "null").form(&[("a", "b")]);
    pages.push(("a post with Origin: null".into(), refused.send().await.unwrap()));
    let put = browser.http.put(proxy.url("/.portcullis/login")).send().await.unwrap();
    pages.push(("PUT on the login page".into(), put));
    let wrong = browser.submit_login(&proxy, "alice", "wrong", "/").await;
    pages.push(("a wrong password".into(), wrong));
    browser.login(&proxy, &ALICE).await;
    for path in [
        "/.portcullis/account",
        "/.portcullis/enroll",
        "/.portcullis/enroll/email",
        "/.portcullis/account/password",
        "/.portcullis/admin",
        "/.portcullis/logout",
    ] {
        pages.push((path.to_string(), browser.navigate(&proxy.url(path)).await));
    }
    assert!(pages.len() >= 13);
    for (what, page) in pages {
        let header = page.headers()["referrer-policy"].to_str().unwrap().to_string();
        assert!(ORIGIN_SENDING_POLICIES.contains(&header.as_str()), "{what}: header {header}");
        let html = page.text().await.unwrap();
        let marker = "<meta name=\"referrer\" content=\"";
        if let Some(start) = html.find(marker) {
            let meta = &html[start + marker.len()..];
            let meta = &meta[..meta.find('"').unwrap()];
            assert!(ORIGIN_SENDING_POLICIES.contains(&meta), "{what}: meta {meta}");
        } else {
            assert!(!html.contains("<html"), "{what}: an HTML page without its referrer meta tag");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_without_origin_is_refused_even_with_a_referer() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();
    let csrf = browser.login_form(&proxy, "").await;
    let fields = [("username", "alice"), ("password", ALICE.password), ("csrf", csrf.as_str()), ("rd", "/")];
    let referer_only = browser
        .http
        .post(proxy.url("/.portcullis/login"))
        .header("referer", proxy.url("/.portcullis/login"))
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(referer_only.status(), 403, "Referer is not a substitute for Origin");
    let twice = browser
        .http
        .post(proxy.url("/.portcullis/login"))
        .header("origin", proxy.origin())
        .header("origin", "https://evil.example")
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 403, "two Origin headers are one too many");
    assert!(browser.cookie_header(&proxy.url("/")).is_none_or(|c| !c.contains("portcullis=")), "no session");
}
