//! Unit tests for `server::connection::linger`, over real loopback sockets: what lingers, for how
//! long, and how many at once.

use super::*;
use std::os::fd::AsRawFd;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A client with a small receive window, and the proxy's side of its connection.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let client = socket.connect(listener.local_addr().unwrap()).await.unwrap();
    (client, listener.accept().await.unwrap().0)
}

/// The proxy's side, asked to make room, with an answer in it that the client has not read
/// (`unread` bytes of it, or nothing), dropped: how every displaced connection ends.
async fn displace(server: TcpStream, peer: &str, unread: bool) -> usize {
    let activity = Activity::for_tests();
    activity.watch_socket(server.as_raw_fd());
    let mut written = 0;
    if unread {
        // Until the socket takes no more: the rest of the answer waits in it.
        loop {
            server.writable().await.unwrap();
            match server.try_write(&[7u8; 65536]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && written > 0 => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert_eq!(unacknowledged_bytes(server.as_raw_fd()).is_some_and(|n| n > 0), unread);
    assert!(activity.ask_to_close_for_tests());
    drop(Lingering::new(server, activity, peer.parse().unwrap()));
    written
}

#[tokio::test]
async fn a_displaced_connection_whose_client_has_everything_is_closed_at_once() {
    let (mut client, server) = pair().await;
    displace(server, "192.0.2.1", false).await;
    assert_eq!(lingering_from("192.0.2.1".parse().unwrap()), 0);
    let mut rest = Vec::new();
    assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0, "closed");
}

#[tokio::test]
async fn a_displaced_connection_lingers_until_its_client_has_all_it_was_sent_and_no_more_at_once_than_allowed() {
    // Its client sends its next request before reading the answer: it still gets all of it,
    // and the end of it, not a reset.
    let (mut client, server) = pair().await;
    let written = displace(server, "192.0.2.2", true).await;
    assert_eq!(lingering_from("192.0.2.2".parse().unwrap()), 1);
    client.write_all(b"GET /next HTTP/1.1\r\nHost: example\r\n\r\n").await.unwrap();
    let mut all = Vec::new();
    client.read_to_end(&mut all).await.expect("the end of the answer, not a reset");
    assert_eq!(all.len(), written);
    // Once the client has acknowledged everything, the linger ends, though the client stays.
    let ended = async {
        while lingering_from("192.0.2.2".parse().unwrap()) > 0 {
            tokio::time::sleep(LOOK_EVERY).await;
        }
    };
    tokio::time::timeout(LINGER_STALLED / 2, ended).await.expect("over when all was acknowledged");

    // One address at its bound: its next displaced connection is closed outright.
    let crowded: IpAddr = "192.0.2.3".parse().unwrap();
    let held: Vec<_> = (0..MAX_LINGERING_PER_ADDRESS).map(|_| Place::take(Address::of(crowded)).unwrap()).collect();
    let (_client, server) = pair().await;
    displace(server, "192.0.2.3", true).await;
    assert_eq!(lingering_from(crowded), MAX_LINGERING_PER_ADDRESS);
    assert!(Place::take(Address::of("192.0.2.4".parse().unwrap())).is_some(), "another address still may");
    drop(held);
    assert_eq!(lingering_from(crowded), 0);

    // All of them taken: closed outright too.
    let all = LINGERING.acquire_many(MAX_LINGERING as u32).await.unwrap();
    let (_client, server) = pair().await;
    displace(server, "192.0.2.5", true).await;
    assert_eq!(lingering_from("192.0.2.5".parse().unwrap()), 0);
    drop(all);
}

#[tokio::test]
async fn a_connection_closed_for_any_other_reason_does_not_linger() {
    let (mut client, server) = pair().await;
    let activity = Activity::for_tests();
    activity.watch_socket(server.as_raw_fd());
    drop(Lingering::new(server, activity, "192.0.2.6".parse().unwrap()));
    let mut rest = Vec::new();
    assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
    assert_eq!(lingering_from("192.0.2.6".parse().unwrap()), 0);
}
