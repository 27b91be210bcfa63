"""Gathering small writes to stdout and stderr into few host requests.

Every host request is a round trip (a sallyport frame in a process or VM
keep), so a workload writing a line at a time would pay one per line. Writes
to the guest's stdout and stderr are gathered here and sent as one request:

* before any other call that reaches the host (the trampolines check
  :attr:`GatheredOutput.pending` first), so a prompt is out before stdin is read;
* when another stream is written, so the order across streams is kept;
* when its limit (128 KiB, see preview1.py) is waiting, and at exit;
* at the latest `max_age` after the first waiting byte, from the keep's ticker
  thread, so output of a long computation does not sit in the keep.

The ticker flushes from another thread, hence the lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from wasmkeep.sallyport.types import Errno, HostError

__all__ = ["GatheredOutput"]

Write = Callable[[int, "bytes | memoryview"], int]


class GatheredOutput:
    """Bytes written to one output stream that the host has not been sent yet."""

    def __init__(self, write: Write, limit: int) -> None:
        self._write = write
        self._limit = limit
        self._lock = threading.Lock()
        #: Tested without the lock on the hot path: a stale answer costs one
        #: empty flush, never lost or reordered output.
        self.pending = bytearray()
        self._handle = -1
        self._since = 0.0
        self._errors: dict[int, Errno] = {}

    def append(self, handle: int, data: bytes | memoryview) -> None:
        """Gather `data` for `handle`; raises the errno a failed earlier send left."""
        with self._lock:
            error = self._errors.pop(handle, None)
            if error is not None:
                raise HostError(error)
            if handle != self._handle:
                self._send()
                self._handle = handle
            if not self.pending:
                self._since = time.monotonic()
            self.pending += data
            if len(self.pending) >= self._limit:
                self._send()

    def flush(self) -> None:
        with self._lock:
            self._send()

    def flush_handle(self, handle: int) -> None:
        """Send what waits for `handle` (before it is closed or renumbered away)."""
        with self._lock:
            if handle == self._handle:
                self._send()

    def flush_if_stale(self, max_age: float) -> None:
        if self.pending and time.monotonic() - self._since >= max_age:
            self.flush()

    def _send(self) -> None:
        # A failure is reported to the guest on its next write to that stream,
        # as a buffered libc write would report it.
        if not self.pending:
            return
        view = memoryview(bytes(self.pending))
        self.pending.clear()
        try:
            while view:
                written = self._write(self._handle, view)
                if written <= 0:
                    break
                view = view[written:]
        except HostError as error:
            self._errors[self._handle] = error.errno
