#!/usr/bin/env bash
# hookline measured with standard tools instead of hookline-bench's own client and receiver
# (issue 14): ApacheBench (`ab -k`) sends the events, nginx answering 200 receives the
# deliveries. The case is hookline-bench's default one: SQLite, 1 webhook, 20,000 events of
# the same order.created body, 32 clients.
#
#   bench/external.sh [--server-bin PATH] [--events N] [-c N] [--webhooks N] [--json] [-- serve flags]
#
# It installs ab and nginx if they are missing (Debian: apache2-utils and nginx-light), runs
# nginx as a process of its own on a temporary config (never the system's service), starts
# `hookline serve` on a fresh temporary SQLite file, and cleans everything up on exit.
# See bench/README.md, "A standard load tool and receiver".
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/external.sh [--server-bin PATH] [--events N] [-c N] [--webhooks N] [--json] [-- serve flags]

  --server-bin PATH   the hookline binary to measure (default: target/release/hookline of this checkout)
  --events N          events ab sends (default 20000)
  -c, --concurrency N ab's concurrent keep-alive connections (default 32)
  --webhooks N        order.created webhooks to the nginx receiver, so deliveries per event (default 1)
  --json              print one JSON object on stdout instead of the report
  -- FLAGS            passed on to `hookline serve`
EOF
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
server_bin=$repo/target/release/hookline
events=20000
concurrency=32
webhooks=1
json=0
serve_args=()
while (($#)); do
  case $1 in
    --server-bin) server_bin=${2:?--server-bin needs a path}; shift 2 ;;
    --server-bin=*) server_bin=${1#*=}; shift ;;
    --events) events=${2:?--events needs a number}; shift 2 ;;
    --events=*) events=${1#*=}; shift ;;
    -c | --concurrency) concurrency=${2:?$1 needs a number}; shift 2 ;;
    --concurrency=*) concurrency=${1#*=}; shift ;;
    --webhooks) webhooks=${2:?--webhooks needs a number}; shift 2 ;;
    --webhooks=*) webhooks=${1#*=}; shift ;;
    --json) json=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; serve_args=("$@"); break ;;
    *) echo "external.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
for n in "$events" "$concurrency" "$webhooks"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "external.sh: not a positive number: $n" >&2; exit 2; }
done
((concurrency <= events)) || { echo "external.sh: -c must not exceed --events (ab refuses it)" >&2; exit 2; }
[[ -x $server_bin && -f $server_bin ]] || {
  echo "external.sh: no hookline binary at $server_bin: build it (cargo build --release) or name one with --server-bin" >&2
  exit 2
}

# Everything but the result goes to stderr, so that --json leaves stdout to the JSON.
say() { echo "external.sh: $*" >&2; }

tmp=""
server_pid=""
nginx_pid=""
policy_added=""

# Stop a child of ours: SIGTERM, up to $2 seconds to exit, then SIGKILL.
stop_child() {
  local pid=$1 grace=$2 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n $server_pid ]]; then stop_child "$server_pid" 20; fi
  if [[ -n $nginx_pid ]]; then stop_child "$nginx_pid" 10; fi
  if [[ -n $policy_added ]]; then rm -f /usr/sbin/policy-rc.d; fi
  if [[ -n $tmp ]]; then rm -rf -- "$tmp"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Fail with the tail of what the server and nginx said, which is gone after cleanup.
die() {
  say "$*"
  local f
  for f in "$tmp/server.log" "$tmp/nginx-error.log" "$tmp/ab.err"; do
    if [[ -s $f ]]; then
      echo "--- last lines of ${f##*/}:" >&2
      tail -n 20 "$f" >&2
    fi
  done
  exit 1
}

# --- The documented setup: ab and nginx from Debian's packages --------------------------

nginx_bin=$(command -v nginx || echo /usr/sbin/nginx) # /usr/sbin is not on every user's PATH
if ! command -v ab >/dev/null || [[ ! -x $nginx_bin ]]; then
  ((EUID == 0)) || { echo "external.sh: installing ab and nginx needs root: apt-get install -y nginx-light apache2-utils" >&2; exit 2; }
  say "installing nginx-light and apache2-utils"
  # Debian's nginx package starts its system service on install (port 80, /var/log/nginx).
  # This benchmark runs nginx as a process of its own, so keep the service from starting: a
  # policy-rc.d answering 101 ("action forbidden") is Debian's way for both init systems.
  # Containers often have one already; if not, one is put there for the install only.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    policy_added=1
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
  fi
  export DEBIAN_FRONTEND=noninteractive
  # A fresh machine has no package lists yet; Debian 13 dropped nginx-light (nginx is as small).
  apt-get install -y -q nginx-light apache2-utils >&2 ||
    { apt-get update -q >&2 && apt-get install -y -q nginx-light apache2-utils >&2; } ||
    apt-get install -y -q nginx apache2-utils >&2
  if [[ -n $policy_added ]]; then rm -f /usr/sbin/policy-rc.d; policy_added=""; fi
  nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
fi
if ! command -v ab >/dev/null || [[ ! -x $nginx_bin ]]; then
  echo "external.sh: ab or nginx still missing after the install" >&2
  exit 1
fi
command -v curl >/dev/null || { echo "external.sh: needs curl" >&2; exit 2; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/hookline-external.XXXXXX")

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# CPU seconds (utime + stime, all threads) of a live process, from /proc/PID/stat.
cpu_seconds() {
  python3 - "$1" "$(getconf CLK_TCK)" <<'EOF'
import sys
stat = open(f"/proc/{sys.argv[1]}/stat").read()
fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
print((int(fields[11]) + int(fields[12])) / int(sys.argv[2]))
EOF
}

# User + system CPU seconds of this shell's finished children so far, from the second line of
# bash's `times` saved to file $1. `times` must run in this shell: in a subshell (a pipeline,
# $(...)) it counts that subshell's children only.
children_cpu() {
  python3 - "$1" <<'EOF'
import re, sys
line = open(sys.argv[1]).read().splitlines()[1]
print(sum(int(m) * 60 + float(s) for m, s in re.findall(r"(\d+)m([\d.]+)s", line)))
EOF
}

# --- The receiver: nginx answering 200, one worker, logging each request's time -------------

nginx_port=$(free_port)
mkdir -p "$tmp/nginx"
# Only what the measurement needs differs from nginx's defaults:
# - one worker process: the machines this is run on have 2 cores, which the server, ab and
#   nginx share; hookline-bench's receiver is one thread too.
# - the access log has $msec, the time of each delivery's answer (ms resolution), and the
#   connection's serial number, to count the connections hookline opened. It is buffered
#   (64 KiB, flushed at least every second): a write per request would add a system call per
#   delivery to the receiver's cost, which comes out of the server's share of the 2 cores.
#   Buffering changes when the times are written, not the times, and the wait below allows
#   for the second.
# - keepalive_requests stays at nginx's default (1000): hookline reconnects after every 1000
#   deliveries on a connection, as it would to a stock nginx.
# - `return 200` answers without reading the body into a file (nginx discards it).
cat >"$tmp/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx-error.log warn;
events {
    worker_connections 1024;
}
http {
    log_format deliveries '\$msec \$status \$request_method \$request_uri \$connection';
    access_log $tmp/access.log deliveries buffer=64k flush=1s;
    client_body_temp_path $tmp/nginx/body;
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            return 200;
        }
        location = /ready {
            access_log off;
            return 204;
        }
    }
}
EOF
: >"$tmp/access.log"
"$nginx_bin" -p "$tmp/nginx/" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx-error.log" </dev/null >/dev/null 2>>"$tmp/nginx-error.log" &
nginx_pid=$!
receiver=http://127.0.0.1:$nginx_port
for ((i = 0; ; i++)); do
  curl -sf -o /dev/null "$receiver/ready" && break
  kill -0 "$nginx_pid" 2>/dev/null || die "nginx exited at start"
  ((i < 100)) || die "nginx did not answer on $receiver within 10 s"
  sleep 0.1
done

# --- The server under test: hookline serve on a fresh SQLite file --------------------------

# As hookline-bench starts it (bench/src/server.rs): port 0, a random secret key and admin
# token, loopback targets allowed over http, and a log line that tells the bound address.
: >"$tmp/server.log" # before the child opens it: the loop below may read it first
admin_token="bench-$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
HOOKLINE_SECRET_KEY=$(head -c 32 /dev/urandom | base64) \
  HOOKLINE_ADMIN_TOKEN=$admin_token \
  HOOKLINE_LOG_FORMAT=pretty \
  RUST_LOG=warn,hookline::app=info \
  "$server_bin" serve --listen 127.0.0.1:0 --role all --allow-target-cidr 127.0.0.1/32 \
  --database-url "sqlite://$tmp/bench.db" "${serve_args[@]}" \
  </dev/null >"$tmp/server.out" 2>"$tmp/server.log" &
server_pid=$!
base=""
for ((i = 0; ; i++)); do
  # "hookline is listening address=127.0.0.1:PORT", maybe with colour codes around it.
  base=$(sed 's/\x1b\[[0-9;]*m//g' "$tmp/server.log" | sed -n 's/.*address=\([0-9.:]*\).*/http:\/\/\1/p' | head -n 1 || true)
  [[ -n $base ]] && break
  kill -0 "$server_pid" 2>/dev/null || die "the server exited before it was listening"
  ((i < 300)) || die "the server did not say where it listens within 30 s"
  sleep 0.1
done
say "hookline at $base (pid $server_pid), nginx at $receiver (pid $nginx_pid)"

# A project, its API key, and --webhooks webhooks for order.created to nginx.
project=$(curl -sS --fail-with-body -X POST -H "Authorization: Bearer $admin_token" \
  -H 'Content-Type: application/json' --data '{"name":"external-bench"}' "$base/v1/admin/projects") ||
  die "creating the project failed: $project"
api_key=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["api_key"])' <<<"$project")
for ((i = 0; i < webhooks; i++)); do
  answer=$(curl -sS --fail-with-body -X POST -H "Authorization: Bearer $api_key" -H 'Content-Type: application/json' \
    --data "{\"event\":\"order.created\",\"target_url\":\"$receiver/hook/$i\"}" "$base/v1/webhooks") ||
    die "creating webhook $i failed: $answer"
done

# hookline-bench's order.created (bench/src/main.rs, event_body): three line items and
# metadata, 499 bytes. ab sends the same body every time; without an Idempotency-Key each
# request is an event of its own.
printf '%s' '{"event_name":"order.created","data":{"order_id":"b10000","customer_id":"cus_8f14e45fceea167a5a36dedd4bea2543","currency":"EUR","total_amount":12990,"items":[{"sku":"SKU-TSHIRT-BLK-M","quantity":2,"unit_price":2495},{"sku":"SKU-HOODIE-GRY-L","quantity":1,"unit_price":5990},{"sku":"SKU-SOCKS-WHT-42","quantity":3,"unit_price":670}],"created_at":"2026-11-30T08:00:00Z","metadata":{"channel":"web","campaign":"black-friday-2026","coupon":"BF26","warehouse":"eu-central-1","note":"leave at the door"}}}' >"$tmp/body.json"

log_lines() { wc -l <"$tmp/access.log"; }

# Wait until nginx has logged $1 requests; fail after $2 seconds without a new one. On a
# terminal, show the progress of those past the first $3.
wait_for_log() {
  local want=$1 stall=$2 skip=${3:-0} have last=-1 since
  since=$(date +%s)
  while :; do
    have=$(log_lines)
    if ((have >= want)); then
      if [[ -t 2 && $last -ge 0 ]]; then printf '\r  %d/%d deliveries\n' $((have - skip)) $((want - skip)) >&2; fi
      return 0
    fi
    if ((have != last)); then
      last=$have
      since=$(date +%s)
      if [[ -t 2 ]]; then printf '\r  %d/%d deliveries ' $((have - skip)) $((want - skip)) >&2; fi
    elif (($(date +%s) - since > stall)); then
      die "only $have of $want requests reached nginx, none for ${stall} s"
    fi
    kill -0 "$server_pid" 2>/dev/null || die "the server exited"
    sleep 0.2
  done
}

# One event first, to fail with the server's own words if the body, the key or the webhook's
# target is refused (ab only counts non-2xx answers), and to see its deliveries arrive. It is
# before the measurement and left out of every figure.
status=$(curl -sS -o "$tmp/first.json" -w '%{http_code}' -X POST -H "Authorization: Bearer $api_key" \
  -H 'Content-Type: application/json' --data-binary "@$tmp/body.json" "$base/v1/events") ||
  die "sending the first event failed"
[[ $status == 202 ]] || die "the first event was answered $status: $(cat "$tmp/first.json")"
wait_for_log "$webhooks" 30
warmup=$(log_lines)

# --- The measurement -------------------------------------------------------------------

server_cpu_before=$(cpu_seconds "$server_pid")
# nginx's one worker, which does the receiving (the master only waits), for its CPU time.
nginx_worker=$(awk '{print $1}' "/proc/$nginx_pid/task/$nginx_pid/children" 2>/dev/null || true)
nginx_cpu_before=""
if [[ -n $nginx_worker ]]; then nginx_cpu_before=$(cpu_seconds "$nginx_worker"); fi
times >"$tmp/times.before" # ab (and a `date`) are the only children until the next `times`
say "ab -k -c $concurrency -n $events, $webhooks webhook(s) per event"
ab_start=$(date +%s.%N)
# -e: the percentage table as CSV, in fractions of a millisecond (the printed table rounds to
# whole ms). ab's progress lines and errors go to ab.err.
ab -k -c "$concurrency" -n "$events" -p "$tmp/body.json" -T application/json \
  -H "Authorization: Bearer $api_key" -e "$tmp/ab.csv" "$base/v1/events" \
  >"$tmp/ab.out" 2>"$tmp/ab.err" || die "ab failed"
times >"$tmp/times.after"
ab_cpu=$(python3 -c 'import sys; print(float(sys.argv[2]) - float(sys.argv[1]))' \
  "$(children_cpu "$tmp/times.before")" "$(children_cpu "$tmp/times.after")")

# ab's summary, checked before waiting: every request must have been answered 2xx (202).
# Responses whose length differs from the first one's are no failure here (ab's "Length"
# count): the answer's ids and timestamps may differ in length.
python3 - "$tmp/ab.out" "$tmp/ab.csv" "$events" >"$tmp/ab.json" <<'EOF' || die "ab's run was not clean: $(cat "$tmp/ab.json")"
import json, re, sys
out = open(sys.argv[1]).read()
events = int(sys.argv[3])
def num(label, default=None):
    m = re.search(rf"^{label}:\s+([\d.]+)", out, re.M)
    return float(m.group(1)) if m else default
failed = re.search(r"\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)", out)
connect, receive, length, exceptions = map(int, failed.groups()) if failed else (0, 0, 0, 0)
pct = dict(line.split(",") for line in open(sys.argv[2]).read().splitlines()[1:] if line)
r = {
    "complete": int(num("Complete requests", 0)),
    "non_2xx": int(num("Non-2xx responses", 0)),
    "failed": connect + receive + exceptions,
    "length_differs": length,
    "keep_alive_requests": int(num("Keep-Alive requests", 0)),
    "seconds": num("Time taken for tests"),
    "events_per_s": num("Requests per second"),
    "latency_ms": {k: float(pct[p]) for k, p in (("p50", "50"), ("p90", "90"), ("p99", "99"), ("max", "100"))},
}
print(json.dumps(r))
problems = []
if r["complete"] != events: problems.append(f"{r['complete']} of {events} requests completed")
if r["non_2xx"]: problems.append(f"{r['non_2xx']} answers were not 2xx")
if r["failed"]: problems.append(f"{r['failed']} requests failed (connect {connect}, receive {receive}, exceptions {exceptions})")
if problems:
    print("; ".join(problems), file=sys.stderr)
    sys.exit(1)
EOF

# Every event was accepted, so nginx must see events × webhooks deliveries after the first
# event's. A stall of 120 s means something was lost or is retrying.
expected=$((warmup + events * webhooks))
wait_for_log "$expected" 120 "$warmup"
# Read before the server is stopped: /proc/PID goes with the process.
server_cpu_after=$(cpu_seconds "$server_pid")
peak_rss_kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$server_pid/status")
nginx_cpu_after=""
if [[ -n $nginx_worker ]]; then nginx_cpu_after=$(cpu_seconds "$nginx_worker"); fi

python3 - "$tmp/ab.json" "$tmp/access.log" "$warmup" "$events" "$webhooks" "$concurrency" "$ab_start" \
  "$server_cpu_before" "$server_cpu_after" "$peak_rss_kb" "$ab_cpu" "$nginx_cpu_before" "$nginx_cpu_after" "$json" <<'EOF'
import json, sys
(ab_json, log, warmup, events, webhooks, concurrency, ab_start,
 cpu0, cpu1, rss_kb, ab_cpu, ng0, ng1, as_json) = sys.argv[1:]
ab = json.load(open(ab_json))
warmup, events, webhooks, concurrency = int(warmup), int(events), int(webhooks), int(concurrency)
ab_start = float(ab_start)
lines = open(log).read().splitlines()[warmup:]
times = [float(line.split()[0]) for line in lines]
non_200 = sum(1 for line in lines if line.split()[1] != "200")
connections = len({line.split()[4] for line in lines})
first, last = min(times), max(times)
seconds = last - first
from_start = last - ab_start
server_cpu = float(cpu1) - float(cpu0)
deliveries = events * webhooks
r = {
    "tool": "ab -k + nginx",
    "backend": "sqlite",
    "events": events,
    "concurrency": concurrency,
    "webhooks": webhooks,
    "ingest": ab,
    "delivery": {
        "expected": deliveries,
        "delivered": len(lines),
        "non_200": non_200,
        "connections": connections,
        "seconds": round(seconds, 3),
        "deliveries_per_s": round(len(lines) / seconds, 1) if seconds > 0 else None,
        "seconds_from_ab_start": round(from_start, 3),
        "deliveries_per_s_from_ab_start": round(len(lines) / from_start, 1) if from_start > 0 else None,
    },
    "server": {
        "cpu_seconds": round(server_cpu, 2),
        "cpu_us_per_event": round(1e6 * server_cpu / events, 1),
        "cpu_us_per_delivery": round(1e6 * server_cpu / deliveries, 1),
        "peak_rss_mb": round(int(rss_kb) / 1024, 1),
    },
    "ab": {"cpu_seconds": round(float(ab_cpu), 2), "cpu_us_per_event": round(1e6 * float(ab_cpu) / events, 1)},
    "nginx": ({"cpu_seconds": round(float(ng1) - float(ng0), 2),
               "cpu_us_per_delivery": round(1e6 * (float(ng1) - float(ng0)) / deliveries, 1)}
              if ng0 and ng1 else None),
}
if as_json == "1":
    print(json.dumps(r, indent=2))
else:
    i, d, s, lat = r["ingest"], r["delivery"], r["server"], r["ingest"]["latency_ms"]
    print(f"hookline with ab -k and nginx: sqlite, {webhooks} webhook(s) per event, {concurrency} connections")
    print(f"  ingest     {i['complete']} accepted in {i['seconds']:.2f} s = {i['events_per_s']:.0f} events/s (ab's requests/s), "
          f"{i['keep_alive_requests']} on kept-alive connections")
    print(f"             latency p50 {lat['p50']:.2f} ms  p90 {lat['p90']:.2f} ms  p99 {lat['p99']:.2f} ms  max {lat['max']:.2f} ms")
    print(f"  delivery   {d['delivered']}/{d['expected']} at nginx"
          + (f" ({d['non_200']} not answered 200)" if d["non_200"] else "")
          + f", over {d['connections']} connections hookline opened")
    print(f"             first to last in {d['seconds']:.2f} s = {d['deliveries_per_s']:.0f} deliveries/s")
    print(f"             from ab's start to the last in {d['seconds_from_ab_start']:.2f} s = "
          f"{d['deliveries_per_s_from_ab_start']:.0f} deliveries/s")
    print(f"  server     CPU {s['cpu_seconds']:.2f} s = {s['cpu_us_per_event']:.0f} µs/event, "
          + (f"{s['cpu_us_per_delivery']:.0f} µs/delivery, " if webhooks > 1 else "")
          + f"peak RSS {s['peak_rss_mb']:.1f} MB")
    nginx = r["nginx"]
    print(f"  tools      ab CPU {r['ab']['cpu_us_per_event']:.0f} µs/event"
          + (f", nginx CPU {nginx['cpu_us_per_delivery']:.0f} µs/delivery" if nginx else ""))
if len(lines) != deliveries or non_200:
    print(f"external.sh: expected {deliveries} deliveries answered 200, nginx logged {len(lines)} ({non_200} not 200)",
          file=sys.stderr)
    sys.exit(1)
EOF
