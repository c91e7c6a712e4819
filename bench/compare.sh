#!/usr/bin/env bash
# Side by side: two hookline binaries under the same hookline-bench load, in
# alternating runs (A B, then B A, …), since this kind of machine drifts by up
# to 2× from hour to hour. Prints every run and, per binary, the medians; and
# the median over the pairs of B's figure divided by A's.
#
#   bench/compare.sh --a PATH --b PATH [--pairs N] [--postgres URL] [-- hookline-bench flags]
#
# --postgres URL: a server URL such as postgres://postgres@127.0.0.1:5432 ; each
# run gets a fresh database there (created and dropped with psql), with
# sslmode=disable. Results (one JSON per run) stay in $COMPARE_OUT if set.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench_bin=$repo/target/release/hookline-bench
a= b= pairs=5 postgres=
bench_args=()
while (($#)); do
  case $1 in
    --a) a=${2:?}; shift 2 ;;
    --b) b=${2:?}; shift 2 ;;
    --pairs) pairs=${2:?}; shift 2 ;;
    --postgres) postgres=${2:?}; shift 2 ;;
    --) shift; bench_args=("$@"); break ;;
    *) echo "compare.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ -x $a && -x $b ]] || { echo "compare.sh: --a and --b must name two hookline binaries" >&2; exit 2; }
out=${COMPARE_OUT:-$(mktemp -d)}
mkdir -p "$out"

# PostgreSQL's CPU seconds so far: its processes' own, and (cutime + cstime of
# the postmaster) that of the backends that ended, the benchmarked server's among them.
postgres_cpu() {
  local total=0 pid stat
  for pid in $(pgrep -x postgres); do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    total=$(awk -v t="$total" -v main="$( [[ $(ps -o ppid= -p "$pid" | tr -d ' ') == 1 ]] && echo 1 || echo 0)" \
      '{ sub(/.*\) /, ""); print t + ($12 + $13 + main * ($14 + $15)) / 100 }' <<<"$stat")
  done
  echo "$total"
}

run() { # run LABEL BINARY N
  local db_args=() db
  if [[ -n $postgres ]]; then
    db=hlcompare_$$_$3_$1
    PGOPTIONS='-c client_min_messages=warning' psql -q "$postgres/postgres" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    db_args=(--database-url "$postgres/$db?sslmode=disable")
  fi
  local pg_before
  [[ -z $postgres ]] || pg_before=$(postgres_cpu)
  "$bench_bin" --json --server-bin "$2" "${db_args[@]}" "${bench_args[@]}" >"$out/$1-$3.json" 2>"$out/$1-$3.err" ||
    { echo "compare.sh: run $1-$3 failed:" >&2; tail -5 "$out/$1-$3.err" >&2; exit 1; }
  if [[ -n $postgres ]]; then
    awk -v a="$pg_before" -v b="$(postgres_cpu)" 'BEGIN { print b - a }' >"$out/$1-$3.pg"
    psql -q "$postgres/postgres" -c "DROP DATABASE $db"
  fi
}

echo "$(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); a=$a b=$b; bench ${bench_args[*]}" >&2
for i in $(seq 1 "$pairs"); do
  if ((i % 2)); then run a "$a" "$i"; run b "$b" "$i"; else run b "$b" "$i"; run a "$a" "$i"; fi
  echo "pair $i done, load $(cut -d' ' -f1 /proc/loadavg)" >&2
done

python3 - "$out" "$pairs" <<'EOF'
import json, statistics, sys
out, pairs = sys.argv[1], int(sys.argv[2])
def fig(r):
    d, s = r["delivery"], r.get("server") or {}
    n = max(d["delivered"], 1)
    th = s.get("threads", {})
    w = th.get("sqlite-writer")
    return {
        "deliveries/s": d["deliveries_per_s"],
        "ingest p99 ms": r["ingest"]["latency_ms"]["p99"] if r["ingest"].get("latency_ms") else float("nan"),
        "server µs/delivery": 1e6 * s.get("cpu_seconds", 0) / n,
        "writer µs/delivery": 1e6 * (w["user"] + w["system"]) / n if w else float("nan"),
        "peak RSS MB": s.get("peak_rss_mb", 0),
    }
def load(k, i):
    f = fig(json.load(open(f"{out}/{k}-{i}.json")))
    try:
        pg = float(open(f"{out}/{k}-{i}.pg").read())
        f["postgres µs/delivery"] = 1e6 * pg / max(json.load(open(f"{out}/{k}-{i}.json"))["delivery"]["delivered"], 1)
    except FileNotFoundError:
        pass
    return f
runs = {k: [load(k, i) for i in range(1, pairs + 1)] for k in "ab"}
keys = list(runs["a"][0])
print("run  " + "  ".join(f"{k:>20}" for k in keys))
for i in range(pairs):
    for k in "ab":
        print(f"{k}{i + 1:<3} " + "  ".join(f"{runs[k][i][x]:>20.1f}" for x in keys))
for k in "ab":
    print(f"median {k} " + "  ".join(f"{statistics.median(r[x] for r in runs[k]):>18.1f}" for x in keys))
print("b/a, median of pairs " + "  ".join(
    f"{statistics.median(runs['b'][i][x] / runs['a'][i][x] for i in range(pairs) if runs['a'][i][x]):>8.3f}"
    for x in keys))
EOF
