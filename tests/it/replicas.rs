//! Two Portcullis processes sharing one real Redis (Debian's `redis-server`, started here on a
//! loopback port with `appendonly yes`), with the test as the round-robin client in front of them:
//! a session made on one works on the other, a sign-out on one reaches the other at once, a ban
//! holds on both, a TOTP code raced to both at the same instant is accepted once, and a Redis
//! restart loses nothing (sign-in links by email: `replicas/email_links.rs`; migrating, nginx in
//! front and Redis over TLS: `replicas/deployment.rs`). With Redis stopped,
//! the documented behaviour: sign-ins get a 503 page, full sessions go on for
//! `store.offline_grace`, then everything is refused until it is back.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::front_proxy::present;
use crate::harness::{ALICE, Account, Browser, Lines, Proxy, form_field, free_port, proxy, run_cli};
use crate::mfa::{code, enroll, log_out, password};
use crate::upstream::Upstream;

mod deployment;
mod email_links;
mod round_trips;

/// A redis-server that can be stopped and started again on the same port and files.
struct Redis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// More arguments for redis-server (TLS, a password).
    extra: Vec<String>,
}

impl Redis {
    fn start(test: &str) -> Option<Self> {
        Self::start_with(test, |_, _| Vec::new())
    }

    /// With more arguments, made from the port and the server's folder.
    fn start_with(test: &str, extra: impl FnOnce(u16, &std::path::Path) -> Vec<String>) -> Option<Self> {
        if !present("redis-server", test) {
            return None;
        }
        let (port, dir) = (free_port(), tempfile::tempdir().unwrap());
        let extra = extra(port, dir.path());
        let mut redis = Self { port, dir, child: None, extra };
        redis.run();
        Some(redis)
    }

    fn run(&mut self) {
        let mut child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--appendonly", "yes", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("redis-server starts");
        let log = Lines::default();
        log.clone().follow(child.stdout.take().unwrap());
        log.clone().follow(child.stderr.take().unwrap());
        assert!(
            log.wait_for(0, |l| l.contains("Ready to accept connections")).is_some(),
            "redis-server did not start:\n{}",
            log.all().join("\n")
        );
        self.child = Some(child);
    }

    /// SIGTERM: Redis writes its append-only file and exits.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            child.wait().unwrap();
        }
    }

    /// SIGSTOP / SIGCONT: a server that stalls (a slow fork, a hung disk) without dropping any
    /// connection.
    fn pause(&self, paused: bool) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        unsafe { libc::kill(pid, if paused { libc::SIGSTOP } else { libc::SIGCONT }) };
    }

    /// The values of the keys matching `pattern`, read with the redis crate.
    async fn values(&self, pattern: &str) -> Vec<Vec<u8>> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/0", self.port)).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg(pattern).query_async(&mut connection).await.unwrap();
        let mut values = Vec::new();
        for key in keys {
            let value: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut connection).await.unwrap();
            values.extend(value);
        }
        values
    }

    fn store_toml(&self, prefix: &str) -> String {
        format!(
            "[store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:{}/0\"\nkey_prefix = \"{prefix}\"\noffline_grace = \"3s\"\n",
            self.port
        )
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Replica `a` and replica `b` of one install.
fn replicas(upstream: &Upstream, redis: &Redis, prefix: &str, extra: &str) -> (Proxy, Proxy) {
    let a = proxy(&upstream.url()).toml(&redis.store_toml(prefix)).toml(extra).start();
    let b = proxy(&upstream.url()).replica_of(&a).toml(&redis.store_toml(prefix)).toml(extra).start();
    (a, b)
}

/// Polls `check` until it holds, for at most `within`; returns how long it took.
async fn within<F: std::future::Future<Output = bool>>(within: Duration, mut check: impl FnMut() -> F) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "did not happen within {within:?}");
        tokio::task::yield_now().await;
    }
    started.elapsed()
}

async fn status_with_cookie(proxy: &Proxy, cookie: &str) -> u16 {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    client.get(proxy.url("/")).header("cookie", cookie).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_made_on_one_replica_works_on_the_other_and_ends_on_both() {
    let Some(redis) = Redis::start("replicas share sessions") else { return };
    let upstream = Upstream::start().await;
    let (a, b) = replicas(&upstream, &redis, "share:", "");

    let browser = Browser::new();
    browser.login(&a, &ALICE).await;
    // The very next request goes to the other replica, before any change message could matter.
    let on_b = browser.navigate(&b.url("/wiki")).await;
    assert_eq!(on_b.status(), 200, "a session from A is good on B");
    assert_eq!(upstream.seen().last().unwrap().path, "/wiki");

    let cookie = browser.cookie_header(&a.url("/")).unwrap();
    assert_eq!(status_with_cookie(&a, &cookie).await, 200);
    log_out(&browser, &b).await;
    let took = within(Duration::from_secs(1), || async { status_with_cookie(&a, &cookie).await != 200 }).await;
    eprintln!("a sign-out on B was refused on A after {took:?}");
    assert_eq!(status_with_cookie(&b, &cookie).await, 401, "and on B");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ban_made_on_one_replica_holds_on_the_other() {
    let Some(redis) = Redis::start("replicas share bans") else { return };
    let upstream = Upstream::start().await;
    let (a, b) = replicas(&upstream, &redis, "bans:", "");
    let attacker = Browser::new();
    let mut paused = false;
    for _ in 0..5 {
        let answer = attacker.submit_login(&a, "alice", "not the password", "/").await;
        paused = answer.status() == 429;
    }
    assert!(paused, "A paused the account after five wrong passwords");
    // B has heard when its operator view shows the pause (a condition, not a sleep).
    within(Duration::from_secs(2), || async {
        let out = run_cli(b.config_path(), &["admin", "bans"], "");
        String::from_utf8_lossy(&out.stdout).contains("account:alice")
    })
    .await;
    let owner = Browser::new();
    let answer = owner.submit_login(&b, ALICE.name, ALICE.password, "/").await;
    assert_eq!(answer.status(), 429, "the right password on B is paused too");
    // Lifted on B, it is lifted on A.
    assert!(run_cli(b.config_path(), &["admin", "unban", "account:alice"], "").status.success());
    within(Duration::from_secs(2), || async {
        let out = run_cli(a.config_path(), &["admin", "bans"], "");
        !String::from_utf8_lossy(&out.stdout).contains("account:alice")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_guesses_split_over_the_replicas_gets_no_more_checks_than_one_replica_allows() {
    let Some(redis) = Redis::start("replicas share one guess limit") else { return };
    let upstream = Upstream::start().await;
    let (a, b) = replicas(&upstream, &redis, "burst:", "");
    let guesses = (0..20).map(|i| {
        let target = if i % 2 == 0 { &a } else { &b };
        async move { Browser::new().submit_login(target, "alice", "not the password", "/").await.status().as_u16() }
    });
    let answers = futures_util::future::join_all(guesses).await;
    let checked = answers.iter().filter(|s| **s == 401).count();
    assert!(answers.iter().all(|s| *s == 401 || *s == 429), "{answers:?}");
    // max_failures is 5: at most five passwords were checked, whichever replica got them.
    assert!(checked <= 5, "{checked} guesses checked: {answers:?}");
    for replica in [&a, &b] {
        let owner = Browser::new().submit_login(replica, ALICE.name, ALICE.password, "/").await;
        assert_eq!(owner.status(), 429, "paused on both");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_redis_closes_the_replicas_and_they_come_back_when_it_answers() {
    let Some(redis) = Redis::start("replicas through a stalled Redis") else { return };
    let upstream = Upstream::start().await;
    let (a, b) = replicas(&upstream, &redis, "stall:", "");
    let browser = Browser::new();
    browser.login(&a, &ALICE).await;
    assert_eq!(browser.navigate(&b.url("/")).await.status(), 200);
    redis.pause(true);
    // Unanswered pings count it unreachable; after the grace (3 s) both refuse.
    for replica in [&a, &b] {
        within(Duration::from_secs(10), || async { browser.navigate(&replica.url("/")).await.status() == 503 }).await;
    }
    redis.pause(false);
    // The subscriptions held through the stall: once Redis answers, both serve again.
    for replica in [&a, &b] {
        let back =
            within(Duration::from_secs(5), || async { browser.navigate(&replica.url("/")).await.status() == 200 })
                .await;
        eprintln!("served again {back:?} after Redis answered");
    }
    assert_eq!(Browser::new().submit_login(&b, ALICE.name, ALICE.password, "/").await.status(), 303);
}

/// Every page of a first setup on the other replica from the one before: the secret shown by A is
/// taken by B, the codes made by B are shown by A and confirmed on B, and the session is full on
/// both. Under `required`, from a half-logged-in session, so the proof of the new factor (held
/// between the pages, sealed) is what makes it full.
#[tokio::test(flavor = "multi_thread")]
async fn a_setup_started_on_one_replica_finishes_on_the_other() {
    let Some(redis) = Redis::start("setup across replicas") else { return };
    let upstream = Upstream::start().await;
    let (a, b) = replicas(&upstream, &redis, "setup:", "[mfa]\npolicy = \"required\"");
    let browser = Browser::new();
    let next = password(&browser, &a, &ALICE, "/wiki").await;
    assert!(next.contains("/.portcullis/enroll"), "{next}");
    // The path and query, to ask either replica for the same page.
    let next = next.find("/.portcullis/").map(|i| next[i..].to_string()).unwrap();
    let html = browser.navigate(&a.url(&next)).await.text().await.unwrap();
    let secret = crate::mfa::read_enrollment_page(&html);
    // The same page on B shows the same secret (it is the session's, not the replica's).
    let again = browser.navigate(&b.url(&next)).await.text().await.unwrap();
    assert_eq!(crate::mfa::read_enrollment_page(&again), secret);
    let (csrf, rd) = (form_field(&html, "csrf").unwrap(), form_field(&html, "rd").unwrap());
    let done = crate::email_codes::post(
        &browser,
        &b,
        "/.portcullis/enroll",
        &[("csrf", &csrf), ("rd", &rd), ("code", &code(&secret, 0))],
    )
    .await;
    assert_eq!(done.status(), 303, "the code for A's secret, on B");
    let codes_page = done.headers()["location"].to_str().unwrap().to_string();
    let codes_page = codes_page.find("/.portcullis/").map(|i| codes_page[i..].to_string()).unwrap();
    let page = browser.navigate(&a.url(&codes_page)).await.text().await.unwrap();
    let codes: Vec<&str> = page.split("<li><code>").skip(1).map(|s| &s[..s.find('<').unwrap()]).collect();
    assert_eq!(codes.len(), 10, "B's codes, shown by A");
    // The setup state in the store is sealed: the codes waiting to be confirmed are not there in
    // the clear.
    let values = redis.values("setup:flows:*").await;
    assert_eq!(values.len(), 1, "one flow: this session's setup");
    assert!(!values.iter().any(|v| v.windows(codes[0].len()).any(|w| w == codes[0].as_bytes())));
    let (csrf, rd) = (form_field(&page, "csrf").unwrap(), form_field(&page, "rd").unwrap());
    let confirmed = crate::email_codes::post(
        &browser,
        &b,
        "/.portcullis/recovery-codes",
        &[("csrf", &csrf), ("rd", &rd), ("saved", "yes")],
    )
    .await;
    assert_eq!(confirmed.status(), 303);
    assert!(confirmed.headers()["location"].to_str().unwrap().ends_with("/wiki"), "back where the user was going");
    for replica in [&a, &b] {
        assert_eq!(browser.navigate(&replica.url("/wiki")).await.status(), 200);
    }
    // And one of those codes signs in on either replica, once.
    let device = Browser::new();
    let challenge = password(&device, &b, &ALICE, "/").await;
    let form = challenge_form(&device, &challenge).await;
    assert_eq!(post_code(&device, &b, &form, codes[0]).await, 303);
    let replay = Browser::new();
    let challenge = password(&replay, &a, &ALICE, "/").await;
    let form = challenge_form(&replay, &challenge).await;
    assert_eq!(post_code(&replay, &a, &form, codes[0]).await, 401);
}

/// A code mailed by one replica is accepted by the other, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_code_mailed_by_one_replica_works_once_on_the_other() {
    use crate::email_codes::{EMAIL_REQUIRED, code_after, enroll_email, mails, new_mail};
    let Some(redis) = Redis::start("emailed codes across replicas") else { return };
    let upstream = Upstream::start().await;
    let (a, b) = replicas(&upstream, &redis, "mail:", EMAIL_REQUIRED);
    let browser = Browser::new();
    let enroll_url = password(&browser, &a, &ALICE, "/").await;
    let confirmed = enroll_email(&browser, &a, &enroll_url).await;
    assert_eq!(confirmed.status(), 303);
    let codes_page = confirmed.headers()["location"].to_str().unwrap().to_string();
    let html = browser.navigate(&codes_page).await.text().await.unwrap();
    let (csrf, rd) = (form_field(&html, "csrf").unwrap(), form_field(&html, "rd").unwrap());
    let saved = crate::email_codes::post(
        &browser,
        &b,
        "/.portcullis/recovery-codes",
        &[("csrf", &csrf), ("rd", &rd), ("saved", "yes")],
    )
    .await;
    assert_eq!(saved.status(), 303, "codes confirmed on B");

    // A mails the code as the password is accepted; it is typed on B.
    let device = Browser::new();
    let before = mails(&a);
    let challenge = password(&device, &a, &ALICE, "/").await;
    let code = code_after(&new_mail(&a, &before, "Your sign-in code"), "Your code is ");
    let challenge_on_b = challenge.find("/.portcullis/").map(|i| b.url(&challenge[i..])).unwrap();
    let form = challenge_form(&device, &challenge_on_b).await;
    assert_eq!(post_code(&device, &b, &form, &code).await, 303, "A's code, on B");
    // Spent: not again on A.
    let replay = Browser::new();
    let challenge = password(&replay, &a, &ALICE, "/").await;
    let form = challenge_form(&replay, &challenge).await;
    assert_eq!(post_code(&replay, &a, &form, &code).await, 401);
}

/// The challenge form of a half-logged-in browser: its CSRF token and return address.
async fn challenge_form(browser: &Browser, challenge_url: &str) -> (String, String) {
    let page = browser.navigate(challenge_url).await.text().await.unwrap();
    (form_field(&page, "csrf").expect("a challenge form"), form_field(&page, "rd").unwrap())
}

async fn post_code(browser: &Browser, proxy: &Proxy, form: &(String, String), code: &str) -> u16 {
    let sent = crate::email_codes::post(
        browser,
        proxy,
        "/.portcullis/challenge",
        &[("csrf", &form.0), ("rd", &form.1), ("code", code)],
    )
    .await;
    sent.status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_totp_code_raced_to_both_replicas_is_accepted_once_fifty_times() {
    let Some(redis) = Redis::start("the TOTP race across replicas") else { return };
    let upstream = Upstream::start().await;
    // A code is good for one step; each race needs a step nobody used, so each of fifty accounts
    // races once, with the step after the one its enrollment used.
    let accounts: Vec<&'static Account> = (0..50)
        .map(|i| {
            let name: &'static str = Box::leak(format!("racer{i:02}").into_boxed_str());
            let email: &'static str = Box::leak(format!("racer{i:02}@example.com").into_boxed_str());
            &*Box::leak(Box::new(Account { name, password: "racing password 1", email, groups: &[] }))
        })
        .collect();
    let regulation = "[regulation]\nmax_failures = 1000\naddress_max_failures = 100000\n";
    let mut builder = proxy(&upstream.url()).toml(&redis.store_toml("race:")).toml(regulation);
    for account in &accounts {
        builder = builder.account(account);
    }
    let a = builder.start();
    let b = proxy(&upstream.url()).replica_of(&a).toml(&redis.store_toml("race:")).toml(regulation).start();

    let (mut accepted_on_a, mut accepted_on_b) = (0, 0);
    for account in &accounts {
        let setup = Browser::new();
        setup.login(&a, account).await;
        let (secret, _, _) = enroll(&setup, &a, &a.url("/.portcullis/enroll")).await;
        let next = code(&secret, 1);

        let (on_a, on_b) = (Browser::new(), Browser::new());
        let (challenge_a, challenge_b) =
            tokio::join!(password(&on_a, &a, account, "/"), password(&on_b, &b, account, "/"));
        let (form_a, form_b) = tokio::join!(challenge_form(&on_a, &challenge_a), challenge_form(&on_b, &challenge_b));
        let (status_a, status_b) =
            tokio::join!(post_code(&on_a, &a, &form_a, &next), post_code(&on_b, &b, &form_b, &next));
        let mut statuses = [status_a, status_b];
        statuses.sort();
        assert_eq!(statuses, [303, 401], "{}: accepted exactly once (A {status_a}, B {status_b})", account.name);
        if status_a == 303 {
            accepted_on_a += 1;
        } else {
            accepted_on_b += 1;
        }
    }
    eprintln!("fifty races: A won {accepted_on_a}, B won {accepted_on_b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_restart_loses_nothing_and_a_redis_outage_fails_closed_after_the_grace() {
    let Some(mut redis) = Redis::start("replicas through a Redis restart") else { return };
    let upstream = Upstream::start().await;
    let (a, b) = replicas(&upstream, &redis, "outage:", "");
    let browser = Browser::new();
    browser.login(&a, &ALICE).await;
    let (secret, _, _) = enroll(&browser, &a, &a.url("/.portcullis/enroll")).await;

    redis.stop();
    // While Redis is down: the full session goes on for the grace (3 s here) ...
    assert_eq!(browser.navigate(&b.url("/")).await.status(), 200);
    // ... signing in is refused with a page that says why ...
    let newcomer = Browser::new();
    let refused = newcomer.http.get(a.url("/.portcullis/login")).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.text().await.unwrap().contains("cannot reach its data store"));
    // ... and after the grace nothing passes (another replica may have ended the session).
    let closed = within(Duration::from_secs(6), || async { browser.navigate(&b.url("/")).await.status() == 503 }).await;
    eprintln!("with Redis down, B closed after {closed:?}");
    // Each replica's grace runs from the moment it found the store gone, which for A (told by the
    // sign-in refused above) may be a little later than for B.
    let closed = within(Duration::from_secs(6), || async { browser.navigate(&a.url("/")).await.status() == 503 }).await;
    eprintln!("with Redis down, A closed after {closed:?}");
    let seen = upstream.count();
    let closed_page = browser.navigate(&a.url("/")).await;
    assert_eq!(closed_page.status(), 503);
    let html = closed_page.text().await.unwrap();
    assert_eq!(upstream.count(), seen, "nothing reached the upstream");
    // The page that says so keeps its looks: files involve no session and are still served.
    let sheet = html
        .split("href=\"")
        .skip(1)
        .map(|s| &s[..s.find('"').unwrap()])
        .find(|href| href.starts_with("/.portcullis/static/"))
        .unwrap_or_else(|| panic!("a stylesheet: {html}"))
        .to_string();
    assert_eq!(browser.navigate(&a.url(&sheet)).await.status(), 200);

    redis.run();
    // Both reconnect by themselves, and the session and the enrollment survived the restart.
    within(Duration::from_secs(10), || async { browser.navigate(&a.url("/")).await.status() == 200 }).await;
    within(Duration::from_secs(10), || async { browser.navigate(&b.url("/")).await.status() == 200 }).await;
    let device = Browser::new();
    // Sign-ins need Redis itself, which answers "loading" for a moment after its restart while
    // it reads its append-only file back: until then the login page says the store is away.
    within(Duration::from_secs(10), || async { device.navigate(&b.url("/.portcullis/login")).await.status() == 200 })
        .await;
    let challenge = password(&device, &b, &ALICE, "/").await;
    assert!(challenge.contains("/.portcullis/challenge"), "the enrolled factor is asked for: {challenge}");
    let form = challenge_form(&device, &challenge).await;
    assert_eq!(post_code(&device, &b, &form, &code(&secret, 1)).await, 303);
}

/// A session handed from the main host to another host: the code made by A is exchanged on B.
#[tokio::test(flavor = "multi_thread")]
async fn a_handoff_code_made_by_one_replica_is_exchanged_once_on_the_other() {
    let Some(redis) = Redis::start("handoff across replicas") else { return };
    let upstream = Upstream::start().await;
    let hosts = "hosts = [\"wiki.example.test\"]";
    let a = proxy(&upstream.url()).public_host("app.example.test").toml(hosts).toml(&redis.store_toml("hand:")).start();
    let b = proxy(&upstream.url())
        .replica_of(&a)
        .public_host("app.example.test")
        .toml(hosts)
        .toml(&redis.store_toml("hand:"))
        .start();
    // Both names resolve to loopback; the port in each URL picks the replica (cookies ignore
    // ports, so the browser's cookies go to both).
    let browser = Browser::resolving(a.addr, &["app.example.test", "wiki.example.test"]);
    let (main, wiki_a) =
        (format!("http://app.example.test:{}", a.addr.port()), format!("http://wiki.example.test:{}", a.addr.port()));
    let first = browser.navigate(&format!("{wiki_a}/page")).await;
    let handoff = first.headers()["location"].to_str().unwrap().to_string();
    let signed_in = browser.submit_login_at(&main, "alice", ALICE.password, &handoff.replace(&main, "")).await;
    assert_eq!(signed_in.status(), 303);
    let back = signed_in.headers()["location"].to_str().unwrap().to_string();
    let exchange = browser.navigate(&back).await.headers()["location"].to_str().unwrap().to_string();
    assert!(exchange.starts_with(&format!("{wiki_a}/.portcullis/handoff?code=")), "{exchange}");
    // The code A made, and the session A made, taken by B.
    let on_b = exchange.replace(&format!(":{}/", a.addr.port()), &format!(":{}/", b.addr.port()));
    let landed = browser.navigate(&on_b).await;
    assert_eq!(landed.status(), 303, "exchanged on B");
    let wiki_b = format!("http://wiki.example.test:{}", b.addr.port());
    assert_eq!(browser.navigate(&format!("{wiki_b}/page")).await.status(), 200);
    assert_eq!(upstream.seen().last().unwrap().header("x-forwarded-user"), Some("alice"));
    // Once: not again on A.
    assert_eq!(browser.navigate(&exchange).await.status(), 403, "spent on B");
}
