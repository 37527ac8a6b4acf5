//! Passwords checked by a real directory: Debian's OpenLDAP `slapd`, started by the test on a
//! loopback port with a generated configuration (the memberof overlay on, anonymous reads off)
//! and a few entries added over LDAP as its root. The proxy finds users as its service account
//! and checks passwords by binding as them; everything after the password is the account's.

use std::process::Command;

use ldap3::{LdapConnAsync, LdapConnSettings};

use crate::front_proxy::{Front, present};
use crate::harness::{ALICE, Browser, Proxy, form_field, free_port, proxy};
use crate::mfa::{code, enroll, submit_code};
use crate::upstream::Upstream;

const SLAPD: &str = "/usr/sbin/slapd";
const SUFFIX: &str = "dc=example,dc=test";
const ROOT_PASSWORD: &str = "root secret";
const SERVICE_PASSWORD: &str = "service secret: never in a log";
const CAROL_PASSWORD: &str = "carol's directory password";
const DAVE_PASSWORD: &str = "dave's directory password";

/// A running slapd with its entries.
struct Slapd {
    server: Front,
    /// The ldaps:// port, when started with a certificate.
    tls_port: Option<u16>,
}

impl Slapd {
    async fn start(test: &str) -> Option<Self> {
        Self::start_with(test, None).await
    }

    /// With `tls` (a certificate and its key, PEM): StartTLS on the ldap:// port, and ldaps://.
    async fn start_with(test: &str, tls: Option<(String, String)>) -> Option<Self> {
        // Debian puts it in /usr/sbin, which a user's PATH may not have.
        if !std::path::Path::new(SLAPD).exists() && !present("slapd", test) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        let tls_lines = match &tls {
            Some((cert, key)) => {
                std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
                std::fs::write(dir.path().join("key.pem"), key).unwrap();
                format!(
                    "TLSCertificateFile {d}/cert.pem\nTLSCertificateKeyFile {d}/key.pem\n",
                    d = dir.path().display()
                )
            }
            None => String::new(),
        };
        let conf = format!(
            "{tls_lines}include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\ninclude /etc/ldap/schema/nis.schema\n\
             modulepath /usr/lib/ldap\nmoduleload back_mdb\nmoduleload memberof\n\
             pidfile {dir}/slapd.pid\n\
             database mdb\nmaxsize 10485760\nsuffix \"{SUFFIX}\"\nrootdn \"cn=root,{SUFFIX}\"\nrootpw \"{ROOT_PASSWORD}\"\n\
             directory {dir}/db\noverlay memberof\n\
             access to attrs=userPassword by self =xw by anonymous auth by * none\n\
             access to * by dn.exact=\"cn=portcullis,ou=services,{SUFFIX}\" read by self read by * none\n",
            dir = dir.path().display()
        );
        let path = dir.path().join("slapd.conf");
        std::fs::write(&path, conf).unwrap();
        let port = free_port();
        let tls_port = tls.as_ref().map(|_| free_port());
        let listeners = match tls_port {
            Some(tls_port) => format!("ldap://127.0.0.1:{port}/ ldaps://127.0.0.1:{tls_port}/"),
            None => format!("ldap://127.0.0.1:{port}/"),
        };
        let program = if std::path::Path::new(SLAPD).exists() { SLAPD } else { "slapd" };
        let mut command = Command::new(program);
        // -d keeps it in the foreground; level 256 logs connections, and "slapd starting".
        command.arg("-f").arg(&path).arg("-h").arg(listeners).args(["-d", "256"]);
        let server = Front::run(command, "slapd starting", port, dir);
        let slapd = Self { server, tls_port };
        slapd.add_entries().await;
        Some(slapd)
    }

    fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.server.addr().port())
    }

    /// The tree, added over LDAP as the root (so the memberof overlay maintains `memberOf`).
    async fn add_entries(&self) {
        // slapd says "starting" once its socket is bound, a moment before it listens: the first
        // connection is retried until it is accepted (a readiness check, with a deadline).
        let deadline = std::time::Instant::now() + crate::harness::PATIENCE;
        let (conn, mut ldap) = loop {
            match LdapConnAsync::with_settings(LdapConnSettings::new(), &self.url()).await {
                Ok(connected) => break connected,
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "slapd does not accept connections: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        };
        ldap3::drive!(conn);
        ldap.simple_bind(&format!("cn=root,{SUFFIX}"), ROOT_PASSWORD).await.unwrap().success().unwrap();
        let set = |pairs: &[(&'static str, &[&'static str])]| {
            pairs
                .iter()
                .map(|(k, v)| {
                    (k.to_string(), v.iter().map(|s| s.to_string()).collect::<std::collections::HashSet<_>>())
                })
                .collect::<Vec<_>>()
        };
        let person = |uid: &'static str, cn: &'static str, mail: &'static str, password: &'static str| {
            set(&[
                ("objectClass", &["inetOrgPerson"]),
                ("uid", &[uid]),
                ("cn", &[cn]),
                ("sn", &["Example"]),
                ("mail", &[mail]),
                ("userPassword", &[password]),
            ])
        };
        let entries = vec![
            (
                SUFFIX.to_string(),
                set(&[("objectClass", &["dcObject", "organization"]), ("o", &["Example"]), ("dc", &["example"])]),
            ),
            (format!("ou=people,{SUFFIX}"), set(&[("objectClass", &["organizationalUnit"]), ("ou", &["people"])])),
            (format!("ou=services,{SUFFIX}"), set(&[("objectClass", &["organizationalUnit"]), ("ou", &["services"])])),
            (format!("ou=groups,{SUFFIX}"), set(&[("objectClass", &["organizationalUnit"]), ("ou", &["groups"])])),
            (
                format!("cn=portcullis,ou=services,{SUFFIX}"),
                set(&[
                    ("objectClass", &["organizationalRole", "simpleSecurityObject"]),
                    ("cn", &["portcullis"]),
                    ("userPassword", &[SERVICE_PASSWORD]),
                ]),
            ),
            (
                format!("uid=carol,ou=people,{SUFFIX}"),
                person("carol", "Carol Example", "carol@example.test", CAROL_PASSWORD),
            ),
            (
                format!("uid=dave,ou=people,{SUFFIX}"),
                person("dave", "Dave Example", "dave@example.test", DAVE_PASSWORD),
            ),
        ];
        for (dn, attrs) in entries {
            ldap.add(&dn, attrs).await.unwrap().success().unwrap();
        }
        let member = format!("uid=carol,ou=people,{SUFFIX}");
        let group = vec![
            ("objectClass".to_string(), ["groupOfNames".to_string()].into_iter().collect()),
            ("cn".to_string(), ["wiki-admins".to_string()].into_iter().collect()),
            ("member".to_string(), [member].into_iter().collect()),
        ];
        ldap.add(&format!("cn=wiki-admins,ou=groups,{SUFFIX}"), group).await.unwrap().success().unwrap();
        ldap.unbind().await.unwrap();
    }

    /// A change made in the directory as its root: Carol leaves the group, Dave's entry goes.
    async fn carol_leaves_and_dave_is_removed(&self) {
        let (conn, mut ldap) = LdapConnAsync::with_settings(LdapConnSettings::new(), &self.url()).await.unwrap();
        ldap3::drive!(conn);
        ldap.simple_bind(&format!("cn=root,{SUFFIX}"), ROOT_PASSWORD).await.unwrap().success().unwrap();
        let carol: std::collections::HashSet<String> = [format!("uid=carol,ou=people,{SUFFIX}")].into_iter().collect();
        // groupOfNames needs a member: Dave stands in, then goes.
        let dave: std::collections::HashSet<String> = [format!("uid=dave,ou=people,{SUFFIX}")].into_iter().collect();
        let group = format!("cn=wiki-admins,ou=groups,{SUFFIX}");
        ldap.modify(&group, vec![ldap3::Mod::Add("member".to_string(), dave)]).await.unwrap().success().unwrap();
        ldap.modify(&group, vec![ldap3::Mod::Delete("member".to_string(), carol)]).await.unwrap().success().unwrap();
        ldap.delete(&format!("uid=dave,ou=people,{SUFFIX}")).await.unwrap().success().unwrap();
        ldap.unbind().await.unwrap();
    }

    /// `[login.ldap]` for this server; `extra` adds lines (the group source).
    fn config(&self, secrets: &std::path::Path, extra: &str) -> String {
        self.config_at(&self.url(), secrets, extra)
    }

    fn config_at(&self, url: &str, secrets: &std::path::Path, extra: &str) -> String {
        let password = secrets.join("ldap.secret");
        std::fs::write(&password, SERVICE_PASSWORD).unwrap();
        std::fs::set_permissions(&password, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        format!(
            "[login.ldap]\nurl = \"{}\"\nbind_dn = \"cn=portcullis,ou=services,{SUFFIX}\"\nbind_password_file = \"{}\"\n\
             base_dn = \"ou=people,{SUFFIX}\"\nuser_filter = \"(&(objectClass=inetOrgPerson)(uid={{username}}))\"\n{extra}",
            url,
            password.display()
        )
    }
}

async fn sign_in(browser: &Browser, proxy: &Proxy, name: &str, password: &str) -> reqwest::Response {
    browser.submit_login(proxy, name, password, "/wiki").await
}

#[tokio::test(flavor = "multi_thread")]
async fn directory_passwords_sign_in_with_their_names_addresses_and_groups_and_2fa_stays_per_account() {
    let Some(slapd) = Slapd::start("ldap directory passwords").await else { return };
    let upstream = Upstream::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let proxy = proxy(&upstream.url()).toml(&slapd.config(secrets.path(), "")).start();

    // Carol is only in the directory: her entry says who she is, memberOf her groups.
    let carol = Browser::new();
    let response = sign_in(&carol, &proxy, "carol", CAROL_PASSWORD).await;
    assert_eq!(response.status(), 303, "{}", response.text().await.unwrap());
    assert_eq!(carol.navigate(&proxy.url("/wiki")).await.status(), 200);
    let seen = upstream.seen().pop().unwrap();
    assert_eq!(seen.header("x-forwarded-user"), Some("carol"));
    assert_eq!(seen.header("x-forwarded-email"), Some("carol@example.test"));
    assert_eq!(seen.header("x-forwarded-groups"), Some("wiki-admins"));
    // Her password is the directory's: the account page says so, and there is no form for it.
    let account = carol.navigate(&proxy.url("/.portcullis/account")).await.text().await.unwrap();
    assert!(account.contains("no password here"), "{account}");
    assert_eq!(carol.navigate(&proxy.url("/.portcullis/account/password")).await.status(), 403);

    // 2FA belongs to her account: set up an app, and the next sign-in asks for it.
    let (secret, _, _) = enroll(&carol, &proxy, &proxy.url("/.portcullis/enroll?rd=%2F.portcullis%2Faccount")).await;
    let laptop = Browser::new();
    let response = sign_in(&laptop, &proxy, "carol", CAROL_PASSWORD).await;
    let challenge = response.headers()["location"].to_str().unwrap().to_string();
    assert!(challenge.contains("/.portcullis/challenge"), "{challenge}");
    assert_eq!(laptop.navigate(&proxy.url("/wiki")).await.status(), 303, "half signed in reaches nothing");
    assert_eq!(submit_code(&laptop, &proxy, &challenge, &code(&secret, 1)).await.status(), 303);
    assert_eq!(laptop.navigate(&proxy.url("/wiki")).await.status(), 200);

    // Dave is in no group; the local user Alice still signs in with the users file.
    let dave = Browser::new();
    assert_eq!(sign_in(&dave, &proxy, "dave", DAVE_PASSWORD).await.status(), 303);
    assert_eq!(dave.navigate(&proxy.url("/wiki")).await.status(), 200);
    assert_eq!(upstream.seen().pop().unwrap().header("x-forwarded-groups"), Some(""));
    let alice = Browser::new();
    alice.login(&proxy, &ALICE).await;

    let log = proxy.stderr.all().join("\n");
    for secret in [SERVICE_PASSWORD, CAROL_PASSWORD, DAVE_PASSWORD] {
        assert!(!log.contains(secret), "a password reached the log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_unknown_and_injected_names_are_refused_and_regulated_as_local_passwords_are() {
    let Some(slapd) = Slapd::start("ldap refusals").await else { return };
    let upstream = Upstream::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let proxy = proxy(&upstream.url()).toml(&slapd.config(secrets.path(), "")).start();
    let browser = Browser::new();
    for (name, password) in
        [("carol", "wrong"), ("nobody", "wrong"), ("*", CAROL_PASSWORD), ("carol)(uid=*", CAROL_PASSWORD)]
    {
        let response = sign_in(&browser, &proxy, name, password).await;
        let status = response.status();
        assert!(status == 401 || status == 400, "{name}: {status}");
        assert!(!response.headers().contains_key("location"), "{name} signed in");
    }
    // An empty password is not even asked about (an unauthenticated bind would "succeed").
    let csrf = browser.login_form(&proxy, "").await;
    let empty = browser
        .http
        .post(proxy.url("/.portcullis/login"))
        .header("origin", proxy.origin())
        .form(&[("username", "carol"), ("password", ""), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 400);
    // Carol's account is paused after five wrong passwords, like a local one.
    let mut last = 0;
    for _ in 0..6 {
        last = sign_in(&browser, &proxy, "carol", "still wrong").await.status().as_u16();
    }
    assert_eq!(last, 429, "paused as a local account would be");
    assert_eq!(sign_in(&Browser::new(), &proxy, "carol", CAROL_PASSWORD).await.status(), 429, "even with her password");
    assert_eq!(upstream.count(), 0, "nothing reached the application");
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_by_search_and_a_directory_that_is_down_fails_closed_with_a_clear_page() {
    let Some(slapd) = Slapd::start("ldap groups and outage").await else { return };
    let upstream = Upstream::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let search = format!("groups_from = \"search\"\ngroup_base_dn = \"ou=groups,{SUFFIX}\"\ntimeout = \"2s\"\n");
    let proxy = proxy(&upstream.url()).toml(&slapd.config(secrets.path(), &search)).start();
    let carol = Browser::new();
    assert_eq!(sign_in(&carol, &proxy, "carol", CAROL_PASSWORD).await.status(), 303);
    assert_eq!(carol.navigate(&proxy.url("/wiki")).await.status(), 200);
    assert_eq!(upstream.seen().pop().unwrap().header("x-forwarded-groups"), Some("wiki-admins"));

    // The directory goes away: a clear page, nothing counted, nothing forwarded.
    drop(slapd);
    let before = upstream.count();
    let dave = Browser::new();
    let down = sign_in(&dave, &proxy, "dave", DAVE_PASSWORD).await;
    assert_eq!(down.status(), 503);
    assert!(down.headers().contains_key("retry-after"));
    let page = down.text().await.unwrap();
    assert!(page.contains("cannot be reached") && form_field(&page, "csrf").is_some(), "{page}");
    assert_eq!(dave.navigate(&proxy.url("/wiki")).await.status(), 303);
    assert_eq!(upstream.count(), before);
    // Local accounts are not held up by it.
    Browser::new().login(&proxy, &ALICE).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_ldaps_and_starttls_the_directory_must_prove_itself_with_the_configured_ca() {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let tls = (certified.cert.pem(), certified.signing_key.serialize_pem());
    let Some(slapd) = Slapd::start_with("ldap over tls", Some(tls)).await else { return };
    let upstream = Upstream::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let ca = secrets.path().join("ldap-ca.pem");
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    let trusted = format!("ca_file = \"{}\"\n", ca.display());
    let ldaps = format!("ldaps://127.0.0.1:{}", slapd.tls_port.unwrap());
    let cases =
        [(ldaps.clone(), trusted.clone(), "ldaps"), (slapd.url(), format!("starttls = true\n{trusted}"), "StartTLS")];
    for (url, extra, what) in cases {
        let proxy = proxy(&upstream.url()).toml(&slapd.config_at(&url, secrets.path(), &extra)).start();
        let carol = Browser::new();
        let response = sign_in(&carol, &proxy, "carol", CAROL_PASSWORD).await;
        assert_eq!(response.status(), 303, "{what}: {}", response.text().await.unwrap());
        assert_eq!(carol.navigate(&proxy.url("/wiki")).await.status(), 200, "{what}");
    }

    // Without the CA the directory's certificate is not trusted, over ldaps:// and after StartTLS
    // alike (so StartTLS really happened): nothing is sent, a clear 503.
    for (url, extra) in [(ldaps.clone(), ""), (slapd.url(), "starttls = true\n")] {
        let untrusting = proxy(&upstream.url()).toml(&slapd.config_at(&url, secrets.path(), extra)).start();
        let carol = Browser::new();
        let refused = sign_in(&carol, &untrusting, "carol", CAROL_PASSWORD).await;
        assert_eq!(refused.status(), 503, "{url} {extra}");
        assert_eq!(carol.navigate(&untrusting.url("/wiki")).await.status(), 303);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn live_sessions_follow_the_directory_when_it_is_asked_again() {
    let Some(slapd) = Slapd::start("ldap recheck").await else { return };
    let upstream = Upstream::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let proxy = proxy(&upstream.url()).toml(&slapd.config(secrets.path(), "")).start();
    let (carol, dave) = (Browser::new(), Browser::new());
    assert_eq!(sign_in(&carol, &proxy, "carol", CAROL_PASSWORD).await.status(), 303);
    assert_eq!(sign_in(&dave, &proxy, "dave", DAVE_PASSWORD).await.status(), 303);
    assert_eq!(carol.navigate(&proxy.url("/wiki")).await.status(), 200);
    assert_eq!(upstream.seen().pop().unwrap().header("x-forwarded-groups"), Some("wiki-admins"));

    // Carol leaves the group and Dave leaves the organisation; the directory is asked again
    // (every five minutes, or now with `admin recheck-directory`).
    slapd.carol_leaves_and_dave_is_removed().await;
    let output = proxy.cli(&["admin", "recheck-directory"], "");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && said.contains("1 ended (dave), 1 refreshed"), "{said}");
    assert_eq!(carol.navigate(&proxy.url("/wiki")).await.status(), 200);
    assert_eq!(upstream.seen().pop().unwrap().header("x-forwarded-groups"), Some(""), "her session lost the group");
    let before = upstream.count();
    assert_eq!(dave.navigate(&proxy.url("/wiki")).await.status(), 303, "his session ended");
    assert_eq!(upstream.count(), before);
    assert_eq!(sign_in(&Browser::new(), &proxy, "dave", DAVE_PASSWORD).await.status(), 401);
}
