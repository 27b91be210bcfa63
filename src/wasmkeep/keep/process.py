"""The process keep: the keep runtime in a process of its own, locked down.

`python -m wasmkeep.keep --sallyport-fd N` runs :func:`main`. The host started
it with one end of a socketpair; everything the keep receives and sends goes
through it, as `keep/session.py` describes. What is particular to a process:

- isolate: enter fresh namespaces (`lockdown.isolate`; this process becomes
  PID 1 of a new PID namespace);
- leave the files: fds 0-2 become /dev/null, and the file system is swapped
  for an empty read-only one (`lockdown.empty_root`);
- seal: limits, no capabilities, no_new_privs, Landlock, seccomp.

Every module the keep will need is imported up front: once the file system is
gone there is nothing to import from, and once sealed, opening a file kills
the process.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import NoReturn

from wasmkeep.errors import WorkloadError
from wasmkeep.keep import lockdown
from wasmkeep.keep.session import KeepPlatform, run_keep
from wasmkeep.sallyport.channel import Channel, frame_payload_limit

__all__ = ["PROCESS_KEEP", "main"]


def _leave_files() -> None:
    _silence_stdio()
    lockdown.empty_root()


def _seal(channel_fd: int, memory_bytes: int, cpu_seconds: int | None) -> None:
    lockdown.seal(channel_fd, memory_bytes=memory_bytes, cpu_seconds=cpu_seconds)


def main(argv: list[str] | None = None) -> NoReturn:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "--sallyport-fd" or not args[1].isdigit():
        print(
            "usage: python -m wasmkeep.keep --sallyport-fd FD (started by wasmkeep run)",
            file=sys.stderr,
        )
        os._exit(2)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host decides when the keep stops
    run_keep(Channel(int(args[1]), frame_payload_limit()), PROCESS_KEEP)
    os._exit(0)


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


PROCESS_KEEP = KeepPlatform(
    backend="process",
    isolate=lockdown.isolate,
    leave_files=_leave_files,
    seal=_seal,
    test_hook=_test_hook,
)
