//! Clients that read slowly or not at all: a slow reader gets its answer whole whatever way its
//! connection ends, and one that stops reading is cut off and reset, its unsent bytes dropped
//! rather than left to the kernel, outside every limit.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::connections::{CUT_OFF_WITHIN, dechunk, waiting_on_the_upstream};
use super::http2::newcomer_admitted_in_place_of;
use super::{raw, status_of, tcp_sockets};
use crate::harness::{ALICE, Browser, proxy};
use crate::upstream::Upstream;

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_cut_off() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[limits]\nsend_timeout = \"1s\"").start();
    let stream = TcpStream::connect(proxy.addr).unwrap();
    let mark = proxy.stderr.len();
    // Thousands of pipelined requests for a page, never reading an answer: the answers fill the
    // socket buffers, and the proxy's writes stop making progress.
    let mut writer = stream.try_clone().unwrap();
    std::thread::spawn(move || {
        let request = b"GET /.portcullis/login HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        for _ in 0..20_000 {
            if writer.write_all(request).is_err() {
                return;
            }
        }
    });
    let said = proxy.stderr.wait_for(mark, |l| l.contains("a client stopped reading"));
    assert!(said.is_some(), "the proxy gave up on the client");
    // The connection is gone: reading what was buffered ends, short of 20 000 answers.
    let mut stream = stream;
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answers = Vec::new();
    let _ = stream.read_to_end(&mut answers);
    let count = String::from_utf8_lossy(&answers).matches("HTTP/1.1 200").count();
    assert!(count < 20_000, "only what fitted in the buffers was sent: {count}");
}

/// Alice's session cookie, signed in with a connection per request (none kept open to hold a
/// place in the budget these tests fill).
async fn alices_cookie(proxy: &crate::harness::Proxy) -> String {
    let browser = Browser::without_keep_alive();
    browser.login(proxy, &ALICE).await;
    browser.cookie_header(&proxy.url("/")).unwrap()
}

/// A blocking connection to the proxy whose receive buffer is asked to be `bytes` (the kernel
/// doubles it, socket(7)), reads timing out after [`CUT_OFF_WITHIN`].
async fn with_receive_buffer(proxy: &crate::harness::Proxy, bytes: u32) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(bytes).unwrap();
    let stream = socket.connect(proxy.addr).await.unwrap().into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(CUT_OFF_WITHIN)).unwrap();
    stream
}

/// A connection with a small receive buffer that sends `request` over and over, pipelined, and
/// reads nothing: the proxy's writes to it block.
async fn asking_and_never_reading(proxy: &crate::harness::Proxy, request: String) -> TcpStream {
    let stream = with_receive_buffer(proxy, 1024).await;
    let mut writer = stream.try_clone().unwrap();
    std::thread::spawn(move || {
        for _ in 0..3_000 {
            if writer.write_all(request.as_bytes()).is_err() {
                return;
            }
        }
    });
    // Admitted and answering (until then it is idle, and would give way at once).
    let mut first = [0u8; 12];
    let n = stream.peek(&mut first).unwrap();
    assert!(n > 0 && !b"HTTP/1.1 503".starts_with(&first[..n]), "the first answer began");
    stream
}

/// The tenth attack pass: answers asked for, pipelined, and never read held a place for all of
/// `limits.send_timeout` (60 s; a write blocked was busy, never idle), and about five new such
/// connections a second kept every place. A client that has taken nothing for 5 s now gives way
/// to a newcomer, on hyper's path and on the express lane alike, and is reset.
#[tokio::test(flavor = "multi_thread")]
async fn clients_that_read_none_of_their_answers_give_their_places_to_newcomers() {
    let upstream = Upstream::start().await;
    let one_place = "[limits]\nmax_connections = 1\nheader_read_timeout = \"60s\"";
    // Sign-in pages, on hyper's path.
    let proxy = proxy(&upstream.url()).toml(one_place).start();
    let page = "GET /.portcullis/login HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_owned();
    let holder = asking_and_never_reading(&proxy, page).await;
    let admitted = newcomer_admitted_in_place_of(&proxy, holder, Instant::now());
    // Not at once: a write blocked is given a while to go through.
    assert!(admitted.is_some_and(|at| at >= Duration::from_secs(4) && at < Duration::from_secs(15)), "{admitted:?}");

    // A signed-in download on the express lane, which writes with no ear for anyone else.
    let proxy = self::proxy(&upstream.url()).toml(one_place).start();
    // Signed in over one kept-alive connection, left open and idle: the holder takes its place.
    // (A connection its client has just closed is not displaced until the proxy has seen it
    // close, so a new connection per request could meet a 503 here.)
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let cookie = browser.cookie_header(&proxy.url("/")).unwrap();
    let mark = proxy.stderr.len();
    let download = format!("GET /download?bytes={} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n", 64 << 20);
    let holder = asking_and_never_reading(&proxy, download).await;
    let admitted = newcomer_admitted_in_place_of(&proxy, holder, Instant::now());
    assert!(admitted.is_some_and(|at| at >= Duration::from_secs(4) && at < Duration::from_secs(15)), "{admitted:?}");
    let logged = proxy.stderr.wait_for(mark, |l| l.contains("path=/download"));
    assert!(logged.is_some_and(|l| l.contains("status=200")), "the download was answered, then its client gave way");
}

/// A client that stops reading a download: once the proxy gives up on it, what is left in the
/// proxy's socket is dropped with a reset. Closed the usual way, the kernel goes on sending it
/// (an orphan, up to the whole send buffer) to a client reading a little now and then, long
/// after its place in `max_connections` was given back: that many connections' worth of kernel
/// memory outside every limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_a_download_is_reset_not_left_to_the_kernel() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[limits]\nsend_timeout = \"1s\"").start();
    let cookie = alices_cookie(&proxy).await;

    let mut reader = with_receive_buffer(&proxy, 16 << 10).await;
    let mark = proxy.stderr.len();
    // Far more than every buffer between the two holds.
    let request = format!("GET /download?bytes={} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n", 256 << 20);
    reader.write_all(request.as_bytes()).unwrap();
    let said = proxy.stderr.wait_for(mark, |l| l.contains("a client stopped reading"));
    assert!(said.is_some(), "the proxy gave up on the client");

    let mut answer = Vec::new();
    let ended = reader.read_to_end(&mut answer);
    let error = ended.expect_err("reset, not the rest of the send buffer and a close");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "after {} bytes", answer.len());
}

/// Answers asked for with `Connection: close` and never read: each one's connection used to end
/// as soon as its answer was in the socket, and the kernel kept the unread answer as an orphan
/// for as long as the client kept its window shut, outside `max_connections` (the fifth attack
/// pass: 5,850 of them, 1.5 GiB of kernel memory in 40 s). Now the connection keeps its place
/// while its answer drains, unless a newcomer needs it, and is reset once its client has
/// acknowledged nothing more for `limits.send_timeout`, as an open connection would be (or 5 s
/// among the displaced): never left to the kernel.
#[tokio::test(flavor = "multi_thread")]
async fn answers_never_read_keep_their_places_until_a_newcomer_needs_one_or_their_clients_stall_then_are_reset() {
    const PLACES: usize = 3;
    let upstream = Upstream::start().await;
    let limits = format!("[limits]\nmax_connections = {PLACES}\nsend_timeout = \"2s\"");
    let proxy = proxy(&upstream.url()).toml(&limits).start();
    let cookie = alices_cookie(&proxy).await;
    let request = format!(
        "GET /download?bytes={} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n",
        256 << 10
    );
    let mut unread = Vec::new();
    for _ in 0..PLACES {
        let mut stream = with_receive_buffer(&proxy, 16 << 10).await;
        stream.write_all(request.as_bytes()).unwrap();
        // Its answer is on its way: the head is here.
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        unread.push(stream);
    }
    // Every place is held by an answer still draining, but with nothing in flight, as an idle
    // connection's: a newcomer gets one, and that socket lingers among the displaced (the eighth
    // attack pass: held instead for `send_timeout`, five such requests a second for the sign-in
    // page kept everyone out).
    let admitted = raw(&proxy, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&admitted), 401, "{admitted}");
    // Nothing acknowledged for `send_timeout`: every place comes back (as many requests the upstream is
    // slow to answer are held at once), and the answers were dropped.
    let slow = format!("GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n");
    let _busy: Vec<_> = (0..PLACES).map(|_| waiting_on_the_upstream(&proxy, &upstream, slow.as_bytes())).collect();
    for stream in &mut unread {
        // Read only once the proxy has let go of the socket (reading sooner would take the
        // answer in while the displaced one still lingers): reset, it is gone at once; closed
        // the usual way, it would live on as an orphan, and this would wait in vain.
        let client_port = stream.local_addr().unwrap().port();
        let deadline = Instant::now() + CUT_OFF_WITHIN;
        while proxy_holds(proxy.addr.port(), client_port) {
            assert!(Instant::now() < deadline, "the proxy still holds the connection from port {client_port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        stream.set_read_timeout(Some(CUT_OFF_WITHIN)).unwrap();
        let mut rest = Vec::new();
        let ended = stream.read_to_end(&mut rest);
        let error = ended.expect_err("reset, not the rest of the answer and a close");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "after {} bytes", rest.len());
    }
}

/// A slow reader's answer may sit whole in the kernel's buffers, leaving its connection with
/// nothing in flight as far as the proxy can tell, for longer than the idle limit
/// (`limits.header_read_timeout`). Closed then as idle, the client's next bytes (a pipelined
/// request here; an HTTP/2 WINDOW_UPDATE in the fourth attack pass, where a download at 20 KB/s
/// lost the second half of 1 MB at 20 s, with no attacker) met a closed socket and a reset. A
/// connection whose client is still taking in its answer is not idle.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_still_taking_in_its_answer_is_not_closed_as_idle() {
    const SIZE: u64 = 512 << 10;
    const IDLE_LIMIT: Duration = Duration::from_secs(1);
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[limits]\nheader_read_timeout = \"1s\"").start();
    let cookie = alices_cookie(&proxy).await;

    // A small window: most of the answer waits in the proxy's socket, not the client's.
    let mut reader = with_receive_buffer(&proxy, 16 << 10).await;
    let asked = Instant::now();
    let request = format!("GET /download?bytes={SIZE} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n");
    reader.write_all(request.as_bytes()).unwrap();

    // Reading as a slow link does, 8 KiB every 100 ms, past twice the idle limit.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8 << 10];
    while asked.elapsed() < IDLE_LIMIT * 2 + Duration::from_millis(500) {
        let n = reader.read(&mut chunk).expect("the answer, still coming");
        assert!(n > 0, "closed after {} bytes", answer.len());
        answer.extend_from_slice(&chunk[..n]);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        (answer.len() as u64) < SIZE / 2,
        "still far from the end ({} bytes): the test reads too fast",
        answer.len()
    );

    // The next request, sent before the rest of the first answer is read.
    let next = format!("GET /next HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n");
    reader.write_all(next.as_bytes()).unwrap();
    let ended = reader.read_to_end(&mut answer);
    assert!(ended.is_ok(), "closed, not reset, after {} bytes: {ended:?}", answer.len());
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
    let second = answer.windows(17).rposition(|w| w == b"HTTP/1.1 200 OK\r\n").expect("the next request answered");
    assert!(second > head_end, "two answers");
    let body = dechunk(&answer[head_end..second]).expect("the whole first answer, to its last chunk");
    assert_eq!(body.len() as u64, SIZE);
}

/// A client on a slow link reading an answer it asked to close after (`Connection: close`, or
/// HTTP/1.0): its receive window reopens only once it has drained a good part of its buffer, so
/// nothing new is acknowledged for seconds at a time (6 s at 20 KB/s with Linux's default
/// buffers), though it reads steadily. The lingering close used to give up after 5 s without an
/// acknowledgement and reset it (the sixth attack pass: 1 MiB at 20 KB/s broke off after 324 KB,
/// and 256 KiB here after 130 KB); it now has `limits.send_timeout`, as an open connection has.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_gets_an_answer_it_asked_to_close_after_whole() {
    const SIZE: usize = 256 << 10;
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let cookie = alices_cookie(&proxy).await;
    let readers: Vec<_> = ["HTTP/1.1\r\nConnection: close", "HTTP/1.0"]
        .into_iter()
        .map(|version| {
            let request =
                format!("GET /download?bytes={SIZE} {version}\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n");
            let mut stream = TcpStream::connect(proxy.addr).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            std::thread::spawn(move || (version, read_at_20_kb_a_second(stream)))
        })
        .collect();
    for reader in readers {
        let (version, (answer, ended)) = reader.join().unwrap();
        assert!(ended.is_ok(), "{version}: closed, not reset, after {} bytes: {ended:?}", answer.len());
        let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
        let body = &answer[head_end..];
        // HTTP/1.0 has no chunks: its answer ends where the connection does.
        let body = if version == "HTTP/1.0" { body.to_vec() } else { dechunk(body).expect("to its last chunk") };
        assert_eq!(body.len(), SIZE, "{version}");
        assert!(body.iter().enumerate().all(|(i, &b)| b == crate::upstream::pattern_byte(i as u64)), "{version}");
    }
}

/// A client whose answer sits whole in the kernel's buffers may go longer than
/// `limits.send_timeout` without acknowledging anything, while it reads: its window reopens only
/// once a good part of its buffer is free, and the proxy's zero-window probes back off to a
/// minute apart (the eleventh attack pass: `curl --limit-rate 20k` on 3 MiB went 75 s, and 2 of
/// 4 such downloads were reset at 60 s, with no attacker). A socket lingering in its own place
/// costs only that place, which a newcomer may take: it now has at least five minutes. Here a
/// client pauses three times as long as a `send_timeout` of one second (before: reset).
#[tokio::test(flavor = "multi_thread")]
async fn a_reader_pausing_longer_than_the_send_timeout_after_its_answer_was_sent_gets_it_whole() {
    const SIZE: usize = 256 << 10;
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[limits]\nsend_timeout = \"1s\"").start();
    let cookie = alices_cookie(&proxy).await;
    // A small window: most of the answer waits in the proxy's socket.
    let mut reader = with_receive_buffer(&proxy, 16 << 10).await;
    let request = format!(
        "GET /download?bytes={SIZE} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    );
    reader.write_all(request.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    reader.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // The client's pause (its behaviour under test, not a wait for the proxy).
    std::thread::sleep(Duration::from_secs(3));
    let mut answer = head.to_vec();
    let ended = reader.read_to_end(&mut answer);
    assert!(ended.is_ok(), "closed, not reset, after {} bytes: {ended:?}", answer.len());
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
    assert_eq!(dechunk(&answer[head_end..]).expect("to its last chunk").len(), SIZE);
}

/// Reads `stream` to its end as a 160 kbit/s link does, 2 KiB every 100 ms: what came, and how
/// it ended.
fn read_at_20_kb_a_second(mut stream: TcpStream) -> (Vec<u8>, std::io::Result<()>) {
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let (mut answer, mut chunk) = (Vec::new(), [0u8; 2048]);
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (answer, Ok(())),
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) => return (answer, Err(e)),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Clients that read the first 8 MiB of a large answer as fast as they can, then stop: the
/// proxy read from the upstream as fast, and the kernel grew the receive buffer of each
/// upstream connection to `tcp_rmem`'s maximum, then filled it with answer no one would read
/// (the seventh attack pass: 858 MB of the kernel's TCP memory, 2.19 GiB in all from 300
/// places). The buffer is now fixed (`proxy.upstream_receive_buffer_bytes`, 512 KiB, which the
/// kernel doubles for its own bookkeeping, socket(7)).
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_its_client_stopped_reading_parks_little_of_itself_on_the_upstream_side() {
    const READERS: usize = 4;
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let cookie = alices_cookie(&proxy).await;
    let request = format!("GET /download?bytes={} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n", 1u64 << 32);
    let mut stopped = Vec::new();
    for _ in 0..READERS {
        let mut stream = TcpStream::connect(proxy.addr).unwrap();
        stream.set_read_timeout(Some(CUT_OFF_WITHIN)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut first = vec![0u8; 8 << 20];
        stream.read_exact(&mut first).unwrap();
        stopped.push(stream);
    }
    // Every buffer between the upstream and the clients fills, then nothing moves.
    let queued = settled(|| received_unread_from(upstream.addr.port()));
    assert!(queued.len() >= READERS, "a connection to the upstream for each reader: {queued:?}");
    let most = queued.iter().copied().max().unwrap_or(0);
    assert!(most >= 64 << 10, "the answers did fill the proxy's side: {queued:?}");
    assert!(most <= 3 << 19, "at most the fixed buffer's worth waits on the upstream side: {queued:?}");
}

/// Bytes received and not yet read by the process, on each established TCP socket connected to
/// `port` on loopback (the proxy's connections to the upstream).
fn received_unread_from(port: u16) -> Vec<u64> {
    tcp_sockets().into_iter().filter(|s| s.remote_port == port && s.state == 0x01).map(|s| s.unread).collect()
}

/// What `look` returns once it has returned the same for a second (looked at every 50 ms), or
/// after 15 s.
fn settled(look: impl Fn() -> Vec<u64>) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut last, mut since) = (look(), Instant::now());
    while since.elapsed() < Duration::from_secs(1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = look();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    last
}

/// Whether the kernel has a TCP socket on loopback from local port `local` to `remote`, in any
/// state but TIME_WAIT (what a socket closed by its peer leaves), held by a process or orphaned.
fn proxy_holds(local: u16, remote: u16) -> bool {
    tcp_sockets().iter().any(|s| s.local_port == local && s.remote_port == remote && s.state != 0x06)
}
