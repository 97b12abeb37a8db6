#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests compare
# against (the reference nats-server, the Python client), then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-reference.sh >/dev/null
python3 -m pip install --quiet --disable-pip-version-check 'nats-py==2.16.0' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'nats-py==2.16.0'
export MESHBROKER_CI=1
cargo test --all-targets "$@"
