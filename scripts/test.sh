#!/usr/bin/env bash
# Runs roomcast's whole test suite: unit tests, the store conformance suite
# against every store, and the end-to-end tests against real nodes and real
# redis-server processes (single, a 3-master cluster with replicas, and
# Sentinel, which the tests start themselves on free loopback ports); then the JavaScript client's tests against real nodes and in a real
# Chromium. Installs what they need from Debian first when it is missing, and
# the client's npm packages from its lockfile.
#
# `scripts/test.sh --fast` runs the fast tier instead, in well under a
# minute once built, and needs nothing installed: unit tests (the paused-
# clock ones among them), the store suite on the embedded store, nodes run
# in-process, the CLI, and the JavaScript client's state machine against a
# fake node.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fast" ]; then
  shift
  cargo test -q --lib "$@"
  cargo test -q --test in_process --test cli "$@"
  cargo test -q --test store_conformance "$@" -- memory::
  cd clients/js
  node --test --test-reporter=spec test/state.test.js
  exit 0
fi

# What the tests need from Debian: redis-server (every Redis test, and the
# Sentinel ones run it with --sentinel), redis-tools (redis-cli builds the
# test cluster), iproute2 with iptables (the chaos run cuts a node off from
# Redis inside a network namespace it creates; the failover test holds back
# one replication link), nginx (the proxy test), chromium (the browser
# tests), npm (the client's test runner's packages) and python3 with pip
# (Pusher's Python library, which the Pusher tests drive).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing Debian's ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  # The package may start a system-wide server; the tests run their own.
  $sudo service redis-server stop >/dev/null 2>&1 || true
  $sudo service nginx stop >/dev/null 2>&1 || true
fi
redis-server --version >&2

# Pusher's Python server library, into the build directory (never the
# system's Python), pinned.
pydeps="$PWD/target/python-deps"
if ! PYTHONPATH="$pydeps" python3 -c "import pusher" >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check --target "$pydeps" pusher==3.3.4 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages --target "$pydeps" pusher==3.3.4
fi
export PYTHONPATH="$pydeps${PYTHONPATH:+:$PYTHONPATH}"

cargo test "$@"

# The client's tests use the node binary `cargo test` just built.
cd clients/js
npm ci --no-audit --no-fund --loglevel=error
node --test --test-concurrency=1 --test-reporter=spec test/*.test.js
