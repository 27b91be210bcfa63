"""Errors of the attestation package.

::

    WasmkeepError
    └── AttestationError
        ├── EvidenceFormatError   bytes that are not the evidence they claim to be
        │                         (the message names the field and offset)
        └── PolicyError           a policy file that is not valid

A verification that runs to its end does not raise: it returns a Verdict whose
failed checks say why the evidence is not accepted.
"""

from __future__ import annotations

from wasmkeep.errors import WasmkeepError

__all__ = ["AttestationError", "EvidenceFormatError", "PolicyError"]


class AttestationError(WasmkeepError):
    """Base of the attestation package's errors."""

    exit_status = 2


class EvidenceFormatError(AttestationError):
    """Malformed evidence: truncated, oversized, an unknown version, a bad field."""


class PolicyError(AttestationError):
    """An invalid policy: the message names the file, the key and what was expected."""
