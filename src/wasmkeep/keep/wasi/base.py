"""The state every WASI function works on, and the helpers they share.

:class:`WasiBase` holds a guest's WASI world: its host (everything that leaves
the keep), its memory, its fd table, gathered output and read-ahead. The
functions themselves live in mixins by area (`files.py`, `polling.py`,
`sockets.py`) and `preview1.py` puts them together.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from wasmkeep.keep.wasi import abi
from wasmkeep.keep.wasi.abi import Errno, FileType, Rights
from wasmkeep.keep.wasi.fdtable import FdEntry, FdTable, rights_for
from wasmkeep.keep.wasi.memory import GuestMemory
from wasmkeep.keep.wasi.output import GatheredOutput
from wasmkeep.keep.wasi.streams import PlainStream, Stream
from wasmkeep.limits import DEFAULT_LIMITS, Limits
from wasmkeep.sallyport.calls import FDFLAGS, HostCalls
from wasmkeep.sallyport.types import (
    HandleInfo,
    HandleKind,
    HostError,
    KeepManifest,
)

if TYPE_CHECKING:
    import ssl

    from wasmkeep.keep.tls import KeepTls

__all__ = [
    "CLOCKS",
    "MAX_FILESIZE",
    "STREAM_CHUNK",
    "SUCCESS",
    "ProcExit",
    "WasiBase",
    "write_strings",
]

CLOCKS = {
    abi.Clock.REALTIME: time.CLOCK_REALTIME,
    abi.Clock.MONOTONIC: time.CLOCK_MONOTONIC,
    abi.Clock.PROCESS_CPUTIME: time.CLOCK_PROCESS_CPUTIME_ID,
    abi.Clock.THREAD_CPUTIME: time.CLOCK_THREAD_CPUTIME_ID,
}
#: How much stdin is read ahead and how much output is gathered. Measured
#: (1 GiB through a process keep): 128 KiB halves the sallyport round trips of
#: 64 KiB reads and writes; larger buffers are slower, because Python then
#: allocates each one with mmap and pays its page faults every time.
STREAM_CHUNK = 128 * 1024
MAX_FILESIZE = (1 << 63) - 1
SUCCESS = 0


class ProcExit(Exception):
    """The guest called proc_exit; carries its status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class WasiBase:
    """The state of one guest's WASI world, and the helpers of its functions."""

    def __init__(
        self,
        manifest: KeepManifest,
        host: HostCalls,
        limits: Limits = DEFAULT_LIMITS,
        random: Callable[[int], bytes] = os.urandom,
        tls: KeepTls | None = None,
    ) -> None:
        self.host = host
        self.limits = limits
        self._random = random
        # Until the instance exists there is no memory: every access is a FAULT.
        self.mem = GuestMemory(0, lambda: 0)
        self._args = _nul_terminated(manifest.args)
        self._env = _nul_terminated(f"{key}={value}" for key, value in manifest.env)
        self.fds = FdTable(limits.max_open_fds)
        self._tls = tls
        for number, info in enumerate(manifest.fds):
            entry = _boot_entry(info)
            if info.kind is HandleKind.CONNECT:
                context = None if tls is None or info.tls is None else tls.contexts[info.handle]
                name = info.tls.server_name if info.tls else ""
                entry.stream = self._stream(info.handle, context, server_side=False, name=name)
            elif info.kind is HandleKind.LISTEN and info.tls is not None:
                assert tls is not None, "TLS sockets come with the keep's TLS set-up"
                entry.tls_server = tls.contexts[info.handle]
            self.fds.place(number, entry)
        self.output = GatheredOutput(host.write, STREAM_CHUNK)
        # Bytes read from the host's stdin ahead of the guest, per handle.
        self._read_ahead: dict[int, bytes | memoryview] = {}

    def attach_memory(self, memory: GuestMemory) -> None:
        self.mem = memory

    def flush_output(self) -> None:
        self.output.flush()

    def close_all(self) -> None:
        """Flush output and release every handle the guest still holds."""
        self.flush_output()
        for _, entry in self.fds:
            if entry.stream is not None:
                with contextlib.suppress(HostError):
                    entry.stream.close()
            if entry.kind is None:
                with contextlib.suppress(HostError):
                    self.host.close(entry.handle)

    def _iovecs(self, iovs: int, count: int) -> list[tuple[int, int]]:
        """The (ptr, len) pairs of an iovec array, each checked against memory."""
        mem = self.mem
        mem.check(iovs, count * 8)
        vectors = []
        total = 0
        for index in range(count):
            ptr, length = abi.CIOVEC.unpack_from(mem.view, iovs + 8 * index)
            mem.check(ptr, length)
            total += length
            vectors.append((ptr, length))
        if total > 0xFFFFFFFF:
            raise HostError(Errno.INVAL)
        return vectors

    def _gather(self, iovs: int, count: int) -> bytes | memoryview:
        """The bytes an iovec array points at: a view of guest memory if there is
        one vector (the common case, kept short), else a copy joined together."""
        mem = self.mem
        if count == 1:
            mem.check(iovs, 8)
            ptr, length = abi.CIOVEC.unpack_from(mem.view, iovs)
            mem.check(ptr, length)
            return mem.view[ptr : ptr + length]
        view = mem.view
        return b"".join(view[ptr : ptr + length] for ptr, length in self._iovecs(iovs, count))

    def _scatter(self, vectors: list[tuple[int, int]], data: bytes | memoryview) -> int:
        view = self.mem.view
        offset = 0
        for ptr, length in vectors:
            chunk = data[offset : offset + length]
            view[ptr : ptr + len(chunk)] = chunk
            offset += len(chunk)
            if offset >= len(data):
                break
        return offset

    def _path(self, ptr: int, length: int) -> str:
        """A guest path argument: UTF-8, relative, without NUL, not too long."""
        if length > self.limits.max_path_bytes:
            raise HostError(Errno.NAMETOOLONG)
        path = self.mem.read_string(ptr, length)
        if "\0" in path:
            raise HostError(Errno.INVAL)
        if path.startswith("/"):
            # Absolute paths would name the host's root: never reachable.
            raise HostError(Errno.NOTCAPABLE)
        return path

    def _dir(self, fd: int, rights: int) -> FdEntry:
        entry = self.fds.get(fd)
        if not entry.is_directory:
            raise HostError(Errno.NOTDIR)
        if entry.read_only and rights & Rights.MUTATING:
            raise HostError(Errno.ROFS)
        entry.require(rights)
        return entry

    def _stream(
        self, handle: int, context: ssl.SSLContext | None, *, server_side: bool, name: str = ""
    ) -> Stream:
        """The stream of a connected socket: plain, or TLS inside the keep."""
        if context is None:
            return PlainStream(self.host, handle)
        from wasmkeep.keep.tls import TlsStream  # loaded before lockdown when TLS is in use

        return TlsStream(self.host, handle, context, server_side=server_side, server_name=name)

    def _receive_into(
        self, entry: FdEntry, stream: Stream, vectors: list[tuple[int, int]], flags: int
    ) -> int:
        wanted = min(sum(length for _, length in vectors), self.limits.max_io_chunk)
        if not wanted:
            return 0
        block = not entry.fdflags & FDFLAGS.NONBLOCK
        if block and not stream.ready():
            self._before_waiting()
        data = stream.recv(
            wanted,
            peek=bool(flags & abi.RIFLAGS_RECV_PEEK),
            waitall=bool(flags & abi.RIFLAGS_RECV_WAITALL),
            block=block,
        )
        return self._scatter(vectors, data)

    def _before_waiting(self) -> None:
        """Hand the host what streams hold to send before the guest waits:
        a peer must not wait on bytes the keep holds while the keep waits on it."""
        for _, entry in self.fds:
            if entry.stream is not None and len(entry.stream.outbox()):
                entry.stream.flush()


def _boot_entry(info: HandleInfo) -> FdEntry:
    """The fd the guest starts with for one entry of the manifest."""
    base = rights_for(info.filetype, read_only=info.read_only)
    if info.kind is HandleKind.STDIN:
        base &= ~Rights.FD_WRITE
    elif info.kind in (HandleKind.STDOUT, HandleKind.STDERR):
        base &= ~Rights.FD_READ
    if info.filetype == FileType.CHARACTER_DEVICE:
        # isatty() in wasi-libc: a character device without seek or tell.
        base &= ~(Rights.FD_SEEK | Rights.FD_TELL)
    if info.kind is HandleKind.LISTEN:
        # A listener accepts and is polled (readable: a connection waits); it
        # carries no bytes itself (fd_read on it is NOTCONN).
        base = Rights.SOCK_ACCEPT | Rights.POLL_FD_READWRITE | Rights.FD_FDSTAT_SET_FLAGS
        base |= Rights.FD_READ
        base |= Rights.FD_FILESTAT_GET
    directory = info.kind is HandleKind.DIRECTORY
    return FdEntry(
        handle=info.handle,
        kind=info.kind,
        filetype=info.filetype,
        rights_base=base,
        # A read-only directory passes FD_WRITE on too, so that asking to open a
        # file for writing is refused with ROFS (path_open) rather than quietly
        # giving a fd that cannot write.
        rights_inheriting=Rights.ALL if directory else 0,
        preopen=info.guest_path if directory else None,
        read_only=info.read_only,
    )


def _nul_terminated(items: Iterable[str]) -> list[bytes]:
    return [item.encode("utf-8", "surrogateescape") + b"\0" for item in items]


def write_strings(mem: GuestMemory, items: list[bytes], pointers: int, buf: int) -> None:
    mem.check(pointers, 4 * len(items))
    mem.check(buf, sum(len(item) for item in items))
    for index, item in enumerate(items):
        mem.write_u32(pointers + 4 * index, buf)
        mem.write(buf, item)
        buf += len(item)
