//! The operator's tools, driven through the real CLI against a running proxy (over its control
//! socket) and against a stopped one (directly on its store).

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::harness::{ALICE, Browser, Proxy, proxy};
use crate::mfa::{BOB, code, enroll, password, submit_code};
use crate::upstream::Upstream;

/// Runs `portcullis admin ARGS --json` and returns the parsed answer.
fn admin_json(proxy: &Proxy, args: &[&str]) -> Value {
    let mut all = vec!["admin"];
    all.extend_from_slice(args);
    all.push("--json");
    let output = proxy.cli(&all, "");
    assert!(output.status.success(), "{:?}: {}", args, String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn user<'a>(users: &'a Value, name: &str) -> &'a Value {
    users["users"].as_array().unwrap().iter().find(|u| u["name"] == name).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_sees_accounts_and_resets_a_lost_phone_while_the_proxy_runs() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).account(&BOB).toml("[mfa]\nrequired_groups = [\"wiki-admins\"]").start();
    let alice = Browser::new();
    let enroll_url = password(&alice, &proxy, &ALICE, "/").await;
    let (secret, _, _) = enroll(&alice, &proxy, &enroll_url).await;
    assert_eq!(alice.navigate(&proxy.url("/")).await.status(), 200);
    let bob = Browser::new();
    assert_eq!(password(&bob, &proxy, &BOB, "/").await, proxy.url("/"));

    let socket = proxy.data_dir().join("control.sock");
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);

    let users = admin_json(&proxy, &["users"]);
    let (a, b) = (user(&users, "alice"), user(&users, "bob"));
    assert_eq!(a["factors"], serde_json::json!(["totp", "recovery_codes"]));
    assert_eq!(a["recovery_codes_left"], 10);
    assert!(a["enrolled_at"].as_i64().unwrap() > 0 && a["last_sign_in"].as_i64().unwrap() > 0);
    assert_eq!((a["requirement"].as_str(), a["full_sessions"].as_i64()), (Some("required"), Some(1)));
    assert_eq!((b["factors"].as_array().unwrap().len(), b["requirement"].as_str()), (0, Some("optional")));

    let table = proxy.cli(&["admin", "factors"], "");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.lines().any(|l| l.starts_with("totp:") && l.contains("alice") && !l.contains("bob")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("none:") && l.contains("bob")), "{table}");

    let adoption = admin_json(&proxy, &["adoption"]);
    let everyone = adoption["groups"].as_array().unwrap().iter().find(|g| g["group"] == "*").unwrap();
    assert_eq!((everyone["accounts"].as_i64(), everyone["with_second_factor"].as_i64()), (Some(2), Some(1)));

    // Alice lost her phone: reset while the proxy runs.
    let reset = proxy.cli(&["admin", "reset-2fa", "alice"], "");
    assert!(reset.status.success(), "{}", String::from_utf8_lossy(&reset.stderr));
    assert!(String::from_utf8_lossy(&reset.stdout).contains("1 session(s) sent back"));
    let next = alice.navigate(&proxy.url("/wiki")).await;
    assert_eq!(next.status(), 303, "her session can no longer reach the upstream");
    assert!(next.headers()["location"].to_str().unwrap().contains("/.portcullis/enroll"));
    let mail = proxy.wait_for_mail("An administrator reset your two-step verification");
    assert!(mail.contains("alice@example.com"));
    let after = admin_json(&proxy, &["users"]);
    assert_eq!(user(&after, "alice")["factors"], serde_json::json!([]));
    // The old authenticator proves nothing any more.
    let again = Browser::new();
    let next = password(&again, &proxy, &ALICE, "/").await;
    assert!(next.contains("/.portcullis/enroll"), "she enrolls anew: {next}");
    let page = again.navigate(&next).await.text().await.unwrap();
    let csrf = crate::harness::form_field(&page, "csrf").unwrap();
    let old_code = again
        .http
        .post(proxy.url("/.portcullis/challenge"))
        .header("origin", proxy.origin())
        .form(&[("csrf", csrf.as_str()), ("rd", "/"), ("code", &code(&secret, 1))])
        .send()
        .await
        .unwrap();
    let refused_to = old_code.headers().get("location").map(|l| l.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(refused_to.is_empty() || refused_to.contains("/.portcullis/enroll"), "{refused_to}");
    assert_eq!(again.http.get(proxy.url("/")).send().await.unwrap().status(), 401);

    // Revoking bob ends his session at once.
    let revoked = admin_json(&proxy, &["revoke", "bob"]);
    assert_eq!(revoked["ended"], 1);
    assert_eq!(bob.http.get(proxy.url("/")).send().await.unwrap().status(), 401);

    let refused = proxy.cli(&["admin", "reset-2fa", "nobody"], "");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no user `nobody`"));
}

#[tokio::test(flavor = "multi_thread")]
async fn downgrade_all_sends_every_session_back_to_the_second_step() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).account(&BOB).start();
    let alice = Browser::new();
    let (secret, _, _) = enroll(&alice, &proxy, &{
        alice.login(&proxy, &ALICE).await;
        proxy.url("/.portcullis/enroll")
    })
    .await;
    let bob = Browser::new();
    bob.login(&proxy, &BOB).await;

    assert_eq!(admin_json(&proxy, &["downgrade-all"])["downgraded"], 2);
    // (The enrollment used this time step's code; the next one is still accepted, ±1 step.)
    let back = alice.navigate(&proxy.url("/notes")).await;
    assert_eq!(back.status(), 303);
    assert!(back.headers()["location"].to_str().unwrap().contains("/.portcullis/challenge"));
    let proven = submit_code(&alice, &proxy, back.headers()["location"].to_str().unwrap(), &code(&secret, 1)).await;
    assert_eq!(proven.headers()["location"], proxy.url("/notes").as_str());
    assert_eq!(alice.navigate(&proxy.url("/notes")).await.status(), 200);
    // Bob has no factor to prove: he is offered one, and the upstream sees nothing meanwhile.
    assert_eq!(bob.http.get(proxy.url("/")).send().await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn bans_are_listed_and_lifted() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();
    for _ in 0..5 {
        browser.submit_login(&proxy, "alice", "not her password", "/").await;
    }
    let refused = browser.submit_login(&proxy, "alice", ALICE.password, "/").await;
    assert_eq!(refused.status(), 429, "banned, even with the right password");

    let bans = admin_json(&proxy, &["bans"]);
    let subjects: Vec<&str> = bans["bans"].as_array().unwrap().iter().map(|b| b["subject"].as_str().unwrap()).collect();
    assert_eq!(subjects, ["account:alice", "address:127.0.0.1"]);
    assert!(String::from_utf8_lossy(&proxy.cli(&["admin", "bans"], "").stdout).contains("account:alice"));

    let lifted = admin_json(&proxy, &["unban", "account:alice"]);
    assert_eq!(lifted["existed"], true);
    assert_eq!(
        browser.submit_login(&proxy, "alice", ALICE.password, "/").await.status(),
        429,
        "the address is still banned"
    );
    admin_json(&proxy, &["unban", "address:127.0.0.1"]);
    assert_eq!(browser.submit_login(&proxy, "alice", ALICE.password, "/").await.status(), 303);
    assert_eq!(admin_json(&proxy, &["bans"])["bans"], serde_json::json!([]));

    let nonsense = proxy.cli(&["admin", "unban", "everyone"], "");
    assert!(!nonsense.status.success());
    assert!(String::from_utf8_lossy(&nonsense.stderr).contains("account:NAME or address:IP"));
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_proxy_stopped_the_cli_works_on_the_store() {
    let upstream = Upstream::start().await;
    let mut first = proxy(&upstream.url()).toml("[mfa]\npolicy = \"required\"").start();
    let browser = Browser::new();
    let enroll_url = password(&browser, &first, &ALICE, "/").await;
    enroll(&browser, &first, &enroll_url).await;
    assert!(first.stop().success());
    assert!(!first.data_dir().join("control.sock").exists(), "a clean stop removes the socket");

    // The older spelling still works, and works offline.
    let reset = first.cli(&["user", "reset-2fa", "alice"], "");
    assert!(reset.status.success(), "{}", String::from_utf8_lossy(&reset.stderr));
    let users = admin_json(&first, &["users"]);
    assert_eq!(user(&users, "alice")["factors"], serde_json::json!([]));
    assert_eq!(user(&users, "alice")["partial_sessions"], 1, "her session waits for a new factor");
    first.wait_for_mail("An administrator reset your two-step verification");
    assert_eq!(admin_json(&first, &["revoke", "--all"])["ended"], 1);

    let second = proxy(&upstream.url()).restart_of(&first).toml("[mfa]\npolicy = \"required\"").start();
    assert_eq!(browser.http.get(second.url("/")).send().await.unwrap().status(), 401, "the session is gone");
    let again = Browser::new();
    assert!(password(&again, &second, &ALICE, "/").await.contains("/.portcullis/enroll"), "she enrolls anew");
}
