"""The process keep: the keep runtime in a process of its own, locked down.

`python -m wasmkeep.keep --sallyport-fd N [--backend NAME]` runs :func:`main`.
The host started it with one end of a socketpair; everything the keep receives
and sends goes through it, as `keep/session.py` describes. The backend is
``process``, or ``snp`` / ``tdx`` when wasmkeep itself runs inside an SEV-SNP
or TDX guest (`wasmkeep run --backend snp`): the same process keep, whose
evidence must then come from the hardware (`keep/evidence.py` never falls back
to software evidence for them). What is particular to a process:

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

import dataclasses
import os
import signal
import sys
from typing import NoReturn

from wasmkeep.keep import lockdown
from wasmkeep.keep.session import KeepPlatform, run_keep
from wasmkeep.sallyport.channel import Channel, frame_payload_limit

__all__ = ["PROCESS_BACKENDS", "PROCESS_KEEP", "main", "process_platform"]

#: The backends a process keep can be: on its own, or inside a confidential VM.
PROCESS_BACKENDS = ("process", "snp", "tdx")
_USAGE = (
    "usage: python -m wasmkeep.keep --sallyport-fd FD [--backend process|snp|tdx] "
    "(started by wasmkeep run)"
)


def _leave_files() -> None:
    _silence_stdio()
    lockdown.empty_root()


def _seal(channel_fd: int, memory_bytes: int, cpu_seconds: int | None) -> None:
    lockdown.seal(channel_fd, memory_bytes=memory_bytes, cpu_seconds=cpu_seconds)


def main(argv: list[str] | None = None) -> NoReturn:
    args = sys.argv[1:] if argv is None else argv
    parsed = _parse(args)
    if parsed is None:
        print(_USAGE, file=sys.stderr)
        os._exit(2)
    fd, backend = parsed
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host decides when the keep stops
    run_keep(Channel(fd, frame_payload_limit()), process_platform(backend))
    os._exit(0)


def _parse(args: list[str]) -> tuple[int, str] | None:
    """(sallyport fd, backend) from ``--sallyport-fd N [--backend NAME]``."""
    if len(args) not in (2, 4) or args[0] != "--sallyport-fd" or not args[1].isdigit():
        return None
    backend = "process"
    if len(args) == 4:
        if args[2] != "--backend" or args[3] not in PROCESS_BACKENDS:
            return None
        backend = args[3]
    return int(args[1]), backend


def process_platform(backend: str) -> KeepPlatform:
    """The process keep as `backend` ("process", "snp" or "tdx")."""
    if backend not in PROCESS_BACKENDS:
        raise ValueError(f"a process keep is one of {', '.join(PROCESS_BACKENDS)}, not {backend!r}")
    return dataclasses.replace(PROCESS_KEEP, backend=backend)


def _silence_stdio() -> None:
    """fds 0-2 were the host's: make them /dev/null before the file system goes."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


PROCESS_KEEP = KeepPlatform(
    backend="process",
    isolate=lockdown.isolate,
    leave_files=_leave_files,
    seal=_seal,
)
