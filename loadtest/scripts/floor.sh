#!/usr/bin/env bash
# ringcast against the kernel's floor: the server's CPU per delivery in a 1 channel x 1,000
# subscribers fan-out at RATE events/s (one event per request, so one frame per socket
# write), on io_uring and epoll, alternating ROUNDS times, next to the floor benchmark
# (benches/floor.rs: the same frame written to 1,000 loopback sockets with write(2), and as
# one io_uring submission). Server on CPU 0, harness on CPU 1.
# usage: loadtest/scripts/floor.sh [RATE] [ROUNDS]   (after just loadtest-build)
set -u
rate=${1:-100}; rounds=${2:-2}
cd "$(dirname "$0")/../.."
BIN=./target/release/ringcast
LT=./target/release/ringcast-loadtest
out=${OUT:-runs/floor}; rm -rf "$out"; mkdir -p "$out"
cargo bench --bench floor > "$out/floor-bench.txt" 2>&1
floor() { python3 -c "import json; print(round(json.load(open('target/criterion/kernel_floor_1000_sockets/$1/new/estimates.json'))['median']['point_estimate'] / 1e6, 3))"; }
fw=$(floor write); fu=$(floor io_uring_send_one_submit)
echo "floor per delivery: write(2) $fw us, io_uring one submit $fu us" | tee "$out/floor.txt"
for r in $(seq 1 "$rounds"); do
  for io in uring epoll; do
    $BIN --port 6500 --metrics-port 0 --workers 1 --cpus 0 --io $io --log-level warn & pid=$!; sleep 1
    d=$out/$io-$r
    $LT fanout --url ws://127.0.0.1:6500 --cpus 1 --server-pid $pid --out "$d" --quiet \
      --subscribers 1000 --channels 1 --rate "$rate" --batch 1 --payload 100 --duration 20s --warmup 3s > "$d.log" 2>&1
    kill $pid; wait $pid 2>/dev/null; sleep 1
    python3 - "$d/summary.json" "$io $r" "$fw" "$fu" <<'PY' | tee -a "$out/floor.txt"
import json, sys
s = json.load(open(sys.argv[1])); f = s["figures"]
cpu, user, system = (f.get(k) for k in ("server_cpu_us_per_delivery", "server_user_us_per_delivery", "server_system_us_per_delivery"))
fw, fu = float(sys.argv[3]), float(sys.argv[4])
print(f"{sys.argv[2]}: {f['delivered_per_sec']:.0f} deliveries/s, server CPU per delivery {cpu} us "
      f"(user {user}, system {system}) = {cpu / fw:.2f}x the write(2) floor, {cpu / fu:.2f}x the io_uring floor; "
      f"p50 {f['latency_p50_ms']} ms, p99 {f['latency_p99_ms']} ms, lost {f['lost']:g}, errors {len(s['errors'])}")
PY
  done
done
