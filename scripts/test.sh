#!/usr/bin/env bash
# Runs roomcast's whole test suite: unit tests, the store conformance suite
# against both stores, and the end-to-end tests against real nodes and real
# redis-server processes (which the tests start themselves on free loopback
# ports). Installs Debian's redis-server package first when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests need from Debian: redis-server (every Redis test), and
# iproute2 with iptables (the chaos run cuts a node off from Redis inside a
# network namespace it creates).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing Debian's ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  # The package may start a system-wide server; the tests run their own.
  $sudo service redis-server stop >/dev/null 2>&1 || true
fi
redis-server --version >&2

exec cargo test "$@"
