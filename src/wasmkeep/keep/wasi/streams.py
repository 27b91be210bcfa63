"""Socket streams as the WASI layer sees them.

A socket fd (a `connect` file or a connection accepted on a `listen` file)
has a stream. The plain one passes bytes through sallyport; the TLS one
(`keep/tls.py`) encrypts and decrypts inside the keep, so the host relays only
ciphertext. Both look the same to the WASI functions:

* `recv` and `send` take `block`: whether the guest's fd is blocking. The
  host's sockets are always non-blocking; a request says whether to wait.
* `ready()` says whether a read would return at once (bytes already in the
  keep, or the end of the stream); `pump()` is called when the host reports
  the socket readable, to move what arrived along (a TLS record may need more
  bytes before it yields any plaintext).
* A non-blocking send leaves its bytes in the stream's outbox (up to
  OUTBOX_LIMIT); poll_oneoff hands every outbox to the host with its poll
  request (`sends`), and the host hands back what readable sockets hold with
  its reply (`prefetch`, given to `feed`). A poll-driven server thus costs
  about one sallyport round trip per exchange. Before the keep waits for
  anything else (a blocking read, accept, close) it flushes what waits, so
  no peer waits on bytes held in the keep.
"""

from __future__ import annotations

import time
from typing import Protocol

from wasmkeep.sallyport.calls import POLL_WRITE, HostCalls
from wasmkeep.sallyport.types import Errno, HostError

__all__ = ["LINGER_SECONDS", "OUTBOX_LIMIT", "PlainStream", "Stream"]


#: Bytes a non-blocking socket may hold in the keep, waiting to go out with
#: the guest's next poll (beyond it, the guest is told to wait: AGAIN).
OUTBOX_LIMIT = 256 * 1024


class Stream(Protocol):
    def recv(self, size: int, *, peek: bool, waitall: bool, block: bool) -> bytes | memoryview:
        """At most `size` bytes (b"" at the end); AGAIN if none and not blocking."""
        ...

    def send(self, data: bytes | memoryview, *, block: bool) -> int:
        """Bytes taken; AGAIN if none could be and not blocking."""
        ...

    def shutdown(self, how: int) -> None: ...

    def ready(self) -> int:
        """Bytes a read returns without waiting (-1: the stream ended or failed)."""
        ...

    def pump(self) -> bool:
        """The host says readable: take what arrived; True if a read would not wait."""
        ...

    def feed(self, data: bytes | memoryview, eof: bool) -> None:
        """Bytes the host received for this stream along with a poll."""
        ...

    def outbox(self) -> bytes | memoryview:
        """Bytes accepted from the guest that the host has not taken yet."""
        ...

    def sent(self, written: int, errno: Errno) -> None:
        """The host took `written` bytes of the outbox (or failed with `errno`)."""
        ...

    def flush(self) -> None:
        """Hand the host what it will take now of the outbox, without waiting."""
        ...

    def close(self) -> None:
        """Say goodbye to the peer if the protocol has a way to (best effort)."""
        ...


class PlainStream:
    """TCP: bytes cross the host as they are. A non-blocking send waits in the
    keep for the guest's next poll (up to OUTBOX_LIMIT), and poll brings what
    arrived: one round trip per exchange for a poll-driven server."""

    def __init__(self, host: HostCalls, handle: int) -> None:
        self._host = host
        self._handle = handle
        self._inbox = bytearray()
        self._eof = False
        self._outbox = bytearray()
        self._failed: Errno | None = None

    def recv(self, size: int, *, peek: bool, waitall: bool, block: bool) -> bytes | memoryview:
        if self._inbox:
            data = bytes(self._inbox[:size])
            if not peek:
                del self._inbox[:size]
            if waitall and block and not peek and len(data) < size and not self._eof:
                data += self._host.recv(self._handle, size - len(data), False, True, True)
            return data
        if self._eof:
            return b""
        if block:
            self.flush()  # what the peer may be waiting for, before we wait for it
        return self._host.recv(self._handle, size, peek, waitall, block)

    def send(self, data: bytes | memoryview, *, block: bool) -> int:
        if self._failed is not None:
            raise HostError(self._failed)
        if not block and len(self._outbox) + len(data) <= OUTBOX_LIMIT:
            self._outbox += data
            return len(data)
        self.flush()
        if self._outbox:
            if not block:
                raise HostError(Errno.AGAIN)
            while self._outbox:  # order: what waits goes first
                del self._outbox[: self._host.send(self._handle, memoryview(self._outbox), True)]
        return self._host.send(self._handle, data, block)

    def shutdown(self, how: int) -> None:
        if how & 2:
            self._drain()
        self._host.shutdown(self._handle, how)

    def ready(self) -> int:
        if self._inbox:
            return len(self._inbox)
        return -1 if self._eof else 0

    def pump(self) -> bool:
        return True

    def feed(self, data: bytes | memoryview, eof: bool) -> None:
        self._inbox += data
        self._eof = self._eof or eof

    def outbox(self) -> bytes | memoryview:
        return memoryview(self._outbox)

    def sent(self, written: int, errno: Errno) -> None:
        del self._outbox[:written]
        if errno != Errno.SUCCESS:
            self._failed = errno
            self._outbox.clear()

    def flush(self) -> None:
        if self._outbox and self._failed is None:
            try:
                written = self._host.send(self._handle, memoryview(self._outbox), False)
            except HostError as error:
                if error.errno != Errno.AGAIN:
                    self.sent(0, error.errno)
                return
            self.sent(written, Errno.SUCCESS)

    def close(self) -> None:
        self._drain()

    def _drain(self) -> None:
        """Send what waits, lingering a few seconds for a slow peer."""
        linger_until = time.monotonic() + LINGER_SECONDS
        while self._outbox and self._failed is None and time.monotonic() < linger_until:
            self.flush()
            if self._outbox:
                remaining = int((linger_until - time.monotonic()) * 1e9)
                self._host.poll([(self._handle, POLL_WRITE)], max(0, remaining))


#: How long a closed stream may wait for its peer to take the last bytes.
LINGER_SECONDS = 5.0
