//! Holding connections without using them: sockets that never speak, HTTP/2 kept open with
//! pings, a quiet TLS session, a client that stops reading, and WebSockets past the connection
//! cap. Each would otherwise let one client fill `limits.max_connections` for everyone.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::http2::{H2_PING, H2_PREFACE, h2_get};
use super::{raw, status_of};
use crate::harness::{ALICE, Browser, Proxy, SelfSigned, proxy};
use crate::upstream::Upstream;

/// Generous against a 1 s limit, tight against "never".
pub(super) const CUT_OFF_WITHIN: Duration = Duration::from_secs(10);

/// Reads until the proxy closes the connection; returns how long that took from `since`.
pub(super) fn closed_after(stream: &mut TcpStream, since: Instant) -> Duration {
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return since.elapsed(),
            Ok(_) => continue,
        }
    }
}

/// Sends PING frames until the connection breaks (the proxy closed it).
fn keep_pinging(mut stream: TcpStream) {
    std::thread::spawn(move || {
        while stream.write_all(H2_PING).is_ok() {
            std::thread::sleep(Duration::from_millis(200));
        }
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_with_nothing_in_flight_are_closed_whatever_their_protocol() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[limits]\nheader_read_timeout = \"1s\"").start();

    // A socket that never says anything.
    let mut silent = TcpStream::connect(proxy.addr).unwrap();
    assert!(closed_after(&mut silent, Instant::now()) < CUT_OFF_WITHIN, "a silent socket is closed");

    // The HTTP/2 preface and nothing more, then pings to look alive.
    let mut preface = TcpStream::connect(proxy.addr).unwrap();
    preface.write_all(H2_PREFACE).unwrap();
    keep_pinging(preface.try_clone().unwrap());
    assert!(closed_after(&mut preface, Instant::now()) < CUT_OFF_WITHIN, "a preface kept alive with pings");

    // One real HTTP/2 request, answered; then only pings.
    let mut served = TcpStream::connect(proxy.addr).unwrap();
    served.write_all(H2_PREFACE).unwrap();
    served.write_all(&h2_get(&proxy.addr.to_string())).unwrap();
    keep_pinging(served.try_clone().unwrap());
    assert!(closed_after(&mut served, Instant::now()) < CUT_OFF_WITHIN, "an HTTP/2 connection idle between requests");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_tls_session_is_closed_too() {
    let upstream = Upstream::start().await;
    let certificate = SelfSigned::new();
    let proxy = proxy(&upstream.url())
        .https()
        .toml(&format!("{}\n[limits]\nheader_read_timeout = \"1s\"", certificate.toml()))
        .start();
    let connector = certificate.connector(&[b"h2"]);
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("the handshake completes");
    let since = Instant::now();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut sink));
    assert!(read.await.is_ok(), "the proxy closed the session");
    assert!(since.elapsed() < CUT_OFF_WITHIN, "within the limit: {:?}", since.elapsed());
}

/// Whether the proxy's socket on `proxy_port` from the client on `client_port` has nothing left
/// unread, waited for (bounded): the kernel's count, not a guess at how long reading takes.
fn proxy_has_read_everything_from(proxy_port: u16, client_port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let unread: Vec<u64> = super::tcp_sockets()
            .into_iter()
            .filter(|s| s.local_port == proxy_port && s.remote_port == client_port && s.state == 0x01)
            .map(|s| s.unread)
            .collect();
        if unread == [0] {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends a keep-alive request on `stream` and reads its status line (the connection stays open).
pub(super) fn status_on(stream: &mut TcpStream, request: &[u8]) -> String {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    let mut status = [0u8; 12];
    stream.read_exact(&mut status).unwrap();
    String::from_utf8_lossy(&status).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_sockets_filling_the_cap_give_way_to_newcomers_at_once() {
    let upstream = Upstream::start().await;
    // A long read timeout: room must come from the silent sockets giving way, not timing out.
    let proxy = proxy(&upstream.url())
        .toml("[limits]\nmax_connections = 3\nheader_read_timeout = \"60s\"")
        .env("RUST_LOG", "info,portcullis::server::accept=debug")
        .start();
    let mark = proxy.stderr.len();
    let mut silent: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(proxy.addr).unwrap()).collect();
    // Admitted before the newcomers come (accept loops run on every worker, so the order of
    // admission is not the order of connecting): otherwise a newcomer served first would be idle
    // longer than a silent socket admitted after it, and rightly give way first.
    assert!(
        proxy.stderr.wait_for_count(mark, 3, |l| l.contains("connection admitted")),
        "the silent sockets were admitted"
    );
    // Three newcomers that stay open: each is served, and each takes a silent socket's place
    // (before, they were told 503 until the silent ones timed out).
    let mut newcomers = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(proxy.addr).unwrap();
        let status = status_on(&mut stream, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 401", "a newcomer is served while a silent socket holds a place");
        newcomers.push(stream);
    }
    for socket in &mut silent {
        assert!(closed_after(socket, Instant::now()) < CUT_OFF_WITHIN, "every silent socket gave way");
    }
}

/// Opens a WebSocket to the upstream's `path` through the proxy with `browser`'s session. The sign-in's own connection
/// may still hold its place for a moment after it closed, so a 503 is asked again, within a bound.
async fn websocket(
    proxy: &Proxy,
    browser: &Browser,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let deadline = Instant::now() + CUT_OFF_WITHIN;
    loop {
        let mut request = format!("ws://{}{path}", proxy.addr).into_client_request().unwrap();
        request.headers_mut().insert("cookie", browser.cookie_header(&proxy.url("/")).unwrap().parse().unwrap());
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => return socket,
            Err(e) => assert!(Instant::now() < deadline, "no WebSocket: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn open_websockets_count_against_the_connection_cap() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[limits]\nmax_connections = 3").start();
    let browser = Browser::without_keep_alive();
    browser.login(&proxy, &ALICE).await;
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        tunnels.push(websocket(&proxy, &browser, "/ws").await);
    }
    let refused = raw(&proxy, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&refused), 503, "three open tunnels are three connections: {refused}");
    // Closing one gives its place back.
    let mut closing = tunnels.pop().unwrap();
    closing.close(None).await.unwrap();
    while closing.next().await.is_some() {}
    drop(closing);
    let deadline = Instant::now() + CUT_OFF_WITHIN;
    loop {
        let status = status_of(&raw(&proxy, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"));
        if status == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "the closed tunnel's place never came back ({status})");
    }
}

/// A connection from `from` (any of 127.0.0.0/8 reaches the proxy on loopback) that starts a
/// sign-in and never finishes its body: busy, not idle, until the form's time limit (5 s).
async fn unfinished_sign_in_from(proxy: &Proxy, from: std::net::IpAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(from, 0)).unwrap();
    let mut stream = socket.connect(proxy.addr).await.unwrap();
    // A refused connection may already be closed: the write failing is part of the answer.
    let head = format!(
        "POST /.portcullis/login HTTP/1.1\r\nHost: {}\r\nOrigin: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\nusername=al",
        proxy.addr,
        proxy.origin()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    stream
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_cannot_fill_the_cap_with_unfinished_sign_ins() {
    use tokio::io::AsyncReadExt;
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[limits]\nmax_connections = 8\nmax_connections_per_address = 3").start();
    // Before, eight of these (each busy, so none gave way) kept everyone else out.
    let attacker: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(unfinished_sign_in_from(&proxy, attacker).await);
    }
    // Someone else signs in meanwhile, well within the 5 s the unfinished ones have.
    let browser = Browser::without_keep_alive();
    browser.login(&proxy, &ALICE).await;
    let page = browser.navigate(&proxy.url("/")).await;
    assert_eq!(page.status(), 200, "signed in while one address held its share");

    // Each of the attacker's connections ends: those that held a place with a 408 once the
    // form's time ran out; the others with the 503 they got at once, or closed unanswered when a
    // newer one of its own took their place before they had said anything.
    let mut answers = Vec::new();
    for mut stream in held {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(CUT_OFF_WITHIN, stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "every connection ended");
        answers.push(String::from_utf8_lossy(&answer).chars().take(12).collect::<String>());
    }
    let held_places = answers.iter().filter(|a| a.as_str() == "HTTP/1.1 408").count();
    assert!((1..=3).contains(&held_places), "its share, and no more, held places: {answers:?}");
    assert!(
        answers.iter().all(|a| ["HTTP/1.1 408", "HTTP/1.1 503", ""].contains(&a.as_str())),
        "the rest were refused or gave way: {answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_with_half_a_head_or_a_quiet_http2_session_give_way_at_once_too() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url())
        .toml("[limits]\nmax_connections = 2\nheader_read_timeout = \"60s\"")
        .env("RUST_LOG", "info,portcullis::server::accept=debug")
        .start();
    let mark = proxy.stderr.len();
    // HTTP/2 with prior knowledge: once the proxy's SETTINGS arrive, hyper holds the connection.
    // Its client will never acknowledge anything (a GOAWAY's PING included).
    let mut http2 = TcpStream::connect(proxy.addr).unwrap();
    http2.write_all(H2_PREFACE).unwrap();
    let mut settings = [0u8; 9];
    http2.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    http2.read_exact(&mut settings).unwrap();
    assert_eq!(settings[3], 0x04, "the proxy's SETTINGS frame");
    // Half a request head, the rest never sent.
    let mut half = TcpStream::connect(proxy.addr).unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
    assert!(proxy.stderr.wait_for_count(mark, 2, |l| l.contains("connection admitted")), "both were admitted");
    // And both read: a connection with bytes waiting is spared (it may hold a request), so under
    // load a newcomer could otherwise find the first newcomer, answered and idle, the idlest.
    for client in [&http2, &half] {
        let port = client.local_addr().unwrap().port();
        assert!(proxy_has_read_everything_from(proxy.addr.port(), port), "the proxy read what was sent");
    }
    // Before, each held on for 5 s when asked to make room, and the newcomers (who wait 1 s)
    // were told 503.
    let mut newcomers = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(proxy.addr).unwrap();
        let status = status_on(&mut stream, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 401", "a newcomer is served while an idle connection holds a place");
        newcomers.push(stream);
    }
    for socket in [&mut http2, &mut half] {
        assert!(closed_after(socket, Instant::now()) < CUT_OFF_WITHIN, "the idle connection gave way");
    }
}

/// A proxy on TLS with one place in `limits.max_connections`, held busy by a signed-in request the
/// upstream never answers, and a TLS client for it. (Not by a sign-in whose form never finishes:
/// a form still arriving is its client's doing, and gives way to a newcomer.)
async fn tls_proxy_with_its_one_place_busy()
-> (Upstream, Proxy, tokio_rustls::TlsConnector, tokio_rustls::client::TlsStream<tokio::net::TcpStream>) {
    use tokio::io::AsyncWriteExt;
    let upstream = Upstream::start().await;
    let certificate = SelfSigned::new();
    let proxy = proxy(&upstream.url()).https().toml(&certificate.toml()).toml("[limits]\nmax_connections = 1").start();
    let base = format!("https://{}", proxy.addr);
    let browser = Browser::trusting(&certificate);
    let signed_in = browser.submit_login_at(&base, ALICE.name, ALICE.password, "/").await;
    assert_eq!(signed_in.status(), 303);
    let cookie = browser.cookie_header(&format!("{base}/")).unwrap();
    let connector = certificate.connector(&[b"http/1.1"]);
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    // The browser's keep-alive connection is idle, and gives its place to this one.
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut busy = connector.connect(name, tcp).await.expect("the first handshake completes");
    let head = format!("GET /slow HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\n\r\n", proxy.addr);
    busy.write_all(head.as_bytes()).await.unwrap();
    busy.flush().await.unwrap();
    // Busy once the upstream has the request: the proxy waits on it, not on the client.
    let deadline = Instant::now() + CUT_OFF_WITHIN;
    while !upstream.seen().iter().any(|seen| seen.path == "/slow") {
        assert!(Instant::now() < deadline, "the request reached the upstream");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (upstream, proxy, connector, busy)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_client_turned_away_reads_the_503_through_tls() {
    use tokio::io::AsyncReadExt;
    let (_upstream, proxy, connector, _busy) = tls_proxy_with_its_one_place_busy().await;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    // Before, the newcomer got the 503 in plain text, which a TLS client can only take for a
    // broken handshake (a browser shows ERR_SSL_PROTOCOL_ERROR).
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut refused = connector.connect(name, tcp).await.expect("the refused client's handshake completes");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(CUT_OFF_WITHIN, refused.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 5"), "{answer}");
}

/// A refused TLS connection is answered through TLS, which holds its socket, outside
/// `limits.max_connections`, for as long as the handshake takes (two seconds at most). Newcomers
/// that never start a handshake, opened faster than that, held thousands of sockets ("Too many
/// open files" at 9,000 a second); at most 64 refusals are now in their handshake at once, and
/// the rest are closed unanswered.
#[tokio::test(flavor = "multi_thread")]
async fn refused_tls_newcomers_cannot_hold_sockets_without_bound() {
    use tokio::io::AsyncReadExt;
    const MAX_TLS_REFUSALS: usize = 64;
    const PAST_IT: usize = 16;
    let (_upstream, proxy, _connector, _busy) = tls_proxy_with_its_one_place_busy().await;
    // Well before the two seconds a refusal's handshake may take.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut silent = Vec::new();
    for _ in 0..MAX_TLS_REFUSALS + PAST_IT {
        silent.push(tokio::net::TcpStream::connect(proxy.addr).await.unwrap());
    }
    let mut closed = 0;
    for socket in &mut silent {
        let mut byte = [0u8; 1];
        if let Ok(read) = tokio::time::timeout_at(deadline, socket.read(&mut byte)).await {
            assert!(matches!(read, Ok(0) | Err(_)), "closed unanswered: {read:?}");
            closed += 1;
        }
    }
    assert_eq!(closed, PAST_IT, "those past the bound were closed at once, the rest are in their handshake");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_whose_client_has_gone_gives_its_place_back_though_the_upstream_never_closes() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[limits]\nmax_connections = 2").start();
    let browser = Browser::without_keep_alive();
    browser.login(&proxy, &ALICE).await;
    for _ in 0..2 {
        let socket = websocket(&proxy, &browser, "/ws-deaf").await;
        // The client goes away without a word; the upstream never notices.
        drop(socket);
    }
    // Before, both tunnels kept their places for as long as the upstream held on (for a bypassed
    // path, forever), and everyone else got the 503.
    let deadline = Instant::now() + CUT_OFF_WITHIN;
    loop {
        let status = status_of(&raw(&proxy, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"));
        if status == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "the tunnels of a client that had gone kept their places ({status})");
    }
}

/// The body of a chunked answer (RFC 9112 §7.1), or `None` if it is cut short.
pub(super) fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).ok()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return rest.starts_with(b"\r\n").then_some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// An answer written whole into the kernel's buffers leaves its connection idle, and an idle
/// connection may be asked to make room while its client has not read the answer yet. Closed
/// outright, the client's next bytes (a pipelined request, an HTTP/2 PING) would meet a closed
/// socket and a reset, and the client's kernel would throw away the rest of the answer it had not
/// read. The proxy must finish sending first and read until the client closes (a lingering close).
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_closed_to_make_room_still_delivers_the_answer_it_was_sending() {
    const SIZE: u64 = 512 << 10;
    let upstream = Upstream::start().await;
    // One place for the client's address. The sign-in comes from another, exempt (as a front
    // proxy is), so that its connections' places need not be given back before the next.
    let proxy = proxy(&upstream.url())
        .toml("trusted_proxies = [\"127.0.0.1/32\"]\n[limits]\nmax_connections_per_address = 1")
        .start();
    let client: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let connect = || async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(std::net::SocketAddr::new(client, 0)).unwrap();
        // A small window: most of the answer waits in the proxy's socket, not the client's.
        socket.set_recv_buffer_size(16 << 10).unwrap();
        let stream = socket.connect(proxy.addr).await.unwrap().into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        stream
    };
    let browser = Browser::without_keep_alive();
    browser.login(&proxy, &ALICE).await;
    let cookie = browser.cookie_header(&proxy.url("/")).unwrap();
    let deadline = Instant::now() + CUT_OFF_WITHIN;

    // A client that asks for a large answer and reads only its status line. The proxy writes
    // the answer into its socket's buffer and is idle.
    let mut reader = loop {
        let mut stream = connect().await;
        let request = format!("GET /download?bytes={SIZE} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n");
        let status = status_on(&mut stream, request.as_bytes());
        if status == "HTTP/1.1 200" {
            break stream;
        }
        assert!(status == "HTTP/1.1 503" && Instant::now() < deadline, "the large answer: {status}");
    };
    // A newcomer is refused while the answer is still being written, and served once it is all
    // in the kernel's buffers: its connection was then idle, and was asked to make room.
    let _newcomer = loop {
        let mut stream = connect().await;
        let status = status_on(&mut stream, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        if status == "HTTP/1.1 401" {
            break stream;
        }
        assert!(status == "HTTP/1.1 503" && Instant::now() < deadline, "a newcomer: {status}");
    };
    // The displaced client sends its next request before reading the rest of the first answer.
    reader.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    reader.set_read_timeout(Some(CUT_OFF_WITHIN)).unwrap();
    let mut rest = Vec::new();
    let ended = reader.read_to_end(&mut rest);
    assert!(ended.is_ok(), "closed, not reset, after {} bytes: {ended:?}", rest.len());
    let text = String::from_utf8_lossy(&rest[..rest.len().min(400)]).into_owned();
    let head_end = rest.windows(4).position(|w| w == b"\r\n\r\n").expect("the rest of the head") + 4;
    assert!(text.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{text}");
    let body = dechunk(&rest[head_end..]).expect("the whole answer, to its last chunk");
    assert_eq!(body.len() as u64, SIZE);
    assert!(body.iter().enumerate().all(|(i, &b)| b == crate::upstream::pattern_byte(i as u64)));
    let after = &rest[head_end..];
    assert!(!String::from_utf8_lossy(after).contains("HTTP/1.1"), "the request sent after it was not answered");
}

/// A client that sends a request the upstream is slow to answer, and leaves: its connection (and
/// its place in `max_connections`) ends when it goes, not when the upstream answers (up to
/// `proxy.response_timeout`, a minute by default). On both paths: a GET is the express lane's,
/// a POST hyper's.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_whose_client_has_gone_gives_its_place_back() {
    const PLACES: usize = 4;
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml(&format!("[limits]\nmax_connections = {PLACES}")).start();
    let browser = Browser::without_keep_alive();
    browser.login(&proxy, &ALICE).await;
    let cookie = browser.cookie_header(&proxy.url("/")).unwrap();
    let mark = proxy.stderr.len();
    let gone: Vec<_> = (0..PLACES)
        .map(|i| {
            let (method, body) = if i % 2 == 0 { ("GET", "") } else { ("POST", "Content-Length: 0\r\n") };
            let request = format!("{method} /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n{body}\r\n");
            waiting_on_the_upstream(&proxy, &upstream, request.as_bytes())
        })
        .collect();
    drop(gone);
    // Every place is back: as many new requests the upstream is slow to answer are all held at
    // once (a busy connection never gives way, so none of them took another's place).
    let slow = format!("GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n");
    let _newcomers: Vec<_> = (0..PLACES).map(|_| waiting_on_the_upstream(&proxy, &upstream, slow.as_bytes())).collect();
    let said = proxy.stderr.wait_for(mark, |l| l.contains("portcullis::access") && l.contains("499"));
    assert!(said.is_some(), "the lane's request is logged as the client closing it (499)");
}

/// A connection whose `request` the upstream has and is thinking about. The sign-in's own
/// connection may still hold its place for a moment after it closed: a 503 is asked again,
/// within a bound.
pub(super) fn waiting_on_the_upstream(proxy: &Proxy, upstream: &Upstream, request: &[u8]) -> TcpStream {
    let deadline = Instant::now() + CUT_OFF_WITHIN;
    loop {
        let before = upstream.count();
        let mut stream = TcpStream::connect(proxy.addr).unwrap();
        stream.write_all(request).unwrap();
        // Looks at the upstream between short waits for an answer (a refusal) on the socket.
        stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut byte = [0u8; 1];
        loop {
            if upstream.count() > before {
                return stream;
            }
            assert!(Instant::now() < deadline, "the upstream never had the request: no place for it");
            match stream.peek(&mut byte) {
                Ok(_) => break,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
    }
}
