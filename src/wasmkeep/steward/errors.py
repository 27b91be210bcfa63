"""Errors of the Steward.

::

    WasmkeepError
    └── StewardError        the Steward cannot start or serve: an address in use,
        │                   a bad option
        └── CaError         the CA's key or certificate cannot be made, read or used:
                            a missing or wrong passphrase, a key that does not match
                            its certificate, a certificate that is no CA

A CSR that is refused is not an error: it is a decision, with the failed checks.
A malformed CSR is an :class:`~wasmkeep.attestation.errors.EvidenceFormatError`.
"""

from __future__ import annotations

from wasmkeep.errors import WasmkeepError

__all__ = ["CaError", "StewardError"]


class StewardError(WasmkeepError):
    """The Steward cannot start or serve."""


class CaError(StewardError):
    """The CA's key or certificate cannot be made, read or used."""
