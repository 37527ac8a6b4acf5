//! The README's first command, `portcullis demo`, works as described: it prints a URL, a user
//! and a password, and signing in with them shows the whoami page with a verified assertion.

use std::process::Command;

use crate::harness::{BINARY, Browser, spawn_followed};

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_runs_with_nothing_else_installed() {
    let dir = tempfile::tempdir().unwrap();
    // A port picked free may be taken by another process before the demo listens on it; the
    // demo then ends with an error, and another port is tried.
    let (mut child, stdout, port, password_line) = (0..5)
        .find_map(|_| {
            let port = crate::harness::free_port();
            let mut command = Command::new(BINARY);
            command
                .args(["demo", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
                .arg(dir.path().join("demo-data"));
            let (mut child, stdout, stderr) = spawn_followed(command);
            match stdout.wait_for_before_end(0, |l| l.trim_start().starts_with("password:")) {
                Some(line) => Some((child, stdout, port, line)),
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let said = stderr.all().join("\n");
                    assert!(said.contains("in use"), "the demo printed no password: {said}");
                    None
                }
            }
        })
        .expect("the demo started on one of five free ports");
    let password = password_line.split_whitespace().nth(1).unwrap().to_string();
    let text = stdout.all().join("\n");
    assert!(text.contains(&format!("http://127.0.0.1:{port}/")) && text.contains("user name: demo"), "{text}");
    assert!(password_line.contains("a new one at every start"), "the banner says the password changes");

    // The demo's folder holds codes and links: private, like a real data_dir.
    use std::os::unix::fs::PermissionsExt;
    let data = dir.path().join("demo-data");
    assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
    let mut open = Vec::new();
    let mut pending = vec![data];
    while let Some(path) = pending.pop() {
        let meta = std::fs::metadata(&path).unwrap();
        if meta.permissions().mode() & 0o077 != 0 {
            open.push(path.clone());
        }
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(open.is_empty(), "readable by others: {open:?}");

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
