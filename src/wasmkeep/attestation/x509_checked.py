"""Certificates and CRLs read in full when loaded.

pyca/cryptography parses names, extensions and revocation entries lazily, so
a damaged field would otherwise surface as a bare ValueError deep inside a
verifier. Reading every part a verifier uses at load time turns it into an
EvidenceFormatError that names the input.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from wasmkeep.attestation.errors import EvidenceFormatError

__all__ = ["X509_PARSE_ERRORS", "checked_certificate", "load_crl"]

#: What pyca raises for malformed X.509 input, beyond ValueError.
X509_PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    UnsupportedAlgorithm,
    TypeError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)

#: How much of pyca's parse error is worth showing.
_DETAIL = 120


def checked_certificate(certificate: x509.Certificate, what: str) -> x509.Certificate:
    """`certificate` with the parts verification reads parsed now.

    EvidenceFormatError names `what` if one of them is malformed.
    """
    try:
        _ = (
            certificate.subject,
            certificate.issuer,
            certificate.extensions,
            certificate.not_valid_before_utc,
            certificate.not_valid_after_utc,
            certificate.signature_algorithm_oid,
        )
    except X509_PARSE_ERRORS as error:
        raise EvidenceFormatError(f"{what} is not valid: {str(error)[:_DETAIL]}") from None
    return certificate


def load_crl(data: bytes, what: str, *, pem: bool = False) -> x509.CertificateRevocationList:
    """A CRL (DER, or PEM if `pem`) with every part verification reads parsed now."""
    try:
        crl = x509.load_pem_x509_crl(data) if pem else x509.load_der_x509_crl(data)
        _ = (
            crl.issuer,
            crl.last_update_utc,
            crl.next_update_utc,
            crl.extensions,
            crl.signature_algorithm_oid,
        )
        for entry in crl:
            _ = (entry.serial_number, entry.revocation_date_utc, entry.extensions)
    except X509_PARSE_ERRORS as error:
        raise EvidenceFormatError(f"{what}: not a valid CRL: {str(error)[:_DETAIL]}") from None
    return crl
