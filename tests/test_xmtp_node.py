"""The loopback XMTP identity node itself: the RPCs libxmtp relies on, and the subprocess mode."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from xmtp_node import Lie, XmtpMitm, XmtpNode

from atmx.indexer.xmtp.client import XmtpNetwork
from atmx.indexer.xmtp.proto import association_pb2 as apb
from atmx.indexer.xmtp.proto import identity_api_pb2 as ipb

INBOX = "ab" * 32
ADDRESS = "0x" + "12" * 20


@pytest.fixture
def node() -> Iterator[XmtpNode]:
    with XmtpNode() as n:
        yield n


def call(node: XmtpNode, method: str, request: bytes) -> bytes:
    with grpc.insecure_channel(f"127.0.0.1:{node.port}") as channel:
        response: bytes = channel.unary_unary(method)(request, timeout=5)
        return response


def inbox_ids(node: XmtpNode, identifier: str) -> str | None:
    req = ipb.GetInboxIdsRequest()
    req.requests.add(identifier=identifier, identifier_kind=apb.IDENTIFIER_KIND_ETHEREUM)
    raw = call(node, "/xmtp.identity.api.v1.IdentityApi/GetInboxIds", req.SerializeToString())
    (answer,) = ipb.GetInboxIdsResponse.FromString(raw).responses
    assert answer.identifier == identifier
    return answer.inbox_id if answer.HasField("inbox_id") else None


def test_publish_then_lookup_and_revoke(node: XmtpNode) -> None:
    create = apb.IdentityUpdate(inbox_id=INBOX, client_timestamp_ns=1)
    create.actions.add().create_inbox.initial_identifier = ADDRESS
    req = ipb.PublishIdentityUpdateRequest(identity_update=create)
    assert call(node, "/xmtp.identity.api.v1.IdentityApi/PublishIdentityUpdate", req.SerializeToString()) == b""
    assert [e.sequence_id for e in node.log(INBOX)] == [1]
    assert node.log(INBOX)[0].update == create.SerializeToString()
    assert inbox_ids(node, ADDRESS.upper().replace("0X", "0x")) == INBOX  # addresses compare lowercase
    assert inbox_ids(node, "0x" + "34" * 20) is None

    revoke = apb.IdentityUpdate(inbox_id=INBOX, client_timestamp_ns=2)
    revoke.actions.add().revoke.member_to_revoke.ethereum_address = ADDRESS
    assert node.publish(revoke) == 2
    assert inbox_ids(node, ADDRESS) is None
    assert node.calls == ["PublishIdentityUpdate", "GetInboxIds", "GetInboxIds", "GetInboxIds"]


def test_other_rpcs_answer_empty(node: XmtpNode) -> None:
    assert call(node, "/xmtp.mls.api.v1.MlsApi/UploadKeyPackage", b"\x0a\x01x") == b""
    assert node.calls == ["UploadKeyPackage"]


def test_faults_spare_libxmtp_calls(node: XmtpNode) -> None:
    node.status = grpc.StatusCode.INTERNAL
    assert inbox_ids(node, ADDRESS) is None  # GetInboxIds is not a faulty method by default
    node.faulty_methods = frozenset({"GetInboxIds"})
    with pytest.raises(grpc.RpcError) as err:
        inbox_ids(node, ADDRESS)
    assert err.value.code() == grpc.StatusCode.INTERNAL


@pytest.mark.subprocess
async def test_subprocess_mode() -> None:
    script = Path(__file__).with_name("xmtp_node.py")
    tests_dir = str(script.parent)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdout=asyncio.subprocess.PIPE, env={"PYTHONPATH": tests_dir}
    )
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        async with XmtpNetwork({"sub": url}) as net:
            assert await net.get_identity_updates("sub", INBOX) == []
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


def identity_updates(url_or_node: XmtpNode | str, inbox: str, after: int = 0) -> tuple[str, list[tuple[int, int]]]:
    """(inbox id the answer names, [(sequence id, client timestamp)]) straight off the wire."""
    port = url_or_node.port if isinstance(url_or_node, XmtpNode) else int(url_or_node.rsplit(":", 1)[1])
    req = ipb.GetIdentityUpdatesRequest()
    req.requests.add(inbox_id=inbox, sequence_id=after)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        raw = channel.unary_unary("/xmtp.identity.api.v1.IdentityApi/GetIdentityUpdates")(
            req.SerializeToString(), timeout=5
        )
    (answer,) = ipb.GetIdentityUpdatesResponse.FromString(raw).responses
    return answer.inbox_id, [(u.sequence_id, u.update.client_timestamp_ns) for u in answer.updates]


def test_lies(node: XmtpNode) -> None:
    other = "cd" * 32
    for ts in (1, 2, 3):
        node.publish(apb.IdentityUpdate(inbox_id=INBOX, client_timestamp_ns=ts))
    node.publish(apb.IdentityUpdate(inbox_id=other, client_timestamp_ns=9))
    honest = [(1, 1), (2, 2), (3, 3)]
    assert identity_updates(node, INBOX) == (INBOX, honest)
    cases: list[tuple[Lie, int, tuple[str, list[tuple[int, int]]]]] = [
        (Lie(log_of=other), 0, (INBOX, [(4, 9)])),
        (Lie(answer_as=other), 0, (other, honest)),
        (Lie(keep=2), 0, (INBOX, honest[:2])),
        (Lie(drop=frozenset({2})), 0, (INBOX, [(1, 1), (3, 3)])),
        (Lie(order=(0, 2, 1)), 0, (INBOX, [(1, 1), (2, 3), (3, 2)])),
        (Lie(replay=True), 2, (INBOX, [(3, 3), (1004, 1), (1005, 2), (1006, 3)])),
        (Lie(reverse=True), 1, (INBOX, [(3, 3), (2, 2)])),
        (Lie(duplicate=True), 1, (INBOX, [(2, 2), (2, 2), (3, 3), (3, 3)])),
    ]
    for lie, after, expected in cases:
        node.lies[INBOX] = lie
        assert identity_updates(node, INBOX, after) == expected, lie
    del node.lies[INBOX]
    assert identity_updates(node, INBOX) == (INBOX, honest)
    assert identity_updates(node, other) == (other, [(4, 9)])  # a lie is about one inbox only


def test_man_in_the_middle(node: XmtpNode) -> None:
    other = "cd" * 32
    node.publish(apb.IdentityUpdate(inbox_id=INBOX, client_timestamp_ns=1))
    node.publish(apb.IdentityUpdate(inbox_id=other, client_timestamp_ns=2))
    with XmtpMitm(node.url) as mitm:
        assert identity_updates(mitm.url, INBOX) == (INBOX, [(1, 1)])  # passes through
        assert inbox_ids(node, ADDRESS) is None
        mitm.swap = {INBOX: other, other: INBOX}
        assert identity_updates(mitm.url, INBOX) == (other, [(2, 2)])
        mitm.disguise = True
        assert identity_updates(mitm.url, INBOX) == (INBOX, [(2, 2)])
        assert identity_updates(mitm.url, other) == (other, [(1, 1)])
        assert mitm.swapped == 3
