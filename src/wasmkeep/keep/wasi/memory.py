"""Bounds-checked access to the guest's linear memory.

Every pointer and length the guest passes is checked against the memory's
current size before a byte is touched; a bad one becomes errno FAULT for the
guest, never a read or write outside its memory.

The engine is configured so that linear memory never moves (see
`keep/engine.py`), and wasm memories never shrink: the view made for one size
stays valid, and only an access beyond it needs the size asked for again.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable

from wasmkeep.sallyport.types import Errno, HostError

__all__ = ["GuestMemory"]

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class GuestMemory:
    """A window on linear memory that grows when the guest's memory does."""

    __slots__ = ("_base", "_current_size", "size", "view")

    def __init__(self, base_address: int, current_size: Callable[[], int]) -> None:
        self._base = base_address
        self._current_size = current_size
        self.size = 0
        self.view = memoryview(b"")
        self.refresh()

    def refresh(self) -> None:
        """Widen the view to the memory's current size (after memory.grow)."""
        size = self._current_size()
        if size != self.size:
            self.size = size
            array = (ctypes.c_ubyte * size).from_address(self._base) if size else b""
            self.view = memoryview(array).cast("B")

    def check(self, ptr: int, length: int) -> None:
        """FAULT unless [ptr, ptr + length) lies inside the memory."""
        if ptr + length > self.size:
            self.refresh()
            if ptr + length > self.size:
                raise HostError(Errno.FAULT)

    def read(self, ptr: int, length: int) -> bytes:
        self.check(ptr, length)
        return self.view[ptr : ptr + length].tobytes()

    def write(self, ptr: int, data: bytes | bytearray | memoryview) -> None:
        length = len(data)
        self.check(ptr, length)
        self.view[ptr : ptr + length] = data

    def read_u32(self, ptr: int) -> int:
        self.check(ptr, 4)
        value: int = _U32.unpack_from(self.view, ptr)[0]
        return value

    def write_u32(self, ptr: int, value: int) -> None:
        self.check(ptr, 4)
        _U32.pack_into(self.view, ptr, value)

    def write_u64(self, ptr: int, value: int) -> None:
        self.check(ptr, 8)
        _U64.pack_into(self.view, ptr, value)

    def unpack(self, layout: struct.Struct, ptr: int) -> tuple[int, ...]:
        self.check(ptr, layout.size)
        return layout.unpack_from(self.view, ptr)

    def pack(self, layout: struct.Struct, ptr: int, *values: int) -> None:
        self.check(ptr, layout.size)
        layout.pack_into(self.view, ptr, *values)

    def read_string(self, ptr: int, length: int) -> str:
        """A UTF-8 string argument; ILSEQ if it is not valid UTF-8."""
        try:
            return self.read(ptr, length).decode("utf-8")
        except UnicodeDecodeError:
            raise HostError(Errno.ILSEQ) from None

    def release(self) -> None:
        """Drop the view so nothing refers to the memory after the store ends."""
        self.view.release()
        self.view = memoryview(b"")
        self.size = 0
