"""What a verification found: the claims the evidence makes, and every check
made on it, each passed or failed with its reason."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["Check", "Claims", "Tee", "Verdict"]


class Tee(enum.StrEnum):
    """The kind of trusted execution environment the evidence comes from."""

    SNP = "snp"
    TDX = "tdx"
    SGX = "sgx"
    #: A keep without TEE hardware (nil, process, vm without SNP/TDX): insecure.
    SOFTWARE = "software"


@dataclass(frozen=True, slots=True)
class Check:
    """One verification step: its name (stable, for policies and tests), whether
    it passed, and why (one line)."""

    name: str
    passed: bool
    detail: str

    def __post_init__(self) -> None:
        if "\n" in self.detail:
            raise ValueError("a check's detail is one line")


@dataclass(frozen=True, slots=True)
class Claims:
    """What the evidence says about the keep, once its signatures are checked.

    `measurement` is the launch measurement (SNP MEASUREMENT, TDX MRTD, SGX
    MRENCLAVE); `report_data` the 64 bytes the keep bound into the evidence
    (its public key and workload digest); `fields` every other field by name,
    as the vendor names it (hex strings for byte fields).
    """

    tee: Tee
    measurement: bytes
    report_data: bytes
    debug: bool
    tcb_status: str | None = None
    advisories: tuple[str, ...] = ()
    fields: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))


@dataclass(frozen=True, slots=True)
class Verdict:
    """The checks made, in order, and the claims if the evidence could be read.

    Accepted only if there are checks and every one passed.
    """

    claims: Claims | None
    checks: tuple[Check, ...]

    @property
    def accepted(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if not check.passed)

    def plus(self, checks: Iterable[Check]) -> Verdict:
        """This verdict with more checks (a policy's) after its own."""
        return Verdict(self.claims, (*self.checks, *checks))
