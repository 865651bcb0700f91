"""The sans-I/O websocket client against frames and handshakes made by the websockets library's server side."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from atmx.indexer.firehose.websocket import (
    CloseMessage,
    Handshake,
    HandshakeError,
    MessageReader,
    PingMessage,
    PongMessage,
    ProtocolError,
    TextMessage,
    close_frame,
    ping_frame,
    pong_frame,
)


def server_frame(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin).serialize(mask=False)


def feed_in_chunks(reader: MessageReader, wire: bytes, cuts: list[int]) -> list[object]:
    out: list[object] = []
    start = 0
    for cut in [*sorted({c % (len(wire) + 1) for c in cuts}), len(wire)]:
        out.extend(reader.feed(wire[start:cut]))
        start = cut
    return out


def parse_client_frame(wire: bytes) -> Frame:
    """Read a frame the way a server does (it must be masked)."""
    reader = StreamReader()
    reader.feed_data(wire)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=True)
    try:
        next(parser)
    except StopIteration as stop:
        frame: Frame = stop.value
        return frame
    raise AssertionError("incomplete frame")


# --- messages ---


@given(
    st.lists(st.binary(max_size=70_000), min_size=1, max_size=8),
    st.lists(st.integers(min_value=0), max_size=20),
)
def test_binary_messages_survive_any_chunking(messages: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(server_frame(Opcode.BINARY, m) for m in messages)
    assert feed_in_chunks(MessageReader(1 << 20), wire, cuts) == messages


@given(
    st.lists(st.binary(max_size=300), min_size=2, max_size=6),
    st.lists(st.integers(min_value=0), max_size=10),
)
def test_fragmented_messages_with_interleaved_pings_are_reassembled(parts: list[bytes], cuts: list[int]) -> None:
    wire = server_frame(Opcode.BINARY, parts[0], fin=False)
    for i, part in enumerate(parts[1:], start=1):
        wire += server_frame(Opcode.PING, b"p%d" % i)  # control frames may sit between fragments
        wire += server_frame(Opcode.CONT, part, fin=i == len(parts) - 1)
    out = feed_in_chunks(MessageReader(1 << 20), wire, cuts)
    assert out == [PingMessage(b"p%d" % i) for i in range(1, len(parts))] + [b"".join(parts)]


def test_control_and_text_messages() -> None:
    wire = (
        server_frame(Opcode.TEXT, "héllo".encode())
        + server_frame(Opcode.PONG, b"x")
        + server_frame(Opcode.CLOSE, Close(CloseCode.GOING_AWAY, "bye").serialize())
        + server_frame(Opcode.CLOSE, b"")
    )
    assert MessageReader(100).feed(wire) == [
        TextMessage("héllo".encode()),
        PongMessage(b"x"),
        CloseMessage(1001, "bye"),
        CloseMessage(1005, ""),
    ]


def test_extended_lengths_at_their_boundaries() -> None:
    sizes = [125, 126, 65535, 65536, 200_000]
    messages = [bytes([i]) * n for i, n in enumerate(sizes)]
    wire = b"".join(server_frame(Opcode.BINARY, m) for m in messages)
    assert MessageReader(1 << 20).feed(wire) == messages
    # and byte by byte across the headers
    reader = MessageReader(1 << 20)
    got: list[object] = []
    head = server_frame(Opcode.BINARY, messages[3])
    for i in range(12):
        got += reader.feed(head[i : i + 1])
    got += reader.feed(head[12:])
    assert got == [messages[3]]


# --- protocol errors ---


@pytest.mark.parametrize(
    ("wire", "code", "reason"),
    [
        (Frame(Opcode.BINARY, b"abc").serialize(mask=True), 1002, "masked"),
        (bytes([0xC2, 0x01]) + b"x", 1002, "reserved"),  # RSV1 set: no extension was negotiated
        (bytes([0x83, 0x00]), 1002, "opcode"),  # 0x3 is reserved
        (bytes([0x8B, 0x00]), 1002, "opcode"),  # 0xB is reserved
        (bytes([0x09, 0x00]), 1002, "fragmented control"),  # ping without FIN
        (bytes([0x89, 0x7E, 0x00, 0x7E]) + b"x" * 126, 1002, "125"),
        (server_frame(Opcode.CONT, b"x"), 1002, "continuation"),
        (server_frame(Opcode.BINARY, b"a", fin=False) + server_frame(Opcode.BINARY, b"b"), 1002, "inside"),
        (bytes([0x88, 0x01, 0x03]), 1002, "close"),  # one-byte close payload
        (bytes([0x88, 0x02, 0x03, 0xE7]), 1002, "close"),  # close code 999
        (bytes([0x82, 0x7F]) + (1 << 63).to_bytes(8, "big"), 1002, "high bit"),
    ],
)
def test_protocol_violations_are_refused_with_a_close_code(wire: bytes, code: int, reason: str) -> None:
    reader = MessageReader(1 << 20)
    good = server_frame(Opcode.BINARY, b"before")
    assert reader.feed(good + wire + good) == [b"before"]  # what came before the fault, nothing after
    assert isinstance(reader.error, ProtocolError) and reason in reader.error.reason
    assert reader.error.code == code
    assert reader.feed(good) == []  # the connection is over


def test_oversized_messages_are_refused_before_their_payload_arrives() -> None:
    reader = MessageReader(1000)
    assert reader.feed(server_frame(Opcode.BINARY, b"x" * 1001)[:10]) == []  # only the header so far
    assert reader.error is not None and reader.error.code == CloseCode.MESSAGE_TOO_BIG
    fragmented = server_frame(Opcode.BINARY, b"x" * 600, fin=False) + server_frame(Opcode.CONT, b"x" * 600)
    reader = MessageReader(1000)
    assert reader.feed(fragmented) == []
    assert reader.error is not None and reader.error.code == CloseCode.MESSAGE_TOO_BIG


# --- outbound frames ---


def test_outbound_control_frames_are_masked_and_well_formed() -> None:
    ping = parse_client_frame(ping_frame(b"hi"))
    assert (ping.opcode, ping.data) == (Opcode.PING, b"hi")
    pong = parse_client_frame(pong_frame(b"yo"))
    assert (pong.opcode, pong.data) == (Opcode.PONG, b"yo")
    close = parse_client_frame(close_frame(1009, "too big"))
    assert close.opcode == Opcode.CLOSE and Close.parse(close.data) == Close(1009, "too big")


# --- handshake ---


def server_answer(handshake: Handshake, tweak: str | None = None) -> bytes:
    """The websockets server's own answer to our request."""
    server = ServerProtocol()
    server.receive_data(handshake.request)
    [request] = server.events_received()
    response = server.accept(request)
    if tweak == "bad_accept":
        del response.headers["Sec-WebSocket-Accept"]
        response.headers["Sec-WebSocket-Accept"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAA="
    if tweak == "extension":
        response.headers["Sec-WebSocket-Extensions"] = "permessage-deflate"
    server.send_response(response)
    return b"".join(server.data_to_send())


def test_handshake_with_a_real_server_and_leftover_frames() -> None:
    hs = Handshake("ws://127.0.0.1:1234/xrpc/com.atproto.sync.subscribeRepos?cursor=5", user_agent="atmx-test")
    assert hs.request.startswith(b"GET /xrpc/com.atproto.sync.subscribeRepos?cursor=5 HTTP/1.1\r\n")
    assert b"User-Agent: atmx-test\r\n" in hs.request
    answer = server_answer(hs)
    first = server_frame(Opcode.BINARY, b"frame")
    assert hs.receive(answer[:10]) is None  # incomplete
    assert hs.receive(answer[10:] + first) == first


@pytest.mark.parametrize("tweak", ["bad_accept", "extension"])
def test_handshake_answers_that_do_not_match_are_refused(tweak: str) -> None:
    hs = Handshake("ws://127.0.0.1:1234/")
    with pytest.raises(Exception) as info:
        hs.receive(server_answer(hs, tweak))
    from websockets.exceptions import InvalidHandshake

    assert isinstance(info.value, InvalidHandshake)


def test_handshake_refusals_and_garbage() -> None:
    hs = Handshake("ws://127.0.0.1:1234/")
    with pytest.raises(HandshakeError) as info:
        hs.receive(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 5\r\n\r\n")
    assert info.value.status == 429
    with pytest.raises(HandshakeError, match="not an HTTP response"):
        Handshake("ws://127.0.0.1:1234/").receive(b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(HandshakeError, match="no complete HTTP response"):
        Handshake("ws://127.0.0.1:1234/").receive(b"x" * 20_000)
