"""Frames over a byte stream: a socketpair for the process keep, a virtio
serial port for the VM keep. Only `read` and `write` on one fd are used, so the
keep's seccomp allow-list needs nothing more for sallyport."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

from wasmkeep.limits import DEFAULT_LIMITS, Limits
from wasmkeep.sallyport.codec import (
    HEADER,
    Frame,
    Kind,
    ProtocolError,
    decode_header,
    encode_header,
)

__all__ = ["Channel", "ChannelClosed", "frame_payload_limit"]


_IOV_MAX = 1024


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

    def send(
        self,
        kind: Kind,
        op: int,
        frame_id: int,
        payload: bytes | bytearray | Sequence[bytes | bytearray | memoryview],
    ) -> None:
        """One frame; `payload` may be a list of buffers (Writer.parts)."""
        chunks = [payload] if isinstance(payload, bytes | bytearray) else list(payload)
        length = sum(len(chunk) for chunk in chunks)
        # Header and payload in few system calls, without joining them first.
        parts = [memoryview(encode_header(kind, op, frame_id, length))]
        parts += (memoryview(chunk) for chunk in chunks if len(chunk))
        while parts:
            try:
                written = os.writev(self.fd, parts[:_IOV_MAX])
            except (BrokenPipeError, ConnectionResetError):
                raise ChannelClosed("the other side closed the channel") from None
            while parts and written >= len(parts[0]):
                written -= len(parts[0])
                parts.pop(0)
            if parts and written:
                parts[0] = parts[0][written:]

    def _read_exactly(self, size: int, what: str, *, at_boundary: bool = False) -> bytes:
        chunks: list[bytes] = []
        missing = size
        while missing:
            try:
                chunk = os.read(self.fd, missing)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if at_boundary and missing == size:
                    raise ChannelClosed("the other side closed the channel")
                raise ChannelClosed(f"the channel closed inside {what}")
            chunks.append(chunk)
            missing -= len(chunk)
        # One read is the common case: no copy to join.
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def receive(self, max_payload: int | None = None) -> Frame:
        header = self._read_exactly(HEADER.size, "a frame header", at_boundary=True)
        kind, op, frame_id, length = decode_header(header, max_payload or self.max_payload)
        payload = self._read_exactly(length, "a frame payload") if length else b""
        return Frame(kind, op, frame_id, payload)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
