"""WASI preview1 (`wasi_snapshot_preview1`), the project's own implementation.

Every one of the 46 functions is a method of :class:`Preview1` (by area in
`files.py`, `polling.py`, `sockets.py` and here) taking the raw wasm arguments
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

import os
import time

from wasmkeep.keep.wasi.abi import Errno
from wasmkeep.keep.wasi.base import CLOCKS, SUCCESS, ProcExit, write_strings
from wasmkeep.keep.wasi.files import FileFunctions
from wasmkeep.keep.wasi.polling import PollFunctions
from wasmkeep.keep.wasi.sockets import SocketFunctions

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


class Preview1(FileFunctions, PollFunctions, SocketFunctions):
    """A guest's WASI world (base.py) and all 46 functions it imports."""

    def args_sizes_get(self, argc_ptr: int, size_ptr: int) -> int:
        self.mem.write_u32(argc_ptr, len(self._args))
        self.mem.write_u32(size_ptr, sum(len(arg) for arg in self._args))
        return SUCCESS

    def args_get(self, argv_ptr: int, buf_ptr: int) -> int:
        write_strings(self.mem, self._args, argv_ptr, buf_ptr)
        return SUCCESS

    def environ_sizes_get(self, count_ptr: int, size_ptr: int) -> int:
        self.mem.write_u32(count_ptr, len(self._env))
        self.mem.write_u32(size_ptr, sum(len(item) for item in self._env))
        return SUCCESS

    def environ_get(self, environ_ptr: int, buf_ptr: int) -> int:
        write_strings(self.mem, self._env, environ_ptr, buf_ptr)
        return SUCCESS

    def clock_res_get(self, clock_id: int, res_ptr: int) -> int:
        clock = CLOCKS.get(clock_id)
        if clock is None:
            return Errno.INVAL
        resolution = max(1, round(time.clock_getres(clock) * 1e9))
        self.mem.write_u64(res_ptr, resolution)
        return SUCCESS

    def clock_time_get(self, clock_id: int, precision: int, time_ptr: int) -> int:
        clock = CLOCKS.get(clock_id)
        if clock is None:
            return Errno.INVAL
        self.mem.write_u64(time_ptr, time.clock_gettime_ns(clock))
        return SUCCESS

    def random_get(self, buf: int, length: int) -> int:
        if length > self.limits.max_random_bytes:
            return Errno.INVAL
        self.mem.check(buf, length)
        self.mem.write(buf, self._random(length))
        return SUCCESS

    def sched_yield(self) -> int:
        os.sched_yield()
        return SUCCESS

    def proc_exit(self, status: int) -> int:
        raise ProcExit(status)

    def proc_raise(self, signal: int) -> int:
        return Errno.NOSYS
