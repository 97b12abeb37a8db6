#!/usr/bin/env bash
# Measures how fast the mesh converges, in network namespaces with wireguard-go (root
# needed): runs the mesh test RUNS times (default 5) and summarises what it reports:
# three nodes from one seed to full routes, a fourth node routed by all after its
# start, a killed node dropped, a vanished node (link cut, sockets open) dropped, and
# delivery resumed after a partition heals. Then the rounds test once: 10 rounds each
# of a node killed (dropped by all), restarted (routed by all) and healed after a cut
# (delivery), with their median and maximum.
#
#   ./scripts/mesh-convergence.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo build --quiet
for i in $(seq "$runs"); do
  cargo test --quiet --test mesh nodes_from_seeds -- --nocapture 2>&1 \
    | grep -E "full routes after|routed by all|dropped by all|vanished node dropped|delivery resumed" \
    | tee -a "$out"
done
cargo test --quiet --test mesh killed_restarted_and_healed -- --nocapture 2>&1 \
  | grep -E "over [0-9]+ rounds" > "$out.rounds"
python3 - "$out" <<'PY'
import re, sys, statistics
def secs(text):
    m = re.match(r"([\d.]+)(ns|µs|us|ms|s)$", text)
    v, unit = float(m.group(1)), m.group(2)
    return v * {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]
rows = {}
for line in open(sys.argv[1], encoding="utf-8"):
    if "full routes after" in line:
        # The three waits run one after another: the mesh is full after their sum.
        parts = re.findall(r"([\d.]+(?:ns|µs|us|ms|s))", line.split("after", 1)[1])
        rows.setdefault("three nodes from one seed: full mesh", []).append(sum(map(secs, parts)))
    else:
        m = re.search(r"([\d.]+(?:ns|µs|us|ms|s))", line)
        key = re.sub(r"\s*[\d.]+(?:ns|µs|us|ms|s).*", "", line).strip()
        key = key.replace(" after", "").replace(" by all", " by all")
        rows.setdefault(key, []).append(secs(m.group(1)))
print(f"\n{'measure':<45} {'min':>8} {'median':>8} {'max':>8}  (seconds, {len(next(iter(rows.values()), []))} runs)")
for key, values in rows.items():
    print(f"{key:<45} {min(values):>8.3f} {statistics.median(values):>8.3f} {max(values):>8.3f}")
PY
echo
echo "rounds test (killed_restarted_and_healed_nodes_are_seen_within_a_second):"
cat "$out.rounds"
rm -f "$out.rounds"
