"""An ASGI application for Hypercorn that answers every request with what it saw, as JSON.

Hypercorn is the upstream the h2c tunnel attack was reproduced against: it accepts
`Upgrade: h2c` from any HTTP/1.1 client, so if Portcullis ever forwards that upgrade again, the
connection becomes an HTTP/2 tunnel the gate never sees (tests/it/attacks/tunnels.rs).
"""

import json


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    seen = {
        "http_version": scope["http_version"],
        "method": scope["method"],
        "path": scope["path"],
        "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
    }
    body = json.dumps(seen).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
