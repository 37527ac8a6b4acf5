//! The README's first command, `portcullis demo`, works as described: it prints a URL, a user
//! and a password, and signing in with them shows the whoami page with a verified assertion.

use std::process::{Command, Stdio};

use crate::harness::{BINARY, Browser, Lines};

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_runs_with_nothing_else_installed() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(BINARY)
        .args(["demo", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path().join("demo-data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = Lines::default();
    stdout.clone().follow(child.stdout.take().unwrap());
    let password_line = stdout.wait_for(0, |l| l.trim_start().starts_with("password:"));
    let Some(password_line) = password_line else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the demo printed no password");
    };
    let password = password_line.split_whitespace().last().unwrap().to_string();
    let text = stdout.all().join("\n");
    assert!(text.contains(&format!("http://127.0.0.1:{port}/")) && text.contains("user name: demo"), "{text}");

    let browser = Browser::new();
    let base = format!("http://127.0.0.1:{port}");
    let login = browser.submit_login_at(&base, "demo", &password, "/").await;
    assert_eq!(login.status(), 303);
    let whoami = browser.navigate(&format!("{base}/")).await.text().await.unwrap();
    assert!(whoami.contains("Hello, demo"), "{whoami}");
    assert!(whoami.contains("<strong>verified</strong>"), "{whoami}");

    let _ = child.kill();
    let _ = child.wait();
}
