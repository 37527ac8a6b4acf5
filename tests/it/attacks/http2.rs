//! HTTP/2 spoken frame by frame (RFC 9113), as a client that wants to hold the proxy would: a
//! request without a host, and answers whose flow-control windows the client never opens. HTTP/2
//! lets a receiver keep a window shut (§6.9), and the answer then waits inside the proxy, where
//! the socket's own limit never sees it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::connections::{CUT_OFF_WITHIN, closed_after};
use crate::harness::{ALICE, Browser, Proxy, proxy};
use crate::upstream::{Upstream, pattern_byte};

/// The client connection preface of HTTP/2 (RFC 9113 §3.4) and an empty SETTINGS frame.
pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// A PING frame (RFC 9113 §6.7).
pub(super) const H2_PING: &[u8] = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00pingping";

/// An HTTP/2 `GET /` on stream 1 for `authority`: HPACK static-table entries for the method,
/// scheme and path (RFC 7541 Appendix A), a literal authority.
pub(super) fn h2_get(authority: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84, 0x41, authority.len() as u8];
    block.extend_from_slice(authority.as_bytes());
    let mut frame = vec![0, 0, block.len() as u8, 0x01, 0x05, 0, 0, 0, 1];
    frame.extend_from_slice(&block);
    frame
}

/// The `:status` of the proxy's answer on stream 1, as its HPACK static-table index (RFC 7541
/// Appendix A: 0x88 is 200, 0x8c is 400), read from the first HEADERS frame for the stream.
fn h2_status_index(stream: &mut TcpStream) -> u8 {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    loop {
        let mut head = [0u8; 9];
        stream.read_exact(&mut head).unwrap();
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; length];
        stream.read_exact(&mut payload).unwrap();
        let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if head[3] == 0x01 && stream_id == 1 {
            return payload[0];
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_request_must_name_its_host() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let ask = |block: &[u8]| {
        let mut stream = TcpStream::connect(proxy.addr).unwrap();
        stream.write_all(H2_PREFACE).unwrap();
        let mut frame = vec![0, 0, block.len() as u8, 0x01, 0x05, 0, 0, 0, 1];
        frame.extend_from_slice(block);
        stream.write_all(&frame).unwrap();
        h2_status_index(&mut stream)
    };
    // Neither `:authority` nor `Host`: malformed (RFC 9113 §8.3.1), not the upstream's own name.
    assert_eq!(ask(&[0x82, 0x86, 0x84]), 0x8c, "400 without a host");
    // `:authority` with user information.
    let authority = format!("admin@{}", proxy.addr);
    let mut block = vec![0x82, 0x86, 0x84, 0x41, authority.len() as u8];
    block.extend_from_slice(authority.as_bytes());
    assert_eq!(ask(&block), 0x8c, "400 for {authority}");
    // The same request with a plain authority is answered (401: no session), so the checks
    // above failed for the host alone.
    let mut stream = TcpStream::connect(proxy.addr).unwrap();
    stream.write_all(H2_PREFACE).unwrap();
    stream.write_all(&h2_get(&proxy.addr.to_string())).unwrap();
    assert_ne!(h2_status_index(&mut stream), 0x8c);
    assert_eq!(upstream.count(), 0);
}

/// The connection preface with `SETTINGS_INITIAL_WINDOW_SIZE` (0x4) set to `window`: every
/// stream's window starts there (RFC 9113 §6.5.2, §6.9.2).
fn preface_with_stream_window(window: u32) -> Vec<u8> {
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 6, 0x04, 0, 0, 0, 0, 0, 0, 0x04]);
    preface.extend_from_slice(&window.to_be_bytes());
    preface
}

/// An HPACK integer with an `n`-bit prefix after the bits of `first` (RFC 7541 §5.1).
fn hpack_integer(out: &mut Vec<u8>, first: u8, n: u32, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// An HPACK string literal, not Huffman-coded (RFC 7541 §5.2).
fn hpack_string(out: &mut Vec<u8>, text: &str) {
    hpack_integer(out, 0, 7, text.len());
    out.extend_from_slice(text.as_bytes());
}

/// A whole `GET` request on `stream_id`: a HEADERS frame ending the stream, with `headers` as
/// literals with new names, never indexed (RFC 7541 §6.2.2).
fn h2_request(stream_id: u32, authority: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    h2_head(stream_id, 0x82, authority, path, headers, true)
}

/// A request's HEADERS frame: `method` as its HPACK static-table entry (0x82 GET, 0x83 POST),
/// ending the stream or leaving it open for a body.
fn h2_head(stream_id: u32, method: u8, authority: &str, path: &str, headers: &[(&str, &str)], end: bool) -> Vec<u8> {
    let mut block = vec![method, 0x86];
    hpack_integer(&mut block, 0x00, 4, 4);
    hpack_string(&mut block, path);
    hpack_integer(&mut block, 0x00, 4, 1);
    hpack_string(&mut block, authority);
    for (name, value) in headers {
        block.push(0x10);
        hpack_string(&mut block, name);
        hpack_string(&mut block, value);
    }
    let length = (block.len() as u32).to_be_bytes();
    let flags = if end { 0x05 } else { 0x04 };
    let mut frame = vec![length[1], length[2], length[3], 0x01, flags];
    frame.extend_from_slice(&stream_id.to_be_bytes());
    frame.extend_from_slice(&block);
    frame
}

/// A DATA frame on `stream_id` that does not end it.
fn h2_data(stream_id: u32, data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u32).to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], DATA, 0];
    frame.extend_from_slice(&stream_id.to_be_bytes());
    frame.extend_from_slice(data);
    frame
}

/// A WINDOW_UPDATE frame for `stream_id` (0: the connection's window), RFC 9113 §6.9.
fn window_update(stream_id: u32, increment: u32) -> Vec<u8> {
    let mut frame = vec![0, 0, 4, 0x08, 0];
    frame.extend_from_slice(&stream_id.to_be_bytes());
    frame.extend_from_slice(&increment.to_be_bytes());
    frame
}

struct H2Frame {
    kind: u8,
    flags: u8,
    stream_id: u32,
    payload: Vec<u8>,
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const END_STREAM: u8 = 0x1;

fn read_frame(stream: &mut TcpStream) -> std::io::Result<H2Frame> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head)?;
    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload)?;
    let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Ok(H2Frame { kind: head[3], flags: head[4], stream_id, payload })
}

/// An HTTP/2 connection that asked for the sign-in page with every stream window shut, once the
/// answer's head has come (HEADERS frames are not flow-controlled; the page's DATA is).
fn ask_with_windows_shut(proxy: &Proxy) -> TcpStream {
    ask_with_windows_shut_on(TcpStream::connect(proxy.addr).unwrap(), proxy)
}

/// [`ask_with_windows_shut`] on a connection made already.
fn ask_with_windows_shut_on(mut stream: TcpStream, proxy: &Proxy) -> TcpStream {
    stream.write_all(&preface_with_stream_window(0)).unwrap();
    stream.write_all(&h2_request(1, &proxy.addr.to_string(), "/.portcullis/login", &[])).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    loop {
        let frame = read_frame(&mut stream).expect("the answer's head");
        assert_ne!((frame.kind, frame.stream_id), (DATA, 1), "no byte of the page through a shut window");
        if (frame.kind, frame.stream_id) == (HEADERS, 1) {
            assert_eq!(frame.payload[0], 0x88, "the sign-in page (200) is ready");
            return stream;
        }
    }
}

/// A newcomer's keep-alive connection and the status line it got for `GET /` (401 without a
/// session, 503 when no place is free), or `None` if it was closed or reset first.
fn newcomer(proxy: &Proxy) -> Option<(TcpStream, String)> {
    newcomer_on(TcpStream::connect(proxy.addr).ok()?)
}

/// [`newcomer`] on a connection made already.
fn newcomer_on(mut stream: TcpStream) -> Option<(TcpStream, String)> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut status = [0u8; 12];
    stream.read_exact(&mut status).ok()?;
    Some((stream, String::from_utf8_lossy(&status).into_owned()))
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_clients_that_let_no_answer_through_give_their_places_to_newcomers() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[limits]\nmax_connections = 2\nheader_read_timeout = \"60s\"").start();
    // Both places held by answers waiting on shut windows, with `limits.send_timeout` (60 s) far
    // off. Before, each held its place for as long as its client liked.
    let mut shut: Vec<TcpStream> = (0..2).map(|_| ask_with_windows_shut(&proxy)).collect();
    let ready = Instant::now();
    let (mut admitted, mut refused) = (Vec::new(), 0);
    // Each admitted newcomer stays (idle, but less idle than a stalled connection), so the next
    // needs a place of its own.
    while admitted.len() < 2 && ready.elapsed() < Duration::from_secs(20) {
        match newcomer(&proxy) {
            Some((stream, status)) if status == "HTTP/1.1 401" => admitted.push((ready.elapsed(), stream)),
            Some((_, status)) if status == "HTTP/1.1 503" => refused += 1,
            None => refused += 1,
            Some((_, other)) => panic!("a newcomer was told {other}"),
        }
        // Polling for the moment the proxy lets them in, a few times a second.
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(admitted.len(), 2, "two newcomers took the stalled connections' places ({refused} refused)");
    // Not at once: an answer just handed over is given a while to be let through.
    let first = admitted[0].0;
    assert!(refused > 0 && first >= Duration::from_secs(4), "admitted at {first:?}, {refused} refused");
    for stalled in &mut shut {
        assert!(closed_after(stalled, Instant::now()) < CUT_OFF_WITHIN, "a stalled connection gave way");
    }
}

/// Downloads `path` over HTTP/2 through windows opened `step` bytes at a time, `steps_per_second`
/// times a second; returns the body.
fn download_through_small_windows(
    addr: SocketAddr,
    path: &str,
    cookie: &str,
    step: u32,
    steps_per_second: u32,
) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(&preface_with_stream_window(0)).unwrap();
    stream.write_all(&h2_request(1, &addr.to_string(), path, &[("cookie", cookie)])).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let pace = Duration::from_secs(1) / steps_per_second;
    let (mut body, mut next_step) = (Vec::new(), Instant::now());
    loop {
        if Instant::now() >= next_step {
            stream.write_all(&window_update(1, step)).unwrap();
            stream.write_all(&window_update(0, step)).unwrap();
            next_step += pace;
        }
        let frame = match read_frame(&mut stream) {
            Ok(frame) => frame,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) => panic!("the download broke off after {} bytes: {e}", body.len()),
        };
        if (frame.kind, frame.stream_id) == (DATA, 1) {
            body.extend_from_slice(&frame.payload);
            if frame.flags & END_STREAM != 0 {
                return body;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_client_that_lets_nothing_through_is_cut_off_after_the_send_timeout_and_a_slow_one_is_not() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[limits]\nsend_timeout = \"2s\"").start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let cookie = browser.cookie_header(&proxy.url("/")).unwrap();
    let mark = proxy.stderr.len();
    // 128 KiB at 16 KiB a second: four times the send timeout in all, but a frame's worth let
    // through every second. The proxy reads the upstream in larger and larger pieces while the
    // client holds it back (32 KiB, then over 56 KiB); handed over whole, such a piece would wait
    // 2 to 4 s to be let through, and the client would be cut off.
    let slow = {
        let (addr, cookie) = (proxy.addr, cookie.clone());
        std::thread::spawn(move || download_through_small_windows(addr, "/download?bytes=131072", &cookie, 1024, 16))
    };
    let mut shut = ask_with_windows_shut(&proxy);
    let ready = Instant::now();
    let cut = closed_after(&mut shut, ready);
    assert!(cut >= Duration::from_millis(1500) && cut < CUT_OFF_WITHIN, "cut off after {cut:?}");
    assert!(
        proxy.stderr.wait_for(mark, |l| l.contains("a client stopped reading")).is_some(),
        "the security log says why"
    );
    let body = slow.join().unwrap();
    assert_eq!(body.len(), 131072, "the slow client got its answer whole");
    assert!(body.iter().enumerate().all(|(i, b)| *b == pattern_byte(i as u64)));
}

/// A sign-in form's body: 100 bytes, of which a client sends part, then the rest later.
const FORM: &[u8; 100] =
    b"csrf=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// Keeps one sign-in form of ours always arriving on `stream`, each within the form's time limit
/// (5 s), a new one begun before the last ends: over HTTP/2 a new stream every 1.5 s; over
/// HTTP/1.1 the rest of the body 2 s later, the next request's head and the start of its body in
/// the same write (pipelined). Until the proxy closes the connection.
fn keep_forms_arriving(mut stream: TcpStream, origin: String, http2: bool) {
    std::thread::spawn(move || {
        let authority = origin.trim_start_matches("http://").to_string();
        let mut reader = stream.try_clone().unwrap();
        // Answers are read and dropped, so they never fill the socket.
        std::thread::spawn(move || while reader.read(&mut [0u8; 4096]).is_ok_and(|n| n > 0) {});
        let headers = [
            ("origin", origin.as_str()),
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-length", "100"),
        ];
        let h1_head = format!(
            "POST /.portcullis/login HTTP/1.1\r\nHost: {authority}\r\nOrigin: {origin}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
        );
        let mut stream_id = 3;
        let mut first = true;
        loop {
            let write = if http2 {
                let mut frames = h2_head(stream_id, 0x83, &authority, "/.portcullis/login", &headers, false);
                frames.extend_from_slice(&h2_data(stream_id, &FORM[..10]));
                stream_id += 2;
                frames
            } else {
                let mut bytes = if first { Vec::new() } else { FORM[10..].to_vec() };
                bytes.extend_from_slice(h1_head.as_bytes());
                bytes.extend_from_slice(&FORM[..10]);
                bytes
            };
            first = false;
            if stream.write_all(&write).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(if http2 { 1500 } else { 2000 }));
        }
    });
}

/// How long after `since` a newcomer got in, with the proxy's one place held by `holder` (which
/// must then have been closed to make room); `None` if none did within 20 s.
pub(super) fn newcomer_admitted_in_place_of(proxy: &Proxy, mut holder: TcpStream, since: Instant) -> Option<Duration> {
    while since.elapsed() < Duration::from_secs(20) {
        if let Some((_stream, status)) = newcomer(proxy) {
            match status.as_str() {
                "HTTP/1.1 401" => {
                    let admitted = since.elapsed();
                    assert!(closed_after(&mut holder, Instant::now()) < CUT_OFF_WITHIN, "the holder gave way");
                    return Some(admitted);
                }
                "HTTP/1.1 503" => {}
                other => panic!("a newcomer was told {other}"),
            }
        }
        // Polling for the moment the proxy lets one in, a few times a second.
        std::thread::sleep(Duration::from_millis(250));
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_forms_kept_arriving_one_after_another_hold_no_place() {
    let upstream = Upstream::start().await;
    let one_place = "[limits]\nmax_connections = 1\nheader_read_timeout = \"60s\"";
    // HTTP/1.1: forms pipelined one after the other, each finished within its time limit. A form
    // still arriving is its client's doing, as half a request head is: it gives way at once.
    // Before, the place was held for as long as the client went on.
    let proxy = proxy(&upstream.url()).toml(one_place).start();
    let http1 = TcpStream::connect(proxy.addr).unwrap();
    keep_forms_arriving(http1.try_clone().unwrap(), proxy.origin(), false);
    let admitted = newcomer_admitted_in_place_of(&proxy, http1, Instant::now());
    assert!(admitted.is_some_and(|at| at < Duration::from_secs(3)), "over HTTP/1.1: {admitted:?}");
    // HTTP/2: an answer held back by a shut window, and beside it a new sign-in form every
    // 1.5 s, so that a request the proxy waits on was always in flight; it gives way once the
    // answer has waited its while.
    let proxy = self::proxy(&upstream.url()).toml(one_place).start();
    let http2 = ask_with_windows_shut(&proxy);
    let ready = Instant::now();
    keep_forms_arriving(http2.try_clone().unwrap(), proxy.origin(), true);
    let admitted = newcomer_admitted_in_place_of(&proxy, http2, ready);
    assert!(admitted.is_some_and(|at| at < Duration::from_secs(10)), "over HTTP/2: {admitted:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sign_in_form_its_client_broke_off_is_logged_as_broken_off_not_too_large() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let mark = proxy.stderr.len();
    let origin = proxy.origin();
    let mut stream = TcpStream::connect(proxy.addr).unwrap();
    stream.write_all(&preface_with_stream_window(65535)).unwrap();
    let headers =
        [("origin", origin.as_str()), ("content-type", "application/x-www-form-urlencoded"), ("content-length", "100")];
    stream.write_all(&h2_head(1, 0x83, &proxy.addr.to_string(), "/.portcullis/login", &headers, false)).unwrap();
    stream.write_all(&h2_data(1, &FORM[..10])).unwrap();
    // RST_STREAM (RFC 9113 §6.4) with CANCEL: the client gives up on the form.
    stream.write_all(&[0, 0, 4, 0x03, 0, 0, 0, 0, 1, 0, 0, 0, 0x08]).unwrap();
    let line = proxy.stderr.wait_for(mark, |l| l.contains("path=/.portcullis/login status="));
    let line = line.expect("the sign-in is in the access log");
    // Before, every error reading the form was taken for one too large.
    assert!(line.contains("status=400"), "{line}");
}

/// A connection to the proxy from `from` (any of 127.0.0.0/8 reaches it on loopback).
pub(super) async fn connect_from(proxy: &Proxy, from: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
    let stream = socket.connect(proxy.addr).await.unwrap().into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
}

/// The tenth attack pass: a client reconnecting about 90 times a second kept every one of 300
/// places younger than the 5 s a connection whose client takes nothing is given, so none ever
/// gave way and honest newcomers got 503s. Now such a connection of an address holding at least
/// two places more than the newcomer's gives way to it once its client has taken nothing for a
/// second; a newcomer of the same client gains nothing by it.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_holding_every_place_with_young_stalled_connections_keeps_no_lighter_newcomer_out() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[limits]\nmax_connections = 4\nheader_read_timeout = \"60s\"").start();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(ask_with_windows_shut_on(connect_from(&proxy, "127.0.0.2").await, &proxy));
    }
    let ready = Instant::now();
    let (_, status) = newcomer_on(connect_from(&proxy, "127.0.0.2").await).expect("an answer");
    assert_eq!(status, "HTTP/1.1 503", "the same client takes no place from itself this way");
    let mut admitted = None;
    while admitted.is_none() && ready.elapsed() < Duration::from_secs(10) {
        match newcomer_on(connect_from(&proxy, "127.0.0.3").await) {
            Some((stream, status)) if status == "HTTP/1.1 401" => admitted = Some((ready.elapsed(), stream)),
            Some((_, status)) if status == "HTTP/1.1 503" => {}
            None => {}
            Some((_, other)) => panic!("a newcomer was told {other}"),
        }
        // Polling for the moment the proxy lets it in, a few times a second.
        std::thread::sleep(Duration::from_millis(200));
    }
    let at = admitted.as_ref().map(|(at, _)| *at);
    // Before the 5 s after which anyone may take the place, and not before its client has
    // taken nothing for a second.
    assert!(at.is_some_and(|at| at >= Duration::from_millis(900) && at < Duration::from_secs(4)), "{at:?}");
    let gave_way = held.iter_mut().map(is_closed).filter(|closed| *closed).count();
    assert_eq!(gave_way, 1, "one of the client's connections gave its place");
}

/// Whether the proxy has closed (or reset) `stream`, reading what it had sent before.
fn is_closed(stream: &mut TcpStream) -> bool {
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    loop {
        match stream.read(&mut [0u8; 4096]) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return !matches!(e.kind(), TimedOut | WouldBlock),
        }
    }
}
