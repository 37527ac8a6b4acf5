#!/usr/bin/env python3
"""Copies the one session stored in Redis N-1 times under fresh random keys, so a benchmark can
run with N live sessions without N sign-ins (a password hash each). Speaks RESP directly: no
client library to install.

    python3 bench/seed_sessions.py REDIS_PORT KEY_PREFIX N
"""
import os
import socket
import sys


def command(*parts):
    out = b"*%d\r\n" % len(parts)
    for p in parts:
        p = p if isinstance(p, bytes) else str(p).encode()
        out += b"$%d\r\n%s\r\n" % (len(p), p)
    return out


class Redis:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(1 << 16)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            self.buf += self.sock.recv(1 << 16)
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b":"):
            return rest
        if kind == b"-":
            raise SystemExit(f"redis: {rest.decode()}")
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        raise SystemExit(f"unexpected reply {line!r}")

    def call(self, *parts):
        self.sock.sendall(command(*parts))
        return self.reply()


def main():
    port, prefix, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    r = Redis(port)
    pattern = f"{prefix}sessions:*".encode()
    cursor, keys = b"0", []
    while True:
        cursor, batch = r.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        keys += batch
        if cursor == b"0":
            break
    if not keys:
        raise SystemExit("no session in the store: sign in first")
    value = r.call("GET", keys[0])
    base = f"{prefix}sessions:".encode()
    batch = []
    for i in range(n - len(keys)):
        batch.append(command("SET", base + os.urandom(32), value))
        if len(batch) == 10000:
            r.sock.sendall(b"".join(batch))
            for _ in batch:
                r.reply()
            batch = []
    if batch:
        r.sock.sendall(b"".join(batch))
        for _ in batch:
            r.reply()
    print(f"{n} sessions in the store")


main()
