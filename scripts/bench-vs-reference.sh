#!/usr/bin/env bash
# Runs the same loads against meshbroker and nats-server 2.15.1 in one go and prints
# each ratio (> 1: meshbroker is better). Both servers run on loopback with default
# limits; the load generator is `meshbroker bench`, the same client for both.
#
#   ./scripts/bench-vs-reference.sh [extra bench flags, e.g. --msgs 5000000 --rounds 5]
#   SCENARIOS=jspub,jspubasync,jsfetch REF_SYNC=always ./scripts/bench-vs-reference.sh
#   SCENARIOS=jspub,jspubasync,jsfetch MB_ACK=write ./scripts/bench-vs-reference.sh
#
# MB_ACK sets meshbroker's `jetstream.ack` (fsync, the default, or write); REF_SYNC
# the reference's `sync_interval` (2m, its default, or always).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-reference.sh >/dev/null
cargo build --release --quiet
bin=target/release/meshbroker
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

port_free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mb_port=$(port_free); ref_port=$(port_free)
cat > "$work/node.toml" <<TOML
listen = "127.0.0.1:$mb_port"
log_level = "warn"
[jetstream]
store_dir = "$work/js"
ack = "${MB_ACK:-fsync}"
TOML
"$bin" --conf "$work/node.toml" & pids+=($!); mb_pid=$!
# JetStream on both, file storage in the same scratch directory. The reference's acks
# do not wait for an fsync (sync_interval 2 min) unless REF_SYNC=always is set; ours
# do unless MB_ACK=write is set (see README, JetStream).
cat > "$work/ref.conf" <<CONF
jetstream { store_dir: "$work/refjs", sync_interval: "${REF_SYNC:-2m}" }
CONF
.bench/nats-server -c "$work/ref.conf" -a 127.0.0.1 -p "$ref_port" -l "$work/ref.log" & pids+=($!); ref_pid=$!
for port in "$mb_port" "$ref_port"; do
  for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
done
echo "meshbroker $("$bin" --version | cut -d' ' -f2) vs $(.bench/nats-server --version) on $(nproc) cores"
"$bin" bench --url "nats://127.0.0.1:$mb_port" --compare-url "nats://127.0.0.1:$ref_port" \
  --pid "$mb_pid" --compare-pid "$ref_pid" \
  --scenarios "${SCENARIOS:-idle,pub16,pub128,pubsub1,pubsub4,queue4,reqrep,oldreq,jspub,jspubasync,jsfetch}" "$@"
