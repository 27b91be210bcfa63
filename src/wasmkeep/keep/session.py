"""One keep's life on its sallyport channel, the same for every kind of keep.

A process keep (`keep/process.py`) and a VM keep (`keep/vm.py`) differ only in
how they isolate themselves; what they do on the channel is this:

1. ``platform.isolate()``,
2. receive BOOT: the workload, its manifest and limits,
3. with a Steward in the manifest, enrol (`keep/enrol.py`): digest the module,
   make the key, collect evidence (it may read /sys or /dev), and obtain the
   certificate over sallyport; then make the TLS contexts (they load the key
   and trust anchors from files): all of it while a file system is there, and
   before any guest code runs (ADR 0004),
4. ``platform.leave_files()``: give up the file system,
5. compile and instantiate the workload (no compile cache: compiled code from
   the host would be code the host chose),
6. ``platform.seal(...)``: limits and system-call filters,
7. run it, with every host operation a sallyport request,
8. send EXIT with how it ended.

Failures are reported by message, never with a formatted traceback (which
reads source files the keep may no longer have).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from wasmkeep.errors import (
    HostProtocolViolation,
    WasmkeepError,
    WorkloadError,
    WorkloadTimedOut,
    WorkloadTrapped,
)
from wasmkeep.keep.client import SallyportHost
from wasmkeep.keep.engine import EngineSettings
from wasmkeep.keep.runtime import PreparedRun, RunOptions
from wasmkeep.limits import RUNTIME_ALLOWANCE
from wasmkeep.sallyport.boot import Boot, Exit, Outcome, boot_payload_limit
from wasmkeep.sallyport.channel import Channel
from wasmkeep.sallyport.codec import Kind, ProtocolError
from wasmkeep.workload import Workload

__all__ = ["KeepPlatform", "run_keep"]

_OUTCOMES: tuple[tuple[type[WasmkeepError], Outcome], ...] = (
    (WorkloadError, Outcome.WORKLOAD_ERROR),
    (WorkloadTrapped, Outcome.TRAPPED),
    (WorkloadTimedOut, Outcome.TIMED_OUT),
    (HostProtocolViolation, Outcome.HOST_VIOLATION),
)


def _nothing() -> None:
    pass


def _no_seal(channel_fd: int, memory_bytes: int, cpu_seconds: int | None) -> None:
    pass


@dataclass(frozen=True, slots=True)
class KeepPlatform:
    """What one kind of keep does at each step of :func:`run_keep`."""

    #: The backend, as evidence and certificates name it ("process", "vm", ...).
    backend: str
    isolate: Callable[[], None] = _nothing
    leave_files: Callable[[], None] = _nothing
    #: (sallyport fd, memory the keep may use, CPU seconds or None).
    seal: Callable[[int, int, int | None], None] = _no_seal


def run_keep(channel: Channel, platform: KeepPlatform) -> Exit:
    """Serve one workload on `channel`, send EXIT with how it ended, and return it."""
    try:
        ending = _keep(channel, platform)
    except WasmkeepError as error:
        ending = Exit(_outcome_of(error), 0, str(error))
    except ProtocolError as error:
        ending = Exit(Outcome.HOST_VIOLATION, 0, f"host protocol violation: {error}")
    except BaseException as error:  # a bug: say what, without reading source files
        ending = Exit(Outcome.KEEP_ERROR, 0, f"keep runtime failure: {error!r}")
    with contextlib.suppress(ProtocolError):
        channel.send(Kind.EXIT, 0, 0, ending.encode())
    return ending


def _outcome_of(error: WasmkeepError) -> Outcome:
    for kind, outcome in _OUTCOMES:
        if isinstance(error, kind):
            return outcome
    return Outcome.KEEP_ERROR


def _keep(channel: Channel, platform: KeepPlatform) -> Exit:
    platform.isolate()
    frame = channel.receive(boot_payload_limit())
    if frame.kind is not Kind.BOOT:
        raise HostProtocolViolation(f"expected BOOT, got a {frame.kind.name} frame")
    try:
        boot = Boot.decode(frame.payload)
    except ProtocolError as error:
        raise HostProtocolViolation(f"BOOT: {error}") from None
    manifest = boot.manifest
    # The digest is the keep's own, of the bytes it will compile and run.
    workload = Workload(boot.name, boot.wasm)
    handles = [info.handle for info in manifest.fds]
    if manifest.steward is not None:
        handles.append(manifest.steward.handle)  # closed once enrolled
    host = SallyportHost(channel, handles)
    # TLS needs files (evidence from /sys or /dev, the default trust store; ssl
    # loads keys from files): enrolment and everything TLS happen now, while
    # the keep still has a file system, and no guest code has run. (Imported
    # only when used: ssl and cryptography cost start-up time.)
    tls = None
    if manifest.steward is not None:
        from wasmkeep.keep.enrol import keep_tls

        tls = keep_tls(manifest, host, workload_digest=workload.digest, backend=platform.backend)
    elif any(info.tls is not None for info in manifest.fds):
        from wasmkeep.keep.tls import prepare_tls

        tls = prepare_tls(manifest)
    platform.leave_files()

    options = RunOptions(
        max_memory=boot.max_memory,
        timeout=None if boot.timeout_ns is None else boot.timeout_ns / 1e9,
        cache=None,
        settings=EngineSettings(parallel_compilation=False),
        interrupt_host_calls=False,
    )
    prepared = PreparedRun(workload, manifest, host, options, tls)
    platform.seal(
        channel.fd, boot.max_memory + RUNTIME_ALLOWANCE + 4 * len(boot.wasm), boot.cpu_seconds
    )
    if boot.test_hook:
        _test_hook(boot.test_hook)
    return Exit(Outcome.EXITED, prepared.run() & 0xFFFFFFFF)


def _test_hook(action: str) -> None:
    """For the test suite only: once sealed, try what a compromised keep
    would. Each attempt must be refused or kill the keep (SIGSYS)."""
    if action == "open":
        os.open("/etc/passwd", os.O_RDONLY)
    elif action == "socket":
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    elif action == "exec":
        os.execv("/bin/sh", ["sh", "-c", "true"])  # noqa: S606 - the attempt is the test
    elif action == "fork":
        os.fork()
    elif action == "write-stderr":
        os.write(2, b"a keep may not write to anything but sallyport\n")
    elif action != "none":
        raise WorkloadError(f"unknown test hook {action!r}")
