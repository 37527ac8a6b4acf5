//! Several hosts: signing in on one host hands a session to another (single use, 30 s, that
//! host only), and the Sandstorm preset treats every class of Sandstorm host as its table says.

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::attacks::{raw, status_of};
use crate::harness::{ALICE, Browser, proxy};
use crate::upstream::Upstream;

#[tokio::test(flavor = "multi_thread")]
async fn signing_in_on_the_main_host_hands_a_session_to_another_host() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url())
        .public_host("app.example.test")
        .toml("hosts = [\"wiki.example.test\", \"notes.example.test\"]")
        .start();
    let port = proxy.addr.port();
    let (main, wiki) = (format!("http://app.example.test:{port}"), format!("http://wiki.example.test:{port}"));
    let browser = Browser::resolving(proxy.addr, &["app.example.test", "wiki.example.test", "notes.example.test"]);

    // The wiki has no session of its own: off to the main host, which asks for a password first.
    let first = browser.navigate(&format!("{wiki}/page?x=1")).await;
    assert_eq!(first.status(), 303);
    let handoff = first.headers()["location"].to_str().unwrap().to_string();
    assert!(handoff.starts_with(&format!("{main}/.portcullis/handoff?to=")), "{handoff}");
    let to_login = browser.navigate(&handoff).await;
    let login = to_login.headers()["location"].to_str().unwrap().to_string();
    assert!(login.starts_with(&format!("{main}/.portcullis/login")), "{login}");
    let signed_in = browser.submit_login_at(&main, "alice", ALICE.password, &handoff.replace(&main, "")).await;
    assert_eq!(signed_in.status(), 303);
    let back = signed_in.headers()["location"].to_str().unwrap().to_string();
    assert!(back.starts_with(&format!("{main}/.portcullis/handoff")), "{back}");

    // Now signed in, the main host sends a code to the wiki, which exchanges it for its own cookie.
    let with_code = browser.navigate(&back).await;
    let exchange = with_code.headers()["location"].to_str().unwrap().to_string();
    assert!(exchange.starts_with(&format!("{wiki}/.portcullis/handoff?code=")), "{exchange}");
    let landed = browser.navigate(&exchange).await;
    assert_eq!(landed.headers()["location"], format!("{wiki}/page?x=1").as_str());
    let set = landed.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set.starts_with("portcullis=") && !set.to_ascii_lowercase().contains("domain="), "host-only: {set}");
    assert_eq!(browser.navigate(&format!("{wiki}/page?x=1")).await.status(), 200);
    let seen = upstream.seen().pop().unwrap();
    assert_eq!(
        (seen.header("host"), seen.header("x-forwarded-user")),
        (Some(format!("wiki.example.test:{port}").as_str()), Some("alice"))
    );

    // The account page lists the wiki's session with the host it is for.
    let account = browser.navigate(&format!("{main}/.portcullis/account")).await.text().await.unwrap();
    assert!(account.contains("on wiki.example.test"), "{account}");

    // A code works once, on its own host, and only for a little while.
    let replayed = browser.navigate(&exchange).await;
    assert_eq!(replayed.status(), 403, "a replayed code");
    let fresh = browser.navigate(&back).await.headers()["location"].to_str().unwrap().to_string();
    let elsewhere = fresh.replace("wiki.example.test", "notes.example.test");
    assert_eq!(browser.navigate(&elsewhere).await.status(), 403, "a code for the wiki, shown to another host");
    assert_eq!(browser.navigate(&fresh).await.status(), 403, "...is spent by the attempt");

    // A code made for someone else's browser (an attacker's own, passed to a victim in a link)
    // does not sign this browser in as them: the other host's state cookie is not there.
    let mallory = Browser::resolving(proxy.addr, &["app.example.test", "wiki.example.test"]);
    let start = mallory.navigate(&format!("{wiki}/")).await.headers()["location"].to_str().unwrap().to_string();
    let login = start.replace(&main, "");
    assert_eq!(mallory.submit_login_at(&main, "alice", ALICE.password, &login).await.status(), 303);
    let malloys_code = mallory.navigate(&start).await.headers()["location"].to_str().unwrap().to_string();
    assert!(malloys_code.contains("code="), "{malloys_code}");
    let victim = Browser::resolving(proxy.addr, &["app.example.test", "wiki.example.test"]);
    assert_eq!(victim.navigate(&malloys_code).await.status(), 403, "not this browser's handoff");
    assert!(victim.cookie_header(&format!("{wiki}/")).is_none_or(|c| !c.contains("portcullis=")));

    // The main host's cookie is not the wiki's, and the wiki's is not the main host's.
    let main_cookie = browser.cookie_header(&format!("{main}/")).unwrap();
    let wiki_cookie = browser.cookie_header(&format!("{wiki}/")).unwrap();
    let session = |cookies: &str| cookies.split("; ").find(|c| c.starts_with("portcullis=")).unwrap().to_string();
    assert_ne!(session(&main_cookie), session(&wiki_cookie));
    let swapped = raw(
        &proxy,
        format!(
            "GET /page HTTP/1.1\r\nHost: wiki.example.test\r\nCookie: {}\r\nConnection: close\r\n\r\n",
            session(&main_cookie)
        )
        .as_bytes(),
    );
    assert_eq!(status_of(&swapped), 401, "the main host's session does not work on the wiki");

    // Signing out on the main host signs the wiki out too.
    let page = browser.navigate(&format!("{main}/.portcullis/logout")).await.text().await.unwrap();
    let csrf = crate::harness::form_field(&page, "csrf").unwrap();
    let out = browser
        .http
        .post(format!("{main}/.portcullis/logout"))
        .header("origin", &main)
        .form(&[("csrf", csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 200);
    let after = raw(
        &proxy,
        format!(
            "GET /page HTTP/1.1\r\nHost: wiki.example.test\r\nCookie: {}\r\nConnection: close\r\n\r\n",
            session(&wiki_cookie)
        )
        .as_bytes(),
    );
    assert_eq!(status_of(&after), 401, "signed out everywhere it was handed");
}

/// Sandstorm's hosts under `*.sandstorm.test`, with what each must get without a session:
/// forwarded (the preset bypasses it) or 401 (it needs ours).
const SANDSTORM_CLASSES: [(&str, &str, u16); 10] = [
    ("grain UI", "ui-0123456789abcdef0123456789abcdef", 200),
    ("shared API host", "api", 200),
    ("per-token API host", "api-0123456789abcdef0123456789abcdef", 200),
    ("static assets", "static", 200),
    ("wildcard self-test", "selftest-4f2a9c", 200),
    ("static publishing", "abcdefghij0123456789", 200),
    ("a 19-character host is not publishing", "abcdefghij012345678", 401),
    ("DDP", "ddp", 401),
    ("payments", "payments", 401),
    ("anything else under the wildcard", "mystery", 401),
];

#[tokio::test(flavor = "multi_thread")]
async fn the_sandstorm_preset_treats_every_host_class_as_its_table_says() {
    let upstream = Upstream::start().await;
    // The harness's main host is 127.0.0.1, so that is Sandstorm's BASE_URL host here.
    let proxy = proxy(&upstream.url())
        .toml("[sandstorm]\nbase_url = \"http://127.0.0.1\"\nwildcard_host = \"*.sandstorm.test\"")
        .start();
    for (class, label, expected) in SANDSTORM_CLASSES {
        let request = format!(
            "GET /x HTTP/1.1\r\nHost: {label}.sandstorm.test:{}\r\nX-Forwarded-User: forged\r\nConnection: close\r\n\r\n",
            proxy.addr.port()
        );
        let answer = raw(&proxy, request.as_bytes());
        assert_eq!(status_of(&answer), expected, "{class} ({label}): {answer}");
        if expected == 200 {
            let seen = upstream.seen().pop().unwrap();
            assert!(seen.header("x-forwarded-user").is_none(), "{class}: passes with no identity at all");
        }
    }
    // A token in the path (`/.sandstorm-token/<token>/…`, for clients that cannot send headers)
    // is read by Sandstorm on its API hosts, which pass with the path intact; on the main host
    // the same path is the shell's, and stays ours to guard.
    let token_path = "/.sandstorm-token/RfNqni4FEHXkWC5B8v6t/connect";
    let request = format!(
        "GET {token_path} HTTP/1.1\r\nHost: api-0123456789abcdef0123456789abcdef.sandstorm.test:{}\r\nConnection: close\r\n\r\n",
        proxy.addr.port()
    );
    assert_eq!(status_of(&raw(&proxy, request.as_bytes())), 200);
    assert_eq!(upstream.seen().pop().unwrap().path, token_path);
    let request = format!("GET {token_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&raw(&proxy, request.as_bytes())), 401);
    // The shell on the main host is ours to guard, its DDP WebSocket included.
    assert_eq!(status_of(&raw(&proxy, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")), 401);
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let mut request = format!("ws://{}/ws", proxy.addr).into_client_request().unwrap();
    request.headers_mut().insert("cookie", browser.cookie_header(&proxy.url("/")).unwrap().parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("the shell's WebSocket, signed in");
    futures_util::SinkExt::send(&mut ws, "ping".into()).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "ping");
    // And a grain's WebSocket passes without our session (Sandstorm's own guards it).
    let mut grain = format!("ws://{}/ws", proxy.addr).into_client_request().unwrap();
    grain.headers_mut().insert(
        "host",
        format!("ui-0123456789abcdef0123456789abcdef.sandstorm.test:{}", proxy.addr.port()).parse().unwrap(),
    );
    let (mut grain_ws, _) = tokio_tungstenite::connect_async(grain).await.expect("a grain's WebSocket");
    futures_util::SinkExt::send(&mut grain_ws, "hello".into()).await.unwrap();
    assert_eq!(grain_ws.next().await.unwrap().unwrap().into_text().unwrap().as_str(), "hello");
}
