#!/usr/bin/env bash
# Soak: one server, ~10,000 connections for DURATION (default 30m), two harness processes:
#   http:          4,500 subscribers over 45 channels, events through the signed HTTP API,
#                  subscribers reconnecting (churn);
#   client-events: 4,500 subscribers over 45 private channels, 45 client-event publishers,
#                  churn, and 1,000 presence connections joining and leaving 20 presence
#                  channels; this app's webhooks go to the harness, which checks that none
#                  was lost or doubled.
# Each harness fails on any lost, duplicated or reordered event of a subscriber that stayed.
# This script samples the server's RSS and open descriptors every minute (server.csv) and
# compares the descriptors before the clients came and after they left.
# usage: [CHURN=reconnects per second per process, default 5] loadtest/scripts/soak.sh [DURATION]
#        (after just loadtest-build)
set -u
duration=${1:-30m}; churn=${CHURN:-5}
cd "$(dirname "$0")/../.."
BIN=./target/release/ringcast
LT=./target/release/ringcast-loadtest
out=${OUT:-runs/soak}; rm -rf "$out"; mkdir -p "$out"
port=${PORT:-6600}; metrics=$((port + 1)); hooks=$((port + 2))
secret_http=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
secret_ce=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat > "$out/apps.toml" <<EOF
[[app]]
id = "soak-http"
key = "soak-http-key"
secret = "$secret_http"

[[app]]
id = "soak-ce"
key = "soak-ce-key"
secret = "$secret_ce"
client_events = true

[[app.webhook]]
url = "http://127.0.0.1:$hooks/hooks"
events = ["channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event"]
EOF

$BIN --port $port --metrics-port $metrics --apps-file "$out/apps.toml" --log-level warn \
  2> "$out/server.log" & pid=$!
sleep 1
fds() { ls /proc/$pid/fd 2>/dev/null | wc -l; }
rss() { awk '/VmRSS/ {print $2}' /proc/$pid/status; }
fd_before=$(fds)
echo "server pid $pid, $fd_before descriptors before the clients" | tee "$out/soak.txt"
echo "seconds,rss_kib,fds" > "$out/server.csv"
start=$(date +%s)
( while kill -0 $pid 2>/dev/null; do
    echo "$(( $(date +%s) - start )),$(rss),$(fds)" >> "$out/server.csv"; sleep 60
  done ) & sampler=$!

common="--url ws://127.0.0.1:$port --server-pid $pid --duration $duration --warmup 10s --quiet
  --connect-rate 1000 --churn $churn --sample-every 60s"
$LT soak $common --app-id soak-http --app-key soak-http-key --app-secret "$secret_http" \
  --subscribers 4500 --channels 45 --rate 300 --publishers 3 --label "soak http" \
  --out "$out/http" > "$out/http.log" 2>&1 & a=$!
$LT soak $common --app-id soak-ce --app-key soak-ce-key --app-secret "$secret_ce" \
  --via client-event --subscribers 4500 --channels 45 --publishers 45 --rate 180 \
  --presence 1000 --presence-channels 20 --presence-hold 10s \
  --webhook-listen 127.0.0.1:$hooks --label "soak client events" \
  --out "$out/client-events" > "$out/client-events.log" 2>&1 & b=$!
wait $a; status_a=$?
wait $b; status_b=$?
# Idle pooled webhook connections close after 30 s.
sleep 35
fd_after=$(fds)
curl -s 127.0.0.1:$metrics/metrics | grep -E "^ringcast_(webhook_requests_total|connections_rejected_total|rate_limited_total|inbox_full_total)" > "$out/metrics.txt"
kill $sampler 2>/dev/null
echo "$(( $(date +%s) - start )),$(rss),$fd_after" >> "$out/server.csv"
kill $pid; wait $pid 2>/dev/null
{
  echo "descriptors: $fd_before before, $fd_after after the clients left"
  echo "harness exit status: http $status_a, client-events $status_b (0: no errors)"
  for d in http client-events; do
    python3 - "$out/$d/summary.json" "$d" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); f = s["figures"]
keys = ["events_published", "deliveries_received", "lost", "duplicates", "out_of_order",
        "subscribers_stayed", "subscribers_churned", "latency_p50_ms", "latency_p99_ms",
        "server_rss_growth_kib_per_min", "presence_joins", "presence_leaves",
        "webhook_requests", "webhook_member_added", "webhook_member_removed",
        "webhook_channel_occupied", "webhook_channel_vacated", "webhook_client_event",
        "client_events_published", "webhook_members_unbalanced", "webhook_channels_unbalanced"]
print(sys.argv[2] + ": " + ", ".join(f"{k} {f[k]:g}" for k in keys if k in f))
for e in s["errors"]:
    print(f"  ERROR {e}")
PY
  done
  echo "server RSS and descriptors over time (server.csv):"
  cat "$out/server.csv"
} | tee -a "$out/soak.txt"
[ "$status_a" = 0 ] && [ "$status_b" = 0 ] && [ "$fd_after" -le "$fd_before" ]
