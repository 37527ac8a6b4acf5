//! Access rules through the real binary: bypass, deny, two_factor and max_age, hosts the proxy
//! does not serve, frames, and `portcullis explain`.

use crate::attacks::{raw, status_of};
use crate::harness::{ALICE, Browser, form_field, proxy};
use crate::mfa::{code, enroll, password, submit_code};
use crate::upstream::Upstream;

const RULES: &str = r#"
[[rule]]
paths = ["/healthz"]
methods = ["GET"]
access = "bypass"

[[rule]]
paths = ["/admin"]
access = "two_factor"

[[rule]]
paths = ["/billing"]
access = "session"
max_age = "10m"

[[rule]]
paths = ["/internal"]
access = "deny"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_bypass_path_reaches_the_upstream_with_no_session_and_no_identity() {
    let upstream = Upstream::start().await;
    let proxy =
        proxy(&upstream.url()).toml(&format!("{RULES}\n[identity]\nstrip_headers = [\"X-Custom-User\"]")).start();
    let anonymous = reqwest::Client::new()
        .get(proxy.url("/healthz"))
        .header("X-Forwarded-User", "admin")
        .header("Remote-User", "admin")
        .header("X-authentik-username", "akadmin")
        .header("Cf-Access-Authenticated-User-Email", "root@example.com")
        .header("X-Custom-User", "admin")
        .header("X-Portcullis-Assertion", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 200);
    let seen = upstream.seen().pop().unwrap();
    assert_eq!(seen.path, "/healthz");
    for name in [
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-groups",
        "remote-user",
        "x-authentik-username",
        "cf-access-authenticated-user-email",
        "x-custom-user",
        "x-portcullis-assertion",
    ] {
        assert!(seen.header(name).is_none(), "{name} reached the upstream: {:?}", seen.headers);
    }
    // Signed in, the bypassed path still carries no identity: it is not checked, so not vouched for.
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    assert_eq!(browser.http.get(proxy.url("/healthz")).send().await.unwrap().status(), 200);
    assert!(upstream.seen().pop().unwrap().header("x-forwarded-user").is_none());
    // Only what the rule names: a POST, or the path next door, needs a session.
    let before = upstream.count();
    assert_eq!(reqwest::Client::new().post(proxy.url("/healthz")).send().await.unwrap().status(), 401);
    assert_eq!(reqwest::Client::new().get(proxy.url("/healthzx")).send().await.unwrap().status(), 401);
    assert_eq!(upstream.count(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn deny_is_403_and_forwards_nothing_whoever_asks() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml(RULES).start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    for client in [&reqwest::Client::new(), &browser.http] {
        let answer = client.get(proxy.url("/internal/metrics")).send().await.unwrap();
        assert_eq!(answer.status(), 403);
    }
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_factor_sends_a_password_only_account_to_set_one_up_and_back() {
    let upstream = Upstream::start().await;
    // The account's own policy is optional, and Alice has no factor: her password is enough for
    // everything but /admin.
    let proxy = proxy(&upstream.url()).toml(RULES).start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    assert_eq!(browser.navigate(&proxy.url("/wiki")).await.status(), 200);
    let api = browser.http.get(proxy.url("/admin/users")).send().await.unwrap();
    assert_eq!(api.status(), 401, "an API call is told, never redirected");
    assert!(api.headers()["www-authenticate"].to_str().unwrap().contains("insufficient_user_authentication"));
    let sent = browser.navigate(&proxy.url("/admin/users?page=2")).await;
    assert_eq!(sent.status(), 303);
    let enroll_url = sent.headers()["location"].to_str().unwrap().to_string();
    assert!(enroll_url.contains("/.portcullis/enroll"), "{enroll_url}");
    let (_, _, confirmed) = enroll(&browser, &proxy, &enroll_url).await;
    assert_eq!(confirmed.headers()["location"], proxy.url("/admin/users?page=2").as_str(), "back where she was going");
    assert_eq!(browser.navigate(&proxy.url("/admin/users?page=2")).await.status(), 200);
    assert_eq!(upstream.seen().pop().unwrap().header("x-forwarded-user"), Some("alice"));
}

#[tokio::test(flavor = "multi_thread")]
async fn max_age_asks_again_for_a_second_factor_that_is_not_fresh() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml(&format!("{RULES}\n[mfa]\nremember_device = \"30d\"")).start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let (secret, recovery, _) = enroll(&browser, &proxy, &proxy.url("/.portcullis/enroll")).await;
    crate::mfa::log_out(&browser, &proxy).await;
    // Sign in with a code and have the browser remembered...
    let challenge = password(&browser, &proxy, &ALICE, "/").await;
    let page = browser.navigate(&challenge).await.text().await.unwrap();
    let signed_in = browser
        .http
        .post(proxy.url("/.portcullis/challenge"))
        .header("origin", proxy.origin())
        .form(&[
            ("csrf", form_field(&page, "csrf").unwrap()),
            ("rd", "/".into()),
            ("code", code(&secret, 1)),
            ("remember", "yes".into()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    crate::mfa::log_out(&browser, &proxy).await;
    // ...so the next sign-in needs only the password: a full session, but no second factor
    // proven just now.
    assert_eq!(password(&browser, &proxy, &ALICE, "/").await, proxy.url("/"));
    assert_eq!(browser.navigate(&proxy.url("/wiki")).await.status(), 200);

    let api = browser.http.get(proxy.url("/billing/invoices")).send().await.unwrap();
    assert_eq!(api.status(), 401);
    let challenge_header = api.headers()["www-authenticate"].to_str().unwrap().to_string();
    assert!(
        challenge_header.contains("error=\"insufficient_user_authentication\"")
            && challenge_header.contains("max_age=600"),
        "RFC 9470's answer: {challenge_header}"
    );
    let sent = browser.navigate(&proxy.url("/billing/invoices")).await;
    assert_eq!(sent.status(), 303);
    let challenge = sent.headers()["location"].to_str().unwrap().to_string();
    assert!(challenge.contains("/.portcullis/challenge"), "{challenge}");
    // (The app's next code went into the remembered sign-in; a recovery code proves it now.)
    let proven = submit_code(&browser, &proxy, &challenge, &recovery[0]).await;
    assert_eq!(proven.headers()["location"], proxy.url("/billing/invoices").as_str());
    assert_eq!(browser.navigate(&proxy.url("/billing/invoices")).await.status(), 200);
    // Everything else stayed open all along: the session was full throughout.
    assert_eq!(browser.navigate(&proxy.url("/wiki")).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_the_proxy_does_not_serve_gets_421_and_nothing_is_forwarded() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml(&format!("hosts = [\"wiki.example.test\"]\n{RULES}")).start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let cookie = browser.cookie_header(&proxy.url("/")).unwrap();
    for host in ["evil.example.test", "wiki.example.test.evil.org", "localhost"] {
        let answer = raw(
            &proxy,
            format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(status_of(&answer), 421, "{host}: {answer}");
    }
    // A host in `hosts` is served (here through the bypass rule).
    let served = raw(&proxy, b"GET /healthz HTTP/1.1\r\nHost: wiki.example.test\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&served), 200, "{served}");
    assert_eq!(upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frame_never_gets_a_sign_in_page_only_a_link_out_of_the_frame() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let framed = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(proxy.url("/dashboard"))
        .header("accept", "text/html")
        .header("sec-fetch-dest", "iframe")
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(framed.status(), 401, "no redirect into a login page inside the frame");
    let policy = framed.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(policy.contains(&format!("frame-ancestors 'self' {}", proxy.origin())), "{policy}");
    assert!(framed.headers().get("x-frame-options").is_none());
    let html = framed.text().await.unwrap();
    assert!(html.contains("target=\"_top\""), "{html}");
    assert!(html.contains("/.portcullis/login?rd=%2Fdashboard"), "{html}");
    assert!(!html.contains("name=\"password\""), "no password field in a frame");
    // The login page itself still refuses to be framed.
    let login = reqwest::get(proxy.url("/.portcullis/login")).await.unwrap();
    assert!(login.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_says_which_rule_applies_and_why_the_earlier_ones_did_not() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url())
        .toml(&format!("{RULES}\n[[rule]]\npaths = [\"/ops\"]\ngroups = [\"ops\"]\naccess = \"two_factor\"\n"))
        .start();
    let base = proxy.origin();
    let output = proxy.cli(&["explain", "GET", &format!("{base}/internal/x")], "");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("skipped [[rule]] #1") && text.contains("the path is under none of its paths"), "{text}");
    assert!(text.contains("matched [[rule]] #4") && text.contains("decision: deny"), "{text}");
    let as_alice =
        String::from_utf8_lossy(&proxy.cli(&["explain", "GET", &format!("{base}/ops"), "--user", "alice"], "").stdout)
            .into_owned();
    assert!(
        as_alice.contains("the user is in none of its groups") && as_alice.contains("decision: session"),
        "{as_alice}"
    );
    let rules = String::from_utf8_lossy(&proxy.cli(&["explain", "--rules"], "").stdout).into_owned();
    assert!(rules.lines().filter(|l| l.starts_with("[[rule]]")).count() == 5, "{rules}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_spelling_of_a_path_or_method_slips_past_its_rule() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url())
        .toml(
            r#"
[[rule]]
paths = ["/public"]
access = "bypass"

[[rule]]
paths = ["/admin"]
access = "deny"

[[rule]]
paths = ["/api"]
methods = ["POST"]
access = "two_factor"
"#,
        )
        .start();
    // Anonymous: every spelling that a servlet container, a case-insensitive router or a double
    // decoder would read as /admin is not the bypassed /public.
    for path in ["/public/..;/admin", "/public/%252e%252e/admin", "/public/..%3B/admin", "/PUBLIC/x"] {
        let answer =
            raw(&proxy, format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes());
        // 403 where it reads as /admin, 401 where it needs a session: never the upstream.
        assert!([401, 403].contains(&status_of(&answer)), "{path}: {answer}");
    }
    assert_eq!(upstream.count(), 0, "nothing reached the upstream without a session");
    // Signed in: every spelling of /admin is denied.
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let cookie = browser.cookie_header(&proxy.url("/")).unwrap();
    for path in ["/Admin", "/ADMIN/users", "/admin;x=1", "/x/..;/admin", "/admin.", "/admin%20", "/%2561dmin"] {
        let answer = raw(
            &proxy,
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(status_of(&answer), 403, "{path}: {answer}");
    }
    let nul = raw(
        &proxy,
        format!("GET /admin%00 HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(status_of(&nul), 400);
    // A lower-case method is the method frameworks upper-case it to.
    for method in ["POST", "post", "Post"] {
        let answer = raw(
            &proxy,
            format!("{method} /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(status_of(&answer), 401, "{method}: a second factor is needed");
    }
    assert_eq!(upstream.count(), 0);
    // And the bypass still works as written.
    assert_eq!(reqwest::get(proxy.url("/public/logo.png")).await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_members_area_asks_strangers_to_sign_in_rather_than_turning_them_away() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url())
        .account(&crate::mfa::BOB)
        .toml("[[rule]]\npaths = [\"/staff\"]\ngroups = [\"ops\"]\naccess = \"session\"\n[[rule]]\npaths = [\"/staff\"]\naccess = \"deny\"\n")
        .start();
    let stranger = Browser::new();
    let deep_link = stranger.navigate(&proxy.url("/staff/handbook")).await;
    assert_eq!(deep_link.status(), 303, "signing in may be what lets them in");
    assert!(deep_link.headers()["location"].to_str().unwrap().contains("/.portcullis/login"));
    // Signed in and not a member: turned away.
    stranger.login(&proxy, &crate::mfa::BOB).await;
    assert_eq!(stranger.navigate(&proxy.url("/staff/handbook")).await.status(), 403);
    assert_eq!(upstream.count(), 0);
}
