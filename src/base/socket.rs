//! Looking into a socket without reading from it.

use std::os::fd::RawFd;

/// Whether a socket has nothing to say: no bytes waiting to be read, and not closed by its peer.
///
/// It asks the socket itself (`recv` with `MSG_PEEK`), not the runtime, which learns that bytes
/// came only at its next poll for events. One system call; nothing is consumed.
pub fn socket_is_quiet(socket: RawFd) -> bool {
    let mut probe = 0u8;
    // SAFETY: `recv` writes at most one byte into `probe`, which lives across the call. Callers
    // look only at a descriptor they hold open; were it closed (or reused meanwhile), a peek
    // consumes nothing: the worst would be a wrong verdict, never another socket's bytes.
    let got = unsafe { libc::recv(socket, (&raw mut probe).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    // Closed (0), bytes waiting (1), or a failed socket: not quiet.
    got < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

/// Bytes written to a TCP socket that its peer has not acknowledged yet, sent or not (and a
/// FIN, once shut down for writing), as the kernel counts them (`SIOCOUTQ`, tcp(7)); `None` if
/// the socket cannot say (not a connected TCP socket).
pub fn unacknowledged_bytes(socket: RawFd) -> Option<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: `SIOCOUTQ` (`TIOCOUTQ`) writes one `c_int` into `queued`, which lives across the
    // call; it reads nothing from the socket. On a descriptor that is not a TCP socket it fails.
    let done = unsafe { libc::ioctl(socket, libc::TIOCOUTQ, &raw mut queued) };
    (done == 0).then(|| usize::try_from(queued).unwrap_or(0))
}

/// Makes closing the socket reset the connection (`SO_LINGER` on, zero seconds; socket(7)):
/// what the client has not acknowledged is dropped at once. A TCP socket closed the usual way
/// with bytes still queued lives on in the kernel as an orphan, sending them for as long as the
/// client keeps its window open a crack, outside any limit the proxy keeps (tcp(7):
/// `tcp_max_orphans`). For a connection the proxy gives up on, so that nothing of it outlives its
/// place. A descriptor that is not a socket is left as it is.
pub fn reset_when_closed(socket: RawFd) {
    let reset = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `setsockopt` reads `size_of::<linger>()` bytes from `reset`, which lives across the
    // call, and changes only how the descriptor closes. Callers hold the descriptor open.
    unsafe {
        libc::setsockopt(
            socket,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const reset).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// The most a socket's receive buffer may be set to (`net.core.rmem_max`; socket(7): a larger
/// `SO_RCVBUF` is silently cut to it), if the kernel says.
pub fn receive_buffer_limit() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/net/core/rmem_max").ok()?.trim().parse().ok()
}

/// A connection the proxy opened, reset rather than closed if it is dropped while its peer has
/// not acknowledged all that was written to it: a request the upstream never read (its accept
/// queue overflowed, or it stopped reading an upload) when the exchange is abandoned (a timeout,
/// the client gone). Closed the usual way, the kernel would go on retrying those bytes and the
/// FIN behind them as an orphan for a minute or more (tcp(7); the seventh attack pass counted
/// 160), outside every limit here. A connection closed with everything acknowledged (the usual
/// end) is closed the usual way, and so is one whose only unacknowledged bytes are those of its
/// own shutdown (hyper's client shuts a connection down before dropping it: a TLS close_notify,
/// the FIN), which a round trip to a distant upstream leaves in flight.
pub struct ResetIfUnacknowledged<T> {
    io: T,
    socket: RawFd,
    /// What the peer had not acknowledged when the shutdown began, if it has.
    unacknowledged_at_shutdown: Option<usize>,
}

impl<T> ResetIfUnacknowledged<T> {
    /// `socket` is the TCP socket under `io` (under TLS too), which `io` owns.
    pub fn new(io: T, socket: RawFd) -> Self {
        Self { io, socket, unacknowledged_at_shutdown: None }
    }

    pub fn socket(&self) -> RawFd {
        self.socket
    }

    pub fn get_mut(&mut self) -> &mut T {
        &mut self.io
    }

    /// Notes that a shutdown begins: what it writes (a close_notify, the FIN) is not a request
    /// left unread.
    pub fn note_shut_down(self: std::pin::Pin<&mut Self>)
    where
        T: Unpin,
    {
        let this = std::pin::Pin::into_inner(self);
        if this.unacknowledged_at_shutdown.is_none() {
            this.unacknowledged_at_shutdown = Some(unacknowledged_bytes(this.socket).unwrap_or(0));
        }
    }

    pub fn get_pin_mut(self: std::pin::Pin<&mut Self>) -> std::pin::Pin<&mut T>
    where
        T: Unpin,
    {
        std::pin::Pin::new(&mut self.get_mut().io)
    }
}

impl<T> std::ops::Deref for ResetIfUnacknowledged<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.io
    }
}

impl<T> std::ops::DerefMut for ResetIfUnacknowledged<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.io
    }
}

impl<T> Drop for ResetIfUnacknowledged<T> {
    fn drop(&mut self) {
        // `io` is dropped after this, so the descriptor is still open here.
        let left_unread = self.unacknowledged_at_shutdown.is_none_or(|before| before > 0);
        if left_unread && unacknowledged_bytes(self.socket).is_some_and(|queued| queued > 0) {
            reset_when_closed(self.socket);
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for ResetIfUnacknowledged<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.get_pin_mut().poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for ResetIfUnacknowledged<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.get_pin_mut().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.get_pin_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.get_pin_mut().poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.as_mut().note_shut_down();
        self.get_pin_mut().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn bytes_waiting_or_a_close_are_seen_and_nothing_is_consumed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert!(socket_is_quiet(server.as_raw_fd()));
        client.write_all(b"x").unwrap();
        // Loopback delivers at once, but give the byte a moment to be queued without sleeping:
        // a blocking peek waits exactly for it.
        let mut peeked = [0u8; 1];
        assert_eq!(server.peek(&mut peeked).unwrap(), 1);
        assert!(!socket_is_quiet(server.as_raw_fd()), "a byte waiting");
        let mut read = [0u8; 1];
        server.read_exact(&mut read).unwrap();
        assert_eq!(&read, b"x", "the look consumed nothing");
        assert!(socket_is_quiet(server.as_raw_fd()));
        drop(client);
        assert_eq!(server.peek(&mut peeked).unwrap(), 0);
        assert!(!socket_is_quiet(server.as_raw_fd()), "closed by the peer");
    }

    #[test]
    fn bytes_the_peer_has_not_acknowledged_are_counted() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert_eq!(unacknowledged_bytes(server.as_raw_fd()), Some(0));
        // More than the client's window: the rest waits in the server's socket.
        server.set_nonblocking(true).unwrap();
        let mut written = 0;
        let mut writer = &server;
        while let Ok(n) = writer.write(&[7u8; 65536]) {
            written += n;
        }
        assert!(unacknowledged_bytes(server.as_raw_fd()).is_some_and(|n| n > 0 && n <= written));
        let mut all = vec![0u8; written];
        client.read_exact(&mut all).unwrap();
        assert_eq!(unacknowledged_bytes(listener.as_raw_fd()), None, "not a connected TCP socket");
    }

    #[test]
    fn a_socket_set_to_reset_drops_what_it_still_held_when_closed() {
        for reset in [false, true] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            // More than the client's window, never read before the server closes.
            server.set_nonblocking(true).unwrap();
            let mut writer = &server;
            while writer.write(&[7u8; 65536]).is_ok() {}
            if reset {
                reset_when_closed(server.as_raw_fd());
            }
            drop(server);
            let mut all = Vec::new();
            let ended = client.read_to_end(&mut all);
            if reset {
                let error = ended.expect_err("reset, not closed after all");
                assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
            } else {
                assert!(ended.is_ok(), "the kernel sends all it held, then closes: {ended:?}");
            }
        }
    }

    #[test]
    fn a_connection_dropped_with_bytes_unacknowledged_is_reset_and_one_without_is_closed() {
        // (request left unread, shut down before the drop)
        for (unread, shut_down) in [(false, false), (true, false), (false, true), (true, true)] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (mut server, _) = listener.accept().unwrap();
            // The proxy's side: a request the peer never reads, or one it has all of.
            client.set_nonblocking(true).unwrap();
            let mut writer = &client;
            if unread {
                while writer.write(&[7u8; 65536]).is_ok() {}
            } else {
                writer.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
                let mut head = [0u8; 18];
                server.read_exact(&mut head).unwrap();
            }
            let socket = client.as_raw_fd();
            let mut connection = ResetIfUnacknowledged::new(client, socket);
            if shut_down {
                // As hyper does before dropping: a shutdown never hides a request left unread.
                std::pin::Pin::new(&mut connection).note_shut_down();
                let _ = connection.shutdown(std::net::Shutdown::Write);
            }
            drop(connection);
            let mut rest = Vec::new();
            let ended = server.read_to_end(&mut rest);
            if unread {
                let error = ended.expect_err("reset, not the rest of the request and a close");
                assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "shut down first: {shut_down}");
            } else {
                assert!(ended.is_ok(), "closed the usual way (shut down first: {shut_down}): {ended:?}");
            }
        }
    }
}
