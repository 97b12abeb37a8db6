#!/usr/bin/env bash
# JWT logins against meshbroker and nats-server 2.15.1 in one go: both in operator
# mode with the same operator, accounts and user (made by `meshbroker auth`), a storm
# of 5,000 connections (256 handshakes in flight), each CONNECT carrying the user JWT
# and the nonce signed: every login checks a signature and the JWT chain.
#
#   ./scripts/bench-jwt.sh [extra bench flags, e.g. --conns 10000 --rounds 5]
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
mb=$(port_free); ref=$(port_free)
"$bin" auth init --dir "$work/auth" --account APP --resolver memory >/dev/null
creds=$("$bin" auth user --dir "$work/auth" --account APP --name bench)
{ echo "listen = \"127.0.0.1:$mb\""; echo 'log_level = "warn"'; cat "$work/auth/auth.toml"; } > "$work/node.toml"
# The same trust for the reference, in its config syntax.
python3 - "$work/auth/auth.toml" > "$work/ref.conf" <<'PY'
import sys, tomllib
c = tomllib.load(open(sys.argv[1], "rb"))
print(f'operator: "{c["operator"]}"')
print(f'system_account: {c["system_account"]}')
print("resolver: MEMORY")
print("resolver_preload: {")
for k, v in c["resolver_preload"].items():
    print(f'  {k}: "{v}"')
print("}")
PY
"$bin" --conf "$work/node.toml" 2>"$work/node.log" & pids+=($!)
.bench/nats-server -c "$work/ref.conf" -a 127.0.0.1 -p "$ref" -l "$work/ref.log" & pids+=($!)
for port in "$mb" "$ref"; do
  for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
done
echo "meshbroker $("$bin" --version | cut -d' ' -f2) vs $(.bench/nats-server --version) on $(nproc) cores"
"$bin" bench --url "nats://127.0.0.1:$mb" --compare-url "nats://127.0.0.1:$ref" \
  --scenarios stormjwt --creds "$creds" "$@"
