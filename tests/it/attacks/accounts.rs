//! What an account leaves behind (a removed user's factors, files others could read), what a
//! client can write into the log, and sessions swapped by planted cookies.

use std::os::unix::fs::PermissionsExt;

use crate::harness::{ALICE, Browser, add_account, proxy};
use crate::mfa::{code, enroll, log_out, password, submit_code};
use crate::upstream::Upstream;

#[tokio::test(flavor = "multi_thread")]
async fn a_recreated_user_inherits_nothing_from_the_removed_one() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    let (secret, codes, _) = enroll(&browser, &proxy, &proxy.url("/.portcullis/enroll")).await;
    let link = proxy.cli(&["admin", "recovery-link", "alice"], "");
    assert!(link.status.success());
    let link =
        String::from_utf8_lossy(&link.stdout).lines().find(|l| l.contains("/recover?token=")).unwrap().to_string();
    for n in 0..5 {
        let _ = Browser::new().submit_login(&proxy, "alice", &format!("guess {n}"), "/").await;
    }

    // Alice leaves; later someone else is given the name, with her very password even.
    let removed = proxy.cli(&["user", "remove", "alice"], "");
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    assert!(String::from_utf8_lossy(&removed.stdout).contains("second factors, recovery codes"));
    let mark = proxy.stderr.len();
    add_account(&proxy.users_file(), &ALICE);
    proxy.stderr.wait_for(mark, |l| l.contains("users file reloaded")).unwrap();

    let newcomer = Browser::new();
    assert_eq!(
        password(&newcomer, &proxy, &ALICE, "/").await,
        proxy.url("/"),
        "no second factor asked: none was inherited, and the old bans went with the old account"
    );
    let page = newcomer.navigate(&proxy.url("/.portcullis/account")).await.text().await.unwrap();
    assert!(page.contains("Set up two-step verification with an app"), "{page}");
    assert!(!page.contains("Recovery codes left"), "{page}");
    assert_eq!(newcomer.navigate(&link).await.status(), 410, "the old recovery link is dead");
    // Once the newcomer sets up a factor, the old one's codes are worth nothing against it.
    enroll(&newcomer, &proxy, &proxy.url("/.portcullis/enroll")).await;
    log_out(&newcomer, &proxy).await;
    let stranger = Browser::new();
    let challenge = password(&stranger, &proxy, &ALICE, "/").await;
    assert_eq!(submit_code(&stranger, &proxy, &challenge, &code(&secret, 1)).await.status(), 401);
    assert_eq!(submit_code(&stranger, &proxy, &challenge, &codes[0]).await.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_name_cannot_forge_a_line_in_the_log() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).start();
    // Short enough to pass as a user name's length (64).
    let forged = "bob\n2026-11-30T12:00:00Z INFO login ok user=admin";
    let mark = proxy.stderr.len();
    assert_eq!(Browser::new().submit_login(&proxy, forged, "whatever", "/").await.status(), 401);
    let line = proxy.stderr.wait_for(mark, |l| l.contains("login failed")).unwrap();
    assert!(line.contains("bob\\u{a}2026"), "the newline is written as an escape: {line}");
    let lines = proxy.stderr.all();
    assert!(!lines[mark..].iter().any(|l| l.starts_with("2026-11-30T12:00:00Z")), "a forged line: {lines:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn everything_under_data_dir_is_private_even_if_it_was_not() {
    let upstream = Upstream::start().await;
    let mut first = proxy(&upstream.url()).toml("[mfa]\nemail_otp = true").start();
    let data = first.data_dir();
    assert!(first.stop().success());
    // Someone loosened the folder (or an older version left it so).
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(data.join("mail")).unwrap();
    std::fs::set_permissions(data.join("mail"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(data.join("mail/old.eml"), "Your code is 123456").unwrap();
    std::fs::set_permissions(data.join("mail/old.eml"), std::fs::Permissions::from_mode(0o644)).unwrap();
    // And the users file, with its password hashes, was left readable by everyone.
    let users = first.users_file();
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o644)).unwrap();

    let restarted = proxy(&upstream.url()).toml("[mfa]\nemail_otp = true").restart_of(&first).start();
    assert!(restarted.stderr.all().iter().any(|l| l.contains("made them private")));
    assert!(restarted.stderr.all().iter().any(|l| l.contains("readable by every local user")), "the operator is told");
    // The next write of the users file takes everyone else's bits away.
    let added = restarted.cli(&["user", "add", "zoe", "--email", "zoe@example.com"], "correct horse battery\n");
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    assert_eq!(std::fs::metadata(&users).unwrap().permissions().mode() & 0o777, 0o640);
    // A mail with a code in it, written now.
    let browser = Browser::new();
    browser.login(&restarted, &ALICE).await;
    for _ in 0..5 {
        let _ = Browser::new().submit_login(&restarted, "alice", "wrong", "/").await;
    }
    restarted.wait_for_mail("Signing in to your account was paused");
    let mut open = Vec::new();
    let mut pending = vec![data.clone()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            if mode != 0o700 {
                open.push((path.clone(), mode));
            }
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if mode & 0o077 != 0 {
            open.push((path.clone(), mode));
        }
    }
    assert!(open.is_empty(), "readable by others: {open:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_planted_session_cookie_neither_shadows_nor_swaps_a_session() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).account(&crate::mfa::BOB).start();
    let victim = Browser::new();
    victim.login(&proxy, &ALICE).await;
    let victims = victim.cookie_header(&proxy.url("/")).unwrap();
    let own = |cookies: &str| cookies.split("; ").find(|c| c.starts_with("portcullis=")).unwrap().to_string();
    // The attacker's own full session, tossed into the victim's browser next to hers.
    let attacker = Browser::new();
    attacker.login(&proxy, &crate::mfa::BOB).await;
    let attackers = own(&attacker.cookie_header(&proxy.url("/")).unwrap());
    let client = reqwest::Client::new();
    let get = |cookie: String| client.get(proxy.url("/whoami")).header("cookie", cookie).send();
    let both = get(format!("{attackers}; {}", own(&victims))).await.unwrap();
    assert_eq!(both.status(), 401, "two people's sessions in one request: neither is used");
    assert_eq!(upstream.count(), 0);
    let alone = get(own(&victims)).await.unwrap();
    assert_eq!(alone.status(), 200, "the victim's own session still works by itself");
    assert_eq!(upstream.seen().pop().unwrap().header("x-forwarded-user"), Some("alice"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cookie_tossed_in_from_a_sibling_host_never_makes_the_request_someone_elses() {
    // Without https there is no `__Host-` prefix, so a sibling host can set a cookie for the
    // parent domain that the browser sends to us too (cookie tossing).
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).public_host("app.example.test").account(&crate::mfa::BOB).start();
    let base = format!("http://app.example.test:{}", proxy.addr.port());
    let hosts = ["app.example.test", "evil.example.test"];
    let mallory = Browser::resolving(proxy.addr, &hosts);
    assert_eq!(mallory.submit_login_at(&base, "bob", crate::mfa::BOB.password, "/").await.status(), 303);
    let cookies = mallory.cookie_header(&format!("{base}/")).unwrap();
    let malloys_session = cookies.split("; ").find(|c| c.starts_with("portcullis=")).unwrap().to_string();

    let victim = Browser::resolving(proxy.addr, &hosts);
    assert_eq!(victim.submit_login_at(&base, "alice", ALICE.password, "/").await.status(), 303);
    assert_eq!(victim.navigate(&format!("{base}/notes/today")).await.status(), 200);

    // evil.example.test answers the victim with Mallory's session for the whole domain, once at
    // `/` and once at a narrower path (which the browser sends first).
    let evil: reqwest::Url = "http://evil.example.test/".parse().unwrap();
    victim.jar.add_cookie_str(&format!("{malloys_session}; Domain=example.test; Path=/"), &evil);
    victim.jar.add_cookie_str(&format!("{malloys_session}; Domain=example.test; Path=/notes"), &evil);
    let sent = victim.cookie_header(&format!("{base}/notes/today")).unwrap();
    assert_eq!(sent.matches("portcullis=").count(), 3, "the browser sends all of them: {sent}");

    let refused = victim.navigate(&format!("{base}/notes/today")).await;
    assert_eq!(refused.status(), 303, "neither session is used");
    assert!(refused.headers()["location"].to_str().unwrap().contains("/.portcullis/login"));
    let left = victim.cookie_header(&format!("{base}/notes/today")).unwrap_or_default();
    assert!(!left.contains("portcullis="), "every copy was deleted, the planted ones too: {left}");
    // So the login page asks for a password, rather than finding Mallory's session.
    let login = victim.navigate(&format!("{base}/.portcullis/login")).await;
    assert_eq!(login.status(), 200);
    assert!(
        upstream.seen().iter().all(|seen| seen.header("x-forwarded-user") != Some("bob")),
        "nothing reached the application as Mallory"
    );
}

/// The proof a first setup earns waits, sealed, for the recovery codes to be confirmed. Made full
/// another way (a code on the challenge page), the session must not carry that proof along: sent
/// back to the second step later (`admin downgrade-all`), it could confirm the codes and be full
/// again without proving anything.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_setups_proof_never_outlives_the_half_logged_in_session_it_was_for() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[mfa]\npolicy = \"required\"").start();
    let browser = Browser::new();
    let enroll_url = password(&browser, &proxy, &ALICE, "/").await;
    let html = browser.navigate(&enroll_url).await.text().await.unwrap();
    let secret = crate::mfa::read_enrollment_page(&html);
    let (csrf, rd) =
        (crate::harness::form_field(&html, "csrf").unwrap(), crate::harness::form_field(&html, "rd").unwrap());
    let set_up = crate::email_codes::post(
        &browser,
        &proxy,
        "/.portcullis/enroll",
        &[("csrf", &csrf), ("rd", &rd), ("code", &code(&secret, 0))],
    )
    .await;
    assert_eq!(set_up.status(), 303);
    let codes_url = set_up.headers()["location"].to_str().unwrap().to_string();
    // Not confirming the codes: full through the challenge page with the next code instead.
    let challenge = proxy.url("/.portcullis/challenge?rd=%2F");
    assert_eq!(submit_code(&browser, &proxy, &challenge, &code(&secret, 1)).await.status(), 303);
    assert_eq!(browser.navigate(&proxy.url("/")).await.status(), 200);

    assert!(proxy.cli(&["admin", "downgrade-all"], "").status.success());
    assert_eq!(browser.navigate(&proxy.url("/")).await.status(), 303, "back to the second step");
    let page = browser.navigate(&codes_url).await;
    let html = if page.status() == 200 { page.text().await.unwrap() } else { String::new() };
    if let (Some(csrf), Some(rd)) = (crate::harness::form_field(&html, "csrf"), crate::harness::form_field(&html, "rd"))
    {
        let _ = crate::email_codes::post(
            &browser,
            &proxy,
            "/.portcullis/recovery-codes",
            &[("csrf", &csrf), ("rd", &rd), ("saved", "yes")],
        )
        .await;
    }
    let before = upstream.count();
    assert_eq!(browser.navigate(&proxy.url("/")).await.status(), 303, "still half logged in: no factor proven");
    assert_eq!(upstream.count(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_ins_abandoned_while_waiting_never_turn_everyone_away() {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).toml("[login]\nhash_workers = 1\nqueue_limit = 4").start();
    let origin = proxy.origin();
    // A crowd posts the password form at once and leaves without waiting for the answers (tabs
    // closed, or someone who wants sign-ins to stop for everyone): once the line is full (the
    // first browser turned away), everyone still waiting goes.
    let (told, mut answers) = tokio::sync::mpsc::unbounded_channel();
    // (Names of their own: one account's sign-ins are limited to a few at once before the line.)
    let crowd: Vec<_> = (0..12)
        .map(|n| {
            let (origin, told) = (origin.clone(), told.clone());
            tokio::spawn(async move {
                let name = format!("crowd{n}");
                let status = Browser::new().submit_login_at(&origin, &name, "a password", "/").await.status();
                let _ = told.send(status.as_u16());
            })
        })
        .collect();
    let turned_away = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(status) = answers.recv().await {
            if status == 503 {
                return;
            }
        }
    });
    turned_away.await.expect("with twelve at once, the line was full");
    for browser in &crowd {
        browser.abort();
    }

    // Their places in line are given back: the next sign-in gets through once the hashing in
    // progress is done. (Before, each place stayed taken for good: four of them, and every
    // sign-in after was answered "busy" until a restart.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status = Browser::new().submit_login(&proxy, ALICE.name, ALICE.password, "/").await.status();
        if status == 303 {
            break;
        }
        assert_eq!(status, 503, "only busy for a moment");
        assert!(std::time::Instant::now() < deadline, "sign-ins are still turned away as busy");
        // As the page asks, a person tries again a moment later.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
