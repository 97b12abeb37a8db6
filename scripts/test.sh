#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests compare
# against (the reference nats-server, the Python client, the JavaScript client with
# playwright-core for the browser test), then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# System packages: Python (nats-py), Chromium and Node.js (the browser test with the
# official JavaScript client), wireguard-go, wireguard-tools and iproute2 (the mesh
# tests, in network namespaces), from Debian's packages.
need=()
command -v python3 >/dev/null || need+=(python3 python3-pip)
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || need+=(chromium)
{ command -v node >/dev/null && command -v npm >/dev/null; } || need+=(nodejs npm)
mesh=()
command -v wireguard-go >/dev/null || mesh+=(wireguard-go)
command -v wg >/dev/null || mesh+=(wireguard-tools)
command -v ip >/dev/null || mesh+=(iproute2)
if [ ${#need[@]} -gt 0 ] || [ ${#mesh[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "the tests need: ${need[*]} ${mesh[*]} (install them, or run this as root on Debian)" >&2
    exit 1
  fi
  apt-get update -qq
  if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  # Without recommends: wireguard-tools would pull a kernel image.
  if [ ${#mesh[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${mesh[@]}" >/dev/null
  fi
fi
./scripts/install-reference.sh >/dev/null
python3 -m pip install --quiet --disable-pip-version-check 'nats-py[nkeys]==2.16.0' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'nats-py[nkeys]==2.16.0'
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
export MESHBROKER_CI=1
cargo test --all-targets "$@"
# The JetStream suites once more with acks after the journal write (jetstream.ack =
# "write"; tests/jetstream_crash.rs covers both kinds itself).
if [ $# -eq 0 ]; then
  MESHBROKER_TEST_JS_ACK=write cargo test --test jetstream --test jetstream_differential --test python_client
fi
