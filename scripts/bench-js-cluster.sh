#!/usr/bin/env bash
# Replicated JetStream in one run: three meshbroker nodes (jetstream.peers, routes on
# loopback) against three nats-server 2.15.1 nodes (a JetStream cluster on loopback).
# Each scenario creates an R3 file stream through the first node of each cluster and
# drives it from there: async publish (window 256, 128 B) and a pull consumer.
# Prints each ratio (> 1: meshbroker is better). What an ack promises differs: see
# the README (meshbroker fsyncs a quorum before a PubAck by default; the reference
# with R>1 does not fsync per ack).
#
#   ./scripts/bench-js-cluster.sh [extra bench flags, e.g. --js-msgs 100000 --rounds 3]
#   MB_ACK=write ./scripts/bench-js-cluster.sh     # meshbroker acks after the journal write
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-reference.sh >/dev/null
cargo build --release --quiet
bin=target/release/meshbroker
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port_free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -A client route refc refr
for n in 1 2 3; do
  client[$n]=$(port_free); route[$n]=$(port_free); refc[$n]=$(port_free); refr[$n]=$(port_free)
done
for n in 1 2 3; do
  routes=""; refroutes=""
  for m in 1 2 3; do
    [ $m = $n ] && continue
    routes+="\"nats-route://127.0.0.1:${route[$m]}\","
    refroutes+="nats://127.0.0.1:${refr[$m]},"
  done
  cat > "$work/mb$n.toml" <<TOML
server_name = "mb$n"
listen = "127.0.0.1:${client[$n]}"
log_level = "warn"
[cluster]
name = "bench"
listen = "127.0.0.1:${route[$n]}"
routes = [${routes%,}]
secret = "a-benchmark-cluster-secret"
[jetstream]
store_dir = "$work/mb$n-js"
ack = "${MB_ACK:-fsync}"
peers = ["mb1", "mb2", "mb3"]
TOML
  "$bin" --conf "$work/mb$n.toml" & pids+=($!)
  cat > "$work/ref$n.conf" <<CONF
server_name: ref$n
listen: 127.0.0.1:${refc[$n]}
jetstream { store_dir: "$work/ref$n-js" }
cluster { name: bench, listen: 127.0.0.1:${refr[$n]}, routes: [${refroutes%,}] }
CONF
  .bench/nats-server -c "$work/ref$n.conf" -l "$work/ref$n.log" & pids+=($!)
done
for n in 1 2 3; do
  for port in "${client[$n]}" "${refc[$n]}"; do
    for _ in $(seq 200); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  done
done
# Whether the JetStream behind a client port answers $JS.API.INFO (its meta leader
# is elected: the reference takes a few seconds more than meshbroker).
js_ready() {
  python3 - "$1" <<'PY'
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
s.sendall(b'CONNECT {"verbose":false}\r\nSUB _INBOX.ready 1\r\nPUB $JS.API.INFO _INBOX.ready 0\r\n\r\n')
got, end = b"", time.time() + 2
while time.time() < end and b"account_info_response" not in got:
    try:
        got += s.recv(65536)
    except socket.timeout:
        break
sys.exit(0 if b"account_info_response" in got and b'"error"' not in got else 1)
PY
}
for _ in $(seq 60); do
  if js_ready "${client[1]}" && js_ready "${refc[1]}"; then break; fi
  sleep 0.5
done
echo "meshbroker $("$bin" --version | cut -d' ' -f2) (ack = ${MB_ACK:-fsync}) vs $(.bench/nats-server --version), three-node JetStream clusters, R3 file streams, on $(nproc) cores"
compare=(--compare-url "nats://127.0.0.1:${refc[1]}")
[ "${ONLY:-}" = meshbroker ] && compare=()
[ "${ONLY:-}" = reference ] && compare=() && client[1]=${refc[1]}
"$bin" bench --url "nats://127.0.0.1:${client[1]}" "${compare[@]}" \
  --js-replicas 3 --scenarios "${SCENARIOS:-jspubasync,jsfetch}" "$@"
