#!/usr/bin/env bash
# Builds Sockudo 5.2.0 from crates.io into target/peers/sockudo (needs protoc).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v protoc >/dev/null || { echo "protoc is missing: apt-get install protobuf-compiler" >&2; exit 1; }
cargo install sockudo --version 5.2.0 --locked --root target/peers/sockudo
