use super::*;
use crate::web::upstream_pool::tests::StrayAfterAnswer;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;

/// As the defaults: a second to connect, a 512 KiB receive buffer.
const TEST_DIAL: Dial = Dial { connect_timeout: Duration::from_secs(1), receive_buffer: 512 << 10 };

fn head_of(answer: impl AsRef<[u8]>, head_request: bool) -> Result<Option<Interpreted>, String> {
    let answer = answer.as_ref();
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    assert!(matches!(parsed.parse(answer), Ok(httparse::Status::Complete(_))), "{answer:?}");
    interpret(&parsed, head_request)
}

fn framing(answer: impl AsRef<[u8]>) -> Result<(Framing, bool), String> {
    let head = head_of(answer, false)?.expect("a final answer");
    Ok((head.framing, head.reusable))
}

#[test]
fn answers_are_framed_as_rfc_9112_section_6_3_says() {
    assert_eq!(framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), Ok((Framing::Length(5), true)));
    assert_eq!(framing("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n"), Ok((Framing::Length(5), true)));
    assert_eq!(framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), Ok((Framing::Chunked, true)));
    assert_eq!(framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"), Ok((Framing::Chunked, true)));
    // Both: the coding frames it, and the connection is not trusted again.
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
        Ok((Framing::Chunked, false))
    );
    // A coding that is not chunked last: the body ends when the connection does.
    assert_eq!(framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), Ok((Framing::UntilClose, false)));
    assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), Ok((Framing::UntilClose, false)));
    assert_eq!(framing("HTTP/1.1 204 No Content\r\n\r\n"), Ok((Framing::Empty, true)));
    assert_eq!(framing("HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\n\r\n"), Ok((Framing::Empty, true)));
    // Announcing a body it must not send: were it sent after all, it would be the next answer.
    assert_eq!(framing("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"), Ok((Framing::Empty, false)));
    assert_eq!(framing("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"), Ok((Framing::Empty, false)));
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"),
        Ok((Framing::Length(5), false))
    );
    assert_eq!(framing("HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n"), Ok((Framing::Length(5), false)));
    let head = head_of("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).unwrap().unwrap();
    assert_eq!(head.framing, Framing::Empty, "an answer to HEAD has no body, whatever its length says");
    assert!(!head.reusable, "and it is not trusted with the next request");
    let head = head_of("HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n", true).unwrap().unwrap();
    assert!(!head.reusable, "an answer to HEAD with no length: a GET's body would end with the connection");
    let head = head_of("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true).unwrap().unwrap();
    assert!(head.reusable, "an answer to HEAD of an empty body keeps its connection");
    // A coding on a line that is not plain text is none this proxy knows: not chunked.
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: \xff\r\n\r\n"),
        Ok((Framing::UntilClose, false))
    );
}

#[test]
fn a_length_without_a_body_is_passed_on_only_as_one_number() {
    let length = |answer: &str| {
        let head = head_of(answer, true).unwrap().unwrap();
        (head.announced_length, head.reusable)
    };
    assert_eq!(length("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"), (Some(5), false));
    assert_eq!(length("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n"), (Some(5), false));
    assert_eq!(length("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), (Some(0), true));
    assert_eq!(length("HTTP/1.1 200 OK\r\n\r\n"), (None, false), "no length to HEAD: the upstream meant to close");
    for odd in ["5\r\nContent-Length: 6", "abc", "-7, 99", "5, ", "\t5\t, 6"] {
        assert_eq!(length(&format!("HTTP/1.1 200 OK\r\nContent-Length: {odd}\r\n\r\n")), (None, false), "{odd}");
    }
}

#[test]
fn a_head_with_a_control_byte_in_a_field_is_never_read() {
    // The writers copy field values as read (`Forwarder::answer_head`): they rely on the parser
    // refusing what `HeaderValue` would.
    for value in [&b"a\x00b"[..], b"a\x7fb", b"a\rb", b"a\x1bb"] {
        let mut answer = b"HTTP/1.1 200 OK\r\nX-A: ".to_vec();
        answer.extend_from_slice(value);
        answer.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        assert!(httparse::Response::new(&mut fields).parse(&answer).is_err(), "{value:?}");
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let tab_and_text = b"HTTP/1.1 200 OK\r\nX-A: a\tb \xe9\r\n\r\n";
    assert!(httparse::Response::new(&mut fields).parse(tab_and_text).is_ok(), "a tab and obs-text are values");
}

#[test]
fn lengths_that_could_be_read_two_ways_are_refused() {
    for answer in [
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
    ] {
        assert!(framing(answer).is_err(), "{answer:?}");
    }
}

#[test]
fn interim_answers_are_skipped_and_an_unasked_switch_refused() {
    assert!(head_of("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n", false).unwrap().is_none());
    assert!(head_of("HTTP/1.1 100 Continue\r\n\r\n", false).unwrap().is_none());
    assert!(head_of("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", false).is_err());
}

#[test]
fn chunk_lines_are_read_strictly() {
    assert_eq!(chunk_size_line(b"1a\r\nrest").unwrap(), Some((26, 4)));
    assert_eq!(chunk_size_line(b"A;name=value\r\n").unwrap(), Some((10, 14)));
    assert_eq!(chunk_size_line(b"1a").unwrap(), None, "not a whole line yet");
    assert_eq!(chunk_size_line(b"1a\r").unwrap(), None, "not a whole line yet");
    for bad in [&b"\r\n"[..], b"-1\r\n", b"1a\n", b"1a\rx\n", b"g\r\n", b"0x10\r\n", b"1111111111111111\r\n"] {
        assert!(chunk_size_line(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    assert!(chunk_size_line(&[b'1'; MAX_LINE + 3]).is_err(), "a line without end");
}

struct Upstream {
    pool: Arc<RawUpstream>,
    task: tokio::task::JoinHandle<()>,
    /// A message each time the upstream has closed a connection.
    closed: tokio::sync::mpsc::UnboundedReceiver<()>,
}

/// An upstream that answers every connection's first request with `answer`, then closes if
/// `close` (else keeps the connection open and silent).
async fn upstream(answer: &'static [u8], close: bool) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (tell, closed) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let tell = tell.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let _ = socket.read(&mut request).await;
                let _ = socket.write_all(answer).await;
                if close {
                    drop(socket);
                    let _ = tell.send(());
                } else {
                    let _ = socket.read(&mut request).await;
                }
            });
        }
    });
    Upstream { pool: RawUpstream::new(address, TEST_DIAL, Duration::from_secs(60)), task, closed }
}

/// A client's head that is only the status, for tests of the body.
fn status_line(answer: &Answer<'_>) -> Result<Vec<u8>, String> {
    Ok(format!("{} head\r\n", answer.status.as_u16()).into_bytes())
}

/// No head for the client, for tests of the connection.
fn no_head(_: &Answer<'_>) -> Result<Vec<u8>, String> {
    Ok(Vec::new())
}

async fn relayed(answer: &'static [u8], close: bool) -> (Result<Vec<u8>, String>, usize) {
    let Upstream { pool, task, .. } = upstream(answer, close).await;
    let outcome = match pool.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", false, status_line).await {
        Err(e) => Err(e.to_string()),
        Ok(exchange) => {
            let mut client = Vec::new();
            match exchange.relay(&mut client, &pool).await {
                Ok(()) => Ok(client),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    task.abort();
    (outcome, pool.idle.len())
}

#[tokio::test]
async fn bodies_are_passed_on_framed_by_us_and_the_connection_kept_only_when_clean() {
    let (body, idle) = relayed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false).await;
    assert_eq!(body.unwrap(), b"200 head\r\nhello");
    assert_eq!(idle, 1, "read exactly to its end: kept");

    let chunked =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n1\r\n!\r\n0\r\nTrailer: t\r\n\r\n";
    let (body, idle) = relayed(chunked, false).await;
    assert_eq!(body.unwrap(), b"200 head\r\n5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n", "extensions and trailers dropped");
    assert_eq!(idle, 1);

    let (body, idle) = relayed(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", true).await;
    assert_eq!(body.unwrap(), b"200 head\r\nd\r\nuntil the end\r\n0\r\n\r\n", "re-chunked");
    assert_eq!(idle, 0);

    let (body, idle) = relayed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiEXTRA", false).await;
    assert_eq!(body.unwrap(), b"200 head\r\nhi", "only what the length says");
    assert_eq!(idle, 0, "bytes past the answer: not trusted again");
}

#[tokio::test]
async fn broken_answers_are_errors_never_passed_on_as_complete() {
    let (body, idle) = relayed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", true).await;
    assert!(body.unwrap_err().contains("broke off"));
    assert_eq!(idle, 0);
    let (body, _) = relayed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", true).await;
    assert!(body.unwrap_err().contains("CRLF"));
    let (body, _) = relayed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", true).await;
    assert!(body.unwrap_err().contains("broke off"));
    let (answer, _) = relayed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx", true).await;
    assert!(answer.unwrap_err().contains("not one number"), "a 502 before anything is written");
    let (answer, _) = relayed(b"", true).await;
    assert!(answer.unwrap_err().contains("without answering"));
}

#[tokio::test]
async fn a_kept_connection_the_upstream_closed_is_replaced_and_the_request_sent_once_on_the_new_one() {
    let Upstream { pool, task, mut closed } = upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true).await;
    // The first exchange keeps its connection; the upstream then closes it.
    let exchange = pool.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", false, no_head).await.unwrap();
    exchange.relay(&mut Vec::new(), &pool).await.unwrap();
    assert_eq!(pool.idle.len(), 1);
    closed.recv().await.expect("the upstream closed it");
    let exchange =
        pool.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", false, no_head).await.expect("sent again on a new connection");
    assert_eq!(exchange.head.status, StatusCode::OK);
    task.abort();
}

/// An upstream whose connections read one request, write `reply` (if any), then close; it counts
/// the requests it read.
async fn counting_upstream(
    reply: &'static [u8],
) -> (Arc<RawUpstream>, Arc<std::sync::atomic::AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = read.clone();
    let task = tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                if matches!(socket.read(&mut request).await, Ok(n) if n > 0) {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _ = socket.write_all(reply).await;
                }
            });
        }
    });
    (RawUpstream::new(address, TEST_DIAL, Duration::from_secs(60)), read, task)
}

#[tokio::test]
async fn a_request_the_upstream_drops_is_sent_twice_at_most_however_many_connections_are_kept() {
    let (pool, read, task) = counting_upstream(b"").await;
    // Five kept connections, open and quiet (the upstream has read nothing on them yet).
    for _ in 0..5 {
        let stream = pool.connect().await.unwrap();
        pool.give_back(stream, BytesMut::new());
    }
    let sent = pool.send(b"GET /once HTTP/1.1\r\nHost: a\r\n\r\n", false, no_head).await;
    assert!(matches!(sent, Err(SendError::Unreachable(_))), "a 502");
    let mut counted = 0;
    // Every connection that read it has counted it by the time it closed; wait for those two.
    while counted < 2 {
        tokio::task::yield_now().await;
        counted = read.load(Ordering::SeqCst);
    }
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(read.load(Ordering::SeqCst), 2, "the request, and one retry on a new connection");
    task.abort();
}

#[tokio::test]
async fn a_kept_connection_with_bytes_nobody_asked_for_is_never_used_again() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (go, stray_go) = tokio::sync::oneshot::channel::<()>();
    let (stray_sent, stray_arrived) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut stray = Some((stray_go, stray_sent));
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let first = stray.take();
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let _ = socket.read(&mut request).await;
                socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
                if let Some((go, sent)) = first {
                    // Once the answer has been read and the connection kept: an answer to no
                    // request.
                    go.await.unwrap();
                    socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON").await.unwrap();
                    let _ = sent.send(());
                }
                let _ = socket.read(&mut request).await;
            });
        }
    });
    let pool = RawUpstream::new(address, TEST_DIAL, Duration::from_secs(60));
    let exchange = pool.send(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n", false, no_head).await.unwrap();
    let mut client = Vec::new();
    exchange.relay(&mut client, &pool).await.unwrap();
    assert_eq!(pool.idle.len(), 1, "kept");
    go.send(()).unwrap();
    stray_arrived.await.unwrap();
    let exchange = pool.send(b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n", false, no_head).await.unwrap();
    let mut client = Vec::new();
    exchange.relay(&mut client, &pool).await.unwrap();
    assert_eq!(client, b"ok", "the second request's own answer, from a new connection");
    task.abort();
}

#[tokio::test]
async fn a_kept_connection_keeps_its_empty_read_buffer_but_never_one_a_large_body_grew() {
    let big: &'static [u8] = {
        let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n".to_vec();
        answer.resize(answer.len() + 200_000, b'x');
        Box::leak(answer.into_boxed_slice())
    };
    for (answer, kept_capacity) in [(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..], READ_BUFFER), (big, 0)] {
        let Upstream { pool, task, .. } = upstream(answer, false).await;
        let exchange = pool.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", false, no_head).await.unwrap();
        let mut client = Vec::new();
        exchange.relay(&mut client, &pool).await.unwrap();
        assert_eq!(client.len(), answer.len() - answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4);
        let idle = pool.idle.pop().expect("the connection was kept");
        assert!(idle.read.is_empty(), "nothing of one answer is ever left for the next");
        assert_eq!(idle.read.capacity(), kept_capacity);
        task.abort();
    }
}

#[test]
fn bytes_that_came_after_an_answer_are_seen_before_its_connection_is_lent_again() {
    // One thread, and no await between the stray bytes' arrival and the next take: the runtime
    // has not polled for events since the answer's last (short) read told it the socket was empty.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let upstream = StrayAfterAnswer::start();
    runtime.block_on(async {
        let pool = RawUpstream::new(upstream.address.to_string(), TEST_DIAL, Duration::from_secs(60));
        let exchange = pool.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", false, no_head).await.unwrap();
        exchange.relay(&mut Vec::new(), &pool).await.unwrap();
        assert_eq!(pool.idle.len(), 1, "kept after a clean answer");
        upstream.send_stray();
        assert!(pool.take_idle().is_none(), "a connection with an answer nobody asked for is never lent");
        assert_eq!(pool.idle.len(), 0, "and it is closed");
    });
    upstream.join();
}

/// An interim answer (1xx) means the upstream read the request: a kept connection that then
/// closes is not tried again, even when the 103 was all there was to read.
#[tokio::test]
async fn a_request_answered_in_part_with_an_interim_answer_is_not_sent_again() {
    let (pool, read, task) = counting_upstream(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n").await;
    let stream = pool.connect().await.unwrap();
    pool.give_back(stream, BytesMut::new());
    let sent = pool.send(b"GET /once HTTP/1.1\r\nHost: a\r\n\r\n", false, no_head).await;
    assert!(matches!(sent, Err(SendError::Unreachable(_))), "a 502");
    assert_eq!(read.load(Ordering::SeqCst), 1, "sent once: the 103 said it was read");
    task.abort();
}

/// After a burst opened several connections, the one used last is used next: its state is the
/// warm one. The ones under it are left alone, so the reaper can close them once they have been
/// idle for the pool's timeout.
#[tokio::test]
async fn the_connection_kept_last_is_lent_first_and_the_unused_ones_age_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let idle_timeout = Duration::from_millis(200);
    let pool = RawUpstream::new(address.to_string(), TEST_DIAL, idle_timeout);
    let (mut ends, mut locals) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let stream = TcpStream::connect(address).await.unwrap();
        locals.push(stream.local_addr().unwrap());
        ends.push(listener.accept().await.unwrap().0);
        let socket = std::os::fd::AsRawFd::as_raw_fd(&stream);
        pool.give_back(ResetIfUnacknowledged::new(stream, socket), BytesMut::new());
    }
    let (taken, read) = pool.take_idle().expect("three are kept");
    assert_eq!(taken.local_addr().unwrap(), locals[2], "the last one kept");
    pool.give_back(taken, read);
    let (taken, read) = pool.take_idle().unwrap();
    assert_eq!(taken.local_addr().unwrap(), locals[2], "and again, not the next in a round");
    pool.give_back(taken, read);

    // The two under it go stale while the top one is used, as a quiet load would.
    let stale_after = std::time::Instant::now() + idle_timeout + Duration::from_millis(50);
    while std::time::Instant::now() < stale_after {
        let (taken, read) = pool.take_idle().unwrap();
        pool.give_back(taken, read);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pool.reap_idle();
    assert_eq!(pool.idle.len(), 1, "only the one in use is left");
    assert_eq!(pool.take_idle().unwrap().0.local_addr().unwrap(), locals[2]);
}
