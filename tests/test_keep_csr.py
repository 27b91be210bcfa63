"""The CSR extensions a keep sends a Steward: round trips and malformed values."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wasmkeep.attestation import der
from wasmkeep.attestation.errors import EvidenceFormatError
from wasmkeep.attestation.keep_csr import (
    MAX_EVIDENCE_EXTENSION,
    EvidenceForm,
    KeepEvidence,
    decode_evidence,
    decode_workload_digest,
    encode_evidence,
    encode_workload_digest,
)

DIGEST = "sha256:" + "5a" * 32


@given(
    form=st.sampled_from(list(EvidenceForm)),
    evidence=st.binary(min_size=1, max_size=3000),
    auxblob=st.binary(max_size=300),
)
def test_evidence_round_trips(form: EvidenceForm, evidence: bytes, auxblob: bytes) -> None:
    if form is not EvidenceForm.SNP_REPORT:
        auxblob = b""
    value = KeepEvidence(form, evidence, auxblob)
    assert decode_evidence(encode_evidence(value)) == value


def test_the_encoding_is_plain_der() -> None:
    encoded = encode_evidence(KeepEvidence(EvidenceForm.SOFTWARE, b"\x01\x02"))
    assert encoded == bytes.fromhex("30100c08") + b"software" + bytes.fromhex("040201020400")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (der.encode_sequence(der.encode(der.UTF8_STRING, b"snp-report")), "expected 3 fields"),
        (
            der.encode_sequence(
                der.encode(der.UTF8_STRING, b"sev"),
                der.encode(der.OCTET_STRING, b"x"),
                der.encode(der.OCTET_STRING, b""),
            ),
            "unknown evidence form 'sev'",
        ),
        (
            der.encode_sequence(
                der.encode(der.UTF8_STRING, b"software"),
                der.encode(der.OCTET_STRING, b""),
                der.encode(der.OCTET_STRING, b""),
            ),
            "the evidence is empty",
        ),
        (
            der.encode_sequence(
                der.encode(der.UTF8_STRING, b"tdx-quote"),
                der.encode(der.OCTET_STRING, b"q"),
                der.encode(der.OCTET_STRING, b"certs"),
            ),
            "only snp-report evidence has an auxblob",
        ),
        (
            der.encode_sequence(
                der.encode(der.UTF8_STRING, b"software"),
                der.encode(der.UTF8_STRING, b"x"),
                der.encode(der.OCTET_STRING, b""),
            ),
            "expected OCTET STRING",
        ),
        (b"\x30\x80\x00\x00", "indefinite"),
        (bytes(MAX_EVIDENCE_EXTENSION + 1), "over the limit"),
    ],
)
def test_malformed_evidence_is_named(value: bytes, reason: str) -> None:
    with pytest.raises(EvidenceFormatError, match=reason):
        decode_evidence(value)


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_fail_cleanly(value: bytes) -> None:
    with contextlib.suppress(EvidenceFormatError):
        decode_evidence(value)
    with contextlib.suppress(EvidenceFormatError):
        decode_workload_digest(value)


def test_workload_digest() -> None:
    assert decode_workload_digest(encode_workload_digest(DIGEST)) == DIGEST
    with pytest.raises(ValueError, match="not a sha256"):
        encode_workload_digest("sha256:ABC")
    with pytest.raises(EvidenceFormatError, match="64 lowercase hex digits"):
        decode_workload_digest(der.encode(der.UTF8_STRING, b"sha1:00"))
