#!/usr/bin/env python3
"""A hostile OpenID provider for the attack tests: it answers like a provider, but its ID tokens
are wrong in the way the test asks for (another audience, another issuer, expired, another
nonce), so the test can check that the proxy refuses each one. The honest flows run against
panva's oidc-provider (provider.mjs); this one only lies.

    python3 tests/oidc/hostile_provider.py PORT CLIENT_ID CLIENT_SECRET

Prints `listening http://127.0.0.1:PORT` once it accepts connections. Tokens are HS256, signed
with the client secret (OpenID Connect Core §10.1), which it advertises in discovery, so the
signature verifies and only the claim under test is wrong. `POST /mode` with a body of
`good`, `aud`, `iss`, `expired` or `nonce` picks what the next tokens get wrong. Standard
library only.
"""

import base64
import hashlib
import hmac
import json
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, CLIENT_ID, SECRET = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ISSUER = f"http://127.0.0.1:{PORT}"
STATE = {"mode": "good", "nonces": {}}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def id_token(nonce: str) -> str:
    now = int(time.time())
    mode = STATE["mode"]
    claims = {
        "iss": "http://127.0.0.1:1" if mode == "iss" else ISSUER,
        "sub": "carol",
        "aud": "someone-else" if mode == "aud" else CLIENT_ID,
        "iat": now - 7200 if mode == "expired" else now,
        "exp": now - 3600 if mode == "expired" else now + 300,
        "auth_time": now,
        "nonce": "not-the-one-sent" if mode == "nonce" else nonce,
        "amr": ["pwd"],
    }
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *_):
        pass

    def answer(self, status, body=b"", content_type="application/json", headers=()):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path == "/.well-known/openid-configuration":
            document = {
                "issuer": ISSUER,
                "authorization_endpoint": f"{ISSUER}/auth",
                "token_endpoint": f"{ISSUER}/token",
                "jwks_uri": f"{ISSUER}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["HS256"],
            }
            return self.answer(200, json.dumps(document).encode())
        if url.path == "/jwks":
            return self.answer(200, b'{"keys":[]}')
        if url.path == "/auth":
            query = dict(urllib.parse.parse_qsl(url.query))
            code = b64(hashlib.sha256(query["state"].encode()).digest())
            STATE["nonces"][code] = query.get("nonce", "")
            target = f"{query['redirect_uri']}?{urllib.parse.urlencode({'code': code, 'state': query['state']})}"
            return self.answer(303, headers=[("location", target)])
        return self.answer(404)

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length).decode()
        if self.path == "/mode":
            STATE["mode"] = body.strip()
            return self.answer(204)
        if self.path == "/token":
            form = dict(urllib.parse.parse_qsl(body))
            nonce = STATE["nonces"].pop(form.get("code", ""), None)
            if nonce is None:
                return self.answer(400, b'{"error":"invalid_grant"}')
            tokens = {"access_token": "x", "token_type": "Bearer", "expires_in": 300, "id_token": id_token(nonce)}
            return self.answer(200, json.dumps(tokens).encode())
        return self.answer(404)


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print(f"listening {ISSUER}", flush=True)
server.serve_forever()
