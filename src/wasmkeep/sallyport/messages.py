"""Sallyport's message table: one request and one reply per host operation.

Each :class:`Message` names a method of :class:`~wasmkeep.sallyport.calls.HostCalls`
and lists its request fields and its reply fields, each with a type that knows
how to encode and strictly decode itself. A reply payload starts with a u16
errno; only a reply with errno 0 carries the reply fields. `docs/sallyport.md`
shows this table (a test keeps the two in step).

Decoding here checks *form* (lengths, enum ranges, UTF-8, limits). What a
reply *means* (no more bytes than asked, a new handle, cookies that advance) is
checked by the keep's client, which knows what it asked.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from wasmkeep.limits import DEFAULT_LIMITS, Limits
from wasmkeep.sallyport.codec import ProtocolError, Reader, Writer
from wasmkeep.sallyport.types import (
    TIME_NOW,
    DirEntry,
    Errno,
    FileStat,
    FileType,
    PollResult,
    SendResult,
)

__all__ = ["BY_NAME", "MESSAGES", "Message", "Op", "decode_errno", "message_table_markdown"]

_ERRNOS = frozenset(int(member) for member in Errno)


class FieldType:
    """How one field is written and read."""

    name = ""
    wire = ""

    def encode(self, writer: Writer, value: Any) -> None:
        raise NotImplementedError

    def decode(self, reader: Reader, what: str, limits: Limits) -> Any:
        raise NotImplementedError


class _Unsigned(FieldType):
    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.name = self.wire = f"u{bits}"

    def encode(self, writer: Writer, value: int) -> None:
        getattr(writer, self.name)(value)

    def decode(self, reader: Reader, what: str, limits: Limits) -> int:
        value: int = getattr(reader, self.name)(what)
        return value


class _I64(FieldType):
    name = wire = "i64"

    def encode(self, writer: Writer, value: int) -> None:
        writer.i64(value)

    def decode(self, reader: Reader, what: str, limits: Limits) -> int:
        return reader.i64(what)


class _Bool(FieldType):
    name = "bool"
    wire = "u8 (0 or 1)"

    def encode(self, writer: Writer, value: bool) -> None:
        writer.u8(1 if value else 0)

    def decode(self, reader: Reader, what: str, limits: Limits) -> bool:
        return reader.bool(what)


class _Data(FieldType):
    name = "data"
    wire = "u32 length + bytes (at most max_io_chunk)"

    def encode(self, writer: Writer, value: bytes | memoryview) -> None:
        writer.blob(value)

    def decode(self, reader: Reader, what: str, limits: Limits) -> memoryview:
        return reader.view(what, limits.max_io_chunk)


class _Path(FieldType):
    name = "path"
    wire = "u32 length + UTF-8 (at most max_path_bytes)"

    def encode(self, writer: Writer, value: str) -> None:
        writer.text(value)

    def decode(self, reader: Reader, what: str, limits: Limits) -> str:
        return reader.text(what, limits.max_path_bytes)


class _LinkTarget(FieldType):
    name = "target"
    wire = "u32 length + bytes (at most max_path_bytes)"

    def encode(self, writer: Writer, value: bytes) -> None:
        writer.blob(value)

    def decode(self, reader: Reader, what: str, limits: Limits) -> bytes:
        return reader.blob(what, limits.max_path_bytes)


class _FileType(FieldType):
    name = "filetype"
    wire = "u8 (WASI filetype 0-7)"

    def encode(self, writer: Writer, value: FileType) -> None:
        writer.u8(value)

    def decode(self, reader: Reader, what: str, limits: Limits) -> FileType:
        return _filetype(reader.u8(what), what)


def _filetype(value: int, what: str) -> FileType:
    try:
        return FileType(value)
    except ValueError:
        raise ProtocolError(f"{what}: {value} is not a WASI file type") from None


class _Time(FieldType):
    """An optional timestamp: keep as it is, set to the host's now, or a value."""

    name = "time"
    wire = "u8 (0 keep, 1 now, 2 value) + u64 ns"

    def encode(self, writer: Writer, value: int | None) -> None:
        if value is None:
            writer.u8(0).u64(0)
        elif value == TIME_NOW:
            writer.u8(1).u64(0)
        else:
            writer.u8(2).u64(value)

    def decode(self, reader: Reader, what: str, limits: Limits) -> int | None:
        mode, value = reader.u8(what), reader.u64(what)
        if mode == 0:
            return None
        if mode == 1:
            return TIME_NOW
        if mode == 2:
            return value
        raise ProtocolError(f"{what}: unknown time mode {mode}")


class _Timeout(FieldType):
    name = "timeout"
    wire = "u8 (0 none, 1 ns follow) + u64 ns"

    def encode(self, writer: Writer, value: int | None) -> None:
        writer.u8(0 if value is None else 1).u64(value or 0)

    def decode(self, reader: Reader, what: str, limits: Limits) -> int | None:
        present, value = reader.bool(what), reader.u64(what)
        return value if present else None


class _Text(FieldType):
    name = "text"
    wire = "u32 length + UTF-8 (at most 4 KiB)"

    def encode(self, writer: Writer, value: str) -> None:
        writer.text(value)

    def decode(self, reader: Reader, what: str, limits: Limits) -> str:
        return reader.text(what, 4096)


class _Pem(FieldType):
    name = "pem"
    wire = "u32 length + bytes (at most 64 KiB)"

    def encode(self, writer: Writer, value: bytes) -> None:
        writer.blob(value)

    def decode(self, reader: Reader, what: str, limits: Limits) -> bytes:
        return reader.blob(what, 64 * 1024)


class _FileStat(FieldType):
    name = "filestat"
    wire = "dev u64, ino u64, filetype u8, nlink u64, size u64, atim u64, mtim u64, ctim u64"

    def encode(self, writer: Writer, value: FileStat) -> None:
        writer.u64(value.dev).u64(value.ino).u8(value.filetype).u64(value.nlink)
        writer.u64(value.size).u64(value.atim).u64(value.mtim).u64(value.ctim)

    def decode(self, reader: Reader, what: str, limits: Limits) -> FileStat:
        dev, ino = reader.u64(what), reader.u64(what)
        filetype = _filetype(reader.u8(what), what)
        return FileStat(
            dev,
            ino,
            filetype,
            reader.u64(what),
            reader.u64(what),
            reader.u64(what),
            reader.u64(what),
            reader.u64(what),
        )


class _DirEntries(FieldType):
    name = "dirents"
    wire = "u32 count (at most max_readdir_batch) x (next u64, ino u64, filetype u8, name)"

    def encode(self, writer: Writer, value: Sequence[DirEntry]) -> None:
        writer.u32(len(value))
        for entry in value:
            writer.u64(entry.next).u64(entry.ino).u8(entry.filetype).blob(entry.name)

    def decode(self, reader: Reader, what: str, limits: Limits) -> list[DirEntry]:
        count = reader.count(what, limits.max_readdir_batch)
        entries = []
        for _ in range(count):
            cookie, ino = reader.u64(what), reader.u64(what)
            filetype = _filetype(reader.u8(what), what)
            entries.append(DirEntry(cookie, ino, filetype, reader.blob(what, 255)))
        return entries


class _Interests(FieldType):
    name = "interests"
    wire = "u32 count (at most max_poll_subscriptions) x (handle u32, interest u8)"

    def encode(self, writer: Writer, value: Sequence[tuple[int, int]]) -> None:
        writer.u32(len(value))
        for handle, interest in value:
            writer.u32(handle).u8(interest)

    def decode(self, reader: Reader, what: str, limits: Limits) -> list[tuple[int, int]]:
        count = reader.count(what, limits.max_poll_subscriptions)
        interests = []
        for _ in range(count):
            handle, interest = reader.u32(what), reader.u8(what)
            if interest not in (1, 2):
                raise ProtocolError(f"{what}: unknown interest {interest}")
            interests.append((handle, interest))
        return interests


class _PollResults(FieldType):
    name = "readiness"
    wire = (
        "u32 count x (ready u8, errno u16, nbytes u64, hangup u8, eof u8, data: u32 length + bytes)"
    )

    def encode(self, writer: Writer, value: Sequence[PollResult | None]) -> None:
        writer.u32(len(value))
        for result in value:
            if result is None:
                writer.u8(0).u16(0).u64(0).u8(0).u8(0).blob(b"")
            else:
                writer.u8(1).u16(result.errno).u64(result.nbytes)
                writer.u8(1 if result.hangup else 0).u8(1 if result.eof else 0).blob(result.data)

    def decode(self, reader: Reader, what: str, limits: Limits) -> list[PollResult | None]:
        count = reader.count(what, limits.max_poll_subscriptions)
        results: list[PollResult | None] = []
        for _ in range(count):
            ready, code = reader.bool(what), reader.u16(what)
            nbytes, hangup, eof = reader.u64(what), reader.bool(what), reader.bool(what)
            data = reader.view(what, limits.max_io_chunk)
            if not ready:
                if eof or data:
                    raise ProtocolError(f"{what}: data for a handle that is not ready")
                results.append(None)
                continue
            if code not in _ERRNOS:
                raise ProtocolError(f"{what}: {code} is not a WASI errno")
            results.append(PollResult(Errno(code), nbytes, hangup, data, eof))
        return results


class _Sends(FieldType):
    name = "sends"
    wire = "u32 count x (handle u32, data: u32 length + bytes)"

    def encode(self, writer: Writer, value: Sequence[tuple[int, bytes | memoryview]]) -> None:
        writer.u32(len(value))
        for handle, data in value:
            writer.u32(handle).blob(data)

    def decode(self, reader: Reader, what: str, limits: Limits) -> list[tuple[int, memoryview]]:
        count = reader.count(what, limits.max_poll_subscriptions)
        return [(reader.u32(what), reader.view(what, limits.max_io_chunk)) for _ in range(count)]


class _SendResults(FieldType):
    name = "sent"
    wire = "u32 count x (written u32, errno u16, writable u8)"

    def encode(self, writer: Writer, value: Sequence[SendResult]) -> None:
        writer.u32(len(value))
        for result in value:
            writer.u32(result.written).u16(result.errno).u8(1 if result.writable else 0)

    def decode(self, reader: Reader, what: str, limits: Limits) -> list[SendResult]:
        count = reader.count(what, limits.max_poll_subscriptions)
        results = []
        for _ in range(count):
            written, code, writable = reader.u32(what), reader.u16(what), reader.bool(what)
            if code not in _ERRNOS:
                raise ProtocolError(f"{what}: {code} is not a WASI errno")
            results.append(SendResult(written, Errno(code), writable))
        return results


U8, U16, U32, U64 = _Unsigned(8), _Unsigned(16), _Unsigned(32), _Unsigned(64)
I64, BOOL, DATA, PATH = _I64(), _Bool(), _Data(), _Path()
LINK_TARGET, FILETYPE, TIME, TIMEOUT = _LinkTarget(), _FileType(), _Time(), _Timeout()
FILESTAT, DIRENTS, INTERESTS, POLL_RESULTS = (
    _FileStat(),
    _DirEntries(),
    _Interests(),
    _PollResults(),
)
TEXT, PEM = _Text(), _Pem()
SENDS, SEND_RESULTS = _Sends(), _SendResults()

Fields = tuple[tuple[str, FieldType], ...]


class Op(enum.IntEnum):
    READ = 1
    PREAD = 2
    WRITE = 3
    PWRITE = 4
    SEEK = 5
    SYNC = 6
    FSTAT = 7
    SET_SIZE = 8
    ALLOCATE = 9
    SET_TIMES = 10
    SET_FDFLAGS = 11
    READDIR = 12
    CLOSE = 13
    OPEN_AT = 14
    STAT_AT = 15
    SET_TIMES_AT = 16
    MKDIR_AT = 17
    RMDIR_AT = 18
    UNLINK_AT = 19
    RENAME_AT = 20
    LINK_AT = 21
    SYMLINK_AT = 22
    READLINK_AT = 23
    POLL = 24
    ACCEPT = 25
    RECV = 26
    SEND = 27
    SHUTDOWN = 28
    LOG = 29
    PUBLISH_CERTIFICATE = 30


@dataclass(frozen=True, slots=True)
class Message:
    op: Op
    name: str
    request: Fields
    reply: Fields

    def encode_request(self, values: Sequence[Any]) -> bytes:
        return self.request_writer(values).payload()

    def request_writer(self, values: Sequence[Any]) -> Writer:
        """The request, as a Writer whose parts go out without a joining copy."""
        writer = Writer()
        for (_, field_type), value in zip(self.request, values, strict=True):
            field_type.encode(writer, value)
        return writer

    def decode_request(self, payload: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
        reader = Reader(payload)
        values = {
            name: field_type.decode(reader, f"{self.name} request {name}", limits)
            for name, field_type in self.request
        }
        reader.end()
        return values

    def encode_reply(self, result: Any) -> bytes:
        return self.reply_writer(result).payload()

    def reply_writer(self, result: Any) -> Writer:
        """A success reply; `result` is what the HostCalls method returned."""
        writer = Writer().u16(0)
        values = result if len(self.reply) > 1 else (result,) if self.reply else ()
        for (_, field_type), value in zip(self.reply, values, strict=True):
            field_type.encode(writer, value)
        return writer

    def decode_reply(self, payload: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
        """The reply's value, as the HostCalls method returns it; an errno reply
        comes back as an Errno (not raised: the caller decides)."""
        reader = Reader(payload)
        code = decode_errno(reader, f"{self.name} reply")
        if code is not Errno.SUCCESS:
            reader.end()
            return code
        values = tuple(
            field_type.decode(reader, f"{self.name} reply {name}", limits)
            for name, field_type in self.reply
        )
        reader.end()
        if len(values) == 1:
            return values[0]
        return values if values else None


def error_reply(errno: Errno) -> bytes:
    return Writer().u16(errno).payload()


def decode_errno(reader: Reader, what: str) -> Errno:
    code = reader.u16(f"{what} errno")
    if code not in _ERRNOS:
        raise ProtocolError(f"{what}: {code} is not a WASI errno")
    return Errno(code)


_HANDLE = ("handle", U32)
_DIR = ("dir_handle", U32)

MESSAGES: tuple[Message, ...] = (
    Message(Op.READ, "read", (_HANDLE, ("size", U32)), (("data", DATA),)),
    Message(Op.PREAD, "pread", (_HANDLE, ("size", U32), ("offset", U64)), (("data", DATA),)),
    Message(Op.WRITE, "write", (_HANDLE, ("data", DATA)), (("written", U32),)),
    Message(Op.PWRITE, "pwrite", (_HANDLE, ("data", DATA), ("offset", U64)), (("written", U32),)),
    Message(Op.SEEK, "seek", (_HANDLE, ("offset", I64), ("whence", U8)), (("position", U64),)),
    Message(Op.SYNC, "sync", (_HANDLE, ("data_only", BOOL)), ()),
    Message(Op.FSTAT, "fstat", (_HANDLE,), (("stat", FILESTAT),)),
    Message(Op.SET_SIZE, "set_size", (_HANDLE, ("size", U64)), ()),
    Message(Op.ALLOCATE, "allocate", (_HANDLE, ("offset", U64), ("length", U64)), ()),
    Message(Op.SET_TIMES, "set_times", (_HANDLE, ("atime", TIME), ("mtime", TIME)), ()),
    Message(Op.SET_FDFLAGS, "set_fdflags", (_HANDLE, ("fdflags", U16)), ()),
    Message(
        Op.READDIR,
        "readdir",
        (_HANDLE, ("cookie", U64), ("max_entries", U32)),
        (("entries", DIRENTS),),
    ),
    Message(Op.CLOSE, "close", (_HANDLE,), ()),
    Message(
        Op.OPEN_AT,
        "open_at",
        (
            _DIR,
            ("path", PATH),
            ("follow", BOOL),
            ("oflags", U16),
            ("fdflags", U16),
            ("read", BOOL),
            ("write", BOOL),
        ),
        (("handle", U32), ("filetype", FILETYPE)),
    ),
    Message(Op.STAT_AT, "stat_at", (_DIR, ("path", PATH), ("follow", BOOL)), (("stat", FILESTAT),)),
    Message(
        Op.SET_TIMES_AT,
        "set_times_at",
        (_DIR, ("path", PATH), ("follow", BOOL), ("atime", TIME), ("mtime", TIME)),
        (),
    ),
    Message(Op.MKDIR_AT, "mkdir_at", (_DIR, ("path", PATH)), ()),
    Message(Op.RMDIR_AT, "rmdir_at", (_DIR, ("path", PATH)), ()),
    Message(Op.UNLINK_AT, "unlink_at", (_DIR, ("path", PATH)), ()),
    Message(
        Op.RENAME_AT,
        "rename_at",
        (("old_dir", U32), ("old_path", PATH), ("new_dir", U32), ("new_path", PATH)),
        (),
    ),
    Message(
        Op.LINK_AT,
        "link_at",
        (
            ("old_dir", U32),
            ("old_path", PATH),
            ("new_dir", U32),
            ("new_path", PATH),
            ("follow", BOOL),
        ),
        (),
    ),
    Message(Op.SYMLINK_AT, "symlink_at", (("target", PATH), _DIR, ("path", PATH)), ()),
    Message(Op.READLINK_AT, "readlink_at", (_DIR, ("path", PATH)), (("target", LINK_TARGET),)),
    Message(
        Op.POLL,
        "poll",
        (
            ("interests", INTERESTS),
            ("timeout_ns", TIMEOUT),
            ("prefetch", U32),
            ("sends", SENDS),
        ),
        (("readiness", POLL_RESULTS), ("sent", SEND_RESULTS)),
    ),
    Message(Op.ACCEPT, "accept", (_HANDLE, ("block", BOOL)), (("connection", U32),)),
    Message(
        Op.RECV,
        "recv",
        (_HANDLE, ("size", U32), ("peek", BOOL), ("waitall", BOOL), ("block", BOOL)),
        (("data", DATA),),
    ),
    Message(Op.SEND, "send", (_HANDLE, ("data", DATA), ("block", BOOL)), (("written", U32),)),
    Message(Op.SHUTDOWN, "shutdown", (_HANDLE, ("how", U8)), ()),
    Message(Op.LOG, "log", (("level", U8), ("text", TEXT)), ()),
    Message(Op.PUBLISH_CERTIFICATE, "publish_certificate", (("pem", PEM),), ()),
)

BY_OP: dict[int, Message] = {message.op: message for message in MESSAGES}
BY_NAME: dict[str, Message] = {message.name: message for message in MESSAGES}


def message_table_markdown() -> str:
    """The message table as docs/sallyport.md shows it."""
    lines = [
        "| op | request | fields | reply fields (after errno u16 = 0) |",
        "|---:|---|---|---|",
    ]
    for message in MESSAGES:
        request = ", ".join(f"{name}: {kind.name}" for name, kind in message.request)
        reply = ", ".join(f"{name}: {kind.name}" for name, kind in message.reply) or "-"
        lines.append(f"| {int(message.op)} | `{message.name}` | {request} | {reply} |")
    lines += ["", "| type | encoding |", "|---|---|"]
    seen: dict[str, str] = {}
    for message in MESSAGES:
        for _, kind in (*message.request, *message.reply):
            seen.setdefault(kind.name, kind.wire)
    lines += [f"| {name} | {wire} |" for name, wire in sorted(seen.items())]
    return "\n".join(lines)
