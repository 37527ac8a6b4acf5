#!/usr/bin/env bash
# Measures an authenticated GET through Portcullis against the same GET through nginx
# `proxy_pass`, through nginx asking Portcullis first (`auth_request`, forward-auth), and straight
# to the upstream, in one run, on loopback.
#
#   bash bench/run.sh            # 8 paired repetitions of 5 s per measurement
#   DURATION=10s REPS=6 bash bench/run.sh
#   EXTRA_TOML='[proxy]\nupstream_receive_buffer_bytes = 1048576' bash bench/run.sh
#   RULES=1000 bash bench/run.sh # with that many access rules, none of which matches the request
#                                # (up to 10 path rules every request must look at; the rest for
#                                # other hosts, which the host index skips)
#
# Installs nginx and wrk from Debian packages if they are missing. The upstream is nginx serving
# a small fixed response, so the proxies, not the app, are what is measured. On two or more
# cores, wrk runs on core 0 and every server (upstream, nginx, Portcullis) shares core 1, so the
# client never competes with what it measures. Three passes: 16 and 64 connections (requests/s),
# and 1 connection (p50 with no queueing: the cost each proxy adds per request).
set -euo pipefail

DURATION=${DURATION:-5s}
REPS=${REPS:-8}
RULES=${RULES:-0}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
WORK=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  for instance in up px; do nginx -p "$WORK/$instance" -c "$WORK/$instance/nginx.conf" -s stop 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  echo "installing nginx and wrk..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq nginx-light wrk >/dev/null || apt-get install -y -qq nginx wrk >/dev/null
fi
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }

echo "building portcullis (release)..." >&2
(cd "$ROOT" && cargo build --release --quiet)
BIN="$ROOT/target/release/portcullis"

UPSTREAM_PORT=18080 NGINX_PORT=18081 PORTCULLIS_PORT=18082 AUTH_PORT=18083
# Two nginx instances: the upstream, and nginx-as-proxy. Were they one instance, nginx could proxy
# to itself inside one worker's event loop, an advantage no separate upstream gives a proxy.
mkdir -p "$WORK/up/logs" "$WORK/px/logs"
cat > "$WORK/up/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/up/nginx.pid;
error_log $WORK/up/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UPSTREAM_PORT;
    location / { default_type text/plain; return 200 "hello from the upstream\n"; }
    location = /big { default_type application/octet-stream; alias $WORK/up/big.bin; }
  }
}
NGINX
head -c 1048576 /dev/urandom > "$WORK/up/big.bin"
# nginx's workers drop root: they must be able to read it.
chmod 755 "$WORK" "$WORK/up" && chmod 644 "$WORK/up/big.bin"
cat > "$WORK/px/nginx.conf" <<NGINX
worker_processes $(nproc);
pid $WORK/px/nginx.pid;
error_log $WORK/px/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream app { server 127.0.0.1:$UPSTREAM_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
    }
  }
  # Forward-auth: the same proxy_pass, after asking Portcullis (as deploy/nginx/forward-auth.conf).
  upstream portcullis { server 127.0.0.1:$PORTCULLIS_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$AUTH_PORT;
    location = /.portcullis/auth {
      internal;
      proxy_pass http://portcullis;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Original-URL \$scheme://\$http_host\$request_uri;
      proxy_set_header X-Original-Method \$request_method;
      proxy_set_header X-Forwarded-For \$remote_addr;
    }
    location / {
      auth_request /.portcullis/auth;
      auth_request_set \$portcullis_user \$upstream_http_x_forwarded_user;
      auth_request_set \$portcullis_assertion \$upstream_http_x_portcullis_assertion;
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-User \$portcullis_user;
      proxy_set_header X-Portcullis-Assertion \$portcullis_assertion;
    }
  }
}
NGINX
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  PIN_SERVERS="taskset -c 1" PIN_CLIENT="taskset -c 0" PINNING="wrk on core 0, servers on core 1"
else
  PIN_SERVERS="" PIN_CLIENT="" PINNING="not pinned"
fi
$PIN_SERVERS nginx -p "$WORK/up" -c "$WORK/up/nginx.conf"
$PIN_SERVERS nginx -p "$WORK/px" -c "$WORK/px/nginx.conf"

cat > "$WORK/proxy.toml" <<TOML
listen = "127.0.0.1:$PORTCULLIS_PORT"
upstream = "http://127.0.0.1:$UPSTREAM_PORT"
public_url = "http://127.0.0.1:$PORTCULLIS_PORT"
data_dir = "data"
hosts = ["*.example.test"]
trusted_proxies = ["127.0.0.1/32"]
[log]
level = "warn"
TOML
for i in $(seq 1 "$RULES"); do
  if [ "$i" -le 10 ]; then
    printf '[[rule]]\npaths = ["/area-%s"]\naccess = "two_factor"\n' "$i"
  else
    printf '[[rule]]\nhosts = ["host-%s.example.test"]\naccess = "deny"\n' "$i"
  fi
done >> "$WORK/proxy.toml"
# EXTRA_TOML: more settings, e.g. EXTRA_TOML='[proxy]\nupstream_receive_buffer_bytes = 1048576'.
printf '%b\n' "${EXTRA_TOML:-}" >> "$WORK/proxy.toml"
echo "bench password 123" | "$BIN" --config "$WORK/proxy.toml" user add bench --email bench@example.com >/dev/null
$PIN_SERVERS "$BIN" --config "$WORK/proxy.toml" > "$WORK/portcullis.out" 2> "$WORK/portcullis.err" &
for _ in $(seq 1 100); do grep -q listening "$WORK/portcullis.out" 2>/dev/null && break; sleep 0.1; done

# Sign in like a browser: fetch the form (CSRF cookie + token), post it, keep the session cookie.
BASE="http://127.0.0.1:$PORTCULLIS_PORT"
CSRF=$(curl -s -c "$WORK/jar" "$BASE/.portcullis/login" | sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p')
curl -s -o /dev/null -b "$WORK/jar" -c "$WORK/jar" -H "Origin: $BASE" \
  --data-urlencode username=bench --data-urlencode "password=bench password 123" --data-urlencode "csrf=$CSRF" \
  "$BASE/.portcullis/login"
SESSION=$(awk '$6 == "portcullis" { print "portcullis=" $7 }' "$WORK/jar")
[ -n "$SESSION" ] || { echo "login failed" >&2; cat "$WORK/portcullis.err" >&2; exit 1; }
STATUS=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: $SESSION" "$BASE/")
[ "$STATUS" = 200 ] || { echo "authenticated GET returned $STATUS" >&2; exit 1; }
STATUS=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: $SESSION" "http://127.0.0.1:$AUTH_PORT/")
[ "$STATUS" = 200 ] || { echo "authenticated GET through nginx auth_request returned $STATUS" >&2; exit 1; }
STATUS=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$AUTH_PORT/")
[ "$STATUS" = 401 ] || { echo "anonymous GET through nginx auth_request returned $STATUS, not 401" >&2; exit 1; }

# wrk prints "Requests/sec: N" and, with --latency, lines like "50%  1.23ms".
to_us() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); print v } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v*1000 } else if (v ~ /s$/) { sub(/s$/,"",v); print v*1000000 } }'; }
measure() { # name url connections threads [header]
  local out
  if [ -n "${5:-}" ]; then
    out=$($PIN_CLIENT wrk -t"$4" -c"$3" -d"$DURATION" --latency -H "$5" "$2")
  else
    out=$($PIN_CLIENT wrk -t"$4" -c"$3" -d"$DURATION" --latency "$2")
  fi
  local rps p50 p99 errors
  rps=$(echo "$out" | awk '/Requests\/sec/ { print $2 }')
  p50=$(echo "$out" | awk '$1 == "50%" { print $2 }' | to_us)
  p99=$(echo "$out" | awk '$1 == "99%" { print $2 }' | to_us)
  errors=$(echo "$out" | awk '/Non-2xx/ { print $5 }')
  echo "$1 $rps $p50 $p99 ${errors:-0}"
}

echo "warming up..." >&2
wrk -t1 -c8 -d2s -H "Cookie: $SESSION" "$BASE/" >/dev/null
wrk -t1 -c8 -d2s "http://127.0.0.1:$NGINX_PORT/" >/dev/null

# Paired measurements: in each repetition every target runs back to back, in alternating order,
# and the ratio is taken within the repetition, so drift of the machine (thermal, other load)
# cancels out. The median of the ratios is the result; the range shows how much to trust it.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f-%.2f", lo, hi }'; }
# PASSES: connections:wrk-threads to measure, e.g. PASSES="16:1" (empty: only the 1 MiB pass).
for pass in ${PASSES-16:1 64:1 1:1}; do
  set -- ${pass/:/ }
  echo "measuring $1 connection(s): $REPS paired repetitions of $DURATION..." >&2
  : > "$WORK/rows"
  for rep in $(seq 1 "$REPS"); do
    targets="direct nginx portcullis nginx+auth"
    [ $((rep % 2)) -eq 0 ] && targets="nginx+auth portcullis nginx direct"
    for target in $targets; do
      case $target in
        direct) row=$(measure direct "http://127.0.0.1:$UPSTREAM_PORT/" "$1" "$2") ;;
        nginx) row=$(measure nginx "http://127.0.0.1:$NGINX_PORT/" "$1" "$2") ;;
        portcullis) row=$(measure portcullis "$BASE/" "$1" "$2" "Cookie: $SESSION") ;;
        nginx+auth) row=$(measure nginx+auth "http://127.0.0.1:$AUTH_PORT/" "$1" "$2" "Cookie: $SESSION") ;;
      esac
      echo "$rep $row" >> "$WORK/rows"
    done
  done
  echo
  echo "## $1 connection(s), $2 wrk thread(s), $REPS x $DURATION paired, $(nproc) cores ($PINNING), $RULES access rule(s)"
  printf '%-11s %12s %10s %10s %8s\n' target "req/s" "p50 µs" "p99 µs" non-2xx
  for target in direct nginx portcullis nginx+auth; do
    rps=$(awk -v t="$target" '$2 == t { print $3 }' "$WORK/rows" | median)
    p50=$(awk -v t="$target" '$2 == t { print $4 }' "$WORK/rows" | median)
    p99=$(awk -v t="$target" '$2 == t { print $5 }' "$WORK/rows" | median)
    errors=$(awk -v t="$target" '$2 == t { s += $6 } END { print s + 0 }' "$WORK/rows")
    printf '%-11s %12.0f %10.0f %10.0f %8s\n' "$target" "$rps" "$p50" "$p99" "$errors"
  done
  ratio() { # numerator denominator field: per repetition
    awk -v a="$1" -v b="$2" -v f="$3" '$2 == a { x[$1] = $f } $2 == b { y[$1] = $f } END { for (r in x) if (y[r] > 0) print x[r] / y[r] }' "$WORK/rows"
  }
  added() { # target: its p50 minus direct's, per repetition
    awk -v a="$1" '$2 == a { x[$1] = $4 } $2 == "direct" { y[$1] = $4 } END { for (r in x) print x[r] - y[r] }' "$WORK/rows"
  }
  printf 'portcullis/nginx throughput: %.2fx (range %s)\n' "$(ratio portcullis nginx 3 | median)" "$(ratio portcullis nginx 3 | range)"
  printf 'portcullis/nginx+auth throughput: %.2fx (range %s)\n' "$(ratio portcullis nginx+auth 3 | median)" "$(ratio portcullis nginx+auth 3 | range)"
  printf 'added p50 over direct: portcullis %+.0f µs, nginx %+.0f µs, nginx+auth %+.0f µs\n' \
    "$(added portcullis | median)" "$(added nginx | median)" "$(added nginx+auth | median)"
  # The latency goal compares the two proxies' p50 within each repetition; how many of the
  # repetitions Portcullis was not slower in says how far the median can be trusted.
  paired() { awk '$2 == "portcullis" { x[$1] = $4 } $2 == "nginx" { y[$1] = $4 } END { for (r in x) print x[r] - y[r] }' "$WORK/rows"; }
  printf 'p50 portcullis minus nginx, paired: %+.0f µs (range %s; not slower in %s of %s repetitions)\n' \
    "$(paired | median)" "$(paired | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%+.0f to %+.0f", lo, hi }')" \
    "$(paired | awk '$1 <= 0' | wc -l)" "$REPS"
done

# 1 MiB responses: MiB/s through each proxy (the same ratio as requests per second).
echo "measuring 1 MiB responses, 16 connections: $REPS paired repetitions of $DURATION..." >&2
: > "$WORK/big"
for rep in $(seq 1 "$REPS"); do
  if [ $((rep % 2)) -eq 1 ]; then
    n=$(measure nginx "http://127.0.0.1:$NGINX_PORT/big" 16 1 | awk '{ print $2 }')
    p=$(measure portcullis "$BASE/big" 16 1 "Cookie: $SESSION" | awk '{ print $2 }')
  else
    p=$(measure portcullis "$BASE/big" 16 1 "Cookie: $SESSION" | awk '{ print $2 }')
    n=$(measure nginx "http://127.0.0.1:$NGINX_PORT/big" 16 1 | awk '{ print $2 }')
  fi
  echo "$n $p" >> "$WORK/big"
done
echo
echo "## 1 MiB responses, 16 connections, $REPS x $DURATION paired"
printf 'nginx %.0f MiB/s, portcullis %.0f MiB/s\n' "$(awk '{ print $1 }' "$WORK/big" | median)" "$(awk '{ print $2 }' "$WORK/big" | median)"
printf 'portcullis/nginx MiB/s: %.2fx (range %s)\n' "$(awk '{ print $2 / $1 }' "$WORK/big" | median)" "$(awk '{ print $2 / $1 }' "$WORK/big" | range)"
