#!/usr/bin/env python3
"""N browsers signing in with a password at the same time, over and over, until killed (SIGTERM; it then prints the answers it had) (users
storm0 .. stormN-1, password "storm password I", as bench/scale.sh adds them): each fetches the
login form (its CSRF cookie and token) and posts the password, as a browser does. Told to come
back later (a 429 or 503 with `Retry-After`, when more sign-ins wait than `login.queue_limit`),
it waits as long as asked, as the person reading that page would.

    python3 bench/login_storm.py HOST PORT N
"""
import asyncio
import re
import signal
import sys
import time
import urllib.parse

# Answers to the password form, by status: 303 signed in, 503/429 told to wait.
ANSWERS = {}
STARTED = time.monotonic()


async def exchange(host, port, request):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def browser(host, port, user):
    base = f"http://{host}:{port}"
    while True:
        page = await exchange(host, port, f"GET /.portcullis/login HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        head, _, body = page.partition(b"\r\n\r\n")
        cookies = "; ".join(m.group(1).decode() for m in re.finditer(rb"(?im)^set-cookie: ([^;\r\n]+)", head))
        token = re.search(rb'name="csrf" value="([^"]+)"', body)
        if not token:
            await asyncio.sleep(0.1)
            continue
        form = urllib.parse.urlencode({"username": f"storm{user}", "password": f"storm password {user}", "csrf": token.group(1).decode()})
        answer = await exchange(host, port, (
            f"POST /.portcullis/login HTTP/1.1\r\nHost: {host}:{port}\r\nOrigin: {base}\r\nCookie: {cookies}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(form)}\r\nConnection: close\r\n\r\n{form}"
        ).encode())
        # Told to wait ("Signing in is busy, try again in a moment"): a person waits as asked
        # before trying again, instead of hammering the form.
        status = answer[9:12].decode(errors="replace")
        ANSWERS[status] = ANSWERS.get(status, 0) + 1
        wait = re.search(rb"(?im)^retry-after: *(\d+)", answer.partition(b"\r\n\r\n")[0])
        if wait:
            await asyncio.sleep(int(wait.group(1)))


def report(*_):
    seconds = time.monotonic() - STARTED
    answers = ", ".join(f"{status}: {count}" for status, count in sorted(ANSWERS.items()))
    signed_in = ANSWERS.get("303", 0)
    print(f"  storm: {signed_in / seconds:.1f} sign-ins/s over {seconds:.1f} s ({answers})", file=sys.stderr)
    sys.exit(0)


async def main():
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    signal.signal(signal.SIGTERM, report)
    await asyncio.gather(*(browser(host, port, i) for i in range(n)))


asyncio.run(main())
