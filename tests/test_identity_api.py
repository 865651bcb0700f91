"""indexer/xmtp/identity_api.py: the IdentityApi requests atmx sends and what it takes as an answer.

Pure: bytes in, checked values out. The same answers over a real gRPC channel are
test_xmtp_client.py's.
"""

from __future__ import annotations

import hashlib

import pytest

from atmx.indexer.xmtp.identity_api import (
    MAX_SCW_BATCH,
    MAX_UPDATES,
    IdentityUpdateLog,
    ScwSignatureCheck,
    XmtpUnavailable,
    check_inbox_id,
    decode_scw,
    decode_updates,
    scw_request,
    updates_request,
)
from atmx.indexer.xmtp.proto import association_pb2, identity_api_pb2

INBOX = hashlib.sha256(b"inbox").hexdigest()
OTHER = hashlib.sha256(b"other").hexdigest()


def answer(inbox_id: str, seqs: list[int], *, without_update: int | None = None) -> bytes:
    out = identity_api_pb2.GetIdentityUpdatesResponse()
    entry = out.responses.add(inbox_id=inbox_id)
    for s in seqs:
        item = entry.updates.add(sequence_id=s, server_timestamp_ns=s * 10)
        if s != without_update:
            item.update.CopyFrom(association_pb2.IdentityUpdate(inbox_id=inbox_id, client_timestamp_ns=s))
    return bytes(out.SerializeToString())


def test_inbox_ids_are_64_lowercase_hex() -> None:
    check_inbox_id(INBOX)
    for bad in (INBOX.upper(), INBOX[:63], INBOX + "0", "g" * 64):
        with pytest.raises(ValueError, match="not an XMTP inbox ID"):
            check_inbox_id(bad)


def test_the_updates_request_asks_for_one_inbox_after_a_sequence_id() -> None:
    request = identity_api_pb2.GetIdentityUpdatesRequest.FromString(updates_request(INBOX, 5))
    assert [(r.inbox_id, r.sequence_id) for r in request.requests] == [(INBOX, 5)]


def test_an_honest_log() -> None:
    logs = decode_updates("production", answer(INBOX, [6, 7, 9]), INBOX, 5)
    assert [(e.sequence_id, e.server_timestamp_ns) for e in logs] == [(6, 60), (7, 70), (9, 90)]
    assert all(isinstance(e, IdentityUpdateLog) and e.update.inbox_id == INBOX for e in logs)
    empty = identity_api_pb2.GetIdentityUpdatesResponse().SerializeToString()
    assert decode_updates("production", empty, INBOX, 0) == []


@pytest.mark.parametrize(
    ("raw", "after", "reason", "fragment"),
    [
        (b"\xff\xff\xff\xff", 0, "bad_response", "undecodable"),
        (answer(OTHER, [1]), 0, "bad_response", "asked for"),
        (answer(INBOX, [2, 2]), 0, "bad_response", "sequence id 2 after 2"),
        (answer(INBOX, [3, 1]), 0, "bad_response", "sequence id 1 after 3"),
        (answer(INBOX, [4]), 5, "bad_response", "sequence id 4 after 5"),
        (answer(INBOX, [1, 2], without_update=2), 0, "bad_response", "has no update"),
        (answer(INBOX, list(range(1, MAX_UPDATES + 2))), 0, "too_large", "over 256 updates"),
    ],
)
def test_dishonest_answers(raw: bytes, after: int, reason: str, fragment: str) -> None:
    with pytest.raises(XmtpUnavailable, match=fragment) as e:
        decode_updates("production", raw, INBOX, after)
    assert (e.value.reason, e.value.env) == (reason, "production")


def test_two_answers_for_one_inbox_are_refused() -> None:
    out = identity_api_pb2.GetIdentityUpdatesResponse()
    out.responses.add(inbox_id=INBOX)
    out.responses.add(inbox_id=INBOX)
    with pytest.raises(XmtpUnavailable, match="2 answers for one inbox"):
        decode_updates("dev", out.SerializeToString(), INBOX, 0)


CHECK = ScwSignatureCheck("eip155:1:0xabc", 7, b"sig", bytes(32))


def test_scw_request_carries_the_block_number_only_when_known() -> None:
    raw = scw_request([CHECK, ScwSignatureCheck("eip155:1:0xdef", None, b"sig2", bytes(32))])
    request = identity_api_pb2.VerifySmartContractWalletSignaturesRequest.FromString(raw)
    first, second = request.signatures
    assert (first.account_id, first.block_number, first.signature) == ("eip155:1:0xabc", 7, b"sig")
    assert first.HasField("block_number") and not second.HasField("block_number")
    with pytest.raises(ValueError, match="at most 64"):
        scw_request([CHECK] * (MAX_SCW_BATCH + 1))


def test_scw_verdicts() -> None:
    out = identity_api_pb2.VerifySmartContractWalletSignaturesResponse()
    out.responses.add(is_valid=True)
    out.responses.add(is_valid=False)
    out.responses.add(is_valid=False, error="chain RPC failed")
    assert decode_scw("production", out.SerializeToString(), 3) == [True, False, None]
    with pytest.raises(XmtpUnavailable, match="3 answers for 2 signatures"):
        decode_scw("production", out.SerializeToString(), 2)
    with pytest.raises(XmtpUnavailable, match="undecodable"):
        decode_scw("production", b"\xff\xff", 1)
