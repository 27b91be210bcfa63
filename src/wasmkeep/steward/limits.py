"""Hard limits on what the Steward accepts from the network, kept in one place."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from wasmkeep.attestation.appraise import MAX_CSR_SIZE

__all__ = ["DEFAULT_STEWARD_LIMITS", "StewardLimits"]

KiB = 1024


@dataclass(frozen=True, slots=True)
class StewardLimits:
    #: Largest request body read, in bytes: a CSR (at most MAX_CSR_SIZE) as
    #: base64 in JSON is 4/3 of it. A larger body is refused (413) before it
    #: is read, when its Content-Length says so, or as soon as it passes this.
    max_body: int = MAX_CSR_SIZE * 4 // 3 + 4 * KiB
    #: Names (DNS names, IP addresses) one certificate may carry.
    max_names: int = 16
    #: Longest DNS name, in characters (RFC 1035, 2.3.4: 253 without the root dot).
    max_dns_name: int = 253
    #: The longest lifetime a certificate may be issued for.
    max_lifetime: datetime.timedelta = datetime.timedelta(days=30)
    #: The shortest (a certificate that expires before it reaches its keep is useless).
    min_lifetime: datetime.timedelta = datetime.timedelta(minutes=5)

    def __post_init__(self) -> None:
        if self.max_body < MAX_CSR_SIZE:
            raise ValueError("max_body must hold the largest CSR")
        if not 0 < self.max_names <= 1024:
            raise ValueError("max_names must be 1 to 1024")
        if not self.min_lifetime <= self.max_lifetime:
            raise ValueError("min_lifetime must not exceed max_lifetime")


DEFAULT_STEWARD_LIMITS = StewardLimits()
