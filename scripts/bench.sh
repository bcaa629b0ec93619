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
all=0
[ ${#presets[@]} -gt 0 ] || { presets=(fanout saturate idle rooms resume-storm broadcast reactions audience cluster catch-up join-storm hook presence pusher); all=1; }
for preset in "${presets[@]}"; do
  echo "== $preset" >&2
  ./target/release/roomcast bench --preset "$preset" --out "docs/bench/$preset.json" --svg "docs/bench/$preset.svg" || echo "$preset: not clean" >&2
done
if [ "$all" = 1 ]; then
  # The resume storm again within the machine's capacity (250 msg/s), beside the preset's overload.
  echo "== resume-storm at 250 msg/s" >&2
  ./target/release/roomcast bench --subscribers 2000 --nodes 2 --rate 250 --duration 20 --storm 1 \
    --out docs/bench/resume-storm-250.json --svg docs/bench/resume-storm-250.svg || echo "resume-storm-250: not clean" >&2
fi
