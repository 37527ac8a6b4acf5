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

    // Removing an account ends its sessions at their next request.
    let alice = Browser::new();
    alice.login(&proxy, &ALICE).await;
    let mark = proxy.stderr.len();
    ok(&proxy.cli(&["user", "remove", "alice"], ""));
    proxy.stderr.wait_for(mark, |l| l.contains("users file reloaded")).unwrap();
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
