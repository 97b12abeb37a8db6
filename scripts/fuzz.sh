#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 30), starting from the
# seeds in fuzz/seeds/<target>. Fails on the first crash; the input that crashed is
# left in fuzz/artifacts/<target>/ (turn it into a regression test).
#
#   ./scripts/fuzz.sh            # 30 s per target
#   ./scripts/fuzz.sh 3600       # an hour per target
#   ./scripts/fuzz.sh 600 client_proto
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-30}"
shift || true
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
# Stable Rust is enough: without a sanitizer, cargo-fuzz only passes stable codegen
# options (sanitizer-coverage through -Cpasses/-Cllvm-args) and links libFuzzer from
# libfuzzer-sys. No sanitizer is needed: the code under test has no unsafe of its own;
# what we hunt is panics, hangs and broken invariants (asserted in the targets).
cargo fuzz build --sanitizer none --release
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  if [ -d "seeds/$target" ]; then cp -n seeds/"$target"/* "corpus/$target/" 2>/dev/null || true; fi
  echo "== fuzz $target for ${seconds}s"
  log=$(mktemp)
  if ! cargo fuzz run --sanitizer none --release "$target" "corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz target $target failed; the input is in fuzz/artifacts/$target/"
    exit 1
  fi
  grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)" "$log" || true
  rm -f "$log"
done
