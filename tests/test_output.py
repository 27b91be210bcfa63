"""Gathered output: few host writes, nothing lost, nothing reordered."""

from __future__ import annotations

import threading
import time

import pytest

from wasmkeep.keep.wasi.output import GatheredOutput
from wasmkeep.sallyport.types import Errno, HostError


class Recorder:
    def __init__(self, accept: int | None = None, fail: Errno | None = None) -> None:
        self.writes: list[tuple[int, bytes]] = []
        self.accept = accept
        self.fail = fail

    def __call__(self, handle: int, data: bytes | memoryview) -> int:
        if self.fail is not None:
            raise HostError(self.fail)
        chunk = bytes(data[: self.accept] if self.accept else data)
        self.writes.append((handle, chunk))
        return len(chunk)

    def stream(self, handle: int) -> bytes:
        return b"".join(data for h, data in self.writes if h == handle)


def test_small_writes_become_one_host_write() -> None:
    host = Recorder()
    output = GatheredOutput(host, 64 * 1024)
    for index in range(100):
        output.append(1, b"line %d\n" % index)
    assert host.writes == []
    output.flush()
    assert len(host.writes) == 1
    assert host.stream(1) == b"".join(b"line %d\n" % index for index in range(100))


def test_switching_streams_keeps_the_order() -> None:
    host = Recorder()
    output = GatheredOutput(host, 64 * 1024)
    for index in range(10):
        output.append(1 + index % 2, b"%d" % index)
    output.flush()
    assert [handle for handle, _ in host.writes] == [1, 2] * 5
    assert b"".join(data for _, data in host.writes) == b"0123456789"


def test_the_limit_sends_at_once_and_short_writes_are_resent() -> None:
    host = Recorder(accept=1000)
    output = GatheredOutput(host, limit=4096)
    output.append(1, b"x" * 5000)
    assert host.stream(1) == b"x" * 5000
    assert all(len(data) <= 1000 for _, data in host.writes)


def test_a_failed_send_is_reported_on_the_next_write() -> None:
    host = Recorder(fail=Errno.PIPE)
    output = GatheredOutput(host, 64 * 1024)
    output.append(1, b"lost")
    output.flush()
    with pytest.raises(HostError) as caught:
        output.append(1, b"more")
    assert caught.value.errno == Errno.PIPE
    output.append(1, b"after")  # reported once, as a write error is


def test_stale_output_is_sent_and_fresh_output_waits() -> None:
    host = Recorder()
    output = GatheredOutput(host, 64 * 1024)
    output.append(1, b"fresh")
    output.flush_if_stale(60)
    assert host.writes == []
    time.sleep(0.03)
    output.flush_if_stale(0.02)
    assert host.stream(1) == b"fresh"


def test_a_flushing_thread_never_loses_or_reorders() -> None:
    host = Recorder()
    output = GatheredOutput(host, limit=1 << 20)
    stop = threading.Event()

    def ticker() -> None:
        while not stop.is_set():
            output.flush_if_stale(0)

    thread = threading.Thread(target=ticker)
    thread.start()
    expected = b"".join(b"%06d" % index for index in range(20000))
    for index in range(20000):
        output.append(1, b"%06d" % index)
    stop.set()
    thread.join()
    output.flush()
    assert host.stream(1) == expected
