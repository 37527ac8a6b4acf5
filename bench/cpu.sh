#!/usr/bin/env bash
# Where a proxied request's CPU goes: for nginx `proxy_pass` and for Portcullis, in turn, the CPU
# time (user and system) each process spends per request, and how often the proxy is preempted
# per request, read from /proc over a wrk run. The setup is bench/run.sh's (wrk on core 0; the
# upstream and the proxy sharing core 1), with one nginx worker, so each number is one process.
#
#   bash bench/cpu.sh                  # 3 pairs of 5 s runs at 16 connections
#   PAIRS=5 CONNECTIONS=64 bash bench/cpu.sh
#   BIN=/tmp/other/portcullis bash bench/cpu.sh   # another build, as it is
#
# Why it exists: on a shared core the upstream's CPU per request depends on the proxy. Each
# write to a sleeping upstream wakes it and the kernel runs it at once; it then finds one
# request or several, depending on how the proxy sends them. "preempted/req" shows that, and
# the upstream's CPU per request moves with it.
set -euo pipefail

PAIRS=${PAIRS:-3}
CONNECTIONS=${CONNECTIONS:-16}
DURATION=${DURATION:-5s}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
WORK=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  for instance in up px; do nginx -p "$WORK/$instance" -c "$WORK/$instance/nginx.conf" -s stop 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null || ! command -v curl >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq nginx-light wrk curl >/dev/null
fi
[ "$(nproc)" -ge 2 ] || { echo "needs two cores: wrk on one, the servers on the other" >&2; exit 1; }
if [ -z "${BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --quiet)
  BIN="$ROOT/target/release/portcullis"
fi

UPSTREAM_PORT=18680 NGINX_PORT=18681 PORTCULLIS_PORT=18682
mkdir -p "$WORK/up/logs" "$WORK/px/logs"
cat > "$WORK/up/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/up/nginx.pid;
error_log $WORK/up/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UPSTREAM_PORT; location / { default_type text/plain; return 200 "hello from the upstream\n"; } }
}
NGINX
cat > "$WORK/px/nginx.conf" <<NGINX
worker_processes 1;
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
}
NGINX
taskset -c 1 nginx -p "$WORK/up" -c "$WORK/up/nginx.conf"
taskset -c 1 nginx -p "$WORK/px" -c "$WORK/px/nginx.conf"
cat > "$WORK/proxy.toml" <<TOML
listen = "127.0.0.1:$PORTCULLIS_PORT"
upstream = "http://127.0.0.1:$UPSTREAM_PORT"
public_url = "http://127.0.0.1:$PORTCULLIS_PORT"
data_dir = "data"
[log]
level = "warn"
TOML
echo "bench password 123" | "$BIN" --config "$WORK/proxy.toml" user add bench --email bench@example.com >/dev/null
taskset -c 1 "$BIN" --config "$WORK/proxy.toml" > "$WORK/portcullis.out" 2> "$WORK/portcullis.err" &
PORTCULLIS_PID=$!
for _ in $(seq 1 100); do grep -q listening "$WORK/portcullis.out" 2>/dev/null && break; sleep 0.1; done
BASE="http://127.0.0.1:$PORTCULLIS_PORT"
CSRF=$(curl -s -c "$WORK/jar" "$BASE/.portcullis/login" | sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p')
curl -s -o /dev/null -b "$WORK/jar" -c "$WORK/jar" -H "Origin: $BASE" \
  --data-urlencode username=bench --data-urlencode "password=bench password 123" --data-urlencode "csrf=$CSRF" \
  "$BASE/.portcullis/login"
SESSION=$(awk '$6 == "portcullis" { print "portcullis=" $7 }' "$WORK/jar")
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: $SESSION" "$BASE/")" = 200 ] || { echo "login failed" >&2; exit 1; }

# The worker process of an nginx instance (its master's pid is in the pid file).
worker_of() { pgrep -P "$(cat "$WORK/$1/nginx.pid")" | head -1; }
UPSTREAM=$(worker_of up) NGINX_PROXY=$(worker_of px)
# Every thread's user and system clock ticks, and its involuntary context switches.
sample() { # pid -> "user_ticks system_ticks preempted"
  local user=0 system=0 preempted=0 task
  for task in /proc/$1/task/*; do
    read -r u s < <(awk '{ print $14, $15 }' "$task/stat")
    user=$((user + u)) system=$((system + s))
    preempted=$((preempted + $(awk '/^nonvoluntary_ctxt_switches/ { print $2 }' "$task/status")))
  done
  echo "$user $system $preempted"
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))
measure() { # name url proxy_pid [header]
  local before_proxy before_upstream after_proxy after_upstream out requests rps
  before_proxy=$(sample "$3") before_upstream=$(sample "$UPSTREAM")
  out=$(taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" ${4:+-H "$4"} "$2")
  after_proxy=$(sample "$3") after_upstream=$(sample "$UPSTREAM")
  requests=$(echo "$out" | awk '/requests in/ { print $1 }')
  rps=$(echo "$out" | awk '/Requests\/sec/ { print $2 }')
  echo "$1 $rps $before_proxy $after_proxy $before_upstream $after_upstream" | awk -v n="$requests" -v tick="$TICK_US" '{
    pu = ($6 - $3) * tick / n; ps = ($7 - $4) * tick / n; pp = ($8 - $5) / n
    uu = ($12 - $9) * tick / n; us = ($13 - $10) * tick / n
    printf "%-11s %9.0f %8.1f %8.1f %12.2f %10.1f %10.1f\n", $1, $2, pu, ps, pp, uu, us }'
}
wrk -t1 -c8 -d2s -H "Cookie: $SESSION" "$BASE/" >/dev/null
wrk -t1 -c8 -d2s "http://127.0.0.1:$NGINX_PORT/" >/dev/null
echo "## $CONNECTIONS connections, $PAIRS x $DURATION, alternating; µs of CPU per request (tick $TICK_US µs)"
printf '%-11s %9s %8s %8s %12s %10s %10s\n' proxy "req/s" "user" "system" "preempted/req" "up user" "up system"
for pair in $(seq 1 "$PAIRS"); do
  if [ $((pair % 2)) -eq 1 ]; then
    measure nginx "http://127.0.0.1:$NGINX_PORT/" "$NGINX_PROXY"
    measure portcullis "$BASE/" "$PORTCULLIS_PID" "Cookie: $SESSION"
  else
    measure portcullis "$BASE/" "$PORTCULLIS_PID" "Cookie: $SESSION"
    measure nginx "http://127.0.0.1:$NGINX_PORT/" "$NGINX_PROXY"
  fi
done
