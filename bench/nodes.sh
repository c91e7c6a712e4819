#!/usr/bin/env bash
# Several hookline nodes on one PostgreSQL database (issue 14): each node is a
# `hookline serve --role all`, and each gets a hookline-bench of its own
# (`--url`), with its own project, webhook, clients and receiver; they run at
# once. Reported: each bench's line, and the nodes together: every event
# accepted, over the longest run, and the nodes' CPU (utime + stime) per event.
#
#   bench/nodes.sh --database-url URL [--nodes N] [--server-bin PATH] [-- hookline-bench flags]
#
# Give it an empty database (like hookline-bench's --database-url): the nodes
# migrate it, and nothing is cleaned up in it. On a 2-core machine the nodes,
# the benches and PostgreSQL share the two cores; the figure says what the
# database and the machine allow, not what another machine per node would.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
server_bin=$repo/target/release/hookline
bench_bin=$repo/target/release/hookline-bench
nodes=2
database_url=
bench_args=()
while (($#)); do
  case $1 in
    --database-url) database_url=${2:?--database-url needs a URL}; shift 2 ;;
    --nodes) nodes=${2:?--nodes needs a number}; shift 2 ;;
    --server-bin) server_bin=${2:?--server-bin needs a path}; shift 2 ;;
    --) shift; bench_args=("$@"); break ;;
    *) echo "nodes.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ -n $database_url ]] || { echo "nodes.sh: --database-url is required (an empty PostgreSQL database)" >&2; exit 2; }
[[ $nodes =~ ^[1-9][0-9]*$ ]] || { echo "nodes.sh: --nodes must be a positive number" >&2; exit 2; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

admin_token=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
secret_key=$(head -c 32 /dev/urandom | base64)
export HOOKLINE_ADMIN_TOKEN=$admin_token HOOKLINE_SECRET_KEY=$secret_key
# A node's CPU time in seconds, from /proc (clock ticks of 100 Hz).
cpu_of() { awk '{ print ($14 + $15) / 100 }' "/proc/$1/stat"; }

urls=()
for i in $(seq 1 "$nodes"); do
  log=$work/node-$i.log
  RUST_LOG=warn,hookline::app=info HOOKLINE_LOG_FORMAT=pretty "$server_bin" serve --listen 127.0.0.1:0 --role all \
    --allow-target-cidr 127.0.0.1/32 --database-url "$database_url" 2>"$log" &
  pids+=("$!")
  # The node logs its address once it listens.
  for _ in $(seq 1 200); do
    addr=$(grep -o 'address=[0-9.:]*' "$log" | head -1 | cut -d= -f2 || true)
    [[ -n $addr ]] && break
    sleep 0.05
  done
  [[ -n $addr ]] || { echo "nodes.sh: node $i did not start:" >&2; cat "$log" >&2; exit 1; }
  urls+=("http://$addr")
done

before=()
for pid in "${pids[@]}"; do before+=("$(cpu_of "$pid")"); done
bench_pids=()
for i in $(seq 1 "$nodes"); do
  "$bench_bin" --url "${urls[$((i - 1))]}" --admin-token "$admin_token" --json "${bench_args[@]}" \
    >"$work/bench-$i.json" 2>"$work/bench-$i.err" &
  bench_pids+=("$!")
done
for pid in "${bench_pids[@]}"; do
  wait "$pid" || { echo "nodes.sh: a bench failed:" >&2; cat "$work"/bench-*.err >&2; exit 1; }
done
cpu=0
for j in "${!pids[@]}"; do
  cpu=$(awk -v a="$cpu" -v b="$(cpu_of "${pids[$j]}")" -v c="${before[$j]}" 'BEGIN { print a + b - c }')
done

python3 - "$cpu" "$work"/bench-*.json <<'EOF'
import json, sys
cpu = float(sys.argv[1])
runs = [json.load(open(p)) for p in sys.argv[2:]]
for i, r in enumerate(runs, 1):
    d, g = r["delivery"], r["ingest"]
    print(f"node {i}: {g['accepted']} events, {d['delivered']}/{d['expected']} delivered in {d['seconds']:.2f} s "
          f"= {d['deliveries_per_s']:.0f}/s; ingest p99 {g['latency_ms']['p99']} ms")
delivered = sum(r["delivery"]["delivered"] for r in runs)
seconds = max(r["delivery"]["seconds"] for r in runs)
print(f"together: {delivered} deliveries in {seconds:.2f} s = {delivered / seconds:.0f} deliveries/s; "
      f"nodes' CPU {cpu:.2f} s = {1e6 * cpu / delivered:.0f} µs per delivery (PostgreSQL's own not counted)")
EOF
