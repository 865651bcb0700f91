"""XmtpNetwork against the loopback identity node: logs, paging, caps and every failure mode."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from xmtp_node import XmtpNode

from atmx.indexer.config import DEFAULT_XMTP_API
from atmx.indexer.xmtp.client import (
    MAX_UPDATES,
    GrpcIdentitySource,
    IdentityUpdateLog,
    ScwSignatureCheck,
    XmtpNetwork,
    XmtpUnavailable,
    parse_xmtp_api,
)
from atmx.indexer.xmtp.proto import association_pb2, identity_api_pb2


def inbox(n: int) -> str:
    return hashlib.sha256(f"inbox {n}".encode()).hexdigest()


def update(inbox_id: str, ts: int) -> association_pb2.IdentityUpdate:
    # Content is irrelevant here: the client passes updates through, the fold judges them.
    return association_pb2.IdentityUpdate(inbox_id=inbox_id, client_timestamp_ns=ts)


@pytest.fixture
def node() -> Iterator[XmtpNode]:
    with XmtpNode() as n:
        yield n


@pytest.fixture
async def net(node: XmtpNode) -> AsyncIterator[XmtpNetwork]:
    async with XmtpNetwork({"local": node.url}, timeout=2.0) as n:
        yield n


# --- configuration ---


def test_parse_default() -> None:
    envs = parse_xmtp_api(DEFAULT_XMTP_API)
    assert list(envs) == ["production", "dev"]  # order = the order environments are tried
    assert envs["production"] == "https://grpc.production.xmtp.network:443"


def test_parse_spaces_and_trailing_comma() -> None:
    assert parse_xmtp_api(" local = http://127.0.0.1:5556 , ") == {"local": "http://127.0.0.1:5556"}


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "no environment"),
        ("production", "not env=url"),
        ("=https://x:443", "not env=url"),
        ("prod=", "not env=url"),
        ("Prod=https://x:443", "lowercase"),
        ("a=https://x:443,a=https://y:443", "twice"),
        ("a=grpc://x:443", "https://"),
        ("a=https://x:443/v1", "path"),
        ("a=https://user@x:443", "scheme://host"),
        ("a=https://x:notaport", "bad URL"),
        ("a=https://:443", "scheme://host"),
    ],
)
def test_parse_errors(value: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_xmtp_api(value)


def test_targets_and_tls() -> None:
    assert GrpcIdentitySource("p", "https://grpc.production.xmtp.network")._target == (
        "grpc.production.xmtp.network:443"
    )
    assert GrpcIdentitySource("p", "https://h:443")._tls
    plain = GrpcIdentitySource("l", "http://[::1]:5556")
    assert (plain._target, plain._tls) == ("[::1]:5556", False)


async def test_unknown_env_and_bad_inbox(net: XmtpNetwork) -> None:
    with pytest.raises(ValueError, match="unknown XMTP environment"):
        await net.get_identity_updates("production", inbox(1))
    with pytest.raises(ValueError, match="inbox ID"):
        await net.get_identity_updates("local", "ABC")
    assert net.envs == ["local"]


# --- reading logs ---


async def test_fetch_log_in_order(node: XmtpNode, net: XmtpNetwork) -> None:
    a, b = inbox(1), inbox(2)
    seqs = [node.publish(update(a, 10)), node.publish(update(b, 11)), node.publish(update(a, 12))]
    logs = await net.get_identity_updates("local", a)
    assert [log.sequence_id for log in logs] == [seqs[0], seqs[2]]
    assert all(isinstance(log, IdentityUpdateLog) for log in logs)
    assert [log.update.client_timestamp_ns for log in logs] == [10, 12]
    assert logs[0].update.inbox_id == a
    assert logs[0].server_timestamp_ns == node.log(a)[0].server_timestamp_ns > 0
    # Updates arrive byte-identical to what was published (the fold re-verifies signatures over them).
    assert logs[1].update.SerializeToString() == node.log(a)[1].update


async def test_after_sequence_id(node: XmtpNode, net: XmtpNetwork) -> None:
    a = inbox(3)
    seqs = [node.publish(update(a, t)) for t in range(4)]
    assert [x.sequence_id for x in await net.get_identity_updates("local", a, seqs[1])] == seqs[2:]
    assert await net.get_identity_updates("local", a, seqs[-1]) == []
    assert await net.get_identity_updates("local", inbox(999)) == []


async def test_paging(node: XmtpNode) -> None:
    a = inbox(4)
    seqs = [node.publish(update(a, t)) for t in range(5)]
    node.page_size = 2
    async with XmtpNetwork({"local": node.url}, page_size=2) as paged:
        logs = await paged.get_identity_updates("local", a)
    assert [x.sequence_id for x in logs] == seqs
    assert node.calls.count("GetIdentityUpdates") == 3  # 2 + 2 + 1 (a short page ends it)


async def test_too_many_updates(node: XmtpNode, net: XmtpNetwork) -> None:
    a = inbox(5)
    for t in range(MAX_UPDATES + 1):
        node.publish(update(a, t))
    with pytest.raises(XmtpUnavailable) as err:
        await net.get_identity_updates("local", a)
    assert err.value.reason == "too_large"
    # The last 256 are fine.
    assert len(await net.get_identity_updates("local", a, node.log(a)[0].sequence_id)) == MAX_UPDATES


async def test_response_size_cap(node: XmtpNode, net: XmtpNetwork) -> None:
    node.garbage = b"\x00" * (5 << 20)
    with pytest.raises(XmtpUnavailable) as err:
        await net.get_identity_updates("local", inbox(6))
    assert err.value.reason == "too_large"


# --- failures ---


async def test_unreachable_then_back(node: XmtpNode, net: XmtpNetwork) -> None:
    a = inbox(7)
    node.publish(update(a, 1))
    assert len(await net.get_identity_updates("local", a)) == 1
    node.stop()
    with pytest.raises(XmtpUnavailable) as err:
        await net.get_identity_updates("local", a)
    assert err.value.reason == "unreachable"
    assert err.value.env == "local"
    node.start()  # same port, same log
    for _ in range(40):  # the channel reconnects after its (short) backoff
        try:
            logs = await net.get_identity_updates("local", a)
            break
        except XmtpUnavailable:
            await asyncio.sleep(0.1)
    else:
        pytest.fail("node did not come back")
    assert len(logs) == 1


async def test_never_listening() -> None:
    with XmtpNode() as gone:
        url = gone.url
    async with XmtpNetwork({"x": url}, timeout=2.0) as n:
        with pytest.raises(XmtpUnavailable) as err:
            await n.get_identity_updates("x", inbox(8))
    assert err.value.reason == "unreachable"


async def test_slow_node_times_out(node: XmtpNode) -> None:
    node.delay = 1.0
    async with XmtpNetwork({"local": node.url}, timeout=0.2) as n:
        with pytest.raises(XmtpUnavailable) as err:
            await n.get_identity_updates("local", inbox(9))
    assert err.value.reason == "timeout"


async def test_garbage_is_bad_response(node: XmtpNode, net: XmtpNetwork) -> None:
    node.garbage = b"\xff\xff\xff\xff"
    with pytest.raises(XmtpUnavailable) as err:
        await net.get_identity_updates("local", inbox(10))
    assert err.value.reason == "bad_response"
    assert "undecodable" in str(err.value)


def _response(inbox_id: str, seqs: list[int]) -> bytes:
    out = identity_api_pb2.GetIdentityUpdatesResponse()
    answer = out.responses.add(inbox_id=inbox_id)
    for s in seqs:
        answer.updates.add(sequence_id=s, server_timestamp_ns=1, update=update(inbox_id, s))
    return bytes(out.SerializeToString())


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda a: _response(inbox(11), [1]), "asked for"),
        (lambda a: _response(a, [2, 2]), "sequence id 2 after 2"),
        (lambda a: _response(a, [3, 1]), "sequence id 1 after 3"),
        (lambda a: _response(a, [1]) + _response(a, [2]), "2 answers"),
    ],
)
async def test_dishonest_answers(node: XmtpNode, net: XmtpNetwork, make: object, fragment: str) -> None:
    a = inbox(12)
    node.garbage = make(a)  # type: ignore[operator]
    with pytest.raises(XmtpUnavailable, match=fragment) as err:
        await net.get_identity_updates("local", a)
    assert err.value.reason == "bad_response"


async def test_entry_without_update(node: XmtpNode, net: XmtpNetwork) -> None:
    a = inbox(13)
    out = identity_api_pb2.GetIdentityUpdatesResponse()
    out.responses.add(inbox_id=a).updates.add(sequence_id=1)
    node.garbage = out.SerializeToString()
    with pytest.raises(XmtpUnavailable, match="no update"):
        await net.get_identity_updates("local", a)


async def test_after_sequence_id_respected(node: XmtpNode, net: XmtpNetwork) -> None:
    a = inbox(14)
    node.garbage = _response(a, [4, 5])
    with pytest.raises(XmtpUnavailable, match="sequence id 4 after 4"):
        await net.get_identity_updates("local", a, 4)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (grpc.StatusCode.INTERNAL, "server_error"),
        (grpc.StatusCode.INVALID_ARGUMENT, "server_error"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limited"),
        (grpc.StatusCode.UNAVAILABLE, "unreachable"),
    ],
)
async def test_error_status(node: XmtpNode, net: XmtpNetwork, code: grpc.StatusCode, reason: str) -> None:
    node.status = code
    with pytest.raises(XmtpUnavailable) as err:
        await net.get_identity_updates("local", inbox(15))
    assert err.value.reason == reason
    assert code.name in str(err.value)


async def test_on_call_metrics(node: XmtpNode) -> None:
    seen: list[tuple[str, str, float, str]] = []
    async with XmtpNetwork({"local": node.url}, on_call=lambda *a: seen.append(a)) as n:
        await n.get_identity_updates("local", inbox(16))
        node.garbage = b"\xff"
        with pytest.raises(XmtpUnavailable):
            await n.get_identity_updates("local", inbox(16))
        node.status = grpc.StatusCode.INTERNAL
        with pytest.raises(XmtpUnavailable):
            await n.verify_scw_signatures("local", [_check(1)])
    assert [(e, m, o) for e, m, _, o in seen] == [
        ("local", "GetIdentityUpdates", "ok"),
        ("local", "GetIdentityUpdates", "bad_response"),
        ("local", "VerifySmartContractWalletSignatures", "server_error"),
    ]
    assert all(0 <= s < 2 for _, _, s, _ in seen)


async def test_https_means_tls(node: XmtpNode) -> None:
    # The loopback node speaks plaintext: a TLS client cannot even start a call.
    async with XmtpNetwork({"tls": f"https://127.0.0.1:{node.port}"}, timeout=2.0) as n:
        with pytest.raises(XmtpUnavailable) as err:
            await n.get_identity_updates("tls", inbox(18))
    assert err.value.reason == "unreachable"
    assert node.calls == []


async def test_cancelled_call_is_reported(node: XmtpNode) -> None:
    seen: list[str] = []
    node.delay = 1.0
    async with XmtpNetwork({"local": node.url}, on_call=lambda *a: seen.append(a[3])) as n:
        task = asyncio.create_task(n.get_identity_updates("local", inbox(19)))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert seen == ["cancelled"]


async def test_close_is_idempotent(node: XmtpNode) -> None:
    n = XmtpNetwork({"local": node.url})
    await n.get_identity_updates("local", inbox(17))
    await n.close()
    await n.close()
    # A closed network reopens its channel lazily.
    assert await n.get_identity_updates("local", inbox(17)) == []
    await n.close()


# --- smart-contract wallets ---


def _check(n: int, block: int | None = 7) -> ScwSignatureCheck:
    return ScwSignatureCheck(f"eip155:1:0x{n:040x}", block, bytes([n]) * 65, bytes([n]) * 32)


async def test_verify_scw(node: XmtpNode, net: XmtpNetwork) -> None:
    asked: list[tuple[str, int | None, bytes, bytes]] = []

    def answer(sig: identity_api_pb2.VerifySmartContractWalletSignatureRequestSignature) -> tuple[bool, str | None]:
        block = sig.block_number if sig.HasField("block_number") else None
        asked.append((sig.account_id, block, sig.signature, sig.hash))
        n = sig.signature[0]
        return (n == 1, "rpc down" if n == 3 else None)

    node.scw_answer = answer
    checks = [_check(1), _check(2, None), _check(3)]
    assert await net.verify_scw_signatures("local", checks) == [True, False, None]
    assert asked == [(c.account_id, c.block_number, c.signature, c.hash) for c in checks]
    assert await net.verify_scw_signatures("local", []) == []


@pytest.mark.parametrize(
    ("url", "trusted"),
    [
        ("http://127.0.0.1:1", True),
        ("http://[::1]:1", True),
        ("http://localhost:1", True),
        ("https://192.0.2.1:1", True),
        ("http://192.0.2.1:1", False),
        ("http://grpc.example.com", False),
    ],
)
async def test_scw_verdicts_only_over_tls_or_loopback(url: str, trusted: bool) -> None:
    # an unsigned verdict over plaintext to another host is anyone's on the path: not even asked
    source = GrpcIdentitySource("env", url, timeout=0.2)
    try:
        if trusted:
            with pytest.raises(XmtpUnavailable):  # asked (nothing listens there)
                await source.verify_scw_signatures([_check(1)])
        else:
            assert await source.verify_scw_signatures([_check(1), _check(2)]) == [None, None]
    finally:
        await source.close()


async def test_verify_scw_count_mismatch(node: XmtpNode, net: XmtpNetwork) -> None:
    out = identity_api_pb2.VerifySmartContractWalletSignaturesResponse()
    out.responses.add(is_valid=True)
    node.garbage = out.SerializeToString()
    with pytest.raises(XmtpUnavailable, match="1 answers for 2") as err:
        await net.verify_scw_signatures("local", [_check(1), _check(2)])
    assert err.value.reason == "bad_response"


async def test_verify_scw_batch_cap(net: XmtpNetwork) -> None:
    with pytest.raises(ValueError, match="at most"):
        await net.verify_scw_signatures("local", [_check(1)] * 65)
