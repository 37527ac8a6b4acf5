//! The flows a person walks: being sent to sign in, signing in, landing where they were going,
//! signing out, and what happens to a session across restarts and account changes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::harness::{ALICE, Browser, form_field, proxy};
use crate::upstream::Upstream;

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_browsers_are_sent_to_sign_in_and_apis_get_401() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();

    let page = browser.navigate(&proxy.url("/wiki/Some_Page?action=edit")).await;
    assert_eq!(page.status(), 303);
    let location = page.headers()["location"].to_str().unwrap();
    assert_eq!(location, proxy.url("/.portcullis/login?rd=%2Fwiki%2FSome_Page%3Faction%3Dedit"));

    let api = browser.http.get(proxy.url("/api/v1/items")).header("accept", "application/json").send().await.unwrap();
    assert_eq!(api.status(), 401);
    let post =
        browser.http.post(proxy.url("/wiki/Some_Page")).header("accept", "text/html").body("x").send().await.unwrap();
    assert_eq!(post.status(), 401, "a POST is never answered with a redirect");
    let xhr = browser
        .http
        .get(proxy.url("/"))
        .header("accept", "text/html")
        .header("x-requested-with", "XMLHttpRequest")
        .send()
        .await
        .unwrap();
    assert_eq!(xhr.status(), 401);

    assert_eq!(upstream.count(), 0, "nothing reaches the upstream without a session");
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_in_lands_on_the_original_url_with_a_verifiable_identity() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();

    let redirect = browser.navigate(&proxy.url("/wiki/Deep/Link?rev=7")).await;
    let login_url = redirect.headers()["location"].to_str().unwrap().to_string();
    let page = browser.navigate(&login_url).await.text().await.unwrap();
    let csrf = form_field(&page, "csrf").unwrap();
    let rd = form_field(&page, "rd").unwrap();
    assert_eq!(rd, "/wiki/Deep/Link?rev=7");

    let response = browser
        .http
        .post(proxy.url("/.portcullis/login"))
        .header("origin", proxy.origin())
        .form(&[("username", "alice"), ("password", ALICE.password), ("csrf", csrf.as_str()), ("rd", rd.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], proxy.url("/wiki/Deep/Link?rev=7").as_str());
    let set_cookie = response.headers()["set-cookie"].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie} lacks {attribute}");
    }
    assert!(!set_cookie.to_ascii_lowercase().contains("domain="), "the cookie must be host-only");

    let landed = browser.navigate(&proxy.url("/wiki/Deep/Link?rev=7")).await;
    assert_eq!(landed.status(), 200);
    let seen = upstream.seen().pop().unwrap();
    assert_eq!(seen.path, "/wiki/Deep/Link");
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert_eq!(seen.header("x-forwarded-email"), Some("alice@example.com"));
    assert_eq!(seen.header("x-forwarded-groups"), Some("staff,wiki-admins"));
    assert!(seen.header("cookie").is_none(), "our session cookie must not reach the upstream");

    // Verify the assertion the way an upstream would, with nothing but the published keys.
    let token = seen.header("x-portcullis-assertion").unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA, "EdDSA is the default");
    assert!(header.kid.is_some(), "every assertion names its key");
    let claims = proxy.verify_assertion(token).await;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["groups"], serde_json::json!(["staff", "wiki-admins"]));
    assert_eq!(claims["amr"], serde_json::json!(["pwd"]));
    let (iat, exp) = (claims["iat"].as_i64().unwrap(), claims["exp"].as_i64().unwrap());
    assert!(exp > iat && exp - iat <= 300, "exp must be at most 5 minutes after iat");
    assert!(claims["auth_time"].as_i64().unwrap() <= iat);
    assert_eq!(claims["jti"].as_str().unwrap().len(), 22, "128 bits, base64url");
    assert_eq!(claims["sid"].as_str().unwrap().len(), 16, "the session's handle");

    // Changed claims no longer verify.
    let parts: Vec<&str> = token.split('.').collect();
    let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let forged = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(payload.replace("alice", "admin")), parts[2]);
    assert!(proxy.try_verify_assertion(&forged).await.is_err());
}

/// `identity.algorithm = "HS256"` keeps the shared key as before: the assertion verifies with
/// `identity.key`, carries no `kid`, and nothing is published or rotated. Dropping the setting
/// later warns that upstreams must switch to the JWKS.
#[tokio::test(flavor = "multi_thread")]
async fn hs256_setups_keep_the_shared_key_and_publish_nothing() {
    let upstream = Upstream::start().await;
    let mut proxy = proxy(&upstream.url()).toml("[identity]\nalgorithm = \"HS256\"").start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    assert_eq!(browser.navigate(&proxy.url("/")).await.status(), 200);
    let seen = upstream.seen().pop().unwrap();
    let token = seen.header("x-portcullis-assertion").unwrap();
    assert_eq!(jsonwebtoken::decode_header(token).unwrap().kid, None);
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[proxy.origin()]);
    validation.set_issuer(&[format!("{}/.portcullis", proxy.origin())]);
    let claims =
        jsonwebtoken::decode::<serde_json::Value>(token, &DecodingKey::from_secret(&proxy.identity_key()), &validation)
            .expect("the assertion verifies with the identity key")
            .claims;
    assert_eq!(claims["sub"], "alice");
    let wrong = DecodingKey::from_secret(b"some-other-key-that-is-long-enough-to-be-real");
    assert!(jsonwebtoken::decode::<serde_json::Value>(token, &wrong, &validation).is_err());

    let jwks = reqwest::get(proxy.url("/.portcullis/jwks.json")).await.unwrap();
    assert_eq!(jwks.status(), 404);
    assert!(jwks.text().await.unwrap().contains("shared secret"));
    for args in [&["identity", "rotate"][..], &["identity", "public-key"][..]] {
        let out = proxy.cli(args, "");
        assert!(!out.status.success(), "{args:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("HS256") && said.contains("no public key"), "{args:?}: {said}");
    }
    assert!(!proxy.data_dir().join("identity-keys.json").exists());

    // The upgrade: the setting is gone, the old key is still there.
    proxy.stop();
    let proxy = crate::harness::proxy(&upstream.url()).restart_of(&proxy).start();
    let warned = proxy.stderr.wait_for(0, |l| l.contains("assertions are now signed with EdDSA"));
    assert!(warned.unwrap().contains("identity.algorithm = \"HS256\""), "names the way back");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_and_unknown_user_get_the_same_answer() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();

    let wrong = Browser::new().submit_login(&proxy, "alice", "not the password", "/").await;
    let unknown = Browser::new().submit_login(&proxy, "mallory", "not the password", "/").await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(unknown.status(), 401);
    assert!(wrong.headers().get_all("set-cookie").iter().all(|c| !c.to_str().unwrap().starts_with("portcullis=")));
    let (wrong, unknown) = (wrong.text().await.unwrap(), unknown.text().await.unwrap());
    let message = "That user name and password do not match";
    assert!(wrong.contains(message) && unknown.contains(message));
    // The pages differ only in the echoed user name and the per-browser CSRF token.
    let strip =
        |page: &str, name: &str| page.replace(name, "NAME").replace(&form_field(page, "csrf").unwrap(), "TOKEN");
    assert_eq!(strip(&wrong, "alice"), strip(&unknown, "mallory"));
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_ends_the_session_on_the_server() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let stolen_cookie = browser.cookie_header(&proxy.url("/")).unwrap();

    let confirm = browser.navigate(&proxy.url("/.portcullis/logout")).await.text().await.unwrap();
    let csrf = form_field(&confirm, "csrf").unwrap();
    // A cross-site form cannot log the user out (or anything else).
    let cross = browser
        .http
        .post(proxy.url("/.portcullis/logout"))
        .header("origin", "https://evil.example")
        .form(&[("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    assert_eq!(browser.navigate(&proxy.url("/")).await.status(), 200, "still signed in");

    let out = browser
        .http
        .post(proxy.url("/.portcullis/logout"))
        .header("origin", proxy.origin())
        .form(&[("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 200);
    assert!(out.text().await.unwrap().contains("You are signed out"));

    // Even a copy of the old cookie no longer works: the session is gone server side.
    let replay = reqwest::Client::new().get(proxy.url("/")).header("cookie", stolen_cookie).send().await.unwrap();
    assert_eq!(replay.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_survives_a_restart() {
    let upstream = Upstream::start().await;
    let mut first = proxy(&upstream.url()).start();
    let browser = Browser::new();
    browser.login(&first, &ALICE).await;
    assert_eq!(browser.navigate(&first.url("/before")).await.status(), 200);
    assert!(first.stop().success(), "SIGTERM is a clean shutdown");

    let second = proxy(&upstream.url()).restart_of(&first).start();
    let after = browser.navigate(&second.url("/after")).await;
    assert_eq!(after.status(), 200);
    assert_eq!(upstream.seen().pop().unwrap().header("x-forwarded-user"), Some("alice"));
}

#[tokio::test(flavor = "multi_thread")]
async fn account_page_shows_who_is_signed_in() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();
    let anonymous = browser.navigate(&proxy.url("/.portcullis/account")).await;
    assert_eq!(anonymous.status(), 303);
    browser.login(&proxy, &ALICE).await;
    let page = browser.navigate(&proxy.url("/.portcullis/account")).await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store");
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    let html = page.text().await.unwrap();
    assert!(html.contains("alice@example.com") && html.contains("staff, wiki-admins"));
    assert_eq!(upstream.count(), 0, "own pages are never forwarded");
}

/// A browser's kept connections, quiet between requests on the lane and mid-wait in hyper,
/// hear a stop at once: the stop reaches each connection through its own activity
/// (`Capacity::stop_all`). Were it lost or slow, the proxy would wait out the whole
/// `proxy.shutdown_grace` (30 s here) before it closed them.
#[tokio::test(flavor = "multi_thread")]
async fn kept_connections_hear_a_stop_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::start().await;
    let mut proxy = proxy(&upstream.url()).toml("[proxy]\nshutdown_grace = \"30s\"").start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let cookie = browser.cookie_header(&proxy.url("/")).expect("signed in");
    let mut kept = Vec::new();
    for _ in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let request = format!("GET /kept HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\n\r\n", proxy.addr);
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = [0u8; 64];
        let n = stream.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer[..n]));
        kept.push(stream);
    }
    let asked = std::time::Instant::now();
    assert!(proxy.stop().success(), "SIGTERM is a clean shutdown");
    assert!(asked.elapsed() < std::time::Duration::from_secs(20), "the stop waited {:?}", asked.elapsed());
    for mut stream in kept {
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    }
}
