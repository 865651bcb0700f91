"""A loopback XMTP identity node for tests (xmtp-node-go's IdentityApi, minus the validation).

It stores every `PublishIdentityUpdate` per inbox under one increasing sequence counter and serves
`GetIdentityUpdates`, `GetInboxIds` (from the identifiers the stored updates add and revoke) and
`VerifySmartContractWalletSignatures` (a configurable answer). Any other unary RPC - libxmtp
registration also calls e.g. `xmtp.mls.api.v1.MlsApi/UploadKeyPackage` - gets an empty message,
which is a valid default answer for every protobuf response type. It validates nothing: real
nodes do, and the tests rely on atmx's own checks.

Fault injection (`delay`, `garbage`, `status`, `page_size`, `stop()`/`start()` on the same port)
lets the client tests see slow, broken and unreachable nodes. Lies (`lies[inbox_id] = Lie(...)`) make
`GetIdentityUpdates` misrepresent one inbox's log with genuine, signed updates: another inbox's log,
a truncated or holed log, the wrong order, repeated sequence ids, updates served again under new ids.
`XmtpMitm` sits on a plaintext link between a client and a node and swaps the answers about two inboxes.

In-process: `with XmtpNode() as node: ... node.url ...`; `with XmtpMitm(node.url) as mitm: ... mitm.url ...`.
As a subprocess: `python tests/xmtp_node.py [--port N]` prints the URL on stdout, serves until killed.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import grpc

from atmx.indexer.xmtp.proto import association_pb2, identity_api_pb2

__all__ = ["Lie", "LoggedUpdate", "XmtpMitm", "XmtpNode"]

_IDENTITY = "/xmtp.identity.api.v1.IdentityApi/"
# The fault knobs apply to the identity reads atmx makes; libxmtp's own calls stay healthy
# unless a test asks otherwise through `faulty_methods`.
_READS = frozenset({"GetIdentityUpdates", "VerifySmartContractWalletSignatures"})

ScwAnswer = Callable[[identity_api_pb2.VerifySmartContractWalletSignatureRequestSignature], tuple[bool, str | None]]


@dataclass(frozen=True, slots=True)
class LoggedUpdate:
    sequence_id: int
    server_timestamp_ns: int
    update: bytes  # the serialized IdentityUpdate exactly as published


@dataclass(frozen=True, slots=True)
class Lie:
    """How `GetIdentityUpdates` misrepresents one inbox's log. Every update served is genuine and
    signed; only the node's own framing lies. Applied in field order to the whole log, then the
    request's `sequence_id` filter applies, as a real node's query would."""

    log_of: str | None = None  # serve this other inbox's log (the answer still names the inbox asked for)
    answer_as: str | None = None  # name this inbox in the answer instead of the one asked for
    keep: int | None = None  # only the first `keep` entries (a log cut at its end)
    drop: frozenset[int] = field(default_factory=frozenset)  # leave these sequence ids out (a holed log)
    order: tuple[int, ...] | None = None  # the same ascending sequence ids, the updates under them in this order
    replay: bool = False  # every entry served again after the log, under new sequence ids
    reverse: bool = False  # newest first (after the filter)
    duplicate: bool = False  # every entry twice under its sequence id (after the filter)


class _Handler(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc ships no type hints
    def __init__(self, node: XmtpNode) -> None:
        self._node = node

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        node = self._node

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            return node._dispatch(method, request, context)

        # No (de)serializers: the node works on raw bytes so that it can also answer garbage.
        return grpc.unary_unary_rpc_method_handler(unary)


class XmtpNode:
    """In-process gRPC server on 127.0.0.1 (random port unless given); thread-safe."""

    def __init__(self, port: int = 0, *, workers: int = 8) -> None:
        self._lock = threading.Lock()
        self._updates: dict[str, list[LoggedUpdate]] = {}
        self._inbox_of: dict[tuple[int, str], str] = {}  # (IdentifierKind, identifier) -> inbox id
        self._sequence = 0
        self._workers = workers
        self._server: grpc.Server | None = None
        self.port = port
        self.calls: list[str] = []  # method names (without the service) in arrival order
        # --- fault injection ---
        self.delay = 0.0  # seconds to sleep before answering
        self.garbage: bytes | None = None  # answer these bytes instead
        self.status: grpc.StatusCode | None = None  # abort with this status instead
        self.faulty_methods: frozenset[str] = _READS
        self.page_size: int | None = None  # serve at most this many updates per request
        self.scw_answer: ScwAnswer = lambda _sig: (True, None)
        self.lies: dict[str, Lie] = {}  # inbox id -> how its log is misrepresented

    # --- lifecycle ---

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Start serving (again, on the same port after `stop()`)."""
        if self._server is not None:
            return self
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._workers))
        server.add_generic_rpc_handlers((_Handler(self),))
        bound = server.add_insecure_port(f"127.0.0.1:{self.port}")
        if bound == 0:
            raise OSError(f"cannot bind 127.0.0.1:{self.port}")
        self.port = bound
        server.start()
        self._server = server
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop serving; the stored log survives for a later `start()`."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace).wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- state ---

    def publish(self, update: association_pb2.IdentityUpdate | bytes) -> int:
        """Append an update as PublishIdentityUpdate would (tests use it to plant crafted logs)."""
        raw = update if isinstance(update, bytes) else update.SerializeToString()
        parsed = association_pb2.IdentityUpdate.FromString(raw)
        with self._lock:
            self._sequence += 1
            entry = LoggedUpdate(self._sequence, time.time_ns(), raw)
            self._updates.setdefault(parsed.inbox_id, []).append(entry)
            self._index(parsed)
            return entry.sequence_id

    def log(self, inbox_id: str) -> list[LoggedUpdate]:
        with self._lock:
            return list(self._updates.get(inbox_id, ()))

    def _index(self, update: Any) -> None:
        # Mirrors what GetInboxIds needs; libxmtp asks it before deciding "new inbox" vs "add installation".
        for action in update.actions:
            kind = action.WhichOneof("kind")
            if kind == "create_inbox":
                ci = action.create_inbox
                key = _identifier_key(ci.initial_identifier_kind, ci.initial_identifier)
                self._inbox_of.setdefault(key, update.inbox_id)
            elif kind == "add":
                key_or_none = _member_key(action.add.new_member_identifier)
                if key_or_none is not None:
                    self._inbox_of.setdefault(key_or_none, update.inbox_id)
            elif kind == "revoke":
                key_or_none = _member_key(action.revoke.member_to_revoke)
                if key_or_none is not None and self._inbox_of.get(key_or_none) == update.inbox_id:
                    del self._inbox_of[key_or_none]

    # --- RPCs ---

    def _dispatch(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        name = method.rsplit("/", 1)[-1]
        with self._lock:
            self.calls.append(name)
        if name in self.faulty_methods:
            if self.delay:
                time.sleep(self.delay)
            if self.status is not None:
                context.abort(self.status, f"injected {self.status.name}")
            if self.garbage is not None:
                return self.garbage
        if not method.startswith(_IDENTITY):
            return b""
        if name == "PublishIdentityUpdate":
            self.publish(identity_api_pb2.PublishIdentityUpdateRequest.FromString(request).identity_update)
            return b""
        if name == "GetIdentityUpdates":
            return self._get_identity_updates(request)
        if name == "GetInboxIds":
            return self._get_inbox_ids(request)
        if name == "VerifySmartContractWalletSignatures":
            return self._verify_scw(request)
        return b""

    def _get_identity_updates(self, request: bytes) -> bytes:
        req = identity_api_pb2.GetIdentityUpdatesRequest.FromString(request)
        Response = identity_api_pb2.GetIdentityUpdatesResponse
        out = Response()
        for item in req.requests:
            lie = self.lies.get(item.inbox_id)
            entries = self.log(item.inbox_id) if lie is None else self._lie(item.inbox_id, lie)
            entries = [e for e in entries if e.sequence_id > item.sequence_id]
            if lie is not None and lie.reverse:
                entries.reverse()
            if lie is not None and lie.duplicate:
                entries = [e for e in entries for _ in (1, 2)]
            if self.page_size is not None:
                entries = entries[: self.page_size]
            named = lie.answer_as if lie is not None and lie.answer_as else item.inbox_id
            answer = out.responses.add(inbox_id=named)
            for e in entries:
                answer.updates.add(
                    sequence_id=e.sequence_id,
                    server_timestamp_ns=e.server_timestamp_ns,
                    update=association_pb2.IdentityUpdate.FromString(e.update),
                )
        return bytes(out.SerializeToString())

    def _lie(self, inbox_id: str, lie: Lie) -> list[LoggedUpdate]:
        entries = self.log(lie.log_of or inbox_id)
        if lie.keep is not None:
            entries = entries[: lie.keep]
        entries = [e for e in entries if e.sequence_id not in lie.drop]
        if lie.order is not None:
            contents = [(entries[i].server_timestamp_ns, entries[i].update) for i in lie.order]
            entries = [LoggedUpdate(e.sequence_id, *c) for e, c in zip(entries, contents, strict=True)]
        if lie.replay and entries:
            with self._lock:
                base = self._sequence + 1000  # above anything published, stable for one log
            entries = entries + [LoggedUpdate(base + i, e.server_timestamp_ns, e.update) for i, e in enumerate(entries)]
        return entries

    def _get_inbox_ids(self, request: bytes) -> bytes:
        req = identity_api_pb2.GetInboxIdsRequest.FromString(request)
        out = identity_api_pb2.GetInboxIdsResponse()
        with self._lock:
            for item in req.requests:
                inbox = self._inbox_of.get(_identifier_key(item.identifier_kind, item.identifier))
                answer = out.responses.add(identifier=item.identifier, identifier_kind=item.identifier_kind)
                if inbox is not None:
                    answer.inbox_id = inbox
        return bytes(out.SerializeToString())

    def _verify_scw(self, request: bytes) -> bytes:
        req = identity_api_pb2.VerifySmartContractWalletSignaturesRequest.FromString(request)
        out = identity_api_pb2.VerifySmartContractWalletSignaturesResponse()
        for sig in req.signatures:
            valid, error = self.scw_answer(sig)
            answer = out.responses.add(is_valid=valid)
            if error is not None:
                answer.error = error
        return bytes(out.SerializeToString())


class XmtpMitm:
    """A man in the middle on a plaintext (h2c) gRPC link: it terminates each call and re-originates
    it to `upstream`, as anyone on the path of an `http://` XMTP endpoint can.

    `swap = {a: b, b: a}` answers a `GetIdentityUpdates` about `a` with the node's genuine answer about
    `b`; with `disguise` it also rewrites the answer's inbox id to the one asked for. `scw_valid`
    rewrites every `VerifySmartContractWalletSignatures` verdict. Everything else passes through.
    `host` is the address it listens on (`url` uses it too).
    """

    def __init__(self, upstream: str, port: int = 0, host: str = "127.0.0.1") -> None:
        self.upstream = upstream.removeprefix("http://")
        self.host = host
        self.port = port
        self.swap: dict[str, str] = {}
        self.disguise = False
        self.swapped = 0  # answers swapped so far
        self.scw_valid: bool | None = None
        self._server: grpc.Server | None = None
        self._channel: grpc.Channel | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        self._channel = grpc.insecure_channel(self.upstream)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        server.add_generic_rpc_handlers((_MitmHandler(self),))
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(None).wait()
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def forward(self, method: str, request: bytes) -> bytes:
        assert self._channel is not None
        if method.endswith("/VerifySmartContractWalletSignatures") and self.scw_valid is not None:
            raw = self._channel.unary_unary(method)(request, timeout=10)
            verdicts = identity_api_pb2.VerifySmartContractWalletSignaturesResponse.FromString(raw)
            for answer in verdicts.responses:
                answer.is_valid = self.scw_valid
                answer.ClearField("error")
            return bytes(verdicts.SerializeToString())
        if not method.endswith("/GetIdentityUpdates"):
            return bytes(self._channel.unary_unary(method)(request, timeout=10))
        req = identity_api_pb2.GetIdentityUpdatesRequest.FromString(request)
        asked = [item.inbox_id for item in req.requests]
        for item in req.requests:
            item.inbox_id = self.swap.get(item.inbox_id, item.inbox_id)
        raw = self._channel.unary_unary(method)(req.SerializeToString(), timeout=10)
        out = identity_api_pb2.GetIdentityUpdatesResponse.FromString(raw)
        for inbox, answer in zip(asked, out.responses, strict=False):
            if inbox in self.swap:
                self.swapped += 1
                if self.disguise:
                    answer.inbox_id = inbox
        return bytes(out.SerializeToString())


class _MitmHandler(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc ships no type hints
    def __init__(self, mitm: XmtpMitm) -> None:
        self._mitm = mitm

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        mitm = self._mitm

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            return mitm.forward(method, request)

        return grpc.unary_unary_rpc_method_handler(unary)


def _identifier_key(kind: int, identifier: str) -> tuple[int, str]:
    # UNSPECIFIED means Ethereum; Ethereum addresses compare lowercase.
    if kind in (association_pb2.IDENTIFIER_KIND_UNSPECIFIED, association_pb2.IDENTIFIER_KIND_ETHEREUM):
        return association_pb2.IDENTIFIER_KIND_ETHEREUM, identifier.lower()
    return kind, identifier


def _member_key(member: Any) -> tuple[int, str] | None:
    kind = member.WhichOneof("kind")
    if kind == "ethereum_address":
        return _identifier_key(association_pb2.IDENTIFIER_KIND_ETHEREUM, member.ethereum_address)
    if kind == "passkey":
        return association_pb2.IDENTIFIER_KIND_PASSKEY, bytes(member.passkey.key).hex()
    return None  # installations are not looked up by GetInboxIds


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="loopback XMTP identity node (tests only)")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(list(argv) if argv is not None else None)
    node = XmtpNode(args.port).start()
    print(node.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()
        sys.exit(0)


if __name__ == "__main__":
    main()
