#!/usr/bin/env python3
"""N browsers signing in with a password at the same time, over and over, until killed (users
storm0 .. stormN-1, password "storm password I", as bench/scale.sh adds them): each fetches the login form (its CSRF cookie and token) and posts the password, as a browser does.

    python3 bench/login_storm.py HOST PORT N
"""
import asyncio
import re
import sys
import urllib.parse


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
        await exchange(host, port, (
            f"POST /.portcullis/login HTTP/1.1\r\nHost: {host}:{port}\r\nOrigin: {base}\r\nCookie: {cookies}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(form)}\r\nConnection: close\r\n\r\n{form}"
        ).encode())


async def main():
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    await asyncio.gather(*(browser(host, port, i) for i in range(n)))


asyncio.run(main())
