#!/usr/bin/env bash
# A short run of every fuzz target (CI); `just fuzz` runs longer. cargo-fuzz needs
# nightly features: RUSTC_BOOTSTRAP lets the stable toolchain provide them.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-30}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in frame_decoder pusher_message presence_member upgrade_request percent_decoding; do
  echo "fuzzing $target for ${seconds}s"
  if ! RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="$seconds" >"$log" 2>&1; then
    tail -60 "$log"
    echo "fuzz target $target failed (crash artifacts, if any, are in fuzz/artifacts/$target)"
    exit 1
  fi
  grep -E "^Done" "$log"
done
