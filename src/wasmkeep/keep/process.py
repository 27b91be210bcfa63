"""The process keep: the keep runtime in a process of its own, locked down.

`python -m wasmkeep.keep --sallyport-fd N` runs :func:`main`. The host started
it with one end of a socketpair; everything the keep receives and sends goes
through it:

1. enter fresh namespaces (`lockdown.isolate`; this process becomes PID 1),
2. receive BOOT: the workload, its manifest and limits,
3. with a Steward in the manifest, enrol (`keep/enrol.py`): digest the module,
   make the key, collect evidence (it may read /sys or /dev), and obtain the
   certificate over sallyport; then make the TLS contexts (they load the key
   and trust anchors from files): all of it while a file system is there,
4. swap the file system for an empty one (`lockdown.empty_root`),
5. compile and instantiate the workload (no compile cache: compiled code from
   the host would be code the host chose),
6. seal: limits, no capabilities, no_new_privs, Landlock, seccomp,
7. run it, with every host operation a sallyport request,
8. send EXIT with how it ended, and exit.

Every module the keep will need is imported up front: after step 4 there is
no file system to import from, and after step 6 opening a file kills the
process. For the same reason failures are reported by message, never with a
formatted traceback (which reads source files).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from typing import NoReturn

from wasmkeep.errors import (
    HostProtocolViolation,
    WasmkeepError,
    WorkloadError,
    WorkloadTimedOut,
    WorkloadTrapped,
)
from wasmkeep.keep import lockdown
from wasmkeep.keep.client import SallyportHost
from wasmkeep.keep.engine import EngineSettings
from wasmkeep.keep.runtime import PreparedRun, RunOptions
from wasmkeep.sallyport.boot import Boot, Exit, Outcome, boot_payload_limit
from wasmkeep.sallyport.channel import Channel, frame_payload_limit
from wasmkeep.sallyport.codec import Kind, ProtocolError
from wasmkeep.workload import Workload

__all__ = ["main"]

#: Memory the keep runtime itself may use beyond the guest's linear memory:
#: Python, wasmtime, and compiled code (a few times the module's size).
RUNTIME_ALLOWANCE = 512 << 20

_OUTCOMES: tuple[tuple[type[WasmkeepError], Outcome], ...] = (
    (WorkloadError, Outcome.WORKLOAD_ERROR),
    (WorkloadTrapped, Outcome.TRAPPED),
    (WorkloadTimedOut, Outcome.TIMED_OUT),
    (HostProtocolViolation, Outcome.HOST_VIOLATION),
)


def main(argv: list[str] | None = None) -> NoReturn:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "--sallyport-fd" or not args[1].isdigit():
        print(
            "usage: python -m wasmkeep.keep --sallyport-fd FD (started by wasmkeep run)",
            file=sys.stderr,
        )
        os._exit(2)
    fd = int(args[1])
    channel = Channel(fd, frame_payload_limit())
    try:
        ending = _keep(channel)
    except WasmkeepError as error:
        ending = Exit(_outcome_of(error), 0, str(error))
    except ProtocolError as error:
        ending = Exit(Outcome.HOST_VIOLATION, 0, f"host protocol violation: {error}")
    except BaseException as error:  # a bug: say what, without reading source files
        ending = Exit(Outcome.KEEP_ERROR, 0, f"keep runtime failure: {error!r}")
    with contextlib.suppress(ProtocolError):
        channel.send(Kind.EXIT, 0, 0, ending.encode())
    os._exit(0)


def _outcome_of(error: WasmkeepError) -> Outcome:
    for kind, outcome in _OUTCOMES:
        if isinstance(error, kind):
            return outcome
    return Outcome.KEEP_ERROR


def _keep(channel: Channel) -> Exit:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host decides when the keep stops
    lockdown.isolate()
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

        tls = keep_tls(manifest, host, workload_digest=workload.digest, backend="process")
    elif any(info.tls is not None for info in manifest.fds):
        from wasmkeep.keep.tls import prepare_tls

        tls = prepare_tls(manifest)
    _silence_stdio()
    lockdown.empty_root()

    options = RunOptions(
        max_memory=boot.max_memory,
        timeout=None if boot.timeout_ns is None else boot.timeout_ns / 1e9,
        cache=None,
        settings=EngineSettings(parallel_compilation=False),
        interrupt_host_calls=False,
    )
    prepared = PreparedRun(workload, manifest, host, options, tls)
    lockdown.seal(
        channel.fd,
        memory_bytes=boot.max_memory + RUNTIME_ALLOWANCE + 4 * len(boot.wasm),
        cpu_seconds=boot.cpu_seconds,
    )
    if boot.test_hook:
        _test_hook(boot.test_hook)
    return Exit(Outcome.EXITED, prepared.run() & 0xFFFFFFFF)


def _silence_stdio() -> None:
    """fds 0-2 were the host's: make them /dev/null before the file system goes."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _test_hook(action: str) -> None:
    """For the test suite only: after lockdown, try what a compromised keep
    would. Each attempt must be refused or kill the process (SIGSYS)."""
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
