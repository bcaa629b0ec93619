#!/usr/bin/env bash
# Runs a local three-node roomcast deployment on one Redis:
#   redis-server on 127.0.0.1:6390, nodes on 127.0.0.1:8081-8083.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
REDIS_PORT=${REDIS_PORT:-6390}
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
pids+=($!)
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done
for i in 1 2 3; do
  ./target/release/roomcast serve --threads 1 --listen "127.0.0.1:808$i" --redis "redis://127.0.0.1:$REDIS_PORT" --node-id "node-$i" &
  pids+=($!)
done
echo "three nodes: ws://127.0.0.1:8081/ws ws://127.0.0.1:8082/ws ws://127.0.0.1:8083/ws" >&2
wait
