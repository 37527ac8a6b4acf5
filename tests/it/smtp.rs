//! Security mail over a real SMTP conversation (RFC 5321): the proxy, configured with
//! `transport = "smtp"`, talks to a small mail server sink on loopback, signs in with the
//! configured account, and retries when the server says "try again later".

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::harness::{ALICE, Browser, PATIENCE, proxy};
use crate::mfa::enroll;
use crate::upstream::Upstream;

const USERNAME: &str = "portcullis@example.com";
const PASSWORD: &str = "smtp pass: not in any log";

/// One mail as the sink received it.
#[derive(Debug)]
struct Received {
    /// The AUTH identity and password this connection signed in with, decoded.
    auth: Option<(String, String)>,
    from: String,
    to: Vec<String>,
    /// The message as sent after DATA, dot-stuffing undone.
    data: String,
}

/// A mail server that accepts everything (after refusing the first `refuse` recipients with a
/// transient 451), and hands each mail it accepts to `mail`.
struct Sink {
    port: u16,
    mail: mpsc::UnboundedReceiver<Received>,
    /// RCPT commands seen, refused ones included.
    recipients_tried: Arc<AtomicUsize>,
}

impl Sink {
    async fn start(refuse: usize) -> Self {
        Self::start_deferring(refuse, None).await
    }

    /// Like `start`, and besides always defers (451) mail to `defer`, as a mailbox that is
    /// temporarily unavailable would.
    async fn start_deferring(refuse: usize, defer: Option<&'static str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, mail) = mpsc::unbounded_channel();
        let refuse = Arc::new(AtomicUsize::new(refuse));
        let recipients_tried = Arc::new(AtomicUsize::new(0));
        let tried = recipients_tried.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, refuse, tried) = (tx.clone(), refuse.clone(), tried.clone());
                tokio::spawn(async move {
                    let _ = converse(stream, tx, refuse, tried, defer).await;
                });
            }
        });
        Self { port, mail, recipients_tried }
    }

    /// The next mail accepted, waiting on the channel (not sleeping) up to the harness's patience.
    async fn next(&mut self) -> Received {
        tokio::time::timeout(PATIENCE, self.mail.recv()).await.expect("no mail reached the SMTP sink").unwrap()
    }
}

/// One SMTP session, server side: just enough of RFC 5321 and RFC 4954 (AUTH PLAIN and LOGIN).
async fn converse(
    stream: tokio::net::TcpStream,
    mail: mpsc::UnboundedSender<Received>,
    refuse: Arc<AtomicUsize>,
    tried: Arc<AtomicUsize>,
    defer: Option<&'static str>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 sink.test ESMTP\r\n").await?;
    let mut auth = None;
    let (mut from, mut to) = (String::new(), Vec::new());
    let decode = |b64: &str| String::from_utf8(BASE64.decode(b64.trim()).unwrap_or_default()).unwrap_or_default();
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink.test\r\n250-AUTH PLAIN LOGIN\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
        } else if upper.starts_with("HELO") {
            b"250 sink.test\r\n"
        } else if upper.starts_with("AUTH PLAIN") {
            let initial = line.get("AUTH PLAIN ".len()..).map(str::to_string);
            let response = match initial {
                Some(r) if !r.trim().is_empty() => r,
                _ => {
                    write.write_all(b"334 \r\n").await?;
                    lines.next_line().await?.unwrap_or_default()
                }
            };
            // RFC 4616: authzid NUL authcid NUL passwd.
            let decoded = decode(&response);
            let mut parts = decoded.split('\0').skip(1);
            auth = Some((parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default().to_string()));
            b"235 2.7.0 Authentication successful\r\n"
        } else if upper.starts_with("AUTH LOGIN") {
            write.write_all(format!("334 {}\r\n", BASE64.encode("Username:")).as_bytes()).await?;
            let user = decode(&lines.next_line().await?.unwrap_or_default());
            write.write_all(format!("334 {}\r\n", BASE64.encode("Password:")).as_bytes()).await?;
            let password = decode(&lines.next_line().await?.unwrap_or_default());
            auth = Some((user, password));
            b"235 2.7.0 Authentication successful\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = line["MAIL FROM:".len()..].trim().to_string();
            to.clear();
            b"250 2.1.0 Ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            tried.fetch_add(1, Ordering::SeqCst);
            if defer.is_some_and(|address| line.contains(address))
                || refuse.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
            {
                b"451 4.3.0 Try again later\r\n"
            } else {
                to.push(line["RCPT TO:".len()..].trim().to_string());
                b"250 2.1.5 Ok\r\n"
            }
        } else if upper == "DATA" {
            write.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
            let mut data = String::new();
            while let Some(line) = lines.next_line().await? {
                if line == "." {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
                data.push('\n');
            }
            let received =
                Received { auth: auth.clone(), from: std::mem::take(&mut from), to: std::mem::take(&mut to), data };
            let _ = mail.send(received);
            b"250 2.0.0 Ok: queued as SINK1\r\n"
        } else if upper == "RSET" {
            from.clear();
            to.clear();
            b"250 2.0.0 Ok\r\n"
        } else if upper == "NOOP" {
            b"250 2.0.0 Ok\r\n"
        } else if upper == "QUIT" {
            write.write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else {
            b"502 5.5.2 Command not recognized\r\n"
        };
        write.write_all(reply).await?;
    }
    Ok(())
}

/// A password file only its owner can read, in a folder of its own; returns (folder, file).
fn password_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smtp-password");
    std::fs::write(&path, format!("{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (dir, path)
}

fn notify_toml(port: u16, password_file: &std::path::Path) -> String {
    format!(
        "[notify]\ntransport = \"smtp\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\nsmtp_security = \"none\"\nsmtp_username = \"{USERNAME}\"\nsmtp_password_file = \"{}\"\nfrom = \"Portcullis <portcullis@example.com>\"",
        password_file.display()
    )
}

/// A proxy (with Alice and Bob) mailing through the sink on `port`, and Alice turning 2FA on,
/// which sends her a mail.
async fn alice_enrolls(port: u16, password_file: &std::path::Path) -> (Upstream, crate::harness::Proxy) {
    let upstream = Upstream::start().await;
    let proxy = proxy(&upstream.url()).account(&crate::mfa::BOB).toml(&notify_toml(port, password_file)).start();
    let browser = Browser::new();
    browser.login(&proxy, &ALICE).await;
    enroll(&browser, &proxy, &proxy.url("/.portcullis/enroll")).await;
    (upstream, proxy)
}

#[tokio::test(flavor = "multi_thread")]
async fn enrolling_sends_a_mail_through_the_smtp_server_signed_in() {
    let mut sink = Sink::start(0).await;
    let (_keep, password) = password_file();
    let (_upstream, proxy) = alice_enrolls(sink.port, &password).await;

    let mail = sink.next().await;
    assert_eq!(mail.auth, Some((USERNAME.to_string(), PASSWORD.to_string())), "AUTH carried the configured account");
    assert_eq!(mail.from, "<portcullis@example.com>");
    assert_eq!(mail.to, vec!["<alice@example.com>".to_string()]);
    assert!(mail.data.contains("Subject: Two-step verification was turned on"), "{}", mail.data);
    assert!(mail.data.contains("alice@example.com"));
    assert!(!mail.data.contains(PASSWORD));

    let sent = proxy.stderr.wait_for(0, |l| l.contains("security notification sent"));
    assert!(sent.expect("delivery is logged").contains("queued as SINK1"), "the server's reply is logged");
    assert!(!proxy.mails().iter().any(|m| m.contains("turned on")), "nothing went to the file transport");
    let log = proxy.stderr.all().join("\n");
    assert!(!log.contains(PASSWORD), "the SMTP password never reaches the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mail_the_server_defers_is_retried_and_delivered() {
    let mut sink = Sink::start(1).await;
    let (_keep, password) = password_file();
    let (_upstream, proxy) = alice_enrolls(sink.port, &password).await;

    let mail = sink.next().await;
    assert!(mail.data.contains("Subject: Two-step verification was turned on"), "{}", mail.data);
    assert_eq!(sink.recipients_tried.load(Ordering::SeqCst), 2, "refused once, then accepted");
    let retry = proxy.stderr.wait_for(0, |l| l.contains("failed, retrying"));
    assert!(retry.expect("the deferral is logged").contains("451"));
    assert!(!proxy.stderr.all().join("\n").contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deferred_mail_does_not_hold_up_the_next() {
    // Alice's mailbox keeps saying "later"; her mail waits out its retries (over a minute) while
    // Bob's is delivered at once.
    let mut sink = Sink::start_deferring(0, Some("alice@example.com")).await;
    let (_keep, password) = password_file();
    let (_upstream, proxy) = alice_enrolls(sink.port, &password).await;
    proxy.stderr.wait_for(0, |l| l.contains("failed, retrying")).expect("alice's mail is deferred");

    let bob = Browser::new();
    bob.login(&proxy, &crate::mfa::BOB).await;
    enroll(&bob, &proxy, &proxy.url("/.portcullis/enroll")).await;
    let mail = sink.next().await;
    assert_eq!(mail.to, vec!["<bob@example.com>".to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sign_in_link_goes_through_the_smtp_server_and_signs_in() {
    let mut sink = Sink::start(0).await;
    let (_keep, password) = password_file();
    let upstream = Upstream::start().await;
    let config = format!("{}\n{}", notify_toml(sink.port, &password), crate::email_links::LINKS);
    let proxy = proxy(&upstream.url()).toml(&config).start();
    let browser = Browser::new();
    let (status, _) = crate::email_links::ask(&browser, &proxy, ALICE.email, "/wiki").await;
    assert_eq!(status, 200);
    let mail = sink.next().await;
    assert_eq!(mail.to, vec!["<alice@example.com>".to_string()]);
    assert!(mail.data.contains("Subject: Your sign-in link"), "{}", mail.data);
    let link = crate::email_links::link_in(&proxy, &mail.data);
    let opened = browser.navigate(&link).await;
    assert_eq!(opened.status(), 303);
    assert_eq!(opened.headers()["location"], proxy.url("/wiki").as_str(), "no second factor here: signed in");
    assert_eq!(browser.navigate(&proxy.url("/wiki")).await.status(), 200);
    let token = link.rsplit('=').next().unwrap();
    assert!(!proxy.stderr.all().join("\n").contains(token), "the link never reaches the log");
}
