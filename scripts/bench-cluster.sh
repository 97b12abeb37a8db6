#!/usr/bin/env bash
# Cross-node pub/sub in one run: two meshbroker nodes clustered with a plain route on
# loopback against two nats-server 2.15.1 nodes clustered the same way. The publisher
# connects to the first node of each pair, the subscriber to the second, so every
# message crosses the route. Prints each ratio (> 1: meshbroker is better).
#
#   ./scripts/bench-cluster.sh [extra bench flags, e.g. --msgs 5000000 --rounds 5]
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
a=$(port_free); b=$(port_free); ra=$(port_free); rb=$(port_free)
ca=$(port_free); cb=$(port_free); rca=$(port_free); rcb=$(port_free)
for n in a b; do
  if [ $n = a ]; then port=$a; route=$ra; peer=$rb; else port=$b; route=$rb; peer=$ra; fi
  cat > "$work/$n.toml" <<TOML
server_name = "mb-$n"
listen = "127.0.0.1:$port"
log_level = "warn"
[jetstream]
enabled = false
[cluster]
name = "bench"
listen = "127.0.0.1:$route"
routes = ["nats-route://127.0.0.1:$peer"]
TOML
  "$bin" --conf "$work/$n.toml" & pids+=($!)
done
.bench/nats-server -a 127.0.0.1 -p "$ca" -n ref-a --cluster_name bench \
  --cluster "nats://127.0.0.1:$rca" --routes "nats://127.0.0.1:$rcb" -l "$work/ref-a.log" & pids+=($!)
.bench/nats-server -a 127.0.0.1 -p "$cb" -n ref-b --cluster_name bench \
  --cluster "nats://127.0.0.1:$rcb" --routes "nats://127.0.0.1:$rca" -l "$work/ref-b.log" & pids+=($!)
for port in "$a" "$b" "$ca" "$cb"; do
  for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
done
sleep 1 # routes form
echo "meshbroker $("$bin" --version | cut -d' ' -f2) vs $(.bench/nats-server --version), two clustered nodes each, on $(nproc) cores"
"$bin" bench --url "nats://127.0.0.1:$a" --sub-url "nats://127.0.0.1:$b" \
  --compare-url "nats://127.0.0.1:$ca" --compare-sub-url "nats://127.0.0.1:$cb" \
  --scenarios "${SCENARIOS:-routepubsub}" "$@"
