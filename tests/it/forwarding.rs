//! What crosses the proxy, in both directions: identity and forwarding headers, cookies, bodies
//! of any size, WebSockets, HTTP/2 and TLS, and the answers when the upstream fails.

use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use crate::harness::{ALICE, Browser, SelfSigned, peak_rss_kib, proxy};
use crate::upstream::{Upstream, pattern_byte};

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_are_the_proxys_own_and_host_is_kept() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    // A jar-less client, so the Cookie header is exactly the one written here.
    let session = browser.cookie_header(&proxy.url("/")).unwrap();
    reqwest::Client::new()
        .get(proxy.url("/x"))
        .header("x-forwarded-for", "10.9.9.9")
        .header("x-real-ip", "10.9.9.9")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .header("forwarded", "for=10.9.9.9")
        .header("cookie", format!("app_session=keep-me; {session}"))
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "connection-specific")
        .send()
        .await
        .unwrap();
    let seen = upstream.seen().pop().unwrap();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-host"), Some(proxy.addr.to_string().as_str()));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("host"), Some(proxy.addr.to_string().as_str()), "Host is forwarded verbatim");
    assert!(seen.header("forwarded").is_none());
    assert!(seen.header("x-hop").is_none(), "headers named in Connection are hop-by-hop");
    let cookie = seen.header("cookie").unwrap();
    assert!(cookie.contains("app_session=keep-me"), "the app's own cookies pass");
    assert!(!cookie.contains("portcullis"), "ours do not: {cookie}");
}

#[tokio::test(flavor = "multi_thread")]
async fn trusted_proxies_may_pass_on_the_client_address() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("trusted_proxies = [\"127.0.0.0/8\"]").start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    browser
        .http
        .get(proxy.url("/x"))
        .header("x-forwarded-for", "198.51.100.4")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let seen = upstream.seen().pop().unwrap();
    assert_eq!(seen.header("x-forwarded-for"), Some("198.51.100.4, 127.0.0.1"));
    assert_eq!(seen.header("x-real-ip"), Some("198.51.100.4"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_method_is_forwarded_and_the_upstream_cannot_plant_our_cookie() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    for method in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let request = browser.http.request(method.clone(), proxy.url("/resource"));
        // GET and HEAD without content (one with content is refused: attacks/requests.rs).
        let request = if method == "GET" || method == "HEAD" { request } else { request.body("payload") };
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{method}");
        assert_eq!(upstream.seen().pop().unwrap().method, method.as_str());
    }
    let planted = browser.http.get(proxy.url("/plant-cookie")).send().await.unwrap();
    let cookies: Vec<_> =
        planted.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert_eq!(cookies, vec!["app_pref=dark; Path=/"]);
    assert_eq!(browser.http.get(proxy.url("/still-in")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn websockets_pass_after_login_and_are_refused_before() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let url = format!("ws://{}/ws", proxy.addr);

    let refused = tokio_tungstenite::connect_async(url.as_str()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected a 401 handshake, got {other:?}"),
    }
    assert_eq!(upstream.count(), 0);

    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let mut request = url.as_str().into_client_request().unwrap();
    request.headers_mut().insert("cookie", browser.cookie_header(&proxy.url("/")).unwrap().parse().unwrap());
    // Browsers send `Connection: keep-alive, Upgrade`; that is an upgrade too.
    request.headers_mut().insert("connection", "keep-alive, Upgrade".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
    for text in ["hello", "through the gate"] {
        ws.send(Message::text(text)).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(vec![0u8, 1, 2, 255]));
    assert_eq!(upstream.seen().pop().unwrap().header("x-forwarded-user"), Some("alice"));
}

const BIG: u64 = 256 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn large_bodies_stream_both_ways_in_bounded_memory() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;

    // Upload: generated chunk by chunk, never held whole by the client either.
    const CHUNK: u64 = 1024 * 1024;
    let chunks = futures_util::stream::iter(
        (0..BIG / CHUNK)
            .map(|c| Ok::<_, std::io::Error>((c * CHUNK..(c + 1) * CHUNK).map(pattern_byte).collect::<Vec<u8>>())),
    );
    let mut expected = Sha256::new();
    for c in 0..BIG / CHUNK {
        expected.update((c * CHUNK..(c + 1) * CHUNK).map(pattern_byte).collect::<Vec<u8>>());
    }
    let expected: String = expected.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let response =
        browser.http.put(proxy.url("/upload")).body(reqwest::Body::wrap_stream(chunks)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let result: serde_json::Value = response.json().await.unwrap();
    assert_eq!(result["bytes"], BIG);
    assert_eq!(result["sha256"], expected.as_str());

    // Download.
    let mut download = browser.http.get(proxy.url(&format!("/download?bytes={BIG}"))).send().await.unwrap();
    assert_eq!(download.status(), 200);
    let mut offset = 0u64;
    while let Some(chunk) = download.chunk().await.unwrap() {
        for byte in chunk.iter() {
            assert_eq!(*byte, pattern_byte(offset), "byte {offset}");
            offset += 1;
        }
    }
    assert_eq!(offset, BIG);

    // Had either body been buffered, the proxy would have held 256 MiB at once.
    let peak = peak_rss_kib(proxy.pid());
    assert!(peak < 96 * 1024, "proxy peak RSS {peak} KiB for 256 MiB bodies");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_upstream_gives_502_and_a_slow_one_504() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[proxy]\nresponse_timeout = \"1s\"").start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;

    let slow = browser.navigate(&proxy.url("/slow")).await;
    assert_eq!(slow.status(), 504);
    assert!(slow.text().await.unwrap().contains("taking too long"));

    upstream.stop();
    let down = browser.navigate(&proxy.url("/anything")).await;
    assert_eq!(down.status(), 502);
    assert!(down.text().await.unwrap().contains("not answering"));
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_clients_are_served() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let cookie = browser.cookie_header(&proxy.url("/")).unwrap();
    let response = h2.get(proxy.url("/over-h2")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let seen = upstream.seen().pop().unwrap();
    assert_eq!(seen.path, "/over-h2");
    assert_eq!(seen.header("host"), Some(proxy.addr.to_string().as_str()), ":authority becomes Host");
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));

    // A GET that ends with an empty DATA frame, not with its HEADERS, carries no content, and
    // passes; one that declares content is refused, as over HTTP/1.1.
    let empty = futures_util::stream::empty::<Result<bytes::Bytes, std::io::Error>>();
    let ended_late = h2.get(proxy.url("/ended-late")).header("cookie", &cookie).body(reqwest::Body::wrap_stream(empty));
    assert_eq!(ended_late.send().await.unwrap().status(), 200);
    let with_content = h2.get(proxy.url("/with-content")).header("cookie", &cookie).body("x").send().await.unwrap();
    assert_eq!(
        (with_content.version(), with_content.status()),
        (reqwest::Version::HTTP_2, reqwest::StatusCode::BAD_REQUEST)
    );
    // Content sent without a length is not passed on, whatever the method's letter case.
    for method in ["GET", "get", "hEaD"] {
        let hidden = "GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Forwarded-User: admin\r\n\r\n";
        let data = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(hidden))]);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let request = h2.request(method.clone(), proxy.url("/upload")).header("cookie", &cookie);
        let answer = request.body(reqwest::Body::wrap_stream(data)).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{method}");
        if method.as_str().eq_ignore_ascii_case("get") {
            assert!(answer.text().await.unwrap().starts_with("{\"bytes\":0,"), "{method}: no byte of it upstream");
        }
        let seen = upstream.seen().pop().unwrap();
        assert!(seen.header("transfer-encoding").is_none(), "{method}: {:?}", seen.headers);
    }
    let paths: Vec<String> = upstream.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/over-h2", "/ended-late", "/upload", "/upload", "/upload"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_listener_negotiates_h2_and_sets_host_prefixed_secure_cookies() {
    let upstream = Upstream::start().await;
    let certificate = SelfSigned::new();
    let proxy = proxy(&upstream.url()).https().toml(&certificate.toml()).start();
    let base = format!("https://{}", proxy.addr);
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(certificate.pem().as_bytes()).unwrap())
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client.get(format!("{base}/.portcullis/login")).send().await.unwrap();
    assert_eq!(page.version(), reqwest::Version::HTTP_2, "ALPN picks h2");
    let csrf_cookie = page.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(csrf_cookie.starts_with("__Host-portcullis-csrf=") && csrf_cookie.contains("Secure"), "{csrf_cookie}");
    let csrf = crate::harness::form_field(&page.text().await.unwrap(), "csrf").unwrap();
    let login = client
        .post(format!("{base}/.portcullis/login"))
        .header("origin", &base)
        .form(&[("username", "alice"), ("password", ALICE.password), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let session_cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(session_cookie.starts_with("__Host-portcullis=") && session_cookie.contains("Secure"), "{session_cookie}");
    let through = client.get(format!("{base}/secure-page")).send().await.unwrap();
    assert_eq!(through.status(), 200);
    let seen = upstream.seen().pop().unwrap();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert!(!seen.header("cookie").unwrap_or("").contains("__Host-portcullis"));
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstreams_are_verified_against_the_configured_ca() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let upstream = Upstream::start_tls(&certified.cert.pem(), &certified.signing_key.serialize_pem()).await;
    let url = format!("https://localhost:{}", upstream.addr.port());
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca, certified.cert.pem()).unwrap();

    let trusting = proxy(&url).toml(&format!("[proxy]\nupstream_ca_file = \"{}\"", ca.display())).start();
    let browser = Browser::new();
    browser.login(&trusting, &ALICE).await;
    assert_eq!(browser.navigate(&trusting.url("/over-tls")).await.status(), 200);
    assert_eq!(upstream.seen().pop().unwrap().header("x-forwarded-user"), Some("alice"));

    // A different CA: the upstream's certificate is not trusted, so nothing is sent to it.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let wrong_ca = dir.path().join("other-ca.pem");
    std::fs::write(&wrong_ca, other.cert.pem()).unwrap();
    let distrusting = proxy(&url).toml(&format!("[proxy]\nupstream_ca_file = \"{}\"", wrong_ca.display())).start();
    let before = upstream.count();
    let browser = Browser::new();
    browser.login(&distrusting, &ALICE).await;
    assert_eq!(browser.navigate(&distrusting.url("/over-tls")).await.status(), 502);
    assert_eq!(upstream.count(), before);
}
