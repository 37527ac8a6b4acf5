//! Connections that outlive the request the gate checked: protocol upgrades and methods that turn
//! the proxy into a tunnel.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{raw, status_of};
use crate::harness::{ALICE, Browser, Proxy, proxy};
use crate::hypercorn::Hypercorn;
use crate::upstream::Upstream;

/// The h2c upgrade request curl sends with `--http2` to a cleartext URL (RFC 7540 §3.2).
fn h2c_upgrade(host: &str, cookie: &str, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
}

/// Sends `request` and reads the response head and as much body as arrives before the peer
/// closes or goes quiet.
fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        // A complete JSON body, or a 101 (whose next bytes are HTTP/2 frames, never a close).
        if text.trim_end().ends_with('}') || text.starts_with("HTTP/1.1 101") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2c_upgrade_cannot_open_a_tunnel_past_the_gate() {
    let Some(hypercorn) = Hypercorn::start("an_h2c_upgrade_cannot_open_a_tunnel_past_the_gate") else { return };
    // The upstream really does switch to HTTP/2 for anyone who asks: the hole this closes.
    let direct = exchange(hypercorn.addr, &h2c_upgrade("upstream", "x=1", "/"));
    assert!(direct.starts_with("HTTP/1.1 101"), "Hypercorn accepts h2c: {direct}");

    let proxy = proxy(&hypercorn.url()).start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let cookie = browser.cookie_header(&proxy.url("/")).unwrap();
    let host = proxy.addr.to_string();
    for offered in ["h2c", "websocket, h2c", "H2C"] {
        let request = h2c_upgrade(&host, &cookie, "/tunnel").replace("Upgrade: h2c", &format!("Upgrade: {offered}"));
        let answer = exchange(proxy.addr, &request);
        assert!(answer.starts_with("HTTP/1.1 200"), "{offered}: not switched, answered as a plain request: {answer}");
        let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
        let seen: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(seen["http_version"], "1.1", "{offered}");
        for header in ["upgrade", "http2-settings", "connection"] {
            assert!(seen["headers"].get(header).is_none(), "{offered}: {header} reached the upstream: {seen}");
        }
        assert_eq!(seen["headers"]["x-forwarded-user"], "alice");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_and_trace_are_refused_with_or_without_a_session() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let cookie = browser.cookie_header(&proxy.url("/")).unwrap();
    let requests = [
        "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n".to_string(),
        format!("CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nCookie: {cookie}\r\n"),
        "TRACE / HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_string(),
        format!("TRACE / HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n"),
        format!("TRACE /.portcullis/login HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n"),
        // Other spellings: servers that fold case, and IIS's TRACK.
        format!("trace / HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n"),
        format!("TRACK / HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n"),
        format!("connect 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nCookie: {cookie}\r\n"),
    ];
    for request in requests {
        let answer = raw(&proxy, format!("{request}Connection: close\r\n\r\n").as_bytes());
        assert_eq!(status_of(&answer), 405, "{request}");
        assert!(!answer.contains(&cookie), "TRACE never echoes the cookie back");
    }
    assert_eq!(upstream.count(), 0, "neither reached the upstream");
}

/// Opens the upstream's WebSocket echo with this browser's cookie.
async fn websocket(
    proxy: &Proxy,
    browser: &Browser,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut request = format!("ws://{}/ws", proxy.addr).into_client_request().unwrap();
    request.headers_mut().insert("cookie", browser.cookie_header(&proxy.url("/")).unwrap().parse().unwrap());
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_websocket_is_closed_when_the_2fa_policy_no_longer_lets_its_session_in() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let mut ws = websocket(&proxy, &browser).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("still here"), "the tunnel works");

    // The operator tightens the policy: alice has only a password.
    let mark = proxy.stderr.len();
    let config = std::fs::read_to_string(proxy.config_path()).unwrap();
    std::fs::write(proxy.config_path(), format!("{config}\n[mfa]\npolicy = \"required\"\n")).unwrap();
    proxy.stderr.wait_for(mark, |l| l.contains("configuration reloaded")).expect("the proxy reloads proxy.toml");

    // Closed within the re-check interval (2 s), though no new request was made.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return true,
                Some(Ok(message)) if message.is_close() => return true,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "a password-only WebSocket outlived a policy that requires 2FA");
}

/// An upstream that answers every request with `101 Switching Protocols` to `protocol`, asked or
/// not, and keeps the connection open (a broken or hostile application).
async fn switching_upstream(protocol: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if super::request_head(&mut stream).await.is_none() {
                    return;
                }
                let answer =
                    format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: {protocol}\r\nConnection: upgrade\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_cannot_switch_protocols_nobody_asked_for() {
    let addr = switching_upstream("h2c").await;
    // A short idle limit, so the answers' connections end soon after they are read.
    let proxy = proxy(&format!("http://{addr}")).toml("[limits]\nheader_read_timeout = \"1s\"").start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let cookie = browser.cookie_header(&proxy.url("/")).unwrap();

    // A plain request answered with 101: there is nothing to switch, so nothing is relayed.
    let plain = raw(
        &proxy,
        format!("GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(status_of(&plain), 502, "{plain}");

    // A WebSocket request answered with a switch to h2c: not what was offered, so no tunnel.
    let websocket = raw(
        &proxy,
        format!(
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(status_of(&websocket), 502, "{websocket}");
}
