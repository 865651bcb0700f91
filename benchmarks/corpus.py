"""A firehose corpus for the benchmarks: real signed repos, a network-like mix, cached on disk.

    python -m benchmarks.corpus --events 200000          # build (or reuse) and print its summary

Every `#commit` is a real signed commit (k256 or p256) with the diff CAR a PDS sends (MST
nodes on each op's path in the old and new trees), built with `tests/forge.py`'s RepoBuilder,
so a verifying consumer does the same work as on the live network. The mix is mostly likes,
posts, follows and reposts (and deletes of them), with `#identity` and `#account` events and a
configurable share of `org.xmtp.inbox` / `at.didcomm.keyPackage` creates, updates and deletes,
made by a small set of "messaging" accounts (as on the network, few accounts publish bindings).

On disk (`benchmarks/.cache/corpus-*/`): `frames.bin` (u32 big-endian length + websocket
message, in seq order 1..N), `meta.json` (accounts with their did:key, matched events), and
`proofs.json`: for each messaging account, the `getRecord` proof of every indexed path as its
repo stood after each of its commits from its first matched one on, so that the PDS stand-in
answers a proof fetch with the repo as it stands at the replay's position, as a PDS would.
Building is split over processes by account; a cached corpus is reused as is.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import mmap
import multiprocessing
import os
import random
import struct
import sys
import time
from array import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cbrrr import DagCborTypes, encode_dag_cbor

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("ATMX_BENCH_CACHE", ROOT / "benchmarks" / ".cache"))
# 5: commits carry the MST paths to the neighbours of their ops (inversion needs them)
# 6: proofs after every commit of a messaging account, not only its first matched one
FORMAT_VERSION = 6
START = datetime(2026, 1, 1, tzinfo=UTC)  # repo clocks start here, so revs are always in the past
MATCHED = ("org.xmtp.inbox", "at.didcomm.keyPackage")
_B32 = "abcdefghijklmnopqrstuvwxyz234567"

# The network-like mix, per event (weights). Matched writes are added by `match_share`.
MIX: dict[str, float] = {
    "like": 45.0,
    "post": 17.0,
    "follow": 14.0,
    "repost": 10.0,
    "unlike": 4.0,
    "delete_post": 1.5,
    "unfollow": 1.5,
    "profile": 1.0,
    "identity": 4.0,
    "account": 2.0,
}
_WORDS = (
    "the a of to and in is it you that he was for on are with as his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said an each she which do their "
    "time if will way about many then them write would like so these her long make thing see him two has look"
).split()


@dataclass(frozen=True)
class CorpusSpec:
    events: int
    match_share: float = 0.01  # share of events that are matched writes (xmtp inbox / didcomm key package)
    p256_share: float = 0.3  # share of accounts with a p256 (rather than k256) signing key
    seed: int = 1

    @property
    def name(self) -> str:
        return f"corpus-v{FORMAT_VERSION}-{self.events}-m{self.match_share:g}-p{self.p256_share:g}-s{self.seed}"

    @property
    def accounts(self) -> int:
        return max(20, min(50_000, self.events // 40))


@dataclass(frozen=True)
class Account:
    did: str
    curve: str
    secret_hex: str
    did_key: str
    handle: str


class Corpus:
    """A built corpus: frames by seq (memory-mapped) and its metadata."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.meta: dict[str, Any] = json.loads((path / "meta.json").read_text())
        self._file = open(path / "frames.bin", "rb")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self.offsets = array("Q")
        pos, size = 0, len(self._map)
        while pos < size:
            (length,) = struct.unpack_from(">I", self._map, pos)
            self.offsets.append(pos + 4)
            pos += 4 + length
        self.offsets.append(pos + 4)  # sentinel: end of the last frame is offsets[i + 1] - 4

    @property
    def count(self) -> int:
        return len(self.offsets) - 1

    @property
    def last_seq(self) -> int:
        return int(self.meta["last_seq"])

    def frame(self, index: int) -> memoryview:
        """The websocket message of seq `index + 1`."""
        return memoryview(self._map)[self.offsets[index] : self.offsets[index + 1] - 4]

    def frames(self, start: int = 0) -> Iterator[memoryview]:
        for i in range(start, self.count):
            yield self.frame(i)

    def accounts(self) -> list[Account]:
        return [Account(**a) for a in self.meta["accounts"]]

    def close(self) -> None:
        self._map.close()
        self._file.close()


def _did(seed: int, i: int) -> str:
    digest = hashlib.sha256(f"atmx-bench-did/{seed}/{i}".encode()).digest()
    n = int.from_bytes(digest[:15], "big")
    return "did:plc:" + "".join(_B32[(n >> (5 * k)) & 31] for k in range(24))


def _account(seed: int, i: int, p256_share: float, rng: random.Random) -> Account:
    sys.path.insert(0, str(ROOT / "tests"))
    from forge import SigningKey

    curve = "p256" if rng.random() < p256_share else "k256"
    secret = hashlib.sha256(f"atmx-bench-key/{seed}/{i}".encode()).digest()
    key = SigningKey(curve, secret)
    return Account(_did(seed, i), curve, secret.hex(), key.did_key, f"u{i}.bench.test")


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _tid(us: int, clock: int) -> str:
    n = (us << 10) | (clock & 0x3FF)
    return "".join("234567abcdefghijklmnopqrstuvwxyz"[(n >> (5 * i)) & 31] for i in range(12, -1, -1))


class _Planner:
    """Decides, in seq order, what every event is (cheap); repos are built later, in parallel."""

    def __init__(self, spec: CorpusSpec, accounts: list[Account]) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.accounts = accounts
        n = len(accounts)
        # activity is skewed: a few accounts write a lot (Zipf-like weights). Cumulative once, as
        # random.choices would compute them on every call (O(accounts) per event otherwise)
        self.cum_weights = list(itertools.accumulate(1.0 / (r + 1) ** 0.7 for r in range(n)))
        self.population = range(n)
        # 5% of accounts, drawn at random, publish bindings; a matched-heavy corpus uses every account
        self.messaging = (
            sorted(self.rng.sample(range(n), max(1, n // 20))) if spec.match_share < 0.5 else list(range(n))
        )
        self.owned: list[list[str]] = [[] for _ in range(n)]  # deletable non-matched paths
        self.follows: list[list[str]] = [[] for _ in range(n)]
        self.bindings: list[dict[str, int]] = [{} for _ in range(n)]  # path -> version
        self.clock_us = int(START.timestamp() * 1_000_000)
        self.ops: dict[int, list[tuple[int, dict[str, Any]]]] = {}  # account -> [(seq, changes)]
        self.other: list[tuple[int, bytes]] = []  # (seq, frame) of #identity / #account
        self.matched: list[list[Any]] = []
        self.counts: dict[str, int] = {}

    def plan(self) -> None:
        kinds = list(MIX)
        mix_weights = [MIX[k] for k in kinds]
        total = sum(mix_weights)
        mix_weights = [w / total * (1 - self.spec.match_share) for w in mix_weights]
        kinds.append("matched")
        mix_weights.append(self.spec.match_share)
        for seq in range(1, self.spec.events + 1):
            self.clock_us += 1000
            kind = self.rng.choices(kinds, mix_weights)[0]
            if kind == "matched":
                acct = self.rng.choice(self.messaging)
            else:
                acct = self.rng.choices(self.population, cum_weights=self.cum_weights)[0]
            kind = self._event(seq, kind, acct)
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def _when(self) -> str:
        return _iso(datetime.fromtimestamp(self.clock_us / 1_000_000, UTC))

    def _rkey(self) -> str:
        return _tid(self.clock_us, self.rng.randrange(1024))

    def _ref(self) -> dict[str, str]:
        other = self.rng.choice(self.accounts).did
        cid = "bafyrei" + "".join(self.rng.choice(_B32) for _ in range(52))
        return {"uri": f"at://{other}/app.bsky.feed.post/{self._rkey()}", "cid": cid}

    def _commit(self, seq: int, acct: int, changes: dict[str, Any]) -> None:
        self.ops.setdefault(acct, []).append((seq, changes))

    def _event(self, seq: int, kind: str, acct: int) -> str:
        did = self.accounts[acct].did
        now = self._when()
        if kind == "identity":
            body: dict[str, DagCborTypes] = {"seq": seq, "did": did, "time": now, "handle": self.accounts[acct].handle}
            self.other.append((seq, encode_dag_cbor({"op": 1, "t": "#identity"}) + encode_dag_cbor(body)))
            return kind
        if kind == "account":
            body = {"seq": seq, "did": did, "time": now, "active": True}
            self.other.append((seq, encode_dag_cbor({"op": 1, "t": "#account"}) + encode_dag_cbor(body)))
            return kind
        if kind in ("unlike", "delete_post", "unfollow"):
            pool = self.follows[acct] if kind == "unfollow" else self.owned[acct]
            if not pool:
                kind = "like"
            else:
                path = pool.pop(self.rng.randrange(len(pool)))
                self._commit(seq, acct, {path: None})
                return kind
        if kind == "matched":
            return self._matched(seq, acct, now)
        if kind == "like" or kind == "repost":
            nsid = "app.bsky.feed." + kind
            record: dict[str, Any] = {"$type": nsid, "subject": self._ref(), "createdAt": now}
        elif kind == "post":
            nsid = "app.bsky.feed.post"
            words = self.rng.choices(_WORDS, k=self.rng.randint(3, 40))
            record = {"$type": nsid, "text": " ".join(words)[:300], "langs": ["en"], "createdAt": now}
            if self.rng.random() < 0.3:
                record["reply"] = {"root": self._ref(), "parent": self._ref()}
        elif kind == "follow":
            nsid = "app.bsky.graph.follow"
            record = {"$type": nsid, "subject": self.rng.choice(self.accounts).did, "createdAt": now}
        else:  # profile
            self._commit(seq, acct, {"app.bsky.actor.profile/self": {
                "$type": "app.bsky.actor.profile",
                "displayName": " ".join(self.rng.choices(_WORDS, k=2)),
                "description": " ".join(self.rng.choices(_WORDS, k=12)),
            }})  # fmt: skip
            return kind
        path = f"{nsid}/{self._rkey()}"
        (self.follows if kind == "follow" else self.owned)[acct].append(path)
        self._commit(seq, acct, {path: record})
        return kind

    def _matched(self, seq: int, acct: int, now: str) -> str:
        held = self.bindings[acct]
        collection = self.rng.choice(MATCHED)
        path = f"{collection}/self"  # both lexicons: key literal:self
        if path in held and self.rng.random() < 0.2:
            del held[path]
            self._commit(seq, acct, {path: None})
            self.matched.append([seq, self.accounts[acct].did, path, "delete"])
            return "matched_delete"
        action = "update" if path in held else "create"
        held[path] = held.get(path, 0) + 1
        if collection == "org.xmtp.inbox":
            record: dict[str, Any] = {
                "$type": collection,
                "id": self.rng.randbytes(32).hex(),
                "verificationSignature": _b64(self.rng.randbytes(64)),
                "createdAt": now,
            }
        else:
            record = {
                "$type": collection,
                "did": "did:peer:2.Ez6LS" + self.rng.randbytes(22).hex() + ".Vz6Mk" + self.rng.randbytes(22).hex(),
                "mediators": ["did:web:mediator.bench.test"],
                "label": self.rng.choice(("phone", "laptop", "tablet")),
                "createdAt": now,
            }
        self._commit(seq, acct, {path: record})
        self.matched.append([seq, self.accounts[acct].did, path, action])
        return "matched_" + action


def _b64(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode()  # padded: the lexicon wants exactly 88 chars


def _build_repos(job: tuple[list[tuple[dict[str, Any], list[tuple[int, dict[str, Any]]]]], str]) -> str:
    """Worker: build each account's commits in order; write (seq, frame) records to a part file,
    and each messaging account's proofs after each commit (from its first matched one) to
    `<part>.proofs`."""
    items, out = job
    sys.path.insert(0, str(ROOT / "tests"))
    from forge import RepoBuilder, SigningKey

    from atmx.indexer.records.registry import FAMILIES

    single_paths = [f"{f.nsid}/self" for f in FAMILIES if f.single]
    proofs: dict[str, list[tuple[int, dict[str, str]]]] = {}
    with open(out, "wb") as fh:
        for acct, ops in items:
            key = SigningKey(acct["curve"], bytes.fromhex(acct["secret_hex"]))
            repo = RepoBuilder(acct["did"], key, start=START)
            for seq, changes in ops:
                frame = repo.commit(changes).to_frame(seq)
                fh.write(struct.pack(">QI", seq, len(frame)))
                fh.write(frame)
                if acct["did"] in proofs or any(p.partition("/")[0] in MATCHED for p in changes):
                    version = {p: _b64(repo.record_car(p)) for p in single_paths}
                    proofs.setdefault(acct["did"], []).append((seq, version))
    with open(out + ".proofs", "w") as fh:
        json.dump(proofs, fh)
    return out


def _read_parts(paths: list[str]) -> Iterator[tuple[int, bytes]]:
    for path in paths:
        with open(path, "rb") as fh:
            data = fh.read()
        pos = 0
        while pos < len(data):
            seq, length = struct.unpack_from(">QI", data, pos)
            pos += 12
            yield seq, data[pos : pos + length]
            pos += length


def build(spec: CorpusSpec, *, workers: int | None = None, cache: Path = CACHE, quiet: bool = False) -> Corpus:
    """The corpus for `spec`, built once and then read from the cache."""
    target = cache / spec.name
    if (target / "meta.json").exists():
        return Corpus(target)
    t0 = time.perf_counter()
    tmp = cache / (spec.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    rng = random.Random(spec.seed)
    accounts = [_account(spec.seed, i, spec.p256_share, rng) for i in range(spec.accounts)]
    planner = _Planner(spec, accounts)
    planner.plan()
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    # deal accounts round-robin by op count so the parts take about the same time
    order = sorted(planner.ops, key=lambda a: -len(planner.ops[a]))
    jobs: list[list[tuple[dict[str, Any], list[tuple[int, dict[str, Any]]]]]] = [[] for _ in range(workers * 4)]
    for n, a in enumerate(order):
        jobs[n % len(jobs)].append((asdict(accounts[a]), planner.ops[a]))
    parts = [str(tmp / f"part{i}.bin") for i in range(len(jobs))]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_build_repos, list(zip(jobs, parts, strict=True)))
    frames: list[bytes | None] = [None] * spec.events
    for seq, built in _read_parts(parts):
        frames[seq - 1] = built
    for seq, built in planner.other:
        frames[seq - 1] = built
    with open(tmp / "frames.bin", "wb") as fh:
        for frame in frames:
            assert frame is not None
            fh.write(struct.pack(">I", len(frame)))
            fh.write(frame)
    proofs: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for p in parts:
        with open(p + ".proofs") as fh:
            proofs.update(json.load(fh))
        os.unlink(p + ".proofs")
        os.unlink(p)
    (tmp / "proofs.json").write_text(json.dumps(proofs))
    meta = {
        "spec": asdict(spec),
        "last_seq": spec.events,
        "accounts": [asdict(a) for a in accounts],
        "matched": planner.matched,
        "counts": dict(sorted(planner.counts.items())),
        "bytes": (tmp / "frames.bin").stat().st_size,
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    (tmp / "meta.json").write_text(json.dumps(meta))
    os.replace(tmp, target)
    if not quiet:
        print(f"built {spec.name} in {meta['build_seconds']}s", file=sys.stderr)
    return Corpus(target)


def did_document(account: Account, pds: str) -> dict[str, Any]:
    """The DID document the loopback PLC stand-in serves for a corpus account."""
    return {
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": account.did,
        "alsoKnownAs": [f"at://{account.handle}"],
        "verificationMethod": [
            {
                "id": account.did + "#atproto",
                "type": "Multikey",
                "controller": account.did,
                "publicKeyMultibase": account.did_key.removeprefix("did:key:"),
            }
        ],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds}],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--match-share", type=float, default=0.01)
    p.add_argument("--p256-share", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=None)
    a = p.parse_args(argv)
    corpus = build(CorpusSpec(a.events, a.match_share, a.p256_share, a.seed), workers=a.workers)
    meta = {k: v for k, v in corpus.meta.items() if k not in ("accounts", "matched")}
    print(json.dumps({"path": str(corpus.path), "frames": corpus.count, **meta}, indent=1))


if __name__ == "__main__":
    main()
