#!/usr/bin/env bash
# One node against a cluster of three over one Redis, alternating, on this machine: the
# node (or every node and Redis) on CPU 0, the harness on CPU 1. Single node: 1 channel x
# 1,000 subscribers at saturation (--rate 0). Cluster: the same 1,000 subscribers split
# over two nodes, publishing through a third, at fixed rates of 100, 115 and 130% of the
# single node's figure (a cluster node has no backpressure on publishers: loss shows
# what it cannot sustain). Then latency at 100 events/s (100,000 deliveries/s) for both.
# usage: loadtest/scripts/cluster-vs-single.sh [ROUNDS] [DURATION]   (after just loadtest-build)
set -u
rounds=${1:-3}; dur=${2:-15s}
command -v redis-server >/dev/null || { echo "needs redis-server"; exit 1; }
cd "$(dirname "$0")/../.."
BIN=./target/release/ringcast
LT=./target/release/ringcast-loadtest
out=${OUT:-runs/cluster}; mkdir -p $out
summ() { python3 -c "
import json
s=json.load(open('$1/summary.json'))
f=s['figures']; sv=s.get('server') or {}
print('$2', round(f.get('delivered_per_sec',0)), 'p50', f.get('latency_p50_ms'), 'p99', f.get('latency_p99_ms'), 'lost', f.get('lost'), 'cpu_us', sv.get('cpu_us_per_message'), 'cores', sv.get('cpu_cores'))
" 2>&1 | tee -a $out/summary.txt; }
single() { # scen extra
  taskset -c 0 $BIN --port 6500 --metrics-port 0 --workers 1 --cpus 0 --log-level warn & pid=$!; sleep 1
  d=$out/$1; rm -rf $d
  $LT fanout --url ws://127.0.0.1:6500 --cpus 1 --server-pid $pid --out $d --subscribers 1000 --channels 1 $2 --payload 100 --duration $dur --warmup 3s > $d.log 2>&1
  kill $pid; wait $pid 2>/dev/null; sleep 1
  summ $d "$1"
}
cluster() { # scen extra
  taskset -c 0 redis-server --port 6391 --save '' --appendonly no --bind 127.0.0.1 >/dev/null 2>&1 & rpid=$!; sleep 0.5
  pids=""
  for p in 6501 6502 6503; do
    taskset -c 0 $BIN --port $p --metrics-port $((p+1000)) --workers 1 --cpus 0 --log-level warn --redis-url redis://127.0.0.1:6391 --node-id n$p 2>>$out/nodes.log & pids="$pids${pids:+,}$!"
  done
  sleep 1.5
  redis-cli -p 6391 config resetstat >/dev/null
  d=$out/$1; rm -rf $d
  $LT fanout --url ws://127.0.0.1:6501 --url ws://127.0.0.1:6502 --api-url http://127.0.0.1:6503 --cpus 1 --server-pid $pids,$rpid --out $d --subscribers 1000 --channels 1 $2 --payload 100 --duration $dur --warmup 3s > $d.log 2>&1
  redis-cli -p 6391 info commandstats > $d.redis-commandstats.txt
  redis-cli -p 6391 info stats > $d.redis-stats.txt
  redis-cli -p 6391 info cpu > $d.redis-cpu.txt
  for p in 7501 7502; do curl -s 127.0.0.1:$p/metrics | grep -E "^ringcast_broker_events_(dropped|received)" | sed "s/^/$p /" >> $d.broker.txt; done
  kill ${pids//,/ }; sleep 1; kill $rpid; wait 2>/dev/null; sleep 1
  summ $d "$1"
}
for r in $(seq 1 $rounds); do
  single thr-single-$r "--rate 0 --batch 10"
  D=$(python3 -c "import json;print(json.load(open('$out/thr-single-$r/summary.json'))['figures']['delivered_per_sec'])")
  for pct in 100 115 130; do
    rate=$(python3 -c "print(round($D*$pct/100/1000))")
    cluster thr-cluster$pct-$r "--rate $rate --batch 10"
  done
  single lat-single-$r "--rate 100 --batch 1"
  cluster lat-cluster-$r "--rate 100 --batch 1"
done
