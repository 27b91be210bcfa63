"""What `platform info` reports: checks, backend reports, the default backend.

Pure data, no I/O: the probes fill these in, the CLI prints them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BACKENDS",
    "BackendReport",
    "Check",
    "most_isolating_available",
    "platform_document",
]

#: Every backend, in the order `platform info` lists them.
BACKENDS = ("nil", "process", "vm", "snp", "tdx", "sgx")

#: Accelerators the vm backend can use: KVM runs guests on the CPU, TCG emulates it.
ACCELERATORS = ("kvm", "tcg")

#: Version of the `platform info --json` document; raised on incompatible changes.
DOCUMENT_VERSION = 1


@dataclass(frozen=True)
class Check:
    """One probe's outcome: a short name, pass or fail, and a one-line reason."""

    name: str
    passed: bool
    detail: str

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a check needs a name")
        if "\n" in self.detail or "\r" in self.detail:
            raise ValueError(f"check {self.name!r}: the detail must be one line")


@dataclass(frozen=True)
class BackendReport:
    """Whether one backend can run here, and the checks that say so.

    `available` means this machine supports the backend; `implemented` means
    this version of wasmkeep can use it. Only a backend that is both can run a
    workload. `accelerator` is set for the vm backend only: "kvm", "tcg", or
    None when no QEMU is found.
    """

    name: str
    available: bool
    implemented: bool
    checks: tuple[Check, ...]
    isolation: str
    summary: str
    accelerator: str | None = None

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise ValueError(f"unknown backend {self.name!r}")
        if self.accelerator is not None and (
            self.name != "vm" or self.accelerator not in ACCELERATORS
        ):
            raise ValueError(f"backend {self.name!r} cannot have accelerator {self.accelerator!r}")
        if self.name == "vm" and self.available != (self.accelerator is not None):
            raise ValueError("the vm backend is available exactly when it has an accelerator")

    @property
    def usable(self) -> bool:
        """This machine supports the backend and this version implements it."""
        return self.available and self.implemented


# Most isolating first. A vm on TCG ranks below process: both keep the workload
# out of the host process and neither hides it from the host's root, but TCG
# emulates every instruction and is one to two orders of magnitude slower. It
# still ranks above nil, which does not isolate at all.
# The vm backend boots a VM for every run (and builds its image the first
# time), so `run` takes it only when asked: it ranks after process even with KVM.
_PREFERENCE = ("snp", "tdx", "sgx", "process", "vm:kvm", "vm:tcg", "nil")


def most_isolating_available(reports: Iterable[BackendReport]) -> str:
    """The name of the most isolating backend that can run a workload here.

    Only backends both available and implemented are considered, in the order
    snp, tdx, sgx, process, vm with KVM, vm with TCG, nil. Raises ValueError if
    none is (nil always is, so this means the reports are incomplete).
    """
    ranks = {choice: rank for rank, choice in enumerate(_PREFERENCE)}
    best: tuple[int, str] | None = None
    for report in reports:
        if not report.usable:
            continue
        key = f"vm:{report.accelerator}" if report.name == "vm" else report.name
        rank = ranks.get(key)
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, report.name)
    if best is None:
        raise ValueError("no backend is both available and implemented")
    return best[1]


def platform_document(reports: Iterable[BackendReport]) -> dict[str, Any]:
    """The `platform info --json` document: stable keys, every backend alike."""
    reports = list(reports)
    return {
        "version": DOCUMENT_VERSION,
        "backends": [
            {
                "name": report.name,
                "available": report.available,
                "implemented": report.implemented,
                "accelerator": report.accelerator,
                "isolation": report.isolation,
                "summary": report.summary,
                "checks": [
                    {"name": check.name, "passed": check.passed, "detail": check.detail}
                    for check in report.checks
                ],
            }
            for report in reports
        ],
        "default_backend": most_isolating_available(reports),
    }
