#!/usr/bin/env bash
# The scale goals of issue 16, each measured as a paired ratio between two Portcullis instances
# that differ only in what is measured (both on core 1 with the upstream; wrk on core 0):
#
#   sessions  throughput with 1,000,000 live sessions / with 1,000         (goal: 1.0, flat)
#   rules     throughput with 1,000 access rules / with 10                  (goal: 1.0, flat)
#   rss       resident memory with 100,000 live sessions, after load        (goal: <= 64 MiB)
#   storm     proxied p99 during 50 concurrent password sign-ins / idle p99 (goal: <= 2.0)
#
#   bash bench/scale.sh                 # everything
#   bash bench/scale.sh rules storm     # some of it
#   SESSIONS=200000 bash bench/scale.sh sessions
#
# Sessions are made by signing in once and copying that session's record under fresh random
# keys (bench/seed_sessions.py), through Redis and `portcullis admin migrate`, so a million need
# no million password hashes. Installs nginx, wrk and redis-server from Debian if missing.
set -euo pipefail
WHAT=${*:-sessions rules rss storm}
DURATION=${DURATION:-5s}
REPS=${REPS:-6}
SESSIONS=${SESSIONS:-1000000}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
WORK=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" -s stop 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
for tool in nginx wrk redis-server curl; do
  command -v $tool >/dev/null && continue
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq nginx-light wrk redis-server curl >/dev/null
  break
done
(cd "$ROOT" && cargo build --release --quiet)
BIN="$ROOT/target/release/portcullis"
PIN_SERVERS="" PIN_CLIENT=""
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then PIN_SERVERS="taskset -c 1" PIN_CLIENT="taskset -c 0"; fi

UPSTREAM_PORT=18480 REDIS_PORT=18479
mkdir -p "$WORK/up/logs"
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
$PIN_SERVERS nginx -p "$WORK/up" -c "$WORK/up/nginx.conf"

# instance NAME PORT [extra toml]: writes its config, adds the user.
instance() {
  mkdir -p "$WORK/$1"
  cat > "$WORK/$1/proxy.toml" <<TOML
listen = "127.0.0.1:$2"
upstream = "http://127.0.0.1:$UPSTREAM_PORT"
public_url = "http://127.0.0.1:$2"
data_dir = "$WORK/$1/data"
hosts = ["*.example.test"]
[proxy]
workers = 1
[log]
level = "warn"
${3:-}
TOML
  echo "bench password 123" | "$BIN" --config "$WORK/$1/proxy.toml" user add bench --email bench@example.com >/dev/null
}
start() { # NAME PORT
  $PIN_SERVERS "$BIN" --config "$WORK/$1/proxy.toml" > "$WORK/$1/out" 2> "$WORK/$1/err" &
  echo $! > "$WORK/$1/pid"
  for _ in $(seq 1 600); do grep -q listening "$WORK/$1/out" 2>/dev/null && return; sleep 0.1; done
  echo "$1 did not start" >&2; cat "$WORK/$1/err" >&2; exit 1
}
stop() { kill "$(cat "$WORK/$1/pid")"; wait "$(cat "$WORK/$1/pid")" 2>/dev/null || true; }
login() { # NAME PORT: prints the session cookie
  local base="http://127.0.0.1:$2" csrf
  csrf=$(curl -s -c "$WORK/$1/jar" "$base/.portcullis/login" | sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p')
  curl -s -o /dev/null -b "$WORK/$1/jar" -c "$WORK/$1/jar" -H "Origin: $base" --data-urlencode username=bench \
    --data-urlencode "password=bench password 123" --data-urlencode "csrf=$csrf" "$base/.portcullis/login"
  awk '$6 == "portcullis" { print "portcullis=" $7 }' "$WORK/$1/jar"
}
# seed NAME N: N live sessions in NAME's embedded store (NAME stopped, signed in once).
seed() {
  local redis="[store]
backend = \"redis\"
url = \"redis://127.0.0.1:$REDIS_PORT/0\"
key_prefix = \"$1:\""
  cp "$WORK/$1/proxy.toml" "$WORK/$1/plain.toml"
  printf '%s\n' "$redis" >> "$WORK/$1/proxy.toml"
  "$BIN" --config "$WORK/$1/proxy.toml" admin migrate --to redis >/dev/null
  python3 "$HERE/seed_sessions.py" "$REDIS_PORT" "$1:" "$2" >&2
  mv "$WORK/$1/data/store" "$WORK/$1/store.before"
  "$BIN" --config "$WORK/$1/proxy.toml" admin migrate --to sled >/dev/null
  mv "$WORK/$1/plain.toml" "$WORK/$1/proxy.toml"
}
rps() { $PIN_CLIENT wrk -t1 -c16 -d"$DURATION" -H "Cookie: $2" "$1" | awk '/Requests\/sec/ { print $2 }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f-%.2f", lo, hi }'; }
# paired A_URL A_COOKIE B_URL B_COOKIE: B/A throughput per repetition, alternating the order.
paired() {
  : > "$WORK/ratios"
  for rep in $(seq 1 "$REPS"); do
    if [ $((rep % 2)) -eq 1 ]; then a=$(rps "$1" "$2"); b=$(rps "$3" "$4"); else b=$(rps "$3" "$4"); a=$(rps "$1" "$2"); fi
    echo "$a $b" | awk '{ print $2 / $1 }' >> "$WORK/ratios"
    echo "  repetition $rep: $a vs $b req/s" >&2
  done
  printf '%.2fx (range %s)' "$(median < "$WORK/ratios")" "$(range < "$WORK/ratios")"
}
rss_mib() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$(cat "$WORK/$1/pid")/status"; }

echo "## bench/scale.sh: $(nproc) cores, $REPS x $DURATION paired, $(date -u +%Y-%m-%d)"
case " $WHAT " in *" sessions "*|*" rss "*)
  $PIN_SERVERS redis-server --port "$REDIS_PORT" --save '' --appendonly no --daemonize no > "$WORK/redis.log" &
  for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done ;;
esac

case " $WHAT " in *" sessions "*)
  instance few 18481; instance many 18482
  start few 18481; FEW=$(login few 18481); stop few
  start many 18482; MANY=$(login many 18482); stop many
  echo "seeding 1,000 and $SESSIONS sessions..." >&2
  seed few 1000; seed many "$SESSIONS"
  start few 18481; start many 18482
  wrk -t1 -c8 -d2s -H "Cookie: $FEW" http://127.0.0.1:18481/ >/dev/null; wrk -t1 -c8 -d2s -H "Cookie: $MANY" http://127.0.0.1:18482/ >/dev/null
  echo "sessions: $SESSIONS / 1,000 live sessions, throughput $(paired http://127.0.0.1:18481/ "$FEW" http://127.0.0.1:18482/ "$MANY") (RSS $(rss_mib few) MiB vs $(rss_mib many) MiB)"
  stop few; stop many ;;
esac

case " $WHAT " in *" rss "*)
  instance rss 18483
  start rss 18483; RSS_COOKIE=$(login rss 18483); stop rss
  seed rss 100000
  start rss 18483
  AT_START=$(rss_mib rss)
  wrk -t1 -c16 -d5s -H "Cookie: $RSS_COOKIE" http://127.0.0.1:18483/ >/dev/null
  echo "rss: 100,000 live sessions, after 5 s of load: $(rss_mib rss) MiB ($AT_START MiB once started)"
  stop rss ;;
esac

case " $WHAT " in *" rules "*)
  rules() { # N: N rules none of which matches (10 on the path, the rest for other hosts)
    for i in $(seq 1 "$1"); do
      if [ "$i" -le 10 ]; then printf '[[rule]]\npaths = ["/area-%s"]\naccess = "two_factor"\n' "$i"
      else printf '[[rule]]\nhosts = ["host-%s.example.test"]\naccess = "deny"\n' "$i"; fi
    done
  }
  instance ten 18484 "$(rules 10)"; instance thousand 18485 "$(rules 1000)"
  start ten 18484; start thousand 18485
  TEN=$(login ten 18484); THOUSAND=$(login thousand 18485)
  wrk -t1 -c8 -d2s -H "Cookie: $TEN" http://127.0.0.1:18484/ >/dev/null; wrk -t1 -c8 -d2s -H "Cookie: $THOUSAND" http://127.0.0.1:18485/ >/dev/null
  echo "rules: 1,000 / 10 access rules, throughput $(paired http://127.0.0.1:18484/ "$TEN" http://127.0.0.1:18485/ "$THOUSAND")"
  stop ten; stop thousand ;;
esac

case " $WHAT " in *" storm "*)
  instance storm 18486
  for i in $(seq 0 49); do
    echo "storm password $i" | "$BIN" --config "$WORK/storm/proxy.toml" user add "storm$i" --email "storm$i@example.com" >/dev/null
  done
  start storm 18486; STORM=$(login storm 18486)
  p99() { $PIN_CLIENT wrk -t1 -c16 -d"$DURATION" --latency -H "Cookie: $STORM" http://127.0.0.1:18486/ | awk '$1 == "99%" { print $2 }'; }
  : > "$WORK/storm.ratios"
  for rep in $(seq 1 "$REPS"); do
    idle=$(p99)
    # 50 browsers signing in with a password at once, again and again, while wrk measures.
    $PIN_CLIENT python3 "$HERE/login_storm.py" 127.0.0.1 18486 50 & STORMING=$!
    sleep 0.5
    busy=$(p99)
    kill "$STORMING" 2>/dev/null; wait "$STORMING" 2>/dev/null || true
    echo "  repetition $rep: p99 idle $idle, during the storm $busy" >&2
    echo "$idle $busy" | awk 'function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; return v * 1000000 } { print us($2) / us($1) }' >> "$WORK/storm.ratios"
  done
  echo "storm: proxied p99 during 50 concurrent password sign-ins / idle: $(median < "$WORK/storm.ratios")x (range $(range < "$WORK/storm.ratios"))"
  stop storm ;;
esac
