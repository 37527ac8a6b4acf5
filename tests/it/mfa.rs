//! The second factor, walked the way a person walks it: enrolling from the secret and QR code the
//! page shows, signing in with a code, using recovery codes, inline enrollment when 2FA is
//! required, and what a half-logged-in session can (nothing) and cannot reach.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;

use crate::harness::{ALICE, Account, Browser, Proxy, form_field, proxy};
use crate::upstream::Upstream;

pub const BOB: Account =
    Account { name: "bob", password: "bob's long password", email: "bob@example.com", groups: &["staff"] };

pub(crate) fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A TOTP code `steps` steps from now, computed from the base32 secret the page showed.
pub(crate) fn code(secret: &[u8], steps: i64) -> String {
    portcullis::domain::factors::totp::code_at(secret, now() + steps * 30).unwrap()
}

pub(crate) fn attr(html: &str, marker: &str) -> String {
    let start = html.find(marker).unwrap_or_else(|| panic!("{marker} not in page")) + marker.len();
    html[start..start + html[start..].find('"').unwrap()].to_string()
}

/// What the enrollment page shows, checked for consistency: the QR code decodes to the same
/// otpauth URI as the link, and that URI carries the same secret as the text.
pub(crate) fn read_enrollment_page(html: &str) -> Vec<u8> {
    let secret_text = attr(html, "data-secret=\"");
    let uri = attr(html, "<a href=\"").replace("&amp;", "&").replace("&#38;", "&");
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert!(uri.contains(&format!("secret={secret_text}")), "{uri}");

    let png = base64::engine::general_purpose::STANDARD.decode(attr(html, "src=\"data:image/png;base64,")).unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let (w, h) = (info.width as usize, info.height as usize);
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| pixels[y * w + x]);
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code on the page");
    let (_, decoded) = grids[0].decode().unwrap();
    assert_eq!(decoded, uri, "the QR code says what the link says");

    let secret = totp_rs::Secret::try_from_base32(&secret_text).unwrap();
    secret.as_ref().to_vec()
}

/// Enrolls from the page the browser is sent to (`enroll_url`), returns the secret and codes.
pub(crate) async fn enroll(
    browser: &Browser,
    proxy: &Proxy,
    enroll_url: &str,
) -> (Vec<u8>, Vec<String>, reqwest::Response) {
    let page = browser.navigate(enroll_url).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let secret = read_enrollment_page(&html);
    let csrf = form_field(&html, "csrf").unwrap();
    let rd = form_field(&html, "rd").unwrap();
    let post = |code: String| {
        browser
            .http
            .post(proxy.url("/.portcullis/enroll"))
            .header("origin", proxy.origin())
            .form(&[("csrf", csrf.clone()), ("rd", rd.clone()), ("code", code)])
            .send()
    };
    let wrong = post("000000".into()).await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.text().await.unwrap().contains("does not match"));
    let done = post(code(&secret, 0)).await.unwrap();
    assert_eq!(done.status(), 303);
    assert!(done.headers()["location"].to_str().unwrap().contains("/.portcullis/recovery-codes"));

    let page = browser.navigate(done.headers()["location"].to_str().unwrap()).await.text().await.unwrap();
    let codes: Vec<String> = page.split("<li><code>").skip(1).map(|s| s[..s.find('<').unwrap()].to_string()).collect();
    assert_eq!(codes.len(), 10, "ten recovery codes");
    assert!(page.contains("download=\"") && page.contains("data:text/plain"));
    let csrf = form_field(&page, "csrf").unwrap();
    let rd = form_field(&page, "rd").unwrap();
    let confirmed = browser
        .http
        .post(proxy.url("/.portcullis/recovery-codes"))
        .header("origin", proxy.origin())
        .form(&[("csrf", csrf.as_str()), ("rd", rd.as_str()), ("saved", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), 303);
    (secret, codes, confirmed)
}

/// Signs in with the password; returns the redirect (to the challenge, when 2FA applies).
pub(crate) async fn password(browser: &Browser, proxy: &Proxy, account: &Account, rd: &str) -> String {
    let response = browser.submit_login(proxy, account.name, account.password, rd).await;
    assert_eq!(response.status(), 303);
    response.headers()["location"].to_str().unwrap().to_string()
}

pub(crate) async fn submit_code(
    browser: &Browser,
    proxy: &Proxy,
    challenge_url: &str,
    code: &str,
) -> reqwest::Response {
    let page = browser.navigate(challenge_url).await.text().await.unwrap();
    let csrf = form_field(&page, "csrf").expect("a challenge form");
    let rd = form_field(&page, "rd").unwrap();
    browser
        .http
        .post(proxy.url("/.portcullis/challenge"))
        .header("origin", proxy.origin())
        .form(&[("csrf", csrf.as_str()), ("rd", rd.as_str()), ("code", code)])
        .send()
        .await
        .unwrap()
}

/// Every way a half-logged-in session might try to reach the upstream, refused.
async fn assert_partial_reaches_nothing(browser: &Browser, proxy: &Proxy, upstream: &Upstream) {
    let before = upstream.count();
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = browser.http.request(m, proxy.url("/api/data")).body("x").send().await.unwrap();
        assert_eq!(response.status(), 401, "{method}");
    }
    let nav = browser.navigate(&proxy.url("/wiki/Page")).await;
    assert_eq!(nav.status(), 303);
    assert!(nav.headers()["location"].to_str().unwrap().contains("/.portcullis/"), "sent to a second-factor page");
    let mut ws = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/ws",
        proxy.addr
    ))
    .unwrap();
    ws.headers_mut().insert("cookie", browser.cookie_header(&proxy.url("/")).unwrap().parse().unwrap());
    match tokio_tungstenite::connect_async(ws).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("a partial session's WebSocket must be refused: {other:?}"),
    }
    assert_eq!(upstream.count(), before, "the upstream saw nothing from a partial session");
}

/// The claims of the assertion `seen` carried, verified with the proxy's published keys.
pub(crate) async fn claims(proxy: &Proxy, seen: &crate::upstream::Seen) -> serde_json::Value {
    proxy.verify_assertion(seen.header("x-portcullis-assertion").unwrap()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn optional_enrollment_then_every_login_needs_the_code() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();

    // A session from before enrollment, on another device.
    let old_device = Browser::new();
    old_device.login(&proxy, &ALICE).await;
    assert_eq!(old_device.navigate(&proxy.url("/")).await.status(), 200);

    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let account = browser.navigate(&proxy.url("/.portcullis/account")).await.text().await.unwrap();
    assert!(account.contains("Set up two-step verification"));
    let (secret, _codes, done) =
        enroll(&browser, &proxy, &proxy.url("/.portcullis/enroll?rd=%2F.portcullis%2Faccount")).await;
    assert_eq!(done.headers()["location"], proxy.url("/.portcullis/account").as_str());
    let account = browser.navigate(&proxy.url("/.portcullis/account")).await.text().await.unwrap();
    assert!(account.contains("Recovery codes left: <strong>10</strong>"), "{account}");
    assert_eq!(browser.navigate(&proxy.url("/")).await.status(), 200, "the enrolling session carries on");

    // The password-only session elsewhere no longer satisfies the policy: it must step up.
    let downgraded = old_device.navigate(&proxy.url("/")).await;
    assert_eq!(downgraded.status(), 303);
    assert!(downgraded.headers()["location"].to_str().unwrap().contains("/.portcullis/challenge"));

    // A new sign-in: password, then the challenge; nothing reaches the upstream in between.
    let second = Browser::new();
    let challenge = password(&second, &proxy, &ALICE, "/wiki/Deep?x=1").await;
    assert!(challenge.starts_with(&proxy.url("/.portcullis/challenge?rd=")), "{challenge}");
    assert_partial_reaches_nothing(&second, &proxy, &upstream).await;
    let wrong = submit_code(&second, &proxy, &challenge, "123456").await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.text().await.unwrap().contains("not right"));
    let partial_cookie = second.cookie_header(&proxy.url("/")).unwrap();
    let next_code = code(&secret, 1);
    let ok = submit_code(&second, &proxy, &challenge, &next_code).await;
    assert_eq!(ok.status(), 303);
    // Session fixation, second step: the id changes again when the session becomes full, and the
    // half-logged-in id is dead.
    let full_cookie = second.cookie_header(&proxy.url("/")).unwrap();
    let session_of = |c: &str| c.split("; ").find(|c| c.starts_with("portcullis=")).unwrap().to_string();
    assert_ne!(session_of(&partial_cookie), session_of(&full_cookie));
    let stale =
        reqwest::Client::new().get(proxy.url("/x")).header("cookie", session_of(&partial_cookie)).send().await.unwrap();
    assert_eq!(stale.status(), 401);
    assert_eq!(ok.headers()["location"], proxy.url("/wiki/Deep?x=1").as_str(), "lands where it was going");
    assert_eq!(second.navigate(&proxy.url("/wiki/Deep?x=1")).await.status(), 200);
    let seen = upstream.seen().pop().unwrap();
    let claims = claims(&proxy, &seen).await;
    assert_eq!(claims["amr"], serde_json::json!(["pwd", "otp"]));
    assert_eq!(claims["acr"], "aal2");
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"), "the plain headers are unchanged");

    // The same code again, in another session: refused as a replay.
    let third = Browser::new();
    let challenge = password(&third, &proxy, &ALICE, "/").await;
    let replay = submit_code(&third, &proxy, &challenge, &next_code).await;
    assert_eq!(replay.status(), 401);
    assert!(replay.text().await.unwrap().contains("already used"));
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_codes_work_once_and_regenerating_voids_the_old_set() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let (_secret, codes, _) = enroll(&browser, &proxy, &proxy.url("/.portcullis/enroll")).await;

    let lost_phone = Browser::new();
    let challenge = password(&lost_phone, &proxy, &ALICE, "/").await;
    let sloppy = codes[0].to_uppercase().replace('-', " ");
    assert_eq!(submit_code(&lost_phone, &proxy, &challenge, &sloppy).await.status(), 303);
    assert_eq!(lost_phone.navigate(&proxy.url("/")).await.status(), 200);
    assert_eq!(claims(&proxy, &upstream.seen().pop().unwrap()).await["amr"], serde_json::json!(["pwd", "rc"]));
    let account = lost_phone.navigate(&proxy.url("/.portcullis/account")).await.text().await.unwrap();
    assert!(account.contains("Recovery codes left: <strong>9</strong>"));
    // The owner hears about both: the enrollment, and the recovery code (with how many are left).
    let enrolled = proxy.wait_for_mail("Subject: Two-step verification was turned on");
    assert!(enrolled.contains("alice@example.com"));
    let used = proxy.wait_for_mail("Subject: A recovery code was used to sign in");
    assert!(used.contains("9 unused code(s) remain"), "{used}");
    assert!(!used.contains(&codes[0]), "a mail never carries a code");

    let again = Browser::new();
    let challenge = password(&again, &proxy, &ALICE, "/").await;
    assert_eq!(submit_code(&again, &proxy, &challenge, &codes[0]).await.status(), 401, "a used code is spent");

    // Regenerate (the recovery sign-in just proved a second factor, so no step-up is needed).
    let csrf = form_field(&account, "csrf").unwrap();
    let made = lost_phone
        .http
        .post(proxy.url("/.portcullis/account/regenerate-codes"))
        .header("origin", proxy.origin())
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 303);
    let page = lost_phone.navigate(made.headers()["location"].to_str().unwrap()).await.text().await.unwrap();
    let fresh: Vec<String> = page.split("<li><code>").skip(1).map(|s| s[..s.find('<').unwrap()].to_string()).collect();
    assert_eq!(fresh.len(), 10);
    let old = Browser::new();
    let challenge = password(&old, &proxy, &ALICE, "/").await;
    assert_eq!(submit_code(&old, &proxy, &challenge, &codes[1]).await.status(), 401, "old codes are void");
    let new = Browser::new();
    let challenge = password(&new, &proxy, &ALICE, "/").await;
    assert_eq!(submit_code(&new, &proxy, &challenge, &fresh[1]).await.status(), 303);
}

#[tokio::test(flavor = "multi_thread")]
async fn required_policy_enrolls_inline_and_lands_on_the_deep_link() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[mfa]\npolicy = \"required\"").start();
    let browser = Browser::new();
    let to_login = browser.navigate(&proxy.url("/projects/42/settings?tab=members")).await;
    assert_eq!(to_login.status(), 303);
    let enroll_url = password(&browser, &proxy, &ALICE, "/projects/42/settings?tab=members").await;
    assert!(enroll_url.starts_with(&proxy.url("/.portcullis/enroll?rd=")), "{enroll_url}");
    assert_partial_reaches_nothing(&browser, &proxy, &upstream).await;

    let (_secret, _codes, done) = enroll(&browser, &proxy, &enroll_url).await;
    assert_eq!(done.headers()["location"], proxy.url("/projects/42/settings?tab=members").as_str());
    assert_eq!(browser.navigate(&proxy.url("/projects/42/settings?tab=members")).await.status(), 200);
    assert_eq!(claims(&proxy, &upstream.seen().pop().unwrap()).await["amr"], serde_json::json!(["pwd", "otp"]));

    // The last factor cannot be removed while 2FA is required.
    let account = browser.navigate(&proxy.url("/.portcullis/account")).await.text().await.unwrap();
    assert!(!account.contains("Turn off two-step verification"));
    let csrf = form_field(&account, "csrf").unwrap();
    let remove = browser
        .http
        .post(proxy.url("/.portcullis/account/remove-totp"))
        .header("origin", proxy.origin())
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(remove.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_can_be_required_while_others_stay_optional() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[mfa]\nrequired_groups = [\"wiki-admins\"]").start();
    crate::harness::add_account(&proxy.users_file(), &BOB);
    let mark = proxy.stderr.len();
    proxy.stderr.wait_for(mark, |l| l.contains("users file reloaded")).unwrap();

    let alice = Browser::new();
    assert!(password(&alice, &proxy, &ALICE, "/").await.contains("/.portcullis/enroll"), "alice is a wiki admin");
    let bob = Browser::new();
    assert_eq!(password(&bob, &proxy, &BOB, "/").await, proxy.url("/"), "bob is not");
    assert_eq!(bob.navigate(&proxy.url("/")).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_change_downgrades_live_sessions_and_replays_stay_refused_after_restart() {
    let upstream = Upstream::start().await;
    let mut first = proxy(&upstream.url()).start();
    let password_only = Browser::new();
    password_only.login(&first, &ALICE).await;
    assert_eq!(password_only.navigate(&first.url("/")).await.status(), 200);
    let bob = Browser::new();
    crate::harness::add_account(&first.users_file(), &BOB);
    let mark = first.stderr.len();
    first.stderr.wait_for(mark, |l| l.contains("users file reloaded")).unwrap();
    bob.login(&first, &BOB).await;
    let (secret, _, _) = enroll(&bob, &first, &first.url("/.portcullis/enroll")).await;
    let used = code(&secret, 1);
    let device = Browser::new();
    let challenge = password(&device, &first, &BOB, "/").await;
    assert_eq!(submit_code(&device, &first, &challenge, &used).await.status(), 303);
    assert!(first.stop().success());

    // Same data, 2FA now required for everyone.
    let second = proxy(&upstream.url()).restart_of(&first).toml("[mfa]\npolicy = \"required\"").start();
    let before = upstream.count();
    let nav = password_only.navigate(&second.url("/")).await;
    assert_eq!(nav.status(), 303);
    assert!(nav.headers()["location"].to_str().unwrap().contains("/.portcullis/enroll"), "downgraded, sent to enroll");
    assert_eq!(password_only.http.get(second.url("/api")).send().await.unwrap().status(), 401);
    assert_eq!(upstream.count(), before);
    // Bob's session proved a second factor, so it satisfies the new policy.
    assert_eq!(device.navigate(&second.url("/")).await.status(), 200);

    // The code Bob used before the restart is still spent.
    let replay = Browser::new();
    let challenge = password(&replay, &second, &BOB, "/").await;
    assert_eq!(submit_code(&replay, &second, &challenge, &used).await.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_wrong_codes_end_the_half_logged_in_session() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[mfa]\nattempts = 3").start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let (secret, _, _) = enroll(&browser, &proxy, &proxy.url("/.portcullis/enroll")).await;

    let attacker = Browser::new();
    let challenge = password(&attacker, &proxy, &ALICE, "/").await;
    assert_eq!(submit_code(&attacker, &proxy, &challenge, "111111").await.status(), 401);
    assert_eq!(submit_code(&attacker, &proxy, &challenge, "222222").await.status(), 401);
    let last = submit_code(&attacker, &proxy, &challenge, "333333").await;
    assert_eq!(last.status(), 401);
    assert!(last.text().await.unwrap().contains("Too many wrong codes"));
    // The session is gone: even the right code no longer helps without the password again.
    let page = attacker.navigate(&challenge).await;
    assert_eq!(page.status(), 303);
    assert!(page.headers()["location"].to_str().unwrap().contains("/.portcullis/login"));
    let _ = secret;
}

#[tokio::test(flavor = "multi_thread")]
async fn disabled_policy_shows_no_second_factor_pages() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[mfa]\npolicy = \"disabled\"").start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    for page in ["/.portcullis/enroll", "/.portcullis/challenge", "/.portcullis/recovery-codes"] {
        assert_eq!(browser.navigate(&proxy.url(page)).await.status(), 404, "{page}");
    }
    let account = browser.navigate(&proxy.url("/.portcullis/account")).await.text().await.unwrap();
    assert!(!account.contains("Two-step verification"));
}

#[tokio::test(flavor = "multi_thread")]
async fn optional_2fa_can_be_turned_off_and_sessions_ended_everywhere() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    enroll(&browser, &proxy, &proxy.url("/.portcullis/enroll")).await;

    // A half-logged-in visitor cannot see the account page; they are sent to the challenge.
    let half = Browser::new();
    password(&half, &proxy, &ALICE, "/").await;
    let account = half.navigate(&proxy.url("/.portcullis/account")).await;
    assert!(account.headers()["location"].to_str().unwrap().contains("/.portcullis/challenge"));

    let page = browser.navigate(&proxy.url("/.portcullis/account")).await.text().await.unwrap();
    let csrf = form_field(&page, "csrf").unwrap();
    let post = |path: &str, csrf: &str| {
        browser.http.post(proxy.url(path)).header("origin", proxy.origin()).form(&[("csrf", csrf.to_string())]).send()
    };
    let forged = post("/.portcullis/account/remove-totp", "forged").await.unwrap();
    assert_eq!(forged.status(), 403, "CSRF-protected");
    let removed = post("/.portcullis/account/remove-totp", &csrf).await.unwrap();
    assert_eq!(removed.status(), 303);
    let page = browser.navigate(&proxy.url("/.portcullis/account?done=removed")).await.text().await.unwrap();
    assert!(page.contains("Two-step verification is off"));
    // Without a factor, the password is enough again.
    let later = Browser::new();
    assert_eq!(password(&later, &proxy, &ALICE, "/").await, proxy.url("/"));

    let everywhere = post("/.portcullis/account/sign-out-everywhere", &csrf).await.unwrap();
    assert_eq!(everywhere.status(), 200);
    for b in [&browser, &later, &half] {
        assert_eq!(b.http.get(proxy.url("/")).send().await.unwrap().status(), 401, "every session ended");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_staged_rollout_reminds_before_the_date_and_requires_after_it() {
    let upstream = Upstream::start().await;
    // Before the deadline: signed in, reminded with the date, free to carry on or set up now.
    let before = proxy(&upstream.url())
        .toml("[mfa]\nrequired_groups = [\"wiki-admins\"]\nrequired_after = \"2099-01-31\"")
        .start();
    let browser = Browser::new();
    let reminder = password(&browser, &before, &ALICE, "/wiki/Deep").await;
    assert!(reminder.starts_with(&before.url("/.portcullis/reminder?rd=")), "{reminder}");
    let page = browser.navigate(&reminder).await.text().await.unwrap();
    assert!(page.contains("2099-01-31 00:00:00 UTC"), "the page names the date");
    assert!(page.contains("href=\"/wiki/Deep\""), "remind me later goes where they were going");
    assert_eq!(browser.navigate(&before.url("/wiki/Deep")).await.status(), 200, "already signed in");
    // "Set it up now" is the ordinary enrollment, landing on the same place afterwards.
    let (_, _, done) = enroll(&browser, &before, &before.url("/.portcullis/enroll?rd=%2Fwiki%2FDeep")).await;
    assert_eq!(done.headers()["location"], before.url("/wiki/Deep").as_str());

    // After the deadline: enrollment is part of signing in.
    let after = proxy(&upstream.url())
        .toml("[mfa]\nrequired_groups = [\"wiki-admins\"]\nrequired_after = \"2000-01-01\"")
        .start();
    let late = Browser::new();
    assert!(password(&late, &after, &ALICE, "/").await.contains("/.portcullis/enroll"));
    assert_eq!(late.http.get(after.url("/api")).send().await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn sensitive_changes_need_a_recent_second_factor() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[mfa]\nremember_device = \"30d\"").start();
    // Without a second factor there is nothing to remove: nothing changes, nothing is announced.
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let csrf = account_csrf(&browser, &proxy).await;
    for action in ["remove-totp", "regenerate-codes"] {
        let response = account_post(&browser, &proxy, action, &csrf).await;
        assert_eq!(response.headers()["location"], proxy.url("/.portcullis/account").as_str(), "{action}");
    }
    assert!(proxy.mails().is_empty(), "nothing changed, so nothing was announced");

    // With a factor, a session from a remembered browser proved no code itself: every sensitive
    // change (and its confirmation page) asks for one first, and comes back to it afterwards.
    let (secret, _, _) = enroll(&browser, &proxy, &proxy.url("/.portcullis/enroll")).await;
    log_out(&browser, &proxy).await;
    let challenge = password(&browser, &proxy, &ALICE, "/").await;
    let page = browser.navigate(&challenge).await.text().await.unwrap();
    let fields = [
        ("csrf", form_field(&page, "csrf").unwrap()),
        ("rd", "/".into()),
        ("code", code(&secret, 1)),
        ("remember", "yes".into()),
    ];
    let proven = browser
        .http
        .post(proxy.url("/.portcullis/challenge"))
        .header("origin", proxy.origin())
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(proven.status(), 303);
    log_out(&browser, &proxy).await;
    assert_eq!(password(&browser, &proxy, &ALICE, "/").await, proxy.url("/"), "remembered: no code at sign-in");
    let mails_before = proxy.mails().len();
    let csrf = account_csrf(&browser, &proxy).await;
    for action in ["remove-totp", "regenerate-codes", "password"] {
        let path = format!("/.portcullis/account/{action}");
        let page = browser.navigate(&proxy.url(&path)).await;
        let post = account_post(&browser, &proxy, action, &csrf).await;
        for response in [page, post] {
            assert_eq!(response.status(), 303, "{action}");
            let location = response.headers()["location"].to_str().unwrap();
            let back = serde_urlencoded::to_string([("rd", path.as_str())]).unwrap();
            assert_eq!(location, proxy.url(&format!("/.portcullis/challenge?{back}")), "{action}: re-prove first");
        }
    }
    assert_eq!(proxy.mails().len(), mails_before, "nothing changed, so nothing was announced");
    assert!(account_csrf(&browser, &proxy).await.len() == 43, "still signed in, with the factor in place");
}

/// Signs out with the account page's form.
pub(crate) async fn log_out(browser: &Browser, proxy: &Proxy) {
    let csrf = account_csrf(browser, proxy).await;
    let out = browser
        .http
        .post(proxy.url("/.portcullis/logout"))
        .header("origin", proxy.origin())
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 200);
}

async fn account_csrf(browser: &Browser, proxy: &Proxy) -> String {
    let page = browser.navigate(&proxy.url("/.portcullis/account")).await.text().await.unwrap();
    form_field(&page, "csrf").unwrap()
}

async fn account_post(browser: &Browser, proxy: &Proxy, action: &str, csrf: &str) -> reqwest::Response {
    browser
        .http
        .post(proxy.url(&format!("/.portcullis/account/{action}")))
        .header("origin", proxy.origin())
        .form(&[("csrf", csrf)])
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn under_optional_a_nudge_suggests_2fa_and_can_be_declined() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).account(&BOB).toml("[mfa]\nnudge_every = \"30d\"").start();
    let browser = Browser::new();
    let nudge = password(&browser, &proxy, &ALICE, "/wiki").await;
    assert_eq!(nudge, proxy.url("/.portcullis/nudge?rd=%2Fwiki"));
    let page = browser.navigate(&nudge).await.text().await.unwrap();
    assert!(page.contains("Protect your account"));
    assert!(page.contains("href=\"/wiki\""), "not now goes where she was going");
    assert!(page.contains("href=\"/.portcullis/enroll?rd=%2Fwiki\""));
    assert_eq!(browser.navigate(&proxy.url("/wiki")).await.status(), 200, "already signed in");
    // Not again within the interval.
    assert_eq!(password(&Browser::new(), &proxy, &ALICE, "/wiki").await, proxy.url("/wiki"));

    // Bob declines for good.
    let bob = Browser::new();
    let nudge = password(&bob, &proxy, &BOB, "/").await;
    let page = bob.navigate(&nudge).await.text().await.unwrap();
    let csrf = form_field(&page, "csrf").unwrap();
    let forged = bob
        .http
        .post(proxy.url("/.portcullis/nudge"))
        .header("origin", proxy.origin())
        .form(&[("csrf", "forged"), ("rd", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let declined = bob
        .http
        .post(proxy.url("/.portcullis/nudge"))
        .header("origin", proxy.origin())
        .form(&[("csrf", csrf.as_str()), ("rd", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(declined.headers()["location"], proxy.url("/").as_str());
    let users = proxy.cli(&["admin", "users", "--json"], "");
    let users: serde_json::Value = serde_json::from_slice(&users.stdout).unwrap();
    let declined: Vec<(&str, bool)> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["name"].as_str().unwrap(), u["declined_2fa"].as_bool().unwrap()))
        .collect();
    assert_eq!(declined, [("alice", false), ("bob", true)], "admins see who declined");

    // With 2FA set up, there is nothing to suggest.
    enroll(&browser, &proxy, &proxy.url("/.portcullis/enroll")).await;
    assert_eq!(browser.navigate(&proxy.url("/.portcullis/nudge?rd=%2F")).await.status(), 303);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_group_can_have_its_own_date() {
    let upstream = Upstream::start().await;
    let both = proxy(&upstream.url())
        .account(&BOB)
        .toml("[mfa.group_required_after]\nwiki-admins = \"2099-01-31\"\nstaff = \"2000-01-01\"")
        .start();
    // Alice is in both groups: the rule already in force wins over the later date.
    assert!(password(&Browser::new(), &both, &ALICE, "/").await.contains("/.portcullis/enroll"));
    let users = both.cli(&["admin", "adoption", "--json"], "");
    let adoption: serde_json::Value = serde_json::from_slice(&users.stdout).unwrap();
    let staff = adoption["groups"].as_array().unwrap().iter().find(|g| g["group"] == "staff").unwrap().clone();
    assert_eq!(staff["missing"], serde_json::json!(["alice", "bob"]));

    let later =
        proxy(&upstream.url()).account(&BOB).toml("[mfa.group_required_after]\nwiki-admins = \"2099-01-31\"").start();
    let reminder = password(&Browser::new(), &later, &ALICE, "/").await;
    assert!(reminder.contains("/.portcullis/reminder"), "{reminder}");
    assert_eq!(password(&Browser::new(), &later, &BOB, "/").await, later.url("/"), "staff has no date here");
}
