#!/usr/bin/env bash
# Runs every benchmark preset of the bundled harness against spawned local
# deployments and writes the reports and charts to docs/bench/.
# Usage: scripts/bench.sh [preset ...]   (default: all presets)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null 2>&1 || { echo "bench.sh: redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
cargo build --release
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
mkdir -p docs/bench
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(fanout saturate idle rooms resume-storm)
for preset in "${presets[@]}"; do
  echo "== $preset" >&2
  ./target/release/roomcast bench --preset "$preset" --out "docs/bench/$preset.json" --svg "docs/bench/$preset.svg" || echo "$preset: not clean" >&2
done
