#!/usr/bin/env python3
"""Walks the authorization code + PKCE flow against tests/oidc/provider.mjs
as a non-browser client with a cookie jar would, and prints every step and
the ID token's claims. Python's standard library only.

    python3 tests/oidc/walk.py [--login carol+mfa] [--issuer http://127.0.0.1:PORT]

Without --issuer it starts the provider itself (node tests/oidc/provider.mjs
0, needs `npm ci --prefix tests/oidc` first) with the client below, and
stops it at the end. With --issuer the provider must already have that
client (OIDC_CLIENT_ID/OIDC_CLIENT_SECRET/OIDC_REDIRECT_URIS as below).
Exits non-zero if any step is not what it should be.
"""

import argparse
import base64
import hashlib
import http.cookiejar
import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT_ID = "portcullis"
CLIENT_SECRET = "walk-secret"
REDIRECT_URI = "http://localhost:8080/.portcullis/login/oidc/test/callback"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def check(cond, message):
    if not cond:
        print(f"FAILED: {message}", file=sys.stderr)
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--issuer")
    ap.add_argument("--login", default="carol+mfa")
    args = ap.parse_args()

    proc = None
    issuer = args.issuer
    if issuer is None:
        env = dict(
            os.environ,
            OIDC_CLIENT_ID=CLIENT_ID,
            OIDC_CLIENT_SECRET=CLIENT_SECRET,
            OIDC_REDIRECT_URIS=REDIRECT_URI,
        )
        proc = subprocess.Popen(
            ["node", os.path.join(HERE, "provider.mjs"), "0"],
            env=env, stdout=subprocess.PIPE, text=True,
        )
        line = proc.stdout.readline().strip()
        check(line.startswith("listening http://127.0.0.1:"), f"ready line: {line!r}")
        print(f"provider: {line}")
        issuer = line.split(" ", 1)[1]

    try:
        walk(issuer, args.login)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)


def walk(issuer, login):
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)

    def request(method, url, data=None, headers=None):
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        try:
            with opener.open(req, timeout=10) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read()

    def cookies():
        return sorted(f"{c.name}(path={c.path})" for c in jar)

    # 1. discovery
    status, _, body = request("GET", f"{issuer}/.well-known/openid-configuration")
    check(status == 200, f"discovery status {status}")
    meta = json.loads(body)
    print(f"1. GET /.well-known/openid-configuration -> {status}")
    for key in ("issuer", "authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri",
                "code_challenge_methods_supported", "token_endpoint_auth_methods_supported",
                "authorization_response_iss_parameter_supported"):
        print(f"   {key}: {meta.get(key)}")

    # 2. authorize, with PKCE S256, state and nonce
    verifier = b64url(secrets.token_bytes(32))
    challenge = b64url(hashlib.sha256(verifier.encode()).digest())
    state, nonce = b64url(secrets.token_bytes(16)), b64url(secrets.token_bytes(16))
    authorize = meta["authorization_endpoint"] + "?" + urllib.parse.urlencode({
        "response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI,
        "scope": "openid email profile", "state": state, "nonce": nonce,
        "code_challenge": challenge, "code_challenge_method": "S256",
    })
    status, headers, _ = request("GET", authorize)
    interaction = urllib.parse.urljoin(authorize, headers.get("Location", ""))
    print(f"2. GET {authorize}\n   -> {status} Location: {headers.get('Location')}\n   cookies: {cookies()}")
    check(status == 303 and "/interaction/" in interaction, "authorize should redirect to /interaction/<uid>")

    # 3. the interaction page (optional for a client; shows the form)
    status, _, body = request("GET", interaction)
    print(f"3. GET {interaction} -> {status} ({len(body)} bytes of HTML form)")
    check(status == 200, "interaction page")

    # 4. log in: consent is granted in the same step
    status, headers, _ = request("POST", interaction + "/login", {"login": login, "password": "x"},
                                 {"Content-Type": "application/x-www-form-urlencoded"})
    resume = urllib.parse.urljoin(interaction, headers.get("Location", ""))
    print(f"4. POST {interaction}/login login={login} -> {status} Location: {headers.get('Location')}")
    check(status == 303 and "/auth/" in resume, "login should redirect back to /auth/<uid>")

    # 5. resume the authorization: redirect to the client with code and state
    status, headers, _ = request("GET", resume)
    callback = headers.get("Location", "")
    print(f"5. GET {resume}\n   -> {status} Location: {callback}\n   cookies: {cookies()}")
    check(status == 303 and callback.startswith(REDIRECT_URI + "?"), "resume should redirect to the redirect_uri")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(callback).query))
    check(query.get("state") == state, "state comes back")
    check(query.get("iss") == meta["issuer"], "iss comes back (RFC 9207)")
    check("code" in query, f"code in callback: {query}")

    # 6. token endpoint: client_secret_basic + code_verifier
    basic = base64.b64encode(
        f"{urllib.parse.quote(CLIENT_ID, safe='')}:{urllib.parse.quote(CLIENT_SECRET, safe='')}".encode()
    ).decode()
    status, _, body = request("POST", meta["token_endpoint"], {
        "grant_type": "authorization_code", "code": query["code"],
        "redirect_uri": REDIRECT_URI, "code_verifier": verifier,
    }, {"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"})
    tokens = json.loads(body)
    print(f"6. POST {meta['token_endpoint']} -> {status}: "
          f"{ {k: (v if k in ('token_type', 'expires_in', 'scope') else '...') for k, v in tokens.items()} }")
    check(status == 200 and "id_token" in tokens, "token response")

    header_b64, claims_b64, _ = tokens["id_token"].split(".")
    header = json.loads(b64url_decode(header_b64))
    claims = json.loads(b64url_decode(claims_b64))
    print(f"   id_token header: {json.dumps(header)}")
    print(f"   id_token claims: {json.dumps(claims, indent=2)}")
    check(claims["iss"] == meta["issuer"] and claims["aud"] == CLIENT_ID and claims["nonce"] == nonce,
          "iss/aud/nonce")
    check(claims["sub"] == login.removesuffix("+mfa"), "sub is the account id")
    check(claims["amr"] == (["pwd", "mfa"] if login.endswith("+mfa") else ["pwd"]), "amr")

    # 7. userinfo with the access token
    status, _, body = request("GET", meta["userinfo_endpoint"],
                              headers={"Authorization": f"Bearer {tokens['access_token']}"})
    print(f"7. GET {meta['userinfo_endpoint']} -> {status}: {body.decode()}")
    check(status == 200, "userinfo")

    # 8. the code is single-use
    status, _, body = request("POST", meta["token_endpoint"], {
        "grant_type": "authorization_code", "code": query["code"],
        "redirect_uri": REDIRECT_URI, "code_verifier": verifier,
    }, {"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"})
    print(f"8. the same code again -> {status}: {body.decode()}")
    check(status == 400, "code reuse refused")
    print("OK")


if __name__ == "__main__":
    main()
