#!/usr/bin/env bash
# Runs roomcast's whole test suite: unit tests, the store conformance suite
# against both stores, and the end-to-end tests against real nodes and real
# redis-server processes (which the tests start themselves on free loopback
# ports). Installs Debian's redis-server package first when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "test.sh: redis-server not found; installing Debian's redis-server package" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
  # The package may start a system-wide server; the tests run their own.
  $sudo service redis-server stop >/dev/null 2>&1 || true
fi
redis-server --version >&2

exec cargo test "$@"
