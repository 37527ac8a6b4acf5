//! What an operator is told while `limits.max_connections` is spent (`server::pressure`): a
//! line in the log when connections start giving way and when newcomers start being turned away,
//! and counters on the metrics listener. Before, both were told at `debug` only, so under an
//! attack on the budget an operator at the default level saw nothing. And what keeps the access
//! log, a line a request anyone may send, from filling a disk.

use std::net::TcpStream;

use super::connections::{status_on, waiting_on_the_upstream};
use super::http2::connect_from;
use crate::harness::{ALICE, Browser, free_port, metric, proxy};
use crate::upstream::Upstream;

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_is_told_when_connections_give_way_and_when_newcomers_are_turned_away() {
    const PLACES: usize = 3;
    let upstream = Upstream::start().await;
    let metrics = free_port();
    let proxy = proxy(&upstream.url())
        .toml(&format!(
            "[limits]\nmax_connections = {PLACES}\nheader_read_timeout = \"60s\"\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\""
        ))
        .env("RUST_LOG", "info,portcullis::server::accept=debug")
        .start();
    // Signed in over one kept-alive connection: no pressure yet.
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let cookie = browser.cookie_header(&proxy.url("/")).unwrap();
    let gave_way = "portcullis_connections_gave_way_total{rule=\"idlest\"}";
    let turned_away = "portcullis_connections_turned_away_total{reason=\"all_busy\"}";
    // Every series is there from the start, at 0 (a rate over one that appears mid-attack
    // misses its start).
    let text = reqwest::get(format!("http://127.0.0.1:{metrics}/metrics")).await.unwrap().text().await.unwrap();
    for series in [gave_way, turned_away, "portcullis_connections_turned_away_total{reason=\"share_busy\"}"] {
        assert!(text.lines().any(|l| l == format!("{series} 0")), "{series} is shown at 0:\n{text}");
    }
    assert_eq!(metric(metrics, gave_way).await, 0, "the sign-in alone needed no room");
    assert_eq!(metric(metrics, turned_away).await, 0);
    let told = |l: &str| l.contains("limits.max_connections (3) is spent");

    // Silent sockets fill the budget (from 127.0.0.1, which then holds its whole share: one of
    // them may take the browser's idle place); a newcomer from another address takes the place
    // of the idlest.
    let mark = proxy.stderr.len();
    let silent: Vec<TcpStream> = (0..PLACES).map(|_| TcpStream::connect(proxy.addr).unwrap()).collect();
    assert!(proxy.stderr.wait_for_count(mark, PLACES, |l| l.contains("connection admitted")));
    let mut newcomer = connect_from(&proxy, "127.0.0.2").await;
    assert_eq!(status_on(&mut newcomer, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"), "HTTP/1.1 401");
    assert_eq!(metric(metrics, gave_way).await, 1, "the newcomer's place was given up by an idle connection");
    let line = proxy.stderr.wait_for(mark, |l| told(l) && l.contains("give their places")).expect("told in the log");
    assert!(line.contains("INFO"), "giving way is the budget working, not a warning: {line}");
    assert!(!proxy.stderr.all()[mark..].iter().any(|l| told(l) && l.contains("turned away")), "nobody was refused yet");

    // Every place busy with a request the upstream is slow to answer: the next newcomer is
    // turned away, and the operator is warned.
    drop((silent, newcomer, browser));
    let slow = format!("GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n");
    let _busy: Vec<_> = (0..PLACES).map(|_| waiting_on_the_upstream(&proxy, &upstream, slow.as_bytes())).collect();
    let before = metric(metrics, turned_away).await;
    let mut refused = connect_from(&proxy, "127.0.0.3").await;
    assert_eq!(status_on(&mut refused, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"), "HTTP/1.1 503");
    assert_eq!(metric(metrics, turned_away).await, before + 1, "the refusal is counted, with its reason");
    assert_eq!(metric(metrics, "portcullis_connections_open").await, PLACES as u64);
    let line = proxy.stderr.wait_for(mark, |l| told(l) && l.contains("turned away")).expect("warned in the log");
    assert!(line.contains("WARN") && line.contains("all_busy"), "{line}");
    // Told once, not once a newcomer: the rest go to the minute's summary.
    let mut again = connect_from(&proxy, "127.0.0.4").await;
    assert_eq!(status_on(&mut again, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"), "HTTP/1.1 503");
    assert_eq!(metric(metrics, turned_away).await, before + 2);
    let warnings = proxy.stderr.all()[mark..].iter().filter(|l| told(l) && l.contains("turned away")).count();
    assert_eq!(warnings, 1, "one line for the start of the refusals, not one each");
}

/// The twelfth attack pass had a million access lines a minute written by one client with no
/// account. The README's answer, besides bounding the log where it is kept: `log.level` takes
/// `RUST_LOG`'s directives, so the access lines can be dropped and the security events kept.
#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_can_be_dropped_and_the_security_events_kept() {
    let upstream = Upstream::start().await;
    let proxy =
        proxy(&upstream.url()).toml("[log]\nlevel = \"info,portcullis::access=off\"").env("RUST_LOG", "").start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    // One thread writes the log in order: the sign-in page's access line, had it been kept, was
    // written before the sign-in's security event.
    assert!(proxy.stderr.wait_for(0, |l| l.contains("portcullis::security") && l.contains("login ok")).is_some());
    let access = proxy.stderr.all().iter().filter(|l| l.contains("portcullis::access")).count();
    assert_eq!(access, 0, "no access line: {:?}", proxy.stderr.all());
}
