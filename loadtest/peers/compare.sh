#!/usr/bin/env bash
# The same harness scenarios against ringcast (io_uring, epoll) and the installed peers,
# alternating servers in each round; server on CPU 0, harness on CPU 1. See README.md here.
# usage: loadtest/peers/compare.sh [ROUNDS]   (after just loadtest-build)
set -u
rounds=${1:-2}
cd "$(dirname "$0")/../.."
root=$PWD
BIN=$root/target/release/ringcast
LT=$root/target/release/ringcast-loadtest
SOCKUDO=${SOCKUDO:-$root/target/peers/sockudo/bin/sockudo}
SOKETI_DIR=${SOKETI_DIR:-$root/target/peers/soketi}
out=${OUT:-runs/peers}; rm -rf "$out"; mkdir -p "$out"
PORT=6500
creds=(SOCKUDO_DEFAULT_APP_ID=app-id SOCKUDO_DEFAULT_APP_KEY=app-key SOCKUDO_DEFAULT_APP_SECRET=app-secret)

servers=(ringcast-uring ringcast-epoll)
if [ -x "$SOCKUDO" ]; then servers+=(sockudo); else echo "sockudo: not installed ($SOCKUDO): skipped (loadtest/peers/install-sockudo.sh)"; fi
if [ -f "$SOKETI_DIR/node_modules/@soketi/soketi/bin/server.js" ]; then servers+=(soketi); else echo "soketi: not installed in $SOKETI_DIR: skipped (loadtest/peers/install-soketi.sh)"; fi

start() {
  case $1 in
    ringcast-uring) exec $BIN --port $PORT --metrics-port 0 --workers 1 --cpus 0 --io uring --log-level warn ;;
    ringcast-epoll) exec $BIN --port $PORT --metrics-port 0 --workers 1 --cpus 0 --io epoll --log-level warn ;;
    sockudo) exec env "${creds[@]}" HOST=127.0.0.1 PORT=$PORT METRICS_ENABLED=false RATE_LIMITER_ENABLED=false \
        SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=1000000 SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=10000000 \
        SOCKUDO_DEFAULT_APP_MAX_READ_REQUESTS_PER_SECOND=10000000 RUST_LOG=warn \
        taskset -c 0 "$SOCKUDO" ;;
    soketi) exec env SOKETI_PORT=$PORT SOKETI_DEFAULT_APP_ID=app-id SOKETI_DEFAULT_APP_KEY=app-key \
        SOKETI_DEFAULT_APP_SECRET=app-secret SOKETI_METRICS_ENABLED=false \
        SOKETI_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC=-1 SOKETI_DEFAULT_APP_MAX_CONNS=-1 \
        taskset -c 0 "$SOKETI_DIR/node_modules/node/bin/node" \
        "$SOKETI_DIR/node_modules/@soketi/soketi/bin/server.js" start ;;
  esac
}

scenario() {
  case $1 in
    fanout-100) echo --subscribers 1000 --channels 1 --rate 100 --batch 1 --payload 100 --duration 20s --warmup 3s ;;
    channels-20k) echo --subscribers 1000 --channels 1000 --rate 20000 --batch 10 --publishers 8 --payload 100 --duration 20s --warmup 3s ;;
  esac
}

for r in $(seq 1 "$rounds"); do
  for sc in fanout-100 channels-20k; do
    for s in "${servers[@]}"; do
      start "$s" > "$out/$s-$sc-$r.server.log" 2>&1 & pid=$!
      for _ in $(seq 1 150); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
      sleep 1
      # $pid is the server itself: start() execs it (env and taskset exec too).
      d=$out/$s-$sc-$r
      # shellcheck disable=SC2046
      $LT fanout --url ws://127.0.0.1:$PORT --cpus 1 --server-pid $pid --out "$d" --quiet $(scenario "$sc") > "$d.log" 2>&1
      kill $pid 2>/dev/null; wait $pid 2>/dev/null; sleep 1
      echo "round $r $sc $s: $(tail -1 "$d.log")"
    done
  done
done

python3 - "$out" "$rounds" "${servers[@]}" <<'PY' | tee "$out/table.md"
import json, os, statistics, sys
out, rounds, servers = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def fig(s, sc, k):
    vals = []
    for r in range(1, rounds + 1):
        p = f"{out}/{s}-{sc}-{r}/summary.json"
        if os.path.exists(p):
            v = json.load(open(p))["figures"].get(k)
            if v is not None:
                vals.append(v)
    return vals
def cell(vals, nd=2):
    if not vals: return "—"
    lo, hi = min(vals), max(vals)
    return f"{lo:.{nd}f}" if round(lo, nd) == round(hi, nd) else f"{lo:.{nd}f}–{hi:.{nd}f}"
for sc in ["fanout-100", "channels-20k"]:
    print(f"\n{sc}\n")
    print("| server | deliveries/s | server CPU µs per delivery (total / user / system) | p50 ms | p99 ms | lost |")
    print("|---|---|---|---|---|---|")
    for s in servers:
        d = fig(s, sc, "delivered_per_sec")
        print(f"| {s} | {cell(d, 0)} | {cell(fig(s, sc, 'server_cpu_us_per_delivery'))} / "
              f"{cell(fig(s, sc, 'server_user_us_per_delivery'))} / {cell(fig(s, sc, 'server_system_us_per_delivery'))} | "
              f"{cell(fig(s, sc, 'latency_p50_ms'), 1)} | {cell(fig(s, sc, 'latency_p99_ms'), 1)} | {cell(fig(s, sc, 'lost'), 0)} |")
PY
