"""Path resolution that cannot leave a directory, done by the kernel.

Every guest path is resolved with Linux `openat2(2)` and
`RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`: the kernel refuses any resolution
that would step outside the starting directory, through `..`, an absolute
path, or a symbolic link (absolute or relative) that points out, and it
detects loops. Operations that must not follow the last component (unlink,
rename, readlink, lstat, ...) resolve the parent this way and then act on the
final name with the `*at` call, which never follows it.

Escapes come back as `EXDEV` from the kernel; they are reported as
:class:`Escape` so the caller can tell them from a real cross-device rename.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "Escape",
    "is_plain_name",
    "open_beneath",
    "parent_beneath",
    "set_times",
    "split_last",
]

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_OPENAT2 = 437  # x86_64 and aarch64 share the number (Linux 5.6+)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


class Escape(OSError):
    """A path tried to resolve outside its directory."""


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def is_plain_name(path: str) -> bool:
    """One component that is not "..": `openat` of it cannot leave its directory
    unless it follows a symbolic link."""
    return bool(path) and "/" not in path and path != ".."


def open_beneath(dir_fd: int, path: str, flags: int, mode: int = 0o666) -> int:
    """`openat2(dir_fd, path, flags)` confined beneath `dir_fd`; returns the new fd."""
    if is_plain_name(path) and not flags & os.O_PATH:
        # Fast path for the common case, without the ctypes call: O_NOFOLLOW
        # makes a plain name safe. If the caller wanted a symlink followed (or
        # anything failed), openat2 below gives the authoritative answer.
        try:
            return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        except OSError:
            if flags & os.O_NOFOLLOW:
                raise
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, _RESOLVE)
    encoded = os.fsencode(path)
    fd: int = _libc.syscall(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_long(dir_fd),
        ctypes.c_char_p(encoded),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        code = ctypes.get_errno()
        if code == errno.EXDEV:
            raise Escape(code, "path escapes its directory", path)
        raise OSError(code, os.strerror(code), path)
    return fd


def split_last(path: str) -> tuple[str, str]:
    """Split a relative path into (parent, last component); trailing slashes stay on the last.

    The last component keeps one trailing slash when the path had any, so the
    `*at` call sees it and applies POSIX's rules ("file/" is ENOTDIR).
    """
    trailing = path.endswith("/")
    stripped = path.rstrip("/")
    if not stripped:
        # "/" or "//" would be absolute; the WASI layer refuses those first.
        return "", path
    parent, _, last = stripped.rpartition("/")
    return parent, last + ("/" if trailing else "")


@contextmanager
def parent_beneath(dir_fd: int, path: str) -> Iterator[tuple[int, str]]:
    """Yield (fd of the parent directory, final name) for a no-follow operation.

    A final `..` would name a directory above the parent; the whole path is
    then resolved (beneath) and the operation applies to `.` inside it.
    """
    if path.startswith("/"):
        raise Escape(errno.EXDEV, "absolute path", path)
    parent, last = split_last(path)
    if last.rstrip("/") == "..":
        parent, last = path, "."
    if not parent:
        yield dir_fd, last
        return
    fd = open_beneath(dir_fd, parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield fd, last
    finally:
        os.close(fd)


def _timespec(value: int | None, now: int) -> _Timespec:
    if value is None:
        return _Timespec(0, UTIME_OMIT)
    if value == now:
        return _Timespec(0, UTIME_NOW)
    return _Timespec(value // 1_000_000_000, value % 1_000_000_000)


def set_times(
    dir_fd: int, name: str | None, atime: int | None, mtime: int | None, *, now: int, follow: bool
) -> None:
    """utimensat(2) with per-field omit/now; `name` None means `dir_fd` itself."""
    times = (_Timespec * 2)(_timespec(atime, now), _timespec(mtime, now))
    if name is None:
        path, flags = b"", AT_EMPTY_PATH
    else:
        path, flags = os.fsencode(name), 0 if follow else AT_SYMLINK_NOFOLLOW
    result = _libc.utimensat(ctypes.c_int(dir_fd), ctypes.c_char_p(path), times, flags)
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
