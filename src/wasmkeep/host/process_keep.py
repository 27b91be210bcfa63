"""Starting a process keep and serving it until it ends.

The host makes a socketpair, starts `python -m wasmkeep.keep` with one end,
sends it BOOT (the workload, its manifest and limits), answers its requests
with the executor, and turns its EXIT into an exit status or the same error
a nil run would raise. The keep never outlives this process: it is killed on
any way out of :func:`run_in_process_keep` (Ctrl-C included), and it kills
itself if this process dies (PR_SET_PDEATHSIG, see keep/lockdown.py).

The host enforces the wall-clock limit too (a little after the keep's own),
because a keep waiting for a host call that blocks (stdin, poll) cannot.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from wasmkeep.alarm import raise_after
from wasmkeep.errors import (
    HostProtocolViolation,
    KeepError,
    WorkloadError,
    WorkloadTimedOut,
    WorkloadTrapped,
)
from wasmkeep.host.executor import Executor
from wasmkeep.host.server import KeepVanished, serve
from wasmkeep.sallyport.boot import Boot, Exit, Outcome
from wasmkeep.sallyport.channel import Channel, ChannelClosed, frame_payload_limit
from wasmkeep.sallyport.codec import Kind
from wasmkeep.sallyport.types import KeepManifest
from wasmkeep.workload import Workload

__all__ = [
    "ProcessKeepOptions",
    "exit_status",
    "make_boot",
    "run_in_process_keep",
    "serve_keep",
]

log = logging.getLogger(__name__)

#: How long after its own deadline the keep has to report a timeout itself.
TIMEOUT_GRACE = 1.0

_ERRORS: dict[Outcome, type[KeepError] | type[WorkloadError]] = {
    Outcome.WORKLOAD_ERROR: WorkloadError,
    Outcome.TRAPPED: WorkloadTrapped,
    Outcome.TIMED_OUT: WorkloadTimedOut,
    Outcome.KEEP_ERROR: KeepError,
}


@dataclass(frozen=True, slots=True)
class ProcessKeepOptions:
    max_memory: int
    timeout: float | None = None
    cpu_seconds: int | None = None
    test_hook: str = ""
    #: Run host and keep on one CPU: None leaves scheduling alone, -1 picks the
    #: CPU the host runs on now, n >= 0 names one.
    pin_cpu: int | None = -1
    #: The keep's backend: "process", or "snp" / "tdx" when this host is itself
    #: inside an SEV-SNP or TDX guest (its evidence then comes from the hardware).
    backend: str = "process"


class _Deadline(Exception):
    pass


class _BootDeadline(Exception):
    pass


def run_in_process_keep(
    workload: Workload, manifest: KeepManifest, executor: Executor, options: ProcessKeepOptions
) -> int:
    """Run the workload in a new process keep; returns its exit status."""
    if options.pin_cpu is not None:
        _pin(options.pin_cpu)
    host_end, keep_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = Channel(host_end.detach(), frame_payload_limit(executor.limits))
    with tempfile.TemporaryFile() as keep_stderr:
        try:
            keep = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [
                    sys.executable,
                    "-I",
                    "-m",
                    "wasmkeep.keep",
                    "--sallyport-fd",
                    str(keep_end.fileno()),
                    "--backend",
                    options.backend,
                ],
                pass_fds=(keep_end.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=keep_stderr,
                env={"LC_ALL": "C.UTF-8"},
                # Its own process group: Ctrl-C reaches the host, which decides,
                # and the launcher and the keep can be ended together.
                process_group=0,
            )
        finally:
            keep_end.close()
        log.debug("process keep started: pid %d", keep.pid)
        try:
            ending = _serve_keep(keep, channel, workload, manifest, executor, options)
        except KeepVanished:
            ending = None
        except BaseException:
            _stop(keep)
            raise
        finally:
            channel.close()
        returncode = _wait(keep)
        if ending is None:
            keep_stderr.seek(0)
            raise KeepError(_death_message(returncode, keep_stderr.read()[-2000:]))
    return exit_status(ending)


def _serve_keep(
    keep: subprocess.Popen[bytes],
    channel: Channel,
    workload: Workload,
    manifest: KeepManifest,
    executor: Executor,
    options: ProcessKeepOptions,
) -> Exit:
    boot = make_boot(workload, manifest, options)
    return serve_keep(channel, boot, executor, timeout=options.timeout, stop=lambda: _stop(keep))


def make_boot(workload: Workload, manifest: KeepManifest, options: ProcessKeepOptions) -> Boot:
    """The BOOT a keep gets: the workload, its manifest and the limits."""
    return Boot(
        name=workload.name,
        wasm=workload.wasm,
        manifest=manifest,
        max_memory=options.max_memory,
        timeout_ns=None if options.timeout is None else int(options.timeout * 1e9),
        cpu_seconds=options.cpu_seconds,
        test_hook=options.test_hook,
    )


def serve_keep(
    channel: Channel,
    boot: Boot,
    executor: Executor,
    *,
    timeout: float | None,
    stop: Callable[[], None],
    boot_deadline: float | None = None,
    until_taken: Callable[[], None] | None = None,
) -> Exit:
    """Send BOOT, answer the keep's requests until its EXIT, and return it.

    KeepVanished if the keep closes the channel first. The host enforces the
    wall-clock limit too (`stop` ends the keep), a little after the keep's
    own. `boot_deadline` (seconds) bounds how long the keep may take to take
    BOOT (a VM boots first): the send, then `until_taken` (which returns once
    the keep has read it all); KeepError, after `stop`, if it passes.
    """
    try:
        with raise_after(boot_deadline, _BootDeadline):
            channel.send(Kind.BOOT, 0, 0, boot.encode())
            if until_taken is not None:
                until_taken()
    except ChannelClosed as error:
        raise KeepVanished(str(error)) from None
    except _BootDeadline:
        stop()
        raise KeepError(f"the keep did not start within {boot_deadline:g} s") from None
    try:
        watchdog = None if timeout is None else timeout + TIMEOUT_GRACE
        with raise_after(watchdog, _Deadline):
            return serve(channel, executor)
    except _Deadline:
        stop()
        raise WorkloadTimedOut(
            f"the workload ran longer than its wall-clock limit of {timeout:g} s "
            "and was stopped (blocked in a host call)"
        ) from None


def _pin(cpu: int) -> None:
    """Host and keep on one CPU (the keep inherits the host's affinity).

    Sallyport is one request at a time: host and keep take turns and never run
    at once, so one CPU costs no parallelism, and it spares every round trip
    the wake-up of another CPU. Measured here (2 vCPUs, benchmarks/network.py):
    TLS echo through a process keep 0.38x -> 0.55x of the baseline, HTTPS
    requests 0.62x -> 0.69x, and far less variation between runs.
    """
    if cpu < 0:
        libc = ctypes.CDLL(None, use_errno=True)
        cpu = libc.sched_getcpu()
        if cpu < 0:
            return
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as error:  # a CPU outside this process's cpuset, say
        log.info("not pinning host and keep to CPU %d: %s", cpu, error)


def _stop(keep: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(keep.pid, signal.SIGKILL)
    _wait(keep)


def _wait(keep: subprocess.Popen[bytes]) -> int:
    try:
        return keep.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(keep.pid, signal.SIGKILL)
        return keep.wait()


def exit_status(ending: Exit) -> int:
    """The run's exit status for a keep's EXIT, or the error it reports."""
    if ending.outcome is Outcome.EXITED:
        return ending.status
    if ending.outcome is Outcome.HOST_VIOLATION:
        # Our own message came back: the keep saw a reply it could not trust.
        raise HostProtocolViolation(ending.message.removeprefix("host protocol violation: "))
    error = _ERRORS[ending.outcome]
    raise error(ending.message)


def _death_message(returncode: int, stderr: bytes) -> str:
    """Why the keep ended without saying how, as far as the host can tell."""
    if returncode < 0 or returncode > 128:
        number = -returncode if returncode < 0 else returncode - 128
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        text = f"the keep process died: killed by {name}"
        if number == signal.SIGSYS:
            text += " (it made a system call outside its seccomp allow-list)"
        elif number == signal.SIGKILL:
            text += " (out of memory, its CPU limit, or killed from outside)"
        elif number == signal.SIGXCPU:
            text += " (its CPU-time limit)"
    else:
        text = f"the keep process ended with status {returncode} before reporting"
    detail = stderr.decode("utf-8", "replace").strip().splitlines()
    if detail:
        text += f"; it said: {detail[-1]}"
    return text
