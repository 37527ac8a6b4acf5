#!/usr/bin/env bash
# Two Portcullis builds against each other (and nginx `proxy_pass` as a reference) at one
# connection, paired: in each repetition the three run back to back, in alternating order, and
# the p50 differences are taken within the repetition. For a change whose effect is smaller than
# the run-to-run noise of `bench/run.sh` (the p50 of one target moves by ±15 µs between
# repetitions on this VM; a difference of a few µs needs 40 repetitions to show).
#
#   bash bench/ab.sh OLD_BINARY NEW_BINARY
#   REPS=40 DURATION=2s CONNECTIONS=1 bash bench/ab.sh /tmp/before /tmp/after
#
# Build the two with `cargo build --release` and copy each binary away first. Same machine set-up
# as `bench/run.sh`: wrk on core 0, everything else on core 1; nginx returns a fixed body as the
# upstream of all three.
set -euo pipefail

A=${1:?the first binary} B=${2:?the second binary}
REPS=${REPS:-16} DURATION=${DURATION:-3s} CONNECTIONS=${CONNECTIONS:-1}
WORK=$(mktemp -d)
cleanup() {
  kill $(cat "$WORK/pids" 2>/dev/null) 2>/dev/null || true
  for i in up px; do nginx -p "$WORK/$i" -c "$WORK/$i/nginx.conf" -s stop 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq nginx-light wrk >/dev/null || apt-get install -y -qq nginx wrk >/dev/null
fi
if [ "$(nproc)" -ge 2 ]; then SERVERS="taskset -c 1" CLIENT="taskset -c 0"; else SERVERS="" CLIENT=""; fi

UPSTREAM=19180 NGINX=19181 PORT_A=19182 PORT_B=19183
mkdir -p "$WORK/up/logs" "$WORK/px/logs"
chmod 755 "$WORK"
cat > "$WORK/up/nginx.conf" <<NGINX
worker_processes 1; pid $WORK/up/nginx.pid; error_log $WORK/up/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UPSTREAM; location / { default_type text/plain; return 200 "hello from the upstream\n"; } }
}
NGINX
cat > "$WORK/px/nginx.conf" <<NGINX
worker_processes $(nproc); pid $WORK/px/nginx.pid; error_log $WORK/px/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream app { server 127.0.0.1:$UPSTREAM; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX;
    location / {
      proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$remote_addr;
    }
  }
}
NGINX
$SERVERS nginx -p "$WORK/up" -c "$WORK/up/nginx.conf"
$SERVERS nginx -p "$WORK/px" -c "$WORK/px/nginx.conf"

# Starts one build on `port` with its own data directory, signs in, prints the session cookie.
start() { # name binary port
  mkdir -p "$WORK/$1"
  cat > "$WORK/$1/proxy.toml" <<TOML
listen = "127.0.0.1:$3"
upstream = "http://127.0.0.1:$UPSTREAM"
public_url = "http://127.0.0.1:$3"
data_dir = "$WORK/$1/data"
trusted_proxies = ["127.0.0.1/32"]
[log]
level = "warn"
TOML
  echo "bench password 123" | "$2" --config "$WORK/$1/proxy.toml" user add bench --email bench@example.com >/dev/null
  $SERVERS "$2" --config "$WORK/$1/proxy.toml" > "$WORK/$1/out" 2> "$WORK/$1/err" &
  echo $! >> "$WORK/pids"
  for _ in $(seq 1 100); do grep -q listening "$WORK/$1/out" 2>/dev/null && break; sleep 0.1; done
  local base="http://127.0.0.1:$3" csrf
  csrf=$(curl -s -c "$WORK/$1/jar" "$base/.portcullis/login" | sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p')
  curl -s -o /dev/null -b "$WORK/$1/jar" -c "$WORK/$1/jar" -H "Origin: $base" --data-urlencode username=bench \
    --data-urlencode "password=bench password 123" --data-urlencode "csrf=$csrf" "$base/.portcullis/login"
  awk '$6 == "portcullis" { print "portcullis=" $7 }' "$WORK/$1/jar"
}
COOKIE_A=$(start a "$A" $PORT_A)
COOKIE_B=$(start b "$B" $PORT_B)
[ -n "$COOKIE_A" ] && [ -n "$COOKIE_B" ] || { echo "sign-in failed" >&2; cat "$WORK"/*/err >&2; exit 1; }

to_us() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); print v } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v*1000 } else if (v ~ /s$/) { sub(/s$/,"",v); print v*1000000 } }'; }
measure() { # wrk arguments: prints "req/s p50"
  local out
  out=$($CLIENT wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "$@")
  echo "$(echo "$out" | awk '/Requests\/sec/ { print $2 }') $(echo "$out" | awk '$1 == "50%" { print $2 }' | to_us)"
}
echo "warming up..." >&2
$CLIENT wrk -t1 -c8 -d2s -H "Cookie: $COOKIE_A" "http://127.0.0.1:$PORT_A/" >/dev/null
$CLIENT wrk -t1 -c8 -d2s -H "Cookie: $COOKIE_B" "http://127.0.0.1:$PORT_B/" >/dev/null
$CLIENT wrk -t1 -c8 -d2s "http://127.0.0.1:$NGINX/" >/dev/null
echo "measuring: $REPS paired repetitions of $DURATION at $CONNECTIONS connection(s)..." >&2
for rep in $(seq 1 "$REPS"); do
  order="a b nginx"
  [ $((rep % 2)) -eq 0 ] && order="nginx b a"
  for target in $order; do
    case $target in
      a) row=$(measure -H "Cookie: $COOKIE_A" "http://127.0.0.1:$PORT_A/") ;;
      b) row=$(measure -H "Cookie: $COOKIE_B" "http://127.0.0.1:$PORT_B/") ;;
      nginx) row=$(measure "http://127.0.0.1:$NGINX/") ;;
    esac
    echo "$rep $target $row" >> "$WORK/rows"
  done
done

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
minus() { awk -v x="$1" -v y="$2" '$2 == x { a[$1] = $4 } $2 == y { b[$1] = $4 } END { for (r in a) print a[r] - b[r] }' "$WORK/rows"; }
over() { awk -v x="$1" -v y="$2" '$2 == x { a[$1] = $3 } $2 == y { b[$1] = $3 } END { for (r in a) print a[r] / b[r] }' "$WORK/rows"; }
echo
echo "## $CONNECTIONS connection(s), $REPS x $DURATION paired; a = $A, b = $B"
for target in a b nginx; do
  printf '%-6s req/s %8.0f   p50 %6.1f µs\n' "$target" \
    "$(awk -v t=$target '$2 == t { print $3 }' "$WORK/rows" | median)" "$(awk -v t=$target '$2 == t { print $4 }' "$WORK/rows" | median)"
done
printf 'p50 b minus a, paired: %+.1f µs (b faster in %s of %s); req/s b / a: %.3fx\n' \
  "$(minus b a | median)" "$(minus b a | awk '$1 < 0' | wc -l)" "$REPS" "$(over b a | median)"
printf 'p50 minus nginx, paired: a %+.1f µs, b %+.1f µs\n' "$(minus a nginx | median)" "$(minus b nginx | median)"
