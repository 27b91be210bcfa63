"""Which backend `wasmkeep run` uses when none is named.

`wasmkeep platform info` probes everything, in child processes (~0.15 s);
`run` only needs to know, fast, whether the process keep can lock itself down
here, so it asks the kernel the cheap questions. If the keep then fails to
lock down anyway, it says so and the run stops: wasmkeep never falls back to
less isolation on its own.

`--backend snp` and `--backend tdx` are asked for by name only, and checked
with the platform probes before the keep starts (`confidential_guest_unsupported`).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wasmkeep.host.platform import Probes

__all__ = [
    "IMPLEMENTED_BACKENDS",
    "confidential_guest",
    "confidential_guest_unsupported",
    "process_keep_unsupported",
]

#: Backends this version can run, most isolating first. snp and tdx are a
#: process keep inside an SEV-SNP or TDX guest, with hardware evidence.
IMPLEMENTED_BACKENDS = ("snp", "tdx", "process", "vm", "nil")
_GUESTS = {"snp": "an SEV-SNP", "tdx": "a TDX"}

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


def confidential_guest(root: Path = Path("/")) -> str | None:
    """The guest this machine looks like, "snp" or "tdx" (its device is there),
    or None: the cheap question `run` asks for its default, so that inside a
    guest the keep shows hardware evidence. `--backend` checks fully."""
    for kind, device in (("snp", "dev/sev-guest"), ("tdx", "dev/tdx_guest")):
        if (root / device).exists():
            return kind
    return None


def confidential_guest_unsupported(
    kind: str, root: Path = Path("/"), probes: Probes | None = None
) -> str | None:
    """Why `--backend kind` ("snp", "tdx") cannot run here, or None if it can.

    It runs the workload in place, so this machine must be such a guest: its
    device (/dev/sev-guest, /dev/tdx_guest) or a configfs-tsm report provider
    of its kind must be there, as `wasmkeep platform info` probes them. `root`
    and `probes` are for tests.
    """
    from wasmkeep.host.platform import probe_platform

    report = next(report for report in probe_platform(root, probes) if report.name == kind)
    if report.available:
        return None
    guest = {check.name: check for check in report.checks if check.name.startswith("guest: ")}
    device = next(check for name, check in guest.items() if name.startswith("guest: /dev/"))
    interface = guest["guest: configfs-tsm report interface"]
    tsm = interface if not interface.passed else guest["guest: configfs-tsm provider"]
    return f"not inside {_GUESTS[kind]} guest: {device.detail}; configfs-tsm: {tsm.detail}"


def _read_int(path: Path, default: int) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return default
