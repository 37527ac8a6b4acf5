//! Reloading proxy.toml and the users file while the proxy runs: a valid change applies without
//! ending sessions, an invalid one is refused and the running configuration stays.

use crate::harness::{ALICE, Browser, proxy};
use crate::mfa::BOB;
use crate::upstream::Upstream;

fn hang_up(pid: u32) {
    let status = std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_proxy_toml_applies_live_and_keeps_sessions() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let config = std::fs::read_to_string(proxy.config_path()).unwrap();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    assert_eq!(browser.navigate(&proxy.url("/wiki")).await.status(), 200);

    // Broken: refused, logged, nothing changes.
    let mark = proxy.stderr.len();
    std::fs::write(proxy.config_path(), format!("{config}\n[mfa]\npolicy = \"sometimes\"\n")).unwrap();
    proxy.stderr.wait_for(mark, |l| l.contains("proxy.toml was not reloaded")).unwrap();
    proxy.stderr.wait_for(mark, |l| l.contains("mfa.policy")).expect("the log names the key");
    assert_eq!(browser.navigate(&proxy.url("/wiki")).await.status(), 200);

    // Valid: 2FA becomes required; the session is kept but must now enroll, inline.
    let mark = proxy.stderr.len();
    let tightened = format!("{config}\n[mfa]\npolicy = \"required\"\n[session]\nidle_timeout = \"2h\"\n");
    std::fs::write(proxy.config_path(), tightened).unwrap();
    proxy.stderr.wait_for(mark, |l| l.contains("configuration reloaded") && l.contains("mfa")).unwrap();
    let restart = proxy.stderr.wait_for(mark, |l| l.contains("take effect only after a restart")).unwrap();
    assert!(restart.contains("session"), "{restart}");
    let next = browser.navigate(&proxy.url("/wiki")).await;
    assert_eq!(next.status(), 303, "the same session, now asked for a second factor");
    assert!(next.headers()["location"].to_str().unwrap().starts_with(&proxy.url("/.portcullis/enroll")));
    assert_eq!(upstream.seen().iter().filter(|r| r.path == "/wiki").count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_users_file_and_proxy_toml() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    crate::harness::add_account(&proxy.users_file(), &BOB);
    let mark = proxy.stderr.len();
    hang_up(proxy.pid());
    proxy.stderr.wait_for(mark, |l| l.contains("SIGHUP: reloading")).unwrap();
    proxy.stderr.wait_for(mark, |l| l.contains("configuration reloaded")).unwrap();
    let bob = Browser::new();
    bob.login(&proxy, &BOB).await;
    assert_eq!(bob.navigate(&proxy.url("/")).await.status(), 200, "the new account signs in");
    let mark = proxy.stderr.len();
    hang_up(proxy.pid());
    proxy.stderr.wait_for(mark, |l| l.contains("SIGHUP: reloading")).unwrap();
    assert_eq!(bob.navigate(&proxy.url("/")).await.status(), 200, "still running after a second SIGHUP, session kept");
}
