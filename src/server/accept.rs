//! Accepting connections: one accept loop per listening socket on each worker, the place each
//! connection takes in `limits.max_connections`, and the TLS handshake before it is served.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::server::capacity::{Admitted, Capacity};
use crate::server::connection;
use crate::web::forward::Forwarder;
use crate::web::state::{App, Connection};

/// How many finished handshakes the kernel queues for `accept` (listen(2); Linux truncates it
/// to `net.core.somaxconn`, 4096 by default since 5.4). The standard library's 128 is small for a
/// proxy: a burst of more than 128 new connections while the workers are busy (a page with many
/// assets behind a front proxy that just restarted, say) has the rest of their SYNs dropped, and
/// each such client waits a second for its retransmission. nginx uses 511; this matches what
/// `limits.max_connections` is sized for.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds a listening socket as the proxy's listeners need: `SO_REUSEADDR` (a restart can bind
/// while the old connections are in TIME_WAIT) and a backlog of [`LISTEN_BACKLOG`].
pub(super) fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A client has this long to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until told to stop, then gives the open ones `shutdown_grace` to finish.
pub(super) async fn accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<TlsAcceptor>,
    forwarder: Arc<Forwarder>,
    connections: Arc<Capacity>,
    mut stop: watch::Receiver<bool>,
) {
    // Every connection task holds a sender; when all are dropped, every connection has ended.
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Usually EMFILE: back off briefly instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let free = connections.try_admit(peer.ip());
        let (app, tls, forwarder, open, connections) =
            (app.clone(), tls.clone(), forwarder.clone(), open_tx.clone(), connections.clone());
        tokio::spawn(async move {
            let _open = open;
            let admitted = match free {
                Some(admitted) => admitted,
                None => match connections.make_room(peer.ip()).await {
                    Some(admitted) => admitted,
                    // Every connection that could give way is busy (all of them, or all of
                    // this address's share): a short, honest answer and a closed connection,
                    // never a crash.
                    None => return connection::refuse_busy(stream, tls).await,
                },
            };
            admitted.entry.activity().watch_socket(std::os::fd::AsRawFd::as_raw_fd(&stream));
            tracing::debug!(%peer, "connection admitted");
            match tls {
                None => {
                    let conn = Connection { peer, tls: false };
                    // Boxed, here and below: the task is sized for its largest branch, and a TLS
                    // session (rustls' state, about 8 KiB) would make every connection's task that
                    // large.
                    Box::pin(connection::serve(stream, conn, app, forwarder, admitted)).await
                }
                Some(acceptor) => Box::pin(serve_tls(stream, peer, acceptor, app, forwarder, admitted)).await,
            }
        });
    }
    drop(listener);
    drop(open_tx);
    let grace = app.config().proxy.shutdown_grace;
    if tokio::time::timeout(grace, open_rx.recv()).await.is_err() {
        tracing::warn!("some connections were still busy after {grace:?} and were closed");
    }
}

/// A TLS connection: its handshake, then served.
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    app: Arc<App>,
    forwarder: Arc<Forwarder>,
    admitted: Admitted,
) {
    // A socket that has not finished its handshake is as idle as any: it gives its place to a
    // newcomer at once, not when the handshake times out.
    let activity = admitted.entry.activity().clone();
    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => {
                let conn = Connection { peer, tls: true };
                connection::serve(stream, conn, app, forwarder, admitted).await
            }
            Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        },
        _ = activity.close_requested() => tracing::debug!(%peer, "TLS handshake abandoned to make room"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the standard library's backlog of 128, the kernel drops the SYNs of a burst past it
    /// while the workers are busy, and those clients wait out a one-second retransmission. Here
    /// nothing accepts at all: every one of 400 connections must still complete its handshake.
    #[tokio::test]
    async fn a_burst_of_connections_larger_than_128_is_queued_not_dropped() {
        let listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let somaxconn: usize =
            std::fs::read_to_string("/proc/sys/net/core/somaxconn").map(|s| s.trim().parse().unwrap()).unwrap_or(4096);
        assert!(somaxconn > 400, "net.core.somaxconn is {somaxconn}: this test needs more than 400");
        let clients = tokio::task::spawn_blocking(move || {
            (0..400)
                .map(|i| {
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                        .unwrap_or_else(|e| panic!("connection {i} of 400 was not queued: {e}"))
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        assert_eq!(clients.len(), 400);
        drop(listener);
    }
}
