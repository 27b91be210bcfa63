"""Sallyport's codec: round trips for every message, and decoders fed anything.

Every decoder must either return a well-formed value or raise ProtocolError:
no other exception, whatever the bytes (hypothesis, thousands of cases).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wasmkeep.sallyport.boot import Boot, Exit, Outcome, boot_payload_limit
from wasmkeep.sallyport.channel import Channel, ChannelClosed, frame_payload_limit
from wasmkeep.sallyport.codec import HEADER, Kind, ProtocolError, decode_header, encode_frame
from wasmkeep.sallyport.messages import BY_NAME, MESSAGES, Message, message_table_markdown
from wasmkeep.sallyport.types import (
    TIME_NOW,
    DirEntry,
    Errno,
    FileStat,
    FileType,
    HandleInfo,
    HandleKind,
    KeepManifest,
    PollResult,
    SendResult,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "sallyport.md"

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)
filetypes = st.sampled_from(list(FileType))

VALUES: dict[str, st.SearchStrategy[Any]] = {
    "u8": st.integers(0, 2),
    "u16": u16,
    "u32": u32,
    "u64": u64,
    "i64": st.integers(-(1 << 63), (1 << 63) - 1),
    "bool": st.booleans(),
    "data": st.binary(max_size=64),
    "path": st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    "target": st.binary(max_size=40),
    "text": st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
    "pem": st.binary(max_size=80),
    "filetype": filetypes,
    "time": st.one_of(st.none(), st.just(TIME_NOW), st.integers(0, (1 << 64) - 1)),
    "timeout": st.one_of(st.none(), u64),
    "filestat": st.builds(FileStat, u64, u64, filetypes, u64, u64, u64, u64, u64),
    "dirents": st.lists(
        st.builds(DirEntry, u64, u64, filetypes, st.binary(min_size=1, max_size=20)), max_size=5
    ),
    "interests": st.lists(st.tuples(u32, st.sampled_from([1, 2])), max_size=5),
    "readiness": st.lists(
        st.one_of(
            st.none(),
            st.builds(
                PollResult,
                st.sampled_from(list(Errno)),
                u64,
                st.booleans(),
                st.binary(max_size=20),
                st.booleans(),
            ),
        ),
        max_size=5,
    ),
    "sends": st.lists(st.tuples(u32, st.binary(max_size=20)), max_size=3),
    "sent": st.lists(
        st.builds(SendResult, u32, st.sampled_from(list(Errno)), st.booleans()), max_size=3
    ),
}


def _values(fields: tuple[tuple[str, Any], ...]) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.tuples(*(VALUES[kind.name] for _, kind in fields))


@pytest.mark.parametrize("message", MESSAGES, ids=lambda message: message.name)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_requests_and_replies_round_trip(message: Message, data: st.DataObject) -> None:
    request = data.draw(_values(message.request))
    decoded = message.decode_request(message.encode_request(request))
    assert tuple(decoded.values()) == request
    assert list(decoded) == [name for name, _ in message.request]

    reply = data.draw(_values(message.reply))
    value = reply if len(reply) > 1 else reply[0] if reply else None
    assert message.decode_reply(message.encode_reply(value)) == value


@pytest.mark.parametrize("errno", [Errno.BADF, Errno.NOTCAPABLE, Errno.IO])
def test_errno_replies(errno: Errno) -> None:
    from wasmkeep.sallyport.messages import error_reply

    assert BY_NAME["read"].decode_reply(error_reply(errno)) is errno


@pytest.mark.parametrize("message", MESSAGES, ids=lambda message: message.name)
@settings(max_examples=150, deadline=None)
@given(payload=st.binary(max_size=96))
def test_any_bytes_decode_or_raise_protocol_error(message: Message, payload: bytes) -> None:
    for decode in (message.decode_request, message.decode_reply):
        with contextlib.suppress(ProtocolError):
            decode(payload)


@settings(max_examples=2000, deadline=None)
@given(st.binary(min_size=16, max_size=16))
def test_any_header_decodes_or_raises_protocol_error(header: bytes) -> None:
    try:
        kind, _, _, length = decode_header(header, 1 << 20)
    except ProtocolError:
        return
    assert kind in Kind
    assert length <= 1 << 20


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_boot_and_exit_decoders_only_raise_protocol_error(payload: bytes) -> None:
    for decode in (Boot.decode, Exit.decode):
        with contextlib.suppress(ProtocolError):
            decode(payload)


def test_header_checks() -> None:
    good = encode_frame(Kind.REQUEST, 1, 7, b"abc")[: HEADER.size]
    assert decode_header(good, 10) == (Kind.REQUEST, 1, 7, 3)
    for broken, reason in [
        (b"XP" + good[2:], "magic"),
        (good[:2] + b"\x02" + good[3:], "version"),
        (good[:3] + b"\x09" + good[4:], "kind"),
        (good[:6] + b"\x01\x00" + good[8:], "reserved"),
        (good[:-4] + (11).to_bytes(4, "little"), "exceeds the limit"),
        (good[:10], "truncated"),
    ]:
        with pytest.raises(ProtocolError, match=reason):
            decode_header(broken, 10)


def test_reply_decoding_is_strict() -> None:
    read = BY_NAME["read"]
    reply = read.encode_reply(b"hello")
    assert read.decode_reply(reply) == b"hello"
    with pytest.raises(ProtocolError, match="left over"):
        read.decode_reply(reply + b"x")
    with pytest.raises(ProtocolError, match="announced"):
        read.decode_reply(reply[:-1])
    with pytest.raises(ProtocolError, match="not a WASI errno"):
        read.decode_reply((999).to_bytes(2, "little"))
    stat = BY_NAME["fstat"]
    bad_type = bytearray(stat.encode_reply(FileStat(1, 2, FileType.REGULAR_FILE, 1, 0, 0, 0, 0)))
    bad_type[2 + 16] = 9
    with pytest.raises(ProtocolError, match="not a WASI file type"):
        stat.decode_reply(bytes(bad_type))
    with pytest.raises(ProtocolError, match="not valid UTF-8"):
        BY_NAME["mkdir_at"].decode_request((1).to_bytes(4, "little") + b"\x02\0\0\0\xff\xfe")


def test_boot_round_trip_with_bytes_that_are_not_utf8() -> None:
    arg = b"caf\xe9".decode("utf-8", "surrogateescape")
    manifest = KeepManifest(
        args=("prog", arg),
        env=(("KEY", "value"),),
        fds=(
            HandleInfo(1, HandleKind.STDIN, FileType.UNKNOWN, name="stdin"),
            HandleInfo(4, HandleKind.DIRECTORY, FileType.DIRECTORY, "/d", "/d", read_only=True),
        ),
    )
    boot = Boot("app.wasm", b"\0asm\1\0\0\0", manifest, 1 << 30, 5_000_000_000, 3, "none")
    assert Boot.decode(boot.encode()) == boot
    assert len(boot.encode()) < boot_payload_limit()


def test_exit_round_trip() -> None:
    for ending in (Exit(Outcome.EXITED, 3), Exit(Outcome.TRAPPED, 0, "the workload trapped")):
        assert Exit.decode(ending.encode()) == ending


def test_the_documented_table_is_the_code() -> None:
    assert message_table_markdown() in DOCS.read_text()


def test_channel_moves_frames_and_notices_a_closed_peer() -> None:
    left, right = socket.socketpair()
    sender = Channel(left.detach(), frame_payload_limit())
    receiver = Channel(right.detach(), frame_payload_limit())
    big = os.urandom(1 << 20)
    # Larger than the socket buffer: sent in parts while the other side reads.
    thread = threading.Thread(target=sender.send, args=(Kind.REQUEST, 3, 9, big))
    thread.start()
    frame = receiver.receive()
    thread.join()
    assert (frame.kind, frame.op, frame.id, frame.payload) == (Kind.REQUEST, 3, 9, big)

    os.write(sender.fd, encode_frame(Kind.REPLY, 1, 1, b"abc")[:18])  # one byte short
    sender.close()
    with pytest.raises(ChannelClosed, match="inside a frame payload"):
        receiver.receive()
    with pytest.raises(ChannelClosed, match="closed the channel"):
        receiver.receive()
    receiver.close()


def test_channel_refuses_an_announced_giant_before_reading_it() -> None:
    left, right = socket.socketpair()
    receiver = Channel(right.detach(), 1024)
    header = HEADER.pack(b"SP", 1, Kind.REPLY, 1, 0, 1, 1 << 31)
    left.sendall(header)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        receiver.receive()
    left.close()
    receiver.close()


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_a_channel_fed_any_bytes_raises_only_protocol_errors(stream: bytes) -> None:
    left, right = socket.socketpair()
    left.sendall(stream)
    left.close()
    receiver = Channel(right.detach(), 64)
    try:
        for _ in range(20):
            frame = receiver.receive()
            assert len(frame.payload) <= 64
    except ProtocolError:
        pass
    finally:
        receiver.close()
