#!/usr/bin/env bash
# Instructions per proxied request in Portcullis' process, counted by callgrind: exact and
# repeatable where timings drift with whatever else the machine does. An authenticated GET over
# one keep-alive connection to an nginx upstream, N times after a warm-up of 500.
#
#   bash bench/instructions.sh            # N=3000
#   N=5000 bash bench/instructions.sh
#   KEEP=/tmp/cg.out bash bench/instructions.sh   # keep the profile for callgrind_annotate
#   BROWSER=1 bash bench/instructions.sh          # the 16 fields and three cookies a browser sends
#
# Installs nginx and valgrind from Debian if missing.
set -euo pipefail
N=${N:-3000}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
WORK=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" -s stop 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
for tool in nginx valgrind curl; do
  command -v $tool >/dev/null && continue
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq nginx-light valgrind curl >/dev/null
  break
done
(cd "$ROOT" && cargo build --release --quiet)
BIN="$ROOT/target/release/portcullis"
UPSTREAM_PORT=18580 PORT=18582
mkdir -p "$WORK/up/logs"
cat > "$WORK/up/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/up/nginx.pid;
error_log $WORK/up/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UPSTREAM_PORT; location / { default_type text/plain; return 200 "hello from the upstream\n"; } }
}
NGINX
nginx -p "$WORK/up" -c "$WORK/up/nginx.conf"
cat > "$WORK/proxy.toml" <<TOML
listen = "127.0.0.1:$PORT"
upstream = "http://127.0.0.1:$UPSTREAM_PORT"
public_url = "http://127.0.0.1:$PORT"
data_dir = "data"
[log]
level = "warn"
TOML
echo "bench password 123" | "$BIN" --config "$WORK/proxy.toml" user add bench --email bench@example.com >/dev/null
valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" --collect-atstart=yes \
  "$BIN" --config "$WORK/proxy.toml" > "$WORK/out" 2> "$WORK/err" &
VALGRIND=$!
BASE="http://127.0.0.1:$PORT"
for _ in $(seq 1 300); do curl -s -o /dev/null "$BASE/.portcullis/login" && break; sleep 0.2; done
CSRF=$(curl -s -c "$WORK/jar" "$BASE/.portcullis/login" | sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p')
curl -s -o /dev/null -b "$WORK/jar" -c "$WORK/jar" -H "Origin: $BASE" \
  --data-urlencode username=bench --data-urlencode "password=bench password 123" --data-urlencode "csrf=$CSRF" \
  "$BASE/.portcullis/login"
SESSION=$(awk '$6 == "portcullis" { print "portcullis=" $7 }' "$WORK/jar")
[ -n "$SESSION" ] || { echo "login failed" >&2; cat "$WORK/err" >&2; exit 1; }
requests() { # count
  python3 - "$1" "$SESSION" "$PORT" "${BROWSER:-}" <<'PY'
import http.client, sys
n, cookie, port, browser = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
path, headers = "/", {"Cookie": cookie}
if browser:
    # What Chromium sends for a page it navigates to.
    path, headers = "/wiki/Page?rev=2", {
        "Cookie": "theme=dark; " + cookie + "; lang=en",
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
        "Accept-Language": "en-US,en;q=0.9",
        "Referer": "http://127.0.0.1/wiki/Main",
        "Sec-Fetch-Dest": "document",
        "Sec-Fetch-Mode": "navigate",
        "Sec-Fetch-Site": "same-origin",
        "Sec-Fetch-User": "?1",
        "Upgrade-Insecure-Requests": "1",
        "Sec-Ch-Ua": '"Chromium";v="131"',
        "Sec-Ch-Ua-Mobile": "?0",
        "Sec-Ch-Ua-Platform": '"Linux"',
        "Priority": "u=0, i",
        "Cache-Control": "max-age=0",
    }
connection = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    response.read()
    assert response.status == 200, response.status
PY
}
requests 500
callgrind_control -z "$VALGRIND" >/dev/null 2>&1
requests "$N"
callgrind_control -d "$VALGRIND" >/dev/null 2>&1
DUMP=$(ls -t "$WORK"/callgrind.out* | head -1)
[ -z "${KEEP:-}" ] || cp "$DUMP" "$KEEP"
TOTAL=$(callgrind_annotate "$DUMP" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
echo "$((TOTAL / N)) instructions per proxied request ($N keep-alive GETs${BROWSER:+ with the fields a browser sends}, callgrind)"
echo "heaviest (inclusive):"
callgrind_annotate --inclusive=yes "$DUMP" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | sed -n '2,30p' | cut -c1-160
