#!/usr/bin/env bash
# Installs Node 18 and Soketi 1.6 from npm into target/peers/soketi. Soketi's uWebSockets.js
# comes from GitHub (a git dependency), so GitHub must be reachable.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p target/peers/soketi
cd target/peers/soketi
[ -f package.json ] || echo '{"private": true}' > package.json
npm install --no-audit --no-fund node@18 @soketi/soketi@1.6
