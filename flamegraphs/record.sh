#!/usr/bin/env bash
# Records the server under a harness scenario with perf and renders a flamegraph with inferno.
#
#   flamegraphs/record.sh fanout|connect [seconds]
#
# The server runs pinned to CPU 0 (--workers 1 --cpus 0), the harness on CPU 1. perf samples
# the server with the cpu-clock software event (hardware counters are not available on
# every VM), with call graphs from frame pointers/DWARF of the release build (debug = 1).
# Needs perf (Debian: linux-perf) and inferno (cargo install inferno).
set -euo pipefail
cd "$(dirname "$0")/.."
scenario="${1:?usage: flamegraphs/record.sh fanout|connect [seconds]}"
seconds="${2:-10}"
command -v perf >/dev/null || { echo "perf is missing (apt-get install linux-perf)"; exit 1; }
command -v inferno-flamegraph >/dev/null || cargo install inferno --locked --quiet

cargo build --release -p ringcast -p ringcast-loadtest --quiet
port=$((20000 + RANDOM % 20000))
./target/release/ringcast --port "$port" --workers 1 --cpus 0 --log-level warn &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
sleep 1
out=$(mktemp -d)
case "$scenario" in
  fanout)
    harness=(fanout --subscribers 1000 --channels 1 --rate 0 --batch 10 --payload 100 --publishers 2
             --duration "$((seconds + 2))s" --warmup 1s)
    ;;
  connect)
    harness=(connect --connections 19000 --connect-rate 5000 --hold "$((seconds + 2))s")
    ;;
  *) echo "unknown scenario $scenario"; exit 1 ;;
esac
taskset -c 1 ./target/release/ringcast-loadtest "${harness[@]}" --url "ws://127.0.0.1:$port" \
  --server-pid "$server" --cpus 1 --quiet --out "$out/run" &
load=$!
sleep 2
perf record -e cpu-clock -F 999 -g -p "$server" -o "$out/perf.data" -- sleep "$seconds" 2>/dev/null
wait "$load" || true
perf script -i "$out/perf.data" 2>/dev/null | inferno-collapse-perf > "$out/folded"
inferno-flamegraph --title "ringcast: $scenario ($(git rev-parse --short HEAD))" < "$out/folded" > "flamegraphs/$scenario.svg"
echo "top frames (self time):"
sort -t' ' -k2 -nr "$out/folded" | awk '{n=split($1,f,";"); s[f[n]]+=$2; t+=$2} END {for (k in s) printf "%6.2f%% %s\n", 100*s[k]/t, k}' | sort -nr | head -15
cp "$out/run/summary.json" "flamegraphs/$scenario.summary.json"
echo "wrote flamegraphs/$scenario.svg"
