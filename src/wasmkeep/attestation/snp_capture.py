"""The shapes SEV-SNP evidence travels in: a configfs-tsm capture (the report
and the host's certificate table), its JSON form, and the evidence extension of
an Enarx keep's CSR. Each has one parse function raising
:class:`~wasmkeep.attestation.errors.EvidenceFormatError`.

The certificate table is the one of the SNP Extended Guest Request (GHCB
specification, AMD publication 56421): entries of a 16-byte GUID, a u32 offset
and a u32 length (little-endian) into the table's own buffer, ended by an
entry whose GUID is all zeros. Linux passes it through configfs-tsm as
``auxblob`` beside the report as ``outblob``.
"""

from __future__ import annotations

import binascii
import json
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from wasmkeep.attestation import der
from wasmkeep.attestation.errors import EvidenceFormatError
from wasmkeep.attestation.snp_certs import load_amd_certificate, load_amd_crl
from wasmkeep.attestation.snp_report import SnpReport, parse_snp_report

__all__ = [
    "GUID_ARK",
    "GUID_ASK",
    "GUID_VCEK",
    "GUID_VLEK",
    "MAX_AUXBLOB_SIZE",
    "MAX_CERT_TABLE_ENTRIES",
    "MAX_ENARX_CRLS",
    "MAX_ENARX_EXTENSION_SIZE",
    "MAX_TSM_JSON_SIZE",
    "SnpEvidence",
    "parse_enarx_snp_extension",
    "parse_tsm_capture",
    "parse_tsm_json",
]

GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
_ZERO_GUID = bytes(16)
_ENTRY = struct.Struct("<16sII")

#: Largest auxblob (certificate table and certificates) accepted, in bytes.
#: Linux's SNP certificate buffer is 16 KiB by default; this leaves room.
MAX_AUXBLOB_SIZE = 64 * 1024
#: Most entries in a certificate table (AMD defines four GUIDs).
MAX_CERT_TABLE_ENTRIES = 16
#: Largest configfs-tsm capture in its JSON form, in bytes.
MAX_TSM_JSON_SIZE = 256 * 1024
#: Largest Enarx SNP evidence extension value, in bytes (a real one is ~4.4 KiB).
MAX_ENARX_EXTENSION_SIZE = 128 * 1024
#: Most CRLs an Enarx SNP evidence extension may carry (Enarx sends two).
MAX_ENARX_CRLS = 8
#: The configfs-tsm provider name of SEV-SNP guests.
TSM_PROVIDER = "sev_guest"


@dataclass(frozen=True, slots=True)
class SnpEvidence:
    """A report and the certificates that came with it.

    `vcek` is the endorsement key's certificate (a VCEK, or a VLEK when the
    table held one), `ask` its issuer (the ASK, or the ASVK for a VLEK), `ark`
    the root; any may be missing, and the verifier falls back to the pinned
    ASK/ASVK and ARK (a missing VCEK must be fetched from AMD's KDS by the
    caller).
    """

    report: SnpReport
    vcek: x509.Certificate | None = None
    ask: x509.Certificate | None = None
    ark: x509.Certificate | None = None
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    vlek: bool = False


def _certificate_table(auxblob: bytes) -> dict[uuid.UUID, x509.Certificate]:
    if len(auxblob) > MAX_AUXBLOB_SIZE:
        raise EvidenceFormatError(
            f"certificate table: {len(auxblob)} bytes is over the limit of {MAX_AUXBLOB_SIZE}"
        )
    entries: list[tuple[uuid.UUID, int, int, int]] = []
    position = 0
    while True:
        if position + _ENTRY.size > len(auxblob):
            raise EvidenceFormatError(
                f"certificate table: entry {len(entries)} at offset {position} is truncated "
                "(the table ends with an all-zero GUID)"
            )
        guid, offset, length = _ENTRY.unpack_from(auxblob, position)
        if guid == _ZERO_GUID:
            break
        if len(entries) == MAX_CERT_TABLE_ENTRIES:
            raise EvidenceFormatError(
                f"certificate table: more than {MAX_CERT_TABLE_ENTRIES} entries"
            )
        if any(guid == other[0].bytes for other in entries):
            raise EvidenceFormatError(
                f"certificate table: entry {len(entries)} at offset {position}: "
                f"GUID {uuid.UUID(bytes=guid)} listed twice"
            )
        entries.append((uuid.UUID(bytes=guid), offset, length, position))
        position += _ENTRY.size
    table_end = position + _ENTRY.size

    found: dict[uuid.UUID, x509.Certificate] = {}
    for index, (guid, offset, length, at) in enumerate(entries):
        where = f"certificate table entry {index} ({guid}) at offset {at}"
        if length == 0:
            raise EvidenceFormatError(f"{where}: length 0")
        if offset < table_end or offset + length > len(auxblob):
            raise EvidenceFormatError(
                f"{where}: bytes [{offset}, {offset + length}) are not within "
                f"[{table_end}, {len(auxblob)}), after the table and inside the blob"
            )
        if guid in (GUID_VCEK, GUID_VLEK, GUID_ASK, GUID_ARK):
            found[guid] = load_amd_certificate(auxblob[offset : offset + length], where)
        # Other GUIDs (vendor additions) are ignored: nothing here trusts them.
    if GUID_VCEK in found and GUID_VLEK in found:
        raise EvidenceFormatError("certificate table: holds both a VCEK and a VLEK")
    return found


def parse_tsm_capture(outblob: bytes, auxblob: bytes, *, product: str | None = None) -> SnpEvidence:
    """A configfs-tsm capture of provider ``sev_guest``: `outblob` is the
    report, `auxblob` the host's certificate table (empty if it gave none).
    `product` as for :func:`~wasmkeep.attestation.snp_report.parse_snp_report`."""
    report = parse_snp_report(outblob, product=product)
    table = _certificate_table(bytes(auxblob)) if auxblob else {}
    vlek = GUID_VLEK in table
    return SnpEvidence(
        report=report,
        vcek=table.get(GUID_VLEK if vlek else GUID_VCEK),
        ask=table.get(GUID_ASK),
        ark=table.get(GUID_ARK),
        vlek=vlek,
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise EvidenceFormatError(f"TSM capture JSON: key {key!r} appears twice")
        result[key] = value
    return result


def _base64(text: object, name: str) -> bytes:
    """Base64 (standard or URL-safe alphabet, padding optional), strictly."""
    if not isinstance(text, str):
        raise EvidenceFormatError(
            f"TSM capture JSON: {name!r} must be a base64 string, not {type(text).__name__}"
        )
    if not text.isascii():
        raise EvidenceFormatError(f"TSM capture JSON: {name!r} is not base64 (non-ASCII)")
    if ("-" in text or "_" in text) and ("+" in text or "/" in text):
        raise EvidenceFormatError(f"TSM capture JSON: {name!r} mixes base64 alphabets")
    standard = text.replace("-", "+").replace("_", "/")
    standard += "=" * (-len(standard) % 4)
    try:
        return binascii.a2b_base64(standard, strict_mode=True)
    except binascii.Error as error:
        raise EvidenceFormatError(f"TSM capture JSON: {name!r} is not base64 ({error})") from None


def parse_tsm_json(data: bytes, *, product: str | None = None) -> SnpEvidence:
    """A configfs-tsm capture as JSON (the shape veraison's test evidence has):
    ``{"provider": "sev_guest", "outblob": <base64url>, "auxblob": <base64url>}``.
    Other keys (``inblob``, ``manifestblob``...) are ignored."""
    if len(data) > MAX_TSM_JSON_SIZE:
        raise EvidenceFormatError(
            f"TSM capture JSON: {len(data)} bytes is over the limit of {MAX_TSM_JSON_SIZE}"
        )
    try:
        document = json.loads(bytes(data), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as error:
        if isinstance(error, EvidenceFormatError):
            raise
        raise EvidenceFormatError(f"TSM capture JSON: not JSON ({error})") from None
    if not isinstance(document, Mapping):
        raise EvidenceFormatError("TSM capture JSON: the document is not an object")
    for key in ("provider", "outblob"):
        if key not in document:
            raise EvidenceFormatError(f"TSM capture JSON: no {key!r}")
    provider = document["provider"]
    if not isinstance(provider, str) or provider.rstrip("\n") != TSM_PROVIDER:
        raise EvidenceFormatError(
            f"TSM capture JSON: provider {provider!r} is not {TSM_PROVIDER!r}"
        )
    outblob = _base64(document["outblob"], "outblob")
    auxblob = _base64(document.get("auxblob", ""), "auxblob")
    return parse_tsm_capture(outblob, auxblob, product=product)


def parse_enarx_snp_extension(
    value: bytes, *, product: str | None = None
) -> tuple[SnpReport, x509.Certificate, tuple[x509.CertificateRevocationList, ...]]:
    """The value of the Enarx SNP evidence extension (OID 1.3.6.1.4.1.58270.1.3)
    of a keep's CSR: the report, the VCEK and the CRLs the keep sent.

    ::

        Evidence ::= SEQUENCE {
            crts   SEQUENCE {
                vcek Certificate,
                crl  SEQUENCE { crls SEQUENCE OF SEQUENCE { url UTF8String, crl CertificateList } }
            },
            report OCTET STRING }

    The report binds the CSR: its REPORT_DATA[0:48] is the SHA-384 of the
    CSR's SubjectPublicKeyInfo (DER), which the caller computes and passes to
    the verifier as the expected report data.
    """
    if len(value) > MAX_ENARX_EXTENSION_SIZE:
        raise EvidenceFormatError(
            f"Enarx SNP evidence: {len(value)} bytes is over the limit of "
            f"{MAX_ENARX_EXTENSION_SIZE}"
        )
    top = der.parse_der(bytes(value), "Enarx SNP evidence")
    crts, report = top.fields(der.SEQUENCE, "Evidence", ("crts", "report"))
    vcek, crl_list = crts.fields(der.SEQUENCE, "Evidence.crts", ("vcek", "crl"))
    vcek.expect(der.SEQUENCE, "Evidence.crts.vcek")
    (entries,) = crl_list.fields(der.SEQUENCE, "Evidence.crts.crl", ("crls",))
    entries.expect(der.SEQUENCE, "Evidence.crts.crl.crls")
    crls: list[x509.CertificateRevocationList] = []
    for index, entry in enumerate(entries.children()):
        if index == MAX_ENARX_CRLS:
            raise EvidenceFormatError(f"Enarx SNP evidence: more than {MAX_ENARX_CRLS} CRLs")
        where = f"Evidence.crts.crl.crls[{index}]"
        url, crl = entry.fields(der.SEQUENCE, where, ("url", "crl"))
        url.as_utf8(f"{where}.url")
        crl.expect(der.SEQUENCE, f"{where}.crl")
        crls.append(load_amd_crl(crl.encoded, f"{where}.crl at offset {crl.offset}"))
    report.expect(der.OCTET_STRING, "Evidence.report")
    certificate = load_amd_certificate(vcek.encoded, f"Evidence.crts.vcek at offset {vcek.offset}")
    return parse_snp_report(report.value, product=product), certificate, tuple(crls)
