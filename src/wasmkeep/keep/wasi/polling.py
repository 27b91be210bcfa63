"""poll_oneoff: clocks, fds and sockets, in one wait.

What the keep can answer itself comes first (read-ahead stdin, decrypted TLS
records); the rest is one host poll, repeated until something the guest waits
for is really ready (a readable socket may not yet hold a whole TLS record) or
its deadline passes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from wasmkeep.keep.wasi import abi
from wasmkeep.keep.wasi.abi import Errno, Rights
from wasmkeep.keep.wasi.fdtable import FdEntry
from wasmkeep.keep.wasi.streams import Stream
from wasmkeep.sallyport.calls import POLL_READ, POLL_WRITE
from wasmkeep.sallyport.types import (
    HostError,
)

if TYPE_CHECKING:
    pass
from wasmkeep.keep.wasi.base import CLOCKS, SUCCESS, WasiBase

#: What a poll lets readable sockets bring back with its reply, in all.
PREFETCH = 1024 * 1024

__all__ = ["PollFunctions"]


class PollFunctions(WasiBase):
    """poll_oneoff."""

    def poll_oneoff(self, in_ptr: int, out_ptr: int, count: int, nevents_ptr: int) -> int:
        if count == 0:
            return Errno.INVAL
        if count > self.limits.max_poll_subscriptions:
            return Errno.NOTSUP
        mem = self.mem
        mem.check(in_ptr, count * abi.SUBSCRIPTION.size)
        mem.check(out_ptr, count * abi.EVENT.size)
        mem.check(nevents_ptr, 4)

        events: list[tuple[int, int, int, int, int]] = []  # userdata, errno, type, nbytes, flags
        timers: list[tuple[int, int]] = []  # deadline on the monotonic clock (ns), userdata
        interests: list[tuple[int, int]] = []
        # userdata, event type and (read interests on sockets) stream, per interest
        waiting: list[tuple[int, int, Stream | None]] = []
        now = time.monotonic_ns()
        for index in range(count):
            userdata, tag, body = abi.SUBSCRIPTION.unpack_from(mem.view, in_ptr + 48 * index)
            if tag == abi.EventType.CLOCK:
                clock_id, timeout, _precision, flags = abi.SUBSCRIPTION_CLOCK.unpack(body)
                clock = CLOCKS.get(clock_id)
                if clock is None or clock_id > abi.Clock.MONOTONIC:
                    events.append((userdata, Errno.INVAL, tag, 0, 0))
                    continue
                if flags & abi.SUBSCRIPTION_CLOCK_ABSTIME:
                    timeout = max(0, timeout - time.clock_gettime_ns(clock))
                timers.append((now + timeout, userdata))
            elif tag in (abi.EventType.FD_READ, abi.EventType.FD_WRITE):
                (fd,) = abi.SUBSCRIPTION_FD.unpack(body)
                right = Rights.FD_READ if tag == abi.EventType.FD_READ else Rights.FD_WRITE
                try:
                    entry = self.fds.lookup(fd, right)
                except HostError as error:
                    events.append((userdata, error.errno, tag, 0, 0))
                    continue
                ready_now = self._readable_now(entry) if tag == abi.EventType.FD_READ else 0
                if ready_now:
                    events.append((userdata, SUCCESS, tag, max(ready_now, 0), 0))
                    continue
                interest = POLL_READ if tag == abi.EventType.FD_READ else POLL_WRITE
                interests.append((entry.handle, interest))
                waiting.append((userdata, tag, entry.stream if interest == POLL_READ else None))
            else:
                return Errno.INVAL

        if not events:
            first_deadline = min((deadline for deadline, _ in timers), default=None)
            if interests:
                events += self._wait_for_fds(interests, waiting, first_deadline)
            elif first_deadline is not None:
                delay = first_deadline - time.monotonic_ns()
                if delay > 0:
                    time.sleep(delay / 1e9)
            if not events:
                after = time.monotonic_ns()
                events.extend(
                    (userdata, SUCCESS, abi.EventType.CLOCK, 0, 0)
                    for deadline, userdata in timers
                    if deadline <= after
                )
        for index, event in enumerate(events):
            abi.EVENT.pack_into(mem.view, out_ptr + abi.EVENT.size * index, *event)
        mem.write_u32(nevents_ptr, len(events))
        return SUCCESS

    def _readable_now(self, entry: FdEntry) -> int:
        """Bytes a read gives without asking the host (-1: end of stream)."""
        if entry.stream is not None:
            return entry.stream.ready()
        return len(self._read_ahead.get(entry.handle, b""))

    def _wait_for_fds(
        self,
        interests: list[tuple[int, int]],
        waiting: list[tuple[int, int, Stream | None]],
        deadline: int | None,
    ) -> list[tuple[int, int, int, int, int]]:
        """Ask the host until an fd is ready or the deadline passes.

        Each request carries what the keep's streams hold to send, and the
        reply brings what readable sockets received (streams.py): one round
        trip per exchange. A readable socket may still hold no whole TLS
        record; its stream takes what arrived and says whether the guest
        would get data.
        """
        prefetch = PREFETCH if any(stream for _, _, stream in waiting) else 0
        while True:
            holding = [
                (entry.handle, entry.stream)
                for _, entry in self.fds
                if entry.stream is not None and len(entry.stream.outbox())
            ]
            sends = [(handle, stream.outbox()) for handle, stream in holding]
            now = time.monotonic_ns()
            timeout_ns = None if deadline is None else max(0, deadline - now)
            ready, sent = self.host.poll(interests, timeout_ns, prefetch, sends)
            del sends  # the views into the outboxes, before they shrink
            more_to_send = False
            for (_, stream), outcome in zip(holding, sent, strict=True):
                stream.sent(outcome.written, outcome.errno)
                more_to_send |= outcome.writable
            events: list[tuple[int, int, int, int, int]] = []
            for (userdata, tag, stream), result in zip(waiting, ready, strict=True):
                if result is None:
                    continue
                nbytes = result.nbytes
                if stream is not None and result.errno == Errno.SUCCESS:
                    fed = bool(result.data) or result.eof
                    if fed:
                        stream.feed(result.data, result.eof)
                    available = stream.ready()
                    if not available and not fed and stream.pump():
                        available = stream.ready() or 1
                    if not available and not result.hangup:
                        continue
                    nbytes = max(available, 0)
                flags = abi.EVENT_FD_READWRITE_HANGUP if result.hangup else 0
                events.append((userdata, result.errno, tag, nbytes, flags))
            if events or (deadline is not None and time.monotonic_ns() >= deadline):
                return events
            if more_to_send:
                continue
