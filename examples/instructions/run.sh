#!/usr/bin/env bash
# `make instructions`: machine instructions per call through the executor, counted by
# valgrind's callgrind, so a cost can be compared on a noisy machine (CPU seconds drift
# between runs by more than the differences measured; instruction counts do not).
#
# For each configuration, the release executor runs under callgrind beside the example
# service and answers N1, then (a fresh executor) N2 sequential `echo.echo` calls over one
# keep-alive connection; (total(N2) - total(N1)) / (N2 - N1) is the cost of one call,
# start-up and shutdown cancelled out. Configurations:
#   b  no OTLP (as `make bench`'s b)
#   o  --otlp-endpoint, to a local collector that takes every export
#   r  --otlp-endpoint and --otlp-runs
# Usage: examples/instructions/run.sh [N1 N2]   (default 200 2200; about a minute each)
set -euo pipefail
cd "$(dirname "$0")/../.."
n1=${1:-200}
n2=${2:-2200}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
python3 examples/instructions/sink.py > "$work/port" &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/port" ] && break; sleep 0.1; done
collector="http://127.0.0.1:$(head -1 "$work/port")"

# instructions CONFIG CALLS: callgrind's total for one run.
instructions() {
  local config=$1 calls=$2 dir="$work/$1-$2" args=()
  case $config in
    o) args=(--otlp-endpoint "$collector") ;;
    r) args=(--otlp-endpoint "$collector" --otlp-runs) ;;
  esac
  mkdir -p "$dir"
  target/release/examples/echo_service --name echo --socket-dir "$dir/s" > /dev/null &
  local echo=$!
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
    target/release/hero_executor --socket-dir "$dir/s" --data-dir "$dir/d" --rate-limit-rps 0 "${args[@]}" \
    2> "$dir/valgrind.log" &
  local executor=$!
  for _ in $(seq 600); do [ -S "$dir/s/hero_executor/rpc.sock" ] && break; sleep 0.2; done
  # The catalog finds the example service.
  sleep 2
  python3 examples/instructions/drive.py "$dir/s/hero_executor/rpc.sock" "$calls"
  sleep 1
  kill -TERM "$executor"; wait "$executor" || true
  kill "$echo"; wait "$echo" 2>/dev/null || true
  grep -m1 '^totals:' "$dir/cg.out" | awk '{print $2}'
}

echo "configuration  instructions per call  vs b"
base=
for config in b o r; do
  low=$(instructions "$config" "$n1")
  high=$(instructions "$config" "$n2")
  per=$(( (high - low) / (n2 - n1) ))
  if [ -z "$base" ]; then base=$per; fi
  awk -v c="$config" -v p="$per" -v b="$base" 'BEGIN { printf "%-14s %22d  %.2fx\n", c, p, p / b }'
done
