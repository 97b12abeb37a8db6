#!/usr/bin/env bash
# The differential fuzzer of the client protocol, longer than the test suite's run:
# generated sessions sent to meshbroker and to nats-server 2.15.1, every difference
# minimised and printed as a reproducer.
#   scripts/wire-fuzz.sh [cases per seed] [seeds, comma-separated]
#   scripts/wire-fuzz.sh 5000 1,2,3,4,5
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-reference.sh >/dev/null
MESHBROKER_WIRE_FUZZ_CASES="${1:-2000}" MESHBROKER_WIRE_FUZZ_SEEDS="${2:-1,2,3}" \
  cargo test --release --test wire_fuzz generated_sessions -- --nocapture
