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

# Fuzz every target for SECONDS each (default 300).
fuzz SECONDS="300":
    FUZZ_SECONDS={{SECONDS}} fuzz/run-smoke.sh

# The Autobahn conformance suite against the echo endpoint of a release build.
autobahn BACKEND="uring":
    cargo build --release
    ./target/release/ringcast --port 9001 --io {{BACKEND}} --echo-path /echo --max-message-size 16777216 --max-outbound-buffer 67108864 & pid=$!; sleep 1; python3 tests/autobahn/run.py ws://127.0.0.1:9001/echo | python3 -m json.tool; kill $pid
