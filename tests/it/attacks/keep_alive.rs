//! Keep-alive connections between requests. An HTTP/1.1 connection quiet for a moment is parked
//! (hyper's buffers freed, only the socket watched) and taken up again when the client speaks:
//! whatever the client does across that moment (pausing mid-request, pipelining, leaving a body
//! unread) must be answered exactly as on a connection never parked. The pauses below are the
//! client's behaviour under test, longer than the proxy's 100 ms before parking.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Proxy, SelfSigned, proxy};
use crate::upstream::Upstream;

/// Longer than the quiet moment after which the proxy parks a connection.
const PAUSE: Duration = Duration::from_millis(300);

const LOGIN_PAGE: &[u8] = b"GET /.portcullis/login HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// Reads one response (its head and a `content-length` body): status and body. The proxy must
/// not be closing the connection.
async fn response<S: AsyncRead + Unpin>(stream: &mut S, step: &str) -> (u16, String) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut byte)).await;
        read.unwrap_or_else(|_| panic!("{step}: an answer within 10 s"))
            .unwrap_or_else(|e| panic!("{step}: the connection stays open for the answer: {e}"));
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap();
    let length = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .expect("the proxy's answers carry a content-length");
    assert!(!head.to_ascii_lowercase().contains("connection: close"), "{step}: the connection is kept alive");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// One client's session on one connection, with pauses: the first request split across a pause,
/// a request whole after a pause, another split, and two pipelined in one write after a pause.
/// Every answer keeps the connection alive.
async fn pause_between_and_within_requests<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    // The first request in pieces, as a slow network may deliver it.
    stream.write_all(&LOGIN_PAGE[..30]).await.unwrap();
    tokio::time::sleep(PAUSE).await;
    stream.write_all(&LOGIN_PAGE[30..]).await.unwrap();
    let (status, body) = response(stream, "first request").await;
    assert_eq!(status, 200);
    assert!(body.contains("<form"), "the whole sign-in page");

    tokio::time::sleep(PAUSE).await;
    stream.write_all(LOGIN_PAGE).await.unwrap();
    let (status, again) = response(stream, "after a pause").await;
    assert_eq!((status, again.len()), (200, body.len()), "the same page after a pause");

    // Part of a request, a pause (the connection is quiet with a request half-read), the rest.
    tokio::time::sleep(PAUSE).await;
    stream.write_all(&LOGIN_PAGE[..20]).await.unwrap();
    tokio::time::sleep(PAUSE).await;
    stream.write_all(&LOGIN_PAGE[20..]).await.unwrap();
    let (status, split) = response(stream, "split across a pause").await;
    assert_eq!((status, split.len()), (200, body.len()), "a request split across a pause");

    // Two requests in one write: both answered, in order.
    tokio::time::sleep(PAUSE).await;
    let mut both = LOGIN_PAGE.to_vec();
    both.extend_from_slice(b"GET /wiki HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(&both).await.unwrap();
    assert_eq!(response(stream, "first pipelined").await.0, 200, "the first of two pipelined requests");
    assert_eq!(response(stream, "second pipelined").await.0, 401, "then the second: the upstream without a session");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keep_alive_connection_is_answered_whole_across_pauses() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).env("RUST_LOG", "info,portcullis::server=debug").start();
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    pause_between_and_within_requests(&mut stream).await;
    // The pauses did park it: after each of the first three answers (not mid-request).
    assert!(parked_at_least(&proxy, 3), "parked {} times", parked_count(&proxy));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keep_alive_tls_connection_is_answered_whole_across_pauses() {
    let upstream = Upstream::start().await;
    let certificate = SelfSigned::new();
    let proxy = proxy(&upstream.url())
        .https()
        .toml(&certificate.toml())
        .env("RUST_LOG", "info,portcullis::server=debug")
        .start();
    let connector = certificate.connector(&[b"http/1.1"]);
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("the handshake completes");
    pause_between_and_within_requests(&mut tls).await;
    assert!(parked_at_least(&proxy, 3), "a TLS session is parked too");
}

/// Whether the proxy has logged parking a connection `times` times (the log is read by another
/// thread, so a line written before an answer may reach the test after it).
fn parked_at_least(proxy: &Proxy, times: usize) -> bool {
    proxy.stderr.wait_for_count(0, times, |line| line.contains("connection parked"))
}

/// How many times the proxy logged parking a connection.
fn parked_count(proxy: &Proxy) -> usize {
    proxy.stderr.all().iter().filter(|line| line.contains("connection parked")).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_left_unread_is_never_taken_for_a_request_after_a_pause() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // A body of 120 bytes announced, 20 sent: the proxy answers without a session and without
    // reading the body. After a pause, the rest of the body is a request of its own.
    let smuggled = format!("{:x<100}", "GET /.portcullis/login HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    stream
        .write_all(b"POST /wiki HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 120\r\n\r\n01234567890123456789")
        .await
        .unwrap();
    assert_eq!(response(&mut stream, "unread body").await.0, 401);
    tokio::time::sleep(PAUSE).await;
    // The proxy may already have closed the connection; a failed write is part of the answer.
    let _ = stream.write_all(smuggled.as_bytes()).await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    let closed = matches!(read, Ok(Ok(_)) | Ok(Err(_)));
    assert!(closed, "the connection is closed, not kept waiting for the body");
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/1.1"),
        "the rest of a body is never answered as a request: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

/// A sign-in form from our own origin (so the proxy reads it), framed by its length or in
/// chunks, without the form's token: read whole, and refused.
fn form_post(proxy: &Proxy, chunked: bool) -> String {
    let form = "username=alice&password=guess";
    let head = format!(
        "POST /.portcullis/login HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://{}\r\nContent-Type: application/x-www-form-urlencoded\r\n",
        proxy.addr
    );
    if chunked {
        let (first, second) = form.split_at(9);
        format!(
            "{head}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
            first.len(),
            second.len()
        )
    } else {
        format!("{head}Content-Length: {}\r\n\r\n{form}", form.len())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_whose_request_bodies_were_read_to_the_end_is_parked_again() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).env("RUST_LOG", "info,portcullis::server=debug").start();
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // A form the proxy reads whole and refuses, once by length and once in chunks: each body was
    // read to its end, so the socket is at the next request's first byte, and the connection
    // may be taken back from hyper between requests, as one that carried no body is.
    for chunked in [false, true] {
        let parked = parked_count(&proxy);
        stream.write_all(form_post(&proxy, chunked).as_bytes()).await.unwrap();
        let (status, _) = response(&mut stream, "the form").await;
        assert_eq!(status, 403, "read, and refused for its missing token");
        tokio::time::sleep(PAUSE).await;
        assert!(parked_at_least(&proxy, parked + 1), "parked after the form (chunked: {chunked})");
        assert_eq!(parked_count(&proxy), parked + 1, "parked once (chunked: {chunked})");
        stream.write_all(LOGIN_PAGE).await.unwrap();
        assert_eq!(response(&mut stream, "after the form").await.0, 200, "still kept alive");
        tokio::time::sleep(PAUSE).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_with_a_body_nobody_read_is_never_parked() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).env("RUST_LOG", "info,portcullis::server=debug").start();
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // The whole body is sent, and it reads as a request. The proxy answers without a session and
    // never reads it; what hyper does with it (drain it, or end the connection) is hyper's, so
    // the socket is never taken back from hyper, and the body is never answered as a request.
    let body = "GET /.portcullis/login HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let post = format!("POST /wiki HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(post.as_bytes()).await.unwrap();
    assert_eq!(response(&mut stream, "unread body").await.0, 401);
    tokio::time::sleep(PAUSE).await;
    assert_eq!(parked_count(&proxy), 0, "never parked");
    // Whatever comes next is one answer to one request: hyper's (the body drained), or none.
    let _ = stream.write_all(b"GET /wiki HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "answered and closed, or closed");
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.matches("HTTP/1.1 ").count() <= 1, "at most one answer: {rest:?}");
    assert!(!rest.contains("HTTP/1.1 200"), "the body (the sign-in page) is never answered as a request: {rest:?}");
    assert_eq!(parked_count(&proxy), 0, "never parked");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_upgrade_keeps_its_connection_and_is_never_parked() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).env("RUST_LOG", "info,portcullis::server=debug").start();
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // Asking to upgrade (h2c, which is never allowed) and answered without a 101: hyper keeps an
    // upgrade in prospect, so the socket stays hyper's. Taken back by parking, the connection
    // used to be dropped a moment later without a word.
    let upgrade = b"GET /.portcullis/login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    stream.write_all(upgrade).await.unwrap();
    let (status, _) = response(&mut stream, "the upgrade").await;
    assert_ne!(status, 101, "h2c is never switched to");
    tokio::time::sleep(PAUSE).await;
    stream.write_all(LOGIN_PAGE).await.unwrap();
    assert_eq!(response(&mut stream, "after the upgrade").await.0, 200, "still kept alive");
    assert_eq!(parked_count(&proxy), 0, "never parked");
}
