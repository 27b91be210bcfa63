"""The host operations a keep may ask for: the whole of sallyport's request set.

:class:`HostCalls` is the seam of the trust boundary. The keep's WASI layer
asks it for everything that leaves the keep; the nil backend answers with the
host executor in the same process, the process and VM keeps with a client that
frames each call as one sallyport request.

Every operation names host resources by *handle*, a number the host chose, and
paths relative to a directory handle. Failures raise
:class:`~wasmkeep.sallyport.types.HostError` with a WASI errno. A host
implementation must refuse what the workload's config does not grant; a keep
must not trust any value returned here further than the protocol promises (see
the validation in the keep's client).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from wasmkeep.sallyport.types import DirEntry, FileStat, FileType, PollReply

__all__ = ["FDFLAGS", "OFLAGS", "POLL_READ", "POLL_WRITE", "HostCalls"]


class OFLAGS:
    """Bits of WASI `oflags`, as `open_at` takes them."""

    CREAT = 1 << 0
    DIRECTORY = 1 << 1
    EXCL = 1 << 2
    TRUNC = 1 << 3
    ALL = CREAT | DIRECTORY | EXCL | TRUNC


class FDFLAGS:
    """Bits of WASI `fdflags`, as `open_at` and `set_fdflags` take them."""

    APPEND = 1 << 0
    DSYNC = 1 << 1
    NONBLOCK = 1 << 2
    RSYNC = 1 << 3
    SYNC = 1 << 4
    ALL = APPEND | DSYNC | NONBLOCK | RSYNC | SYNC


#: Poll interest: readable.
POLL_READ = 1
#: Poll interest: writable.
POLL_WRITE = 2


class HostCalls(Protocol):
    """What a keep can ask its host to do. Each method is one request."""

    # -- byte streams and files --------------------------------------------
    def read(self, handle: int, size: int) -> bytes:
        """Read at most `size` bytes at the current position (b"" at end)."""
        ...

    def pread(self, handle: int, size: int, offset: int) -> bytes:
        """Read at most `size` bytes at `offset` without moving the position."""
        ...

    def write(self, handle: int, data: bytes | memoryview) -> int:
        """Write at the current position (or the end if appending); returns bytes written.

        `data` may be a view of guest memory, valid only during the call.
        """
        ...

    def pwrite(self, handle: int, data: bytes | memoryview, offset: int) -> int:
        """Write at `offset` without moving the position; returns bytes written."""
        ...

    def seek(self, handle: int, offset: int, whence: int) -> int:
        """Move the position (whence: 0 set, 1 current, 2 end); returns the new one."""
        ...

    def sync(self, handle: int, data_only: bool) -> None:
        """Flush the file to storage."""
        ...

    def fstat(self, handle: int) -> FileStat:
        """Attributes of an open handle."""
        ...

    def set_size(self, handle: int, size: int) -> None:
        """Truncate or extend a file."""
        ...

    def allocate(self, handle: int, offset: int, length: int) -> None:
        """Make sure the range is backed by storage, growing the file if needed."""
        ...

    def set_times(self, handle: int, atime: int | None, mtime: int | None) -> None:
        """Set access and modification times: ns, None to keep, TIME_NOW for now."""
        ...

    def set_fdflags(self, handle: int, fdflags: int) -> None:
        """Change APPEND and NONBLOCK on an open handle."""
        ...

    def readdir(self, handle: int, cookie: int, max_entries: int) -> list[DirEntry]:
        """Entries of a directory from `cookie` on (0 is the start, "." and ".." first)."""
        ...

    def close(self, handle: int) -> None:
        """Release a handle."""
        ...

    # -- paths beneath a directory handle ---------------------------------
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
        """Open `path` beneath the directory; returns the new handle and its type."""
        ...

    def stat_at(self, dir_handle: int, path: str, follow: bool) -> FileStat:
        """Attributes of `path` beneath the directory."""
        ...

    def set_times_at(
        self, dir_handle: int, path: str, follow: bool, atime: int | None, mtime: int | None
    ) -> None:
        """Set the times of `path`, as `set_times` does."""
        ...

    def mkdir_at(self, dir_handle: int, path: str) -> None:
        """Create a directory."""
        ...

    def rmdir_at(self, dir_handle: int, path: str) -> None:
        """Remove an empty directory."""
        ...

    def unlink_at(self, dir_handle: int, path: str) -> None:
        """Remove a file or symbolic link."""
        ...

    def rename_at(self, old_dir: int, old_path: str, new_dir: int, new_path: str) -> None:
        """Rename, replacing the target as POSIX rename does."""
        ...

    def link_at(
        self, old_dir: int, old_path: str, new_dir: int, new_path: str, follow: bool
    ) -> None:
        """Create a hard link."""
        ...

    def symlink_at(self, target: str, dir_handle: int, path: str) -> None:
        """Create a symbolic link holding `target`."""
        ...

    def readlink_at(self, dir_handle: int, path: str) -> bytes:
        """The contents of a symbolic link."""
        ...

    # -- sockets (named in the config: listen and connect files) -------------
    def accept(self, handle: int, block: bool) -> int:
        """Accept a connection on a listening socket; returns its handle."""
        ...

    def recv(self, handle: int, size: int, peek: bool, waitall: bool, block: bool) -> bytes:
        """Receive at most `size` bytes (b"" at the end of the stream)."""
        ...

    def send(self, handle: int, data: bytes | memoryview, block: bool) -> int:
        """Send; returns bytes sent."""
        ...

    def shutdown(self, handle: int, how: int) -> None:
        """Shut a socket down for reading (1), writing (2) or both (3)."""
        ...

    # -- the keep telling the host ---------------------------------------------
    def log(self, level: int, text: str) -> None:
        """A line for the operator (level: 0 debug, 1 info, 2 warning)."""
        ...

    def publish_certificate(self, pem: bytes) -> None:
        """The keep's certificate chain (PEM), for clients to trust."""
        ...

    # -- waiting -----------------------------------------------------------
    def poll(
        self,
        interests: Sequence[tuple[int, int]],
        timeout_ns: int | None,
        prefetch: int = 0,
        sends: Sequence[tuple[int, bytes | memoryview]] = (),
    ) -> PollReply:
        """Send `sends` (each as far as its socket takes it now), then wait until a
        (handle, POLL_READ | POLL_WRITE) interest is ready or the timeout (None:
        forever) passes, also waking when a partly sent socket can take more.
        Readable sockets bring up to `prefetch` bytes in all with the reply.

        Batching the sends a keep holds and the bytes it will read into the
        poll it makes anyway is what keeps sallyport round trips to about one
        per exchange for a poll-driven server."""
        ...
