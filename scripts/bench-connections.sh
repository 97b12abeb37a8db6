#!/usr/bin/env bash
# Connections against meshbroker and nats-server 2.15.1 in one go: the memory an idle
# client connection costs (5,000 clients connected at once, each after CONNECT and a
# PING, on fresh servers), then a reconnect storm of 5,000 connections (256 handshakes
# in flight) against each listener: clients, WebSocket, cluster, monitoring.
#
#   ./scripts/bench-connections.sh [extra bench flags, e.g. --conns 10000 --rounds 5]
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
mb=$(port_free); mb_ws=$(port_free); mb_route=$(port_free); mb_http=$(port_free)
ref=$(port_free); ref_ws=$(port_free); ref_route=$(port_free); ref_http=$(port_free)
cat > "$work/node.toml" <<TOML
listen = "127.0.0.1:$mb"
log_level = "warn"
[jetstream]
enabled = false
[websocket]
listen = "127.0.0.1:$mb_ws"
no_tls = true
[cluster]
name = "bench"
listen = "127.0.0.1:$mb_route"
[monitor]
listen = "127.0.0.1:$mb_http"
TOML
"$bin" --conf "$work/node.toml" 2>"$work/node.log" & pids+=($!); mb_pid=$!
cat > "$work/ref.conf" <<CONF
websocket { host: 127.0.0.1, port: $ref_ws, no_tls: true }
cluster { name: bench, host: 127.0.0.1, port: $ref_route }
CONF
.bench/nats-server -c "$work/ref.conf" -a 127.0.0.1 -p "$ref" -m "$ref_http" -l "$work/ref.log" & pids+=($!); ref_pid=$!
for port in "$mb" "$mb_ws" "$mb_route" "$mb_http" "$ref" "$ref_ws" "$ref_route" "$ref_http"; do
  for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
done
echo "meshbroker $("$bin" --version | cut -d' ' -f2) vs $(.bench/nats-server --version) on $(nproc) cores"
bench() { "$bin" bench --url "nats://127.0.0.1:$mb" --compare-url "nats://127.0.0.1:$ref" "$@"; }
bench --pid "$mb_pid" --compare-pid "$ref_pid" --scenarios idle,storm "$@"
bench --sub-url "127.0.0.1:$mb_ws" --compare-sub-url "127.0.0.1:$ref_ws" --scenarios stormws "$@" | tail -n +2
bench --sub-url "127.0.0.1:$mb_route" --compare-sub-url "127.0.0.1:$ref_route" --scenarios stormroute "$@" | tail -n +2
bench --sub-url "127.0.0.1:$mb_http" --compare-sub-url "127.0.0.1:$ref_http" --scenarios stormhttp "$@" | tail -n +2
