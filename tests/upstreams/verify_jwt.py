"""Verifies Portcullis identity assertions with PyJWT's PyJWKClient, as an upstream would.

Usage: verify_jwt.py JWKS_URL ISSUER AUDIENCE ALGORITHM

Reads one token per line on standard input and answers one JSON line for each:
{"ok": true, "kid": ..., "claims": {...}, "fetches": N} or {"ok": false, "error": ..., "fetches": N}.
One PyJWKClient serves every line, so its JWKS cache carries over from one token to the next;
`fetches` counts how often it fetched the key set (it refetches when a token names a kid it does
not know). Run by tests/it/identity_keys.rs.
"""

import json
import sys

import jwt


class CountingJWKClient(jwt.PyJWKClient):
    fetches = 0

    def fetch_data(self):
        CountingJWKClient.fetches += 1
        return super().fetch_data()


def main():
    url, issuer, audience, algorithm = sys.argv[1:5]
    client = CountingJWKClient(url)
    for line in sys.stdin:
        token = line.strip()
        if not token:
            continue
        try:
            key = client.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],  # pinned: never what the token says
                issuer=issuer,
                audience=audience,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
            reply = {"ok": True, "kid": jwt.get_unverified_header(token).get("kid"), "claims": claims}
        except Exception as e:  # the test reads the reason
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        reply["fetches"] = CountingJWKClient.fetches
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
