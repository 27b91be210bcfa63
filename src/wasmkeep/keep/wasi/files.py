"""WASI functions on fds and paths: files, directories, streams.

Everything that reaches the host is one request to
:class:`~wasmkeep.sallyport.calls.HostCalls`; rights are checked in the keep
first (they only shrink), and paths are checked for what the keep can judge
(UTF-8, no NUL, not absolute) before the host resolves them beneath their
directory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wasmkeep.keep.wasi import abi
from wasmkeep.keep.wasi.abi import Errno, FileType, Rights, Whence
from wasmkeep.keep.wasi.fdtable import FdEntry, rights_for
from wasmkeep.keep.wasi.memory import GuestMemory
from wasmkeep.sallyport.calls import FDFLAGS, OFLAGS
from wasmkeep.sallyport.types import (
    TIME_NOW,
    FileStat,
    HandleKind,
    HostError,
)

if TYPE_CHECKING:
    pass
from wasmkeep.keep.wasi.base import MAX_FILESIZE, STREAM_CHUNK, SUCCESS, WasiBase

__all__ = ["FileFunctions"]


class FileFunctions(WasiBase):
    """fd_* and path_*."""

    def fd_advise(self, fd: int, offset: int, length: int, advice: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_ADVISE)
        if advice > 5:
            return Errno.INVAL
        if entry.is_directory:
            return Errno.BADF
        # Advice is a hint: accepted and validated, nothing to ask the host.
        return SUCCESS

    def fd_allocate(self, fd: int, offset: int, length: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_ALLOCATE)
        if offset + length > MAX_FILESIZE:
            return Errno.FBIG
        self.host.allocate(entry.handle, offset, length)
        return SUCCESS

    def fd_close(self, fd: int) -> int:
        entry = self.fds.get(fd)
        self.output.flush_handle(entry.handle)
        self._read_ahead.pop(entry.handle, None)
        if entry.stream is not None:
            entry.stream.close()
        self.fds.remove(fd)
        self.host.close(entry.handle)
        return SUCCESS

    def fd_datasync(self, fd: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_DATASYNC)
        self.host.sync(entry.handle, data_only=True)
        return SUCCESS

    def fd_sync(self, fd: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_SYNC)
        self.host.sync(entry.handle, data_only=False)
        return SUCCESS

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
        return SUCCESS

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
            return SUCCESS
        self.host.set_fdflags(entry.handle, flags)
        entry.fdflags = flags
        return SUCCESS

    def fd_fdstat_set_rights(self, fd: int, base: int, inheriting: int) -> int:
        entry = self.fds.get(fd)
        if base & ~entry.rights_base or inheriting & ~entry.rights_inheriting:
            return Errno.NOTCAPABLE
        entry.rights_base = base
        entry.rights_inheriting = inheriting
        return SUCCESS

    def fd_filestat_get(self, fd: int, buf: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_FILESTAT_GET)
        _pack_filestat(self.mem, buf, self.host.fstat(entry.handle))
        return SUCCESS

    def fd_filestat_set_size(self, fd: int, size: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_FILESTAT_SET_SIZE)
        if size > MAX_FILESIZE:
            return Errno.FBIG
        self.host.set_size(entry.handle, size)
        return SUCCESS

    def fd_filestat_set_times(self, fd: int, atim: int, mtim: int, fst_flags: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_FILESTAT_SET_TIMES)
        atime, mtime = _time_updates(atim, mtim, fst_flags)
        self.host.set_times(entry.handle, atime, mtime)
        return SUCCESS

    def fd_pread(self, fd: int, iovs: int, iovs_len: int, offset: int, nread_ptr: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_READ | Rights.FD_SEEK)
        if entry.is_directory:
            return Errno.ISDIR
        vectors = self._iovecs(iovs, iovs_len)
        if offset > MAX_FILESIZE:
            return Errno.INVAL
        wanted = min(sum(length for _, length in vectors), self.limits.max_io_chunk)
        data = self.host.pread(entry.handle, wanted, offset) if wanted else b""
        self.mem.write_u32(nread_ptr, self._scatter(vectors, data))
        return SUCCESS

    def fd_pwrite(self, fd: int, iovs: int, iovs_len: int, offset: int, nwritten_ptr: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_WRITE | Rights.FD_SEEK)
        if entry.is_directory:
            return Errno.ISDIR
        if offset > MAX_FILESIZE:
            return Errno.INVAL
        data = self._gather(iovs, iovs_len)
        written = self.host.pwrite(entry.handle, data, offset) if len(data) else 0
        self.mem.write_u32(nwritten_ptr, written)
        return SUCCESS

    def fd_read(self, fd: int, iovs: int, iovs_len: int, nread_ptr: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_READ)
        if entry.is_directory:
            return Errno.ISDIR
        vectors = self._iovecs(iovs, iovs_len)
        wanted = min(sum(length for _, length in vectors), self.limits.max_io_chunk)
        if not wanted:
            self.mem.write_u32(nread_ptr, 0)
            return SUCCESS
        if entry.stream is not None:
            if self.output.pending:
                self.output.flush()
            self.mem.write_u32(nread_ptr, self._receive_into(entry, entry.stream, vectors, 0))
            return SUCCESS
        handle = entry.handle
        data = self._read_ahead.pop(handle, b"")
        if not data:
            if self.output.pending:
                self.output.flush()  # a prompt goes out before the guest waits for input
            self._before_waiting()
            # stdin is read ahead (as the wasmtime CLI does): the host returns
            # what is there, up to a chunk, and the rest waits in the keep.
            ask = max(wanted, STREAM_CHUNK) if entry.kind is HandleKind.STDIN else wanted
            data = self.host.read(handle, ask)
        if len(data) > wanted:
            view = memoryview(data)  # slices of a view copy nothing
            self._read_ahead[handle] = view[wanted:]
            data = view[:wanted]
        self.mem.write_u32(nread_ptr, self._scatter(vectors, data))
        return SUCCESS

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
            return SUCCESS
        if self.output.pending:
            self.output.flush()
        data = self._gather(iovs, iovs_len)
        if entry.stream is not None:
            block = not entry.fdflags & FDFLAGS.NONBLOCK
            written = entry.stream.send(data, block=block) if len(data) else 0
        else:
            written = self.host.write(handle, data) if len(data) else 0
        self.mem.write_u32(nwritten_ptr, written)
        return SUCCESS

    def fd_prestat_get(self, fd: int, buf: int) -> int:
        entry = self.fds.get(fd)
        if entry.preopen is None:
            return Errno.BADF
        self.mem.pack(abi.PRESTAT, buf, abi.PREOPENTYPE_DIR, len(entry.preopen.encode()))
        return SUCCESS

    def fd_prestat_dir_name(self, fd: int, path: int, path_len: int) -> int:
        entry = self.fds.get(fd)
        if entry.preopen is None:
            return Errno.BADF
        name = entry.preopen.encode()
        if path_len < len(name):
            return Errno.NAMETOOLONG
        self.mem.write(path, name)
        return SUCCESS

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
        return SUCCESS

    def fd_renumber(self, fd: int, to: int) -> int:
        replaced = self.fds.renumber(fd, to)
        if replaced is not None:
            self.output.flush_handle(replaced.handle)
            self._read_ahead.pop(replaced.handle, None)
            self.host.close(replaced.handle)
        return SUCCESS

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
        return SUCCESS

    def fd_tell(self, fd: int, offset_ptr: int) -> int:
        entry = self.fds.lookup(fd, Rights.FD_TELL)
        if entry.is_directory:
            return Errno.ISDIR
        self.mem.write_u64(offset_ptr, self.host.seek(entry.handle, 0, Whence.CUR))
        return SUCCESS

    def path_create_directory(self, fd: int, path: int, path_len: int) -> int:
        entry = self._dir(fd, Rights.PATH_CREATE_DIRECTORY)
        self.host.mkdir_at(entry.handle, self._path(path, path_len))
        return SUCCESS

    def path_filestat_get(self, fd: int, flags: int, path: int, path_len: int, buf: int) -> int:
        entry = self._dir(fd, Rights.PATH_FILESTAT_GET)
        follow = bool(flags & abi.Lookup.SYMLINK_FOLLOW)
        stat = self.host.stat_at(entry.handle, self._path(path, path_len), follow)
        _pack_filestat(self.mem, buf, stat)
        return SUCCESS

    def path_filestat_set_times(
        self, fd: int, flags: int, path: int, path_len: int, atim: int, mtim: int, fst_flags: int
    ) -> int:
        entry = self._dir(fd, Rights.PATH_FILESTAT_SET_TIMES)
        atime, mtime = _time_updates(atim, mtim, fst_flags)
        follow = bool(flags & abi.Lookup.SYMLINK_FOLLOW)
        self.host.set_times_at(entry.handle, self._path(path, path_len), follow, atime, mtime)
        return SUCCESS

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
        return SUCCESS

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
        return SUCCESS

    def path_readlink(
        self, fd: int, path: int, path_len: int, buf: int, buf_len: int, bufused_ptr: int
    ) -> int:
        entry = self._dir(fd, Rights.PATH_READLINK)
        target = self.host.readlink_at(entry.handle, self._path(path, path_len))[:buf_len]
        self.mem.write(buf, target)
        self.mem.write_u32(bufused_ptr, len(target))
        return SUCCESS

    def path_remove_directory(self, fd: int, path: int, path_len: int) -> int:
        entry = self._dir(fd, Rights.PATH_REMOVE_DIRECTORY)
        self.host.rmdir_at(entry.handle, self._path(path, path_len))
        return SUCCESS

    def path_rename(
        self, fd: int, old_path: int, old_len: int, new_fd: int, new_path: int, new_len: int
    ) -> int:
        old = self._dir(fd, Rights.PATH_RENAME_SOURCE)
        new = self._dir(new_fd, Rights.PATH_RENAME_TARGET)
        self.host.rename_at(
            old.handle, self._path(old_path, old_len), new.handle, self._path(new_path, new_len)
        )
        return SUCCESS

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
        return SUCCESS

    def path_unlink_file(self, fd: int, path: int, path_len: int) -> int:
        entry = self._dir(fd, Rights.PATH_UNLINK_FILE)
        self.host.unlink_at(entry.handle, self._path(path, path_len))
        return SUCCESS


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
