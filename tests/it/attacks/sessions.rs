//! Who the upstream is told the user is, and whose session a request carries: spoofed identity
//! headers, forged and planted cookies, cross-site posts and forged form tokens, return URLs off
//! our origin, and passwords and cookies kept out of the logs. Each test asserts the refusal and
//! what the upstream (or the log) saw.

use crate::harness::{ALICE, Browser, form_field, proxy};
use crate::mfa::{code, password, read_enrollment_page};
use crate::upstream::Upstream;

const SPOOFS: [(&str, &str); 7] = [
    ("X-Forwarded-User", "admin"),
    ("x_forwarded_user", "admin"),
    ("X_FORWARDED_USER", "admin"),
    ("x-forwarded-email", "root@example.com"),
    ("X_Forwarded_Groups", "admins"),
    ("X-Portcullis-Assertion", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."),
    ("x-portcullis-anything", "reserved prefix"),
];

fn spoofed(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    SPOOFS.iter().fold(request, |r, (k, v)| r.header(*k, *v)).header("x-forwarded-user", "second copy")
}

#[tokio::test(flavor = "multi_thread")]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();

    let anonymous = spoofed(browser.http.get(proxy.url("/admin"))).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "identity headers from a client grant nothing");
    assert_eq!(upstream.count(), 0);

    browser.login(&proxy, &ALICE).await;
    let response = spoofed(browser.http.get(proxy.url("/admin"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.seen().pop().unwrap();
    assert_eq!(seen.headers["x-forwarded-user"], vec!["alice"], "exactly one, ours");
    assert_eq!(seen.headers["x-forwarded-email"], vec!["alice@example.com"]);
    assert_eq!(seen.headers["x-forwarded-groups"], vec!["staff,wiki-admins"]);
    assert_eq!(seen.headers["x-portcullis-assertion"].len(), 1);
    assert_ne!(seen.headers["x-portcullis-assertion"][0], SPOOFS[5].1);
    for name in seen.headers.keys() {
        assert!(!name.contains('_'), "underscore variant {name} reached the upstream");
        assert_ne!(name, "x-portcullis-anything");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_and_garbled_cookies_get_401_and_are_cleared() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let client = reqwest::Client::new();
    let forged = "A".repeat(43);
    for cookie in [
        "portcullis=garbage",
        "portcullis=",
        &format!("portcullis={forged}"),
        "portcullis=%00%ff",
        "portcullis=\"quoted\"",
    ] {
        let response = client.get(proxy.url("/private")).header("cookie", cookie).send().await.unwrap();
        assert_eq!(response.status(), 401, "{cookie}");
        let cleared =
            response.headers().get_all("set-cookie").iter().any(|c| c.to_str().unwrap().contains("Max-Age=0"));
        assert!(cleared || cookie == "portcullis=", "{cookie} should be cleared");
    }
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn login_refuses_cross_site_posts_and_bad_csrf_tokens() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();
    let csrf = browser.login_form(&proxy, "").await;
    let form = [("username", "alice"), ("password", ALICE.password), ("csrf", csrf.as_str())];

    let cross_site = browser
        .http
        .post(proxy.url("/.portcullis/login"))
        .header("origin", "https://evil.example")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);
    let no_origin = browser.http.post(proxy.url("/.portcullis/login")).form(&form).send().await.unwrap();
    assert_eq!(no_origin.status(), 403);
    let bad_token = [("username", "alice"), ("password", ALICE.password), ("csrf", "forged")];
    let forged = browser
        .http
        .post(proxy.url("/.portcullis/login"))
        .header("origin", proxy.origin())
        .form(&bad_token)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    // A token from another browser does not work with this browser's cookie either.
    let other = Browser::new().login_form(&proxy, "").await;
    let foreign = [("username", "alice"), ("password", ALICE.password), ("csrf", other.as_str())];
    let mixed = browser
        .http
        .post(proxy.url("/.portcullis/login"))
        .header("origin", proxy.origin())
        .form(&foreign)
        .send()
        .await
        .unwrap();
    assert_eq!(mixed.status(), 403);

    let api = browser.http.get(proxy.url("/")).send().await.unwrap();
    assert_eq!(api.status(), 401, "none of those attempts produced a session");
}

#[tokio::test(flavor = "multi_thread")]
async fn return_urls_off_our_origin_land_on_the_front_page() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    for rd in [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
        "javascript:alert(1)",
        "https://127.0.0.1.evil.example/",
    ] {
        let response = Browser::new().submit_login(&proxy, "alice", ALICE.password, rd).await;
        assert_eq!(response.status(), 303);
        assert_eq!(response.headers()["location"], proxy.url("/").as_str(), "rd={rd}");
    }
    let page =
        Browser::new().navigate(&proxy.url("/.portcullis/login?rd=%2F%2Fevil.example")).await.text().await.unwrap();
    assert_eq!(form_field(&page, "rd").unwrap(), "/");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_session_id_changes_at_login_and_a_planted_one_is_discarded() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    // The attacker signs in and plants their own valid session cookie in the victim's browser.
    let attacker = Browser::new();
    attacker.login(&proxy, &ALICE).await;
    let planted = attacker.cookie_header(&proxy.url("/")).unwrap();

    let planted_session = planted.split("; ").find(|c| c.starts_with("portcullis=")).unwrap().to_string();

    // The victim's browser carries the planted cookie when it signs in.
    let victim = Browser::new();
    let csrf = victim.login_form(&proxy, "").await;
    let csrf_cookie = victim.cookie_header(&proxy.url("/")).unwrap();
    let login = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(proxy.url("/.portcullis/login"))
        .header("origin", proxy.origin())
        .header("cookie", format!("{csrf_cookie}; {planted_session}"))
        .form(&[("username", "alice"), ("password", ALICE.password), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let issued = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    assert!(issued.starts_with("portcullis="));
    assert_ne!(issued, planted_session, "a new id at login, never the planted one");
    let old = reqwest::Client::new().get(proxy.url("/")).header("cookie", planted_session).send().await.unwrap();
    assert_eq!(old.status(), 401, "the planted session was ended, not reused");
    let new = reqwest::Client::new().get(proxy.url("/")).header("cookie", issued).send().await.unwrap();
    assert_eq!(new.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_never_contain_passwords_or_cookies() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();
    assert_eq!(browser.submit_login(&proxy, "alice", "a wrong password guess", "/").await.status(), 401);
    browser.login(&proxy, &ALICE).await;
    browser.navigate(&proxy.url("/page?token=query-secret")).await;
    let cookies = browser.cookie_header(&proxy.url("/")).unwrap();
    let mark = proxy.stderr.len();
    assert!(proxy.stderr.wait_for(0, |l| l.contains("path=/page")).is_some(), "an access log line is written");
    let log = proxy.stderr.all().join("\n");
    assert!(log.contains("login ok") && log.contains("login failed"), "security events are logged");
    for secret in [ALICE.password, "a wrong password guess", "query-secret"] {
        assert!(!log.contains(secret), "{secret:?} appeared in the log");
    }
    for cookie in cookies.split("; ") {
        let value = cookie.split_once('=').unwrap().1;
        assert!(!log.contains(value), "a cookie value appeared in the log");
    }
    assert!(mark > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn second_factor_forms_refuse_cross_site_and_forged_posts() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[mfa]\npolicy = \"required\"").start();
    let browser = Browser::new();
    let enroll_url = password(&browser, &proxy, &ALICE, "/").await;
    let page = browser.navigate(&enroll_url).await.text().await.unwrap();
    let secret = read_enrollment_page(&page);
    let csrf = form_field(&page, "csrf").unwrap();
    let good_code = code(&secret, 0);
    let attempt = |path: &'static str, origin: &'static str, csrf: String| {
        let origin = if origin.is_empty() { proxy.origin() } else { origin.to_string() };
        browser
            .http
            .post(proxy.url(path))
            .header("origin", origin)
            .form(&[("csrf", csrf), ("code", good_code.clone()), ("saved", "yes".into())])
            .send()
    };
    for path in ["/.portcullis/enroll", "/.portcullis/challenge", "/.portcullis/recovery-codes"] {
        assert_eq!(
            attempt(path, "https://evil.example", csrf.clone()).await.unwrap().status(),
            403,
            "{path} cross-site"
        );
        assert_eq!(attempt(path, "", "forged".into()).await.unwrap().status(), 403, "{path} forged token");
    }
    // None of that enrolled anything: the partial session is still sent to enrollment.
    let nav = browser.navigate(&proxy.url("/")).await;
    assert!(nav.headers()["location"].to_str().unwrap().contains("/.portcullis/enroll"));
    assert_eq!(upstream.count(), 0);
}
