"""A deterministic writer of cpio "newc" archives, the initramfs format.

The kernel unpacks an initramfs from "newc" (SVR4 without CRC) archives
(Documentation/driver-api/early-userspace/buffer-format.rst): for each member a
110-byte ASCII header (the magic ``070701`` and 13 eight-digit hex fields), the
NUL-terminated name and the data, each padded to a multiple of four bytes; the
archive ends with a member named ``TRAILER!!!``.

What the archive holds decides its bytes, and nothing else does: members are
written sorted by path, with mtime 0, uid and gid 0, inode numbers given by
that order and nlink computed from the tree. A file has nlink 1: the kernel
takes a member with nlink >= 2 for a possible hard link and matches it by
inode number.
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = [
    "MAGIC",
    "TRAILER",
    "CpioEntry",
    "CpioError",
    "Member",
    "Sink",
    "parent_of",
    "write_newc",
]

#: The magic of a "newc" header (no CRC).
MAGIC = b"070701"
#: The name of the member that ends an archive.
TRAILER = "TRAILER!!!"

_CHUNK = 1 << 20
_MAX_SIZE = 0xFFFFFFFF  # the size field has eight hex digits


class CpioError(ValueError):
    """The entries do not make a valid archive: a bad path, a duplicate, a
    missing parent, or a file that changed while it was read."""


class Sink(Protocol):
    """Where an archive is written (a file, a gzip stream)."""

    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True, slots=True)
class CpioEntry:
    """One member, at an absolute path.

    `mode` is the whole st_mode (type and permission bits). A regular file's
    contents are `data` or, read when the archive is written, the host file
    `source`; a symbolic link's target is `data`; a device has `rdev`.
    """

    path: str
    mode: int
    data: bytes | None = None
    source: Path | None = None
    rdev: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        parts = self.path.split("/")
        if (
            len(parts) < 2
            or parts[0] != ""
            or any(part in ("", ".", "..") for part in parts[1:])
            or "\0" in self.path
        ):
            raise CpioError(f"{self.path!r}: not a normal absolute path")
        kind = stat.S_IFMT(self.mode)
        if kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK):
            raise CpioError(f"{self.path}: unsupported file type {kind:o}")
        if self.mode & ~0o177777:
            raise CpioError(f"{self.path}: mode {self.mode:o} has unknown bits")
        if kind == stat.S_IFREG:
            if (self.data is None) == (self.source is None):
                raise CpioError(f"{self.path}: a file needs exactly one of data and source")
        elif kind == stat.S_IFLNK:
            if not self.data or self.source is not None:
                raise CpioError(f"{self.path}: a symbolic link needs its target as data")
        elif self.data is not None or self.source is not None:
            raise CpioError(f"{self.path}: only files and symbolic links have contents")

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


@dataclass(frozen=True, slots=True)
class Member:
    """What was written for one entry: its contents' size and SHA-256 (of the
    file's bytes, of a link's target, of nothing for a directory or device)."""

    entry: CpioEntry
    size: int
    sha256: str


def parent_of(path: str) -> str:
    """The directory `path` (absolute, normal) is in."""
    return path.rsplit("/", 1)[0] or "/"


def write_newc(
    entries: Iterable[CpioEntry],
    out: Sink,
    *,
    on_member: Callable[[Member], None] | None = None,
) -> int:
    """Write `entries` as one archive to `out`; return the bytes written.

    Every entry's parent directory must be an entry too (the root excepted),
    so the archive unpacks onto an empty root with nothing implied. Files given
    by `source` are read now; one whose size changed since it was first seen is
    an error, not a silently different archive. `on_member` hears of each
    member as it is written, in archive order.
    """
    ordered = sorted(entries, key=lambda entry: entry.path.encode())
    by_path: dict[str, CpioEntry] = {}
    subdirectories: dict[str, int] = {}
    for entry in ordered:
        if entry.path in by_path:
            raise CpioError(f"{entry.path}: twice in the archive")
        by_path[entry.path] = entry
        parent = parent_of(entry.path)
        if parent != "/":
            above = by_path.get(parent)  # sorted: a parent comes before its children
            if above is None or not above.is_dir:
                raise CpioError(f"{entry.path}: its parent {parent} is not a directory entry")
        if entry.is_dir:
            subdirectories[parent] = subdirectories.get(parent, 0) + 1
    written = 0
    for inode, entry in enumerate(ordered, start=1):
        nlink = 2 + subdirectories.get(entry.path, 0) if entry.is_dir else 1
        member, length = _write_member(out, entry, inode, nlink)
        written += length
        if on_member is not None:
            on_member(member)
    trailer = _header(TRAILER, inode=0, mode=0, nlink=1, size=0, rdev=(0, 0))
    out.write(trailer)
    return written + len(trailer)


def _write_member(out: Sink, entry: CpioEntry, inode: int, nlink: int) -> tuple[Member, int]:
    digest = hashlib.sha256()
    size = entry.source.stat().st_size if entry.source is not None else len(entry.data or b"")
    if size > _MAX_SIZE:
        raise CpioError(f"{entry.path}: larger than a newc member can be (4 GiB)")
    header = _header(
        entry.path[1:], inode=inode, mode=entry.mode, nlink=nlink, size=size, rdev=entry.rdev
    )
    out.write(header)
    if entry.source is None:
        data = entry.data or b""
        digest.update(data)
        out.write(data)
    else:
        copied = 0
        with entry.source.open("rb") as source:
            while chunk := source.read(_CHUNK):
                copied += len(chunk)
                if copied > size:
                    break
                digest.update(chunk)
                out.write(chunk)
        if copied != size:
            raise CpioError(f"{entry.source}: changed while it was archived")
    padding = -size % 4
    out.write(b"\0" * padding)
    return Member(entry, size, digest.hexdigest()), len(header) + size + padding


def _header(
    name: str, *, inode: int, mode: int, nlink: int, size: int, rdev: tuple[int, int]
) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (
        inode,
        mode,
        0,  # uid
        0,  # gid
        nlink,
        0,  # mtime
        size,
        0,  # devmajor
        0,  # devminor
        rdev[0],
        rdev[1],
        len(encoded),
        0,  # check: always 0 in "newc"
    )
    header = MAGIC + b"".join(b"%08X" % field for field in fields) + encoded
    return header + b"\0" * (-len(header) % 4)
