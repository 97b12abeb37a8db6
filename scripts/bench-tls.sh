#!/usr/bin/env bash
# TLS publish throughput: meshbroker and nats-server 2.15.1, both serving clients over
# TLS with the same certificate (made here: a throwaway CA and a server certificate
# for localhost), measured in one run by `meshbroker bench` (rustls client, TLS 1.3).
#
#   ./scripts/bench-tls.sh [extra bench flags, e.g. --msgs 2000000 --rounds 5]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-reference.sh >/dev/null
cargo build --release --quiet
bin=target/release/meshbroker
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj "/CN=bench CA" -keyout "$work/ca-key.pem" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -subj "/CN=localhost" -keyout "$work/key.pem" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$work/ext.cnf"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca-key.pem" \
  -CAcreateserial -days 1 -extfile "$work/ext.cnf" -out "$work/cert.pem" 2>/dev/null

port_free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mb_port=$(port_free); ref_port=$(port_free)
cat > "$work/node.toml" <<TOML
listen = "127.0.0.1:$mb_port"
log_level = "warn"
[jetstream]
enabled = false
[tls]
cert_file = "$work/cert.pem"
key_file = "$work/key.pem"
TOML
"$bin" --conf "$work/node.toml" & pids+=($!)
cat > "$work/ref.conf" <<CONF
tls { cert_file: "$work/cert.pem", key_file: "$work/key.pem" }
CONF
.bench/nats-server -c "$work/ref.conf" -a 127.0.0.1 -p "$ref_port" -l "$work/ref.log" & pids+=($!)
for port in "$mb_port" "$ref_port"; do
  for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
done
echo "meshbroker $("$bin" --version | cut -d' ' -f2) vs $(.bench/nats-server --version) on $(nproc) cores, TLS"
"$bin" bench --url "tls://127.0.0.1:$mb_port" --compare-url "tls://127.0.0.1:$ref_port" \
  --tls-ca "$work/ca.pem" --scenarios "${SCENARIOS:-tlspub,tlspubsub}" "$@"
