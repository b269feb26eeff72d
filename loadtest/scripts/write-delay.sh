#!/usr/bin/env bash
# --write-delay-us on a high-rate channel: 1 channel x 100 subscribers at RATE events/s (one
# event per request, 16 requests in flight), for delays of 0, 200 and 1,000 us, on io_uring
# and epoll, alternating ROUNDS times. Prints deliveries/s, latency, server CPU per delivery
# and frames per write. Server on CPU 0, harness on CPU 1.
# usage: loadtest/scripts/write-delay.sh [RATE] [ROUNDS]   (after just loadtest-build)
set -u
rate=${1:-10000}; rounds=${2:-1}
cd "$(dirname "$0")/../.."
BIN=./target/release/ringcast
LT=./target/release/ringcast-loadtest
out=${OUT:-runs/write-delay}; rm -rf "$out"; mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  for io in uring epoll; do
    for delay in 0 200 1000; do
      $BIN --port 6500 --metrics-port 6501 --workers 1 --cpus 0 --io $io --write-delay-us $delay --log-level warn & pid=$!
      sleep 1
      d=$out/$io-$delay-$r
      $LT fanout --url ws://127.0.0.1:6500 --cpus 1 --server-pid $pid --out "$d" --quiet \
        --subscribers 100 --channels 1 --rate "$rate" --batch 1 --pipeline 16 --payload 100 \
        --duration 15s --warmup 3s --drain 10s > "$d.log" 2>&1
      writes=$(curl -s 127.0.0.1:6501/metrics | awk '/^ringcast_socket_writes_total/ {w += $2} /^ringcast_messages_sent_total/ {m += $2} END {printf "%.1f", m / w}')
      kill $pid; wait $pid 2>/dev/null; sleep 1
      python3 - "$d/summary.json" "$io" "$delay" "$writes" <<'PY' | tee -a "$out/table.txt"
import json, sys
s = json.load(open(sys.argv[1])); f = s["figures"]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {f['delivered_per_sec']:,.0f} | {f['latency_p50_ms']:.2f} | {f['latency_p99_ms']:.2f} | "
      f"{f.get('server_cpu_us_per_delivery', float('nan')):.2f} ({f.get('server_user_us_per_delivery', float('nan')):.2f} user) | {sys.argv[4]} | {len(s['errors'])} |")
PY
    done
  done
done
