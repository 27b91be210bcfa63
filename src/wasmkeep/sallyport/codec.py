"""Sallyport frames and the field encoding inside them.

A frame is a 16-byte header and a payload (little-endian)::

    offset  size  field
    0       2     magic  b"SP"
    2       1     version (1)
    3       1     kind   (Kind: request, reply, boot, exit)
    4       2     op     (messages.Op; 0 for boot and exit)
    6       2     reserved, 0
    8       4     id     (a reply repeats its request's id)
    12      4     length of the payload

Payload fields are encoded by type: fixed-size integers, and byte strings and
UTF-8 strings as a u32 length followed by the bytes. The decoder is strict:
every length is checked against what remains and against the frame limit,
every string must be valid UTF-8, and a payload must be consumed exactly.
Anything else raises :class:`ProtocolError`; nothing downstream sees raw bytes.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

__all__ = [
    "HEADER",
    "MAGIC",
    "VERSION",
    "Frame",
    "Kind",
    "ProtocolError",
    "Reader",
    "Writer",
    "decode_header",
    "encode_frame",
    "encode_header",
]

MAGIC = b"SP"
VERSION = 1
HEADER = struct.Struct("<2sBBHHII")
assert HEADER.size == 16

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")


class ProtocolError(Exception):
    """Bytes that are not a well-formed sallyport frame or payload."""


class Kind(enum.IntEnum):
    REQUEST = 1
    REPLY = 2
    BOOT = 3
    EXIT = 4


@dataclass(frozen=True, slots=True)
class Frame:
    kind: Kind
    op: int
    id: int
    payload: bytes


def encode_header(kind: Kind, op: int, frame_id: int, length: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, kind, op, 0, frame_id, length)


def encode_frame(kind: Kind, op: int, frame_id: int, payload: bytes | bytearray) -> bytes:
    return encode_header(kind, op, frame_id, len(payload)) + bytes(payload)


def decode_header(header: bytes, max_payload: int) -> tuple[Kind, int, int, int]:
    """(kind, op, id, payload length) of a 16-byte header, checked."""
    if len(header) != HEADER.size:
        raise ProtocolError(f"truncated frame header ({len(header)} of {HEADER.size} bytes)")
    magic, version, kind, op, reserved, frame_id, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(f"bad frame magic {magic!r}")
    if version != VERSION:
        raise ProtocolError(f"unsupported sallyport version {version} (this side speaks {VERSION})")
    try:
        frame_kind = Kind(kind)
    except ValueError:
        raise ProtocolError(f"unknown frame kind {kind}") from None
    if reserved:
        raise ProtocolError("reserved header bits set")
    if length > max_payload:
        raise ProtocolError(f"frame payload of {length} bytes exceeds the limit of {max_payload}")
    return frame_kind, op, frame_id, length


class Writer:
    """Builds a payload field by field.

    Large byte strings are kept by reference, not copied, and go out with one
    vectored write (`parts`); small fields are packed together.
    """

    __slots__ = ("_parts", "_small")

    #: Byte strings at least this long are not copied into the payload.
    BY_REFERENCE = 4096

    def __init__(self) -> None:
        self._parts: list[bytes | bytearray | memoryview] = []
        self._small = bytearray()

    def u8(self, value: int) -> Writer:
        self._small += _U8.pack(value)
        return self

    def u16(self, value: int) -> Writer:
        self._small += _U16.pack(value)
        return self

    def u32(self, value: int) -> Writer:
        self._small += _U32.pack(value)
        return self

    def u64(self, value: int) -> Writer:
        self._small += _U64.pack(value)
        return self

    def i64(self, value: int) -> Writer:
        self._small += _I64.pack(value)
        return self

    def blob(self, value: bytes | bytearray | memoryview) -> Writer:
        self._small += _U32.pack(len(value))
        if len(value) < self.BY_REFERENCE:
            self._small += value
        else:
            self._parts += (self._small, value)
            self._small = bytearray()
        return self

    def text(self, value: str) -> Writer:
        return self.blob(value.encode("utf-8"))

    def parts(self) -> list[bytes | bytearray | memoryview]:
        """The payload as buffers to write in order (valid while the caller's
        buffers are unchanged)."""
        return [*self._parts, self._small]

    def payload(self) -> bytes:
        return b"".join(self.parts())


class Reader:
    """Takes a payload apart field by field; any inconsistency is a ProtocolError."""

    __slots__ = ("_data", "_offset")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def _take(self, layout: struct.Struct, what: str) -> int:
        end = self._offset + layout.size
        if end > len(self._data):
            raise ProtocolError(f"payload ends inside {what}")
        (value,) = layout.unpack_from(self._data, self._offset)
        self._offset = end
        return int(value)

    def u8(self, what: str = "a u8") -> int:
        return self._take(_U8, what)

    def u16(self, what: str = "a u16") -> int:
        return self._take(_U16, what)

    def u32(self, what: str = "a u32") -> int:
        return self._take(_U32, what)

    def u64(self, what: str = "a u64") -> int:
        return self._take(_U64, what)

    def i64(self, what: str = "an i64") -> int:
        return self._take(_I64, what)

    def bool(self, what: str = "a bool") -> bool:
        value = self.u8(what)
        if value > 1:
            raise ProtocolError(f"{what}: {value} is not a boolean")
        return value == 1

    def view(self, what: str = "bytes", limit: int | None = None) -> memoryview:
        """Like `blob`, without a copy: a view of the payload (which is immutable)."""
        length = self.u32(f"the length of {what}")
        if limit is not None and length > limit:
            raise ProtocolError(f"{what}: {length} bytes, more than the limit of {limit}")
        end = self._offset + length
        if end > len(self._data):
            raise ProtocolError(
                f"{what}: {length} bytes announced, {len(self._data) - self._offset} left"
            )
        value = memoryview(self._data)[self._offset : end]
        self._offset = end
        return value

    def blob(self, what: str = "bytes", limit: int | None = None) -> bytes:
        length = self.u32(f"the length of {what}")
        if limit is not None and length > limit:
            raise ProtocolError(f"{what}: {length} bytes, more than the limit of {limit}")
        end = self._offset + length
        if end > len(self._data):
            raise ProtocolError(
                f"{what}: {length} bytes announced, {len(self._data) - self._offset} left"
            )
        value = self._data[self._offset : end]
        self._offset = end
        return value

    def text(self, what: str = "a string", limit: int | None = None) -> str:
        raw = self.blob(what, limit)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{what} is not valid UTF-8") from None

    def count(self, what: str, limit: int) -> int:
        value = self.u32(f"the number of {what}")
        if value > limit:
            raise ProtocolError(f"{value} {what}, more than the limit of {limit}")
        return value

    def end(self) -> None:
        if self._offset != len(self._data):
            raise ProtocolError(f"{len(self._data) - self._offset} bytes left over in the payload")
