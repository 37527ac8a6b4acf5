//! Growing into replicas and running them for real: `admin migrate` from the embedded store into
//! Redis and back, two replicas behind nginx with the shipped sample, and Redis over TLS with a
//! password.

use std::path::PathBuf;
use std::time::Duration;

use super::{Redis, challenge_form, post_code, within};
use crate::front_proxy::{Addresses, Front};
use crate::harness::{ALICE, Browser, Proxy, free_port, proxy, run_cli};
use crate::mfa::{code, enroll, password};
use crate::upstream::Upstream;

#[tokio::test(flavor = "multi_thread")]
async fn migrate_copies_the_embedded_store_into_redis_and_back() {
    let Some(redis) = Redis::start("admin migrate") else { return };
    let upstream = Upstream::start().await;
    let mut single = proxy(&upstream.url()).start();
    let browser = Browser::new();
    browser.login(&single, &ALICE).await;
    let (secret, _, _) = enroll(&browser, &single, &single.url("/.portcullis/enroll")).await;
    assert!(single.stop().success());

    // The same install, now on Redis: copied over, the enrollment and the session are there.
    let config = single.config_path().to_path_buf();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n{}", redis.store_toml("moved:"))).unwrap();
    let out = run_cli(&config, &["admin", "migrate", "--to", "redis"], "");
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("copied") && said.contains("1 accounts"), "{said}");
    // A second copy into the now full store is refused, naming the fix.
    let again = run_cli(&config, &["admin", "migrate", "--to", "redis"], "");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds"));

    // The embedded store is put aside, so what follows can only come from Redis.
    let data: PathBuf = single.data_dir();
    std::fs::rename(data.join("store"), data.join("store.old")).unwrap();
    let moved = proxy(&upstream.url()).restart_of(&single).toml(&redis.store_toml("moved:")).start();
    assert_eq!(browser.navigate(&moved.url("/")).await.status(), 200, "still signed in after the move");
    let device = Browser::new();
    let challenge = password(&device, &moved, &ALICE, "/").await;
    let form = challenge_form(&device, &challenge).await;
    assert_eq!(post_code(&device, &moved, &form, &code(&secret, 1)).await, 303, "the factor moved along");
    drop(moved);

    // And back into an empty embedded store, which then serves the same session.
    let out = run_cli(&config, &["admin", "migrate", "--to", "sled"], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let back = proxy(&upstream.url()).restart_of(&single).start();
    assert_eq!(browser.navigate(&back.url("/")).await.status(), 200, "still signed in after moving back");
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_nginx_with_the_shipped_sample_a_replica_going_down_keeps_its_users_signed_in() {
    let Some(redis) = Redis::start("nginx in front of two replicas") else { return };
    let upstream = Upstream::start().await;
    let port = free_port();
    let front = |builder: crate::harness::ProxyBuilder| {
        builder
            .public_host("app.example.test")
            .public_port(port)
            .toml("trusted_proxies = [\"127.0.0.1/32\"]")
            .toml(&redis.store_toml("nginx:"))
    };
    let mut a = front(proxy(&upstream.url())).start();
    let mut b = front(proxy(&upstream.url()).replica_of(&a)).start();
    let second = b.addr.to_string();
    let hosts = [("app.example.com", "app.example.test"), ("127.0.0.1:9092", second.as_str())];
    let addresses = Addresses { portcullis: a.addr, app: None, hosts: &hosts };
    let test = "behind_nginx_with_the_shipped_sample_a_replica_going_down_keeps_its_users_signed_in";
    let Some(nginx) = Front::nginx(test, "nginx/replicas.conf", port, &addresses) else { return };

    let base = format!("http://app.example.test:{port}");
    let browser = Browser::resolving(nginx.addr(), &["app.example.test"]);
    let signed_in = browser.submit_login_at(&base, "alice", ALICE.password, "/").await;
    assert_eq!(signed_in.status(), 303);
    for i in 0..5 {
        assert_eq!(browser.navigate(&format!("{base}/before-{i}")).await.status(), 200);
    }
    let served = |replica: &Proxy, path: &str| replica.stderr.all().iter().filter(|l| l.contains(path)).count();
    // Access lines are read from the replicas' stderr as they come.
    within(Duration::from_secs(5), || async { served(&a, "path=/before-") + served(&b, "path=/before-") == 5 }).await;
    // One client, one replica (the sample hashes the client's address).
    let (on_a, on_b) = (served(&a, "path=/before-"), served(&b, "path=/before-"));
    assert!((on_a, on_b) == (5, 0) || (on_a, on_b) == (0, 5), "A {on_a}, B {on_b}");
    let (gone, other) = if on_a == 5 { (&mut a, &b) } else { (&mut b, &a) };
    gone.kill();
    for i in 0..5 {
        let page = browser.navigate(&format!("{base}/after-{i}")).await;
        assert_eq!(page.status(), 200, "still signed in on the other replica (request {i})");
    }
    within(Duration::from_secs(5), || async { served(other, "path=/after-") == 5 }).await;
    assert_eq!(upstream.seen().last().unwrap().header("x-forwarded-user"), Some("alice"));
}

#[tokio::test(flavor = "multi_thread")]
async fn over_tls_with_a_password_and_only_with_the_right_ca_and_password() {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (certified.cert.pem(), certified.signing_key.serialize_pem());
    const PASSWORD: &str = "redis password: never in a log";
    let started = Redis::start_with("Redis over TLS", |port, dir| {
        std::fs::write(dir.join("cert.pem"), &cert).unwrap();
        std::fs::write(dir.join("key.pem"), &key).unwrap();
        let file = |name: &str| dir.join(name).display().to_string();
        // TLS only: the plain port is off.
        ["--port", "0", "--tls-port", &port.to_string(), "--tls-cert-file", &file("cert.pem")]
            .into_iter()
            .chain(["--tls-key-file", &file("key.pem"), "--tls-auth-clients", "no", "--requirepass", PASSWORD])
            .map(str::to_string)
            .collect()
    });
    let Some(redis) = started else { return };
    let upstream = Upstream::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let (ca, password, wrong) =
        (secrets.path().join("ca.pem"), secrets.path().join("redis.secret"), secrets.path().join("wrong.secret"));
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    for (file, text) in [(&password, PASSWORD), (&wrong, "not the password")] {
        std::fs::write(file, text).unwrap();
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let store = |ca: Option<&PathBuf>, password: &PathBuf| {
        let ca = ca.map(|c| format!("ca_file = \"{}\"\n", c.display())).unwrap_or_default();
        format!(
            "[store]\nbackend = \"redis\"\nurl = \"rediss://127.0.0.1:{}/0\"\nkey_prefix = \"tls:\"\npassword_file = \"{}\"\n{ca}",
            redis.port,
            password.display()
        )
    };
    let a = proxy(&upstream.url()).toml(&store(Some(&ca), &password)).start();
    let b = proxy(&upstream.url()).replica_of(&a).toml(&store(Some(&ca), &password)).start();
    let browser = Browser::new();
    browser.login(&a, &ALICE).await;
    assert_eq!(browser.navigate(&b.url("/")).await.status(), 200, "shared over TLS");
    assert!(!a.stderr.all().iter().chain(b.stderr.all().iter()).any(|l| l.contains(PASSWORD)));

    // Without the CA, or with the wrong password, nothing is opened, and the message says why.
    for (ca, password, why) in [(None, &password, "certificate"), (Some(&ca), &wrong, "")] {
        let config = secrets.path().join("refused.toml");
        let text = format!(
            "listen = \"127.0.0.1:0\"\nupstream = \"{}\"\npublic_url = \"http://127.0.0.1:1\"\ndata_dir = \"{}\"\nusers_file = \"{}\"\n{}",
            upstream.url(),
            secrets.path().join("data").display(),
            a.users_file().display(),
            store(ca, password)
        );
        std::fs::write(&config, text).unwrap();
        let out = run_cli(&config, &["admin", "bans"], "");
        let said = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "refused: {said}");
        assert!(said.contains("cannot reach Redis at rediss://127.0.0.1"), "{said}");
        assert!(said.to_lowercase().contains(why), "{said}");
        assert!(!said.contains(PASSWORD));
        eprintln!("{said}");
    }
}
