//! The express lane (`web::express`): a signed-in GET or HEAD that opens a connection (or comes
//! after a quiet moment on one) is carried without hyper. Each test makes sure the lane served
//! what it checks (its counter in the metrics), and that what crosses is what the full path
//! would have sent.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{ALICE, Browser, Proxy, form_field, free_port, metric, proxy};
use crate::upstream::{Upstream, pattern_byte};

/// Longer than the quiet moment (100 ms) after which the proxy takes a connection back from
/// hyper: the client's behaviour under test, not a wait for the proxy.
const QUIET: Duration = Duration::from_millis(300);

/// A proxy with a metrics listener, so tests can count what the lane carried.
struct Lane {
    proxy: Proxy,
    metrics: u16,
    session: String,
}

impl Lane {
    async fn start(upstream: &str, extra: &str) -> Self {
        let metrics = free_port();
        let proxy = proxy(upstream).toml(&format!("{extra}\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"")).start();
        let browser = Browser::new();
        browser.login(&proxy, &ALICE).await;
        let session = browser.cookie_header(&proxy.url("/")).expect("signed in");
        Self { proxy, metrics, session }
    }

    /// How many requests the lane has carried.
    async fn carried(&self) -> u64 {
        metric(self.metrics, "portcullis_express_requests_total").await
    }

    /// A request on a connection of its own, with the session cookie.
    fn fresh(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.fresh_with(method, path, &self.session)
    }

    /// A request on a connection of its own, with `cookie` as its only `Cookie` header.
    fn fresh_with(&self, method: reqwest::Method, path: &str, cookie: &str) -> reqwest::RequestBuilder {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        client.request(method, self.proxy.url(path)).header("cookie", cookie)
    }
}

/// Headers a client might send to pass for someone, or to reach the upstream's connection.
fn hostile(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request
        .header("x-forwarded-user", "mallory")
        .header("x-portcullis-assertion", "forged")
        .header("remote-user", "mallory")
        .header("x-forwarded-for", "10.9.9.9")
        .header("x-forwarded-host", "evil.example")
        .header("te", "trailers")
        .header("keep-alive", "timeout=5")
        .header("x-app", "kept")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_sees_the_same_request_whichever_path_carried_it() {
    let upstream = Upstream::start().await;
    let lane = Lane::start(&upstream.url(), "").await;
    let cookie = format!("app_session=keep-me; {}", lane.session);

    let before = lane.carried().await;
    let express = hostile(lane.fresh_with(reqwest::Method::GET, "/x?q=1", &cookie)).send().await.unwrap();
    assert_eq!(express.status(), 200);
    assert_eq!(lane.carried().await, before + 1, "the lane carried it");
    let by_lane = upstream.seen().pop().unwrap();

    // `Connection: close` is the full path's: the lane never takes a request that closes.
    let full = hostile(lane.fresh_with(reqwest::Method::GET, "/x?q=1", &cookie))
        .header("connection", "close")
        .send()
        .await
        .unwrap();
    assert_eq!(full.status(), 200);
    assert_eq!(lane.carried().await, before + 1, "hyper carried it");
    let by_hyper = upstream.seen().pop().unwrap();

    assert_eq!((&by_lane.method, &by_lane.path), (&by_hyper.method, &by_hyper.path));
    assert_eq!(by_lane.headers, by_hyper.headers, "the same headers, in the same order");
    assert_eq!(by_lane.header("x-forwarded-user"), Some("alice"));
    assert_eq!(by_lane.header("x-forwarded-for"), Some("127.0.0.1"));
    assert!(by_lane.header("remote-user").is_none() && by_lane.header("te").is_none());
    assert_eq!(by_lane.header("x-app"), Some("kept"));
    assert_eq!(by_lane.header("cookie"), Some("app_session=keep-me"), "our cookie never reaches the upstream");
    let assertion = by_lane.header("x-portcullis-assertion").unwrap();
    assert_eq!(lane.proxy.verify_assertion(assertion).await["sub"], "alice");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_lane_does_not_take_is_answered_as_before() {
    let upstream = Upstream::start().await;
    let lane = Lane::start(&upstream.url(), "").await;
    let before = lane.carried().await;
    // No session, a forged one, our own pages, a body, an upgrade: none is the lane's.
    let anonymous = reqwest::Client::new().get(lane.proxy.url("/x")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let forged = lane.fresh_with(reqwest::Method::GET, "/x", "portcullis=forged").send().await.unwrap();
    assert_eq!(forged.status(), 401);
    assert!(forged.headers().get("set-cookie").is_some(), "the forged cookie is cleared");
    let page = lane.fresh(reqwest::Method::GET, "/.portcullis/account").send().await.unwrap();
    assert_eq!(page.status(), 200);
    let post = lane.fresh(reqwest::Method::POST, "/form").body("a=1").send().await.unwrap();
    assert_eq!(post.status(), 200);
    let h2c = lane
        .fresh(reqwest::Method::GET, "/tunnel")
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(h2c.status(), 200, "forwarded as a plain request");
    let tunnel = upstream.seen().pop().unwrap();
    assert!(tunnel.header("upgrade").is_none() && tunnel.header("http2-settings").is_none());
    assert_eq!(lane.carried().await, before, "the lane took none of them");
    let paths: Vec<String> = upstream.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/form", "/tunnel"], "only the POST and the refused upgrade reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_out_session_is_refused_on_the_lane_at_once() {
    let upstream = Upstream::start().await;
    let lane = Lane::start(&upstream.url(), "").await;
    let browser = Browser::new();
    browser.login(&lane.proxy, &ALICE).await;
    let cookie = browser.cookie_header(&lane.proxy.url("/")).unwrap();
    let before = lane.carried().await;
    assert_eq!(lane.fresh_with(reqwest::Method::GET, "/in", &cookie).send().await.unwrap().status(), 200);
    assert_eq!(lane.carried().await, before + 1);

    let confirm = browser.navigate(&lane.proxy.url("/.portcullis/logout")).await.text().await.unwrap();
    let csrf = form_field(&confirm, "csrf").unwrap();
    let out = browser
        .http
        .post(lane.proxy.url("/.portcullis/logout"))
        .header("origin", lane.proxy.origin())
        .form(&[("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 200);
    let seen = upstream.count();
    let after = lane.fresh_with(reqwest::Method::GET, "/in", &cookie).send().await.unwrap();
    assert_eq!(after.status(), 401);
    assert_eq!(upstream.count(), seen, "nothing reached the upstream");
    assert_eq!(lane.carried().await, before + 1);
    // The other session, made at the start, goes on.
    assert_eq!(lane.fresh(reqwest::Method::GET, "/in").send().await.unwrap().status(), 200);
}

/// Reads one answer off `stream`: status, head (lower case) and body, framed by its length or
/// by chunks.
async fn answer<S: AsyncRead + Unpin>(stream: &mut S, buffer: &mut Vec<u8>, to_head: bool) -> (u16, String, Vec<u8>) {
    let fill = async |buffer: &mut Vec<u8>, stream: &mut S| {
        let mut more = [0u8; 16 * 1024];
        let n =
            tokio::time::timeout(Duration::from_secs(10), stream.read(&mut more)).await.expect("an answer").unwrap();
        assert!(n > 0, "the proxy closed the connection");
        buffer.extend_from_slice(&more[..n]);
    };
    let end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        fill(buffer, stream).await;
    };
    let head = String::from_utf8(buffer.drain(..end).collect()).unwrap().to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let length =
        head.lines().find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()));
    let mut body = Vec::new();
    if to_head || head.starts_with("http/1.1 304") || head.starts_with("http/1.1 204") {
    } else if let Some(length) = length {
        while buffer.len() < length {
            fill(buffer, stream).await;
        }
        body = buffer.drain(..length).collect();
    } else {
        assert!(head.contains("transfer-encoding: chunked"), "framed: {head}");
        loop {
            let line_end = loop {
                if let Some(at) = buffer.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                fill(buffer, stream).await;
            };
            let size = usize::from_str_radix(std::str::from_utf8(&buffer[..line_end]).unwrap(), 16).unwrap();
            while buffer.len() < line_end + 2 + size + 2 {
                fill(buffer, stream).await;
            }
            body.extend_from_slice(&buffer[line_end + 2..line_end + 2 + size]);
            assert_eq!(&buffer[line_end + 2 + size..line_end + 4 + size], b"\r\n");
            buffer.drain(..line_end + 4 + size);
            if size == 0 {
                break;
            }
        }
    }
    (status, head, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_answered_in_order_and_a_body_hands_the_connection_over_and_back() {
    let upstream = Upstream::start().await;
    let lane = Lane::start(&upstream.url(), "").await;
    let before = lane.carried().await;
    let host = lane.proxy.addr;
    let session = &lane.session;
    let mut stream = TcpStream::connect(lane.proxy.addr).await.unwrap();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: {session}\r\n\r\n");
    // Two in one write, and a HEAD.
    let two = format!("{}{}", get("/one"), get("/two"))
        + &format!("HEAD /three HTTP/1.1\r\nHost: {host}\r\nCookie: {session}\r\n\r\n");
    stream.write_all(two.as_bytes()).await.unwrap();
    let mut buffer = Vec::new();
    for path in ["/one", "/two"] {
        let (status, _, body) = answer(&mut stream, &mut buffer, false).await;
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&body).contains(&format!("\"path\":\"{path}\"")), "{path} answered in order");
    }
    let (status, head, body) = answer(&mut stream, &mut buffer, true).await;
    assert!(status == 200 && body.is_empty() && head.contains("content-length"), "HEAD: a length, no body");
    assert_eq!(lane.carried().await, before + 3);

    // A body: not the lane's. hyper reads the same bytes and answers on the same connection.
    let post = format!("POST /four HTTP/1.1\r\nHost: {host}\r\nCookie: {session}\r\nContent-Length: 5\r\n\r\nhello");
    stream.write_all(post.as_bytes()).await.unwrap();
    let (status, _, body) = answer(&mut stream, &mut buffer, false).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("\"path\":\"/four\""));
    stream.write_all(get("/five").as_bytes()).await.unwrap();
    let (status, _, body) = answer(&mut stream, &mut buffer, false).await;
    assert!(status == 200 && String::from_utf8_lossy(&body).contains("\"path\":\"/five\""));
    assert_eq!(lane.carried().await, before + 3, "hyper carried the body and what came right after it");

    // Each body was read to its end (one by length, one in chunks with a trailer, which hyper's
    // client stops at), so after a quiet moment the connection comes back to the lane, as a
    // browser's does after it posts a form.
    let chunked = format!(
        "POST /six HTTP/1.1\r\nHost: {host}\r\nCookie: {session}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 3\r\n\r\n"
    );
    stream.write_all(chunked.as_bytes()).await.unwrap();
    assert_eq!(answer(&mut stream, &mut buffer, false).await.0, 200);
    for path in ["/seven", "/eight"] {
        tokio::time::sleep(QUIET).await;
        stream.write_all(get(path).as_bytes()).await.unwrap();
        let (status, _, body) = answer(&mut stream, &mut buffer, false).await;
        assert!(status == 200 && String::from_utf8_lossy(&body).contains(&format!("\"path\":\"{path}\"")));
    }
    assert_eq!(lane.carried().await, before + 5, "the lane carried what came after a quiet moment");
    let paths: Vec<String> = upstream.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/one", "/two", "/three", "/four", "/five", "/six", "/seven", "/eight"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_bodies_and_planted_cookies_on_the_lane() {
    let upstream = Upstream::start().await;
    let lane = Lane::start(&upstream.url(), "").await;
    let before = lane.carried().await;

    // A body the upstream streams in chunks of its own: passed on whole.
    let bytes = 3 * 1024 * 1024 + 17;
    let download = lane.fresh(reqwest::Method::GET, &format!("/download?bytes={bytes}")).send().await.unwrap();
    assert_eq!(download.status(), 200);
    let body = download.bytes().await.unwrap();
    assert_eq!(body.len(), bytes);
    assert!(body.iter().enumerate().all(|(i, b)| *b == pattern_byte(i as u64)), "every byte as sent");

    let planted = lane.fresh(reqwest::Method::GET, "/plant-cookie").send().await.unwrap();
    let cookies: Vec<_> = planted.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(cookies, vec!["app_pref=dark; Path=/"], "the upstream cannot set our cookie");
    assert_eq!(lane.carried().await, before + 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_upstream_gets_504_and_a_dead_one_502_on_the_lane() {
    let upstream = Upstream::start().await;
    let lane = Lane::start(&upstream.url(), "[proxy]\nresponse_timeout = \"1s\"").await;
    let slow = lane.fresh(reqwest::Method::GET, "/slow").send().await.unwrap();
    assert_eq!(slow.status(), 504);
    assert_eq!(slow.headers()["connection"], "close");
    assert!(slow.text().await.unwrap().contains("taking too long"));
    upstream.stop();
    let down = lane.fresh(reqwest::Method::GET, "/anything").send().await.unwrap();
    assert_eq!(down.status(), 502);
    assert!(down.text().await.unwrap().contains("not answering"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_the_client_breaks_off_is_still_in_the_access_log() {
    let upstream = Upstream::start().await;
    let lane = Lane::start(&upstream.url(), "").await;
    let before = lane.carried().await;
    let mark = lane.proxy.stderr.len();
    let mut stream = TcpStream::connect(lane.proxy.addr).await.unwrap();
    let get = format!(
        "GET /download?bytes=50000000 HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\n\r\n",
        lane.proxy.addr, lane.session
    );
    stream.write_all(get.as_bytes()).await.unwrap();
    let mut some = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < 1024 * 1024 {
        got += stream.read(&mut some).await.unwrap();
    }
    // Gone with 49 MB unread: as a client pulling what it wants and leaving.
    drop(stream);
    let logged = lane.proxy.stderr.wait_for(mark, |l| l.contains("portcullis::access") && l.contains("/download"));
    let logged = logged.expect("the request was logged");
    assert!(logged.contains("200") && logged.contains("alice"), "{logged}");
    assert_eq!(lane.carried().await, before + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_on_the_lane_carry_a_date_as_on_the_full_path() {
    // An upstream that sends no Date of its own.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                while crate::attacks::request_head(&mut stream).await.is_some() {
                    if stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let lane = Lane::start(&format!("http://{addr}"), "").await;
    let before = lane.carried().await;
    let by_lane = lane.fresh(reqwest::Method::GET, "/").send().await.unwrap();
    assert_eq!(lane.carried().await, before + 1);
    let by_hyper = lane.fresh(reqwest::Method::GET, "/").header("connection", "close").send().await.unwrap();
    assert_eq!(lane.carried().await, before + 1);
    for answer in [by_lane, by_hyper] {
        let date = answer.headers().get("date").expect("a Date").to_str().unwrap().to_string();
        assert!(httpdate::parse_http_date(&date).is_ok(), "{date}");
        assert_eq!(answer.text().await.unwrap(), "ok");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_over_the_limit_is_never_the_lanes_even_when_it_comes_whole() {
    let upstream = Upstream::start().await;
    let lane = Lane::start(&upstream.url(), "[limits]\nmax_header_bytes = 8192").await;
    let before = lane.carried().await;
    let mut stream = TcpStream::connect(lane.proxy.addr).await.unwrap();
    let padding = "a".repeat(12 * 1024);
    let get = format!(
        "GET /big HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\nX-Padding: {padding}\r\n\r\n",
        lane.proxy.addr, lane.session
    );
    stream.write_all(get.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(lane.carried().await, before);
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rest_of_a_body_the_upstream_never_read_is_never_a_request_on_the_lane() {
    let upstream = Upstream::start().await;
    let lane = Lane::start(&upstream.url(), "").await;
    let before = lane.carried().await;
    let (host, session) = (lane.proxy.addr, &lane.session);
    let mut stream = TcpStream::connect(lane.proxy.addr).await.unwrap();
    // The upstream answers before reading the body; the body, sent after a quiet moment, is a
    // signed-in GET the lane would carry if the connection had been taken back from hyper.
    let hidden = format!("GET /smuggled HTTP/1.1\r\nHost: {host}\r\nCookie: {session}\r\n\r\n");
    let head = format!(
        "POST /early HTTP/1.1\r\nHost: {host}\r\nCookie: {session}\r\nContent-Length: {}\r\n\r\n",
        hidden.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buffer = Vec::new();
    assert_eq!(answer(&mut stream, &mut buffer, false).await.0, 401, "the upstream's early answer");
    tokio::time::sleep(QUIET).await;
    let _ = stream.write_all(hidden.as_bytes()).await;
    tokio::time::sleep(QUIET).await;
    let after = format!("GET /after HTTP/1.1\r\nHost: {host}\r\nCookie: {session}\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(after.as_bytes()).await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "answered and closed, or closed");
    let rest = String::from_utf8_lossy(&buffer).into_owned() + &String::from_utf8_lossy(&rest);
    assert!(rest.matches("HTTP/1.1 ").count() <= 1, "at most one more answer: {rest}");
    assert!(!rest.contains("/smuggled"), "the body is never answered as a request: {rest}");
    let paths: Vec<String> = upstream.seen().into_iter().map(|s| s.path).collect();
    assert!(!paths.iter().any(|p| p == "/smuggled"), "the upstream never saw it as a request: {paths:?}");
    assert_eq!(lane.carried().await, before, "the connection never came back to the lane");
}

/// Browsers send all their cookies in one line, so an application's cookie that is not text
/// (`app=café`) sits beside ours: the session is still read, on the lane and on the full path
/// (an attack pass found such a line signed its user out of every request), and ours still
/// never reaches the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn a_cookie_that_is_not_text_beside_ours_does_not_hide_the_session() {
    let upstream = Upstream::start().await;
    let lane = Lane::start(&upstream.url(), "").await;
    let token = lane.session.split_once('=').unwrap().1.to_string();
    let line = format!("app=caf\u{e9}; {}", lane.session);
    let line = reqwest::header::HeaderValue::from_bytes(line.as_bytes()).unwrap();
    let before = lane.carried().await;
    for close in [false, true] {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let mut request = client.get(lane.proxy.url("/x")).header("cookie", line.clone());
        if close {
            // The full path's: the lane never takes a request that closes.
            request = request.header("connection", "close");
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), 200, "signed in (connection: close = {close})");
    }
    assert_eq!(lane.carried().await, before + 1, "one by the lane, one by hyper");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    for request in seen {
        assert_eq!(request.header("x-forwarded-user"), Some("alice"));
        assert!(!format!("{:?}", request.headers).contains(&token), "our cookie stays with us");
    }
}
