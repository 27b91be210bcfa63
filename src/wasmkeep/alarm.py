"""A wall-clock alarm that raises an exception in the main thread.

Used on both sides of the keep boundary (hence a module of its own): by the
nil keep to interrupt a host call blocked past the workload's deadline, and by
the host to end a process keep whose host call blocks. Signals reach only the
main thread; elsewhere the alarm is not set and other mechanisms (epochs, the
host's watchdog) must do.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["raise_after"]


@contextmanager
def raise_after(seconds: float | None, error: type[BaseException]) -> Iterator[None]:
    """Raise `error` wherever the main thread is after `seconds` (None: never)."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    armed = True

    def ring(signum: int, frame: object) -> None:
        if armed:  # a late signal after the block ended must not raise
            raise error

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
