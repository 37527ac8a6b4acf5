//! Sign-in links by email (`[login.email_link]`) with two replicas on one real Redis: a link
//! asked for on one is opened on the other, once; its code, shown by one, signs in on the other;
//! the throttles and the wrong codes count on both. Each replica writes its own mail (the file
//! transport, into its own data folder), so a link is read from the one that sent it. Both
//! replicas are on 127.0.0.1 and cookies ignore ports: one `Browser` is one browser on both.

use super::{Redis, replicas};
use crate::email_codes::post;
use crate::email_links::{LINKS, ask, link_in};
use crate::harness::{ALICE, Account, Browser, Proxy, form_field, proxy};
use crate::upstream::Upstream;

/// Wrong codes are regulated like passwords (five pause the account); here they must reach the
/// link's own count, so the account is not paused first.
const LOOSE: &str = "[regulation]\nmax_failures = 1000\naddress_max_failures = 100000\n";

static BOB: Account = Account { name: "bob", password: "bob's long password", email: "bob@example.com", groups: &[] };

/// The code a browser that did not ask is shown for a link.
async fn code_shown(browser: &Browser, link: &str) -> String {
    let opened = browser.navigate(link).await;
    assert_eq!(opened.status(), 200, "another browser is shown the code");
    let page = opened.text().await.unwrap();
    let start = page.find("class=\"code\"").unwrap_or_else(|| panic!("a code: {page}"));
    let code: String = page[start..].chars().skip_while(|c| *c != '>').filter(char::is_ascii_digit).take(6).collect();
    assert_eq!(code.len(), 6);
    code
}

/// Types `code` into the "Check your email" page of `browser` (the one that asked) on `proxy`.
async fn type_code(browser: &Browser, proxy: &Proxy, code: &str) -> reqwest::Response {
    let page = browser.navigate(&proxy.url("/.portcullis/login/email?rd=%2F")).await.text().await.unwrap();
    let csrf = form_field(&page, "csrf").unwrap();
    post(browser, proxy, "/.portcullis/login/email/code", &[("csrf", &csrf), ("rd", "/"), ("code", code)]).await
}

/// Asks `proxy` for a link to `address` from `browser`; the mail it sent.
async fn mailed(browser: &Browser, proxy: &Proxy, address: &str) -> String {
    let before = proxy.mail_files();
    let (status, page) = ask(browser, proxy, address, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("Check your email"), "{page}");
    proxy.wait_for_new_mail(&before, "Your sign-in link")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_email_link_asked_for_on_one_replica_signs_in_once_on_the_other() {
    let Some(redis) = Redis::start("sign-in links across replicas") else { return };
    let upstream = Upstream::start().await;
    let a = proxy(&upstream.url()).account(&BOB).toml(&redis.store_toml("links:")).toml(LINKS).start();
    let b = proxy(&upstream.url()).replica_of(&a).toml(&redis.store_toml("links:")).toml(LINKS).start();

    // Asked on A, opened on B in the same browser (its nonce cookie goes to both): signed in.
    let laptop = Browser::new();
    let mail = mailed(&laptop, &a, ALICE.email).await;
    assert_eq!(laptop.navigate(&b.url("/wiki")).await.status(), 303, "not signed in before");
    let opened = laptop.navigate(&link_in(&b, &mail)).await;
    assert_eq!(opened.status(), 303, "A's link, signed in by B");
    assert_eq!(laptop.navigate(&b.url("/wiki")).await.status(), 200);
    assert_eq!(upstream.seen().last().unwrap().header("x-forwarded-user"), Some("alice"));
    // Spent: the same link on A, in the same browser, signs nobody in.
    let again = Browser::new();
    assert_eq!(again.navigate(&link_in(&a, &mail)).await.status(), 410);
    assert_eq!(laptop.navigate(&link_in(&a, &mail)).await.status(), 410);

    // Opened on both at the same instant by the browser that asked: once.
    let racer = Browser::new();
    let mail = mailed(&racer, &a, BOB.email).await;
    let (link_a, link_b) = (link_in(&a, &mail), link_in(&b, &mail));
    let (on_a, on_b) = tokio::join!(racer.navigate(&link_a), racer.navigate(&link_b));
    let mut statuses = [on_a.status().as_u16(), on_b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [303, 410], "accepted exactly once");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_email_link_opened_elsewhere_on_one_replica_shows_the_code_that_signs_in_on_the_other() {
    let Some(redis) = Redis::start("sign-in link codes across replicas") else { return };
    let upstream = Upstream::start().await;
    let (a, b) = replicas(&upstream, &redis, "code:", LINKS);

    let laptop = Browser::new();
    let mail = mailed(&laptop, &a, ALICE.email).await;
    // The phone opens it on B: A's code, and no session there.
    let phone = Browser::new();
    let code = code_shown(&phone, &link_in(&b, &mail)).await;
    assert_eq!(phone.navigate(&b.url("/wiki")).await.status(), 303, "the phone is not signed in");
    // Typed into the laptop's page on A: signed in.
    let typed = type_code(&laptop, &a, &code).await;
    assert_eq!(typed.status(), 303, "B's code, on A");
    assert_eq!(laptop.navigate(&a.url("/wiki")).await.status(), 200);
    // The link is spent with its code, on both.
    assert_eq!(phone.navigate(&link_in(&b, &mail)).await.status(), 410);
    assert_eq!(phone.navigate(&link_in(&a, &mail)).await.status(), 410);
}

/// The account's record (its last link, its sends this hour) and the client's requests are each
/// one record in Redis, changed by compare-and-swap. The account's hourly five are not reached
/// here: a link a minute at most makes that four minutes of real time, and the binary's clock
/// cannot be moved; `two_replicas_over_one_store_accept_a_link_once_and_count_together` (unit)
/// counts them at fixed times over one shared store. Its minute is what this test shows.
#[tokio::test(flavor = "multi_thread")]
async fn email_link_throttles_add_up_across_replicas() {
    let Some(redis) = Redis::start("sign-in link throttles across replicas") else { return };
    let upstream = Upstream::start().await;
    let (a, b) = replicas(&upstream, &redis, "limit:", LINKS);

    // A link from A; asked again on B within the minute: B sends none. (Sending or not is
    // logged by the request before it answers, so waiting for the line is waiting for the
    // decision, whichever it was.)
    let laptop = Browser::new();
    mailed(&laptop, &a, ALICE.email).await;
    let (lines, mails) = (b.stderr.len(), b.mail_files());
    let (status, _) = ask(&laptop, &b, ALICE.email, "/").await;
    assert_eq!(status, 200, "the same page");
    let decided =
        b.stderr.wait_for(lines, |l| l.contains("sign-in link not sent:") || l.contains("sign-in link emailed"));
    let decided = decided.expect("B logs what it did");
    assert!(decided.contains("not sent: a link was sent to this account less than a minute ago"), "{decided}");
    assert_eq!(b.mail_files(), mails, "B sent none");

    // Twenty requests an hour from one client, counted on both: two so far, nine more on each
    // (for addresses nobody has), and the next is refused by either.
    for i in 0..18 {
        let (replica, stranger) = (if i % 2 == 0 { &a } else { &b }, Browser::new());
        let (status, _) = ask(&stranger, replica, &format!("nobody{i}@example.com"), "/").await;
        assert_eq!(status, 200, "request {} of 20", i + 3);
    }
    for replica in [&a, &b] {
        let (status, page) = ask(&Browser::new(), replica, "nobody@example.com", "/").await;
        assert_eq!(status, 429, "the 21st, on either");
        assert!(page.contains("Too many sign-in links"), "{page}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn five_wrong_email_link_codes_split_across_replicas_void_the_link() {
    let Some(redis) = Redis::start("sign-in link code tries across replicas") else { return };
    let upstream = Upstream::start().await;
    let (a, b) = replicas(&upstream, &redis, "tries:", &format!("{LINKS}{LOOSE}"));

    let laptop = Browser::new();
    let mail = mailed(&laptop, &a, ALICE.email).await;
    let code = code_shown(&Browser::new(), &link_in(&b, &mail)).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let mut answers = Vec::new();
    for i in 0..5 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let typed = type_code(&laptop, replica, wrong).await;
        answers.push((typed.status().as_u16(), typed.text().await.unwrap()));
    }
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [401, 401, 401, 401, 410], "the fifth wrong code, wherever typed, voids the link");
    for (tries_left, (_, page)) in (1..=4).rev().zip(&answers) {
        assert!(page.contains(&format!("{tries_left} tries left")), "counted on both: {page}");
    }
    // Void: the right code now, on either, and the link itself sign nobody in.
    for replica in [&b, &a] {
        assert_eq!(type_code(&laptop, replica, &code).await.status(), 410);
        assert_eq!(laptop.navigate(&link_in(replica, &mail)).await.status(), 410);
    }
    assert_eq!(laptop.navigate(&a.url("/wiki")).await.status(), 303, "not signed in");
}
