"""Fuzz run over every decoder that reads hostile bytes: websocket frames and handshakes, firehose
messages (full decoding and the pre-filter), CARs, MST node blocks, record validators (and every
registered family's planning and view, as the pipeline runs them), DID documents and XMTP
identity updates (envelope unwrap + log fold).

Each target may only raise its module's documented error type, always with a snake_case `reason`;
no input may take longer than PER_INPUT_SECONDS nor allocate more than PEAK_BYTES (tracemalloc).
Two drivers, both seeded from tests/fixtures/:
  * atheris (coverage-guided libFuzzer) in a child process per target: a crash, a timeout
    (-timeout) or an RSS over -rss_limit_mb fails the run;
  * an in-process mutation driver that measures time and tracemalloc peak per input.
CI: ~25 s in total. ATMX_LONG=1: minutes.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cbrrr import encode_dag_cbor
from libipld import decode_dag_cbor

from atmx.indexer.firehose.frames import CommitEvent, FrameError, decode_frame
from atmx.indexer.firehose.prefilter import Prefilter
from atmx.indexer.firehose.websocket import Handshake, MessageReader, ProtocolError
from atmx.indexer.identity.diddoc import DidDocError, mls_delivery_endpoint, parse_did_document
from atmx.indexer.index.plan import plan_record
from atmx.indexer.index.writes import BindingRow
from atmx.indexer.records.didcomm_keypackage import validate_didcomm_keypackage
from atmx.indexer.records.envelope import RecordError
from atmx.indexer.records.family import AccountContext
from atmx.indexer.records.registry import FAMILIES
from atmx.indexer.records.stored import StoredBinding
from atmx.indexer.records.view import protocol_views
from atmx.indexer.records.xmtp_inbox import validate_xmtp_inbox
from atmx.indexer.repo.car import CarError, read_car
from atmx.indexer.repo.mst import MstError, MstOp, invert_ops, lookup
from atmx.indexer.xmtp.association import AssociationError, fold_identity_log, identity_update_from_envelope

LONG = os.environ.get("ATMX_LONG") == "1"
ATHERIS_SECONDS = 300 if LONG else 2  # per target
MUTATIONS = 20_000 if LONG else 400  # per target, in-process
PER_INPUT_SECONDS = 2.0
PEAK_BYTES = 64 * 2**20
RSS_LIMIT_MB = 1024
FIXTURES = Path(__file__).parent / "fixtures"
REASON = re.compile(r"[a-z][a-z0-9_]*")
CID_1 = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"


# --- targets: bytes in, documented errors only --------------------------------------------------


def _frames(data: bytes) -> None:
    decode_frame(data)


# wants every other DID, so that both the skipping and the full-decoding paths run
_PREFILTER = Prefilter(lambda did: len(did) % 2 == 0)


def _prefilter(data: bytes) -> None:
    _PREFILTER.decode(data)


def _websocket(data: bytes) -> None:
    """Server bytes: the reader never raises (a violation is `error`, with a close code), in any chunking."""
    for cut in (len(data), len(data) // 2, 1):
        reader = MessageReader(1 << 16)
        reader.feed(data[:cut])
        reader.feed(data[cut:])
        assert reader.error is None or (isinstance(reader.error, ProtocolError) and reader.error.code in (1002, 1009))
    from websockets.exceptions import InvalidHandshake

    try:
        Handshake("ws://127.0.0.1:9/xrpc/com.atproto.sync.subscribeRepos").receive(data)
    except InvalidHandshake:  # websockets' own refusals (status, headers, accept key)
        pass


def _car(data: bytes) -> None:
    read_car(data)


def _mst(data: bytes) -> None:
    from cbrrr import CID

    root = CID.cidv1_dag_cbor_sha256_32_from(data)
    blocks = {root: data}
    lookup(root, "org.xmtp.inbox/self", blocks)
    invert_ops(root, [MstOp("create", "org.xmtp.inbox/self", CID.decode(CID_1), None)], blocks)


def _records(data: bytes) -> None:
    try:
        record = decode_dag_cbor(data)
    except ValueError:  # not CBOR: the frame/CAR layers reject it before any validator runs
        return
    if isinstance(record, dict):
        for validate in (validate_xmtp_inbox, validate_didcomm_keypackage):
            try:
                validate(record, "self")
            except RecordError as exc:
                _check_reason(exc)


def _families(data: bytes) -> None:
    """A record block through every family as the pipeline takes it (decode, limits, validator,
    lookup key) and through the API's views: rows only, never an exception."""
    stored: list[StoredBinding] = []
    for family in FAMILIES:
        for rkey in ("self", "3n2ve3cnqbc2t"):
            row, _ = plan_record("did:plc:fuzz", "3kaaaaaaaaa22", f"{family.nsid}/{rkey}", CID_1, data)
            if not isinstance(row, BindingRow):
                continue
            assert (row.status == "invalid") == (row.reason is not None), (row.status, row.reason)
            assert row.key is None or row.status != "invalid"
            assert row.reason is None or REASON.fullmatch(row.reason), row.reason
            stored.append(_stored(row))
    protocol_views(stored, AccountContext(mls_endpoint="https://mls.example"))


def _stored(row: BindingRow) -> StoredBinding:
    return StoredBinding(
        did=row.did,
        collection=row.collection,
        rkey=row.rkey,
        protocol=row.protocol,
        uri=row.uri,
        cid=row.cid,
        rev=row.rev,
        record=row.record,
        status=row.status,
        reason=row.reason,
        xmtp_inbox_id=row.xmtp_inbox_id,
        xmtp_env=None,
        xmtp_installation=None,
        created_at=row.created_at,
        indexed_at=_EPOCH,
        verified_at=None,
    )


def _diddoc(data: bytes) -> None:
    try:
        doc = json.loads(data)
    except ValueError:  # not JSON: the resolver rejects it before parsing
        return
    if isinstance(doc, dict):
        did = str(doc.get("id", "did:plc:fuzz"))
        services = doc.get("service")
        for service in services if isinstance(services, list) else [services]:
            mls_delivery_endpoint(did, service)  # never raises: it reads cached documents
        parse_did_document(did, doc)


def _xmtp(data: bytes) -> None:
    try:
        identity_update_from_envelope(data)
    except AssociationError as exc:
        _check_reason(exc)
    fold_identity_log([(1, data)])


TARGETS: dict[str, tuple[Callable[[bytes], None], tuple[type[ValueError], ...]]] = {
    "websocket": (_websocket, ()),
    "frames": (_frames, (FrameError,)),
    "prefilter": (_prefilter, (FrameError,)),
    "car": (_car, (CarError,)),
    "mst": (_mst, (MstError,)),
    "records": (_records, (RecordError,)),
    "families": (_families, ()),
    "diddoc": (_diddoc, (DidDocError,)),
    "xmtp": (_xmtp, (AssociationError,)),
}


def _check_reason(exc: BaseException) -> None:
    reason = getattr(exc, "reason", None)
    assert isinstance(reason, str) and REASON.fullmatch(reason), f"rejection without a reason: {exc!r}"


def run_one(name: str, data: bytes) -> None:
    target, errors = TARGETS[name]
    try:
        target(data)
    except errors as exc:
        _check_reason(exc)


# --- corpus from tests/fixtures -----------------------------------------------------------------


def corpus(name: str) -> list[bytes]:
    frames = [p.read_bytes() for p in sorted((FIXTURES / "devnet-frames").glob("*.bin"))]
    commits = [ev for ev in map(_decode_or_none, frames) if isinstance(ev, CommitEvent)]
    cars = [ev.blocks for ev in commits]
    blocks = [block for car in cars for block in read_car(car).blocks.values()]
    if name in ("frames", "prefilter"):
        return frames
    if name == "websocket":
        from websockets.frames import Frame, Opcode

        wire = [Frame(Opcode.BINARY, f).serialize(mask=False) for f in frames]
        return [
            *wire,
            b"".join(wire),
            Frame(Opcode.BINARY, frames[0], fin=False).serialize(mask=False)
            + Frame(Opcode.PING, b"p").serialize(mask=False)
            + Frame(Opcode.CONT, frames[1]).serialize(mask=False),
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n" + wire[0],
        ]
    if name == "car":
        return cars
    if name in ("mst", "records"):
        return blocks
    if name == "families":
        return [*_family_samples(), *blocks[:8]]
    if name == "diddoc":
        docs = [p.read_bytes() for p in FIXTURES.rglob("*.json") if b"verificationMethod" in p.read_bytes()]
        return docs or [_SAMPLE_DOC]
    vectors = json.loads((FIXTURES / "xmtp-vectors.json").read_text())
    return [bytes.fromhex(v) for v in _hex_strings(vectors)]


def _decode_or_none(data: bytes) -> object:
    try:
        return decode_frame(data)
    except FrameError:
        return None


def _hex_strings(node: object) -> list[str]:
    if isinstance(node, dict):
        return [h for value in node.values() for h in _hex_strings(value)]
    if isinstance(node, list):
        return [h for value in node for h in _hex_strings(value)]
    if isinstance(node, str) and len(node) >= 16 and len(node) % 2 == 0 and re.fullmatch(r"[0-9a-f]+", node):
        return [node]
    return []


def _family_samples() -> list[bytes]:
    """Well-formed records of the families without devnet frames, in DAG-CBOR."""
    germ = json.loads((FIXTURES / "germ" / "declaration.json").read_text())
    ed25519 = {"$bytes": "PUAXw+hDiVqStwqnTRt+vJyYLM8uxJaMwM1V8Sr0Zgw"}  # RFC 8032 test 2 public key
    p256 = {"$bytes": "A2sX0fLhLEJH+Lzm5WOkQPJ3A32BLeszoPShOUXYmMKW"}  # the P-256 generator, compressed
    created = "2026-09-04T00:00:00.000Z"
    records = [
        germ,
        {**germ, "continuityProofs": [ed25519, p256], "messageMe": {"messageMeUrl": "a:b#", "showButtonTo": "x"}},
        {
            "$type": "blue.catbird.chat.declaration",
            "allowIncoming": "following",
            "deliveryService": "did:web:chat.catbird.blue",
            "protocolVersion": "1",
            "createdAt": created,
        },
        *(
            {"$type": "blue.catbird.chat.device", "mlsSignaturePublicKey": key, "algorithm": alg, "createdAt": created}
            for key, alg in ((ed25519, "ed25519"), (p256, "p256"))
        ),
        {
            "$type": "blue.catbird.mlsChat.device",
            "mlsSignaturePublicKey": ed25519,
            "algorithm": "ed25519",
            "createdAt": created,
            "deviceId": "d",
            "deviceName": "iPad",
            "platform": "ios",
        },
    ]
    return [encode_dag_cbor(record, atjson_mode=True) for record in records]


_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)

_SAMPLE_DOC = json.dumps(
    {
        "id": "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
        "alsoKnownAs": ["at://atproto.com"],
        "verificationMethod": [
            {
                "id": "did:plc:ewvi7nxzyoun6zhxrhs64oiz#atproto",
                "type": "Multikey",
                "controller": "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
                "publicKeyMultibase": "zQ3shunBKsXixLxKtC5qeSG9E4J5RkGN57im31pcTzbNQnm5w",
            }
        ],
        "service": [
            {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "https://pds.example"}
        ],
    }
).encode()


# --- in-process mutation driver: time and tracemalloc peak per input ----------------------------


def mutate(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 8)):
        kind = rng.randrange(5)
        at = rng.randrange(len(data) + 1)
        if kind == 0 and data:
            data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        elif kind == 2:
            del data[at : at + rng.randint(1, 16)]
        elif kind == 3:  # boundary values where lengths and varints live
            data[at:at] = rng.choice(
                [b"\xff" * 8, b"\x00" * 4, b"\x7f", b"\x80\x80\x80\x80\x01", b"\x9b" + b"\xff" * 8]
            )
        else:
            data = data[:at]
    return bytes(data)


@pytest.mark.parametrize("name", list(TARGETS))
def test_mutations_within_time_and_memory(name: str) -> None:
    seeds = corpus(name)
    assert seeds, f"no seed corpus for {name}"
    rng = random.Random(f"atmx-fuzz-{name}")
    worst_time = worst_peak = 0.0
    tracemalloc.start()
    try:
        for n in range(MUTATIONS + len(seeds)):
            data = seeds[n] if n < len(seeds) else mutate(rng, rng.choice(seeds))
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            start = time.perf_counter()
            run_one(name, data)
            elapsed = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1] - base
            assert elapsed < PER_INPUT_SECONDS, (name, data[:64].hex(), elapsed)
            assert peak < PEAK_BYTES, (name, data[:64].hex(), peak)
            worst_time, worst_peak = max(worst_time, elapsed), max(worst_peak, peak)
    finally:
        tracemalloc.stop()
    print(
        f"fuzz[{name}] mutations={MUTATIONS + len(seeds)}",
        f"worst={worst_time * 1000:.1f}ms peak={worst_peak / 2**20:.1f}MiB",
    )


# --- atheris: coverage-guided, in a child process per target -------------------------------------


@pytest.mark.parametrize("name", list(TARGETS))
@pytest.mark.subprocess
def test_atheris(name: str, tmp_path: Path) -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        pytest.fail("atheris is required for tests/test_fuzz.py: pip install 'atheris>=2.3'")
    for i, seed in enumerate(corpus(name)):
        (tmp_path / f"seed-{i}").write_bytes(seed)
    args = [
        sys.executable, "-c", ATHERIS_CHILD.format(tests=str(Path(__file__).parent)), name, str(tmp_path),
        f"-max_total_time={ATHERIS_SECONDS}", f"-timeout={int(PER_INPUT_SECONDS) + 1}",
        f"-rss_limit_mb={RSS_LIMIT_MB}", "-seed=1", "-print_final_stats=1",
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=ATHERIS_SECONDS + 120, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", log)
    assert runs is not None and int(runs[1]) > 0, log[-2000:]
    print(f"atheris[{name}] executed={runs[1]}")


# The child instruments only atmx (for coverage feedback) by importing it inside instrument_imports.
ATHERIS_CHILD = """
import sys
import atheris
sys.path.insert(0, {tests!r})
with atheris.instrument_imports(include=["atmx"]):
    import test_fuzz
atheris.Setup([sys.argv[0], *sys.argv[2:]], lambda data: test_fuzz.run_one(sys.argv[1], data))
atheris.Fuzz()
"""
