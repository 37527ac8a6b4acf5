//! Real front proxies, nginx and Caddy (Debian packages, installed by `.ci/run`), started on
//! loopback with the sample configurations from `deploy/` as they are shipped: the test only swaps
//! the sample's addresses for its own, and fails if a sample stops having one of them, so the
//! samples and the tests cannot drift apart. Without the program a test says loudly that it was
//! skipped, and fails under CI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::os::unix::process::CommandExt;

use crate::harness::Lines;

pub struct Front {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// What a sample's placeholder addresses become in a test.
pub struct Addresses<'a> {
    /// Portcullis (`127.0.0.1:9091` in the samples).
    pub portcullis: SocketAddr,
    /// The application (`127.0.0.1:8080` in the samples that name it).
    pub app: Option<SocketAddr>,
    /// Host names: each `(sample name, test name)`, e.g. `("app.example.com", "app.example.test")`.
    pub hosts: &'a [(&'a str, &'a str)],
}

fn sample(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy").join(relative)
}

fn swap(text: &str, from: &str, to: &str, file: &Path) -> String {
    assert!(text.contains(from), "{} no longer contains {from:?}; update the test with the sample", file.display());
    text.replace(from, to)
}

pub(crate) fn present(program: &str, test: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let install = format!("apt-get install {program}");
        crate::harness::skip(test, program, &install);
    }
    found
}

impl Front {
    /// nginx with `deploy/<sample>` inside its `http { }`.
    pub fn nginx(test: &str, sample_path: &str, port: u16, addresses: &Addresses) -> Option<Self> {
        if !present("nginx", test) {
            return None;
        }
        let file = sample(sample_path);
        let original = std::fs::read_to_string(&file).unwrap();
        {
            let dir = tempfile::tempdir().unwrap();
            let mut site = swap(&original, "127.0.0.1:9091", &addresses.portcullis.to_string(), &file);
            if let Some(app) = addresses.app {
                site = swap(&site, "127.0.0.1:8080", &app.to_string(), &file);
            }
            site = swap(&site, "listen 80", &format!("listen 127.0.0.1:{port}"), &file);
            for (from, to) in addresses.hosts {
                site = swap(&site, from, to, &file);
            }
            let d = dir.path().display();
            std::fs::write(dir.path().join("site.conf"), site).unwrap();
            let main = format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log stderr notice;\ndaemon off;\nevents {{ worker_connections 256; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include {d}/site.conf;\n}}\n"
            );
            std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
            let mut command = Command::new("nginx");
            command.args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf"), "-e", "stderr"]);
            // The master binds every listener before it starts a worker.
            Some(Self::run(command, "start worker process", port, dir))
        }
    }

    /// Caddy with `deploy/<sample>` (a Caddyfile), its sites served over plain HTTP on one port.
    pub fn caddy(test: &str, sample_path: &str, port: u16, addresses: &Addresses) -> Option<Self> {
        if !present("caddy", test) {
            return None;
        }
        let file = sample(sample_path);
        let original = std::fs::read_to_string(&file).unwrap();
        {
            let dir = tempfile::tempdir().unwrap();
            let mut site = swap(&original, "127.0.0.1:9091", &addresses.portcullis.to_string(), &file);
            if let Some(app) = addresses.app {
                site = swap(&site, "127.0.0.1:8080", &app.to_string(), &file);
            }
            for (from, to) in addresses.hosts {
                // A site address with a scheme and port: plain HTTP on the test's port.
                site = swap(&site, &format!("{from} {{"), &format!("http://{to}:{port} {{"), &file);
            }
            // No admin endpoint (tests run side by side), no certificates, loopback only.
            let text = format!("{{\n\tadmin off\n\tauto_https off\n\tdefault_bind 127.0.0.1\n}}\n\n{site}");
            let caddyfile = dir.path().join("Caddyfile");
            std::fs::write(&caddyfile, text).unwrap();
            let mut command = Command::new("caddy");
            command
                .args(["run", "--adapter", "caddyfile", "--config"])
                .arg(&caddyfile)
                .env("HOME", dir.path())
                .env("XDG_DATA_HOME", dir.path().join("data"))
                .env("XDG_CONFIG_HOME", dir.path().join("config"));
            Some(Self::run(command, "serving initial configuration", port, dir))
        }
    }

    /// Starts `command` in its own process group (so its workers go with it, see Drop) and
    /// waits for the line that says it serves.
    pub(crate) fn run(mut command: Command, ready: &str, port: u16, dir: tempfile::TempDir) -> Self {
        let mut child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
        let log = Lines::default();
        log.clone().follow(child.stdout.take().unwrap());
        log.clone().follow(child.stderr.take().unwrap());
        if log.wait_for(0, |l| l.contains(ready)).is_some() {
            return Self { child, port, _dir: dir };
        }
        kill_group(&mut child);
        panic!("{command:?} did not start:\n{}", log.all().join("\n"));
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

fn kill_group(child: &mut Child) {
    // SAFETY: kill(2) with a negative pid signals the process group; no memory is involved.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
}

impl Drop for Front {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}
