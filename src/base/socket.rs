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
}
