"""Which backends this machine supports, probed for real: `wasmkeep platform info`.

For each backend (nil, process, vm, snp, tdx, sgx) :func:`probe_platform` runs a
list of checks, each passed or failed with a one-line reason, and says whether
the machine supports the backend and whether this version implements it.
:func:`most_isolating_available` picks the default backend from those reports.

The checks ask the kernel rather than trust a file's presence: a syscall, an
ioctl, a child process that unshares namespaces or runs a KVM guest. Paths are
looked up under a `root` and the kernel-facing probes come from a replaceable
:class:`Probes` table, so tests can probe a fake machine.
"""

from __future__ import annotations

from wasmkeep.host.platform._backends import probe_platform
from wasmkeep.host.platform._probes import ProbeResult, Probes
from wasmkeep.host.platform._report import (
    BACKENDS,
    BackendReport,
    Check,
    most_isolating_available,
    platform_document,
)

__all__ = [
    "BACKENDS",
    "BackendReport",
    "Check",
    "ProbeResult",
    "Probes",
    "most_isolating_available",
    "platform_document",
    "probe_platform",
]
