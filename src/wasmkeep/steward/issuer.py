"""The certificates the Steward issues to keeps whose CSR it accepted.

A certificate is short-lived (12 hours by default; a keep asks again when it
restarts), has a random serial, and carries:

- subject ``CN=wasmkeep <backend> keep`` (or ``enarx <backend> keep``): never the
  CSR's subject, which the keep chose and a client might read as a host name;
- SubjectAlternativeName: the DNS names and IP addresses the CSR asked for,
  each checked (:func:`check_names`);
- ExtendedKeyUsage serverAuth and clientAuth, KeyUsage digitalSignature,
  BasicConstraints cA false, Subject and Authority Key Identifiers;
- the verified claims under :data:`~wasmkeep.attestation.keep_csr.CLAIMS_OID`
  (non-critical): a UTF8String holding one compact JSON object::

      {"tee": "snp", "backend": "snp", "measurement": "<hex>",
       "workload_digest": "sha256:<hex>" | null, "tcb_status": "UpToDate" | null,
       "debug": false, "evidence": "snp-report", "issued_at": "2026-11-27T08:00:00Z"}

  `tee` is "software" for keeps no hardware protects (with `debug` true): a
  client that requires a TEE must check it.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wasmkeep.attestation import der
from wasmkeep.attestation.appraise import Appraisal
from wasmkeep.attestation.keep_csr import CLAIMS_OID
from wasmkeep.attestation.verdict import Check
from wasmkeep.steward.ca import BACKDATE, LEAF_KEY_USAGE, CertificateAuthority
from wasmkeep.steward.limits import DEFAULT_STEWARD_LIMITS, StewardLimits

__all__ = [
    "DEFAULT_LIFETIME",
    "IssuedCertificate",
    "certificate_claims",
    "check_key",
    "check_names",
    "issue",
    "name_text",
]

#: How long a certificate is valid by default: hours, not Enarx's 28 days.
DEFAULT_LIFETIME = datetime.timedelta(hours=12)

# One DNS label (RFC 1035 2.3.1, with RFC 1123 2.1's leading digits): letters,
# digits and inner hyphens, 1 to 63 characters.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_SAFE_CURVES = ("secp256r1", "secp384r1", "secp521r1")
_MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate issued to a keep, its CA's certificate, and the claims it carries."""

    certificate: x509.Certificate
    ca_certificate: x509.Certificate
    claims: Mapping[str, object]

    @property
    def chain(self) -> tuple[x509.Certificate, x509.Certificate]:
        """The chain in TLS order: the keep's certificate, then the CA's."""
        return (self.certificate, self.ca_certificate)

    def chain_pem(self) -> str:
        return "".join(
            item.public_bytes(serialization.Encoding.PEM).decode("ascii") for item in self.chain
        )

    def pkipath_der(self) -> bytes:
        """The chain as Enarx's Steward answers it: a DER ``SEQUENCE OF Certificate``
        in PkiPath order (RFC 6066, 10.1: the CA first, the keep's certificate last)."""
        return der.encode_sequence(
            self.ca_certificate.public_bytes(serialization.Encoding.DER),
            self.certificate.public_bytes(serialization.Encoding.DER),
        )


def name_text(name: x509.GeneralName) -> str:
    """A SubjectAlternativeName entry as people write it (for logs and the API)."""
    if isinstance(name, x509.DNSName | x509.IPAddress):
        return str(name.value)
    return f"{type(name).__name__}({str(name.value)[:60]!r})"


def _dns_problem(name: str, limits: StewardLimits) -> str | None:
    if not name.isascii() or not name.isprintable():
        return "not ASCII (an internationalized name must be in its xn-- form)"
    if len(name) > limits.max_dns_name:
        return f"longer than {limits.max_dns_name} characters"
    if "*" in name:
        return "a wildcard: a keep gets certificates for exact names only"
    labels = name.lower().split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            return f"the label {label[:63]!r} is not letters, digits and inner hyphens (1-63)"
    if labels[-1].isdigit():
        return "all digits at the end: an IP address goes in an IP address entry"
    return None


def check_names(
    names: Sequence[x509.GeneralName], limits: StewardLimits = DEFAULT_STEWARD_LIMITS
) -> tuple[Check, tuple[x509.GeneralName, ...]]:
    """The ``requested_names`` check on the CSR's SubjectAlternativeName entries,
    and the names to issue (DNS names lower-cased, duplicates dropped).

    Only DNS names (RFC 1035 host names, no wildcards) and IP addresses (not
    the unspecified address) are issued, at most ``limits.max_names``; any
    other entry refuses the CSR, naming it.
    """
    if len(names) > limits.max_names:
        return (
            Check(
                "requested_names",
                False,
                f"{len(names)} names asked for, more than the {limits.max_names} a "
                "certificate may carry",
            ),
            (),
        )
    accepted: dict[str, x509.GeneralName] = {}
    for name in names:
        if isinstance(name, x509.DNSName):
            problem = _dns_problem(name.value, limits)
            if problem is not None:
                return (
                    Check("requested_names", False, f"DNS name {name.value[:80]!r}: {problem}"),
                    (),
                )
            text = name.value.lower()
            accepted.setdefault(text, x509.DNSName(text))
        elif isinstance(name, x509.IPAddress):
            address = name.value
            if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
                return (
                    Check("requested_names", False, f"{address}: a network, not an address"),
                    (),
                )
            if address.is_unspecified:
                return (
                    Check("requested_names", False, f"{address} is the unspecified address"),
                    (),
                )
            accepted.setdefault(str(address), name)
        else:
            return (
                Check(
                    "requested_names",
                    False,
                    f"{name_text(name)}: only DNS names and IP addresses are issued",
                ),
                (),
            )
    if not accepted:
        return Check("requested_names", True, "no names asked for: none issued"), ()
    shown = ", ".join(list(accepted)[:8]) + (" ..." if len(accepted) > 8 else "")
    return Check("requested_names", True, f"{len(accepted)} names: {shown}"), tuple(
        accepted.values()
    )


def check_key(appraisal: Appraisal) -> Check:
    """The ``csr_key`` check: a key strong enough to certify (ECDSA on a NIST
    curve, RSA of 2048 bits or more, Ed25519, Ed448)."""
    key = appraisal.csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name in _SAFE_CURVES:
            return Check("csr_key", True, f"ECDSA {key.curve.name}")
        return Check("csr_key", False, f"ECDSA on {key.curve.name[:40]} is not certified")
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size >= _MIN_RSA_BITS:
            return Check("csr_key", True, f"RSA {key.key_size} bits")
        return Check("csr_key", False, f"RSA {key.key_size} bits: at least {_MIN_RSA_BITS}")
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return Check("csr_key", True, type(key).__name__.removesuffix("PublicKey"))
    return Check("csr_key", False, f"a {type(key).__name__} key is not certified")


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def certificate_claims(appraisal: Appraisal, issued_at: datetime.datetime) -> dict[str, object]:
    """The claims a certificate carries for an accepted appraisal (module docstring)."""
    claims = appraisal.claims
    if claims is None:
        raise ValueError("an appraisal without claims is never issued a certificate")
    return {
        "tee": claims.tee.value,
        "backend": appraisal.backend,
        "measurement": claims.measurement.hex(),
        "workload_digest": appraisal.workload_digest,
        "tcb_status": claims.tcb_status,
        "debug": claims.debug,
        "evidence": appraisal.form.value,
        "issued_at": _iso(issued_at),
    }


def issue(
    appraisal: Appraisal,
    ca: CertificateAuthority,
    *,
    names: Sequence[x509.GeneralName],
    now: datetime.datetime,
    lifetime: datetime.timedelta = DEFAULT_LIFETIME,
) -> IssuedCertificate:
    """A certificate for the CSR of an accepted `appraisal`, with `names` (as
    :func:`check_names` returned them), valid from `now` for `lifetime` (and
    never beyond the CA's own validity)."""
    if not appraisal.accepted:
        raise ValueError("a refused appraisal is never issued a certificate")
    claims = certificate_claims(appraisal, now)
    vendor = "enarx" if appraisal.form.enarx else "wasmkeep"
    key = appraisal.csr.public_key()
    if not isinstance(
        key,
        ec.EllipticCurvePublicKey
        | rsa.RSAPublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey,
    ):
        raise TypeError("the CSR's key is of a kind never certified (see check_key)")
    claims_json = json.dumps(claims, separators=(",", ":")).encode("utf-8")
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [x509.NameAttribute(NameOID.COMMON_NAME, f"{vendor} {appraisal.backend} keep")]
            )
        )
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + lifetime, ca.not_valid_after))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            LEAF_KEY_USAGE,
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier(CLAIMS_OID), der.encode(der.UTF8_STRING, claims_json)
            ),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = ca.sign(builder)
    return IssuedCertificate(certificate, ca.certificate, MappingProxyType(claims))
