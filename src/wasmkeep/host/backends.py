"""Which backend `wasmkeep run` uses when none is named.

`wasmkeep platform info` probes everything, in child processes (~0.15 s);
`run` only needs to know, fast, whether the process keep can lock itself down
here, so it asks the kernel the cheap questions. If the keep then fails to
lock down anyway, it says so and the run stops: wasmkeep never falls back to
less isolation on its own.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

__all__ = ["IMPLEMENTED_BACKENDS", "process_keep_unsupported"]

#: Backends this version can run, most isolating first.
IMPLEMENTED_BACKENDS = ("process", "vm", "nil")

_SYS_LANDLOCK_CREATE_RULESET = 444
_PR_GET_SECCOMP = 21


def process_keep_unsupported(proc: Path = Path("/proc")) -> str | None:
    """Why the process keep cannot run here, or None if it can."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, 1) < 1:
        return "Landlock is not available in this kernel"
    if libc.prctl(_PR_GET_SECCOMP, 0, 0, 0, 0) < 0:
        return "seccomp is not available in this kernel"
    try:
        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return "libseccomp is not installed (Debian: libseccomp2)"
    if _read_int(proc / "sys/user/max_user_namespaces", 1) == 0:
        return "user namespaces are disabled (user.max_user_namespaces = 0)"
    if os.getuid() != 0:
        if _read_int(proc / "sys/kernel/unprivileged_userns_clone", 1) == 0:
            return "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone)"
        if _read_int(proc / "sys/kernel/apparmor_restrict_unprivileged_userns", 0) == 1:
            return "AppArmor restricts unprivileged user namespaces"
    return None


def _read_int(path: Path, default: int) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return default
