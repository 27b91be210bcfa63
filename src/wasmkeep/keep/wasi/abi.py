"""WASI preview1's numbers and memory layouts (witx `typenames`, wasm32).

Only constants and precompiled `struct` layouts live here, so the functions in
`preview1.py` read like the spec: `FILESTAT.pack_into(...)`, `Rights.FD_READ`.
"""

from __future__ import annotations

import struct

from wasmkeep.sallyport.types import Errno, FileType

__all__ = [
    "CIOVEC",
    "DIRENT",
    "EVENT",
    "FDSTAT",
    "FILESTAT",
    "PRESTAT",
    "SUBSCRIPTION",
    "Clock",
    "Errno",
    "EventType",
    "FileType",
    "Fstflags",
    "Lookup",
    "Rights",
    "Whence",
]


class Rights:
    """Bits of WASI `rights`: what a fd may be used for (capability attenuation)."""

    FD_DATASYNC = 1 << 0
    FD_READ = 1 << 1
    FD_SEEK = 1 << 2
    FD_FDSTAT_SET_FLAGS = 1 << 3
    FD_SYNC = 1 << 4
    FD_TELL = 1 << 5
    FD_WRITE = 1 << 6
    FD_ADVISE = 1 << 7
    FD_ALLOCATE = 1 << 8
    PATH_CREATE_DIRECTORY = 1 << 9
    PATH_CREATE_FILE = 1 << 10
    PATH_LINK_SOURCE = 1 << 11
    PATH_LINK_TARGET = 1 << 12
    PATH_OPEN = 1 << 13
    FD_READDIR = 1 << 14
    PATH_READLINK = 1 << 15
    PATH_RENAME_SOURCE = 1 << 16
    PATH_RENAME_TARGET = 1 << 17
    PATH_FILESTAT_GET = 1 << 18
    PATH_FILESTAT_SET_SIZE = 1 << 19
    PATH_FILESTAT_SET_TIMES = 1 << 20
    FD_FILESTAT_GET = 1 << 21
    FD_FILESTAT_SET_SIZE = 1 << 22
    FD_FILESTAT_SET_TIMES = 1 << 23
    PATH_SYMLINK = 1 << 24
    PATH_REMOVE_DIRECTORY = 1 << 25
    PATH_UNLINK_FILE = 1 << 26
    POLL_FD_READWRITE = 1 << 27
    SOCK_SHUTDOWN = 1 << 28
    SOCK_ACCEPT = 1 << 29
    ALL = (1 << 30) - 1

    #: Rights that only make sense on a directory.
    DIRECTORY = (
        PATH_CREATE_DIRECTORY
        | PATH_CREATE_FILE
        | PATH_LINK_SOURCE
        | PATH_LINK_TARGET
        | PATH_OPEN
        | FD_READDIR
        | PATH_READLINK
        | PATH_RENAME_SOURCE
        | PATH_RENAME_TARGET
        | PATH_FILESTAT_GET
        | PATH_FILESTAT_SET_SIZE
        | PATH_FILESTAT_SET_TIMES
        | FD_FILESTAT_GET
        | FD_FILESTAT_SET_TIMES
        | PATH_SYMLINK
        | PATH_REMOVE_DIRECTORY
        | PATH_UNLINK_FILE
        | FD_FDSTAT_SET_FLAGS
        | FD_SYNC
        | FD_DATASYNC
        | FD_ADVISE
    )
    #: Rights that make sense on a regular file.
    REGULAR_FILE = (
        FD_DATASYNC
        | FD_READ
        | FD_SEEK
        | FD_FDSTAT_SET_FLAGS
        | FD_SYNC
        | FD_TELL
        | FD_WRITE
        | FD_ADVISE
        | FD_ALLOCATE
        | FD_FILESTAT_GET
        | FD_FILESTAT_SET_SIZE
        | FD_FILESTAT_SET_TIMES
        | POLL_FD_READWRITE
    )
    #: Rights of a byte stream that cannot seek (pipes, terminals, sockets).
    STREAM = FD_READ | FD_WRITE | FD_FDSTAT_SET_FLAGS | FD_FILESTAT_GET | POLL_FD_READWRITE
    #: Rights that change the file system; a read-only preopen never grants them.
    MUTATING = (
        FD_DATASYNC
        | FD_WRITE
        | FD_ALLOCATE
        | PATH_CREATE_DIRECTORY
        | PATH_CREATE_FILE
        | PATH_LINK_SOURCE
        | PATH_LINK_TARGET
        | PATH_RENAME_SOURCE
        | PATH_RENAME_TARGET
        | PATH_FILESTAT_SET_SIZE
        | PATH_FILESTAT_SET_TIMES
        | FD_FILESTAT_SET_SIZE
        | FD_FILESTAT_SET_TIMES
        | PATH_SYMLINK
        | PATH_REMOVE_DIRECTORY
        | PATH_UNLINK_FILE
    )
    #: Rights that need the host file opened for reading / for writing. Only
    #: FD_WRITE asks for a writable file: wasi-libc grants every other right
    #: to read-only opens too, and directories cannot be opened for writing.
    NEEDS_READ = FD_READ | FD_READDIR
    NEEDS_WRITE = FD_WRITE


class Whence:
    SET = 0
    CUR = 1
    END = 2


class Clock:
    REALTIME = 0
    MONOTONIC = 1
    PROCESS_CPUTIME = 2
    THREAD_CPUTIME = 3


class Fstflags:
    ATIM = 1 << 0
    ATIM_NOW = 1 << 1
    MTIM = 1 << 2
    MTIM_NOW = 1 << 3
    ALL = ATIM | ATIM_NOW | MTIM | MTIM_NOW


class Lookup:
    SYMLINK_FOLLOW = 1 << 0


class EventType:
    CLOCK = 0
    FD_READ = 1
    FD_WRITE = 2


#: `subclockflags`: the timeout is an absolute time on its clock.
SUBSCRIPTION_CLOCK_ABSTIME = 1
#: `eventrwflags`: the peer hung up.
EVENT_FD_READWRITE_HANGUP = 1
#: `preopentype`: a directory.
PREOPENTYPE_DIR = 0
#: `riflags` and `siflags` bits; `sdflags`.
RIFLAGS_RECV_PEEK = 1
RIFLAGS_RECV_WAITALL = 2
SDFLAGS_RD = 1
SDFLAGS_WR = 2

# Memory layouts (little-endian, wasm32 pointers and sizes are u32).
#: `iovec` / `ciovec`: buf, buf_len.
CIOVEC = struct.Struct("<II")
#: `fdstat`: fs_filetype u8, fs_flags u16, fs_rights_base u64, fs_rights_inheriting u64.
FDSTAT = struct.Struct("<BxHxxxxQQ")
#: `filestat`: dev, ino, filetype u8, nlink, size, atim, mtim, ctim.
FILESTAT = struct.Struct("<QQBxxxxxxxQQQQQ")
#: `prestat` of a directory: tag u8, pr_name_len u32.
PRESTAT = struct.Struct("<BxxxI")
#: `dirent`: d_next, d_ino, d_namlen u32, d_type u8.
DIRENT = struct.Struct("<QQIBxxx")
#: `subscription`: userdata, tag u8, then the union at offset 16 (read per tag).
SUBSCRIPTION = struct.Struct("<QB7x32s")
#: `subscription_clock`: id u32, timeout u64, precision u64, flags u16.
SUBSCRIPTION_CLOCK = struct.Struct("<I4xQQH6x")
#: `subscription_fd_readwrite`: file_descriptor u32.
SUBSCRIPTION_FD = struct.Struct("<I28x")
#: `event`: userdata, error u16, type u8, fd_readwrite nbytes u64, flags u16.
EVENT = struct.Struct("<QHB5xQH6x")

assert CIOVEC.size == 8
assert FDSTAT.size == 24
assert FILESTAT.size == 64
assert PRESTAT.size == 8
assert DIRENT.size == 24
assert SUBSCRIPTION.size == 48
assert SUBSCRIPTION_CLOCK.size == 32
assert EVENT.size == 32
