#!/usr/bin/env bash
# Publish throughput with accounts and permissions: meshbroker and nats-server 2.15.1
# both with two accounts (the bench user's, and another the load never reaches) and a
# user whose publish and subscribe permissions are allow lists with a deny, in one go;
# then meshbroker with them against meshbroker open (no auth, the `$G` account), to
# show what accounts and permissions cost it.
#
#   ./scripts/bench-accounts.sh [extra bench flags, e.g. --msgs 5000000 --rounds 3]
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
mb=$(port_free); ref=$(port_free); open=$(port_free)
cat > "$work/accounts.toml" <<TOML
listen = "127.0.0.1:$mb"
log_level = "warn"

[accounts.APP]
users = [{ user = "bench", password = "s3cret", permissions = { publish = { allow = ["bench.>", "_INBOX.>"], deny = ["bench.admin.>"] }, subscribe = { allow = ["bench.>", "_INBOX.>"], deny = ["bench.admin.>"] } } }]

[accounts.OTHER]
users = [{ user = "other", password = "s3cret" }]
TOML
cat > "$work/ref.conf" <<CONF
accounts {
  APP: { users: [ { user: bench, password: s3cret, permissions: {
    publish: { allow: ["bench.>", "_INBOX.>"], deny: ["bench.admin.>"] },
    subscribe: { allow: ["bench.>", "_INBOX.>"], deny: ["bench.admin.>"] } } } ] }
  OTHER: { users: [ { user: other, password: s3cret } ] }
}
CONF
printf 'listen = "127.0.0.1:%s"\nlog_level = "warn"\n' "$open" > "$work/open.toml"
"$bin" --check --conf "$work/accounts.toml" >/dev/null
"$bin" --conf "$work/accounts.toml" & pids+=($!)
"$bin" --conf "$work/open.toml" & pids+=($!)
.bench/nats-server -c "$work/ref.conf" -a 127.0.0.1 -p "$ref" -l "$work/ref.log" & pids+=($!)
for port in "$mb" "$ref" "$open"; do
  for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
done
scenarios=${SCENARIOS:-pub16,pub128,pubsub1,pubsub4,queue4,reqrep}
echo "meshbroker $("$bin" --version | cut -d' ' -f2) vs $(.bench/nats-server --version) on $(nproc) cores"
echo "== accounts and permissions on both servers"
"$bin" bench --url "nats://127.0.0.1:$mb" --compare-url "nats://127.0.0.1:$ref" \
  --user bench --password s3cret --scenarios "$scenarios" "$@"
echo "== meshbroker with accounts and permissions (bench user) against meshbroker open"
"$bin" bench --url "nats://127.0.0.1:$mb" --compare-url "nats://127.0.0.1:$open" \
  --name accounts --compare-name open --user bench --password s3cret --scenarios "$scenarios" "$@"
