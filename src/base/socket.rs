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
}
