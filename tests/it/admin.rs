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
    assert!(String::from_utf8_lossy(&reset.stdout).contains("1 session(s) ended"));
    let next = alice.navigate(&proxy.url("/wiki")).await;
    assert_eq!(next.status(), 303, "her session can no longer reach the upstream");
    assert!(next.headers()["location"].to_str().unwrap().contains("/.portcullis/login"), "she signs in again");
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

    let downgraded = admin_json(&proxy, &["downgrade-all"]);
    assert_eq!((downgraded["downgraded"].as_i64(), downgraded["ended"].as_i64()), (Some(1), Some(1)));
    // (The enrollment used this time step's code; the next one is still accepted, ±1 step.)
    let back = alice.navigate(&proxy.url("/notes")).await;
    assert_eq!(back.status(), 303);
    assert!(back.headers()["location"].to_str().unwrap().contains("/.portcullis/challenge"));
    let proven = submit_code(&alice, &proxy, back.headers()["location"].to_str().unwrap(), &code(&secret, 1)).await;
    assert_eq!(proven.headers()["location"], proxy.url("/notes").as_str());
    assert_eq!(alice.navigate(&proxy.url("/notes")).await.status(), 200);
    // Bob has no factor to prove: proving again means his password.
    assert_eq!(bob.http.get(proxy.url("/")).send().await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn bans_are_listed_and_lifted() {
    let upstream = Upstream::start().await;
    // An address as strict as an account, so both are paused at once.
    let proxy = proxy(&upstream.url()).toml("[regulation]\naddress_max_failures = 5").start();
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
    assert!(String::from_utf8_lossy(&nonsense.stderr).contains("account:NAME, address:IP or browser:ID"));
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
    assert_eq!(user(&users, "alice")["full_sessions"], 0, "her sessions ended");
    first.wait_for_mail("An administrator reset your two-step verification");
    assert_eq!(admin_json(&first, &["revoke", "--all"])["ended"], 0);

    let second = proxy(&upstream.url()).restart_of(&first).toml("[mfa]\npolicy = \"required\"").start();
    assert_eq!(browser.http.get(second.url("/")).send().await.unwrap().status(), 401, "the session is gone");
    let again = Browser::new();
    assert!(password(&again, &second, &ALICE, "/").await.contains("/.portcullis/enroll"), "she enrolls anew");
}

/// Posts an admin action from `browser`'s admin page.
async fn admin_post(browser: &Browser, proxy: &Proxy, csrf: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    let mut form = vec![("csrf", csrf)];
    form.extend_from_slice(fields);
    browser
        .http
        .post(proxy.url("/.portcullis/admin/action"))
        .header("origin", proxy.origin())
        .form(&form)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_pages_need_the_group_and_a_fresh_second_factor_and_confirm_destructive_actions() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).account(&BOB).toml("[admin]\ngroup = \"wiki-admins\"").start();
    let admin_url = proxy.url("/.portcullis/admin");

    let anonymous = Browser::new().navigate(&admin_url).await;
    assert!(anonymous.headers()["location"].to_str().unwrap().contains("/.portcullis/login"));

    // Bob is no admin; he has an authenticator, which the admin will reset.
    let bob = Browser::new();
    bob.login(&proxy, &BOB).await;
    enroll(&bob, &proxy, &proxy.url("/.portcullis/enroll")).await;
    let refused = bob.navigate(&admin_url).await;
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("Not an administrator"));

    // Alice is in the group, but a password alone does not open the admin pages.
    let alice = Browser::new();
    alice.login(&proxy, &ALICE).await;
    let no_factor = alice.navigate(&admin_url).await;
    assert_eq!(no_factor.status(), 403);
    assert!(no_factor.text().await.unwrap().contains("Two-step verification first"));
    enroll(&alice, &proxy, &proxy.url("/.portcullis/enroll?rd=%2F.portcullis%2Fadmin")).await;
    let page = alice.navigate(&admin_url).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("bob@example.com") && html.contains("Authenticator app"), "the accounts table");
    assert!(!html.contains("totp") && !html.contains("recovery_codes"), "no internal names on the page");
    assert!(html.contains("everyone"), "the adoption table");
    let csrf = crate::harness::form_field(&html, "csrf").unwrap();

    // Refused without the session's token, or from another site; bob keeps his session.
    assert_eq!(admin_post(&alice, &proxy, "forged", &[("op", "revoke"), ("target", "bob")]).await.status(), 403);
    let cross = alice
        .http
        .post(proxy.url("/.portcullis/admin/action"))
        .header("origin", "https://evil.example")
        .form(&[("csrf", csrf.as_str()), ("op", "revoke"), ("target", "bob"), ("confirmed", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    // Bob cannot use the action endpoint with his own token either.
    let bob_page = bob.navigate(&proxy.url("/.portcullis/account")).await.text().await.unwrap();
    let bob_csrf = crate::harness::form_field(&bob_page, "csrf").unwrap();
    let by_bob = admin_post(&bob, &proxy, &bob_csrf, &[("op", "revoke-all"), ("confirmed", "yes")]).await;
    assert_eq!(by_bob.status(), 403);
    assert_eq!(bob.navigate(&proxy.url("/")).await.status(), 200);

    // The first post only asks; nothing happens until it is confirmed.
    let ask = admin_post(&alice, &proxy, &csrf, &[("op", "reset-2fa"), ("target", "bob")]).await;
    assert_eq!(ask.status(), 200);
    assert!(ask.text().await.unwrap().contains("Reset two-step verification for bob?"));
    assert_eq!(bob.navigate(&proxy.url("/")).await.status(), 200);
    assert!(proxy.mails().iter().all(|m| !m.contains("An administrator reset")));

    let done = admin_post(&alice, &proxy, &csrf, &[("op", "reset-2fa"), ("target", "bob"), ("confirmed", "yes")]).await;
    assert_eq!(done.status(), 303);
    assert_eq!(done.headers()["location"], proxy.url("/.portcullis/admin?done=reset").as_str());
    proxy.wait_for_mail("An administrator reset your two-step verification");
    let bob_next = bob.navigate(&proxy.url("/")).await;
    assert!(bob_next.headers()["location"].to_str().unwrap().contains("/.portcullis/login"), "bob's sessions ended");
    let again = Browser::new();
    let next = password(&again, &proxy, &BOB, "/").await;
    assert_eq!(next, proxy.url("/"), "under optional, bob signs in with his password; his old codes are gone");
    let shown = alice.navigate(&proxy.url("/.portcullis/admin?done=reset")).await.text().await.unwrap();
    assert!(shown.contains("Two-step verification was reset"));
    let spoofed = alice.navigate(&proxy.url("/.portcullis/admin?done=Call+555+now")).await.text().await.unwrap();
    assert!(!spoofed.contains("Call 555"), "only fixed notices are shown, never text from the link");

    // A recovery link from the page is emailed to the account, never shown to the admin.
    let ask = admin_post(&alice, &proxy, &csrf, &[("op", "recovery-link"), ("target", "bob")]).await;
    assert!(ask.text().await.unwrap().contains("Email bob a recovery link?"));
    let sent =
        admin_post(&alice, &proxy, &csrf, &[("op", "recovery-link"), ("target", "bob"), ("confirmed", "yes")]).await;
    assert_eq!(sent.headers()["location"], proxy.url("/.portcullis/admin?done=link").as_str());
    let mail = proxy.wait_for_mail("A recovery link for your account");
    assert!(mail.contains("bob@example.com"));
    let notice = alice.navigate(&proxy.url("/.portcullis/admin?done=link")).await.text().await.unwrap();
    assert!(notice.contains("emailed") && !notice.contains("token="));

    // After every session is asked again, the admin pages want a fresh second factor too.
    admin_post(&alice, &proxy, &csrf, &[("op", "downgrade-all"), ("confirmed", "yes")]).await;
    let back = alice.navigate(&admin_url).await;
    assert!(back.headers()["location"].to_str().unwrap().contains("/.portcullis/challenge"));
}

/// The recovery link in a mail (quoted-printable writes `=` as `=3D`).
fn link_in(mail: &str, proxy: &Proxy) -> String {
    let marker = if mail.contains("recover?token=3D") { "recover?token=3D" } else { "recover?token=" };
    let start = mail.find(marker).unwrap() + marker.len();
    let token: String = mail[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || "-_".contains(*c)).collect();
    proxy.url(&format!("/.portcullis/recover?token={token}"))
}

async fn submit_recovery(browser: &Browser, proxy: &Proxy, link: &str, password: &str) -> reqwest::Response {
    let page = browser.navigate(link).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let form = |name| crate::harness::form_field(&html, name).unwrap();
    browser
        .http
        .post(proxy.url("/.portcullis/recover"))
        .header("origin", proxy.origin())
        .form(&[("csrf", form("csrf")), ("token", form("token")), ("password", password.to_string())])
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recovery_link_and_the_password_replace_lost_factors_once() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[mfa]\npolicy = \"required\"").start();
    let old_phone = Browser::new();
    let enroll_url = password(&old_phone, &proxy, &ALICE, "/").await;
    let (old_secret, _, _) = enroll(&old_phone, &proxy, &enroll_url).await;
    assert_eq!(old_phone.navigate(&proxy.url("/")).await.status(), 200);

    let issued = proxy.cli(&["admin", "recovery-link", "alice", "--valid", "2h"], "");
    assert!(issued.status.success(), "{}", String::from_utf8_lossy(&issued.stderr));
    let stdout = String::from_utf8_lossy(&issued.stdout);
    let link = stdout.lines().find(|l| l.starts_with("http")).unwrap().to_string();
    assert!(link.starts_with(&proxy.url("/.portcullis/recover?token=")), "{link}");

    // The link alone is nothing: a wrong password is refused and the link still works.
    let browser = Browser::new();
    let wrong = submit_recovery(&browser, &proxy, &link, "not her password").await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        user(&admin_json(&proxy, &["users"]), "alice")["factors"],
        serde_json::json!(["totp", "recovery_codes"])
    );

    let right = submit_recovery(&browser, &proxy, &link, ALICE.password).await;
    assert_eq!(right.status(), 303);
    let enroll_url = right.headers()["location"].to_str().unwrap().to_string();
    assert!(enroll_url.starts_with(&proxy.url("/.portcullis/enroll")), "{enroll_url}");
    assert_eq!(browser.http.get(proxy.url("/")).send().await.unwrap().status(), 401, "not signed in yet");
    assert_eq!(user(&admin_json(&proxy, &["users"]), "alice")["factors"], serde_json::json!([]), "old factors void");
    assert_eq!(old_phone.http.get(proxy.url("/")).send().await.unwrap().status(), 401, "old sessions ended");
    let (new_secret, _, done) = enroll(&browser, &proxy, &enroll_url).await;
    assert_ne!(new_secret, old_secret);
    let landed = browser.navigate(done.headers()["location"].to_str().unwrap()).await;
    assert_eq!(landed.status(), 200);
    assert_eq!(browser.navigate(&proxy.url("/")).await.status(), 200, "signed in with the new factor");
    proxy.wait_for_mail("Your account was recovered with an administrator");

    // Once only.
    assert_eq!(Browser::new().navigate(&link).await.status(), 410);
    // The old authenticator proves nothing now.
    let later = Browser::new();
    let challenge = password(&later, &proxy, &ALICE, "/").await;
    assert_eq!(submit_code(&later, &proxy, &challenge, &code(&old_secret, 1)).await.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_emailed_recovery_link_is_replaced_by_a_newer_one() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let mailed = proxy.cli(&["admin", "recovery-link", "alice", "--email"], "");
    assert!(mailed.status.success(), "{}", String::from_utf8_lossy(&mailed.stderr));
    assert!(!String::from_utf8_lossy(&mailed.stdout).contains("token="), "an emailed link is not printed");
    let first = link_in(&proxy.wait_for_mail("A recovery link for your account"), &proxy);
    assert_eq!(Browser::new().navigate(&first).await.status(), 200);

    let printed = proxy.cli(&["admin", "recovery-link", "alice"], "");
    assert!(String::from_utf8_lossy(&printed.stdout).contains("token="));
    assert_eq!(Browser::new().navigate(&first).await.status(), 410, "the newer link replaced it");
    let forged = proxy.url("/.portcullis/recover?token=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(Browser::new().navigate(&forged).await.status(), 410);

    let too_short = proxy.cli(&["admin", "recovery-link", "alice", "--valid", "1m"], "");
    assert!(!too_short.status.success());
    assert!(String::from_utf8_lossy(&too_short.stderr).contains("between 10 minutes and 7 days"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_sent_back_to_the_second_step_cannot_pick_up_codes_made_before() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let (secret, _, _) = enroll(&browser, &proxy, &proxy.url("/.portcullis/enroll")).await;
    // Fresh codes made (step-up is fresh from enrolling) but not yet confirmed as saved.
    let account = browser.navigate(&proxy.url("/.portcullis/account")).await.text().await.unwrap();
    let csrf = crate::harness::form_field(&account, "csrf").unwrap();
    let made = browser
        .http
        .post(proxy.url("/.portcullis/account/regenerate-codes"))
        .header("origin", proxy.origin())
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert!(made.headers()["location"].to_str().unwrap().contains("/.portcullis/recovery-codes"));

    admin_json(&proxy, &["downgrade-all"]);
    let shown = browser.navigate(&proxy.url("/.portcullis/recovery-codes")).await;
    assert_eq!(shown.status(), 303);
    assert!(shown.headers()["location"].to_str().unwrap().contains("/.portcullis/challenge"), "no codes shown");
    let confirm = browser
        .http
        .post(proxy.url("/.portcullis/recovery-codes"))
        .header("origin", proxy.origin())
        .form(&[("csrf", csrf.as_str()), ("rd", "/"), ("saved", "yes")])
        .send()
        .await
        .unwrap();
    assert!(confirm.headers()["location"].to_str().unwrap().contains("/.portcullis/challenge"));
    assert_eq!(browser.http.get(proxy.url("/")).send().await.unwrap().status(), 401, "still partial");
    let challenge = proxy.url("/.portcullis/challenge");
    assert_eq!(submit_code(&browser, &proxy, &challenge, &code(&secret, 1)).await.status(), 303);
    assert_eq!(browser.navigate(&proxy.url("/")).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_page_warns_when_the_clock_is_off() {
    let upstream = Upstream::start().await;
    let time_server = crate::cli::fake_time_server(90.0).await;
    let proxy = proxy(&upstream.url())
        .toml(&format!("[admin]\ngroup = \"wiki-admins\"\n[clock]\nntp_server = \"{time_server}\""))
        .start();
    proxy.stderr.wait_for(0, |l| l.contains("clock: this clock is")).expect("the start-up check warns");
    let alice = Browser::new();
    alice.login(&proxy, &ALICE).await;
    enroll(&alice, &proxy, &proxy.url("/.portcullis/enroll")).await;
    let page = alice.navigate(&proxy.url("/.portcullis/admin")).await.text().await.unwrap();
    assert!(page.contains("class=\"warning\"") && page.contains("this clock is -90."), "{page}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recovery_link_refuses_forged_and_cross_site_posts() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let issued = proxy.cli(&["admin", "recovery-link", "alice"], "");
    let link = String::from_utf8_lossy(&issued.stdout).lines().find(|l| l.starts_with("http")).unwrap().to_string();
    let browser = Browser::new();
    let html = browser.navigate(&link).await.text().await.unwrap();
    let form = |name| crate::harness::form_field(&html, name).unwrap();
    let post = |origin: &'static str, csrf: String| {
        browser
            .http
            .post(proxy.url("/.portcullis/recover"))
            .header("origin", if origin.is_empty() { proxy.origin() } else { origin.to_string() })
            .form(&[("csrf", csrf), ("token", form("token")), ("password", ALICE.password.to_string())])
            .send()
    };
    assert_eq!(post("https://evil.example", form("csrf")).await.unwrap().status(), 403, "cross-site");
    assert_eq!(post("", "forged".into()).await.unwrap().status(), 403, "without the form's token");
    // Another browser (no login-CSRF cookie) cannot use this one's token either.
    let other = Browser::new()
        .http
        .post(proxy.url("/.portcullis/recover"))
        .header("origin", proxy.origin())
        .form(&[("csrf", form("csrf")), ("token", form("token")), ("password", ALICE.password.to_string())])
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403);
    assert_eq!(browser.http.get(proxy.url("/")).send().await.unwrap().status(), 401, "no session came of it");
    assert_eq!(Browser::new().navigate(&link).await.status(), 200, "the link is not spent");
    assert_eq!(post("", form("csrf")).await.unwrap().status(), 303, "the real form still works");
}
