//! The control socket: how `portcullis admin ...` reaches a running proxy.
//!
//! sled admits one process per database, so the CLI cannot open the store while the proxy runs.
//! Instead the proxy listens on a Unix socket in `data_dir` (mode 0600, inside the 0700 data
//! directory, never on the network) and only answers peers running as its own user or root. One
//! JSON [`Request`] per line in, one JSON [`Reply`] per line out.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::domain::operator::{Admin, Reply, Request};

/// The socket's name inside `data_dir`.
pub const SOCKET: &str = "control.sock";
/// A request is a short JSON line; anything longer is not one of ours.
const MAX_REQUEST: u64 = 16 * 1024;
const CLIENT_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create the control socket {path}: {source}")]
    Bind { path: String, source: std::io::Error },
    #[error("the proxy's control socket {path} did not answer: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("the proxy answered something unexpected: {0}")]
    Protocol(String),
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET)
}

/// Binds the control socket. A socket file left by a proxy that did not stop cleanly is replaced:
/// the caller holds the store's lock, so no other proxy can be using it.
pub fn bind(data_dir: &Path) -> Result<UnixListener, ControlError> {
    let path = socket_path(data_dir);
    let bind_error = |source| ControlError::Bind { path: path.display().to_string(), source };
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(bind_error(e)),
        _ => {}
    }
    let listener = UnixListener::bind(&path).map_err(bind_error)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
    Ok(listener)
}

/// Answers operators until the task is aborted.
pub fn spawn(listener: UnixListener, admin: Arc<Admin>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, admin.clone()));
                }
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

async fn answer(stream: UnixStream, admin: Arc<Admin>) {
    // File permissions already keep others out; checking the peer's uid as well means a
    // mistakenly loosened mode or directory still does not open the door.
    let our_uid = effective_uid();
    let peer_uid = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(e) => {
            tracing::warn!("control socket: cannot identify the peer: {e}");
            return;
        }
    };
    if peer_uid != our_uid && peer_uid != 0 {
        tracing::warn!(target: "portcullis::security", peer_uid, "control socket: refused a peer running as another user");
        return;
    }
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut limited = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    let reply = match tokio::time::timeout(CLIENT_PATIENCE, limited.read_line(&mut line)).await {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim_end()) {
            Ok(request) => match admin.execute(request, &format!("cli (uid {peer_uid})")).await {
                Ok(reply) => reply,
                Err(e) => {
                    tracing::error!("control socket: the operation failed: {e}");
                    Reply::Refused { reason: format!("the operation failed: {e}") }
                }
            },
            Err(_) => {
                Reply::Refused { reason: "not a request this proxy understands (is the CLI the same version?)".into() }
            }
        },
        Ok(Err(e)) => {
            tracing::debug!("control socket: read failed: {e}");
            return;
        }
        Err(_) => return,
    };
    let Ok(mut text) = serde_json::to_string(&reply) else { return };
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
    let _ = write.shutdown().await;
}

/// The uid this process runs as (the audit trail names operators by it).
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Sends `request` to the proxy running on `data_dir`. `Ok(None)` means no proxy is running
/// there (no socket, or nobody listening on it), so the caller may open the store itself.
pub fn call(data_dir: &Path, request: &Request) -> Result<Option<Reply>, ControlError> {
    let path = socket_path(data_dir);
    let io_error = |source| ControlError::Io { path: path.display().to_string(), source };
    let stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None);
        }
        Err(e) => return Err(io_error(e)),
    };
    stream.set_read_timeout(Some(CLIENT_PATIENCE)).map_err(io_error)?;
    let mut text = serde_json::to_string(request).map_err(|e| ControlError::Protocol(e.to_string()))?;
    text.push('\n');
    (&stream).write_all(text.as_bytes()).map_err(io_error)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io_error)?;
    if answer.is_empty() {
        return Err(ControlError::Protocol(
            "the connection closed without an answer (are you running as the proxy's user?)".into(),
        ));
    }
    serde_json::from_str(answer.trim_end()).map(Some).map_err(|e| ControlError::Protocol(e.to_string()))
}
