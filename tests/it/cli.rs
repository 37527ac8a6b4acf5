//! Managing accounts with the CLI while the proxy runs: it notices the users file change.

use crate::harness::{ALICE, Browser, proxy};
use crate::upstream::Upstream;

fn ok(output: &std::process::Output) -> String {
    assert!(output.status.success(), "CLI failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn users_added_changed_and_removed_with_the_cli_take_effect_live() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();

    // Add: the password comes from stdin, never argv.
    let mark = proxy.stderr.len();
    ok(&proxy
        .cli(&["user", "add", "bob", "--email", "bob@example.com", "--groups", "ops,dev"], "bob's long password\n"));
    proxy.stderr.wait_for(mark, |l| l.contains("users file reloaded")).expect("the proxy reloads the users file");
    let listing = ok(&proxy.cli(&["user", "list"], ""));
    assert!(listing.contains("bob") && listing.contains("bob@example.com") && listing.contains("ops,dev"), "{listing}");
    assert!(!listing.contains("argon2"), "hashes are not listed");

    let bob = Browser::new();
    let login = bob.submit_login(&proxy, "bob", "bob's long password", "/").await;
    assert_eq!(login.status(), 303);
    assert_eq!(bob.http.get(proxy.url("/")).send().await.unwrap().status(), 200);
    assert_eq!(upstream.seen().pop().unwrap().header("x-forwarded-groups"), Some("ops,dev"));

    // Too short a password is refused and changes nothing.
    let short = proxy.cli(&["user", "passwd", "bob"], "short\n");
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 8 characters"));
    assert_eq!(bob.http.get(proxy.url("/")).send().await.unwrap().status(), 200);

    // A new password ends existing sessions.
    let mark = proxy.stderr.len();
    ok(&proxy.cli(&["user", "passwd", "bob"], "an entirely new password\n"));
    proxy.stderr.wait_for(mark, |l| l.contains("users file reloaded")).unwrap();
    assert_eq!(bob.http.get(proxy.url("/")).send().await.unwrap().status(), 401);
    assert_eq!(Browser::new().submit_login(&proxy, "bob", "bob's long password", "/").await.status(), 401);

    // Removing an account ends its sessions: the CLI returns once the running proxy has
    // forgotten the account.
    let alice = Browser::new();
    alice.login(&proxy, &ALICE).await;
    let removed = ok(&proxy.cli(&["user", "remove", "alice"], ""));
    assert!(removed.contains("1 session(s) ended"), "{removed}");
    assert_eq!(alice.http.get(proxy.url("/")).send().await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_users_file_is_refused_and_the_old_one_kept() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let mark = proxy.stderr.len();
    std::fs::write(proxy.users_file(), "[users.alice\nthis is not toml").unwrap();
    let line = proxy.stderr.wait_for(mark, |l| l.contains("users file not reloaded")).unwrap();
    assert!(line.contains("keeping the previous one"), "{line}");
    assert_eq!(browser.http.get(proxy.url("/")).send().await.unwrap().status(), 200);
    let duplicate = proxy.cli(&["user", "add", "carol", "--email", "c@example.com"], "a good password\n");
    assert!(!duplicate.status.success(), "the CLI refuses to edit a file the proxy would refuse");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_proxy_on_the_same_data_dir_refuses_to_start() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    // Same config, so same data_dir: the store is opened before any port is bound.
    let second = proxy.cli(&[], "");
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("locked by another process") && stderr.contains("same data_dir"), "{stderr}");
    assert_eq!(Browser::new().navigate(&proxy.url("/")).await.status(), 303, "the first one still serves");
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_metrics_are_served_on_their_own_listener() {
    let upstream = Upstream::start().await;
    let metrics_port = crate::harness::free_port();
    let proxy = proxy(&upstream.url()).toml(&format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"")).start();
    assert_eq!(Browser::new().submit_login(&proxy, "alice", "wrong", "/").await.status(), 401);
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    assert_eq!(browser.navigate(&proxy.url("/page")).await.status(), 200);

    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await.unwrap().text().await.unwrap();
    for expected in [
        "portcullis_logins_total{result=\"ok\"} 1",
        "portcullis_logins_total{result=\"failed\"} 1",
        "portcullis_requests_total{status=\"200\"}",
        "portcullis_upstream_seconds_bucket",
        "portcullis_sessions 1",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    // Metrics are not on the proxy's own port: there, /metrics is just another gated path.
    assert_eq!(reqwest::get(proxy.url("/metrics")).await.unwrap().status(), 401);
}

/// A local SNTP responder (RFC 4330) whose clock is `offset` seconds away from ours.
pub(crate) async fn fake_time_server(offset: f64) -> std::net::SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut request = [0u8; 48];
        loop {
            let Ok((_, from)) = socket.recv_from(&mut request).await else { return };
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64() + offset;
            let seconds = now.trunc() as u64 + 2_208_988_800; // NTP counts from 1900
            let fraction = (now.fract() * 4_294_967_296.0) as u64;
            let stamp: Vec<u8> = [(seconds as u32).to_be_bytes(), (fraction as u32).to_be_bytes()].concat();
            let mut reply = [0u8; 48];
            reply[0] = 0x24; // no leap warning, version 4, server mode
            reply[1] = 2; // stratum
            reply[12..16].copy_from_slice(b"TEST");
            reply[16..24].copy_from_slice(&stamp); // reference
            reply[24..32].copy_from_slice(&request[40..48]); // originate = the client's transmit
            reply[32..40].copy_from_slice(&stamp); // receive
            reply[40..48].copy_from_slice(&stamp); // transmit
            let _ = socket.send_to(&reply, from).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_reports_the_offset_against_a_time_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    let write = |server: std::net::SocketAddr| {
        let text = format!(
            "upstream = \"http://127.0.0.1:9\"\npublic_url = \"http://127.0.0.1:1\"\ndata_dir = \"data\"\n[clock]\nntp_server = \"{server}\"\n"
        );
        std::fs::write(&config, text).unwrap();
    };

    write(fake_time_server(90.0).await);
    let off = crate::harness::run_cli(&config, &["doctor"], "");
    let out = String::from_utf8_lossy(&off.stdout).to_string();
    assert!(!off.status.success(), "a 90 s offset needs attention:\n{out}");
    assert!(out.contains("this clock is -90."), "{out}");
    assert!(out.contains("warning: this clock is -90.") && out.contains("TOTP accepts only ±30 s"), "{out}");

    write(fake_time_server(0.0).await);
    let fine = crate::harness::run_cli(&config, &["doctor"], "");
    let out = String::from_utf8_lossy(&fine.stdout).to_string();
    assert!(out.contains("this clock is +0.0") || out.contains("this clock is -0.0"), "{out}");
    assert!(!out.contains("TOTP accepts only"), "no offset warning when in step:\n{out}");
}
