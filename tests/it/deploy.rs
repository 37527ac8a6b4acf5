//! The deployment files in `deploy/` and what they rely on: the real binary telling a service
//! manager when it is ready, reloading and stopping (`sd_notify(3)`, what `Type=notify` waits
//! for), and the systemd unit checked by systemd's own tools. Without `systemd-analyze` the unit
//! tests say loudly that they were skipped, and fail under `CI` (`.ci/run` installs it).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{BINARY, Browser, PATIENCE, proxy};
use crate::upstream::Upstream;

/// A stand-in for systemd's notification socket: a datagram socket bound in a temp folder.
struct Manager {
    socket: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Manager {
    fn bind() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        // The read timeout is the synchronisation: each wait ends when the message arrives.
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        Self { socket, path, _dir: dir }
    }

    /// The next message, as its `KEY=VALUE` lines. Panics if none arrives within PATIENCE.
    fn next(&self) -> Vec<String> {
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).expect("a notification within PATIENCE");
        String::from_utf8(buf[..n].to_vec()).unwrap().lines().map(str::to_string).collect()
    }

    /// Nothing more is queued (for after the process has exited: all it sent is here by then).
    fn assert_drained(&self) {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!(
                "an unexpected notification: {:?}",
                other.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
            ),
        }
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success());
}

fn monotonic_usec() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec we own.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) }, 0);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_manager_hears_ready_then_reloading_and_ready_then_stopping() {
    let upstream = Upstream::start().await;
    let manager = Manager::bind();
    let mut proxy = proxy(&upstream.url()).env("NOTIFY_SOCKET", &manager.path).start();

    // The first thing the manager hears is READY=1, and by then the proxy serves.
    let ready = manager.next();
    assert_eq!(ready[0], "READY=1", "{ready:?}");
    assert!(
        ready.iter().any(|l| l.starts_with("STATUS=serving on ") && l.contains(&proxy.addr.to_string())),
        "{ready:?}"
    );
    let page = Browser::new().navigate(&proxy.url("/.portcullis/login")).await;
    assert_eq!(page.status(), 200, "READY=1 came before the listener served");

    // SIGHUP (what ExecReload= sends): RELOADING=1 with the monotonic time, then READY=1.
    let before = monotonic_usec();
    signal(proxy.pid(), "HUP");
    let reloading = manager.next();
    assert_eq!(reloading[0], "RELOADING=1", "{reloading:?}");
    let usec: u64 = reloading
        .iter()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("RELOADING=1 carries MONOTONIC_USEC=")
        .parse()
        .unwrap();
    assert!(usec >= before && usec <= monotonic_usec(), "MONOTONIC_USEC={usec} is not CLOCK_MONOTONIC now");
    let reloaded = manager.next();
    assert_eq!(reloaded[0], "READY=1", "{reloaded:?}");
    assert!(reloaded.iter().any(|l| l == "STATUS=serving; configuration reloaded"), "{reloaded:?}");
    assert_eq!(Browser::new().navigate(&proxy.url("/.portcullis/login")).await.status(), 200);

    // SIGTERM (what `systemctl stop` sends): STOPPING=1, then a clean exit and nothing more.
    let status = proxy.stop();
    let stopping = manager.next();
    assert_eq!(stopping[0], "STOPPING=1", "{stopping:?}");
    assert!(status.success(), "{status:?}");
    manager.assert_drained();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notify_socket_nobody_listens_on_does_not_stop_the_proxy() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy(&upstream.url()).env("NOTIFY_SOCKET", dir.path().join("nobody.sock")).start();
    assert_eq!(Browser::new().navigate(&proxy.url("/.portcullis/login")).await.status(), 200);
    let warned = proxy.stderr.wait_for(0, |l| l.contains("NOTIFY_SOCKET") && l.contains("WARN"));
    assert!(warned.is_some(), "the failed notification is logged");
}

/// `program` (from Debian's systemd package), or `None` after saying loudly that `test` was
/// skipped (a failure under CI).
fn systemd_tool(program: &'static str, test: &str) -> Option<&'static str> {
    let found = Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success());
    if found {
        return Some(program);
    }
    let install = "apt-get install systemd";
    crate::harness::skip(test, program, install);
    None
}

/// deploy/portcullis.service in a temp folder, its ExecStart= pointing at the binary just built
/// (`verify` insists that the program exists).
fn unit_copy() -> (tempfile::TempDir, PathBuf) {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/portcullis.service");
    let text = std::fs::read_to_string(unit).unwrap();
    let installed = "ExecStart=/usr/local/bin/portcullis ";
    assert_eq!(text.matches(installed).count(), 1, "one ExecStart= running /usr/local/bin/portcullis");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.service");
    std::fs::write(&path, text.replace(installed, &format!("ExecStart={BINARY} "))).unwrap();
    (dir, path)
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify_without_a_warning() {
    let test = "the_systemd_unit_passes_systemd_analyze_verify_without_a_warning";
    let Some(tool) = systemd_tool("systemd-analyze", test) else { return };
    let (_dir, unit) = unit_copy();
    let out = Command::new(tool).args(["verify", "--man=no"]).arg(&unit).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {:?}\n{said}", out.status);
}

#[test]
fn the_systemd_unit_keeps_its_security_exposure_low() {
    let test = "the_systemd_unit_keeps_its_security_exposure_low";
    let Some(tool) = systemd_tool("systemd-analyze", test) else { return };
    let (_dir, unit) = unit_copy();
    // Exposure runs from 0.0 (locked down) to 10.0; --threshold is in tenths. The unit scores 1.3
    // (README, "systemd"); anything over 2.0 means a hardening line was lost.
    let out = Command::new(tool)
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exposure over 2.0:\n{said}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("Overall exposure level"), "{said}");
}

#[test]
fn the_sysusers_file_creates_the_user_the_unit_runs_as() {
    let test = "the_sysusers_file_creates_the_user_the_unit_runs_as";
    let Some(tool) = systemd_tool("systemd-sysusers", test) else { return };
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let unit = std::fs::read_to_string(deploy.join("portcullis.service")).unwrap();
    assert!(unit.lines().any(|l| l == "User=portcullis"), "the unit runs as portcullis");
    // --dry-run into an empty root: nothing is written, and the plan is printed.
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    let out = Command::new(tool)
        .arg("--dry-run")
        .arg(format!("--root={}", root.path().display()))
        .arg(deploy.join("portcullis.sysusers"))
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(said.contains("Creating user 'portcullis'"), "{said}");
    assert!(!said.contains("gnoring") && !said.to_lowercase().contains("warn"), "{said}");
}

/// The container cannot be built here (no container runtime); this only guards the lines the
/// README promises, so an edit that drops one fails a test rather than a deployment.
#[test]
fn the_containerfile_keeps_its_promises() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = std::fs::read_to_string(root.join("deploy/Containerfile")).unwrap();
    let lines: Vec<&str> = file.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    for needed in [
        "FROM docker.io/library/rust:1-bookworm AS build",
        "cargo build --release --locked --bin portcullis",
        "FROM gcr.io/distroless/cc-debian12:nonroot",
        "VOLUME /data",
        "ENV PORTCULLIS_CONFIG=/etc/portcullis/proxy.toml",
        "USER 65532:65532",
        "STOPSIGNAL SIGTERM",
    ] {
        assert!(lines.iter().any(|l| l.contains(needed)), "deploy/Containerfile lost {needed:?}");
    }
    assert!(!lines.iter().any(|l| l.starts_with("HEALTHCHECK")), "distroless has nothing to run a health check with");
    let ignored = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    for path in ["target/", "tests/upstreams/.venv/", "tests/browser/node_modules/"] {
        assert!(ignored.lines().any(|l| l == path), ".dockerignore lost {path}");
    }
}
