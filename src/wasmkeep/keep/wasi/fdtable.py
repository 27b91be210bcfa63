"""The guest's file descriptors: what each stands for on the host, and its rights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wasmkeep.keep.wasi.abi import Rights
from wasmkeep.sallyport.types import Errno, FileType, HandleKind, HostError

if TYPE_CHECKING:
    import ssl

    from wasmkeep.keep.wasi.streams import Stream

__all__ = ["FdEntry", "FdTable"]


@dataclass(slots=True)
class FdEntry:
    """One open guest fd.

    `rights_base` limits what this fd may do; `rights_inheriting` limits the
    fds opened through it (WASI capability attenuation: rights only shrink).
    """

    handle: int
    kind: HandleKind | None  # None: a file or directory the guest opened itself
    filetype: FileType
    rights_base: int
    rights_inheriting: int
    fdflags: int = 0
    #: The guest path of a preopened directory (WASI prestat), else None.
    preopen: str | None = None
    #: Set for every fd under a read-only preopen: no right that changes files.
    read_only: bool = False
    #: A connected socket: how its bytes move (plain, or TLS inside the keep).
    stream: Stream | None = None
    #: A listening socket with TLS: the context its connections are wrapped in.
    tls_server: ssl.SSLContext | None = None
    is_directory: bool = field(init=False)

    def __post_init__(self) -> None:
        self.is_directory = self.filetype == FileType.DIRECTORY

    def require(self, rights: int) -> None:
        """Raise NOTCAPABLE unless this fd holds all of `rights`."""
        if self.rights_base & rights != rights:
            raise HostError(Errno.NOTCAPABLE)


class FdTable:
    """Guest fd numbers to entries; new fds take the lowest free number."""

    __slots__ = ("_entries", "_limit")

    def __init__(self, limit: int) -> None:
        self._entries: dict[int, FdEntry] = {}
        self._limit = limit

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(sorted(self._entries.items()))

    def get(self, fd: int) -> FdEntry:
        """The entry of `fd`; BADF if it is not open."""
        entry = self._entries.get(fd)
        if entry is None:
            raise HostError(Errno.BADF)
        return entry

    def lookup(self, fd: int, rights: int) -> FdEntry:
        """The entry of `fd` if it holds `rights`: BADF if not open, NOTCAPABLE if not allowed."""
        entry = self._entries.get(fd)
        if entry is None:
            raise HostError(Errno.BADF)
        if entry.rights_base & rights != rights:
            raise HostError(Errno.NOTCAPABLE)
        return entry

    def insert(self, entry: FdEntry) -> int:
        """Give `entry` the lowest free fd number; NFILE when the table is full."""
        if len(self._entries) >= self._limit:
            raise HostError(Errno.NFILE)
        fd = 0
        while fd in self._entries:
            fd += 1
        self._entries[fd] = entry
        return fd

    def place(self, fd: int, entry: FdEntry) -> None:
        """Put `entry` at `fd` (boot time: fd numbers come from the manifest)."""
        self._entries[fd] = entry

    def remove(self, fd: int) -> FdEntry:
        entry = self._entries.pop(fd, None)
        if entry is None:
            raise HostError(Errno.BADF)
        return entry

    def renumber(self, fd: int, to: int) -> FdEntry | None:
        """Move `fd` to `to`, both open; returns the entry that was at `to` (to close)."""
        if fd not in self._entries or to not in self._entries:
            raise HostError(Errno.BADF)
        if fd == to:
            return None
        replaced = self._entries[to]
        self._entries[to] = self._entries.pop(fd)
        return replaced

    def handles(self) -> list[int]:
        return [entry.handle for entry in self._entries.values()]


def rights_for(filetype: FileType, *, read_only: bool) -> int:
    """The most an fd of this type may hold."""
    if filetype == FileType.DIRECTORY:
        rights = Rights.DIRECTORY
    elif filetype in (FileType.REGULAR_FILE, FileType.BLOCK_DEVICE):
        rights = Rights.REGULAR_FILE
    elif filetype == FileType.SOCKET_STREAM:
        rights = Rights.STREAM | Rights.SOCK_SHUTDOWN
    else:
        rights = Rights.STREAM
    if read_only:
        rights &= ~Rights.MUTATING
    return rights
