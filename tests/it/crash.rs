//! The embedded store survives kill -9 (tracker issue 16).
//!
//! Workers walk enrollments, sign-ins with app and recovery codes, and turning 2FA off, for
//! several users at once against the real binary, while the test kills it with SIGKILL at a random
//! moment. Each worker records only what the proxy answered: a write counts as acknowledged when
//! the success response arrived, and a request the kill cut off leaves that change "unsure". After
//! every restart on the same data directory, the checks sign every user in again and demand that
//! what was acknowledged still holds: an enrolled user is asked for a second factor and their app
//! secret is the one set up, an accepted recovery code or app code is refused when replayed, and
//! an acknowledged "2FA off" stays off. Unsure changes may have gone either way; the check finds
//! out which and carries on from there.
//!
//! The kill moments and the workers' choices come from a seeded generator; the seed is printed
//! (set `CRASH_SEED` to run with it again; timing still varies between runs).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;

use crate::harness::{Account, Browser, form_field, proxy};
use crate::mfa::{attr, now};
use crate::upstream::Upstream;

/// Kills, each followed by a restart and the checks.
const KILLS: usize = 20;
/// The random moment of each kill, after the workers start (milliseconds).
const KILL_AFTER_MS: (u64, u64) = (150, 1500);
/// The longest a code may take to reach the proxy and still be inside the step window it was
/// computed for (see [`usable_steps`]).
const MARGIN_SECONDS: i64 = 10;
const STEP_SECONDS: i64 = 30;
/// Recovery codes a set-up spends before its user turns 2FA off (see [`work`]).
const MAX_SPENT: usize = 4;

/// The checks replay codes on purpose, many times over: regulation must not pause the accounts
/// or the shared loopback address for that. Both password hashing slots are used, as the users
/// sign in at once.
const SETTINGS: &str = "[mfa]\nattempts = 100\n[login]\nhash_workers = 2\n\
                        [regulation]\nmax_failures = 1000\naddress_max_failures = 100000\n";

const fn user(name: &'static str) -> Account {
    Account { name, password: "a long enough password", email: "someone@example.com", groups: &[] }
}

static USERS: [Account; 6] = [user("ada"), user("brian"), user("chidi"), user("dora"), user("emeka"), user("fumiko")];

/// A small seedable generator (SplitMix64): enough to pick kill moments and actions.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

/// The steps a code can be computed for now and still fall inside the proxy's window (one step
/// either side of its clock) when it arrives up to [`MARGIN_SECONDS`] later.
fn usable_steps() -> (u64, u64) {
    let step = |t: i64| (t / STEP_SECONDS) as u64;
    (step(now() + MARGIN_SECONDS) - 1, step(now()) + 1)
}

fn app_code(secret: &[u8], step: u64) -> String {
    portcullis::domain::factors::totp::code_at(secret, step as i64 * STEP_SECONDS).unwrap()
}

/// One authenticator app set up for a user, and what the proxy said about its codes.
#[derive(Clone, Debug)]
struct Setup {
    secret: Vec<u8>,
    /// Steps whose codes the proxy accepted (the one that set the app up, and sign-ins).
    accepted_steps: Vec<u64>,
    /// The highest step whose code was sent, answered or not: only later ones are fresh.
    tried_up_to: u64,
    /// Recovery codes the page showed that were never sent.
    fresh_codes: Vec<String>,
    /// Recovery codes the proxy accepted.
    spent_codes: Vec<String>,
}

impl Setup {
    fn fresh_step(&self) -> Option<u64> {
        let (low, high) = usable_steps();
        let step = low.max(self.tried_up_to + 1);
        (step <= high).then_some(step)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    Enroll,
    TurnOff,
}

/// What the user knows of their second factor from the proxy's answers.
#[derive(Debug)]
enum Factor {
    Off,
    On(Setup),
    /// A change (to or from `On` with this app) whose answer the kill cut off.
    Unsure(Setup, Change),
}

#[derive(Clone, Copy, Debug)]
enum Proof {
    App,
    Recovery,
}

struct User {
    account: &'static Account,
    factor: Factor,
    rng: Rng,
    /// Changes the proxy acknowledged, by kind (for the summary).
    acknowledged: BTreeMap<&'static str, usize>,
}

impl User {
    fn setup(&mut self) -> &mut Setup {
        match &mut self.factor {
            Factor::On(setup) => setup,
            other => panic!("{}: expected an app set up, the ledger says {other:?}", self.account.name),
        }
    }

    fn acknowledge(&mut self, what: &'static str) {
        *self.acknowledged.entry(what).or_default() += 1;
    }
}

/// The proxy vanished mid-request (the kill); names the request it cut.
struct Cut(&'static str);

async fn send(request: reqwest::RequestBuilder, stage: &'static str) -> Result<reqwest::Response, Cut> {
    request.send().await.map_err(|_| Cut(stage))
}

fn form_post(browser: &Browser, origin: &str, path: &str, fields: &[(&str, &str)]) -> reqwest::RequestBuilder {
    browser.http.post(format!("{origin}{path}")).header("origin", origin).form(fields)
}

fn location(response: &reqwest::Response) -> String {
    response.headers()["location"].to_str().unwrap().to_string()
}

async fn page(browser: &Browser, url: &str, stage: &'static str) -> Result<String, Cut> {
    let response = send(browser.navigate_request(url), stage).await?;
    assert_eq!(response.status(), 200, "{url}");
    response.text().await.map_err(|_| Cut(stage))
}

/// Signs in with the password; returns where the proxy sends the browser next.
async fn password(browser: &Browser, origin: &str, account: &Account) -> Result<String, Cut> {
    let login = page(browser, &format!("{origin}/.portcullis/login"), "login page").await?;
    let csrf = form_field(&login, "csrf").expect("a csrf field on the login page");
    let fields = [("username", account.name), ("password", account.password), ("csrf", &csrf), ("rd", "/")];
    let response = send(form_post(browser, origin, "/.portcullis/login", &fields), "password").await?;
    assert_eq!(response.status(), 303, "{}: the password was refused", account.name);
    Ok(location(&response))
}

/// The challenge form's csrf and rd, for posting a code.
async fn challenge_form(browser: &Browser, url: &str) -> Result<(String, String), Cut> {
    let html = page(browser, url, "challenge page").await?;
    Ok((form_field(&html, "csrf").expect("a challenge form"), form_field(&html, "rd").unwrap()))
}

async fn post_code(
    browser: &Browser,
    origin: &str,
    (csrf, rd): &(String, String),
    code: &str,
    stage: &'static str,
) -> Result<reqwest::Response, Cut> {
    let fields = [("csrf", csrf.as_str()), ("rd", rd.as_str()), ("code", code)];
    send(form_post(browser, origin, "/.portcullis/challenge", &fields), stage).await
}

/// Password, then an app code or a recovery code; returns the browser, now fully signed in.
async fn sign_in(user: &mut User, origin: &str, proof: Proof) -> Result<Browser, Cut> {
    let (browser, name) = (Browser::new(), user.account.name);
    let next = password(&browser, origin, user.account).await?;
    assert!(next.contains("/.portcullis/challenge"), "{name}: has an app (acknowledged) yet was sent to {next}");
    let form = challenge_form(&browser, &next).await?;
    let setup = user.setup();
    // Marked as tried before it is sent: if the kill cuts the answer off, the proxy may or may not
    // have spent it, so it is neither fresh nor accepted.
    let (code, stage, step) = match proof {
        Proof::App => {
            let step = setup.fresh_step().expect("picked only when a step is fresh");
            setup.tried_up_to = step;
            (app_code(&setup.secret, step), "app code", step)
        }
        Proof::Recovery => (setup.fresh_codes.pop().expect("picked only with a fresh code"), "recovery code", 0),
    };
    let answer = post_code(&browser, origin, &form, &code, stage).await?;
    let status = answer.status();
    let body = if status == 303 { String::new() } else { answer.text().await.unwrap_or_default() };
    assert_eq!(status, 303, "{name}: a fresh {proof:?} code ({code}, step {step}) was refused:\n{body}");
    let setup = user.setup();
    match proof {
        Proof::App => setup.accepted_steps.push(step),
        Proof::Recovery => setup.spent_codes.push(code),
    }
    user.acknowledge(stage);
    Ok(browser)
}

/// Signs in with the password, sets up an app from the secret the page shows, and reads the
/// recovery codes it comes with.
async fn enroll(user: &mut User, origin: &str) -> Result<(), Cut> {
    let (browser, name) = (Browser::new(), user.account.name);
    let next = password(&browser, origin, user.account).await?;
    assert_eq!(next, format!("{origin}/"), "{name}: has no second factor (acknowledged) yet was sent to {next}");
    let html = page(&browser, &format!("{origin}/.portcullis/enroll"), "enroll page").await?;
    let secret = totp_rs::Secret::try_from_base32(attr(&html, "data-secret=\"")).unwrap().as_ref().to_vec();
    let (csrf, rd) = (form_field(&html, "csrf").unwrap(), form_field(&html, "rd").unwrap());
    let step = usable_steps().0;
    let setup = Setup { secret, accepted_steps: vec![], tried_up_to: step, fresh_codes: vec![], spent_codes: vec![] };
    let code = app_code(&setup.secret, step);
    user.factor = Factor::Unsure(setup, Change::Enroll);
    let fields = [("csrf", csrf.as_str()), ("rd", rd.as_str()), ("code", code.as_str())];
    let done = send(form_post(&browser, origin, "/.portcullis/enroll", &fields), "enroll code").await?;
    assert_eq!(done.status(), 303, "{name}: the code setting up the app was refused");
    let codes_url = location(&done);
    assert!(codes_url.contains("/.portcullis/recovery-codes"), "{name}: set up, then sent to {codes_url}");
    let Factor::Unsure(mut setup, _) = std::mem::replace(&mut user.factor, Factor::Off) else { unreachable!() };
    setup.accepted_steps.push(step);
    user.factor = Factor::On(setup);
    user.acknowledge("enroll code");

    let html = page(&browser, &codes_url, "recovery codes page").await?;
    let codes: Vec<String> = html.split("<li><code>").skip(1).map(|s| s[..s.find('<').unwrap()].to_string()).collect();
    assert_eq!(codes.len(), 10, "{name}: ten recovery codes");
    user.setup().fresh_codes = codes;
    let (csrf, rd) = (form_field(&html, "csrf").unwrap(), form_field(&html, "rd").unwrap());
    let fields = [("csrf", csrf.as_str()), ("rd", rd.as_str()), ("saved", "yes")];
    let saved = send(form_post(&browser, origin, "/.portcullis/recovery-codes", &fields), "codes saved").await?;
    assert_eq!(saved.status(), 303, "{name}: confirming the codes were saved");
    Ok(())
}

/// Signs in with a second factor (which makes it fresh), then turns two-step verification off.
async fn turn_off(user: &mut User, origin: &str, proof: Proof) -> Result<(), Cut> {
    let browser = sign_in(user, origin, proof).await?;
    let html = page(&browser, &format!("{origin}/.portcullis/account"), "account page").await?;
    let csrf = form_field(&html, "csrf").expect("a csrf field on the account page");
    let Factor::On(setup) = std::mem::replace(&mut user.factor, Factor::Off) else { unreachable!() };
    user.factor = Factor::Unsure(setup, Change::TurnOff);
    let removed =
        send(form_post(&browser, origin, "/.portcullis/account/remove-totp", &[("csrf", &csrf)]), "turn off").await?;
    assert_eq!(removed.status(), 303, "{}: turning 2FA off was refused", user.account.name);
    assert!(location(&removed).contains("done=removed"), "{}: {}", user.account.name, location(&removed));
    user.factor = Factor::Off;
    user.acknowledge("turn off");
    Ok(())
}

/// Walks flows for one user until the kill cuts one off; returns the ledger and the request cut
/// (None when the user had nothing fresh to sign in with and stopped early).
async fn work(mut user: User, origin: String) -> (User, Option<&'static str>) {
    loop {
        let walked = if let Factor::On(setup) = &user.factor {
            let mut proofs = Vec::new();
            if setup.fresh_step().is_some() {
                proofs.push(Proof::App);
            }
            if !setup.fresh_codes.is_empty() {
                proofs.push(Proof::Recovery);
            }
            if proofs.is_empty() {
                // No fresh app step until the clock moves on, and no recovery code known.
                return (user, None);
            }
            let left = usize::from(setup.fresh_step().is_some()) + setup.fresh_codes.len();
            let proof = proofs[user.rng.below(proofs.len() as u64) as usize];
            // 2FA goes off (to be set up again, with everything fresh) at random, with the last
            // proof left (else the user would have none until the clock moves on), and once a few
            // recovery codes are spent: the checks replay every one after every restart, and 100
            // wrong codes in a row with no right one between lock the account's second factor.
            if left == 1 || setup.spent_codes.len() >= MAX_SPENT || user.rng.below(4) == 0 {
                turn_off(&mut user, &origin, proof).await
            } else {
                sign_in(&mut user, &origin, proof).await.map(drop)
            }
        } else {
            enroll(&mut user, &origin).await
        };
        if let Err(Cut(stage)) = walked {
            return (user, Some(stage));
        }
    }
}

/// The checks run with the proxy up: a request cut off there is a failure.
fn lost<T>(Cut(stage): Cut) -> T {
    panic!("the restarted proxy stopped answering the checks ({stage})")
}

/// After a restart: whatever the proxy acknowledged before the kill still holds. Resolves an
/// unsure change to what the restarted proxy shows; returns it, with whether it took effect.
async fn check(mut user: User, origin: String) -> (User, Option<(Change, bool)>) {
    let (browser, name) = (Browser::new(), user.account.name);
    let next = password(&browser, &origin, user.account).await.unwrap_or_else(lost);
    let asked = next.contains("/.portcullis/challenge");
    let mut resolved = None;
    user.factor = match std::mem::replace(&mut user.factor, Factor::Off) {
        Factor::Off => {
            assert!(
                !asked,
                "{name}: turning 2FA off was acknowledged before the kill, yet after the restart the proxy asks for a second factor"
            );
            Factor::Off
        }
        Factor::On(setup) => {
            assert!(
                asked,
                "{name}: the app set-up was acknowledged before the kill, yet after the restart the proxy does not ask for a second factor (sent to {next})"
            );
            Factor::On(setup)
        }
        Factor::Unsure(setup, change) => {
            resolved = Some((change, asked == (change == Change::Enroll)));
            if asked { Factor::On(setup) } else { Factor::Off }
        }
    };
    let Factor::On(setup) = &mut user.factor else { return (user, resolved) };
    let form = challenge_form(&browser, &next).await.unwrap_or_else(lost);
    let submit = async |code: &str| {
        let answer = post_code(&browser, &origin, &form, code, "check").await.unwrap_or_else(lost);
        (answer.status(), answer.text().await.unwrap_or_default())
    };
    // Replays first: a fresh code accepted before them would move the account's last step past
    // them, and a step the crash had forgotten would then be refused anyway.
    for code in &setup.spent_codes {
        let (status, body) = submit(code).await;
        assert_ne!(
            status, 303,
            "{name}: recovery code {code} was accepted before the kill and works again after the restart"
        );
        assert_eq!(status, 401, "{name}: replaying recovery code {code}: not refused as a wrong code:\n{body}");
    }
    // Codes of steps outside the window are refused whatever the store remembers, so only those
    // inside are worth replaying. One refused as "already used" also shows the secret is the one
    // set up: a code from any other secret is "not right".
    const USED: &str = "That code was already used";
    let (low, high) = usable_steps();
    let mut replayed: Vec<u64> = setup.accepted_steps.iter().copied().filter(|s| (low..=high).contains(s)).collect();
    replayed.sort_unstable();
    replayed.dedup();
    for &step in &replayed {
        let (status, body) = submit(&app_code(&setup.secret, step)).await;
        assert_ne!(
            status, 303,
            "{name}: the app code of step {step} was accepted before the kill and again after the restart"
        );
        assert!(
            body.contains(USED),
            "{name}: the app code of step {step} is refused, but not as already used: the secret set up is gone:\n{body}"
        );
    }
    if replayed.is_empty() {
        // Nothing accepted is still inside the window: sign in with the oldest step that is.
        // Never sent before, it must work; sent but its answer cut off, it may have been spent.
        let (status, body) = submit(&app_code(&setup.secret, low)).await;
        let fresh = low > setup.tried_up_to;
        let ok = status == 303 || (!fresh && status == 401 && body.contains(USED));
        assert!(
            ok,
            "{name}: the app code of step {low} (fresh: {fresh}) does not work after the restart: the secret set up is gone ({status}):\n{body}"
        );
        if status == 303 {
            setup.accepted_steps.push(low);
            setup.tried_up_to = setup.tried_up_to.max(low);
        }
    }
    (user, resolved)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_keeps_what_was_acknowledged_across_kill_9() {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64);
    println!("crash test seed: {seed} (run again with CRASH_SEED={seed})");
    let started = std::time::Instant::now();
    let mut rng = Rng(seed);
    let upstream = Upstream::start().await;
    let mut builder = proxy(&upstream.url()).toml(SETTINGS);
    for account in &USERS {
        builder = builder.account(account);
    }
    let mut running = builder.start();
    let mut origin = running.origin();
    let mut users: Vec<User> = USERS
        .iter()
        .enumerate()
        .map(|(i, account)| User {
            account,
            factor: Factor::Off,
            rng: Rng(seed ^ (i as u64 + 1).wrapping_mul(0x5851_f42d_4c95_7f2d)),
            acknowledged: BTreeMap::new(),
        })
        .collect();
    let (mut mid_flow, mut cut, mut unsure) = (0, BTreeMap::<&str, usize>::new(), BTreeMap::new());

    for kill in 1..=KILLS {
        let workers: Vec<_> = users.drain(..).map(|user| tokio::spawn(work(user, origin.clone()))).collect();
        let after = Duration::from_millis(KILL_AFTER_MS.0 + rng.below(KILL_AFTER_MS.1 - KILL_AFTER_MS.0));
        tokio::time::sleep(after).await;
        running.kill();
        let mut stages = Vec::new();
        for worker in workers {
            let (user, stage) = worker.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            stages.extend(stage);
            users.push(user);
        }
        mid_flow += usize::from(!stages.is_empty());
        for stage in &stages {
            *cut.entry(*stage).or_default() += 1;
        }

        running = proxy(&upstream.url()).toml(SETTINGS).data_of(&running).start();
        origin = running.origin();
        let checked = join_all(users.drain(..).map(|user| tokio::spawn(check(user, origin.clone())))).await;
        for result in checked {
            let (user, resolved) = result.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            if let Some(outcome) = resolved {
                *unsure.entry(outcome).or_insert(0) += 1;
            }
            users.push(user);
        }
        println!("kill {kill}: after {after:?}, cutting off {stages:?}; restarted and checked");
    }

    let mut acknowledged = BTreeMap::<&str, usize>::new();
    for (what, n) in users.iter().flat_map(|u| u.acknowledged.iter()) {
        *acknowledged.entry(what).or_default() += n;
    }
    println!("acknowledged: {acknowledged:?}");
    println!("requests cut off by a kill: {cut:?}");
    println!("unsure changes (change, took effect): {unsure:?}");
    println!("{KILLS} kills in {:?}", started.elapsed());
    // The test is only worth something if the kills land while flows are under way.
    assert!(mid_flow * 2 >= KILLS, "only {mid_flow} of {KILLS} kills cut a flow off");
}
