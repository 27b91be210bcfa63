"""The host's side of sallyport: performs a keep's requests, and only those its
workload's config grants.

A keep names host resources by handles this executor chose. Each handle is
one of: a stdio stream (the host's own fd 0, 1 or 2), /dev/null, a preopened
directory, or a file or directory opened beneath one. Paths are resolved
beneath their directory by the kernel (`beneath.py`), so no request can reach
outside the preopens, whatever the keep sends: this is the host's defence
against a compromised keep, independent of the checks the keep makes itself.
Everything under a read-only preopen refuses changes with ROFS.

Refusals are logged at INFO (debug output shows what a workload tried).
"""

from __future__ import annotations

import errno as errno_module
import fcntl
import functools
import logging
import os
import select
import socket
import stat as stat_module
import termios
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ParamSpec, TypeVar

from wasmkeep.host import beneath
from wasmkeep.limits import DEFAULT_LIMITS, Limits
from wasmkeep.sallyport.calls import FDFLAGS, OFLAGS, POLL_READ, POLL_WRITE
from wasmkeep.sallyport.types import (
    TIME_NOW,
    DirEntry,
    Errno,
    FileStat,
    FileType,
    HandleKind,
    HostError,
    PollReply,
    PollResult,
    SendResult,
)

__all__ = ["Executor", "KeepHungUp", "errno_of"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_STDIO = (HandleKind.STDIN, HandleKind.STDOUT, HandleKind.STDERR)


def _errno_table() -> dict[int, Errno]:
    table = {}
    for member in Errno:
        name = "E2BIG" if member is Errno.TOOBIG else f"E{member.name}"
        number = getattr(errno_module, name, None)
        if number is not None:
            table[number] = member
    table[errno_module.EWOULDBLOCK] = Errno.AGAIN
    table[errno_module.EOPNOTSUPP] = Errno.NOTSUP
    return table


_ERRNO = _errno_table()


def errno_of(error: OSError) -> Errno:
    """The WASI errno for an OS error (IO when there is no equivalent)."""
    if isinstance(error, beneath.Escape):
        return Errno.NOTCAPABLE
    return _ERRNO.get(error.errno or 0, Errno.IO)


def _translated(method: Callable[P, R]) -> Callable[P, R]:
    """Turn OS errors into HostError with the matching WASI errno."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except OSError as error:
            raise HostError(errno_of(error)) from None
        except ValueError:  # e.g. an embedded NUL the keep should have refused
            raise HostError(Errno.INVAL) from None

    return wrapper


def _release(resource: _Resource) -> None:
    if resource.sock is not None:
        resource.sock.close()
    elif resource.owned:
        os.close(resource.fd)


def _filetype(mode: int) -> FileType:
    if stat_module.S_ISREG(mode):
        return FileType.REGULAR_FILE
    if stat_module.S_ISDIR(mode):
        return FileType.DIRECTORY
    if stat_module.S_ISLNK(mode):
        return FileType.SYMBOLIC_LINK
    if stat_module.S_ISCHR(mode):
        return FileType.CHARACTER_DEVICE
    if stat_module.S_ISBLK(mode):
        return FileType.BLOCK_DEVICE
    if stat_module.S_ISSOCK(mode):
        return FileType.SOCKET_STREAM
    return FileType.UNKNOWN


def _filestat(st: os.stat_result) -> FileStat:
    return FileStat(
        dev=st.st_dev,
        ino=st.st_ino,
        filetype=_filetype(st.st_mode),
        nlink=st.st_nlink,
        size=st.st_size,
        atim=st.st_atime_ns,
        mtim=st.st_mtime_ns,
        ctim=st.st_ctime_ns,
    )


class KeepHungUp(Exception):
    """The keep's channel became readable or closed while a host call waited:
    the keep is gone (or broke the one-request-at-a-time rule)."""


@dataclass(slots=True)
class _Resource:
    fd: int
    kind: HandleKind | None  # None: opened by the keep beneath a preopen, or accepted
    filetype: FileType
    read_only: bool
    owned: bool = True
    listing: list[DirEntry] | None = field(default=None, repr=False)
    #: Sockets: the object that owns `fd` (always non-blocking at the OS level;
    #: each request says whether to wait).
    sock: socket.socket | None = field(default=None, repr=False)

    @property
    def is_directory(self) -> bool:
        return self.filetype == FileType.DIRECTORY


class Executor:
    """Performs keep requests against this host's kernel, within the config's grants."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._resources: dict[int, _Resource] = {}
        self._next_handle = 1
        #: For a keep in another process: the channel, watched while a call
        #: blocks (stdin, poll), so that the keep's death ends the wait.
        self.keep_channel_fd: int | None = None
        #: Where the keep's certificate is written when it publishes one.
        self.certificate_path: Path | None = None
        self.certificate: bytes | None = None

    # -- set-up (host only; never reachable from a keep) -----------------------
    def _add(self, resource: _Resource) -> int:
        handle = self._next_handle
        self._next_handle += 1
        self._resources[handle] = resource
        return handle

    def add_stdio(self, kind: HandleKind, fd: int) -> tuple[int, FileType]:
        """Share one of the host's stdio fds with the keep (never closed by it)."""
        try:
            filetype = FileType.CHARACTER_DEVICE if os.isatty(fd) else FileType.UNKNOWN
        except OSError:
            filetype = FileType.UNKNOWN
        return self._add(_Resource(fd, kind, filetype, False, owned=False)), filetype

    def add_null(self) -> tuple[int, FileType]:
        fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        return self._add(_Resource(fd, HandleKind.NULL, FileType.CHARACTER_DEVICE, False)), (
            FileType.CHARACTER_DEVICE
        )

    def add_directory(self, path: str | os.PathLike[str], *, read_only: bool) -> int:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._add(_Resource(fd, HandleKind.DIRECTORY, FileType.DIRECTORY, read_only))

    def add_listener(self, address: str, port: int) -> int:
        """A listening TCP socket on address:port, for the keep to accept from."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and address == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((address, port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return self._add_socket(sock, HandleKind.LISTEN)

    def add_connection(self, host: str, port: int, timeout: float = 10.0) -> int:
        """A TCP connection to host:port, made now, for the keep to use."""
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setblocking(False)
        return self._add_socket(sock, HandleKind.CONNECT)

    def _add_socket(self, sock: socket.socket, kind: HandleKind | None) -> int:
        return self._add(_Resource(sock.fileno(), kind, FileType.SOCKET_STREAM, False, sock=sock))

    def close_all(self) -> None:
        """Release every handle (the keep is gone)."""
        for resource in self._resources.values():
            _release(resource)
        self._resources.clear()

    # -- checks ---------------------------------------------------------------
    def _get(self, handle: int) -> _Resource:
        resource = self._resources.get(handle)
        if resource is None:
            log.info("refused: unknown handle %d", handle)
            raise HostError(Errno.BADF)
        return resource

    def _directory(self, handle: int) -> _Resource:
        resource = self._get(handle)
        if not resource.is_directory:
            raise HostError(Errno.NOTDIR)
        return resource

    def _writable(self, resource: _Resource, what: str) -> None:
        if resource.read_only:
            log.info("refused: %s under a read-only directory", what)
            raise HostError(Errno.ROFS)

    def _file(self, handle: int) -> _Resource:
        """A handle that may seek and change size: not stdio, not a directory."""
        resource = self._get(handle)
        if resource.kind in _STDIO:
            raise HostError(Errno.SPIPE)
        if resource.is_directory:
            raise HostError(Errno.ISDIR)
        return resource

    # -- byte streams and files ------------------------------------------------
    @_translated
    def read(self, handle: int, size: int) -> bytes:
        resource = self._get(handle)
        if resource.kind in (HandleKind.STDOUT, HandleKind.STDERR):
            raise HostError(Errno.BADF)
        if resource.filetype != FileType.REGULAR_FILE:
            self._wait_unless_keep_gone(resource.fd, select.POLLIN, None)
        return os.read(resource.fd, min(size, self.limits.max_io_chunk))

    def _wait_unless_keep_gone(self, fd: int, events: int, timeout_ms: int | None) -> None:
        """Block until `fd` is ready, unless the keep's channel stirs first."""
        if self.keep_channel_fd is None:
            return
        poller = select.poll()
        poller.register(fd, events)
        poller.register(self.keep_channel_fd, select.POLLIN)
        for ready_fd, _ in poller.poll(timeout_ms):
            if ready_fd == self.keep_channel_fd:
                raise KeepHungUp

    @_translated
    def pread(self, handle: int, size: int, offset: int) -> bytes:
        resource = self._file(handle)
        return os.pread(resource.fd, min(size, self.limits.max_io_chunk), offset)

    @_translated
    def write(self, handle: int, data: bytes | memoryview) -> int:
        resource = self._get(handle)
        if resource.kind is HandleKind.STDIN:
            raise HostError(Errno.BADF)
        self._writable(resource, "write")
        return os.write(resource.fd, data[: self.limits.max_io_chunk])

    @_translated
    def pwrite(self, handle: int, data: bytes | memoryview, offset: int) -> int:
        resource = self._file(handle)
        self._writable(resource, "write")
        return os.pwrite(resource.fd, data[: self.limits.max_io_chunk], offset)

    @_translated
    def seek(self, handle: int, offset: int, whence: int) -> int:
        resource = self._file(handle)
        return os.lseek(resource.fd, offset, whence)

    @_translated
    def sync(self, handle: int, data_only: bool) -> None:
        resource = self._get(handle)
        if resource.kind in _STDIO:
            raise HostError(Errno.INVAL)
        (os.fdatasync if data_only else os.fsync)(resource.fd)

    @_translated
    def fstat(self, handle: int) -> FileStat:
        resource = self._get(handle)
        if resource.kind in _STDIO:
            # The keep learns the stream's type, not the host's inode numbers.
            return FileStat(0, 0, resource.filetype, 0, 0, 0, 0, 0)
        return _filestat(os.fstat(resource.fd))

    @_translated
    def set_size(self, handle: int, size: int) -> None:
        resource = self._file(handle)
        self._writable(resource, "truncate")
        os.ftruncate(resource.fd, size)

    @_translated
    def allocate(self, handle: int, offset: int, length: int) -> None:
        resource = self._file(handle)
        self._writable(resource, "allocate")
        os.posix_fallocate(resource.fd, offset, length)

    @_translated
    def set_times(self, handle: int, atime: int | None, mtime: int | None) -> None:
        resource = self._get(handle)
        if resource.kind in _STDIO:
            raise HostError(Errno.BADF)
        self._writable(resource, "set times")
        beneath.set_times(resource.fd, None, atime, mtime, now=TIME_NOW, follow=True)

    @_translated
    def set_fdflags(self, handle: int, fdflags: int) -> None:
        resource = self._get(handle)
        if resource.kind in _STDIO or resource.kind is HandleKind.NULL:
            # The host's own stdio is shared with its terminal: never changed.
            raise HostError(Errno.NOTSUP)
        if fdflags & FDFLAGS.APPEND:
            self._writable(resource, "append")
        flags = fcntl.fcntl(resource.fd, fcntl.F_GETFL)
        flags &= ~(os.O_APPEND | os.O_NONBLOCK)
        if fdflags & FDFLAGS.APPEND:
            flags |= os.O_APPEND
        if fdflags & FDFLAGS.NONBLOCK:
            flags |= os.O_NONBLOCK
        fcntl.fcntl(resource.fd, fcntl.F_SETFL, flags)

    @_translated
    def readdir(self, handle: int, cookie: int, max_entries: int) -> list[DirEntry]:
        resource = self._directory(handle)
        if cookie == 0 or resource.listing is None:
            resource.listing = self._list(resource.fd)
        return resource.listing[cookie : cookie + min(max_entries, self.limits.max_readdir_batch)]

    def _list(self, fd: int) -> list[DirEntry]:
        """A snapshot of the directory, "." and ".." first; cookies are indexes."""
        here = os.fstat(fd)
        names: list[tuple[bytes, int, FileType]] = [(b".", here.st_ino, FileType.DIRECTORY)]
        try:
            up = os.stat("..", dir_fd=fd, follow_symlinks=False).st_ino
        except OSError:
            up = here.st_ino
        names.append((b"..", up, FileType.DIRECTORY))
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.is_symlink():
                    filetype = FileType.SYMBOLIC_LINK
                elif entry.is_dir(follow_symlinks=False):
                    filetype = FileType.DIRECTORY
                elif entry.is_file(follow_symlinks=False):
                    filetype = FileType.REGULAR_FILE
                else:
                    filetype = _filetype(entry.stat(follow_symlinks=False).st_mode)
                names.append((os.fsencode(entry.name), entry.inode(), filetype))
        return [
            DirEntry(next=index + 1, ino=ino, filetype=filetype, name=name)
            for index, (name, ino, filetype) in enumerate(names)
        ]

    @_translated
    def close(self, handle: int) -> None:
        resource = self._resources.pop(handle, None)
        if resource is None:
            raise HostError(Errno.BADF)
        _release(resource)

    # -- paths beneath a directory handle ------------------------------------
    @_translated
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
        parent = self._directory(dir_handle)
        if write or oflags & (OFLAGS.CREAT | OFLAGS.TRUNC) or fdflags & FDFLAGS.APPEND:
            self._writable(parent, f"open {path!r} for writing")
        if read and write:
            flags = os.O_RDWR
        elif write:
            flags = os.O_WRONLY
        else:
            flags = os.O_RDONLY
        flags |= os.O_NOCTTY
        for bit, os_flag in (
            (OFLAGS.CREAT, os.O_CREAT),
            (OFLAGS.DIRECTORY, os.O_DIRECTORY),
            (OFLAGS.EXCL, os.O_EXCL),
            (OFLAGS.TRUNC, os.O_TRUNC),
        ):
            if oflags & bit:
                flags |= os_flag
        for bit, os_flag in (
            (FDFLAGS.APPEND, os.O_APPEND),
            (FDFLAGS.NONBLOCK, os.O_NONBLOCK),
            (FDFLAGS.DSYNC, os.O_DSYNC),
            (FDFLAGS.RSYNC, os.O_RSYNC),
            (FDFLAGS.SYNC, os.O_SYNC),
        ):
            if fdflags & bit:
                flags |= os_flag
        if not follow:
            flags |= os.O_NOFOLLOW
        fd = beneath.open_beneath(parent.fd, path, flags)
        try:
            filetype = _filetype(os.fstat(fd).st_mode)
        except OSError:
            os.close(fd)
            raise
        return self._add(_Resource(fd, None, filetype, parent.read_only)), filetype

    @_translated
    def stat_at(self, dir_handle: int, path: str, follow: bool) -> FileStat:
        parent = self._directory(dir_handle)
        if follow and beneath.is_plain_name(path):
            # Fast path: a plain name that is not a symlink needs no openat2.
            st = os.stat(path, dir_fd=parent.fd, follow_symlinks=False)
            if not stat_module.S_ISLNK(st.st_mode):
                return _filestat(st)
        if follow:
            fd = beneath.open_beneath(parent.fd, path, os.O_PATH)
            try:
                return _filestat(os.fstat(fd))
            finally:
                os.close(fd)
        with beneath.parent_beneath(parent.fd, path) as (fd, name):
            return _filestat(os.stat(name, dir_fd=fd, follow_symlinks=False))

    @_translated
    def set_times_at(
        self, dir_handle: int, path: str, follow: bool, atime: int | None, mtime: int | None
    ) -> None:
        parent = self._directory(dir_handle)
        self._writable(parent, "set times")
        if follow:
            fd = beneath.open_beneath(parent.fd, path, os.O_PATH)
            try:
                beneath.set_times(fd, None, atime, mtime, now=TIME_NOW, follow=True)
            finally:
                os.close(fd)
            return
        with beneath.parent_beneath(parent.fd, path) as (fd, name):
            beneath.set_times(fd, name, atime, mtime, now=TIME_NOW, follow=False)

    @_translated
    def mkdir_at(self, dir_handle: int, path: str) -> None:
        parent = self._directory(dir_handle)
        self._writable(parent, "mkdir")
        with beneath.parent_beneath(parent.fd, path) as (fd, name):
            os.mkdir(name, 0o777, dir_fd=fd)

    @_translated
    def rmdir_at(self, dir_handle: int, path: str) -> None:
        parent = self._directory(dir_handle)
        self._writable(parent, "rmdir")
        with beneath.parent_beneath(parent.fd, path) as (fd, name):
            os.rmdir(name, dir_fd=fd)

    @_translated
    def unlink_at(self, dir_handle: int, path: str) -> None:
        parent = self._directory(dir_handle)
        self._writable(parent, "unlink")
        with beneath.parent_beneath(parent.fd, path) as (fd, name):
            os.unlink(name, dir_fd=fd)

    @_translated
    def rename_at(self, old_dir: int, old_path: str, new_dir: int, new_path: str) -> None:
        old_parent, new_parent = self._directory(old_dir), self._directory(new_dir)
        self._writable(old_parent, "rename")
        self._writable(new_parent, "rename")
        with (
            beneath.parent_beneath(old_parent.fd, old_path) as (old_fd, old_name),
            beneath.parent_beneath(new_parent.fd, new_path) as (new_fd, new_name),
        ):
            os.rename(old_name, new_name, src_dir_fd=old_fd, dst_dir_fd=new_fd)

    @_translated
    def link_at(
        self, old_dir: int, old_path: str, new_dir: int, new_path: str, follow: bool
    ) -> None:
        old_parent, new_parent = self._directory(old_dir), self._directory(new_dir)
        self._writable(new_parent, "link")
        if follow:
            # linkat would follow a symlink wherever it points, even out of the
            # preopen, and hard-link that file in: refuse, as wasmtime does.
            raise HostError(Errno.INVAL)
        with (
            beneath.parent_beneath(old_parent.fd, old_path) as (old_fd, old_name),
            beneath.parent_beneath(new_parent.fd, new_path) as (new_fd, new_name),
        ):
            os.link(old_name, new_name, src_dir_fd=old_fd, dst_dir_fd=new_fd, follow_symlinks=False)

    @_translated
    def symlink_at(self, target: str, dir_handle: int, path: str) -> None:
        parent = self._directory(dir_handle)
        self._writable(parent, "symlink")
        if target.startswith("/"):
            # Harmless to the keep (never followed out), but a trap for host
            # tools that would follow it: refused.
            log.info("refused: absolute symlink target %r", target)
            raise HostError(Errno.PERM)
        with beneath.parent_beneath(parent.fd, path) as (fd, name):
            os.symlink(target, name, dir_fd=fd)

    @_translated
    def readlink_at(self, dir_handle: int, path: str) -> bytes:
        parent = self._directory(dir_handle)
        with beneath.parent_beneath(parent.fd, path) as (fd, name):
            return os.readlink(os.fsencode(name), dir_fd=fd)

    # -- sockets --------------------------------------------------------------------
    def _socket(self, handle: int, kind: HandleKind | None = None) -> socket.socket:
        resource = self._get(handle)
        if resource.sock is None or (kind is not None and resource.kind is not kind):
            raise HostError(Errno.NOTSOCK if resource.sock is None else Errno.INVAL)
        return resource.sock

    @_translated
    def accept(self, handle: int, block: bool) -> int:
        listener = self._socket(handle, HandleKind.LISTEN)
        if block:
            self._wait(listener.fileno(), select.POLLIN)
        connection, _ = listener.accept()
        connection.setblocking(False)
        return self._add_socket(connection, None)

    @_translated
    def recv(self, handle: int, size: int, peek: bool, waitall: bool, block: bool) -> bytes:
        sock = self._socket(handle)
        size = min(size, self.limits.max_io_chunk)
        flags = socket.MSG_PEEK if peek else 0
        if block:
            self._wait(sock.fileno(), select.POLLIN)
        data = sock.recv(size, flags)
        if not (waitall and block and not peek):
            return data
        parts = [data]
        received = len(data)
        while data and received < size:
            self._wait(sock.fileno(), select.POLLIN)
            data = sock.recv(size - received)
            parts.append(data)
            received += len(data)
        return b"".join(parts)

    @_translated
    def send(self, handle: int, data: bytes | memoryview, block: bool) -> int:
        sock = self._socket(handle)
        if block:
            self._wait(sock.fileno(), select.POLLOUT)
        return sock.send(data[: self.limits.max_io_chunk])

    @_translated
    def shutdown(self, handle: int, how: int) -> None:
        sock = self._socket(handle)
        modes = {1: socket.SHUT_RD, 2: socket.SHUT_WR, 3: socket.SHUT_RDWR}
        if how not in modes:
            raise HostError(Errno.INVAL)
        sock.shutdown(modes[how])

    def _wait(self, fd: int, events: int) -> None:
        """Block until `fd` is ready (or the keep's channel stirs: KeepHungUp)."""
        if self.keep_channel_fd is not None:
            self._wait_unless_keep_gone(fd, events, None)
            return
        poller = select.poll()
        poller.register(fd, events)
        poller.poll()

    # -- the keep telling the host -------------------------------------------------
    def log(self, level: int, text: str) -> None:
        # The keep is not trusted with the operator's terminal: no control characters.
        clean = "".join(char if char.isprintable() else "?" for char in text)
        log.log({0: logging.DEBUG, 1: logging.INFO}.get(level, logging.WARNING), "keep: %s", clean)

    def publish_certificate(self, pem: bytes) -> None:
        if b"-----BEGIN CERTIFICATE-----" not in pem:
            raise HostError(Errno.INVAL)
        self.certificate = pem
        if self.certificate_path is not None:
            try:
                self.certificate_path.write_bytes(pem)
            except OSError as error:
                log.warning(
                    "cannot write the keep's certificate to %s: %s", self.certificate_path, error
                )
                raise HostError(errno_of(error)) from None
        log.info("the keep's certificate: %d bytes", len(pem))

    # -- waiting ----------------------------------------------------------------
    @_translated
    def poll(
        self,
        interests: Sequence[tuple[int, int]],
        timeout_ns: int | None,
        prefetch: int = 0,
        sends: Sequence[tuple[int, bytes | memoryview]] = (),
    ) -> PollReply:
        sent = [self._send_now(handle, data) for handle, data in sends]
        poller = select.poll()
        fds: list[int] = []
        for handle, interest in interests:
            resource = self._get(handle)
            events = (select.POLLIN if interest & POLL_READ else 0) | (
                select.POLLOUT if interest & POLL_WRITE else 0
            )
            poller.register(resource.fd, events)
            fds.append(resource.fd)
        # A socket that took only part of its data: wake when it takes more.
        partial = {
            self._resources[handle].fd: index
            for index, (handle, data) in enumerate(sends)
            if sent[index].errno == Errno.SUCCESS and sent[index].written < len(data)
        }
        for fd in partial:
            poller.register(fd, select.POLLOUT)
        if self.keep_channel_fd is not None:
            poller.register(self.keep_channel_fd, select.POLLIN)
        timeout_ms = None if timeout_ns is None else -(-timeout_ns // 1_000_000)
        if any(result.writable for result in sent):
            timeout_ms = 0
        ready: dict[int, int] = dict(poller.poll(timeout_ms))
        if self.keep_channel_fd is not None and self.keep_channel_fd in ready:
            raise KeepHungUp
        for fd, index in partial.items():
            if ready.get(fd, 0) & (select.POLLOUT | select.POLLERR | select.POLLHUP):
                sent[index] = SendResult(sent[index].written, Errno.SUCCESS, writable=True)
        results: list[PollResult | None] = []
        budget = min(prefetch, self.limits.max_io_chunk)
        for (handle, interest), fd in zip(interests, fds, strict=True):
            revents = ready.get(fd, 0)
            wanted = select.POLLIN if interest & POLL_READ else select.POLLOUT
            if not revents & (wanted | select.POLLHUP | select.POLLERR | select.POLLNVAL):
                results.append(None)
                continue
            hangup = bool(revents & select.POLLHUP)
            resource = self._resources[handle]
            if (
                interest & POLL_READ
                and budget
                and resource.sock is not None
                and (resource.kind is not HandleKind.LISTEN)
            ):
                result = self._prefetch(resource.sock, budget, hangup)
                budget -= len(result.data)
            else:
                nbytes = self._available(resource) if interest & POLL_READ else 0
                result = PollResult(Errno.SUCCESS, nbytes, hangup)
            results.append(result)
        return PollReply(results, sent)

    def _send_now(self, handle: int, data: bytes | memoryview) -> SendResult:
        """Send what the socket takes without waiting (poll's piggybacked sends)."""
        try:
            sock = self._socket(handle)
            return SendResult(sock.send(data[: self.limits.max_io_chunk]))
        except BlockingIOError:
            return SendResult(0)
        except HostError as error:
            return SendResult(0, error.errno)
        except OSError as error:
            return SendResult(0, errno_of(error))

    @staticmethod
    def _prefetch(sock: socket.socket, budget: int, hangup: bool) -> PollResult:
        """Receive on the keep's behalf what a readable socket holds (up to budget)."""
        try:
            data = sock.recv(budget)
        except BlockingIOError:
            return PollResult(Errno.SUCCESS, 0, hangup)
        except OSError as error:
            return PollResult(errno_of(error), 0, hangup)
        return PollResult(Errno.SUCCESS, len(data), hangup, data, eof=not data)

    def _available(self, resource: _Resource) -> int:
        """Bytes a read could return now, as far as the host can tell (0 if unknown)."""
        try:
            if resource.filetype == FileType.REGULAR_FILE:
                return max(0, os.fstat(resource.fd).st_size - os.lseek(resource.fd, 0, os.SEEK_CUR))
            buffer = fcntl.ioctl(resource.fd, termios.FIONREAD, b"\0\0\0\0")
            return int.from_bytes(buffer, "little")
        except OSError:
            return 0
