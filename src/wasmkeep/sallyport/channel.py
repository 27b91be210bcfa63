"""Frames over a byte stream: a socketpair for the process keep, a virtio
serial port for the VM keep. Only `read` and `write` on one fd are used, so the
keep's seccomp allow-list needs nothing more for sallyport."""

from __future__ import annotations

import contextlib
import os

from wasmkeep.limits import DEFAULT_LIMITS, Limits
from wasmkeep.sallyport.codec import HEADER, Frame, Kind, ProtocolError, decode_header, encode_frame

__all__ = ["Channel", "ChannelClosed", "frame_payload_limit"]


class ChannelClosed(ProtocolError):
    """The other side closed the channel (between frames or inside one)."""


def frame_payload_limit(limits: Limits = DEFAULT_LIMITS) -> int:
    """The largest request or reply payload: a data chunk plus its fields, or a
    full batch of directory entries or poll results."""
    entries = limits.max_readdir_batch * (8 + 8 + 1 + 4 + 255)
    polls = limits.max_poll_subscriptions * 16
    return max(limits.max_io_chunk, entries, polls, 4 * limits.max_path_bytes) + 4096


class Channel:
    """Reads and writes whole frames on a file descriptor."""

    def __init__(self, fd: int, max_payload: int) -> None:
        self.fd = fd
        self.max_payload = max_payload

    def send(self, kind: Kind, op: int, frame_id: int, payload: bytes | bytearray) -> None:
        view = memoryview(encode_frame(kind, op, frame_id, payload))
        while view:
            try:
                written = os.write(self.fd, view)
            except (BrokenPipeError, ConnectionResetError):
                raise ChannelClosed("the other side closed the channel") from None
            view = view[written:]

    def _read_exactly(self, size: int, what: str, *, at_boundary: bool = False) -> bytes:
        buffer = bytearray(size)
        view = memoryview(buffer)
        filled = 0
        while filled < size:
            try:
                count = os.readv(self.fd, [view[filled:]])
            except ConnectionResetError:
                count = 0
            if count == 0:
                if at_boundary and filled == 0:
                    raise ChannelClosed("the other side closed the channel")
                raise ChannelClosed(f"the channel closed inside {what}")
            filled += count
        return bytes(buffer)

    def receive(self, max_payload: int | None = None) -> Frame:
        header = self._read_exactly(HEADER.size, "a frame header", at_boundary=True)
        kind, op, frame_id, length = decode_header(header, max_payload or self.max_payload)
        payload = self._read_exactly(length, "a frame payload") if length else b""
        return Frame(kind, op, frame_id, payload)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
