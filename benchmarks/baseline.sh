#!/usr/bin/env bash
# baseline.sh <commit>: an earlier atmx to benchmark beside the current one (before/after figures).
# Checks <commit> out in benchmarks/.cache/baseline-<commit>/tree (a detached git worktree), installs
# it into its own venv there, and prints the line to export for the `atmx-baseline` consumer:
#   eval "$(bash benchmarks/baseline.sh 660f9f4)"
#   .venv/bin/python -m benchmarks.run --consumers atmx,atmx-baseline ...
set -euo pipefail
commit=${1:?usage: bash benchmarks/baseline.sh <commit>}
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
sha=$(git -C "$REPO" rev-parse --short "$commit^{commit}")
DIR="$HERE/.cache/baseline-$sha"
if [ ! -d "$DIR/tree" ]; then
  mkdir -p "$DIR"
  git -C "$REPO" worktree add --detach "$DIR/tree" "$sha" >&2
fi
if [ ! -x "$DIR/tree/.venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$DIR/tree/.venv"
  "$DIR/tree/.venv/bin/pip" install -q --disable-pip-version-check -e "$DIR/tree" >&2
fi
echo "export ATMX_BENCH_BASELINE_PYTHON=$DIR/tree/.venv/bin/python"
