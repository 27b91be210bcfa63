"""The keep's side of sallyport: HostCalls answered by a host it does not trust.

Every reply is checked before the WASI layer sees it (Iago defences): its frame
and form (codec.py, messages.py), then what it means against what was asked:

* no more bytes than requested, no more written than sent;
* a seek to a set offset lands there; positions and sizes fit in 63 bits;
* a new handle is new (not one the keep already holds) and of a type the
  request allows (a directory when one was required, never a symlink);
* directory entries: no more than asked, cookies strictly increasing, names
  without "/" or NUL;
* one poll result per interest.

A reply that breaks any of these raises :class:`HostProtocolViolation`: the
keep stops the workload (fail closed) and never continues on host-chosen data.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

from wasmkeep.errors import HostProtocolViolation
from wasmkeep.limits import DEFAULT_LIMITS, Limits
from wasmkeep.sallyport.calls import OFLAGS, POLL_READ
from wasmkeep.sallyport.channel import Channel
from wasmkeep.sallyport.codec import Kind, ProtocolError
from wasmkeep.sallyport.messages import BY_NAME
from wasmkeep.sallyport.types import (
    DirEntry,
    Errno,
    FileStat,
    FileType,
    HostError,
    PollReply,
)

__all__ = ["SallyportHost"]

_MAX_OFFSET = (1 << 63) - 1


class SallyportHost:
    """HostCalls over a sallyport channel, one request at a time."""

    def __init__(
        self, channel: Channel, known_handles: Iterable[int], limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self._channel = channel
        self._limits = limits
        self._handles = set(known_handles)
        self._next_id = 1
        # The keep's ticker thread sends gathered output too: one request at a time.
        self._lock = threading.Lock()

    def _call(self, name: str, *values: Any) -> Any:
        message = BY_NAME[name]
        payload = message.request_writer(values).parts()
        with self._lock:
            frame_id = self._next_id
            self._next_id = (self._next_id + 1) & 0xFFFFFFFF or 1
            try:
                self._channel.send(Kind.REQUEST, message.op, frame_id, payload)
                frame = self._channel.receive()
            except ProtocolError as error:
                raise HostProtocolViolation(f"{name}: {error}") from None
        if frame.kind is not Kind.REPLY or frame.op != message.op or frame.id != frame_id:
            raise HostProtocolViolation(
                f"{name}: expected the reply to request {frame_id}, got a {frame.kind.name} "
                f"frame for op {frame.op}, id {frame.id}"
            )
        try:
            result = message.decode_reply(frame.payload, self._limits)
        except ProtocolError as error:
            raise HostProtocolViolation(str(error)) from None
        if isinstance(result, Errno):
            raise HostError(result)
        return result

    @staticmethod
    def _violation(name: str, what: str) -> HostProtocolViolation:
        return HostProtocolViolation(f"{name}: {what}")

    def _known(self, handle: int) -> int:
        # The keep only ever names handles the host gave it; checked to catch
        # bugs on this side, never trusting the host to catch them.
        if handle not in self._handles:
            raise HostError(Errno.BADF)
        return handle

    def _stat(self, name: str, stat: FileStat) -> FileStat:
        if stat.size > _MAX_OFFSET:
            raise self._violation(name, f"file size {stat.size} does not fit in 63 bits")
        return stat

    # -- byte streams and files ------------------------------------------------
    def read(self, handle: int, size: int) -> bytes:
        data: bytes = self._call("read", self._known(handle), size)
        if len(data) > size:
            raise self._violation("read", f"{len(data)} bytes for a read of {size}")
        return data

    def pread(self, handle: int, size: int, offset: int) -> bytes:
        data: bytes = self._call("pread", self._known(handle), size, offset)
        if len(data) > size:
            raise self._violation("pread", f"{len(data)} bytes for a read of {size}")
        return data

    def write(self, handle: int, data: bytes | memoryview) -> int:
        data = data[: self._limits.max_io_chunk]
        written: int = self._call("write", self._known(handle), data)
        if written > len(data):
            raise self._violation("write", f"{written} bytes written of {len(data)}")
        return written

    def pwrite(self, handle: int, data: bytes | memoryview, offset: int) -> int:
        data = data[: self._limits.max_io_chunk]
        written: int = self._call("pwrite", self._known(handle), data, offset)
        if written > len(data):
            raise self._violation("pwrite", f"{written} bytes written of {len(data)}")
        return written

    def seek(self, handle: int, offset: int, whence: int) -> int:
        position: int = self._call("seek", self._known(handle), offset, whence)
        if position > _MAX_OFFSET:
            raise self._violation("seek", f"position {position} does not fit in 63 bits")
        if whence == 0 and position != offset:
            raise self._violation("seek", f"asked for offset {offset}, host says {position}")
        return position

    def sync(self, handle: int, data_only: bool) -> None:
        self._call("sync", self._known(handle), data_only)

    def fstat(self, handle: int) -> FileStat:
        return self._stat("fstat", self._call("fstat", self._known(handle)))

    def set_size(self, handle: int, size: int) -> None:
        self._call("set_size", self._known(handle), size)

    def allocate(self, handle: int, offset: int, length: int) -> None:
        self._call("allocate", self._known(handle), offset, length)

    def set_times(self, handle: int, atime: int | None, mtime: int | None) -> None:
        self._call("set_times", self._known(handle), atime, mtime)

    def set_fdflags(self, handle: int, fdflags: int) -> None:
        self._call("set_fdflags", self._known(handle), fdflags)

    def readdir(self, handle: int, cookie: int, max_entries: int) -> list[DirEntry]:
        entries: list[DirEntry] = self._call("readdir", self._known(handle), cookie, max_entries)
        if len(entries) > max_entries:
            raise self._violation("readdir", f"{len(entries)} entries for a batch of {max_entries}")
        previous = cookie
        for entry in entries:
            if entry.next <= previous:
                raise self._violation(
                    "readdir", f"cookie {entry.next} does not advance past {previous}"
                )
            if not entry.name or b"/" in entry.name or b"\0" in entry.name:
                raise self._violation("readdir", f"entry name {entry.name!r} is not a file name")
            previous = entry.next
        return entries

    def close(self, handle: int) -> None:
        self._call("close", self._known(handle))
        self._handles.discard(handle)

    # -- paths beneath a directory handle ------------------------------------
    def open_at(
        self,
        dir_handle: int,
        path: str,
        *,
        follow: bool,
        oflags: int,
        fdflags: int,
        read: bool,
        write: bool,
    ) -> tuple[int, FileType]:
        handle, filetype = self._call(
            "open_at", self._known(dir_handle), path, follow, oflags, fdflags, read, write
        )
        if handle in self._handles:
            raise self._violation("open_at", f"handle {handle} is already in use")
        if filetype == FileType.SYMBOLIC_LINK:
            raise self._violation("open_at", "opened a symbolic link itself")
        if oflags & OFLAGS.DIRECTORY and filetype != FileType.DIRECTORY:
            raise self._violation("open_at", f"a directory was required, got {filetype.name}")
        self._handles.add(handle)
        return handle, filetype

    def stat_at(self, dir_handle: int, path: str, follow: bool) -> FileStat:
        return self._stat("stat_at", self._call("stat_at", self._known(dir_handle), path, follow))

    def set_times_at(
        self, dir_handle: int, path: str, follow: bool, atime: int | None, mtime: int | None
    ) -> None:
        self._call("set_times_at", self._known(dir_handle), path, follow, atime, mtime)

    def mkdir_at(self, dir_handle: int, path: str) -> None:
        self._call("mkdir_at", self._known(dir_handle), path)

    def rmdir_at(self, dir_handle: int, path: str) -> None:
        self._call("rmdir_at", self._known(dir_handle), path)

    def unlink_at(self, dir_handle: int, path: str) -> None:
        self._call("unlink_at", self._known(dir_handle), path)

    def rename_at(self, old_dir: int, old_path: str, new_dir: int, new_path: str) -> None:
        self._call("rename_at", self._known(old_dir), old_path, self._known(new_dir), new_path)

    def link_at(
        self, old_dir: int, old_path: str, new_dir: int, new_path: str, follow: bool
    ) -> None:
        self._call(
            "link_at", self._known(old_dir), old_path, self._known(new_dir), new_path, follow
        )

    def symlink_at(self, target: str, dir_handle: int, path: str) -> None:
        self._call("symlink_at", target, self._known(dir_handle), path)

    def readlink_at(self, dir_handle: int, path: str) -> bytes:
        target: bytes = self._call("readlink_at", self._known(dir_handle), path)
        if b"\0" in target:
            raise self._violation("readlink_at", "link target contains NUL")
        return target

    # -- sockets --------------------------------------------------------------------
    def accept(self, handle: int, block: bool) -> int:
        connection: int = self._call("accept", self._known(handle), block)
        if connection in self._handles:
            raise self._violation("accept", f"handle {connection} is already in use")
        self._handles.add(connection)
        return connection

    def recv(self, handle: int, size: int, peek: bool, waitall: bool, block: bool) -> bytes:
        data: bytes = self._call("recv", self._known(handle), size, peek, waitall, block)
        if len(data) > size:
            raise self._violation("recv", f"{len(data)} bytes for a receive of {size}")
        return data

    def send(self, handle: int, data: bytes | memoryview, block: bool) -> int:
        data = data[: self._limits.max_io_chunk]
        sent: int = self._call("send", self._known(handle), data, block)
        if sent > len(data):
            raise self._violation("send", f"{sent} bytes sent of {len(data)}")
        return sent

    def shutdown(self, handle: int, how: int) -> None:
        self._call("shutdown", self._known(handle), how)

    # -- the keep telling the host ---------------------------------------------------
    def log(self, level: int, text: str) -> None:
        self._call("log", level, text[:4096])

    def publish_certificate(self, pem: bytes) -> None:
        self._call("publish_certificate", pem)

    # -- waiting ----------------------------------------------------------------
    def poll(
        self,
        interests: Sequence[tuple[int, int]],
        timeout_ns: int | None,
        prefetch: int = 0,
        sends: Sequence[tuple[int, bytes | memoryview]] = (),
    ) -> PollReply:
        for handle, _ in interests:
            self._known(handle)
        for handle, _ in sends:
            self._known(handle)
        ready, sent = self._call("poll", list(interests), timeout_ns, prefetch, list(sends))
        if len(ready) != len(interests):
            raise self._violation("poll", f"{len(ready)} results for {len(interests)} interests")
        if len(sent) != len(sends):
            raise self._violation("poll", f"{len(sent)} send results for {len(sends)} sends")
        received = 0
        for (_, interest), result in zip(interests, ready, strict=True):
            if result is None:
                continue
            if result.nbytes > _MAX_OFFSET:
                raise self._violation("poll", f"{result.nbytes} bytes available does not fit")
            if (result.data or result.eof) and not interest & POLL_READ:
                raise self._violation("poll", "data for an interest in writing")
            received += len(result.data)
        if received > prefetch:
            raise self._violation("poll", f"{received} bytes received, {prefetch} allowed")
        for (_, data), result in zip(sends, sent, strict=True):
            if result.written > len(data):
                raise self._violation("poll", f"{result.written} bytes sent of {len(data)}")
        return PollReply(ready, sent)
