//! Factor providers (`[[mfa.provider]]`) through the real binary: retiring a kind (deprecated)
//! and switching one off (disabled), applied by reload to users who enrolled before, and what the
//! operator sees (`admin providers`, `admin factors --stranded`).

use serde_json::Value;

use crate::harness::{ALICE, Browser, Proxy, form_field, proxy};
use crate::mfa::{code, enroll, password, submit_code};
use crate::upstream::Upstream;

fn provider(id: &str, status: &str) -> String {
    format!("[[mfa.provider]]\nid = \"{id}\"\nkind = \"totp\"\nname = \"Authenticator app\"\nstatus = \"{status}\"\n")
}

/// Rewrites proxy.toml as `base` plus `extra` and waits until the reload was applied and the
/// providers reviewed; returns that log line (it says how many users were mailed).
pub(crate) fn reload_with(proxy: &Proxy, base: &str, extra: &str) -> String {
    let mark = proxy.stderr.len();
    std::fs::write(proxy.config_path(), format!("{base}\n{extra}")).unwrap();
    proxy.stderr.wait_for(mark, |l| l.contains("configuration reloaded")).expect("reloaded");
    proxy.stderr.wait_for(mark, |l| l.contains("providers reviewed")).expect("reviewed")
}

fn admin_json(proxy: &Proxy, args: &[&str]) -> Value {
    let mut all = vec!["admin"];
    all.extend_from_slice(args);
    all.push("--json");
    let output = proxy.cli(&all, "");
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn retiring_mails(proxy: &Proxy) -> usize {
    proxy.mails().iter().filter(|m| m.contains("is being retired")).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deprecated_provider_keeps_working_takes_no_new_factors_and_tells_its_users_once() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[admin]\ngroup = \"wiki-admins\"\n").start();
    let base = std::fs::read_to_string(proxy.config_path()).unwrap();
    let first = Browser::new();
    first.login(&proxy, &ALICE).await;
    let (secret, _, _) = enroll(&first, &proxy, &proxy.url("/.portcullis/enroll?rd=%2F.portcullis%2Faccount")).await;

    let reviewed = reload_with(&proxy, &base, &provider("totp", "deprecated"));
    assert!(reviewed.contains("mailed=1"), "{reviewed}");
    let mail = proxy.wait_for_mail("is being retired");
    assert!(mail.contains("Your administrator is retiring Authenticator app"), "{mail}");

    // Her app still signs her in.
    let browser = Browser::new();
    let challenge = password(&browser, &proxy, &ALICE, "/wiki").await;
    assert!(challenge.contains("/.portcullis/challenge"), "{challenge}");
    let signed_in = submit_code(&browser, &proxy, &challenge, &code(&secret, 1)).await;
    assert_eq!(signed_in.status(), 303);
    assert_eq!(browser.navigate(&proxy.url("/wiki")).await.status(), 200);

    // The account page says it is being retired and offers no new app.
    let account = browser.navigate(&proxy.url("/.portcullis/account")).await.text().await.unwrap();
    assert!(account.contains("Your administrator is retiring Authenticator app"), "{account}");
    assert!(!account.contains("Move to a new phone"), "no new app to move to");
    // The enroll page offers nothing (back to the account page), and a forged POST is refused.
    let page = browser.navigate(&proxy.url("/.portcullis/enroll")).await;
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], proxy.url("/.portcullis/account").as_str());
    let csrf = form_field(&account, "csrf").unwrap();
    let forged = browser
        .http
        .post(proxy.url("/.portcullis/enroll"))
        .header("origin", proxy.origin())
        .form(&[("csrf", csrf.as_str()), ("rd", "/"), ("code", &code(&secret, 2))])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(forged.text().await.unwrap().contains("cannot be set up here any more"));

    // Another review (a SIGHUP reload) mails nobody again: it was remembered.
    let mark = proxy.stderr.len();
    let status = std::process::Command::new("kill").args(["-HUP", &proxy.pid().to_string()]).status().unwrap();
    assert!(status.success());
    let again = proxy.stderr.wait_for(mark, |l| l.contains("providers reviewed")).unwrap();
    assert!(again.contains("mailed=0"), "{again}");
    assert_eq!(retiring_mails(&proxy), 1, "one mail, not two");

    let rows = admin_json(&proxy, &["providers"]);
    let totp = &rows["providers"][0];
    assert_eq!(
        (totp["id"].as_str(), totp["status"].as_str(), totp["users"].as_i64()),
        (Some("totp"), Some("deprecated"), Some(1))
    );
    // The admin pages show the same (she is an administrator, with her app just proven).
    let admin = browser.navigate(&proxy.url("/.portcullis/admin")).await;
    assert_eq!(admin.status(), 200);
    let admin = admin.text().await.unwrap();
    let providers = &admin[admin.find("Second-step providers").expect("a providers section")..];
    let row = &providers[providers.find("Authenticator app").unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("Retiring: works, nobody can add one") && row.contains(">1</td>"), "{row}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_provider_strands_its_users_where_2fa_is_required_and_the_operator_sees_them() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let base = std::fs::read_to_string(proxy.config_path()).unwrap();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let (old_secret, _, _) =
        enroll(&browser, &proxy, &proxy.url("/.portcullis/enroll?rd=%2F.portcullis%2Faccount")).await;
    assert_eq!(browser.navigate(&proxy.url("/wiki")).await.status(), 200);

    // Required, the old app provider disabled, a new one active.
    let required =
        format!("[mfa]\npolicy = \"required\"\n{}{}", provider("totp", "disabled"), provider("totp-2027", "active"));
    reload_with(&proxy, &base, &required);

    // The live session is downgraded: it reaches nothing upstream, and is sent to set up anew.
    let seen = upstream.count();
    let api = browser.http.get(proxy.url("/api/data")).send().await.unwrap();
    assert_eq!(api.status(), 401);
    let nav = browser.navigate(&proxy.url("/wiki")).await;
    assert_eq!(nav.status(), 303);
    let enroll_url = nav.headers()["location"].to_str().unwrap().to_string();
    assert!(enroll_url.contains("/.portcullis/enroll"), "{enroll_url}");
    let page = browser.navigate(&enroll_url).await.text().await.unwrap();
    assert!(
        page.contains("Authenticator app no longer works for signing in here: your administrator turned it off"),
        "{page}"
    );
    // Codes from the disabled app prove nothing.
    let csrf = form_field(&page, "csrf").unwrap();
    let old = browser
        .http
        .post(proxy.url("/.portcullis/challenge"))
        .header("origin", proxy.origin())
        .form(&[("csrf", csrf.as_str()), ("rd", "/wiki"), ("code", &code(&old_secret, 1))])
        .send()
        .await
        .unwrap();
    let went = old.headers().get("location").map(|l| l.to_str().unwrap().to_string());
    assert_ne!(went.as_deref(), Some(proxy.url("/wiki").as_str()), "an old code does not sign in");
    assert_eq!(browser.navigate(&proxy.url("/wiki")).await.status(), 303);
    assert_eq!(upstream.count(), seen, "the upstream saw nothing from the stranded account");

    // The operator sees it.
    let rows = admin_json(&proxy, &["providers"]);
    let row = |id: &str| rows["providers"].as_array().unwrap().iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!((row("totp")["status"].as_str(), row("totp")["users"].as_i64()), (Some("disabled"), Some(1)));
    assert_eq!((row("totp-2027")["status"].as_str(), row("totp-2027")["users"].as_i64()), (Some("active"), Some(0)));
    let table = String::from_utf8(proxy.cli(&["admin", "providers"], "").stdout).unwrap();
    assert!(table.lines().next().unwrap().starts_with("ID"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("totp ") && l.contains("disabled") && l.contains(" 1 ")), "{table}");
    let stranded = String::from_utf8(proxy.cli(&["admin", "factors", "--stranded"], "").stdout).unwrap();
    assert!(
        stranded
            .lines()
            .any(|l| l.starts_with("alice") && l.contains("required: cannot sign in") && l.ends_with("totp")),
        "{stranded}"
    );

    // She sets up the new app from that page, with new recovery codes, and goes on.
    let (_, codes, _) = enroll(&browser, &proxy, &enroll_url).await;
    assert_eq!(codes.len(), 10);
    assert_eq!(browser.navigate(&proxy.url("/wiki")).await.status(), 200);
    let rows = admin_json(&proxy, &["providers"]);
    assert_eq!(rows["providers"][1]["users"].as_i64(), Some(1), "{rows}");
    let stranded = String::from_utf8(proxy.cli(&["admin", "factors", "--stranded"], "").stdout).unwrap();
    assert!(stranded.contains("no stranded accounts"), "{stranded}");
}

#[tokio::test(flavor = "multi_thread")]
async fn under_optional_a_disabled_provider_leaves_the_password() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let base = std::fs::read_to_string(proxy.config_path()).unwrap();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    enroll(&browser, &proxy, &proxy.url("/.portcullis/enroll?rd=%2F.portcullis%2Faccount")).await;

    reload_with(&proxy, &base, &provider("totp", "disabled"));
    // The session that proved the (now disabled) app stays: optional asks for nothing now.
    assert_eq!(browser.navigate(&proxy.url("/wiki")).await.status(), 200);
    // A new sign-in needs the password only.
    let fresh = Browser::new();
    assert_eq!(password(&fresh, &proxy, &ALICE, "/wiki").await, proxy.url("/wiki"));
    assert_eq!(fresh.navigate(&proxy.url("/wiki")).await.status(), 200);
    let account = fresh.navigate(&proxy.url("/.portcullis/account")).await.text().await.unwrap();
    assert!(account.contains("Authenticator app no longer works for signing in: your administrator turned it off"));
}
