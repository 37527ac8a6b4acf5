//! Sign-ins that take two requests, begun on one replica and finished on the other (behind a
//! round-robin balancer, nothing keeps a browser on one): a passkey's ceremony, and the round
//! trip through an OpenID Connect provider. Each is taken once, on whichever replica the browser
//! comes back to.

use std::time::Duration;

use super::{Redis, within};
use crate::harness::{ALICE, Browser, proxy};
use crate::oidc::{at_provider, on_a_chosen_port, provider_toml};
use crate::passkeys::{PASSWORDLESS, login_page, passkey_answer, register, submit};
use crate::security_keys::{HOST, browser, key};
use crate::upstream::Upstream;

/// A passkey that signs in by itself: the login page (and its ceremony) from A, the answer to B.
#[tokio::test(flavor = "multi_thread")]
async fn a_passkey_sign_in_started_on_one_replica_finishes_once_on_the_other() {
    let Some(redis) = Redis::start("passkeys across replicas") else { return };
    let upstream = Upstream::start().await;
    let a = proxy(&upstream.url()).public_host(HOST).toml(PASSWORDLESS).toml(&redis.store_toml("keys:")).start();
    // One public URL for both (the balancer's): A's.
    let b = proxy(&upstream.url())
        .replica_of(&a)
        .public_host(HOST)
        .public_port(a.addr.port())
        .toml(PASSWORDLESS)
        .toml(&redis.store_toml("keys:"))
        .start();
    let (base_a, base_b) = (format!("http://{HOST}:{}", a.addr.port()), format!("http://{HOST}:{}", b.addr.port()));
    let mut key = key();
    let owner = browser(&a);
    assert_eq!(owner.submit_login_at(&base_a, ALICE.name, ALICE.password, "/").await.status(), 303);
    let registered = register(&owner, &base_a, &mut key).await;

    let phone = browser(&a);
    let html = login_page(&phone, &base_a, "/").await;
    let credential = passkey_answer(&mut key, &base_a, &html, &registered, &registered.user_handle);
    // A writes the ceremony in the background while the person reaches for the key: wait until
    // it is in the shared store (under the hash of the browser's login-form token), as a person
    // would. Posting before then would be answered "expired" with a fresh page and a new
    // ceremony, which a browser would use instead of this one.
    let slot: String = {
        use sha2::Digest;
        let token = crate::harness::form_field(&html, "csrf").unwrap();
        portcullis::base::text::hex(&sha2::Sha256::digest(token.as_bytes()))
    };
    // One connection for the whole wait, not one per look.
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/0", redis.port)).unwrap();
    let connection = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("keys:*sign-in:{slot}");
    within(Duration::from_secs(5), || {
        let (mut connection, pattern) = (connection.clone(), pattern.clone());
        async move {
            let found: Vec<Vec<u8>> = redis::cmd("KEYS").arg(&pattern).query_async(&mut connection).await.unwrap();
            !found.is_empty()
        }
    })
    .await;
    let answer = submit(&phone, &base_b, &base_a, &html, &credential).await;
    assert_eq!(answer.status(), 303, "B's answer to the passkey: {}", answer.text().await.unwrap());
    assert_eq!(phone.navigate(&format!("{base_b}/")).await.status(), 200, "signed in by B");
    let replayed = submit(&phone, &base_a, &base_a, &html, &credential).await;
    assert_eq!(replayed.status(), 401, "the ceremony was taken by B");
    let text = replayed.text().await.unwrap();
    assert!(text.contains("took too long"), "refused for the ceremony, not the key: {text}");
}

/// Back from the provider to the other replica: the sign-in A began (its state, nonce and PKCE
/// verifier) is in the shared store before the browser is sent off, so B finishes it, once. With
/// the store stalled, A sends nobody to a sign-in it could not finish.
#[tokio::test(flavor = "multi_thread")]
async fn an_openid_sign_in_started_on_one_replica_finishes_once_on_the_other() {
    let Some(redis) = Redis::start("OpenID Connect across replicas") else { return };
    let upstream = Upstream::start().await;
    // The provider knows one callback, at the public URL: A's port stands for the balancer's.
    let test = "an_openid_sign_in_started_on_one_replica_finishes_once_on_the_other";
    let store = redis.store_toml("oidc:");
    let chosen = on_a_chosen_port(test, "127.0.0.1", |port, provider| {
        proxy(&upstream.url()).port(port).toml(&provider_toml(provider, "")).toml(&store)
    });
    let Some((a, provider, port)) = chosen else { return };
    let oidc = provider_toml(&provider, "");
    let b = proxy(&upstream.url()).replica_of(&a).public_port(port).toml(&oidc).toml(&store).start();
    let linked = a.cli(&["user", "link", "alice", "--oidc", "test", "--subject", "carol"], "");
    assert!(linked.status.success(), "{}", String::from_utf8_lossy(&linked.stderr));

    let browser = Browser::new();
    let callback = at_provider(&browser, &a, "carol", "/wiki").await;
    let on_b = callback.replace(&format!(":{port}/"), &format!(":{}/", b.addr.port()));
    assert_ne!(on_b, callback);
    // The browser's cookies as they are now, its sign-in's nonce among them (used up at B).
    let cookies = browser.cookie_header(&a.url("/")).unwrap();
    let back = browser.navigate(&on_b).await;
    assert_eq!(back.status(), 303, "B finished A's sign-in: {}", back.text().await.unwrap());
    assert_eq!(back.headers()["location"], a.url("/wiki").as_str(), "where it was going");
    assert_eq!(browser.navigate(&b.url("/wiki")).await.status(), 200, "signed in, on B");
    assert_eq!(upstream.seen().last().unwrap().header("x-forwarded-user"), Some("alice"));
    // Taken on B: the same answer from the provider, with the nonce cookie it was made for, does
    // nothing on A.
    let again = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let replayed = again.get(&callback).header("cookie", &cookies).send().await.unwrap();
    assert_eq!(replayed.status(), 400);
    assert!(replayed.text().await.unwrap().contains("Start signing in again"));

    // The store stalls: the start says so, and nobody is sent to the provider.
    redis.pause(true);
    let start = Browser::new().navigate(&a.url("/.portcullis/login/oidc/test?rd=%2F")).await;
    redis.pause(false);
    assert_eq!(start.status(), 503);
    assert!(start.headers().get("location").is_none());
    assert!(start.text().await.unwrap().contains("cannot reach its data store"));
}
