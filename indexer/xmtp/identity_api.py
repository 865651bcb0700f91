"""The two IdentityApi calls atmx makes, as bytes: the requests it sends and what it accepts as
an answer (pure). An answer that is not an honest one (undecodable, about another inbox, out of
order, over the caps) raises `XmtpUnavailable`, like a network failure: the caller retries later
rather than believing it. The transport is client.py's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from google.protobuf.message import DecodeError

from atmx.indexer.xmtp.proto import association_pb2, identity_api_pb2

__all__ = [
    "MAX_SCW_BATCH",
    "MAX_UPDATES",
    "IdentityUpdateLog",
    "ScwSignatureCheck",
    "XmtpUnavailable",
    "check_inbox_id",
    "decode_scw",
    "decode_updates",
    "scw_request",
    "updates_request",
]

# xmtp-node-go refuses to grow an inbox log past 256 updates; more is not an honest answer.
MAX_UPDATES: Final = 256
MAX_SCW_BATCH: Final = 64

_INBOX_HEX: Final = frozenset("0123456789abcdef")


class XmtpUnavailable(Exception):
    """The XMTP network could not be asked (`reason`: see client.py's docstring); retry later."""

    def __init__(self, env: str, reason: str, message: str) -> None:
        super().__init__(f"xmtp {env}: {message}")
        self.env = env
        self.reason = reason


@dataclass(frozen=True, slots=True)
class IdentityUpdateLog:
    """One entry of an inbox's identity log as served by the network (not yet verified)."""

    sequence_id: int
    server_timestamp_ns: int
    update: association_pb2.IdentityUpdate


@dataclass(frozen=True, slots=True)
class ScwSignatureCheck:
    """One smart-contract-wallet signature for the node to check (EIP-1271 / EIP-6492)."""

    account_id: str  # CAIP-10, e.g. "eip155:1:0xabc..."
    block_number: int | None
    signature: bytes
    hash: bytes  # the 32-byte EIP-191 hash of the signature text


def check_inbox_id(inbox_id: str) -> None:
    # Anything else cannot be an inbox ID; refusing it here keeps junk off the wire.
    if len(inbox_id) != 64 or not set(inbox_id) <= _INBOX_HEX:
        raise ValueError(f"not an XMTP inbox ID (64 lowercase hex): {inbox_id!r}")


def updates_request(inbox_id: str, after: int) -> bytes:
    request = identity_api_pb2.GetIdentityUpdatesRequest(
        requests=[identity_api_pb2.GetIdentityUpdatesRequest.Request(inbox_id=inbox_id, sequence_id=after)]
    )
    return request.SerializeToString()


def decode_updates(env: str, raw: bytes, inbox_id: str, after: int) -> list[IdentityUpdateLog]:
    """The log entries of `inbox_id` after `after`, checked for the order the fold relies on."""
    response = identity_api_pb2.GetIdentityUpdatesResponse()
    try:
        response.ParseFromString(raw)
    except DecodeError as exc:
        raise _bad(env, f"GetIdentityUpdates: undecodable response ({len(raw)} bytes): {exc}") from None
    if len(response.responses) > 1:
        raise _bad(env, f"GetIdentityUpdates: {len(response.responses)} answers for one inbox")
    updates: list[IdentityUpdateLog] = []
    for entry in response.responses:
        if entry.inbox_id != inbox_id:
            raise _bad(env, f"GetIdentityUpdates: asked for {inbox_id}, got {entry.inbox_id!r}")
        if len(entry.updates) > MAX_UPDATES:
            raise XmtpUnavailable(env, "too_large", f"inbox {inbox_id} has over {MAX_UPDATES} updates")
        previous = after
        for item in entry.updates:
            # The fold relies on log order; a node that reorders or repeats is not answering honestly.
            if item.sequence_id <= previous:
                raise _bad(env, f"GetIdentityUpdates: sequence id {item.sequence_id} after {previous} for {inbox_id}")
            if not item.HasField("update"):
                raise _bad(env, f"GetIdentityUpdates: entry {item.sequence_id} of {inbox_id} has no update")
            previous = item.sequence_id
            updates.append(IdentityUpdateLog(item.sequence_id, item.server_timestamp_ns, item.update))
    return updates


def scw_request(checks: Sequence[ScwSignatureCheck]) -> bytes:
    if len(checks) > MAX_SCW_BATCH:
        raise ValueError(f"at most {MAX_SCW_BATCH} smart-contract-wallet signatures per call")
    Sig = identity_api_pb2.VerifySmartContractWalletSignatureRequestSignature
    request = identity_api_pb2.VerifySmartContractWalletSignaturesRequest(
        signatures=[
            Sig(account_id=c.account_id, block_number=c.block_number, signature=c.signature, hash=c.hash)
            if c.block_number is not None
            else Sig(account_id=c.account_id, signature=c.signature, hash=c.hash)
            for c in checks
        ]
    )
    return request.SerializeToString()


def decode_scw(env: str, raw: bytes, expected: int) -> list[bool | None]:
    """True/False as the node judged each signature; None when the node could not decide."""
    response = identity_api_pb2.VerifySmartContractWalletSignaturesResponse()
    try:
        response.ParseFromString(raw)
    except DecodeError as exc:
        raise _bad(env, f"VerifySmartContractWalletSignatures: undecodable response: {exc}") from None
    if len(response.responses) != expected:
        answers = len(response.responses)
        raise _bad(env, f"VerifySmartContractWalletSignatures: {answers} answers for {expected} signatures")
    results: list[bool | None] = []
    for answer in response.responses:
        if answer.is_valid:
            results.append(True)
        elif answer.HasField("error") and answer.error:
            results.append(None)  # e.g. the node's chain RPC failed: not a verdict on the signature
        else:
            results.append(False)
    return results


def _bad(env: str, message: str) -> XmtpUnavailable:
    return XmtpUnavailable(env, "bad_response", message)
