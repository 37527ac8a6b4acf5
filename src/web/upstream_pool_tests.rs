//! The pool against a real HTTP/1.1 server on loopback that counts the connections it accepts.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Body, Frame};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;

use super::UpstreamPool;

/// An upstream that answers `/small`, `/close` (with `Connection: close`), `/big` (1 MiB),
/// `/chunked` (three chunks, no length) and `/which` (the number of the connection it came on,
/// from 1); the counter is its accepted connections.
async fn upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let number = counter.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| async move {
                    type Boxed = http_body_util::combinators::BoxBody<Bytes, Infallible>;
                    let response: Response<Boxed> = match request.uri().path() {
                        "/close" => Response::builder()
                            .header(header::CONNECTION, "close")
                            .body(Full::new(Bytes::from_static(b"bye")).boxed())
                            .unwrap(),
                        "/big" => Response::new(Full::new(Bytes::from(vec![b'x'; 1 << 20])).boxed()),
                        "/chunked" => {
                            let chunks =
                                ["one ", "two ", "three"].map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from(c))));
                            Response::new(StreamBody::new(futures_util::stream::iter(chunks)).boxed())
                        }
                        "/which" => Response::new(Full::new(Bytes::from(number.to_string())).boxed()),
                        _ => Response::new(Full::new(Bytes::from_static(b"hello")).boxed()),
                    };
                    Ok::<_, Infallible>(response)
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (address, accepted)
}

type Outgoing = BoxBody<Bytes, Infallible>;

fn pool(address: std::net::SocketAddr, idle_timeout: Duration) -> Arc<UpstreamPool<Outgoing>> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let tls = rustls::ClientConfig::builder_with_provider(crate::base::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    UpstreamPool::new(connector, format!("http://{address}/").parse().unwrap(), idle_timeout)
}

fn get(path: &str) -> Request<Outgoing> {
    Request::get(path).header(header::HOST, "upstream.test").body(Empty::new().boxed()).unwrap()
}

/// Sends a GET and reads the whole body through the pool's wrapper.
async fn fetch(pool: &Arc<UpstreamPool<Outgoing>>, path: &str) -> String {
    let (response, lease) = pool.send(get(path)).await.unwrap();
    let (_, body) = response.into_parts();
    let bytes = lease.attach(body).collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn a_connection_whose_body_was_read_to_the_end_serves_the_next_request() {
    let (address, accepted) = upstream().await;
    let pool = pool(address, Duration::from_secs(90));
    for _ in 0..5 {
        assert_eq!(fetch(&pool, "/small").await, "hello");
        assert_eq!(fetch(&pool, "/chunked").await, "one two three");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle_count(), 1);
}

#[tokio::test]
async fn a_body_dropped_half_read_closes_its_connection() {
    let (address, accepted) = upstream().await;
    let pool = pool(address, Duration::from_secs(90));
    let (response, lease) = pool.send(get("/big")).await.unwrap();
    let mut body = lease.attach(response.into_body());
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some_and(|d| d.len() < 1 << 20), "the body must still be unread in part");
    assert!(!body.is_end_stream());
    drop(body);
    // The rest of that body is still on the wire: reusing the connection would hand it to the
    // next request as its answer.
    assert_eq!(pool.idle_count(), 0);
    assert_eq!(fetch(&pool, "/small").await, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_the_upstream_closes_is_not_used_again() {
    let (address, accepted) = upstream().await;
    let pool = pool(address, Duration::from_secs(90));
    assert_eq!(fetch(&pool, "/close").await, "bye");
    assert_eq!(fetch(&pool, "/small").await, "hello");
    assert_eq!(fetch(&pool, "/small").await, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_pool_without_keepalive_closes_each_connection_after_its_answer() {
    let (address, accepted) = upstream().await;
    let pool = pool(address, Duration::ZERO);
    for _ in 0..3 {
        assert_eq!(fetch(&pool, "/small").await, "hello");
        assert_eq!(pool.idle_count(), 0, "nothing is kept");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "a connection a request");
}

#[tokio::test]
async fn connections_idle_past_the_timeout_are_closed() {
    let (address, accepted) = upstream().await;
    // Every connection is past a timeout of a nanosecond as soon as it is given back (zero
    // would mean connections are not kept at all: the next test).
    let pool = pool(address, Duration::from_nanos(1));
    assert_eq!(fetch(&pool, "/small").await, "hello");
    assert_eq!(pool.idle_count(), 1);
    pool.reap_idle();
    assert_eq!(pool.idle_count(), 0);
    // Nor is one taken from the queue when stale.
    assert_eq!(fetch(&pool, "/small").await, "hello");
    assert_eq!(fetch(&pool, "/small").await, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn requests_at_the_same_time_get_a_connection_each_and_all_come_back() {
    let (address, accepted) = upstream().await;
    let pool = pool(address, Duration::from_secs(90));
    // All eight are sent before any answer is read: none can wait for another's connection.
    let mut answers = Vec::new();
    for _ in 0..8 {
        answers.push(pool.send(get("/small")).await.unwrap());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 8);
    for (response, lease) in answers {
        assert_eq!(lease.attach(response.into_body()).collect().await.unwrap().to_bytes(), "hello");
    }
    assert_eq!(pool.idle_count(), 8);
    for _ in 0..16 {
        assert_eq!(fetch(&pool, "/small").await, "hello");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 8);
}

#[tokio::test]
async fn the_connection_given_back_last_is_lent_first() {
    let (address, accepted) = upstream().await;
    let pool = pool(address, Duration::from_secs(90));
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(pool.send(get("/which")).await.unwrap());
    }
    // Given back in the order they were dialled: the third is the warmest.
    for (response, lease) in answers {
        lease.attach(response.into_body()).collect().await.unwrap();
    }
    for _ in 0..4 {
        assert_eq!(fetch(&pool, "/which").await, "3", "last in, first out (first in, first out cycles 1, 2, 3)");
    }
    assert_eq!((accepted.load(Ordering::SeqCst), pool.idle_count()), (3, 3));
}

#[tokio::test]
async fn an_upstream_that_is_not_there_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let pool = pool(address, Duration::from_secs(90));
    let Err(error) = pool.send(get("/small")).await else { panic!("nothing listens there") };
    assert!(matches!(error, super::PoolError::Connect(_)), "{error:?}");
}

/// An upstream that answers `/early` at once, without reading the request body, and then never
/// reads from that connection again (as an app answering 401 or 413 to an upload might, behind a
/// full socket); anything else gets a keep-alive 200. Counts the connections it accepts.
async fn early_answering_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buffer[..n]),
                        }
                        continue;
                    };
                    if seen.starts_with(b"POST /early") {
                        stream.write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\nno").await.unwrap();
                        // Holds the connection, reading nothing more.
                        std::future::pending::<()>().await;
                    }
                    seen.drain(..end + 4);
                    stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").await.unwrap();
                }
            });
        }
    });
    (address, accepted)
}

fn post(path: &str, body: Outgoing) -> Request<Outgoing> {
    Request::post(path).header(header::HOST, "upstream.test").body(body).unwrap()
}

/// Guards against a hang, which is the failure these tests look for.
async fn within<T>(what: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), what)
        .await
        .expect("the pool made a request wait for another's exchange")
}

#[tokio::test]
async fn a_connection_answered_before_its_upload_was_sent_is_closed_not_lent_to_the_next_request() {
    let (address, accepted) = early_answering_upstream().await;
    let pool = pool(address, Duration::from_secs(90));
    // An upload that sends a little and then nothing (its client is slow, or an attacker).
    let (more, rest) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    more.send(Ok(Frame::data(Bytes::from_static(b"first bytes")))).await.unwrap();
    let upload = StreamBody::new(tokio_stream_from(rest)).boxed();
    let (response, lease) = pool.send(post("/early", upload)).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(lease.attach(response.into_body()).collect().await.unwrap().to_bytes(), "no");
    assert_eq!(pool.idle_count(), 0, "its upload still holds that connection");
    assert_eq!(within(fetch(&pool, "/small")).await, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    drop(more);
}

#[tokio::test]
async fn a_connection_still_writing_its_last_request_is_passed_over() {
    let (address, accepted) = early_answering_upstream().await;
    let pool = pool(address, Duration::from_secs(90));
    // All of it handed over at once, more than the sockets hold: hyper is still writing it when
    // the answer has come, and will be for as long as the upstream reads nothing.
    let upload = Full::new(Bytes::from(vec![b'x'; 16 << 20])).boxed();
    let (response, lease) = pool.send(post("/early", upload)).await.unwrap();
    assert_eq!(lease.attach(response.into_body()).collect().await.unwrap().to_bytes(), "no");
    assert_eq!(within(fetch(&pool, "/small")).await, "hello");
    assert_eq!(within(fetch(&pool, "/small")).await, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// A stream of the frames sent into `receiver`, ending when its sender is dropped.
fn tokio_stream_from<T>(mut receiver: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

/// An upstream that answers its first connection's first request with a second, unasked-for
/// answer in the same write, and every other request plainly.
async fn stray_answering_upstream() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let stray = std::mem::take(&mut first);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut answered = 0;
                loop {
                    let mut more = [0u8; 4096];
                    let Ok(n) = stream.read(&mut more).await else { return };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&more[..n]);
                    while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        buffer.drain(..end + 4);
                        let answer: &[u8] = if stray && answered == 0 {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"
                        } else if stray {
                            // The stray answer stands for this one.
                            b""
                        } else {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine"
                        };
                        answered += 1;
                        let _ = stream.write_all(answer).await;
                    }
                }
            });
        }
    });
    address
}

/// hyper's client reads past an answer's end only into its own buffer, and an HTTP/1.1 client
/// connection with bytes left over between exchanges is broken, never lent: the next request goes
/// to a new connection and gets its own answer.
#[tokio::test]
async fn an_answer_nobody_asked_for_is_never_the_next_requests() {
    let address = stray_answering_upstream().await;
    let pool = pool(address, Duration::from_secs(30));
    assert_eq!(fetch(&pool, "/first").await, "ok");
    for _ in 0..3 {
        assert_eq!(fetch(&pool, "/second").await, "fine", "the stray answer never goes to the next request");
    }
}

/// An upstream (a thread of its own, blocking sockets) that answers its first request with `ok`
/// and, when asked, writes an answer nobody asked for on the same connection: the pools' tests
/// of stale readiness share it.
pub(crate) struct StrayAfterAnswer {
    pub address: std::net::SocketAddr,
    send_stray: std::sync::mpsc::Sender<()>,
    stray_written: std::sync::mpsc::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl StrayAfterAnswer {
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let (send_stray, stray_asked) = std::sync::mpsc::channel::<()>();
        let (stray_sent, stray_written) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut socket, _) = listener.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).unwrap();
            socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
            stray_asked.recv().unwrap();
            socket.write_all(b"HTTP/1.1 200 OK\r\nX-Forwarded-User: admin\r\nContent-Length: 4\r\n\r\nevil").unwrap();
            stray_sent.send(()).unwrap();
            // Open until the other side closes: a connection must be refused for its bytes, not
            // for its end.
            let _ = socket.read(&mut request);
        });
        Self { address, send_stray, stray_written, thread }
    }

    /// Writes the stray answer and returns once it is written. Blocking on purpose, so the
    /// caller's runtime cannot poll for events meanwhile; over loopback the bytes are in the
    /// caller's socket once the write returned.
    pub fn send_stray(&self) {
        self.send_stray.send(()).unwrap();
        self.stray_written.recv().unwrap();
    }

    /// Waits for the upstream's thread, which ends when the proxy's side of its connection closes.
    pub fn join(self) {
        self.thread.join().unwrap();
    }
}

/// Bytes that arrive after an answer, while its connection is idle, are seen before the
/// connection is lent again, even when the runtime has not polled for events since: hyper would
/// read them as the next request's answer.
#[test]
fn bytes_that_came_after_an_answer_are_seen_before_its_connection_is_lent_again() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let upstream = StrayAfterAnswer::start();
    runtime.block_on(async {
        let pool = pool(upstream.address, Duration::from_secs(30));
        assert_eq!(fetch(&pool, "/first").await, "ok");
        assert_eq!(pool.idle_count(), 1, "kept after a clean answer");
        upstream.send_stray();
        assert!(pool.take_idle().is_none(), "a connection with an answer nobody asked for is never lent");
        // Closed for its bytes, not passed over as busy (which would leave it in the queue).
        assert_eq!(pool.idle_count(), 0);
    });
    // The connection's task (and with it the socket) ends with the runtime.
    drop(runtime);
    upstream.join();
}
