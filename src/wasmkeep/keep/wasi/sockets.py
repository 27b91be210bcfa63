"""WASI functions on sockets: the listen and connect files of the config.

Bytes move through each connection's stream (`streams.py`): plain, or TLS run
inside the keep (`keep/tls.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wasmkeep.keep.wasi import abi
from wasmkeep.keep.wasi.abi import Errno, FileType, Rights
from wasmkeep.keep.wasi.fdtable import FdEntry, rights_for
from wasmkeep.keep.wasi.streams import Stream
from wasmkeep.sallyport.calls import FDFLAGS
from wasmkeep.sallyport.types import (
    HandleKind,
    HostError,
)

if TYPE_CHECKING:
    pass
from wasmkeep.keep.wasi.base import SUCCESS, WasiBase

__all__ = ["SocketFunctions"]


class SocketFunctions(WasiBase):
    """sock_accept, sock_recv, sock_send, sock_shutdown."""

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
        block = not listener.fdflags & FDFLAGS.NONBLOCK
        if block:
            self._before_waiting()
        handle = self.host.accept(listener.handle, block=block)
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
        return SUCCESS

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
        return SUCCESS

    def sock_send(self, fd: int, si_data: int, si_data_len: int, si_flags: int, so_len: int) -> int:
        entry, stream = self._connected(fd, Rights.FD_WRITE)
        if si_flags:
            return Errno.INVAL
        self.mem.check(so_len, 4)
        data = self._gather(si_data, si_data_len)
        sent = stream.send(data, block=not entry.fdflags & FDFLAGS.NONBLOCK) if len(data) else 0
        self.mem.write_u32(so_len, sent)
        return SUCCESS

    def sock_shutdown(self, fd: int, how: int) -> int:
        _, stream = self._connected(fd, Rights.SOCK_SHUTDOWN)
        if how not in (abi.SDFLAGS_RD, abi.SDFLAGS_WR, abi.SDFLAGS_RD | abi.SDFLAGS_WR):
            return Errno.INVAL
        stream.shutdown(how)
        return SUCCESS
