//! Hypercorn (from PyPI), a real upstream that accepts `Upgrade: h2c` from any HTTP/1.1 client,
//! serving `tests/upstreams/echo_asgi.py`. `.ci/run` installs it into `tests/upstreams/.venv`;
//! without it the tests that need it say loudly that they were skipped (and fail under CI).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::harness::{Lines, free_port};

pub struct Hypercorn {
    child: Child,
    pub addr: SocketAddr,
}

fn upstreams() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/upstreams")
}

impl Hypercorn {
    pub fn start(test: &str) -> Option<Self> {
        let binary = upstreams().join(".venv/bin/hypercorn");
        if !binary.exists() {
            let install = "python3 -m venv tests/upstreams/.venv && tests/upstreams/.venv/bin/pip install -r tests/upstreams/requirements.txt";
            crate::harness::skip(test, "Hypercorn", install);
            return None;
        }
        for _ in 0..5 {
            let port = free_port();
            // Its own process group: Hypercorn serves from a worker process it spawns, which must
            // go when the test does (killing only the parent would leave the worker running).
            let mut child = Command::new(&binary)
                .process_group(0)
                .args(["--bind", &format!("127.0.0.1:{port}"), "echo_asgi:app"])
                .current_dir(upstreams())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("hypercorn starts");
            let output = Lines::default();
            output.clone().follow(child.stdout.take().unwrap());
            output.clone().follow(child.stderr.take().unwrap());
            if output.wait_for(0, |l| l.contains("Running on")).is_some() {
                return Some(Self { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) });
            }
            kill_group(&mut child);
        }
        panic!("hypercorn did not start");
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Ends Hypercorn and its worker (the whole process group it leads).
fn kill_group(child: &mut Child) {
    // SAFETY: kill(2) with a negative pid signals the process group; no memory is involved.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
}

impl Drop for Hypercorn {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}
