# Everyday commands. `just --list` shows them all.

# Run the server on its defaults (demo app, 127.0.0.1:6001).
run *ARGS:
    cargo run --release -- {{ARGS}}

# The whole test suite, on both IO backends.
test:
    cargo test --workspace

# What CI runs: dependencies, format, clippy, tests, a short fuzz run.
ci:
    .ci/run

# Format and lint.
lint:
    cargo fmt --all
    cargo clippy --all-targets --workspace -- -D warnings

# Criterion benchmarks (frames, json, fanout, routing, signature).
bench *ARGS:
    cargo bench {{ARGS}}

# Line coverage of src/ (cargo-tarpaulin, LLVM engine): the whole suite, the servers it
# starts included (stopped with SIGTERM so they write their counts). Report in coverage/,
# a table per module printed (docs/testing.md). About 20 minutes on 2 cores.
coverage:
    command -v cargo-tarpaulin >/dev/null || cargo install cargo-tarpaulin --locked
    RINGCAST_COVERAGE=1 RINGCAST_REQUIRE_ALL_TESTS=1 cargo tarpaulin -p ringcast --engine llvm \
        --target-dir target/coverage --skip-clean --timeout 600 --include-files 'src/*' \
        --objects target/coverage/debug/ringcast --out Json --out Html --output-dir coverage
    python3 tests/coverage/by_module.py coverage/tarpaulin-report.json

# Fuzz every target for SECONDS each (default 300).
fuzz SECONDS="300":
    FUZZ_SECONDS={{SECONDS}} fuzz/run-smoke.sh

# The Autobahn conformance suite against the echo endpoint of a release build.
autobahn BACKEND="uring":
    cargo build --release
    ./target/release/ringcast --port 9001 --metrics-port 0 --io {{BACKEND}} --echo-path /echo --max-message-size 16777216 --max-outbound-buffer 67108864 & pid=$!; sleep 1; python3 tests/autobahn/run.py ws://127.0.0.1:9001/echo | python3 -m json.tool; kill $pid

# --- Load tests (docs/loadtest.md). The server runs on CPU 0, the harness on CPU 1. ---

# Soak: ~10,000 connections for DURATION with churn, presence joins and leaves, client
# events and webhooks; fails on any lost, doubled or reordered event, unbalanced webhooks,
# or a descriptor left open (loadtest/scripts/soak.sh, docs/loadtest.md).
soak DURATION="30m": loadtest-build
    OUT=runs/soak loadtest/scripts/soak.sh {{DURATION}}

# ringcast's server CPU per delivery against the kernel's floor (benches/floor.rs), both
# backends at RATE events/s to 1,000 subscribers, alternating ROUNDS times.
loadtest-floor RATE="100" ROUNDS="2": loadtest-build
    OUT=runs/floor loadtest/scripts/floor.sh {{RATE}} {{ROUNDS}}

# --write-delay-us 0 / 200 / 1000 on 1 channel x 100 subscribers at RATE events/s.
loadtest-write-delay RATE="10000" ROUNDS="1": loadtest-build
    OUT=runs/write-delay loadtest/scripts/write-delay.sh {{RATE}} {{ROUNDS}}

# Build the server and the harness in release mode.
loadtest-build:
    cargo build --release -p ringcast -p ringcast-loadtest

# Fan-out at saturation: 1 channel x 1,000 subscribers, 100-byte events, as fast as accepted.
loadtest-fanout IO="uring" OUT="runs/fanout": loadtest-build
    ./target/release/ringcast --port 6500 --metrics-port 0 --workers 1 --cpus 0 --io {{IO}} --log-level warn & pid=$!; sleep 1; \
    ./target/release/ringcast-loadtest fanout --url ws://127.0.0.1:6500 --cpus 1 --server-pid $pid --out {{OUT}} \
      --subscribers 1000 --channels 1 --rate 0 --batch 10 --payload 100 --duration 20s --warmup 3s; \
    status=$?; kill $pid; exit $status

# Fan-out at a fixed rate (events/s; 1,000 subscribers each) for latency.
loadtest-latency RATE="1100" IO="uring" OUT="runs/latency": loadtest-build
    ./target/release/ringcast --port 6500 --metrics-port 0 --workers 1 --cpus 0 --io {{IO}} --log-level warn & pid=$!; sleep 1; \
    ./target/release/ringcast-loadtest fanout --url ws://127.0.0.1:6500 --cpus 1 --server-pid $pid --out {{OUT}} \
      --subscribers 1000 --channels 1 --rate {{RATE}} --batch 10 --payload 100 --duration 20s --warmup 3s; \
    status=$?; kill $pid; exit $status

# Per-user notifications: 10,000 channels x 1 subscriber, published 10 per batch_events request.
loadtest-channels IO="uring" OUT="runs/channels": loadtest-build
    ./target/release/ringcast --port 6500 --metrics-port 0 --workers 1 --cpus 0 --io {{IO}} --log-level warn & pid=$!; sleep 1; \
    ./target/release/ringcast-loadtest fanout --url ws://127.0.0.1:6500 --cpus 1 --server-pid $pid --out {{OUT}} \
      --subscribers 10000 --channels 10000 --rate 0 --batch 10 --publishers 8 --payload 100 --connect-rate 4000 \
      --duration 20s --warmup 3s; \
    status=$?; kill $pid; exit $status

# 19,000 idle connections held 60 s: handshake times and server memory per connection.
loadtest-connect IO="uring" OUT="runs/connect": loadtest-build
    ./target/release/ringcast --port 6500 --metrics-port 0 --workers 1 --cpus 0 --io {{IO}} --log-level warn & pid=$!; sleep 1; \
    ./target/release/ringcast-loadtest connect --url ws://127.0.0.1:6500 --cpus 1 --server-pid $pid --out {{OUT}} \
      --connections 19000 --connect-rate 2000 --hold 60s; \
    status=$?; kill $pid; exit $status

# The harness's own capacity (no server).
loadtest-selftest OUT="runs/selftest": loadtest-build
    ./target/release/ringcast-loadtest selftest --subscribers 1000 --cpus 1 --source-cpu 0 --duration 10s --out {{OUT}}

# One node against three clustered over Redis (needs redis-server): docs/cluster.md#sizing
loadtest-cluster ROUNDS="3" DURATION="15s": loadtest-build
    loadtest/scripts/cluster-vs-single.sh {{ROUNDS}} {{DURATION}}

# 10,000 connections joining 10,000 channels, one node and two clustered ones
loadtest-storm ROUNDS="3": loadtest-build
    loadtest/scripts/subscribe-storm.sh {{ROUNDS}}

# ringcast (io_uring, epoll) against installed peers (Sockudo, Soketi), alternating:
# loadtest/peers/README.md
loadtest-peers ROUNDS="2": loadtest-build
    OUT=runs/peers loadtest/peers/compare.sh {{ROUNDS}}

# Compare runs: just loadtest-compare runs/a runs/b
loadtest-compare +RUNS:
    cargo run --release -p ringcast-loadtest -- compare {{RUNS}} --out runs

# Record a flamegraph of the server under a scenario (fanout or connect).
flamegraph SCENARIO="fanout" SECONDS="10":
    flamegraphs/record.sh {{SCENARIO}} {{SECONDS}}
