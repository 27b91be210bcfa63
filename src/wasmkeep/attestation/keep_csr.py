"""What a keep's certificate request carries, and what its certificate says.

A keep asks a Steward for a certificate with a PKCS #10 CSR signed by the key
it made inside itself. The CSR requests two extensions of wasmkeep's own:

- :data:`EVIDENCE_OID`: the keep's evidence, DER
  ``SEQUENCE { form UTF8String, evidence OCTET STRING, auxblob OCTET STRING }``
  where `form` is one of :class:`EvidenceForm`, `evidence` the report, quote or
  software evidence as collected, and `auxblob` the SNP certificate table the
  host supplied (empty otherwise);
- :data:`WORKLOAD_DIGEST_OID`: the workload it runs, a UTF8String
  ``sha256:<64 hex digits>``.

Every form binds both through report_data, the same way on every backend:
``report_data = software.report_data(CSR SubjectPublicKeyInfo DER, digest)``.
A Steward recomputes it from the CSR; evidence that does not match is refused.

Enarx keeps put their evidence under Enarx's OIDs instead (:data:`ENARX_SGX_OID`,
:data:`ENARX_SNP_OID`), binding only the key: a Steward reads both kinds.

The certificate a Steward issues carries what it verified under
:data:`CLAIMS_OID`: a UTF8String holding one JSON object (TEE, backend,
measurement, workload digest, TCB status).

wasmkeep's OIDs live under a UUID arc (ITU-T X.667, ``2.25``), which needs no
registration and is wasmkeep's alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from wasmkeep.attestation import der
from wasmkeep.attestation.errors import EvidenceFormatError

__all__ = [
    "CLAIMS_OID",
    "ENARX_SGX_OID",
    "ENARX_SNP_OID",
    "EVIDENCE_OID",
    "MAX_EVIDENCE_EXTENSION",
    "WASMKEEP_OID_ARC",
    "WORKLOAD_DIGEST_OID",
    "EvidenceForm",
    "KeepEvidence",
    "decode_evidence",
    "decode_workload_digest",
    "encode_evidence",
    "encode_workload_digest",
]

#: urn:uuid:5ffc9149-873e-4196-b769-d333c512efc2, as an OID arc.
WASMKEEP_OID_ARC = "2.25.127588065182821916982506488152588480450"
EVIDENCE_OID = f"{WASMKEEP_OID_ARC}.1"
WORKLOAD_DIGEST_OID = f"{WASMKEEP_OID_ARC}.2"
CLAIMS_OID = f"{WASMKEEP_OID_ARC}.3"

#: Enarx keeps' evidence extensions (enarx/steward, crates/attestation).
ENARX_SGX_OID = "1.3.6.1.4.1.58270.1.2"
ENARX_SNP_OID = "1.3.6.1.4.1.58270.1.3"

#: The evidence extension's largest value: a quote with its PCK chain, or an
#: SNP report with a full certificate table, is well under this.
MAX_EVIDENCE_EXTENSION = 128 * 1024

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class EvidenceForm(StrEnum):
    """What the evidence bytes of a wasmkeep CSR are."""

    #: wasmkeep's software evidence (nil, process, vm): binds, proves nothing else.
    SOFTWARE = "software"
    #: An SEV-SNP ATTESTATION_REPORT; the auxblob is the GHCB certificate table.
    SNP_REPORT = "snp-report"
    #: A DCAP quote (TDX v4/v5), its PCK chain inside.
    TDX_QUOTE = "tdx-quote"


@dataclass(frozen=True, slots=True)
class KeepEvidence:
    """The evidence a keep sends in its CSR."""

    form: EvidenceForm
    evidence: bytes
    auxblob: bytes = b""


def encode_evidence(evidence: KeepEvidence) -> bytes:
    """The DER value of the :data:`EVIDENCE_OID` extension."""
    return der.encode_sequence(
        der.encode(der.UTF8_STRING, evidence.form.value.encode("ascii")),
        der.encode(der.OCTET_STRING, evidence.evidence),
        der.encode(der.OCTET_STRING, evidence.auxblob),
    )


def decode_evidence(value: bytes) -> KeepEvidence:
    """The evidence in an :data:`EVIDENCE_OID` extension; EvidenceFormatError if malformed."""
    what = "wasmkeep evidence extension"
    if len(value) > MAX_EVIDENCE_EXTENSION:
        raise EvidenceFormatError(
            f"{what}: {len(value)} bytes is over the limit of {MAX_EVIDENCE_EXTENSION}"
        )
    form_tlv, evidence_tlv, auxblob_tlv = der.parse_der(value, what).fields(
        der.SEQUENCE, what, ("form", "evidence", "auxblob")
    )
    form_text = form_tlv.as_utf8(f"{what} form")
    try:
        form = EvidenceForm(form_text)
    except ValueError:
        known = ", ".join(item.value for item in EvidenceForm)
        raise EvidenceFormatError(
            f"{what}: unknown evidence form {form_text[:40]!r} (known: {known})"
        ) from None
    evidence_tlv.expect(der.OCTET_STRING, f"{what} evidence")
    auxblob_tlv.expect(der.OCTET_STRING, f"{what} auxblob")
    if not evidence_tlv.value:
        raise EvidenceFormatError(f"{what}: the evidence is empty")
    if auxblob_tlv.value and form is not EvidenceForm.SNP_REPORT:
        raise EvidenceFormatError(f"{what}: only snp-report evidence has an auxblob")
    return KeepEvidence(form, evidence_tlv.value, auxblob_tlv.value)


def encode_workload_digest(digest: str) -> bytes:
    """The DER value of the :data:`WORKLOAD_DIGEST_OID` extension."""
    if not _DIGEST.fullmatch(digest):
        raise ValueError(f"not a sha256:<64 lowercase hex digits> digest: {digest[:80]!r}")
    return der.encode(der.UTF8_STRING, digest.encode("ascii"))


def decode_workload_digest(value: bytes) -> str:
    """The digest in a :data:`WORKLOAD_DIGEST_OID` extension; EvidenceFormatError if malformed."""
    what = "wasmkeep workload digest extension"
    text = der.parse_der(value, what).as_utf8(what)
    if not _DIGEST.fullmatch(text):
        raise EvidenceFormatError(
            f"{what}: expected sha256: and 64 lowercase hex digits, got {text[:80]!r}"
        )
    return text
