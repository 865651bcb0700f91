"""Group a py-spy profile of `atmx index` (collapsed stacks, `py-spy record -f raw`) by the
part of atmx that owns each sample: the table in docs/benchmarks.md.

    ATMX_BENCH_PROFILE=/tmp/atmx.prof python -m benchmarks.run --consumers atmx --runs 1 \\
        --matched-events 0 --paced-events 0 --api-sizes ""
    python -m benchmarks.profile_report /tmp/atmx.prof

Start-up (imports) and idle samples are left out. A sample counts for the first rule whose
frame appears in its stack, rules being tried from the most specific.
"""

from __future__ import annotations

import sys
from collections import Counter

# (label, frame substring), most specific first
RULES: tuple[tuple[str, str], ...] = (
    ("verify a matched commit (CAR, signature, MST proof + inversion)", "verify_commit_message"),
    ("plan bindings (record validation)", "_plan_records"),
    ("resolve identities (HTTP to PLC / handle service, DID cache)", "IdentityResolver"),
    ("XMTP stage (offline here: fails fast)", "xmtp/"),
    ("write batches (PostgreSQL, one transaction per batch)", "Pipeline.flush"),
    ("pipeline bookkeeping (intake, chains, cursor mark)", "pipeline.py"),
    ("pre-filter: libipld decode + op paths", "prefilter.py"),
    ("websocket frames (indexer/websocket.py)", "websocket.py"),
    ("stream loop (indexer/stream.py)", "stream.py"),
    ("socket reads (recv)", "_read_ready__data_received"),
    ("PostgreSQL driver, other (pool, reads)", "asyncpg/"),
    ("event loop and the rest", ""),
)
SKIP = ("importlib", "<frozen runpy>:88);<module> (indexer/cli.py:312);main (indexer/cli.py:290)")
IDLE = ("EpollSelector.select", "select (selectors.py")


def categorize(path: str) -> tuple[Counter[str], int]:
    counts: Counter[str] = Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not n.isdigit() or any(s in stack for s in SKIP):
                continue
            frames = stack.split(";")
            if frames and any(s in frames[-1] for s in IDLE):
                continue
            for label, needle in RULES:
                if needle in stack:
                    counts[label] += int(n)
                    break
            total += int(n)
    return counts, total


def main(argv: list[str]) -> None:
    counts, total = categorize(argv[0])
    print(f"| where atmx's time goes ({total} samples) | share |\n|---|---:|")
    for label, _ in RULES:
        if counts[label]:
            print(f"| {label} | {counts[label] / total * 100:.1f}% |")


if __name__ == "__main__":
    main(sys.argv[1:])
