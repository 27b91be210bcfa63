"""What a client checks of a keep's certificate: who issued it, and what it says the keep is.

A Steward-issued certificate carries the claims the Steward verified (the
:data:`~wasmkeep.attestation.keep_csr.CLAIMS_OID` extension, written by
:func:`~wasmkeep.steward.issuer.issue`). :func:`inspect_certificate` reads a
certificate (PEM, possibly a whole chain, or DER), decodes its claims, and
makes the checks a client can make on its own:

- ``issued_by_ca``: the certificate chains to the CA the client trusts (RFC
  5280 path validation by pyca/cryptography, with the chain's other
  certificates as intermediates), at the time given;
- ``valid_now``: the time is inside its validity;
- ``claims``: it carries the claims extension, well formed;
- ``workload_digest``: the claims name the workload the client expects.

A check the caller gave nothing for (no CA, no workload) is not made, and
says so. Nothing here trusts the certificate's own word: the claims mean
something only when ``issued_by_ca`` passed.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from cryptography import x509
from cryptography.x509 import verification

from wasmkeep.attestation import der
from wasmkeep.attestation.errors import EvidenceFormatError
from wasmkeep.attestation.keep_csr import CLAIMS_OID
from wasmkeep.attestation.verdict import Check
from wasmkeep.attestation.x509_checked import X509_PARSE_ERRORS

__all__ = [
    "CLAIM_FIELDS",
    "MAX_CERTIFICATE_FILE",
    "Inspection",
    "inspect_certificate",
    "read_certificates",
    "read_claims",
]

#: Largest certificate file read: a chain of a few certificates, with room to spare.
MAX_CERTIFICATE_FILE = 1024 * 1024
#: Longest claims extension read (a Steward writes about 300 bytes).
_MAX_CLAIMS = 16 * 1024
#: The claims a Steward writes, and the JSON types each may have.
CLAIM_FIELDS: Mapping[str, tuple[type, ...]] = MappingProxyType(
    {
        "tee": (str,),
        "backend": (str,),
        "measurement": (str,),
        "workload_digest": (str, type(None)),
        "tcb_status": (str, type(None)),
        "debug": (bool,),
        "evidence": (str,),
        "issued_at": (str,),
    }
)
_PEM_MARK = b"-----BEGIN CERTIFICATE-----"


def read_certificates(data: bytes, what: str = "the certificate file") -> list[x509.Certificate]:
    """Every certificate in `data` (PEM, one or more; or one DER certificate), in order."""
    if len(data) > MAX_CERTIFICATE_FILE:
        raise EvidenceFormatError(f"{what} is larger than {MAX_CERTIFICATE_FILE} bytes")
    try:
        if _PEM_MARK in data:
            return list(x509.load_pem_x509_certificates(data))
        if data[:1] == b"\x30":
            return [x509.load_der_x509_certificate(data)]
    except X509_PARSE_ERRORS as error:
        raise EvidenceFormatError(f"{what}: not a readable certificate ({error})") from None
    raise EvidenceFormatError(f"{what} holds no certificate (expected PEM or DER)")


def read_claims(certificate: x509.Certificate) -> dict[str, object] | None:
    """The claims a Steward wrote into `certificate`, or None if it carries none.

    EvidenceFormatError if the extension is there but is not the one
    JSON object with the known fields and types a Steward writes.
    """
    try:
        extension = certificate.extensions.get_extension_for_oid(x509.ObjectIdentifier(CLAIMS_OID))
    except x509.ExtensionNotFound:
        return None
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise EvidenceFormatError("the claims extension is not the Steward's")
    if len(value.value) > _MAX_CLAIMS:
        raise EvidenceFormatError(f"the claims extension is longer than {_MAX_CLAIMS} bytes")
    try:
        text = der.parse_der(value.value, "UTF8String").as_utf8("UTF8String")
    except EvidenceFormatError as error:
        raise EvidenceFormatError(f"the claims extension is no UTF8String: {error}") from None
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        raise EvidenceFormatError("the claims extension is not JSON") from None
    if not isinstance(document, dict):
        raise EvidenceFormatError("the claims extension is not a JSON object")
    for name, types in CLAIM_FIELDS.items():
        if name not in document:
            raise EvidenceFormatError(f"the claims extension has no {name!r}")
        if not isinstance(document[name], types):
            raise EvidenceFormatError(f"the claims extension's {name!r} has the wrong type")
    return document


@dataclass(frozen=True, slots=True)
class Inspection:
    """A certificate, its claims (None if it carries none), and the client's checks."""

    certificate: x509.Certificate
    claims: Mapping[str, object] | None
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _issued_by(
    chain: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate], now: datetime.datetime
) -> Check:
    if not anchors:
        return Check("issued_by_ca", False, "not checked: no CA given to check against")
    builder = verification.PolicyBuilder().store(verification.Store(list(anchors))).time(now)
    try:
        # The client verifier: the path and its signatures, validity, key
        # usage, extended key usage clientAuth (a keep's has both), no name.
        builder.build_client_verifier().verify(chain[0], list(chain[1:]))
    except verification.VerificationError as error:
        return Check("issued_by_ca", False, f"does not chain to the CA: {str(error)[:200]}")
    issuer = chain[0].issuer.rfc4514_string()[:120]
    return Check("issued_by_ca", True, f"chains to the CA ({issuer}) at {_iso(now)}")


def _valid_at(certificate: x509.Certificate, now: datetime.datetime) -> Check:
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if now < start:
        return Check("valid_now", False, f"not valid before {_iso(start)}")
    if now > end:
        return Check("valid_now", False, f"expired at {_iso(end)}")
    left = end - now
    hours, seconds = divmod(int(left.total_seconds()), 3600)
    return Check("valid_now", True, f"until {_iso(end)} ({hours} h {seconds // 60} min left)")


def inspect_certificate(
    chain: Sequence[x509.Certificate],
    *,
    anchors: Sequence[x509.Certificate] = (),
    workload_digest: str | None = None,
    now: datetime.datetime,
) -> Inspection:
    """Inspect `chain[0]` (the others are intermediates) as a client would.

    `anchors`: the CA certificates to trust (none: ``issued_by_ca`` fails,
    saying it was not checked); `workload_digest` ("sha256:<hex>"): the
    workload the claims must name (None: not checked).
    """
    if not chain:
        raise ValueError("no certificate to inspect")
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    certificate = chain[0]
    checks = [_issued_by(chain, anchors, now), _valid_at(certificate, now)]
    try:
        claims = read_claims(certificate)
    except EvidenceFormatError as error:
        claims = None
        checks.append(Check("claims", False, str(error)))
    else:
        if claims is None:
            checks.append(Check("claims", False, "no claims: not a certificate a Steward issued"))
        else:
            checks.append(
                Check("claims", True, f"{claims['tee']} keep, backend {claims['backend']}")
            )
    if workload_digest is not None:
        named = None if claims is None else claims.get("workload_digest")
        checks.append(
            Check(
                "workload_digest",
                named == workload_digest,
                f"the claims name {named or 'no workload'}"
                + ("" if named == workload_digest else f", not {workload_digest}"),
            )
        )
    return Inspection(
        certificate, None if claims is None else MappingProxyType(claims), tuple(checks)
    )
