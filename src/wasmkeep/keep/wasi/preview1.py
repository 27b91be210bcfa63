"""WASI preview1 (`wasi_snapshot_preview1`), the project's own implementation.

Every one of the 46 functions is a method here taking the raw wasm arguments
(unsigned integers) and returning an errno. What needs nothing outside the keep
(arguments, environment, clocks, randomness, rights, the fd table) is answered
here; everything else is one request to :class:`~wasmkeep.sallyport.calls.HostCalls`.

Rights follow the original preview1 model: a fd's base rights bound what it
may do, its inheriting rights bound the fds opened through it, and rights only
ever shrink. A read-only preopen holds no right that changes a file.

Small writes to stdout and stderr are gathered in the keep and sent as one
request (see `output.py`), so interleaving and prompts stay as the guest wrote
them.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from wasmkeep.keep.wasi import abi
from wasmkeep.keep.wasi.abi import Errno, FileType, Rights, Whence
from wasmkeep.keep.wasi.fdtable import FdEntry, FdTable, rights_for
from wasmkeep.keep.wasi.memory import GuestMemory
from wasmkeep.keep.wasi.output import GatheredOutput
from wasmkeep.keep.wasi.streams import PlainStream, Stream
from wasmkeep.limits import DEFAULT_LIMITS, Limits
from wasmkeep.sallyport.calls import FDFLAGS, OFLAGS, POLL_READ, POLL_WRITE, HostCalls
from wasmkeep.sallyport.types import (
    TIME_NOW,
    FileStat,
    HandleInfo,
    HandleKind,
    HostError,
    KeepManifest,
)

if TYPE_CHECKING:
    import ssl

    from wasmkeep.keep.tls import KeepTls

__all__ = ["IMPORT_MODULE", "KEEP_LOCAL", "SIGNATURES", "Preview1", "ProcExit"]

IMPORT_MODULE = "wasi_snapshot_preview1"

I32, I64 = "i32", "i64"
#: Each function's wasm parameter types; every function returns one i32 errno,
#: except proc_exit which returns nothing.
SIGNATURES: dict[str, tuple[str, ...]] = {
    "args_get": (I32, I32),
    "args_sizes_get": (I32, I32),
    "environ_get": (I32, I32),
    "environ_sizes_get": (I32, I32),
    "clock_res_get": (I32, I32),
    "clock_time_get": (I32, I64, I32),
    "fd_advise": (I32, I64, I64, I32),
    "fd_allocate": (I32, I64, I64),
    "fd_close": (I32,),
    "fd_datasync": (I32,),
    "fd_fdstat_get": (I32, I32),
    "fd_fdstat_set_flags": (I32, I32),
    "fd_fdstat_set_rights": (I32, I64, I64),
    "fd_filestat_get": (I32, I32),
    "fd_filestat_set_size": (I32, I64),
    "fd_filestat_set_times": (I32, I64, I64, I32),
    "fd_pread": (I32, I32, I32, I64, I32),
    "fd_prestat_get": (I32, I32),
    "fd_prestat_dir_name": (I32, I32, I32),
    "fd_pwrite": (I32, I32, I32, I64, I32),
    "fd_read": (I32, I32, I32, I32),
    "fd_readdir": (I32, I32, I32, I64, I32),
    "fd_renumber": (I32, I32),
    "fd_seek": (I32, I64, I32, I32),
    "fd_sync": (I32,),
    "fd_tell": (I32, I32),
    "fd_write": (I32, I32, I32, I32),
    "path_create_directory": (I32, I32, I32),
    "path_filestat_get": (I32, I32, I32, I32, I32),
    "path_filestat_set_times": (I32, I32, I32, I32, I64, I64, I32),
    "path_link": (I32, I32, I32, I32, I32, I32, I32),
    "path_open": (I32, I32, I32, I32, I32, I64, I64, I32, I32),
    "path_readlink": (I32, I32, I32, I32, I32, I32),
    "path_remove_directory": (I32, I32, I32),
    "path_rename": (I32, I32, I32, I32, I32, I32),
    "path_symlink": (I32, I32, I32, I32, I32),
    "path_unlink_file": (I32, I32, I32),
    "poll_oneoff": (I32, I32, I32, I32),
    "proc_exit": (I32,),
    "proc_raise": (I32,),
    "sched_yield": (),
    "random_get": (I32, I32),
    "sock_accept": (I32, I32, I32),
    "sock_recv": (I32, I32, I32, I32, I32, I32),
    "sock_send": (I32, I32, I32, I32, I32),
    "sock_shutdown": (I32, I32),
}

#: Functions answered entirely inside the keep: they need no flush of pending output.
KEEP_LOCAL = frozenset(
    {
        "args_get",
        "args_sizes_get",
        "environ_get",
        "environ_sizes_get",
        "clock_res_get",
        "clock_time_get",
        "fd_fdstat_get",
        "fd_fdstat_set_rights",
        "fd_prestat_get",
        "fd_prestat_dir_name",
        "random_get",
        "sched_yield",
        "fd_write",  # flushes itself when it changes streams
        "fd_read",  # flushes itself when it has to ask the host
    }
)

_CLOCKS = {
    abi.Clock.REALTIME: time.CLOCK_REALTIME,
    abi.Clock.MONOTONIC: time.CLOCK_MONOTONIC,
    abi.Clock.PROCESS_CPUTIME: time.CLOCK_PROCESS_CPUTIME_ID,
    abi.Clock.THREAD_CPUTIME: time.CLOCK_THREAD_CPUTIME_ID,
}
#: How much stdin is read ahead and how much output is gathered. Measured
#: (1 GiB through a process keep): 128 KiB halves the sallyport round trips of
#: 64 KiB reads and writes; larger buffers are slower, because Python then
#: allocates each one with mmap and pays its page faults every time.
_STREAM_CHUNK = 128 * 1024
_MAX_FILESIZE = (1 << 63) - 1
_SUCCESS = 0


class ProcExit(Exception):
    """The guest called proc_exit; carries its status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Preview1:
    """The state of one guest's WASI world and the functions it imports."""

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
        self.output = GatheredOutput(host.write, _STREAM_CHUNK)
        # Bytes read from the host's stdin ahead of the guest, per handle.
        self._read_ahead: dict[int, bytes | memoryview] = {}

    # -- plumbing -----------------------------------------------------------
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

    # -- arguments and environment ---------------------------------------------
    def args_sizes_get(self, argc_ptr: int, size_ptr: int) -> int:
        self.mem.write_u32(argc_ptr, len(self._args))
        self.mem.write_u32(size_ptr, sum(len(arg) for arg in self._args))
        return _SUCCESS

    def args_get(self, argv_ptr: int, buf_ptr: int) -> int:
        _write_strings(self.mem, self._args, argv_ptr, buf_ptr)
        return _SUCCESS

    def environ_sizes_get(self, count_ptr: int, size_ptr: int) -> int:
        self.mem.write_u32(count_ptr, len(self._env))
        self.mem.write_u32(size_ptr, sum(len(item) for item in self._env))
        return _SUCCESS

    def environ_get(self, environ_ptr: int, buf_ptr: int) -> int:
        _write_strings(self.mem, self._env, environ_ptr, buf_ptr)
        return _SUCCESS

    # -- clocks, randomness, scheduling ---------------------------------------
    def clock_res_get(self, clock_id: int, res_ptr: int) -> int:
        clock = _CLOCKS.get(clock_id)
        if clock is None:
            return Errno.INVAL
        resolution = max(1, round(time.clock_getres(clock) * 1e9))
        self.mem.write_u64(res_ptr, resolution)
        return _SUCCESS

    def clock_time_get(self, clock_id: int, precision: int, time_ptr: int) -> int:
        clock = _CLOCKS.get(clock_id)
        if clock is None:
            return Errno.INVAL
        self.mem.write_u64(time_ptr, time.clock_gettime_ns(clock))
        return _SUCCESS

    def random_get(self, buf: int, length: int) -> int:
        if length > self.limits.max_random_bytes:
            return Errno.INVAL
        self.mem.check(buf, length)
        self.mem.write(buf, self._random(length))
        return _SUCCESS

    def sched_yield(self) -> int:
        os.sched_yield()
        return _SUCCESS

    def proc_exit(self, status: int) -> int:
        raise ProcExit(status)

    def proc_raise(self, signal: int) -> int:
        return Errno.NOSYS

    # -- fds ----------------------------------------------------------------
    def fd_advise(self, fd: int, offset: int, length: int, advice: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_ADVISE)
        if advice > 5:
            return Errno.INVAL
        if entry.is_directory:
            return Errno.BADF
        # Advice is a hint: accepted and validated, nothing to ask the host.
        return _SUCCESS

    def fd_allocate(self, fd: int, offset: int, length: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_ALLOCATE)
        if offset + length > _MAX_FILESIZE:
            return Errno.FBIG
        self.host.allocate(entry.handle, offset, length)
        return _SUCCESS

    def fd_close(self, fd: int) -> int:
        entry = self.fds.get(fd)
        self.output.flush_handle(entry.handle)
        self._read_ahead.pop(entry.handle, None)
        if entry.stream is not None:
            entry.stream.close()
        self.fds.remove(fd)
        self.host.close(entry.handle)
        return _SUCCESS

    def fd_datasync(self, fd: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_DATASYNC)
        self.host.sync(entry.handle, data_only=True)
        return _SUCCESS

    def fd_sync(self, fd: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_SYNC)
        self.host.sync(entry.handle, data_only=False)
        return _SUCCESS

    def fd_fdstat_get(self, fd: int, buf: int) -> int:
        entry = self.fds.get(fd)
        self.mem.pack(
            abi.FDSTAT,
            buf,
            entry.filetype,
            entry.fdflags,
            entry.rights_base,
            entry.rights_inheriting,
        )
        return _SUCCESS

    def fd_fdstat_set_flags(self, fd: int, flags: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_FDSTAT_SET_FLAGS)
        if flags & ~FDFLAGS.ALL:
            return Errno.INVAL
        if flags & (FDFLAGS.DSYNC | FDFLAGS.RSYNC | FDFLAGS.SYNC) != entry.fdflags & (
            FDFLAGS.DSYNC | FDFLAGS.RSYNC | FDFLAGS.SYNC
        ):
            # Synchronous I/O is chosen at open; POSIX cannot change it later.
            return Errno.NOTSUP
        if entry.kind not in (None, HandleKind.DIRECTORY) and flags & FDFLAGS.APPEND:
            # The keep's stdio and sockets stay as the host set them up.
            return Errno.NOTSUP
        if entry.filetype == FileType.SOCKET_STREAM:
            # Host sockets never block at the OS level; each request says
            # whether to wait, from this flag.
            if flags & ~FDFLAGS.NONBLOCK:
                return Errno.NOTSUP
            entry.fdflags = flags
            return _SUCCESS
        self.host.set_fdflags(entry.handle, flags)
        entry.fdflags = flags
        return _SUCCESS

    def fd_fdstat_set_rights(self, fd: int, base: int, inheriting: int) -> int:
        entry = self.fds.get(fd)
        if base & ~entry.rights_base or inheriting & ~entry.rights_inheriting:
            return Errno.NOTCAPABLE
        entry.rights_base = base
        entry.rights_inheriting = inheriting
        return _SUCCESS

    def fd_filestat_get(self, fd: int, buf: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_FILESTAT_GET)
        _pack_filestat(self.mem, buf, self.host.fstat(entry.handle))
        return _SUCCESS

    def fd_filestat_set_size(self, fd: int, size: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_FILESTAT_SET_SIZE)
        if size > _MAX_FILESIZE:
            return Errno.FBIG
        self.host.set_size(entry.handle, size)
        return _SUCCESS

    def fd_filestat_set_times(self, fd: int, atim: int, mtim: int, fst_flags: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_FILESTAT_SET_TIMES)
        atime, mtime = _time_updates(atim, mtim, fst_flags)
        self.host.set_times(entry.handle, atime, mtime)
        return _SUCCESS

    def fd_pread(self, fd: int, iovs: int, iovs_len: int, offset: int, nread_ptr: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_READ | Rights.FD_SEEK)
        if entry.is_directory:
            return Errno.ISDIR
        vectors = self._iovecs(iovs, iovs_len)
        if offset > _MAX_FILESIZE:
            return Errno.INVAL
        wanted = min(sum(length for _, length in vectors), self.limits.max_io_chunk)
        data = self.host.pread(entry.handle, wanted, offset) if wanted else b""
        self.mem.write_u32(nread_ptr, self._scatter(vectors, data))
        return _SUCCESS

    def fd_pwrite(self, fd: int, iovs: int, iovs_len: int, offset: int, nwritten_ptr: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_WRITE | Rights.FD_SEEK)
        if entry.is_directory:
            return Errno.ISDIR
        if offset > _MAX_FILESIZE:
            return Errno.INVAL
        data = self._gather(iovs, iovs_len)
        written = self.host.pwrite(entry.handle, data, offset) if len(data) else 0
        self.mem.write_u32(nwritten_ptr, written)
        return _SUCCESS

    def fd_read(self, fd: int, iovs: int, iovs_len: int, nread_ptr: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_READ)
        if entry.is_directory:
            return Errno.ISDIR
        vectors = self._iovecs(iovs, iovs_len)
        wanted = min(sum(length for _, length in vectors), self.limits.max_io_chunk)
        if not wanted:
            self.mem.write_u32(nread_ptr, 0)
            return _SUCCESS
        if entry.stream is not None:
            if self.output.pending:
                self.output.flush()
            self.mem.write_u32(nread_ptr, self._receive_into(entry, entry.stream, vectors, 0))
            return _SUCCESS
        handle = entry.handle
        data = self._read_ahead.pop(handle, b"")
        if not data:
            if self.output.pending:
                self.output.flush()  # a prompt goes out before the guest waits for input
            # stdin is read ahead (as the wasmtime CLI does): the host returns
            # what is there, up to a chunk, and the rest waits in the keep.
            ask = max(wanted, _STREAM_CHUNK) if entry.kind is HandleKind.STDIN else wanted
            data = self.host.read(handle, ask)
        if len(data) > wanted:
            view = memoryview(data)  # slices of a view copy nothing
            self._read_ahead[handle] = view[wanted:]
            data = view[:wanted]
        self.mem.write_u32(nread_ptr, self._scatter(vectors, data))
        return _SUCCESS

    def fd_write(self, fd: int, iovs: int, iovs_len: int, nwritten_ptr: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_WRITE)
        if entry.is_directory:
            return Errno.ISDIR
        handle = entry.handle
        kind = entry.kind
        if kind is HandleKind.STDOUT or kind is HandleKind.STDERR:
            data = self._gather(iovs, iovs_len)
            self.output.append(handle, data)
            self.mem.write_u32(nwritten_ptr, len(data))
            return _SUCCESS
        if self.output.pending:
            self.output.flush()
        data = self._gather(iovs, iovs_len)
        if entry.stream is not None:
            block = not entry.fdflags & FDFLAGS.NONBLOCK
            written = entry.stream.send(data, block=block) if len(data) else 0
        else:
            written = self.host.write(handle, data) if len(data) else 0
        self.mem.write_u32(nwritten_ptr, written)
        return _SUCCESS

    def fd_prestat_get(self, fd: int, buf: int) -> int:
        entry = self.fds.get(fd)
        if entry.preopen is None:
            return Errno.BADF
        self.mem.pack(abi.PRESTAT, buf, abi.PREOPENTYPE_DIR, len(entry.preopen.encode()))
        return _SUCCESS

    def fd_prestat_dir_name(self, fd: int, path: int, path_len: int) -> int:
        entry = self.fds.get(fd)
        if entry.preopen is None:
            return Errno.BADF
        name = entry.preopen.encode()
        if path_len < len(name):
            return Errno.NAMETOOLONG
        self.mem.write(path, name)
        return _SUCCESS

    def fd_readdir(self, fd: int, buf: int, buf_len: int, cookie: int, bufused_ptr: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_READDIR)
        if not entry.is_directory:
            return Errno.NOTDIR
        mem = self.mem
        mem.check(buf, buf_len)
        out = bytearray()
        while len(out) < buf_len:
            batch = self.host.readdir(entry.handle, cookie, self.limits.max_readdir_batch)
            if not batch:
                break
            for dirent in batch:
                out += abi.DIRENT.pack(dirent.next, dirent.ino, len(dirent.name), dirent.filetype)
                out += dirent.name
                cookie = dirent.next
                if len(out) >= buf_len:
                    break
        # A buffer filled to the last byte tells the guest there may be more.
        data = bytes(out[:buf_len])
        mem.write(buf, data)
        mem.write_u32(bufused_ptr, len(data))
        return _SUCCESS

    def fd_renumber(self, fd: int, to: int) -> int:
        replaced = self.fds.renumber(fd, to)
        if replaced is not None:
            self.output.flush_handle(replaced.handle)
            self._read_ahead.pop(replaced.handle, None)
            self.host.close(replaced.handle)
        return _SUCCESS

    def fd_seek(self, fd: int, offset: int, whence: int, newoffset_ptr: int) -> int:
        rights = Rights.FD_TELL if offset == 0 and whence == Whence.CUR else Rights.FD_SEEK
        entry = self.fds.lookup(fd, rights)
        if entry.is_directory:
            return Errno.ISDIR
        if whence > Whence.END:
            return Errno.INVAL
        if offset >= 1 << 63:
            offset -= 1 << 64  # filedelta is signed
        position = self.host.seek(entry.handle, offset, whence)
        self.mem.write_u64(newoffset_ptr, position)
        return _SUCCESS

    def fd_tell(self, fd: int, offset_ptr: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_TELL)
        if entry.is_directory:
            return Errno.ISDIR
        self.mem.write_u64(offset_ptr, self.host.seek(entry.handle, 0, Whence.CUR))
        return _SUCCESS

    # -- paths --------------------------------------------------------------
    def path_create_directory(self, fd: int, path: int, path_len: int) -> int:
        entry = self._dir(fd, Rights.PATH_CREATE_DIRECTORY)
        self.host.mkdir_at(entry.handle, self._path(path, path_len))
        return _SUCCESS

    def path_filestat_get(self, fd: int, flags: int, path: int, path_len: int, buf: int) -> int:
        entry = self._dir(fd, Rights.PATH_FILESTAT_GET)
        follow = bool(flags & abi.Lookup.SYMLINK_FOLLOW)
        stat = self.host.stat_at(entry.handle, self._path(path, path_len), follow)
        _pack_filestat(self.mem, buf, stat)
        return _SUCCESS

    def path_filestat_set_times(
        self, fd: int, flags: int, path: int, path_len: int, atim: int, mtim: int, fst_flags: int
    ) -> int:
        entry = self._dir(fd, Rights.PATH_FILESTAT_SET_TIMES)
        atime, mtime = _time_updates(atim, mtim, fst_flags)
        follow = bool(flags & abi.Lookup.SYMLINK_FOLLOW)
        self.host.set_times_at(entry.handle, self._path(path, path_len), follow, atime, mtime)
        return _SUCCESS

    def path_link(
        self,
        old_fd: int,
        old_flags: int,
        old_path: int,
        old_path_len: int,
        new_fd: int,
        new_path: int,
        new_path_len: int,
    ) -> int:
        old = self._dir(old_fd, Rights.PATH_LINK_SOURCE)
        new = self._dir(new_fd, Rights.PATH_LINK_TARGET)
        self.host.link_at(
            old.handle,
            self._path(old_path, old_path_len),
            new.handle,
            self._path(new_path, new_path_len),
            follow=bool(old_flags & abi.Lookup.SYMLINK_FOLLOW),
        )
        return _SUCCESS

    def path_open(
        self,
        fd: int,
        dirflags: int,
        path: int,
        path_len: int,
        oflags: int,
        rights_base: int,
        rights_inheriting: int,
        fdflags: int,
        fd_ptr: int,
    ) -> int:
        needed = Rights.PATH_OPEN
        if oflags & OFLAGS.CREAT:
            needed |= Rights.PATH_CREATE_FILE
        if oflags & OFLAGS.TRUNC:
            needed |= Rights.PATH_FILESTAT_SET_SIZE
        parent = self._dir(fd, needed)
        if oflags & ~OFLAGS.ALL or fdflags & ~FDFLAGS.ALL:
            return Errno.INVAL
        name = self._path(path, path_len)
        # The new fd gets what it asked for, within what its directory passes on.
        base = rights_base & parent.rights_inheriting
        inheriting = rights_inheriting & parent.rights_inheriting
        write = bool(base & Rights.NEEDS_WRITE) or bool(fdflags & FDFLAGS.APPEND)
        if write and parent.read_only:
            return Errno.ROFS
        handle, filetype = self.host.open_at(
            parent.handle,
            name,
            follow=bool(dirflags & abi.Lookup.SYMLINK_FOLLOW),
            oflags=oflags,
            fdflags=fdflags,
            read=bool(base & Rights.NEEDS_READ) or not write,
            write=write,
        )
        base &= rights_for(filetype, read_only=parent.read_only)
        if filetype != FileType.DIRECTORY:
            inheriting = 0
        new = FdEntry(
            handle=handle,
            kind=None,
            filetype=filetype,
            rights_base=base,
            rights_inheriting=inheriting,
            fdflags=fdflags & (FDFLAGS.APPEND | FDFLAGS.NONBLOCK | FDFLAGS.DSYNC | FDFLAGS.SYNC),
            read_only=parent.read_only,
        )
        try:
            self.mem.check(fd_ptr, 4)
            number = self.fds.insert(new)
        except HostError:
            self.host.close(handle)
            raise
        self.mem.write_u32(fd_ptr, number)
        return _SUCCESS

    def path_readlink(
        self, fd: int, path: int, path_len: int, buf: int, buf_len: int, bufused_ptr: int
    ) -> int:
        entry = self._dir(fd, Rights.PATH_READLINK)
        target = self.host.readlink_at(entry.handle, self._path(path, path_len))[:buf_len]
        self.mem.write(buf, target)
        self.mem.write_u32(bufused_ptr, len(target))
        return _SUCCESS

    def path_remove_directory(self, fd: int, path: int, path_len: int) -> int:
        entry = self._dir(fd, Rights.PATH_REMOVE_DIRECTORY)
        self.host.rmdir_at(entry.handle, self._path(path, path_len))
        return _SUCCESS

    def path_rename(
        self, fd: int, old_path: int, old_len: int, new_fd: int, new_path: int, new_len: int
    ) -> int:
        old = self._dir(fd, Rights.PATH_RENAME_SOURCE)
        new = self._dir(new_fd, Rights.PATH_RENAME_TARGET)
        self.host.rename_at(
            old.handle, self._path(old_path, old_len), new.handle, self._path(new_path, new_len)
        )
        return _SUCCESS

    def path_symlink(
        self, old_path: int, old_len: int, fd: int, new_path: int, new_len: int
    ) -> int:
        entry = self._dir(fd, Rights.PATH_SYMLINK)
        if old_len > self.limits.max_path_bytes:
            return Errno.NAMETOOLONG
        target = self.mem.read_string(old_path, old_len)
        if "\0" in target:
            return Errno.INVAL
        self.host.symlink_at(target, entry.handle, self._path(new_path, new_len))
        return _SUCCESS

    def path_unlink_file(self, fd: int, path: int, path_len: int) -> int:
        entry = self._dir(fd, Rights.PATH_UNLINK_FILE)
        self.host.unlink_at(entry.handle, self._path(path, path_len))
        return _SUCCESS

    # -- waiting ------------------------------------------------------------
    def poll_oneoff(self, in_ptr: int, out_ptr: int, count: int, nevents_ptr: int) -> int:
        if count == 0:
            return Errno.INVAL
        if count > self.limits.max_poll_subscriptions:
            return Errno.NOTSUP
        mem = self.mem
        mem.check(in_ptr, count * abi.SUBSCRIPTION.size)
        mem.check(out_ptr, count * abi.EVENT.size)
        mem.check(nevents_ptr, 4)

        events: list[tuple[int, int, int, int, int]] = []  # userdata, errno, type, nbytes, flags
        timers: list[tuple[int, int]] = []  # deadline on the monotonic clock (ns), userdata
        interests: list[tuple[int, int]] = []
        # userdata, event type and (read interests on sockets) stream, per interest
        waiting: list[tuple[int, int, Stream | None]] = []
        now = time.monotonic_ns()
        for index in range(count):
            userdata, tag, body = abi.SUBSCRIPTION.unpack_from(mem.view, in_ptr + 48 * index)
            if tag == abi.EventType.CLOCK:
                clock_id, timeout, _precision, flags = abi.SUBSCRIPTION_CLOCK.unpack(body)
                clock = _CLOCKS.get(clock_id)
                if clock is None or clock_id > abi.Clock.MONOTONIC:
                    events.append((userdata, Errno.INVAL, tag, 0, 0))
                    continue
                if flags & abi.SUBSCRIPTION_CLOCK_ABSTIME:
                    timeout = max(0, timeout - time.clock_gettime_ns(clock))
                timers.append((now + timeout, userdata))
            elif tag in (abi.EventType.FD_READ, abi.EventType.FD_WRITE):
                (fd,) = abi.SUBSCRIPTION_FD.unpack(body)
                right = Rights.FD_READ if tag == abi.EventType.FD_READ else Rights.FD_WRITE
                try:
                    entry = self.fds.lookup(fd, right)
                except HostError as error:
                    events.append((userdata, error.errno, tag, 0, 0))
                    continue
                ready_now = self._readable_now(entry) if tag == abi.EventType.FD_READ else 0
                if ready_now:
                    events.append((userdata, _SUCCESS, tag, max(ready_now, 0), 0))
                    continue
                interest = POLL_READ if tag == abi.EventType.FD_READ else POLL_WRITE
                interests.append((entry.handle, interest))
                waiting.append((userdata, tag, entry.stream if interest == POLL_READ else None))
            else:
                return Errno.INVAL

        if not events:
            first_deadline = min((deadline for deadline, _ in timers), default=None)
            if interests:
                events += self._wait_for_fds(interests, waiting, first_deadline)
            elif first_deadline is not None:
                delay = first_deadline - time.monotonic_ns()
                if delay > 0:
                    time.sleep(delay / 1e9)
            if not events:
                after = time.monotonic_ns()
                events.extend(
                    (userdata, _SUCCESS, abi.EventType.CLOCK, 0, 0)
                    for deadline, userdata in timers
                    if deadline <= after
                )
        for index, event in enumerate(events):
            abi.EVENT.pack_into(mem.view, out_ptr + abi.EVENT.size * index, *event)
        mem.write_u32(nevents_ptr, len(events))
        return _SUCCESS

    def _readable_now(self, entry: FdEntry) -> int:
        """Bytes a read gives without asking the host (-1: end of stream)."""
        if entry.stream is not None:
            return entry.stream.ready()
        return len(self._read_ahead.get(entry.handle, b""))

    def _wait_for_fds(
        self,
        interests: list[tuple[int, int]],
        waiting: list[tuple[int, int, Stream | None]],
        deadline: int | None,
    ) -> list[tuple[int, int, int, int, int]]:
        """Ask the host until an fd is ready or the deadline passes.

        A socket the host calls readable may still hold no whole TLS record:
        its stream takes what arrived and says whether the guest would get
        data. Streams with ciphertext still to send are watched for
        writability too, whatever the guest waits for, and fed when they can.
        """
        while True:
            backlogged = self._flush_streams()
            extra = [(handle, POLL_WRITE) for handle, _ in backlogged]
            now = time.monotonic_ns()
            timeout_ns = None if deadline is None else max(0, deadline - now)
            results = self.host.poll([*interests, *extra], timeout_ns)
            events: list[tuple[int, int, int, int, int]] = []
            for (userdata, tag, stream), result in zip(waiting, results, strict=False):
                if result is None:
                    continue
                nbytes = result.nbytes
                if stream is not None and result.errno == Errno.SUCCESS:
                    if not stream.pump() and not result.hangup:
                        continue
                    decrypted = stream.ready()
                    if decrypted > 0:
                        nbytes = decrypted
                flags = abi.EVENT_FD_READWRITE_HANGUP if result.hangup else 0
                events.append((userdata, result.errno, tag, nbytes, flags))
            if events or (deadline is not None and time.monotonic_ns() >= deadline):
                return events

    def _flush_streams(self) -> list[tuple[int, Stream]]:
        """Send what socket streams hold back; those still holding some."""
        held = []
        for _, entry in self.fds:
            stream = entry.stream
            if stream is not None and stream.backlog():
                stream.flush()
                if stream.backlog():
                    held.append((entry.handle, stream))
        return held

    # -- sockets --------------------------------------------------------------
    def _stream(
        self, handle: int, context: ssl.SSLContext | None, *, server_side: bool, name: str = ""
    ) -> Stream:
        """The stream of a connected socket: plain, or TLS inside the keep."""
        if context is None:
            return PlainStream(self.host, handle)
        from wasmkeep.keep.tls import TlsStream  # loaded before lockdown when TLS is in use

        return TlsStream(self.host, handle, context, server_side=server_side, server_name=name)

    def _socket(self, fd: int, rights: int) -> FdEntry:
        entry = self.fds.get(fd)
        if entry.filetype != FileType.SOCKET_STREAM:
            raise HostError(Errno.NOTSOCK)
        entry.require(rights)
        return entry

    def _connected(self, fd: int, rights: int) -> tuple[FdEntry, Stream]:
        entry = self._socket(fd, rights)
        if entry.stream is None:  # a listener: it has no peer
            raise HostError(Errno.NOTCONN)
        return entry, entry.stream

    def sock_accept(self, fd: int, flags: int, fd_ptr: int) -> int:
        listener = self._socket(fd, Rights.SOCK_ACCEPT)
        if listener.kind is not HandleKind.LISTEN:
            return Errno.INVAL
        if flags & ~FDFLAGS.NONBLOCK:
            return Errno.INVAL
        self.mem.check(fd_ptr, 4)
        handle = self.host.accept(listener.handle, block=not listener.fdflags & FDFLAGS.NONBLOCK)
        entry = FdEntry(
            handle=handle,
            kind=None,
            filetype=FileType.SOCKET_STREAM,
            rights_base=rights_for(FileType.SOCKET_STREAM, read_only=False),
            rights_inheriting=0,
            fdflags=flags & FDFLAGS.NONBLOCK,
            stream=self._stream(handle, listener.tls_server, server_side=True),
        )
        try:
            number = self.fds.insert(entry)
        except HostError:
            self.host.close(handle)
            raise
        self.mem.write_u32(fd_ptr, number)
        return _SUCCESS

    def _receive_into(
        self, entry: FdEntry, stream: Stream, vectors: list[tuple[int, int]], flags: int
    ) -> int:
        wanted = min(sum(length for _, length in vectors), self.limits.max_io_chunk)
        if not wanted:
            return 0
        data = stream.recv(
            wanted,
            peek=bool(flags & abi.RIFLAGS_RECV_PEEK),
            waitall=bool(flags & abi.RIFLAGS_RECV_WAITALL),
            block=not entry.fdflags & FDFLAGS.NONBLOCK,
        )
        return self._scatter(vectors, data)

    def sock_recv(
        self, fd: int, ri_data: int, ri_data_len: int, ri_flags: int, ro_len: int, ro_flags: int
    ) -> int:
        entry, stream = self._connected(fd, Rights.FD_READ)
        if ri_flags & ~(abi.RIFLAGS_RECV_PEEK | abi.RIFLAGS_RECV_WAITALL):
            return Errno.INVAL
        self.mem.check(ro_len, 4)
        self.mem.check(ro_flags, 2)
        received = self._receive_into(entry, stream, self._iovecs(ri_data, ri_data_len), ri_flags)
        self.mem.write_u32(ro_len, received)
        self.mem.write(ro_flags, b"\0\0")
        return _SUCCESS

    def sock_send(self, fd: int, si_data: int, si_data_len: int, si_flags: int, so_len: int) -> int:
        entry, stream = self._connected(fd, Rights.FD_WRITE)
        if si_flags:
            return Errno.INVAL
        self.mem.check(so_len, 4)
        data = self._gather(si_data, si_data_len)
        sent = stream.send(data, block=not entry.fdflags & FDFLAGS.NONBLOCK) if len(data) else 0
        self.mem.write_u32(so_len, sent)
        return _SUCCESS

    def sock_shutdown(self, fd: int, how: int) -> int:
        _, stream = self._connected(fd, Rights.SOCK_SHUTDOWN)
        if how not in (abi.SDFLAGS_RD, abi.SDFLAGS_WR, abi.SDFLAGS_RD | abi.SDFLAGS_WR):
            return Errno.INVAL
        stream.shutdown(how)
        return _SUCCESS


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


def _write_strings(mem: GuestMemory, items: list[bytes], pointers: int, buf: int) -> None:
    mem.check(pointers, 4 * len(items))
    mem.check(buf, sum(len(item) for item in items))
    for index, item in enumerate(items):
        mem.write_u32(pointers + 4 * index, buf)
        mem.write(buf, item)
        buf += len(item)


def _pack_filestat(mem: GuestMemory, buf: int, stat: FileStat) -> None:
    mem.pack(
        abi.FILESTAT,
        buf,
        stat.dev,
        stat.ino,
        stat.filetype,
        stat.nlink,
        stat.size,
        stat.atim,
        stat.mtim,
        stat.ctim,
    )


def _time_updates(atim: int, mtim: int, flags: int) -> tuple[int | None, int | None]:
    """The (atime, mtime) a set-times call asks for; INVAL for contradicting flags."""
    if flags & ~abi.Fstflags.ALL:
        raise HostError(Errno.INVAL)
    if flags & abi.Fstflags.ATIM and flags & abi.Fstflags.ATIM_NOW:
        raise HostError(Errno.INVAL)
    if flags & abi.Fstflags.MTIM and flags & abi.Fstflags.MTIM_NOW:
        raise HostError(Errno.INVAL)

    def pick(value: int, set_bit: int, now_bit: int) -> int | None:
        if flags & now_bit:
            return TIME_NOW
        if flags & set_bit:
            return value
        return None

    return (
        pick(atim, abi.Fstflags.ATIM, abi.Fstflags.ATIM_NOW),
        pick(mtim, abi.Fstflags.MTIM, abi.Fstflags.MTIM_NOW),
    )
