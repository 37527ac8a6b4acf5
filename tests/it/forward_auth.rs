//! Forward-auth (`/.portcullis/auth`) behind a real nginx (`auth_request`) and a real Caddy
//! (`forward_auth`), each running the sample from `deploy/` as shipped; and Traefik's header
//! contract, asked directly (Traefik is not packaged here).

use std::net::SocketAddr;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::attacks::{raw_to, status_of};
use crate::front_proxy::{Addresses, Front};
use crate::harness::{ALICE, Browser, Proxy, free_port, proxy, verify_with_jwks};
use crate::upstream::Upstream;

const RULES: &str = r#"
trusted_proxies = ["127.0.0.1/32"]

[[rule]]
paths = ["/public"]
access = "bypass"

[[rule]]
paths = ["/internal"]
access = "deny"
"#;

/// Identity headers a client might forge, in our names and other gates', and in the `_` spelling
/// that CGI-style servers fold into the same name.
const FORGED: [(&str, &str); 12] = [
    ("X-Auth-Request-User", "mallory"),
    ("X-authentik-username", "mallory"),
    ("Cf-Access-Authenticated-User-Email", "mallory@example.com"),
    ("X-Forwarded-User", "mallory"),
    ("X_Forwarded_User", "mallory"),
    ("X_Portcullis_Assertion", "forged"),
    ("Remote_User", "mallory"),
    ("X-Forwarded-Email", "mallory@example.com"),
    ("X-Forwarded-Groups", "admins"),
    ("X-Portcullis-Assertion", "forged"),
    ("Remote-User", "mallory"),
    ("X-Remote-User", "mallory"),
];

fn location(response: &reqwest::Response) -> String {
    response.headers().get("location").map(|l| l.to_str().unwrap().to_string()).unwrap_or_default()
}

/// Portcullis beside a front proxy that listens on `front_port` at app.example.test.
fn portcullis_for(upstream: &Upstream, front_port: u16, extra: &str) -> Proxy {
    // `extra` goes last: it may open a table.
    proxy(&upstream.url()).public_host("app.example.test").public_port(front_port).toml(RULES).toml(extra).start()
}

/// What every front proxy must do with the sample as shipped: strangers are sent to sign in (or
/// refused, for API calls); a signed-in browser passes with the identity Portcullis vouched for
/// and nothing a client forged; bypass passes with no identity at all; deny is 403.
async fn the_gate_holds_through(base: &str, front: SocketAddr, upstream: &Upstream) {
    let browser = Browser::resolving(front, &["app.example.test"]);
    let forged =
        |request: reqwest::RequestBuilder| FORGED.iter().fold(request, |r, (name, value)| r.header(*name, *value));

    // A stranger's navigation goes to the login page and comes back to the deep link.
    let first = browser.navigate(&format!("{base}/page?x=1")).await;
    assert_eq!(first.status(), 302);
    assert_eq!(location(&first), format!("{base}/.portcullis/login?rd=%2Fpage%3Fx%3D1"));
    // An API call is refused, never redirected.
    let api = forged(browser.http.get(format!("{base}/api/items"))).send().await.unwrap();
    assert_eq!(api.status(), 401);
    // A bypassed path passes with no identity, whatever the client wrote.
    let open = forged(browser.http.get(format!("{base}/public/x"))).send().await.unwrap();
    assert_eq!(open.status(), 200);
    let seen = upstream.seen().pop().unwrap();
    assert_eq!(seen.path, "/public/x");
    for (name, _) in FORGED {
        assert!(seen.header(name).is_none(), "a bypassed request carries no {name}: {:?}", seen.header(name));
    }
    assert_eq!(browser.navigate(&format!("{base}/internal")).await.status(), 403);
    // A client describing its request itself, in either family, as a bypassed one: the front
    // proxy's description is the one judged.
    let described = |r: reqwest::RequestBuilder| {
        r.header("x-original-url", format!("{base}/public"))
            .header("x-original-method", "GET")
            .header("x-forwarded-uri", "/public")
            .header("x-forwarded-method", "GET")
    };
    let denied = described(browser.navigate_request(&format!("{base}/internal"))).send().await.unwrap();
    assert_ne!(denied.status(), 200, "a denied path described as a bypassed one");
    let api = described(browser.http.post(format!("{base}/api/write"))).send().await.unwrap();
    assert_ne!(api.status(), 200, "a POST to a gated path described as a GET of a bypassed one");
    assert_eq!(upstream.seen().len(), 1, "nothing but the bypassed request reached the upstream");

    // The application gets the browser's own cookies, never Portcullis's.
    browser.jar.add_cookie_str("theme=dark; Path=/", &format!("{base}/").parse().unwrap());
    let open = browser.navigate(&format!("{base}/public/cookies")).await;
    assert_eq!(open.status(), 200);
    assert_eq!(upstream.seen().pop().unwrap().header("cookie"), Some("theme=dark"));

    // Signing in on the proxy's pages, served on the same host through the front proxy.
    let signed_in = browser.submit_login_at(base, "alice", ALICE.password, "/page?x=1").await;
    assert_eq!(signed_in.status(), 303);
    assert_eq!(location(&signed_in), format!("{base}/page?x=1"));
    let page = forged(browser.navigate_request(&format!("{base}/page?x=1"))).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let seen = upstream.seen().pop().unwrap();
    assert_eq!(seen.path, "/page");
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert_eq!(seen.header("x-forwarded-email"), Some("alice@example.com"));
    assert_eq!(seen.header("x-forwarded-groups"), Some("staff,wiki-admins"));
    let cookie = seen.header("cookie").unwrap_or("");
    assert!(cookie.contains("theme=dark") && !cookie.contains("portcullis"), "the app's cookies only: {cookie}");
    for other in ["remote-user", "x-remote-user", "x_forwarded_user", "x_portcullis_assertion", "remote_user"] {
        assert!(seen.header(other).is_none(), "{other} forged by the client is dropped");
    }
    // The assertion verifies with the keys published at the public URL, as an upstream would.
    let jwks = browser.http.get(format!("{base}/.portcullis/jwks.json")).send().await.unwrap().json().await.unwrap();
    let claims = verify_with_jwks(seen.header("x-portcullis-assertion").unwrap(), &jwks, base).unwrap();
    assert_eq!((claims["sub"].as_str(), claims["acr"].as_str()), (Some("alice"), Some("aal1")));
    // Signed in, deny is still 403 and bypass still carries no identity.
    assert_eq!(browser.navigate(&format!("{base}/internal")).await.status(), 403);
    browser.navigate(&format!("{base}/public/y")).await;
    let seen = upstream.seen().pop().unwrap();
    assert!(seen.header("x-forwarded-user").is_none(), "{:?}", seen.headers);
    assert_eq!(seen.header("cookie"), Some("theme=dark"), "a bypassed request gets no session cookie either");
    // The question is the front proxy's to ask: a client asking it directly learns nothing.
    let direct = browser.navigate(&format!("{base}/.portcullis/auth")).await;
    assert_eq!(direct.status(), 404);
    assert!(direct.headers().get("x-portcullis-assertion").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_auth_request_gates_with_the_shipped_sample() {
    let upstream = Upstream::start().await;
    let port = free_port();
    let proxy = portcullis_for(&upstream, port, "");
    let hosts = [("app.example.com", "app.example.test")];
    let addresses = Addresses { portcullis: proxy.addr, app: Some(upstream.addr), hosts: &hosts };
    let test = "nginx_auth_request_gates_with_the_shipped_sample";
    let Some(nginx) = Front::nginx(test, "nginx/forward-auth.conf", port, &addresses) else { return };
    let base = format!("http://app.example.test:{port}");
    the_gate_holds_through(&base, nginx.addr(), &upstream).await;

    // nginx passes Portcullis's challenge on with its 401.
    let api = reqwest::Client::new()
        .get(format!("http://{}/api", nginx.addr()))
        .header("host", "app.example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);

    // A WebSocket through nginx: refused without a session, echoed with one.
    let ws_url = format!("ws://{}/ws", nginx.addr());
    let mut stranger = ws_url.clone().into_client_request().unwrap();
    stranger.headers_mut().insert("host", "app.example.test".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(stranger).await.is_err(), "no session, no WebSocket");
    let browser = Browser::resolving(nginx.addr(), &["app.example.test"]);
    assert_eq!(browser.submit_login_at(&base, "alice", ALICE.password, "/").await.status(), 303);
    let mut request = ws_url.into_client_request().unwrap();
    request.headers_mut().insert("host", "app.example.test".parse().unwrap());
    request.headers_mut().insert("cookie", browser.cookie_header(&format!("{base}/")).unwrap().parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("a WebSocket through nginx, signed in");
    futures_util::SinkExt::send(&mut ws, "ping".into()).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_text().unwrap().as_str(), "ping");
    let seen = upstream.seen().pop().unwrap();
    assert_eq!((seen.path.as_str(), seen.header("x-forwarded-user")), ("/ws", Some("alice")));
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_sends_a_half_signed_in_browser_to_its_second_step() {
    let upstream = Upstream::start().await;
    let port = free_port();
    let proxy = portcullis_for(&upstream, port, "[mfa]\npolicy = \"required\"");
    let hosts = [("app.example.com", "app.example.test")];
    let addresses = Addresses { portcullis: proxy.addr, app: Some(upstream.addr), hosts: &hosts };
    let test = "nginx_sends_a_half_signed_in_browser_to_its_second_step";
    let Some(nginx) = Front::nginx(test, "nginx/forward-auth.conf", port, &addresses) else { return };
    let base = format!("http://app.example.test:{port}");
    let browser = Browser::resolving(nginx.addr(), &["app.example.test"]);
    // The password alone is a partial session: 2FA is required and alice has no factor yet.
    let signed_in = browser.submit_login_at(&base, "alice", ALICE.password, "/page").await;
    assert_eq!(signed_in.status(), 303);
    let page = browser.navigate(&format!("{base}/page")).await;
    assert_eq!(page.status(), 302);
    assert_eq!(location(&page), format!("{base}/.portcullis/enroll?rd=%2Fpage"));
    let api = browser.http.get(format!("{base}/page")).send().await.unwrap();
    assert_eq!(api.status(), 401);
    assert!(upstream.seen().is_empty(), "a partial session reaches nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn caddy_forward_auth_gates_with_the_shipped_sample() {
    let upstream = Upstream::start().await;
    let port = free_port();
    let proxy = portcullis_for(&upstream, port, "");
    let hosts = [("app.example.com", "app.example.test")];
    let addresses = Addresses { portcullis: proxy.addr, app: Some(upstream.addr), hosts: &hosts };
    let test = "caddy_forward_auth_gates_with_the_shipped_sample";
    let Some(caddy) = Front::caddy(test, "caddy/Caddyfile.forward-auth", port, &addresses) else { return };
    let base = format!("http://app.example.test:{port}");
    the_gate_holds_through(&base, caddy.addr(), &upstream).await;
}

/// What Traefik's ForwardAuth middleware sends (`X-Forwarded-Method/-Proto/-Host/-Uri/-For`,
/// and the client's own headers), asked directly.
fn traefik_asks(browser: &Browser, proxy: &Proxy, host: &str, uri: &str) -> reqwest::RequestBuilder {
    browser
        .http
        .get(proxy.url("/.portcullis/auth"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", host)
        .header("x-forwarded-uri", uri)
        .header("x-forwarded-for", "192.0.2.7")
}

#[tokio::test(flavor = "multi_thread")]
async fn traefiks_header_contract_across_two_hosts() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url())
        .public_host("app.example.test")
        .toml("hosts = [\"wiki.example.test\"]")
        .toml(RULES)
        .start();
    let port = proxy.addr.port();
    let (main, wiki) = (format!("http://app.example.test:{port}"), format!("http://wiki.example.test:{port}"));
    let (main_host, wiki_host) = (format!("app.example.test:{port}"), format!("wiki.example.test:{port}"));
    // Traefik routes each host's /.portcullis/ to Portcullis; here the browser goes there directly.
    let browser = Browser::resolving(proxy.addr, &["app.example.test", "wiki.example.test"]);
    let html = |r: reqwest::RequestBuilder| r.header("accept", "text/html");

    // On the main host a stranger is sent to the login page; an API call gets the 401.
    let first = html(traefik_asks(&browser, &proxy, &main_host, "/page")).send().await.unwrap();
    assert_eq!((first.status().as_u16(), location(&first)), (302, format!("{main}/.portcullis/login?rd=%2Fpage")));
    let api = traefik_asks(&browser, &proxy, &main_host, "/page").send().await.unwrap();
    assert_eq!(api.status(), 401);
    assert!(api.headers()["www-authenticate"].to_str().unwrap().contains("realm=\"portcullis\""));
    // Bypass: 200 with no identity, whatever the client forged into the headers Traefik copies.
    let open = traefik_asks(&browser, &proxy, &main_host, "/public")
        .header("x-forwarded-user", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    assert!(open.headers().get("x-forwarded-user").is_none() && open.headers().get("x-portcullis-assertion").is_none());
    assert_eq!(traefik_asks(&browser, &proxy, &main_host, "/internal").send().await.unwrap().status(), 403);
    // A host Portcullis does not serve is never vouched for.
    assert_eq!(traefik_asks(&browser, &proxy, "evil.example.test", "/").send().await.unwrap().status(), 403);

    // On the other host the browser starts a handoff there, signs in on the main host and comes
    // back with a session of that host's own.
    let elsewhere = html(traefik_asks(&browser, &proxy, &wiki_host, "/doc?v=2")).send().await.unwrap();
    assert_eq!(elsewhere.status(), 302);
    let begin = location(&elsewhere);
    assert!(begin.starts_with(&format!("{wiki}/.portcullis/handoff?to=")), "{begin}");
    let to_main = browser.navigate(&begin).await;
    assert_eq!(to_main.status(), 303);
    let handoff = location(&to_main);
    assert!(handoff.starts_with(&format!("{main}/.portcullis/handoff?to=")) && handoff.contains("state="), "{handoff}");
    assert!(browser.cookie_header(&format!("{wiki}/")).is_some_and(|c| c.contains("portcullis-handoff=")));
    let login = location(&browser.navigate(&handoff).await);
    assert!(login.starts_with(&format!("{main}/.portcullis/login")), "{login}");
    let signed_in = browser.submit_login_at(&main, "alice", ALICE.password, &handoff.replace(&main, "")).await;
    let with_code = browser.navigate(&location(&signed_in)).await;
    let exchange = location(&with_code);
    assert!(exchange.starts_with(&format!("{wiki}/.portcullis/handoff?code=")), "{exchange}");
    let landed = browser.navigate(&exchange).await;
    assert_eq!(location(&landed), format!("{wiki}/doc?v=2"));

    // Now Traefik's question for the wiki is answered with the identity to copy.
    let cookie = browser.cookie_header(&format!("{wiki}/")).unwrap();
    let allowed =
        traefik_asks(&browser, &proxy, &wiki_host, "/doc?v=2").header("cookie", &cookie).send().await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.headers()["x-forwarded-user"], "alice");
    assert_eq!(allowed.headers()["x-forwarded-groups"], "staff,wiki-admins");
    assert!(allowed.headers().contains_key("x-portcullis-assertion"));
    // The wiki's cookie means nothing on the main host, and the main host's nothing on the wiki.
    let main_cookie = browser.cookie_header(&format!("{main}/")).unwrap();
    let crossed =
        traefik_asks(&browser, &proxy, &wiki_host, "/doc").header("cookie", &main_cookie).send().await.unwrap();
    assert_eq!(crossed.status(), 401);
    assert!(upstream.seen().is_empty(), "forward-auth never forwards anything itself");
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_auth_believes_nothing_from_an_untrusted_peer() {
    let upstream = Upstream::start().await;
    // The test client (127.0.0.1) is not a trusted proxy here.
    let proxy = proxy(&upstream.url()).toml("trusted_proxies = [\"10.9.9.9/32\"]").start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let cookie = browser.cookie_header(&proxy.url("/")).unwrap();
    let host = proxy.addr.to_string();
    for uri in ["/", "/anything"] {
        let asked = traefik_asks(&browser, &proxy, &host, uri).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(asked.status(), 401, "even with a full session's cookie");
        assert!(
            asked.headers().get("x-forwarded-user").is_none()
                && asked.headers().get("x-portcullis-assertion").is_none()
        );
    }
    let nginx_style = browser
        .http
        .get(proxy.url("/.portcullis/auth"))
        .header("x-original-url", format!("http://{host}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(nginx_style.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_front_proxy_that_describes_nothing_readable_gets_a_400() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("trusted_proxies = [\"127.0.0.1/32\"]").start();
    let client = reqwest::Client::new();
    for (name, value) in
        [("x-forwarded-method", "GET"), ("x-original-url", "not a url"), ("x-forwarded-uri", "/no-host")]
    {
        let asked = client.get(proxy.url("/.portcullis/auth")).header(name, value).send().await.unwrap();
        assert_eq!(asked.status(), 400, "{name}: {value}");
    }
    let twice = client
        .get(proxy.url("/.portcullis/auth"))
        .header("x-forwarded-host", proxy.addr.to_string())
        .header("x-forwarded-uri", "/public")
        .header("x-forwarded-uri", "/admin")
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 400, "two descriptions: which one did the front proxy mean?");
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_in_front_of_the_inline_proxy_with_the_shipped_sample() {
    let upstream = Upstream::start().await;
    let port = free_port();
    let proxy = portcullis_for(&upstream, port, "");
    let hosts = [("app.example.com", "app.example.test")];
    // The inline sample has no application address: Portcullis forwards to it.
    let addresses = Addresses { portcullis: proxy.addr, app: None, hosts: &hosts };
    let test = "nginx_in_front_of_the_inline_proxy_with_the_shipped_sample";
    let Some(nginx) = Front::nginx(test, "nginx/inline.conf", port, &addresses) else { return };
    let base = format!("http://app.example.test:{port}");
    let browser = Browser::resolving(nginx.addr(), &["app.example.test"]);
    let first = browser.navigate(&format!("{base}/page")).await;
    assert_eq!((first.status().as_u16(), location(&first)), (303, format!("{base}/.portcullis/login?rd=%2Fpage")));
    let signed_in = browser.submit_login_at(&base, "alice", ALICE.password, "/page").await;
    assert_eq!(signed_in.status(), 303);
    let page = browser
        .navigate_request(&format!("{base}/page"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-user", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let seen = upstream.seen().pop().unwrap();
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    // nginx is trusted for the client's address and writes the one it saw, not the client's claim;
    // Portcullis adds nginx's own.
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1, 127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-host"), Some(format!("app.example.test:{port}").as_str()));
    // WebSockets pass nginx and the proxy, signed in.
    let mut request = format!("ws://{}/ws", nginx.addr()).into_client_request().unwrap();
    request.headers_mut().insert("host", "app.example.test".parse().unwrap());
    request.headers_mut().insert("cookie", browser.cookie_header(&format!("{base}/")).unwrap().parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("a WebSocket through nginx, signed in");
    futures_util::SinkExt::send(&mut ws, "ping".into()).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_text().unwrap().as_str(), "ping");
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_judges_the_host_it_routes_by() {
    let upstream = Upstream::start().await;
    let port = free_port();
    // The wiki is a host Portcullis serves, wide open; nginx here serves only the app.
    let proxy = proxy(&upstream.url())
        .public_host("app.example.test")
        .public_port(port)
        .toml("hosts = [\"wiki.example.test\"]\ntrusted_proxies = [\"127.0.0.1/32\"]")
        .toml("[[rule]]\nhosts = [\"wiki.example.test\"]\naccess = \"bypass\"")
        .start();
    let hosts = [("app.example.com", "app.example.test")];
    let addresses = Addresses { portcullis: proxy.addr, app: Some(upstream.addr), hosts: &hosts };
    let test = "nginx_judges_the_host_it_routes_by";
    let Some(nginx) = Front::nginx(test, "nginx/forward-auth.conf", port, &addresses) else { return };
    // The wiki's name on the app's server: nginx's default server answers nothing at all.
    let other = raw_to(nginx.addr(), b"GET /page HTTP/1.1\r\nHost: wiki.example.test\r\nConnection: close\r\n\r\n");
    assert!(other.is_empty(), "{other}");
    // The app's name in the request line, the wiki's in Host: nginx routes by the request line,
    // and that is the host judged (the app's: sign in first), not the wiki's.
    let request = format!(
        "GET http://app.example.test:{port}/page HTTP/1.1\r\nHost: wiki.example.test:{port}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(status_of(&raw_to(nginx.addr(), request.as_bytes())), 401);
    assert!(upstream.seen().is_empty(), "nothing reached the app");
}

#[tokio::test(flavor = "multi_thread")]
async fn caddy_in_front_of_the_inline_proxy_with_the_shipped_sample() {
    let upstream = Upstream::start().await;
    let port = free_port();
    let proxy = portcullis_for(&upstream, port, "");
    let hosts = [("app.example.com", "app.example.test")];
    let addresses = Addresses { portcullis: proxy.addr, app: None, hosts: &hosts };
    let test = "caddy_in_front_of_the_inline_proxy_with_the_shipped_sample";
    let Some(caddy) = Front::caddy(test, "caddy/Caddyfile.inline", port, &addresses) else { return };
    let base = format!("http://app.example.test:{port}");
    let browser = Browser::resolving(caddy.addr(), &["app.example.test"]);
    let first = browser.navigate(&format!("{base}/page")).await;
    assert_eq!((first.status().as_u16(), location(&first)), (303, format!("{base}/.portcullis/login?rd=%2Fpage")));
    assert_eq!(browser.submit_login_at(&base, "alice", ALICE.password, "/page").await.status(), 303);
    let page = browser
        .navigate_request(&format!("{base}/page"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-user", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let seen = upstream.seen().pop().unwrap();
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    // Caddy ignores the client's X-Forwarded-For and writes the address it saw.
    assert!(
        !seen.header("x-forwarded-for").unwrap_or("").contains("203.0.113.9"),
        "{:?}",
        seen.header("x-forwarded-for")
    );
    assert!(!seen.header("cookie").unwrap_or("").contains("portcullis"));
}
