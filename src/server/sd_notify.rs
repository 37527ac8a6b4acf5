//! Telling a service manager how the proxy is doing: the `sd_notify(3)` protocol, without
//! libsystemd.
//!
//! systemd (and other managers that speak the protocol) sets `NOTIFY_SOCKET` to a Unix datagram
//! socket: a filesystem path, or an abstract name written with a leading `@`. Each message is one
//! datagram of newline-separated `KEY=VALUE` assignments. We send:
//!
//! * `READY=1` once every listener is bound and every worker accepts on it, so `Type=notify`
//!   units (and whatever is ordered `After=` them) start only when the proxy really serves;
//! * `RELOADING=1` with `MONOTONIC_USEC=` before a reload and `READY=1` after, which is what
//!   `Type=notify-reload` (systemd 253 and later) waits for after its SIGHUP, and what a
//!   `Type=notify` unit shows as "reloading";
//! * `STOPPING=1` as soon as a shutdown begins.
//!
//! `MAINPID=` is not sent: it is for a helper notifying on behalf of another process, and the
//! proxy itself is the main process (its threads share its PID, which the kernel attaches to each
//! datagram). `NOTIFY_SOCKET` is read once and left in the environment: `sd_notify(3)` unsets it
//! only so that child processes do not inherit it, and the proxy starts none.
//!
//! Notification is a courtesy to the manager, never a reason to stop serving: every failure is
//! logged at warn and the proxy carries on.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable a service manager sets (`sd_notify(3)`, "ENVIRONMENT").
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "{NOTIFY_SOCKET}={value:?} is neither an absolute path nor an abstract socket name starting with '@'; the service manager will not hear that the proxy is ready"
    )]
    Address { value: String },
    #[error("cannot use {NOTIFY_SOCKET}={value:?}: {source}")]
    Socket { value: String, source: std::io::Error },
    #[error("cannot tell the service manager {message:?} through {NOTIFY_SOCKET}={value:?}: {source}")]
    Send { value: String, message: String, source: std::io::Error },
}

/// Where the service manager listens, if it asked to hear from us.
pub struct ServiceManager {
    target: Option<Target>,
}

struct Target {
    /// `NOTIFY_SOCKET` as given, for log lines.
    value: String,
    address: SocketAddr,
    socket: UnixDatagram,
}

impl ServiceManager {
    /// From `NOTIFY_SOCKET`. Unset means no manager is listening: every notification is a no-op.
    /// A value we cannot use is logged at warn and treated the same way.
    pub fn from_env() -> Self {
        match std::env::var_os(NOTIFY_SOCKET) {
            None => Self::none(),
            Some(value) => Self::at(&value).unwrap_or_else(|e| {
                tracing::warn!("{e}");
                Self::none()
            }),
        }
    }

    /// A manager listening at `value` (a `NOTIFY_SOCKET` value).
    pub fn at(value: &OsStr) -> Result<Self, NotifyError> {
        let shown = value.to_string_lossy().into_owned();
        let address = parse_address(value)?;
        let socket = UnixDatagram::unbound().map_err(|source| NotifyError::Socket { value: shown.clone(), source })?;
        Ok(Self { target: Some(Target { value: shown, address, socket }) })
    }

    /// Nobody to tell.
    pub fn none() -> Self {
        Self { target: None }
    }

    /// Every listener serves (or serves again after a reload). `status` is a line for
    /// `systemctl status`.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A reload begins. `MONOTONIC_USEC` (CLOCK_MONOTONIC when the message was made) lets the
    /// manager match it to the SIGHUP it sent; `Type=notify-reload` (systemd.service(5), 253 and
    /// later) expects it with `RELOADING=1` (sd_notify(3)).
    pub fn reloading(&self) {
        match monotonic_usec() {
            Ok(usec) => self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the configuration")),
            Err(e) => {
                tracing::warn!("cannot read CLOCK_MONOTONIC for the service manager ({e}); reload not announced")
            }
        }
    }

    /// Shutdown begins: the manager shows "deactivating" instead of thinking we hang.
    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=stopping: finishing requests in flight");
    }

    fn notify(&self, message: &str) {
        if let Err(e) = self.send(message) {
            tracing::warn!("{e}");
        }
    }

    /// Sends one datagram (connectionless: a restarted manager is reached at the same address).
    fn send(&self, message: &str) -> Result<(), NotifyError> {
        let Some(target) = &self.target else { return Ok(()) };
        target.socket.send_to_addr(message.as_bytes(), &target.address).map(drop).map_err(|source| NotifyError::Send {
            value: target.value.clone(),
            message: message.to_string(),
            source,
        })
    }
}

/// `NOTIFY_SOCKET`'s two forms (`sd_notify(3)`): an absolute path, or `@name` for a name in
/// Linux's abstract socket namespace (`unix(7)`). Newer systemd also accepts `vsock:` addresses,
/// which only matter inside virtual machines managed from outside; those are refused here.
fn parse_address(value: &OsStr) -> Result<SocketAddr, NotifyError> {
    let bytes = value.as_bytes();
    let refused = || NotifyError::Address { value: value.to_string_lossy().into_owned() };
    let invalid = |source| NotifyError::Socket { value: value.to_string_lossy().into_owned(), source };
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(value).map_err(invalid),
        Some(b'@') if bytes.len() > 1 => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..]).map_err(invalid)
        }
        _ => Err(refused()),
    }
}

/// A STATUS value is the rest of its line: a newline would start another assignment.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// CLOCK_MONOTONIC in microseconds, the clock `MONOTONIC_USEC=` is read against.
fn monotonic_usec() -> std::io::Result<u64> {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec we own for the duration of the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn receive(socket: &UnixDatagram) -> String {
        socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a datagram within the timeout");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let manager = ServiceManager::at(path.as_os_str()).unwrap();
        manager.ready("serving on http://127.0.0.1:1\nand more");
        assert_eq!(receive(&listener), "READY=1\nSTATUS=serving on http://127.0.0.1:1 and more");
        manager.stopping();
        assert!(receive(&listener).starts_with("STOPPING=1\n"));
    }

    #[test]
    fn sends_to_an_abstract_name() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("portcullis-test-{}-{}", std::process::id(), monotonic_usec().unwrap());
        let listener = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let manager = ServiceManager::at(OsStr::new(&format!("@{name}"))).unwrap();
        let before = monotonic_usec().unwrap();
        manager.reloading();
        let message = receive(&listener);
        let mut lines = message.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines.next().unwrap().strip_prefix("MONOTONIC_USEC=").unwrap().parse().unwrap();
        assert!(usec >= before && usec <= monotonic_usec().unwrap(), "{usec} is CLOCK_MONOTONIC");
    }

    #[test]
    fn refuses_what_is_not_an_address() {
        for value in ["", "@", "relative/notify.sock", "vsock:2:1234"] {
            assert!(matches!(ServiceManager::at(OsStr::new(value)), Err(NotifyError::Address { .. })), "{value:?}");
        }
    }

    #[test]
    fn a_manager_that_went_away_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone.sock");
        let manager = ServiceManager::at(path.as_os_str()).unwrap();
        assert!(matches!(manager.send("READY=1"), Err(NotifyError::Send { .. })));
        manager.ready("nobody listens"); // logged, not fatal
        assert!(ServiceManager::none().send("READY=1").is_ok());
    }
}
