#!/usr/bin/env python3
"""Memory per idle keep-alive connection: opens N connections to a URL, sends one request on
each (so each is a keep-alive connection between requests, as a browser leaves it), reads the
answer, keeps them all open, and reports the server's RSS growth per connection.

    python3 bench/idle_connections.py PID HOST PORT [N] [COOKIE]

PID is the server's process (RSS is read from /proc/PID/status).
"""
import asyncio
import resource
import sys


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


async def open_one(host, port, request):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    if not head.startswith(b"HTTP/1.1 2") and not head.startswith(b"HTTP/1.1 3"):
        raise SystemExit(f"unexpected answer: {head[:40]!r}")
    return reader, writer


async def main():
    pid, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 10000
    cookie = sys.argv[5] if len(sys.argv) > 5 else ""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n + 1000)), hard))
    request = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n".encode()
    if cookie:
        request += f"Cookie: {cookie}\r\n".encode()
    request += b"\r\n"
    # Warm up: the first connections grow pools and caches that are not per connection.
    warm = [await open_one(host, port, request) for _ in range(50)]
    for _, w in warm:
        w.close()
    await asyncio.sleep(0.5)
    before = rss_kib(pid)
    held = []
    for start in range(0, n, 500):
        held += await asyncio.gather(*(open_one(host, port, request) for _ in range(min(500, n - start))))
    await asyncio.sleep(1.0)
    after = rss_kib(pid)
    print(f"{n} idle keep-alive connections: RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB, "
          f"{(after - before) / n:.1f} KiB per connection")
    for _, w in held:
        w.close()


asyncio.run(main())
