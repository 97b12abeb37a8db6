#!/usr/bin/env bash
# The same loads against this tree's release build and another meshbroker binary (an
# earlier commit's, built elsewhere), in one run: ratio > 1 means this tree is better.
#
#   git worktree add /tmp/base <commit> && (cd /tmp/base && cargo build --release)
#   ./scripts/bench-two-builds.sh /tmp/base/target/release/meshbroker [bench flags]
#   SCENARIOS=pub128,pubsub1 ./scripts/bench-two-builds.sh OTHER --rounds 5
set -euo pipefail
cd "$(dirname "$0")/.."
other=${1:?usage: bench-two-builds.sh OTHER_MESHBROKER_BINARY [bench flags]}
shift
cargo build --release --quiet
bin=target/release/meshbroker
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port_free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() { # name binary port
  cat > "$work/$1.toml" <<TOML
listen = "127.0.0.1:$3"
log_level = "warn"
[jetstream]
store_dir = "$work/$1-js"
TOML
  "$2" --conf "$work/$1.toml" 2>"$work/$1.log" & pids+=($!)
}
new_port=$(port_free); old_port=$(port_free)
start new "$bin" "$new_port"; new_pid=$!
start old "$other" "$old_port"; old_pid=$!
for port in "$new_port" "$old_port"; do
  for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
done
"$bin" bench --url "nats://127.0.0.1:$new_port" --compare-url "nats://127.0.0.1:$old_port" \
  --name "this tree" --compare-name "other build" --pid "$new_pid" --compare-pid "$old_pid" \
  --scenarios "${SCENARIOS:-pub16,pub128,pubsub1,pubsub4,queue4,reqrep}" "$@"
