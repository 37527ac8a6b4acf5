//! Unit tests for `server::capacity`: making room, shares, handing a place over, stopping.

use super::*;

const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

/// A budget of `places`, `per_address` for each address and twice that per IPv6 /48.
fn budget(places: usize, per_address: usize, exempt: Vec<ipnet::IpNet>) -> Arc<Capacity> {
    Capacity::new(places, Shares::new(per_address, per_address * 2, exempt))
}

#[tokio::test]
async fn stopping_reaches_every_connection_waiting_or_not_and_any_admitted_after() {
    let capacity = budget(4, 4, vec![]);
    let waiting = capacity.try_admit(CLIENT).unwrap();
    let busy = capacity.try_admit(CLIENT).unwrap();
    let _request = busy.entry.activity().begin();
    let activity = waiting.entry.activity().clone();
    let heard = tokio::spawn(async move { activity.signalled().await });
    tokio::task::yield_now().await;
    assert!(!heard.is_finished(), "nothing said yet");
    assert_eq!(waiting.entry.activity().signal(), None);

    capacity.stop_all();
    let heard = tokio::time::timeout(Duration::from_secs(5), heard).await.expect("woken").unwrap();
    assert_eq!(heard, Signal::Stop, "the waiting connection is woken");
    assert_eq!(busy.entry.activity().signal(), Some(Signal::Stop), "a busy one sees it at its next look");
    let late = capacity.try_admit(CLIENT).unwrap();
    assert_eq!(late.entry.activity().signal(), Some(Signal::Stop), "one admitted meanwhile is told too");
    // Stopping outranks making room, and making room is heard by itself.
    assert!(late.entry.activity().ask_to_close(&mut None));
    assert_eq!(late.entry.activity().signal(), Some(Signal::Stop));
    let room = budget(1, 1, vec![]).try_admit(CLIENT).unwrap();
    assert!(
        room.entry.activity().ask_to_close(&mut None) && !room.entry.activity().ask_to_close(&mut None),
        "claimed once"
    );
    assert_eq!(room.entry.activity().signal(), Some(Signal::MakeRoom));
    tokio::time::timeout(Duration::from_secs(5), room.entry.activity().close_requested()).await.expect("at once");
}

#[tokio::test(start_paused = true)]
async fn the_connection_idle_longest_makes_room_and_busy_ones_never_do() {
    let capacity = budget(3, 3, vec![]);
    let oldest = capacity.make_room(CLIENT).await.unwrap();
    tokio::time::advance(Duration::from_secs(5)).await;
    let busy = capacity.make_room(CLIENT).await.unwrap();
    let _request = busy.entry.activity().begin();
    let recent = capacity.make_room(CLIENT).await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(capacity.open_count(), 3);

    // Full: the newcomer waits for the idlest to go, and only the idlest is asked.
    let waiting = tokio::spawn({
        let capacity = capacity.clone();
        async move { capacity.make_room(CLIENT).await }
    });
    tokio::time::timeout(Duration::from_millis(100), oldest.entry.activity().close_requested())
        .await
        .expect("the connection idle longest was asked to close");
    assert!(!busy.entry.activity().asked_to_close.load(Ordering::Acquire), "never one with a request in flight");
    assert!(!recent.entry.activity().asked_to_close.load(Ordering::Acquire), "nor a younger idle one");
    drop(oldest);
    let _newcomer = waiting.await.unwrap().expect("its place went to the newcomer");

    // The next newcomer displaces the recent idle one; with only busy connections left, none.
    let next = capacity.make_room(CLIENT);
    let (admitted, ()) = tokio::join!(next, async {
        recent.entry.activity().close_requested().await;
        drop(recent);
    });
    assert!(admitted.is_some());
}

#[tokio::test(start_paused = true)]
async fn with_every_connection_busy_a_newcomer_is_refused() {
    let capacity = budget(2, 2, vec![]);
    let first = capacity.make_room(CLIENT).await.unwrap();
    let second = capacity.make_room(CLIENT).await.unwrap();
    let _a = first.entry.activity().begin();
    let _b = second.entry.activity().begin();
    assert!(capacity.make_room(CLIENT).await.is_none());
    assert_eq!(capacity.open_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn one_address_holds_only_its_share_and_cycles_its_own_idle_connections() {
    let capacity = budget(10, 2, vec!["10.0.0.0/8".parse().unwrap()]);
    let first = capacity.make_room(CLIENT).await.unwrap();
    let first_busy = first.entry.activity().begin();
    tokio::time::advance(Duration::from_secs(1)).await;
    let second = capacity.make_room(CLIENT).await.unwrap();
    let second_busy = second.entry.activity().begin();
    // Both busy: the third from the same address is refused, though the budget has room.
    assert!(capacity.try_admit(CLIENT).is_none());
    assert!(capacity.make_room(CLIENT).await.is_none());
    // Another address, and an exempt front proxy, are not held back by it.
    let elsewhere: IpAddr = "198.51.100.7".parse().unwrap();
    let other = capacity.try_admit(elsewhere).unwrap();
    let proxy: IpAddr = "10.1.2.3".parse().unwrap();
    let _behind_the_proxy: Vec<_> = (0..5).map(|_| capacity.try_admit(proxy).unwrap()).collect();
    // An IPv6 client is one address across its /64.
    let six = |last: u16| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last));
    let _v6 = (capacity.try_admit(six(1)).unwrap(), capacity.try_admit(six(2)).unwrap());
    assert!(capacity.try_admit(six(3)).is_none());
    assert!(capacity.make_room(six(3)).await.is_none());

    // With one of its own idle, the address's newcomer takes that one's place.
    drop(second_busy);
    // The budget is spent too (10 places held): the newcomer waits for that one to go.
    let (newcomer, ()) = tokio::join!(capacity.make_room(CLIENT), async {
        second.entry.activity().close_requested().await;
        drop(second);
    });
    assert!(newcomer.is_some(), "its own idle connection gave way");
    assert!(!first.entry.activity().asked_to_close.load(Ordering::Acquire), "never its busy one");
    assert!(!other.entry.activity().asked_to_close.load(Ordering::Acquire), "nor another address's");
    drop((newcomer, first_busy, first));
    assert_eq!(capacity.shares.held_by(Group::address_of(CLIENT)), None, "counts go when the places do");
}

#[tokio::test(start_paused = true)]
async fn the_addresses_of_one_ipv6_48_hold_only_its_share_together() {
    // Two places per address, four per /48.
    let capacity = budget(10, 2, vec![]);
    let in_48 = |net: u16, subnet: u16, host: u16| {
        IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, net, subnet, 0, 0, 0, host))
    };
    let (a, b, c) = (in_48(1, 0xa, 1), in_48(1, 0xb, 1), in_48(1, 0xc, 1));
    let mut held = Vec::new();
    for peer in [a, a, b, b] {
        let admitted = capacity.make_room(peer).await.unwrap();
        let busy = admitted.entry.activity().begin();
        held.push((admitted, Some(busy)));
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    // A third /64 of the same /48 is refused though its own address holds nothing and the
    // budget has six places free: the /48's four are busy.
    assert!(capacity.try_admit(c).is_none());
    assert!(capacity.make_room(c).await.is_none());
    assert_eq!(capacity.shares.held_by(Group::address_of(c)), None, "the refused one holds nothing");
    // Another /48, and an IPv4 client, are not held back by it.
    let elsewhere = capacity.try_admit(in_48(2, 0xa, 1)).expect("another /48 has its own share");
    let v4 = capacity.try_admit(CLIENT).expect("an IPv4 address is no /48's");

    // With one of the /48's connections idle (b's first), the newcomer takes its place.
    held[2].1 = None;
    let idle = held.remove(2).0;
    let (newcomer, ()) = tokio::join!(capacity.make_room(c), async {
        idle.entry.activity().close_requested().await;
        drop(idle);
    });
    let newcomer = newcomer.expect("the /48's idle connection gave way");
    let asked = |admitted: &Admitted| admitted.entry.activity().asked_to_close.load(Ordering::Acquire);
    assert!(held.iter().all(|(admitted, _)| !asked(admitted)), "never a busy one");
    assert!(!asked(&elsewhere) && !asked(&v4), "nor another /48's, nor an IPv4 address's");
    let held_by = |group| capacity.shares.held_by(group);
    assert_eq!(
        (held_by(Group::address_of(a)), held_by(Group::address_of(b)), held_by(Group::address_of(c))),
        (Some(2), Some(1), Some(1)),
        "the newcomer's address holds the place, the neighbour's gave it up"
    );
    assert_eq!(held_by(Group::site_of(c)), Some(4), "the /48 still holds four");
    assert_eq!(held_by(Group::site_of(in_48(2, 0, 0))), Some(1));

    drop((newcomer, held, elsewhere, v4));
    assert_eq!(held_by(Group::site_of(c)), None, "counts go when the places do");
    assert_eq!(held_by(Group::address_of(c)), None);
}

#[tokio::test(start_paused = true)]
async fn the_place_made_goes_to_the_newcomer_that_asked_not_to_whoever_comes_first() {
    let other: IpAddr = "198.51.100.7".parse().unwrap();
    let third: IpAddr = "203.0.113.9".parse().unwrap();
    // At the address's share (one place each), and with the budget spent (two places).
    for (places, share, newcomer_from) in [(1, 1, CLIENT), (1, 5, other)] {
        let capacity = budget(places, share, vec![]);
        let idle = capacity.make_room(CLIENT).await.unwrap();
        let newcomer = tokio::spawn({
            let capacity = capacity.clone();
            async move { capacity.make_room(newcomer_from).await }
        });
        idle.entry.activity().close_requested().await;
        drop(idle);
        // Someone else arrives the instant the place is given up: it is already taken.
        assert!(capacity.try_admit(CLIENT).is_none() && capacity.try_admit(third).is_none());
        let admitted = newcomer.await.unwrap().expect("the newcomer that made room has it");
        assert_eq!(capacity.open_count(), 1);
        let held_by = |ip| capacity.shares.held_by(Group::address_of(ip));
        assert_eq!((held_by(newcomer_from), held_by(third)), (Some(1), None), "{places}/{share}");
        if newcomer_from != CLIENT {
            assert_eq!(held_by(CLIENT), None, "the closed connection's share went back to its address");
        }
        drop(admitted);
        assert!(capacity.try_admit(third).is_some(), "and it is given back when that one closes");
    }
}

#[tokio::test(start_paused = true)]
async fn a_place_made_for_a_newcomer_that_gave_up_is_free_for_anyone() {
    let capacity = budget(1, 1, vec![]);
    let idle = capacity.make_room(CLIENT).await.unwrap();
    let newcomer = tokio::spawn({
        let capacity = capacity.clone();
        async move { capacity.make_room(CLIENT).await }
    });
    // Asked, but it finishes something first, past the newcomer's patience.
    idle.entry.activity().close_requested().await;
    tokio::time::advance(MAKE_ROOM_WITHIN + Duration::from_millis(1)).await;
    assert!(newcomer.await.unwrap().is_none());
    drop(idle);
    assert!(capacity.try_admit(CLIENT).is_some(), "given back, not lost");
}

#[tokio::test(start_paused = true)]
async fn a_connection_with_a_request_waiting_unread_is_not_idle() {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        sockets.push((client, listener.accept().unwrap().0));
    }
    let capacity = budget(2, 2, vec![]);
    // The older one's request has come, but its task has not read it yet.
    let older = capacity.make_room(CLIENT).await.unwrap();
    older.entry.activity().watch_socket(sockets[0].1.as_raw_fd());
    sockets[0].0.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let mut peeked = [0u8; 1];
    assert_eq!(sockets[0].1.peek(&mut peeked).unwrap(), 1, "it is in the socket");
    tokio::time::advance(Duration::from_secs(5)).await;
    let younger = capacity.make_room(CLIENT).await.unwrap();
    younger.entry.activity().watch_socket(sockets[1].1.as_raw_fd());
    tokio::time::advance(Duration::from_secs(1)).await;

    let newcomer = tokio::spawn({
        let capacity = capacity.clone();
        async move { capacity.make_room(CLIENT).await }
    });
    let asked = |activity: &Activity| activity.asked_to_close.load(Ordering::Acquire);
    let younger_asked = tokio::time::timeout(Duration::from_millis(100), younger.entry.activity().close_requested());
    assert!(
        younger_asked.await.is_ok() && !asked(older.entry.activity()),
        "the quiet one, not the one about to be served"
    );
    drop(younger);
    assert!(newcomer.await.unwrap().is_some(), "and its place went to the newcomer");
}

#[tokio::test(start_paused = true)]
async fn with_every_connection_busy_one_look_answers_the_newcomers_until_one_goes_quiet() {
    let elsewhere: IpAddr = "198.51.100.7".parse().unwrap();
    let capacity = budget(2, 5, vec![]);
    let first = capacity.make_room(CLIENT).await.unwrap();
    let second = capacity.make_room(CLIENT).await.unwrap();
    let first_busy = first.entry.activity().begin();
    let _second_busy = second.entry.activity().begin();
    assert!(capacity.make_room(elsewhere).await.is_none());
    assert!(capacity.nothing_idle.holds(Instant::now()), "the look that found nothing is kept");
    assert!(capacity.make_room(elsewhere).await.is_none(), "and answers the next newcomer");

    // One request ends: the kept answer no longer holds, and the next newcomer is served.
    drop(first_busy);
    assert!(!capacity.nothing_idle.holds(Instant::now()));
    let (admitted, ()) = tokio::join!(capacity.make_room(elsewhere), async {
        first.entry.activity().close_requested().await;
        drop(first);
    });
    let admitted = admitted.expect("the quiet one gave way");
    let _admitted_busy = admitted.entry.activity().begin();

    // Nor is a kept answer trusted past a second, with nothing gone quiet.
    assert!(capacity.make_room(elsewhere).await.is_none());
    assert!(capacity.nothing_idle.holds(Instant::now()));
    tokio::time::advance(super::super::idlest::LOOK_AGAIN_AFTER + Duration::from_millis(1)).await;
    assert!(!capacity.nothing_idle.holds(Instant::now()));
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_gave_up_its_place_is_not_asked_for_it_again() {
    let elsewhere: IpAddr = "198.51.100.7".parse().unwrap();
    let capacity = budget(1, 5, vec![]);
    let ending = capacity.make_room(CLIENT).await.unwrap();
    // Ending: its place is given back first, its entry goes a moment later.
    let Admitted { permit, entry } = ending;
    drop(permit);
    // A newcomer that found the budget spent just before, and looks for a connection to ask,
    // must not wait for this one: its place has gone back to the budget already.
    assert!(capacity.displace_the_idlest(None).is_none(), "not asked for a place it no longer has");
    assert!(!entry.activity().asked_to_close.load(Ordering::Acquire));
    let admitted = tokio::time::timeout(Duration::from_millis(100), capacity.make_room(elsewhere)).await;
    assert!(admitted.expect("at once").is_some(), "the place is free for the newcomer");
}

#[tokio::test(start_paused = true)]
async fn a_heavier_holders_stalled_connection_gives_way_to_a_lighter_newcomer_only() {
    let [heavy, light, newcomer] = [2, 3, 4].map(|last| IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, last)));
    let capacity = budget(4, 4, vec![]);
    // Every place busy with an answer its client holds back: three of one address, one of another.
    let mut held = Vec::new();
    for from in [heavy, heavy, heavy, light] {
        let admitted = capacity.make_room(from).await.unwrap();
        let request = admitted.entry.activity().begin();
        admitted.entry.activity().answer_waits();
        held.push((from, admitted, request));
    }
    assert!(capacity.make_room(newcomer).await.is_none(), "stalled less than a second: nobody gives way");
    tokio::time::advance(STALLED_IN_A_CROWD.max(super::super::idlest::LOOK_AGAIN_AFTER) + Duration::from_millis(1))
        .await;
    // The light address's own newcomer would hold two against three: not heavier by two.
    assert!(capacity.make_room(light).await.is_none(), "no place taken back and forth");

    let waiting = tokio::spawn({
        let capacity = capacity.clone();
        async move { capacity.make_room(newcomer).await }
    });
    let mut asked = None;
    for _ in 0..1_000 {
        tokio::task::yield_now().await;
        asked = held.iter().position(|(_, admitted, _)| admitted.entry.activity().signal().is_some());
        if asked.is_some() {
            break;
        }
    }
    let asked = asked.expect("a connection was asked to make room");
    assert_eq!(held[asked].0, heavy, "the heavier holder's connection was asked");
    assert_eq!(held.iter().filter(|(_, admitted, _)| admitted.entry.activity().signal().is_some()).count(), 1);
    held.remove(asked);
    assert!(waiting.await.unwrap().is_some(), "its place went to the newcomer");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stopped_reading_is_not_spared_for_the_requests_it_left_unread() {
    use crate::server::activity::CLIENT_STALLED;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let activity = Activity::for_tests();
    activity.watch_socket(ours.as_raw_fd());
    theirs.write_all(b"GET /next HTTP/1.1\r\nHost: example\r\n\r\n").unwrap();
    // Idle with a request waiting unread (the one it came with, most often): spared.
    assert!(activity.displaceable_for(Instant::now()).is_some());
    assert!(!activity.may_give_way(Instant::now()), "idle, but a request is waiting");
    // Writing to a client that takes nothing, requests pipelined behind: spared only while the
    // stall is young.
    let _request = activity.begin();
    activity.set_write_blocked(true);
    assert!(!activity.may_give_way(Instant::now()));
    tokio::time::advance(CLIENT_STALLED).await;
    assert!(activity.may_give_way(Instant::now()), "it will read none of their answers either");
    // A write that goes through starts the clock again.
    activity.set_write_blocked(false);
    activity.set_write_blocked(true);
    assert!(!activity.may_give_way(Instant::now()));
}
