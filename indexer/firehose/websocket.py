"""The client side of RFC 6455, sans I/O: the opening handshake and the server's frames.

The handshake is the websockets library's own: `websockets.client.ClientProtocol` builds the
request and checks the server's 101 answer (Upgrade, Connection, Sec-WebSocket-Accept, no
extension or subprotocol we did not offer). Outbound control frames are serialised (masked)
by `websockets.frames`. Inbound frames are parsed here, because this is the hot path of the
whole indexer: websockets' generator-based parser costs about 8 µs a frame (measured on the
benchmark corpus, docs/benchmarks.md), which at the firehose's burst rates is most of a core;
`MessageReader` parses the same frames in about 2 µs with the checks RFC 6455 asks of a
client: no masked server frames, no reserved bits (no extension is negotiated), known opcodes
only, control frames unfragmented and at most 125 bytes, continuation frames only inside a
fragmented message, and a bound on the message size that holds before the payload arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.uri import parse_uri

__all__ = [
    "CloseMessage",
    "Handshake",
    "HandshakeError",
    "Message",
    "MessageReader",
    "PingMessage",
    "PongMessage",
    "ProtocolError",
    "TextMessage",
    "close_frame",
    "ping_frame",
    "pong_frame",
]

MAX_HEAD: Final = 16 * 1024  # a 101 response is a few hundred bytes
_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeError(InvalidHandshake):
    """The server did not accept the websocket upgrade (`status` is its HTTP status, if any)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ProtocolError(Exception):
    """The server broke RFC 6455; `code` is the close code to answer with (1002, 1007 or 1009)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TextMessage:
    data: bytes


@dataclass(frozen=True, slots=True)
class PingMessage:
    payload: bytes


@dataclass(frozen=True, slots=True)
class PongMessage:
    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseMessage:
    code: int  # 1005 when the frame carried no code
    reason: str


Message = bytes | TextMessage | PingMessage | PongMessage | CloseMessage


class Handshake:
    """The opening handshake of one connection to `url` (ws:// or wss://)."""

    def __init__(self, url: str, *, user_agent: str | None = None) -> None:
        self.uri = parse_uri(url)
        self._protocol = ClientProtocol(self.uri, max_size=None)
        request = self._protocol.connect()
        if user_agent is not None:
            request.headers["User-Agent"] = user_agent
        self.request: bytes = request.serialize()
        self._head = bytearray()

    def receive(self, data: bytes) -> bytes | None:
        """Feed bytes from the server. Returns what follows the response once it is complete
        (the first frames), None while more is needed; raises HandshakeError or InvalidHandshake."""
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD:
                raise HandshakeError(f"no complete HTTP response in {MAX_HEAD} bytes")
            return None
        head, rest = bytes(self._head[: end + 4]), bytes(self._head[end + 4 :])
        status_line = head.split(b"\r\n", 1)[0]
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise HandshakeError(f"not an HTTP response: {status_line[:80]!r}")
        status = int(parts[1])
        if status != 101:
            raise HandshakeError(f"server rejected the websocket upgrade with HTTP {status}", status)
        # 101 has no body: the head is the whole response, which websockets checks
        self._protocol.receive_data(head)
        self._protocol.events_received()
        if self._protocol.handshake_exc is not None:
            raise self._protocol.handshake_exc
        return rest


class MessageReader:
    """Server frames in, whole messages out: binary messages as `bytes`, the rest as objects."""

    __slots__ = (
        "_fragments",
        "_fragments_size",
        "_fragments_text",
        "_need",
        "_parts",
        "_parts_size",
        "error",
        "max_size",
    )

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._parts: list[bytes] = []  # received bytes not parsed yet
        self._parts_size = 0
        self._need = 2  # bytes that must be buffered before parsing is worth trying again
        self._fragments: list[bytes] | None = None  # a fragmented message in progress
        self._fragments_text = False
        self._fragments_size = 0
        # set when the server broke the protocol: the messages before the fault are still
        # returned, nothing after it is, and the connection must close with error.code
        self.error: ProtocolError | None = None

    def feed(self, data: bytes) -> list[Message]:
        """The messages `data` completes. On a protocol violation, those before it, with `error` set."""
        if self.error is not None:
            return []
        out: list[Message] = []
        try:
            self._parse(data, out)
        except ProtocolError as exc:
            self.error = exc
        return out

    def _parse(self, data: bytes, out: list[Message]) -> None:
        if self._parts:
            # a large message arrives in many reads: join once, when the frame is complete
            self._parts.append(data)
            self._parts_size += len(data)
            if self._parts_size < self._need:
                return
            data = b"".join(self._parts)
            self._parts.clear()
        n = len(data)
        pos = 0
        need = 2
        max_size = self.max_size
        while n - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            if b1 & 0x80:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "masked frame from the server")
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    need = 4
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                head = 4
            elif length == 127:
                if n - pos < 10:
                    need = 10
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
                if length >> 63:
                    raise ProtocolError(CloseCode.PROTOCOL_ERROR, "frame length has its high bit set")
            if length > max_size:  # checked before the payload is buffered
                raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, f"frame of {length} bytes exceeds {max_size}")
            end = pos + head + length
            if end > n:
                need = end - pos
                break
            if b0 == 0x82 and self._fragments is None:  # FIN + binary: nearly every firehose frame
                out.append(data[pos + head : end])
            else:
                self._frame(b0, data[pos + head : end], out)
            pos = end
        self._need = need
        if pos < n:
            rest = data[pos:]
            self._parts.append(rest)
            self._parts_size = len(rest)

    def _frame(self, b0: int, payload: bytes, out: list[Message]) -> None:
        if b0 & 0x70:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")
        fin = bool(b0 & 0x80)
        opcode = b0 & 0x0F
        if opcode >= 0x8:
            if not fin:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
            if len(payload) > 125:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "control frame over 125 bytes")
            if opcode == _PING:
                out.append(PingMessage(payload))
            elif opcode == _PONG:
                out.append(PongMessage(payload))
            elif opcode == _CLOSE:
                out.append(_close_message(payload))
            else:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
            return
        if opcode == _CONT:
            if self._fragments is None:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "continuation frame outside a message")
            self._fragments_size += len(payload)
            if self._fragments_size > self.max_size:
                raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, f"message exceeds {self.max_size} bytes")
            self._fragments.append(payload)
            if fin:
                message = b"".join(self._fragments)
                out.append(TextMessage(message) if self._fragments_text else message)
                self._fragments = None
            return
        if opcode not in (_TEXT, _BINARY):
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if self._fragments is not None:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
        if fin:
            out.append(TextMessage(payload) if opcode == _TEXT else payload)
        else:
            self._fragments = [payload]
            self._fragments_text = opcode == _TEXT
            self._fragments_size = len(payload)


def _close_message(payload: bytes) -> CloseMessage:
    if not payload:
        return CloseMessage(CloseCode.NO_STATUS_RCVD, "")
    try:
        close = Close.parse(payload)  # checks the code and the UTF-8 of the reason
    except Exception as exc:  # websockets raises ProtocolError or UnicodeDecodeError
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"bad close frame: {exc}") from None
    return CloseMessage(int(close.code), close.reason)


def ping_frame(payload: bytes) -> bytes:
    return Frame(Opcode.PING, payload).serialize(mask=True)


def pong_frame(payload: bytes) -> bytes:
    return Frame(Opcode.PONG, payload).serialize(mask=True)


def close_frame(code: int, reason: str = "") -> bytes:
    return Frame(Opcode.CLOSE, Close(code, reason).serialize()).serialize(mask=True)
