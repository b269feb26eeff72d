#!/usr/bin/env bash
# Subscribe storm: 10,000 connections each joining its own channel (10,000 channels) on
# one node, then on two clustered nodes (the API through a third), alternating; prints the
# setup time and the Redis commands the storm took (SUBSCRIBE carries many channels).
# usage: loadtest/scripts/subscribe-storm.sh [ROUNDS]   (after just loadtest-build)
set -u
rounds=${1:-3}
cd "$(dirname "$0")/../.."
BIN=./target/release/ringcast
LT=./target/release/ringcast-loadtest
out=${OUT:-runs/storm}; mkdir -p $out
args="--subscribers 10000 --channels 10000 --rate 1000 --batch 10 --payload 100 --connect-rate 5000 --duration 5s --warmup 2s"
summ() { python3 -c "
import json
s=json.load(open('$1/summary.json'))
f=s['figures']
print('$2', 'setup_s', f.get('setup_seconds'), 'delivered/s', round(f.get('delivered_per_sec',0)), 'p50', f.get('latency_p50_ms'), 'lost', f.get('lost'))
" 2>&1 | tee -a $out/summary.txt; }
for r in $(seq 1 $rounds); do
  taskset -c 0 $BIN --port 6500 --metrics-port 0 --workers 1 --cpus 0 --log-level warn & pid=$!; sleep 1
  d=$out/single-$r; rm -rf $d
  $LT fanout --url ws://127.0.0.1:6500 --cpus 1 --out $d $args > $d.log 2>&1
  kill $pid; wait $pid 2>/dev/null; sleep 1; summ $d "storm single $r"
  taskset -c 0 redis-server --port 6391 --save '' --appendonly no --bind 127.0.0.1 >/dev/null 2>&1 & rpid=$!; sleep 0.5
  pids=""
  for p in 6501 6502 6503; do
    taskset -c 0 $BIN --port $p --metrics-port $((p+1000)) --workers 1 --cpus 0 --log-level warn --redis-url redis://127.0.0.1:6391 --node-id n$p & pids="$pids $!"
  done
  sleep 1.5; redis-cli -p 6391 config resetstat >/dev/null
  d=$out/cluster-$r; rm -rf $d
  $LT fanout --url ws://127.0.0.1:6501 --url ws://127.0.0.1:6502 --api-url http://127.0.0.1:6503 --cpus 1 --out $d $args > $d.log 2>&1
  redis-cli -p 6391 info commandstats | tr -d '\r' | grep -E "subscribe|evalsha|publish|sadd" > $d.redis.txt
  for p in 7501 7502; do curl -s 127.0.0.1:$p/metrics | grep -E "^ringcast_broker_(interest_changes|commands)" | sed "s/^/$p /" >> $d.redis.txt; done
  kill $pids; sleep 1; kill $rpid; wait 2>/dev/null; sleep 1
  summ $d "storm cluster $r"; cat $d.redis.txt
done
