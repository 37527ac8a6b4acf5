//! What a broken or hostile upstream answers: the gate passes on one framing of each answer, so
//! the client reads the body the upstream sent and the next answer on the same connection stays
//! the next one.

use tokio::io::AsyncWriteExt;

use crate::harness::{ALICE, Browser, proxy};

/// An upstream that answers `/both` framed two ways at once (chunked, and a `Content-Length`
/// shorter than the chunks), and anything else plainly, on keep-alive connections.
async fn double_framing_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                while let Some(head) = super::request_head(&mut stream).await {
                    let answer: &[u8] = if head.starts_with(b"GET /both ") {
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter"
                    };
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// RFC 9112 §6.3: `Transfer-Encoding` wins over `Content-Length`, and an intermediary drops the
/// length. Passed on, the length cut the body short and left the rest where the next answer
/// belongs.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_framed_two_ways_reaches_the_client_whole_and_framed_once() {
    let upstream = double_framing_upstream().await;
    let proxy = proxy(&format!("http://{upstream}")).start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    for _ in 0..3 {
        let both = browser.navigate(&proxy.url("/both")).await;
        assert_eq!(both.status(), 200);
        let length = both.headers().get("content-length").cloned();
        assert!(
            length.is_none() || length.as_ref().is_some_and(|l| l == "11"),
            "the upstream's length kept: {length:?}"
        );
        assert_eq!(both.text().await.unwrap(), "hello world", "the whole body, as the chunks framed it");
        // The same keep-alive connection: the next answer is the next request's.
        let after = browser.navigate(&proxy.url("/after")).await;
        assert_eq!((after.status().as_u16(), after.text().await.unwrap().as_str()), (200, "after"));
    }
}
