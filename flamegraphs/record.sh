#!/usr/bin/env bash
# Records the server under a harness scenario with perf and renders a flamegraph with inferno.
#
#   flamegraphs/record.sh fanout|fanout-100|connect [seconds] [uring|epoll]
#
# fanout: 1 x 1,000 at saturation (batch 10); fanout-100: 1 x 1,000 at 100 events/s, one
# event per request (one frame per socket write: the load the kernel floor benchmark,
# benches/floor.rs, mirrors); connect: 19,000 connections opened and held.
#
# The server runs pinned to CPU 0 (--workers 1 --cpus 0), the harness on CPU 1. perf samples
# the server with the cpu-clock software event (hardware counters are not available on
# every VM); call graphs come from frame pointers, so the server is built for this with
# -C force-frame-pointers=yes in its own target directory. Needs perf (Debian: linux-perf)
# and inferno (cargo install inferno).
set -euo pipefail
cd "$(dirname "$0")/.."
scenario="${1:?usage: flamegraphs/record.sh fanout|fanout-100|connect [seconds] [uring|epoll]}"
seconds="${2:-10}"
io="${3:-uring}"
command -v perf >/dev/null || { echo "perf is missing (apt-get install linux-perf)"; exit 1; }
command -v inferno-flamegraph >/dev/null || cargo install inferno --locked --quiet

cargo build --release -p ringcast-loadtest --quiet
RUSTFLAGS="-C force-frame-pointers=yes" cargo build --release -p ringcast --target-dir target/flamegraph --quiet
port=$((20000 + RANDOM % 20000))
./target/flamegraph/release/ringcast --port "$port" --metrics-port 0 --workers 1 --cpus 0 --io "$io" --log-level warn &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
sleep 1
out=$(mktemp -d)
case "$scenario" in
  fanout)
    harness=(fanout --subscribers 1000 --channels 1 --rate 0 --batch 10 --payload 100 --publishers 2
             --duration "$((seconds + 2))s" --warmup 1s)
    ;;
  fanout-100)
    harness=(fanout --subscribers 1000 --channels 1 --rate 100 --batch 1 --payload 100
             --duration "$((seconds + 2))s" --warmup 1s)
    ;;
  connect)
    harness=(connect --connections 19000 --connect-rate 2000 --hold "$((seconds + 2))s")
    ;;
  *) echo "unknown scenario $scenario"; exit 1 ;;
esac
./target/release/ringcast-loadtest "${harness[@]}" --url "ws://127.0.0.1:$port" \
  --server-pid "$server" --cpus 1 --quiet --out "$out/run" &
load=$!
# connect: record while the connections open (the interesting part); fanout: once warm.
[ "$scenario" = connect ] && sleep 1 || sleep 3
perf record -e cpu-clock -F 999 -g -p "$server" -o "$out/perf.data" -- sleep "$seconds" 2>/dev/null
wait "$load" || true
perf script -i "$out/perf.data" 2>/dev/null | inferno-collapse-perf > "$out/folded"
name="$scenario"; [ "$io" = uring ] || name="$scenario-$io"
inferno-flamegraph --title "ringcast: $scenario on $io ($(git rev-parse --short HEAD))" < "$out/folded" > "flamegraphs/$name.svg"

echo "top frames (self time):"
awk '{c=$NF; $NF=""; n=split($0,f,";"); leaf=f[n]; sub(/ +$/,"",leaf); s[leaf]+=c; t+=c}
     END {for (k in s) printf "%6.2f%% %s\n", 100*s[k]/t, k}' "$out/folded" | sort -nr | head -15 || true
awk '{c=$NF; $NF=""; n=split($0,f,";"); t+=c; if (f[n] ~ /::|^</) u+=c; if ($0 ~ /io_uring_enter|epoll_wait|sendmsg|writev/) k+=c;
      if ($0 ~ /net_rx_action/) rx+=c}
     END {printf "ringcast and its crates (self time): %.1f%%; in the kernel send path: %.1f%%, of which loopback receive processing: %.1f%%\n", 100*u/t, 100*k/t, 100*rx/t}' "$out/folded"
cp "$out/run/summary.json" "flamegraphs/$name.summary.json"
echo "wrote flamegraphs/$name.svg"
