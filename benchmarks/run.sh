#!/usr/bin/env bash
# The one command behind docs/benchmarks.md: install the peers if needed, run every benchmark,
# write benchmarks/.cache/results-latest.json and docs/benchmarks-throughput.png.
#   bash benchmarks/run.sh            # default: 2x10^5 events (~25 min on 2 cores, first corpus build included)
#   bash benchmarks/run.sh --long     # 10^6 events, paced over 10^6, API up to 10^7 bindings (hours)
#   bash benchmarks/run.sh --smoke    # seconds: proves the harness works
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
PYTHON="$PY" bash "$ROOT/benchmarks/setup.sh"
cd "$ROOT"
exec "$PY" -m benchmarks.run --chart docs/benchmarks-throughput.png "$@"
