"""The SGX evidence extension of Enarx keep CSRs (OID 1.3.6.1.4.1.58270.1.2).

An Enarx SGX keep puts its evidence in a non-critical extension request of
its CSR; the extension's value is (Enarx steward, crates/attestation/src/sgx)::

    SgxEvidence ::= SEQUENCE {
        quote   OCTET STRING,                 -- a v3 DCAP quote
        crls    SEQUENCE { SEQUENCE OF SEQUENCE { url UTF8String, crl CertificateList } },
        tcb     SEQUENCE {
            certs   SEQUENCE OF Certificate,  -- TCB Info issuer chain: TCB Signing, root
            report  OCTET STRING              -- the PCS TCB Info response body
        }
    }

and the quote's report_data[0:32] is SHA-256 of the CSR's SubjectPublicKeyInfo
(DER). The CRLs are the root CA's and the PCK CAs' (Processor, Platform): the
parse keeps the root CA's and the one of the CA that issued the quote's PCK.
"""

from __future__ import annotations

import hashlib

from cryptography import x509

from wasmkeep.attestation import der
from wasmkeep.attestation.dcap_collateral import Collateral, load_crl, parse_tcb_info
from wasmkeep.attestation.dcap_limits import (
    MAX_CHAIN_CERTIFICATES,
    MAX_ENARX_CRLS,
    MAX_ENARX_EXTENSION_BYTES,
)
from wasmkeep.attestation.dcap_quote import Quote, load_certificate, parse_quote
from wasmkeep.attestation.errors import EvidenceFormatError

__all__ = ["ENARX_SGX_OID", "enarx_sgx_report_data", "parse_enarx_sgx_extension"]

#: The Enarx SGX evidence extension request.
ENARX_SGX_OID = "1.3.6.1.4.1.58270.1.2"


def enarx_sgx_report_data(spki_der: bytes) -> bytes:
    """The report_data an Enarx SGX keep binds its CSR key with: SHA-256 of the
    SubjectPublicKeyInfo (DER), then 32 zero bytes."""
    return hashlib.sha256(spki_der).digest() + bytes(32)


def parse_enarx_sgx_extension(data: bytes) -> tuple[Quote, Collateral]:
    """The quote and the collateral an Enarx SGX CSR extension carries.

    The collateral has the TCB Info with its issuer chain and the CRLs; no
    QE Identity (Enarx does not send one). Raises EvidenceFormatError.
    """
    what = "Enarx SGX evidence"
    data = bytes(data)
    if len(data) > MAX_ENARX_EXTENSION_BYTES:
        raise EvidenceFormatError(
            f"{what}: {len(data)} bytes exceed the limit of {MAX_ENARX_EXTENSION_BYTES}"
        )
    quote_tlv, crls_tlv, tcb_tlv = der.parse_der(data, what).fields(
        der.SEQUENCE, what, ("quote", "crls", "tcb")
    )
    quote_tlv.expect(der.OCTET_STRING, f"{what} quote")
    try:
        quote = parse_quote(quote_tlv.value)
    except EvidenceFormatError as error:
        raise EvidenceFormatError(
            f"{what} quote at offset {quote_tlv.value_offset}: {error}"
        ) from None

    (crl_list,) = crls_tlv.fields(der.SEQUENCE, f"{what} crls", ("list",))
    crl_list.expect(der.SEQUENCE, f"{what} crls")
    entries = crl_list.children()
    if len(entries) > MAX_ENARX_CRLS:
        raise EvidenceFormatError(f"{what}: more than {MAX_ENARX_CRLS} CRLs")
    crls: list[x509.CertificateRevocationList] = []
    for entry in entries:
        url, crl = entry.fields(der.SEQUENCE, f"{what} crl entry", ("url", "crl"))
        url.as_utf8(f"{what} crl url")
        crl.expect(der.SEQUENCE, f"{what} crl")
        crls.append(load_crl(crl.encoded, f"{what} CRL at offset {crl.offset}"))

    certs_tlv, report_tlv = tcb_tlv.fields(der.SEQUENCE, f"{what} tcb", ("certs", "report"))
    certs_tlv.expect(der.SEQUENCE, f"{what} tcb certs")
    cert_tlvs = certs_tlv.children()
    if not 1 <= len(cert_tlvs) <= MAX_CHAIN_CERTIFICATES:
        raise EvidenceFormatError(
            f"{what}: TCB issuer chain at offset {certs_tlv.offset} has {len(cert_tlvs)} "
            f"certificates (1 to {MAX_CHAIN_CERTIFICATES})"
        )
    issuer_chain = []
    for cert in cert_tlvs:
        issuer_chain.append(
            load_certificate(cert.encoded, f"{what} TCB issuer certificate at offset {cert.offset}")
        )
    report_tlv.expect(der.OCTET_STRING, f"{what} tcb report")
    try:
        tcb_info = parse_tcb_info(report_tlv.value)
    except EvidenceFormatError as error:
        raise EvidenceFormatError(
            f"{what} TCB Info at offset {report_tlv.value_offset}: {error}"
        ) from None

    return quote, Collateral(
        tcb_info=tcb_info,
        tcb_info_issuer_chain=tuple(issuer_chain),
        root_ca_crl=_crl_of(crls, _root_subject(quote), what, "root CA"),
        pck_crl=_crl_of(crls, _pck_issuer(quote), what, "PCK CA"),
    )


def _root_subject(quote: Quote) -> x509.Name | None:
    chain = quote.signature_data.pck_chain
    return chain[-1].subject if chain else None


def _pck_issuer(quote: Quote) -> x509.Name | None:
    chain = quote.signature_data.pck_chain
    return chain[0].issuer if chain else None


def _crl_of(
    crls: list[x509.CertificateRevocationList], issuer: x509.Name | None, what: str, role: str
) -> x509.CertificateRevocationList | None:
    # Selection by issuer name only: the verifier checks each CRL's signature.
    found = [crl for crl in crls if issuer is not None and crl.issuer == issuer]
    if len(found) > 1:
        raise EvidenceFormatError(f"{what}: more than one {role} CRL")
    return found[0] if found else None
