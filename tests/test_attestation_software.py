"""Software evidence and the report_data binding (`wasmkeep.attestation.software`)."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasmkeep.attestation.errors import EvidenceFormatError
from wasmkeep.attestation.software import (
    REPORT_DATA_SIZE,
    SOFTWARE_BACKENDS,
    SOFTWARE_MAGIC,
    SoftwareEvidence,
    parse_software_evidence,
    report_data,
    verify_software,
)
from wasmkeep.attestation.verdict import Tee

DIGEST = "sha256:" + hashlib.sha256(b"\0asm\1\0\0\0").hexdigest()
OTHER_DIGEST = "sha256:" + "ab" * 32


def spki(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# A fixed key, so the binding's output can be pinned.
FIXED_KEY = spki(ec.derive_private_key(0x5EED, ec.SECP256R1()))


def evidence(**changes: object) -> SoftwareEvidence:
    values: dict[str, object] = {
        "backend": "process",
        "report_data": report_data(FIXED_KEY, DIGEST),
        "nonce": bytes(range(16)),
        "workload_digest": DIGEST,
    }
    values.update(changes)
    return SoftwareEvidence(**values)  # type: ignore[arg-type]


# -- the binding ------------------------------------------------------------------------


def test_report_data_is_sha512_over_the_domain_separated_key_and_digest() -> None:
    encoded = (
        b"wasmkeep report_data v1\0"
        + len(FIXED_KEY).to_bytes(4, "big")
        + FIXED_KEY
        + len(DIGEST).to_bytes(4, "big")
        + DIGEST.encode()
    )
    bound = report_data(FIXED_KEY, DIGEST)
    assert len(bound) == REPORT_DATA_SIZE
    assert bound == hashlib.sha512(encoded).digest()


def test_report_data_is_pinned() -> None:
    """The binding is a wire format shared by keeps and verifiers: it must never
    change by accident (a new binding gets a new label, v2)."""
    assert report_data(FIXED_KEY, DIGEST).hex() == PINNED


PINNED = (
    "c13cca53907ad0602dac99f13ef3b8eb229312025bb66d3e2cc66ddd64d5bf74"
    "66acafc39340eedabff8b24d0920444b61e8418a91df064ed0a27cfdecaf4c8b"
)


def test_report_data_differs_by_key_and_by_workload() -> None:
    other_key = spki(ec.generate_private_key(ec.SECP256R1()))
    values = {
        report_data(FIXED_KEY, DIGEST),
        report_data(FIXED_KEY, OTHER_DIGEST),
        report_data(other_key, DIGEST),
        report_data(other_key, OTHER_DIGEST),
    }
    assert len(values) == 4


@pytest.mark.parametrize(
    "key",
    [
        spki(ec.generate_private_key(ec.SECP384R1())),
        spki(ed25519.Ed25519PrivateKey.generate()),
        spki(rsa.generate_private_key(65537, 2048)),
    ],
    ids=["p384", "ed25519", "rsa2048"],
)
def test_report_data_takes_any_key_type(key: bytes) -> None:
    assert len(report_data(key, DIGEST)) == 64


@pytest.mark.parametrize(
    ("key", "digest", "message"),
    [
        (b"", DIGEST, "non-empty"),
        (b"not a key", DIGEST, "not a SubjectPublicKeyInfo"),
        # The same key with its SEQUENCE length in long form: valid BER, not DER.
        (b"\x30\x81" + FIXED_KEY[1:], DIGEST, "not a SubjectPublicKeyInfo|canonical"),
        (FIXED_KEY + b"\0", DIGEST, "not a SubjectPublicKeyInfo|canonical"),
        (FIXED_KEY, "sha256:" + "AB" * 32, "lowercase"),
        (FIXED_KEY, "sha512:" + "ab" * 32, "sha256:"),
        (FIXED_KEY, "ab" * 32, "sha256:"),
        (FIXED_KEY, DIGEST + "00", "sha256:"),
    ],
    ids=["empty-key", "junk-key", "ber-key", "trailing-key", "upper", "sha512", "bare", "long"],
)
def test_report_data_refuses_malformed_inputs(key: bytes, digest: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        report_data(key, digest)


# -- the format -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", SOFTWARE_BACKENDS)
@pytest.mark.parametrize("digest", [DIGEST, None])
def test_round_trip(backend: str, digest: str | None) -> None:
    original = evidence(backend=backend, workload_digest=digest)
    encoded = original.encode()
    assert encoded.startswith(SOFTWARE_MAGIC)
    assert b"INSECURE" in encoded[:32]
    assert len(encoded) == 143
    assert parse_software_evidence(encoded) == original
    assert original.version == 1


def test_the_layout_is_the_documented_one() -> None:
    encoded = evidence().encode()
    assert encoded[27:29] == b"\0\1"  # version 1, big-endian
    assert encoded[29] == 2  # process
    assert encoded[30] == 1  # a workload digest is present
    assert encoded[31:47] == bytes(range(16))
    assert encoded[47:79].hex() == DIGEST.removeprefix("sha256:")
    assert encoded[79:143] == report_data(FIXED_KEY, DIGEST)


def _with(offset: int, value: bytes) -> bytes:
    encoded = bytearray(evidence().encode())
    encoded[offset : offset + len(value)] = value
    return bytes(encoded)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "magic at offset 0: truncated after 0 bytes"),
        (SOFTWARE_MAGIC[:10], "magic at offset 0: truncated"),
        (b"WASMKEEP-SECURE-EVIDENCE\0\0\0" + bytes(116), "magic at offset 0: not"),
        (b"\x04\0\0\0" + bytes(1180), "magic at offset 0"),  # an SNP report is not this
        (_with(27, b"\0\2"), "version at offset 27: unsupported version 2"),
        (_with(27, b"\1\0"), "version at offset 27: unsupported version 256"),
        (_with(29, b"\0"), "backend at offset 29: unknown backend code 0"),
        (_with(29, b"\4"), "backend at offset 29: unknown backend code 4"),
        (_with(30, b"\2"), "flags at offset 30: unknown flags 0x02"),
        (_with(30, b"\x80"), "flags at offset 30: unknown flags 0x80"),
        (_with(30, b"\0"), "workload at offset 47: not zero"),
        (evidence().encode() + b"\0", "at offset 143: trailing bytes"),
        (evidence().encode() * 2, "at offset 143: trailing bytes"),
    ],
)
def test_parse_refuses_malformed_evidence(data: bytes, message: str) -> None:
    with pytest.raises(EvidenceFormatError, match=message):
        parse_software_evidence(data)


def test_every_truncation_is_refused_naming_the_field() -> None:
    encoded = evidence().encode()
    for length in range(len(encoded)):
        with pytest.raises(EvidenceFormatError, match=r"at offset \d+: (truncated|not)"):
            parse_software_evidence(encoded[:length])


def test_parse_refuses_what_is_not_bytes() -> None:
    with pytest.raises(EvidenceFormatError, match="must be bytes"):
        parse_software_evidence("WASMKEEP-INSECURE-EVIDENCE")  # type: ignore[arg-type]


def test_a_huge_input_is_refused_without_reading_it_all() -> None:
    huge = evidence().encode() + bytes(64 * 1024 * 1024)
    with pytest.raises(EvidenceFormatError, match="trailing bytes"):
        parse_software_evidence(huge)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_evidence_format_error(data: bytes) -> None:
    try:
        parsed = parse_software_evidence(data)
    except EvidenceFormatError:
        return
    assert parsed.encode() == data


@settings(max_examples=400)
@given(st.binary(min_size=116, max_size=117))
def test_arbitrary_bodies_behind_the_magic(body: bytes) -> None:
    """Behind a valid magic and version, every field's check is reached."""
    data = SOFTWARE_MAGIC + b"\0\1" + body
    try:
        parsed = parse_software_evidence(data)
    except EvidenceFormatError as error:
        message = str(error)
    else:
        assert parsed.encode() == data  # strict: one encoding per evidence
        return
    assert message.startswith("software evidence: ")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"backend": "snp"}, "backend"),
        ({"backend": "Process"}, "backend"),
        ({"report_data": bytes(63)}, "report_data"),
        ({"report_data": "00" * 64}, "report_data"),
        ({"nonce": bytes(15)}, "nonce"),
        ({"workload_digest": "sha256:xyz"}, "workload digest"),
    ],
)
def test_evidence_is_valid_from_birth(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evidence(**changes)


# -- verification -----------------------------------------------------------------------


def test_verify_accepts_the_binding_and_says_it_is_insecure() -> None:
    verdict = verify_software(evidence(), expected_report_data=report_data(FIXED_KEY, DIGEST))
    assert [check.name for check in verdict.checks] == ["insecure_evidence", "report_data"]
    assert verdict.accepted  # verification alone: only a policy refuses or accepts it
    insecure = verdict.checks[0]
    assert insecure.passed
    assert "no hardware protects this keep" in insecure.detail
    claims = verdict.claims
    assert claims is not None
    assert claims.tee is Tee.SOFTWARE
    assert claims.debug is True
    assert claims.measurement == b""
    assert claims.tcb_status is None
    assert claims.report_data == report_data(FIXED_KEY, DIGEST)
    assert claims.fields["backend"] == "process"
    assert claims.fields["workload_digest"] == DIGEST
    assert claims.fields["nonce"] == bytes(range(16)).hex()


def test_verify_parses_bytes() -> None:
    verdict = verify_software(
        evidence().encode(), expected_report_data=report_data(FIXED_KEY, DIGEST)
    )
    assert verdict.accepted
    with pytest.raises(EvidenceFormatError):
        verify_software(b"junk", expected_report_data=None)


def test_verify_refuses_another_key_or_workload() -> None:
    other_key = spki(ec.generate_private_key(ec.SECP256R1()))
    for expected in (report_data(other_key, DIGEST), report_data(FIXED_KEY, OTHER_DIGEST)):
        verdict = verify_software(evidence(), expected_report_data=expected)
        assert not verdict.accepted
        (failure,) = verdict.failures
        assert failure.name == "report_data"
        assert "another key or workload" in failure.detail


def test_verify_without_an_expected_value_says_it_compared_nothing() -> None:
    verdict = verify_software(evidence(), expected_report_data=None)
    assert verdict.checks[1].name == "report_data"
    assert verdict.checks[1].detail == "no expected report_data given: not compared"


def test_verify_without_a_claimed_workload() -> None:
    verdict = verify_software(
        evidence(workload_digest=None), expected_report_data=report_data(FIXED_KEY, DIGEST)
    )
    assert verdict.accepted
    assert verdict.claims is not None
    assert "workload_digest" not in verdict.claims.fields


def test_flipping_any_bit_of_report_data_breaks_the_binding() -> None:
    encoded = evidence().encode()
    expected = report_data(FIXED_KEY, DIGEST)
    for bit in range(79 * 8, 143 * 8):
        tampered = bytearray(encoded)
        tampered[bit // 8] ^= 1 << (bit % 8)
        verdict = verify_software(bytes(tampered), expected_report_data=expected)
        assert [check.name for check in verdict.failures] == ["report_data"], bit


def test_tampering_elsewhere_is_either_malformed_or_unnoticed() -> None:
    """Nothing is signed: the header bits either break the format or change a
    claim that nobody vouched for anyway. The binding is all it proves."""
    encoded = evidence().encode()
    expected = report_data(FIXED_KEY, DIGEST)
    for bit in range(79 * 8):
        tampered = bytearray(encoded)
        tampered[bit // 8] ^= 1 << (bit % 8)
        try:
            verdict = verify_software(bytes(tampered), expected_report_data=expected)
        except EvidenceFormatError:
            continue
        assert verdict.checks[0].name == "insecure_evidence"
        assert verdict.claims is not None and verdict.claims.tee is Tee.SOFTWARE
