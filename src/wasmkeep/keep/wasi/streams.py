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
* `backlog()` and `flush()`: a non-blocking TLS send may leave ciphertext in
  the keep when the socket is full; poll_oneoff sends it on as soon as the
  host says the socket can take more, whatever the guest is waiting for.
"""

from __future__ import annotations

from typing import Protocol

from wasmkeep.sallyport.calls import HostCalls

__all__ = ["PlainStream", "Stream"]


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

    def close(self) -> None:
        """Say goodbye to the peer if the protocol has a way to (best effort)."""
        ...

    def backlog(self) -> int:
        """Bytes accepted from the guest that the host has not taken yet."""
        ...

    def flush(self) -> None:
        """Hand the host what it will take now of the backlog, without waiting."""
        ...


class PlainStream:
    """TCP: every byte the guest sends or receives crosses the host as it is."""

    def __init__(self, host: HostCalls, handle: int) -> None:
        self._host = host
        self._handle = handle

    def recv(self, size: int, *, peek: bool, waitall: bool, block: bool) -> bytes | memoryview:
        return self._host.recv(self._handle, size, peek, waitall, block)

    def send(self, data: bytes | memoryview, *, block: bool) -> int:
        return self._host.send(self._handle, data, block)

    def shutdown(self, how: int) -> None:
        self._host.shutdown(self._handle, how)

    def ready(self) -> int:
        return 0

    def pump(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def backlog(self) -> int:
        return 0

    def flush(self) -> None:
        pass
