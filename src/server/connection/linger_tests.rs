//! Unit tests for `server::connection::linger`, over real loopback sockets: what lingers, for how
//! long, and how many at once.

use super::*;
use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The places are one for the process: tests that count them run one at a time.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    drop(Lingering::new(server, activity, peer.parse().unwrap(), None, LINGER_STALLED));
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
    let _alone = ALONE.lock().await;
    // Its client sends its next request before reading the answer: it still gets all of it,
    // and the end of it, not a reset.
    let (mut client, server) = pair().await;
    let written = displace(server, "192.0.2.2", true).await;
    assert_eq!(lingering_from("192.0.2.2".parse().unwrap()), 1);
    delivered_whole(&mut client, written).await;
    // Once the client has acknowledged everything, the linger ends, though the client stays.
    lingering_ends("192.0.2.2").await;

    // One holder at its bound: its next displaced connection is closed outright, and reset:
    // what its client had not taken is dropped, not left to the kernel to send.
    let crowded: IpAddr = "192.0.2.3".parse().unwrap();
    let held = fill(crowded, MAX_LINGERING_PER_HOLDER);
    let (mut crowded_client, server) = pair().await;
    displace(server, "192.0.2.3", true).await;
    assert_eq!(lingering_from(crowded), MAX_LINGERING_PER_HOLDER);
    reset_before_the_end(&mut crowded_client).await;
    assert!(Place::take(Address::of("192.0.2.4".parse().unwrap())).is_some(), "another address still may");
    drop(held);
    assert_eq!(lingering_from(crowded), 0);
}

/// The displaced client sends its next request before reading the rest of its answer, and
/// still gets all of it, and the end of it, not a reset.
async fn delivered_whole(client: &mut TcpStream, written: usize) {
    client.write_all(b"GET /next HTTP/1.1\r\nHost: example\r\n\r\n").await.unwrap();
    let mut all = Vec::new();
    client.read_to_end(&mut all).await.expect("the end of the answer, not a reset");
    assert_eq!(all.len(), written);
}

/// The client reads what reached it, then meets a reset, not the end of its answer.
async fn reset_before_the_end(client: &mut TcpStream) {
    let mut all = Vec::new();
    let ended = client.read_to_end(&mut all).await;
    let error = ended.expect_err("reset, not closed after the whole answer");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "after {} bytes", all.len());
}

/// A client that takes in nothing more: its linger ends after [`LINGER_STALLED`] and the
/// socket is reset, so the kernel does not go on holding (and sending) the rest of the answer
/// after the proxy let go of it.
#[tokio::test(start_paused = true)]
async fn a_lingering_client_that_stops_taking_in_its_answer_is_reset_when_its_linger_ends() {
    let _alone = ALONE.lock().await;
    let (mut client, server) = pair().await;
    displace(server, "192.0.2.7", true).await;
    assert_eq!(lingering_from("192.0.2.7".parse().unwrap()), 1);
    let stalled = async {
        while lingering_from("192.0.2.7".parse().unwrap()) > 0 {
            tokio::time::sleep(LOOK_EVERY).await;
        }
    };
    tokio::time::timeout(LINGER_STALLED * 2, stalled).await.expect("over once stalled");
    reset_before_the_end(&mut client).await;
}

/// Once its client has acknowledged everything, `peer`'s linger ends, though the client stays.
async fn lingering_ends(peer: &str) {
    let peer: IpAddr = peer.parse().unwrap();
    let ended = async {
        while lingering_from(peer) > 0 {
            tokio::time::sleep(LOOK_EVERY).await;
        }
    };
    tokio::time::timeout(LINGER_STALLED / 2, ended).await.expect("over when all was acknowledged");
}

/// Takes `n` places for `peer`'s holder, as that many lingering sockets would.
fn fill(peer: IpAddr, n: usize) -> Vec<(Place, oneshot::Receiver<()>)> {
    (0..n).map(|_| Place::take(Address::of(peer)).expect("a free place")).collect()
}

/// Eight clients keeping their answers unread from 128 sockets each held every place, and any
/// other client displaced meanwhile was closed outright: reset before it had its answer.
#[tokio::test]
async fn when_every_place_is_taken_a_client_with_fewer_takes_the_largest_holders_oldest() {
    let _alone = ALONE.lock().await;
    let mut held: Vec<_> =
        (1..=8).map(|i| fill(format!("198.51.100.{i}").parse().unwrap(), MAX_LINGERING_PER_HOLDER)).collect();
    assert_eq!(places().taken, MAX_LINGERING);

    let (mut client, server) = pair().await;
    let written = displace(server, "203.0.113.9", true).await;
    assert_eq!(lingering_from("203.0.113.9".parse().unwrap()), 1, "it lingers");
    assert_eq!(places().taken, MAX_LINGERING, "in a place taken back, not a new one");
    // Taken back from the oldest of the largest holders' sockets (all hold as many): the first.
    assert!(held[0][0].1.try_recv().is_ok(), "the oldest socket is told to close");
    let told = held.iter_mut().flatten().filter_map(|(_, taken_back)| taken_back.try_recv().ok()).count();
    assert_eq!(told, 0, "and no other");
    assert_eq!(lingering_from("198.51.100.1".parse().unwrap()), MAX_LINGERING_PER_HOLDER - 1);
    delivered_whole(&mut client, written).await;

    // Its linger over, its place is free; the one taken back is not given back twice.
    lingering_ends("203.0.113.9").await;
    assert_eq!(places().taken, MAX_LINGERING - 1);
    drop(held[0].remove(0));
    assert_eq!(places().taken, MAX_LINGERING - 1);
    drop(held);
    assert_eq!(places().taken, 0, "every place back once its socket ended");
}

/// No churn between equals: when every holder has as many as the largest, a displaced socket
/// is closed outright rather than closing another's.
#[tokio::test]
async fn when_every_place_is_taken_a_holder_with_as_many_as_the_largest_gets_none() {
    let _alone = ALONE.lock().await;
    let per = MAX_LINGERING / 16;
    let mut held: Vec<_> = (1..=16).map(|i| fill(format!("198.51.100.{i}").parse().unwrap(), per)).collect();
    assert!(Place::take(Address::of("198.51.100.1".parse().unwrap())).is_none());
    let told = held.iter_mut().flatten().filter_map(|(_, taken_back)| taken_back.try_recv().ok()).count();
    assert_eq!(told, 0);
    assert_eq!(places().taken, MAX_LINGERING);
    drop(held);
    assert_eq!(places().taken, 0);
}

/// A connection that closed of its own accord (`Connection: close`) with its answer not yet
/// taken in keeps its place in `limits.max_connections` until its client has it all, and the
/// client gets all of it and the end, not a reset.
#[tokio::test]
async fn a_connection_that_closed_with_its_answer_unread_keeps_its_place_until_the_client_has_it() {
    use crate::server::capacity::Capacity;
    use crate::server::shares::Shares;
    let (mut client, server) = pair().await;
    let capacity = Capacity::new(1, Shares::new(1, 2, vec![]));
    let peer: IpAddr = "192.0.2.8".parse().unwrap();
    let admitted = capacity.try_admit(peer).unwrap();
    let activity = admitted.entry.activity().clone();
    activity.watch_socket(server.as_raw_fd());
    let mut written = 0;
    while let Ok(n) = server.try_write(&[7u8; 65536]) {
        written += n;
    }
    let place = Arc::new(admitted.permit);
    drop(admitted.entry);
    drop(Lingering::new(server, activity, peer, Some(place), LINGER_STALLED));
    assert_eq!(lingering_from(peer), 0, "not in a lingering place: in its own");
    assert!(capacity.try_admit("198.51.100.9".parse().unwrap()).is_none(), "its place is still held");

    let mut all = Vec::new();
    client.read_to_end(&mut all).await.expect("the whole answer and the end, not a reset");
    assert_eq!(all.len(), written);
    let back = async {
        loop {
            if let Some(admitted) = capacity.try_admit("198.51.100.9".parse().unwrap()) {
                return admitted;
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    };
    tokio::time::timeout(LINGER_STALLED / 2, back).await.expect("its place back once the client had it all");
}

#[tokio::test]
async fn a_connection_closed_with_nothing_unacknowledged_closes_at_once() {
    let (mut client, server) = pair().await;
    let activity = Activity::for_tests();
    activity.watch_socket(server.as_raw_fd());
    drop(Lingering::new(server, activity, "192.0.2.6".parse().unwrap(), None, LINGER_STALLED));
    let mut rest = Vec::new();
    assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
    assert_eq!(lingering_from("192.0.2.6".parse().unwrap()), 0);
}

/// Clients from more holders than there are places, each holding one, took back the place of the
/// oldest socket one after another: arriving at 150 a second they pushed out a reader that was
/// downloading at full speed after 7 s (the fourth attack pass). The place taken back is now the
/// one draining slowest, so the reader keeps its own for as long as it reads faster.
#[tokio::test(start_paused = true)]
async fn when_every_holder_has_one_the_place_taken_back_is_the_slowest_draining_not_the_oldest() {
    let _alone = ALONE.lock().await;
    let address =
        |i: usize| -> IpAddr { format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255).parse().unwrap() };
    // The reader's is the oldest place.
    let (reader, mut reader_told) = Place::take(Address::of("203.0.113.50".parse().unwrap())).unwrap();
    let mut others: VecDeque<_> = (1..MAX_LINGERING).map(|i| Place::take(Address::of(address(i))).unwrap()).collect();
    tokio::time::advance(SHOWN_WITHIN).await;
    reader.draining.store(drain_score(0, 10_000), Ordering::Relaxed);

    for round in 0..2 {
        // A newcomer from a fresh holder each time, as fast as they come: each takes back the
        // oldest of the slow sockets, never the reader's, and never one in its first second
        // while an older one is there.
        for i in 0..MAX_LINGERING - 1 {
            let newcomer = Place::take(Address::of(address(MAX_LINGERING * (round + 1) + i))).expect("a place");
            let (_, told) = others.front_mut().unwrap();
            assert!(told.try_recv().is_ok(), "round {round}, newcomer {i}: the oldest slow socket is closed");
            others.pop_front();
            assert!(reader_told.try_recv().is_err(), "round {round}, newcomer {i}: the reader keeps its place");
            others.push_back(newcomer);
        }
        // The newcomers have had their second: now they are the slow ones.
        tokio::time::advance(SHOWN_WITHIN).await;
    }
    assert_eq!(places().taken, MAX_LINGERING);
    drop(others);
    drop(reader);
    assert_eq!(places().taken, 0);
}

#[test]
fn a_client_reading_a_little_every_few_seconds_scores_below_one_reading_steadily() {
    // A look every 100 ms for 10 s: one client reads 16 KiB every 3 s (enough not to stall),
    // the other 1 KiB every look (10 KB/s). For a moment after its read the first scores
    // higher; from a second after it, lower until its next. (Among many such sockets read at
    // different moments, the place taken back is one far from its read.)
    let (mut bursty, mut steady) = (0, 0);
    for look in 1..=100 {
        bursty = drain_score(bursty, if look % 30 == 0 { 16384 } else { 0 });
        steady = drain_score(steady, 1024);
        if look >= 10 && look % 30 >= 10 {
            assert!(steady > bursty, "look {look}: {steady} against {bursty}");
        }
    }
    assert!(steady > 7 * 1024 && steady <= 8 * 1024, "about 0.8 s of its rate: {steady}");
    let mut stopped = steady;
    for _ in 0..30 {
        stopped = drain_score(stopped, 0);
    }
    assert!(stopped < steady / 50, "three seconds without reading count for almost nothing: {stopped}");
}
