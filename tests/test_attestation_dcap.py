"""Intel DCAP quotes and collateral: the real vectors' facts (PROVENANCE.md),
tampering, and a synthetic PKI for what Intel's keys cannot be made to sign
(revocation, debug, TCB statuses).

The synthetic generator below (`_Pki`, `_quote`, `_tcb_info`, ...) builds
complete quotes and collateral with test keys: a root, a PCK Platform CA, a
PCK certificate with its SGX extension, a TCB Signing certificate, CRLs, and
quotes v3/v4/v5 signed through the same path Intel's QE uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasmkeep.attestation import dcap, dcap_collateral, dcap_limits, dcap_pck, dcap_quote
from wasmkeep.attestation.errors import EvidenceFormatError
from wasmkeep.attestation.verdict import Check, Tee, Verdict

ASSETS = Path(__file__).resolve().parent / "assets" / "attestation"
SPR = ASSETS / "tdx" / "spr-e4-go-tdx-guest"
V5 = ASSETS / "tdx" / "v5-go-tdx-guest"
COS = ASSETS / "tdx" / "cos-113-go-tdx-guest"
QVL = ASSETS / "tdx" / "dcap-qvl-uptodate"
TRUSTEE = ASSETS / "tdx" / "trustee"
OCCLUM = ASSETS / "sgx" / "occlum-trustee"
ENARX = ASSETS / "enarx-csr"

SPR_NOW = datetime(2023, 6, 20, tzinfo=UTC)
ENARX_NOW = datetime(2023, 2, 1, tzinfo=UTC)
SIGNATURE_CHECKS = ("pck_chain", "qe_report_signature", "qe_report_data", "quote_signature")
QE_IDENTITY_CHECKS = (
    "qe_identity_signature",
    "qe_identity_validity",
    "qe_identity_match",
    "qe_identity_tcb",
)


def failed(verdict: Verdict) -> set[str]:
    return {check.name for check in verdict.failures}


def check(verdict: Verdict, name: str) -> Check:
    (found,) = [item for item in verdict.checks if item.name == name]
    return found


# --- the real vectors --------------------------------------------------------------------


def spr_collateral() -> dcap.Collateral:
    return dcap.Collateral(
        tcb_info=dcap.parse_tcb_info((SPR / "tcb_info_response.json").read_bytes()),
        tcb_info_issuer_chain=dcap.parse_issuer_chain(
            (SPR / "tcb_info_issuer_chain.pem").read_bytes()
        ),
        qe_identity=dcap.parse_qe_identity((SPR / "qe_identity_response.json").read_bytes()),
        qe_identity_issuer_chain=dcap.parse_issuer_chain(
            (SPR / "qe_identity_issuer_chain.pem").read_bytes()
        ),
        root_ca_crl=dcap.parse_crl((SPR / "root_crl.der").read_bytes()),
        pck_crl=dcap.parse_crl((SPR / "pck_crl.der").read_bytes()),
        pck_crl_issuer_chain=dcap.parse_issuer_chain(
            (SPR / "pck_crl_issuer_chain.pem").read_bytes()
        ),
    )


def qvl_collateral() -> dcap.Collateral:
    return dcap.parse_qvl_collateral((QVL / "collateral.json").read_bytes())


def quote_of(path: Path) -> dcap.Quote:
    return dcap.parse_quote(path.read_bytes())


def enarx_extension() -> tuple[bytes, bytes]:
    """The Enarx SGX extension of the IceLake CSR, and the CSR's SPKI (DER)."""
    csr = x509.load_der_x509_csr((ENARX / "icelake.signed.tcb.crl.multi.xeon.csr").read_bytes())
    extension = csr.extensions.get_extension_for_oid(x509.ObjectIdentifier(dcap.ENARX_SGX_OID))
    assert isinstance(extension.value, x509.UnrecognizedExtension)
    spki = csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return extension.value.value, spki


def test_pinned_root_is_the_intel_root_of_the_vectors() -> None:
    der = dcap.PINNED_INTEL_ROOT.public_bytes(serialization.Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == dcap.PINNED_INTEL_ROOT_SHA256
    vector = x509.load_pem_x509_certificate(
        (ASSETS / "intel-root" / "intel_sgx_root_ca.pem").read_bytes()
    )
    assert vector == dcap.PINNED_INTEL_ROOT
    assert (ENARX / "root.der").read_bytes() == der
    for path in (SPR, QVL, TRUSTEE, OCCLUM):
        for quote_file in path.glob("*.dat"):
            assert quote_of(quote_file).signature_data.pck_chain[-1] == dcap.PINNED_INTEL_ROOT


def test_spr_e4_verifies_to_the_intel_root_but_no_tcb_level_matches() -> None:
    quote = quote_of(SPR / "quote.dat")
    assert (quote.header.version, quote.tee, quote.body_type) == (4, Tee.TDX, 2)
    # go-tdx-guest appends bytes after the quote to test that they are ignored.
    assert quote.trailing_length == 39
    verdict = dcap.verify_quote(quote, spr_collateral(), now=SPR_NOW)
    assert failed(verdict) == {"tcb_level", "tcb_status"}
    for name in (*SIGNATURE_CHECKS, "root_ca_crl", "pck_crl", "tcb_info_signature"):
        assert check(verdict, name).passed
    assert check(verdict, "qe_identity_signature").passed
    assert "no TCB level" in check(verdict, "tcb_level").detail
    assert "PCESVN 11" in check(verdict, "tcb_level").detail
    assert verdict.claims is not None
    assert verdict.claims.tcb_status is None
    assert verdict.claims.fields["fmspc"] == "50806f000000"


def test_a_real_debug_td_is_up_to_date_but_rejected_for_debug() -> None:
    # Trustee's quote 4 is from the SPR platform family of the go-tdx-guest
    # collateral (FMSPC 50806f000000): every check passes except debug.
    quote = quote_of(TRUSTEE / "tdx_quote_4.dat")
    verdict = dcap.verify_quote(quote, spr_collateral(), now=SPR_NOW)
    assert failed(verdict) == {"debug_disabled"}
    assert "TDATTRIBUTES.DEBUG" in check(verdict, "debug_disabled").detail
    assert verdict.claims is not None
    assert verdict.claims.debug
    assert verdict.claims.tcb_status == "UpToDate"
    assert "DEBUG" in verdict.claims.fields["tdattributes_flags"]  # type: ignore[operator]


def test_v5_quote_is_tdx_15_and_up_to_date() -> None:
    quote = quote_of(V5 / "quote.dat")
    assert (quote.header.version, quote.body_type) == (5, dcap_quote.BODY_TDX_15)
    assert isinstance(quote.body, dcap.TdReportBody)
    assert quote.body.tee_tcb_svn_2 is not None
    assert quote.body.mrservicetd is not None
    qvl = qvl_collateral()
    # The v5 vector comes with its TCB Info only: the TCB Signing chain and
    # the root CA CRL (valid until 2026-04-03) are Intel's, from dcap-qvl.
    tcb_info = dcap.parse_tcb_info((V5 / "tcb_info_response.json").read_bytes())
    collateral = dcap.Collateral(
        tcb_info=tcb_info,
        tcb_info_issuer_chain=qvl.tcb_info_issuer_chain,
        root_ca_crl=qvl.root_ca_crl,
    )
    verdict = dcap.verify_quote(quote, collateral, now=tcb_info.issue_date)
    assert failed(verdict) == {"pck_crl"}
    # Without a QE Identity the QE is checked against Intel's pinned TD_QE only.
    assert "pinned" in check(verdict, "qe_identity_match").detail
    assert verdict.claims is not None
    assert verdict.claims.fields["qe_identity_checked"] is False
    assert check(verdict, "pck_crl").detail == "no PCK CRL was given"
    assert verdict.claims is not None
    assert verdict.claims.tcb_status == "UpToDate"
    assert check(verdict, "tcb_status").passed
    assert "TDX_01" in check(verdict, "tdx_module").detail
    assert verdict.claims.fields["mrservicetd"] == quote.body.mrservicetd.hex()


def test_cos_113_quote_verifies() -> None:
    quote = quote_of(COS / "quote.dat")
    assert quote.header.version == 4
    assert quote.trailing_length == 3065  # a CCEL capture padded with zeros
    verdict = dcap.verify_quote(quote, dcap.Collateral(), now=datetime(2024, 8, 1, tzinfo=UTC))
    for name in (*SIGNATURE_CHECKS, "qe_vendor_id", "debug_disabled"):
        assert check(verdict, name).passed
    # Without collateral, every check that needs it fails and says so.
    assert check(verdict, "tcb_info_signature").detail == "no TCB Info was given"
    assert not verdict.accepted


def test_dcap_qvl_collateral_is_up_to_date_at_its_issue_date() -> None:
    quote = quote_of(QVL / "quote.dat")
    collateral = qvl_collateral()
    assert collateral.qe_identity is not None
    assert collateral.tcb_info is not None
    now = max(collateral.qe_identity.issue_date, collateral.tcb_info.issue_date)
    verdict = dcap.verify_quote(quote, collateral, now=now)
    assert verdict.accepted, verdict.failures
    assert verdict.claims is not None
    assert verdict.claims.tcb_status == "UpToDate"
    assert verdict.claims.tee is Tee.TDX
    assert isinstance(quote.body, dcap.TdReportBody)
    assert verdict.claims.measurement == quote.body.mrtd
    assert verdict.claims.fields["rtmr3"] == quote.body.rtmr3.hex()
    assert [item.name for item in verdict.checks] == [
        "qe_vendor_id",
        "pck_chain",
        "root_ca_crl",
        "pck_crl",
        "qe_report_signature",
        "qe_report_data",
        "quote_signature",
        "tcb_info_signature",
        "tcb_info_validity",
        "tcb_info_applies",
        *QE_IDENTITY_CHECKS,
        "tcb_level",
        "tdx_module",
        "tcb_status",
        "debug_disabled",
        "report_data",
    ]


def test_dcap_qvl_collateral_fails_its_dates_a_year_later() -> None:
    quote = quote_of(QVL / "quote.dat")
    collateral = qvl_collateral()
    assert collateral.tcb_info is not None
    verdict = dcap.verify_quote(
        quote, collateral, now=collateral.tcb_info.issue_date + timedelta(days=365)
    )
    assert failed(verdict) == {
        "root_ca_crl",
        "pck_crl",
        "tcb_info_validity",
        "qe_identity_validity",
    }
    assert "expired at its next update 2025-07-19" in check(verdict, "tcb_info_validity").detail
    assert "PCK CRL expired" in check(verdict, "pck_crl").detail


def test_collateral_before_its_issue_date_is_not_valid_yet() -> None:
    quote = quote_of(QVL / "quote.dat")
    collateral = qvl_collateral()
    assert collateral.tcb_info is not None
    verdict = dcap.verify_quote(
        quote, collateral, now=collateral.tcb_info.issue_date - timedelta(seconds=1)
    )
    assert "after now" in check(verdict, "tcb_info_validity").detail
    assert "after now" in check(verdict, "qe_identity_validity").detail


def trustee_collateral() -> dcap.Collateral:
    # Trustee ships the TCB Info and QE Identity bodies; the TCB Signing
    # chain and the root CA CRL are Intel's, taken from dcap-qvl.
    qvl = qvl_collateral()
    return dcap.Collateral(
        tcb_info=dcap.parse_tcb_info((TRUSTEE / "tcbInfo.json").read_bytes()),
        tcb_info_issuer_chain=qvl.tcb_info_issuer_chain,
        qe_identity=dcap.parse_qe_identity((TRUSTEE / "enclaveIdentity.json").read_bytes()),
        qe_identity_issuer_chain=qvl.qe_identity_issuer_chain,
        root_ca_crl=qvl.root_ca_crl,
    )


@pytest.mark.parametrize("number", [4, 5, 6])
def test_trustee_quotes_verify(number: int) -> None:
    quote = quote_of(TRUSTEE / f"tdx_quote_{number}.dat")
    collateral = trustee_collateral()
    assert collateral.qe_identity is not None
    verdict = dcap.verify_quote(quote, collateral, now=collateral.qe_identity.issue_date)
    for name in (*SIGNATURE_CHECKS, "tcb_info_signature", *QE_IDENTITY_CHECKS):
        assert check(verdict, name).passed, check(verdict, name)
    assert quote.header.version == (5 if number == 5 else 4)


def test_trustee_tcb_info_matches_quote_6() -> None:
    quote = quote_of(TRUSTEE / "tdx_quote_6.dat")
    collateral = trustee_collateral()
    assert collateral.qe_identity is not None
    verdict = dcap.verify_quote(quote, collateral, now=collateral.qe_identity.issue_date)
    assert failed(verdict) == {"pck_crl"}  # no PCK CRL of October 2025 among the vectors
    assert check(verdict, "tcb_info_applies").passed
    assert verdict.claims is not None
    assert verdict.claims.tcb_status == "OutOfDate"
    assert "TDX_03" in check(verdict, "tdx_module").detail


def test_occlum_sgx_v3_quote_verifies_and_is_a_debug_enclave() -> None:
    quote = quote_of(OCCLUM / "quote.dat")
    assert (quote.header.version, quote.tee) == (3, Tee.SGX)
    assert isinstance(quote.body, dcap.SgxReportBody)
    assert quote.header.qe_svn == 8
    assert quote.header.pce_svn == 13
    verdict = dcap.verify_quote(quote, dcap.Collateral(), now=datetime(2024, 1, 1, tzinfo=UTC))
    for name in SIGNATURE_CHECKS:
        assert check(verdict, name).passed
    assert "ATTRIBUTES.DEBUG" in check(verdict, "debug_disabled").detail
    assert verdict.claims is not None
    assert verdict.claims.measurement == quote.body.mrenclave
    assert verdict.claims.fields["mrsigner"] == quote.body.mrsigner.hex()
    assert verdict.claims.fields["isvprodid"] == quote.body.isvprodid


def test_enarx_icelake_csr_evidence_verifies() -> None:
    extension, spki = enarx_extension()
    quote, collateral = dcap.parse_enarx_sgx_extension(extension)
    assert quote.header.version == 3
    # The keep bound its CSR key: report_data[0:32] = SHA-256(SPKI DER).
    assert quote.report_data[:32] == hashlib.sha256(spki).digest()
    assert collateral.root_ca_crl is not None
    assert collateral.pck_crl is not None
    assert collateral.qe_identity is None  # Enarx does not send one
    verdict = dcap.verify_quote(
        quote,
        collateral,
        now=ENARX_NOW,
        expected_report_data=dcap.enarx_sgx_report_data(spki),
    )
    # Every check passes: the QE is Intel's by its pinned signer, and the
    # claims say its TCB went unchecked, for the policy to decide.
    assert failed(verdict) == set()
    assert "Intel's QE" in check(verdict, "qe_identity_match").detail
    assert check(verdict, "report_data").passed
    assert verdict.claims is not None
    assert verdict.claims.tcb_status == "OutOfDate"
    assert "INTEL-SA-00657" in verdict.claims.advisories
    assert verdict.claims.fields["qe_identity_checked"] is False


def test_enarx_csr_bound_to_another_key_fails_report_data() -> None:
    extension, _ = enarx_extension()
    quote, collateral = dcap.parse_enarx_sgx_extension(extension)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    spki = other.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verdict = dcap.verify_quote(
        quote, collateral, now=ENARX_NOW, expected_report_data=dcap.enarx_sgx_report_data(spki)
    )
    assert "is not the expected" in check(verdict, "report_data").detail


# --- tampering with the real vectors ------------------------------------------------------


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _verdict_or_format_error(
    raw: bytes, collateral: dcap.Collateral, now: datetime
) -> Verdict | None:
    try:
        quote = dcap.parse_quote(raw)
    except EvidenceFormatError:
        return None
    return dcap.verify_quote(quote, collateral, now=now)


@pytest.fixture(scope="module")
def qvl_case() -> tuple[bytes, dcap.Quote, dcap.Collateral, datetime]:
    raw = (QVL / "quote.dat").read_bytes()
    collateral = qvl_collateral()
    assert collateral.qe_identity is not None
    return raw, dcap.parse_quote(raw), collateral, collateral.qe_identity.issue_date


def test_every_bit_of_header_and_body_is_signed(
    qvl_case: tuple[bytes, dcap.Quote, dcap.Collateral, datetime],
) -> None:
    raw, quote, collateral, now = qvl_case
    for bit in range(len(quote.signed_data) * 8):
        verdict = _verdict_or_format_error(_flip(raw, bit), collateral, now)
        if verdict is None:
            continue  # the header no longer parses (version, key type, TEE type)
        assert not check(verdict, "quote_signature").passed, bit


def test_every_bit_of_the_qe_report_is_signed(
    qvl_case: tuple[bytes, dcap.Quote, dcap.Collateral, datetime],
) -> None:
    raw, quote, collateral, now = qvl_case
    start = raw.index(quote.signature_data.qe_report_raw)
    for bit in range(start * 8, (start + 384) * 8):
        verdict = _verdict_or_format_error(_flip(raw, bit), collateral, now)
        assert verdict is not None
        assert (
            "QE report: the signature does not verify"
            in check(verdict, "qe_report_signature").detail
        )


@pytest.mark.parametrize("field", ["signature", "attestation_key", "qe_auth_data"])
def test_signature_data_fields_are_bound(
    qvl_case: tuple[bytes, dcap.Quote, dcap.Collateral, datetime], field: str
) -> None:
    raw, quote, collateral, now = qvl_case
    value = getattr(quote.signature_data, field)
    start = raw.index(value)
    for bit in range(start * 8, (start + len(value)) * 8, 7):
        verdict = _verdict_or_format_error(_flip(raw, bit), collateral, now)
        assert verdict is not None
        assert not verdict.accepted
        if field == "signature":
            assert failed(verdict) == {"quote_signature"}
        else:
            assert "qe_report_data" in failed(verdict)


def test_every_truncation_is_a_format_error(
    qvl_case: tuple[bytes, dcap.Quote, dcap.Collateral, datetime],
) -> None:
    raw, quote, _, _ = qvl_case
    end = len(raw) - quote.trailing_length
    for length in range(end):
        with pytest.raises(EvidenceFormatError):
            dcap.parse_quote(raw[:length])
    assert dcap.parse_quote(raw[:end]).trailing_length == 0


def test_oversized_quote_is_refused() -> None:
    raw = (QVL / "quote.dat").read_bytes()
    padded = raw + bytes(dcap_limits.MAX_QUOTE_BYTES - len(raw))
    assert dcap.parse_quote(padded).trailing_length > 0
    with pytest.raises(EvidenceFormatError, match="exceed the limit"):
        dcap.parse_quote(padded + b"\0")


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, struct.pack("<H", 6), "version 6 at offset 0"),
        (2, struct.pack("<H", 3), "attestation key type 3 at offset 2"),
        (4, struct.pack("<I", 0x80), "TEE type 0x80 at offset 4"),
        (632, struct.pack("<I", 0xFFFF), "length 65535 at offset 632 runs past"),
        (632 + 4 + 128, struct.pack("<H", 5), "certification data type 5 at offset 764 is not 6"),
    ],
)
def test_bad_fields_are_named_with_their_offset(offset: int, value: bytes, message: str) -> None:
    raw = bytearray((QVL / "quote.dat").read_bytes())
    raw[offset : offset + len(value)] = value
    with pytest.raises(EvidenceFormatError, match=message):
        dcap.parse_quote(bytes(raw))


def test_v5_body_size_must_match_its_type() -> None:
    raw = bytearray((V5 / "quote.dat").read_bytes())
    raw[50:54] = struct.pack("<I", 584)
    with pytest.raises(EvidenceFormatError, match="body size 584 at offset 50"):
        dcap.parse_quote(bytes(raw))
    raw[48:54] = struct.pack("<HI", 1, 384)
    with pytest.raises(EvidenceFormatError, match="body type 1 at offset 48 does not match"):
        dcap.parse_quote(bytes(raw))


def test_a_wrong_root_is_not_trusted(
    qvl_case: tuple[bytes, dcap.Quote, dcap.Collateral, datetime],
) -> None:
    _, quote, collateral, now = qvl_case
    pki = _Pki()
    verdict = dcap.verify_quote(quote, collateral, now=now, root=pki.root)
    assert "which is not the trusted root" in check(verdict, "pck_chain").detail
    assert "not the trusted root" in check(verdict, "tcb_info_signature").detail
    assert "not Test SGX Root CA" in check(verdict, "root_ca_crl").detail
    assert not verdict.accepted


def test_reordered_pck_chain_is_refused(
    qvl_case: tuple[bytes, dcap.Quote, dcap.Collateral, datetime],
) -> None:
    _, quote, collateral, now = qvl_case
    pck, ca, root = quote.signature_data.pck_chain
    for chain in [(ca, pck, root), (pck, root), (pck, ca, ca, root)]:
        swapped = dataclasses.replace(
            quote, signature_data=dataclasses.replace(quote.signature_data, pck_chain=chain)
        )
        verdict = dcap.verify_quote(swapped, collateral, now=now)
        assert not check(verdict, "pck_chain").passed, chain


def test_a_pck_cannot_sign_collateral(
    qvl_case: tuple[bytes, dcap.Quote, dcap.Collateral, datetime],
) -> None:
    _, quote, collateral, now = qvl_case
    swapped = dataclasses.replace(collateral, tcb_info_issuer_chain=quote.signature_data.pck_chain)
    verdict = dcap.verify_quote(quote, swapped, now=now)
    assert "not by 'Intel SGX TCB Signing'" in check(verdict, "tcb_info_signature").detail


def test_tcb_info_signature_covers_the_raw_bytes() -> None:
    raw = (SPR / "tcb_info_response.json").read_bytes()
    tcb_info = dcap.parse_tcb_info(raw)
    assert raw.count(tcb_info.body) == 1
    assert tcb_info.body.startswith(b'{"id":"TDX"')
    collateral = dataclasses.replace(spr_collateral(), tcb_info=tcb_info)
    quote = quote_of(SPR / "quote.dat")
    assert check(dcap.verify_quote(quote, collateral, now=SPR_NOW), "tcb_info_signature").passed
    # The same JSON with a space added: equal as data, not as signed bytes.
    spaced = raw.replace(b'"version":3,', b'"version": 3,')
    assert dcap.parse_tcb_info(spaced).tcb_levels == tcb_info.tcb_levels
    collateral = dataclasses.replace(collateral, tcb_info=dcap.parse_tcb_info(spaced))
    verdict = dcap.verify_quote(quote, collateral, now=SPR_NOW)
    assert "the signature does not verify" in check(verdict, "tcb_info_signature").detail
    # A changed status is caught the same way.
    upgraded = raw.replace(b'"OutOfDate"', b'"UpToDate"')
    collateral = dataclasses.replace(collateral, tcb_info=dcap.parse_tcb_info(upgraded))
    verdict = dcap.verify_quote(quote, collateral, now=SPR_NOW)
    assert not check(verdict, "tcb_info_signature").passed


def test_qe_identity_signature_covers_the_raw_bytes() -> None:
    raw = (SPR / "qe_identity_response.json").read_bytes()
    changed = raw.replace(b'"isvsvn":4', b'"isvsvn":3')
    collateral = dataclasses.replace(spr_collateral(), qe_identity=dcap.parse_qe_identity(changed))
    verdict = dcap.verify_quote(quote_of(SPR / "quote.dat"), collateral, now=SPR_NOW)
    assert "the signature does not verify" in check(verdict, "qe_identity_signature").detail


def test_pck_crl_of_the_other_ca_is_refused() -> None:
    extension, _ = enarx_extension()
    quote, collateral = dcap.parse_enarx_sgx_extension(extension)
    # The Enarx CSR carries the Processor CA's CRL too; the PCK is the
    # Platform CA's.
    processor = [
        crl for crl in _enarx_crls(extension) if "Processor" in crl.issuer.rfc4514_string()
    ]
    assert len(processor) == 1
    verdict = dcap.verify_quote(
        quote, dataclasses.replace(collateral, pck_crl=processor[0]), now=ENARX_NOW
    )
    assert "not Intel SGX PCK Platform CA" in check(verdict, "pck_crl").detail


def _enarx_crls(extension: bytes) -> list[x509.CertificateRevocationList]:
    from wasmkeep.attestation import der

    _, crls, _ = der.parse_der(extension).children()
    (entries,) = crls.children()
    return [x509.load_der_x509_crl(entry.children()[1].encoded) for entry in entries.children()]


def test_expired_and_not_yet_valid_pck_certificates(
    qvl_case: tuple[bytes, dcap.Quote, dcap.Collateral, datetime],
) -> None:
    _, quote, collateral, _ = qvl_case
    pck = quote.signature_data.pck_chain[0]
    late = dcap.verify_quote(quote, collateral, now=pck.not_valid_after_utc + timedelta(days=1))
    assert "Intel SGX PCK Certificate expired at" in check(late, "pck_chain").detail
    early = dcap.verify_quote(quote, collateral, now=pck.not_valid_before_utc - timedelta(days=1))
    assert "is not valid before" in check(early, "pck_chain").detail


def test_now_must_be_aware(qvl_case: tuple[bytes, dcap.Quote, dcap.Collateral, datetime]) -> None:
    _, quote, collateral, _ = qvl_case
    with pytest.raises(ValueError, match="timezone-aware"):
        dcap.verify_quote(quote, collateral, now=datetime(2025, 6, 20))
    with pytest.raises(ValueError, match="64 bytes"):
        dcap.verify_quote(
            quote, collateral, now=datetime(2025, 6, 20, tzinfo=UTC), expected_report_data=b"x"
        )


# --- collateral parsing ---------------------------------------------------------------------


def test_collateral_parsers_read_every_vector() -> None:
    spr = spr_collateral()
    assert spr.tcb_info is not None
    assert spr.qe_identity is not None
    assert spr.tcb_info.fmspc == bytes.fromhex("50806f000000")
    assert spr.tcb_info.tdx_module is not None
    assert len(spr.tcb_info.tcb_levels) == 2
    assert spr.tcb_info.tcb_levels[1].advisory_ids[0] == "INTEL-SA-00106"
    assert spr.qe_identity.id == "TD_QE"
    assert spr.qe_identity.attributes_mask.hex().startswith("fbff")
    assert [
        cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        for cert in spr.tcb_info_issuer_chain
    ] == ["Intel SGX TCB Signing", "Intel SGX Root CA"]
    trustee = dcap.parse_tcb_info((TRUSTEE / "tcbInfo.json").read_bytes())
    assert [identity.id for identity in trustee.tdx_module_identities] == ["TDX_03", "TDX_01"]
    qvl = qvl_collateral()
    assert qvl.tcb_info is not None
    assert qvl.tcb_info.body.startswith(b'{"id":"TDX","version":3')


def test_issuer_chain_url_encoded_as_in_the_pcs_header() -> None:
    pem = (SPR / "tcb_info_issuer_chain.pem").read_bytes()
    encoded = "".join(f"%{byte:02X}" if chr(byte) in "-+/= \n" else chr(byte) for byte in pem)
    assert dcap.parse_issuer_chain(encoded.encode()) == dcap.parse_issuer_chain(pem)


def test_crl_der_and_pem() -> None:
    der = (SPR / "root_crl.der").read_bytes()
    crl = dcap.parse_crl(der)
    assert dcap.parse_crl(crl.public_bytes(serialization.Encoding.PEM)) == crl
    with pytest.raises(EvidenceFormatError, match="neither DER"):
        dcap.parse_crl(b"hello")


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (lambda s: s.replace('"version":3', '"version":4'), r"tcbInfo.version must be 2 or 3"),
        (lambda s: s.replace('"fmspc":"50806f000000"', '"fmspc":"50806f"'), "fmspc must be 6"),
        (lambda s: s.replace('"tcbStatus":"UpToDate"', '"tcbStatus":"Fine"'), r"tcbStatus"),
        (lambda s: s.replace('"pcesvn":11', '"pcesvn":11.5'), "non-integer"),
        (lambda s: s.replace('"pcesvn":11', '"pcesvn":true'), r"pcesvn must be an integer"),
        (lambda s: s.replace('"issueDate":"2023-06-18T08:42:58Z"', '"issueDate":"today"'), "date"),
        (lambda s: s.replace('{"tcbInfo":', '{"tcbInfo":{},"tcbInfo":'), "duplicate key"),
        (lambda s: s + "x", "unexpected text"),
        (lambda s: s.replace('"signature":"f6', '"signature":"'), "signature must be 64 bytes"),
        (lambda s: s.replace('"svn":5,', '"svn":NaN,', 1), "NaN is not allowed"),
        (lambda s: s.replace(',{"svn":0}]', "]", 1), "16 components"),
    ],
)
def test_tcb_info_format_errors(mutation: Callable[[str], str], message: str) -> None:
    text = (SPR / "tcb_info_response.json").read_text()
    mutated = mutation(text)
    assert mutated != text
    with pytest.raises(EvidenceFormatError, match=message):
        dcap.parse_tcb_info(mutated.encode())


def test_collateral_size_limit() -> None:
    with pytest.raises(EvidenceFormatError, match="exceed the limit"):
        dcap.parse_tcb_info(b" " * (dcap_limits.MAX_COLLATERAL_JSON_BYTES + 1))


# --- hypothesis: only EvidenceFormatError escapes a parser -------------------------------------


_FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_format_errors(parse: Callable[[bytes], object], data: bytes) -> None:
    with contextlib.suppress(EvidenceFormatError):
        parse(data)


def _mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """`seed` with a few bytes changed, cut or inserted: deep into the parser."""

    def apply(edits: list[tuple[int, int, int]]) -> bytes:
        out = bytearray(seed)
        for kind, where, value in edits:
            position = where % max(len(out), 1)
            if kind == 0 and out:
                out[position] = value
            elif kind == 1:
                del out[position:]
            else:
                out[position:position] = bytes([value])
        return bytes(out)

    edit = st.tuples(st.integers(0, 2), st.integers(0, len(seed)), st.integers(0, 255))
    return st.lists(edit, min_size=1, max_size=4).map(apply)


def _fuzz_inputs(seed: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=2048), _mutations(seed))


_QUOTE_SEED = (QVL / "quote.dat").read_bytes()
_V3_SEED = (OCCLUM / "quote.dat").read_bytes()
_TCB_SEED = (SPR / "tcb_info_response.json").read_bytes()
_QE_SEED = (SPR / "qe_identity_response.json").read_bytes()
_QVL_SEED = (QVL / "collateral.json").read_bytes()
_CRL_SEED = (SPR / "root_crl.der").read_bytes()
_CHAIN_SEED = (SPR / "tcb_info_issuer_chain.pem").read_bytes()
_ENARX_SEED = enarx_extension()[0]


@_FUZZ
@given(st.one_of(_fuzz_inputs(_QUOTE_SEED), _mutations(_V3_SEED)))
def test_fuzz_parse_quote(data: bytes) -> None:
    _only_format_errors(dcap.parse_quote, data)


@_FUZZ
@given(_fuzz_inputs(_TCB_SEED))
def test_fuzz_parse_tcb_info(data: bytes) -> None:
    _only_format_errors(dcap.parse_tcb_info, data)


@_FUZZ
@given(_fuzz_inputs(_QE_SEED))
def test_fuzz_parse_qe_identity(data: bytes) -> None:
    _only_format_errors(dcap.parse_qe_identity, data)


@_FUZZ
@given(_fuzz_inputs(_QVL_SEED))
def test_fuzz_parse_qvl_collateral(data: bytes) -> None:
    _only_format_errors(dcap.parse_qvl_collateral, data)


@_FUZZ
@given(_fuzz_inputs(_CRL_SEED))
def test_fuzz_parse_crl(data: bytes) -> None:
    _only_format_errors(dcap.parse_crl, data)


@_FUZZ
@given(_fuzz_inputs(_CHAIN_SEED))
def test_fuzz_parse_issuer_chain(data: bytes) -> None:
    _only_format_errors(dcap.parse_issuer_chain, data)


@_FUZZ
@given(_fuzz_inputs(_ENARX_SEED))
def test_fuzz_parse_enarx_sgx_extension(data: bytes) -> None:
    _only_format_errors(dcap.parse_enarx_sgx_extension, data)


_PCK_EXTENSION_SEED = (
    quote_of(QVL / "quote.dat")
    .signature_data.pck_chain[0]
    .extensions.get_extension_for_oid(x509.ObjectIdentifier(dcap_pck.SGX_EXTENSION_OID))
    .value.public_bytes()
)


@_FUZZ
@given(_fuzz_inputs(_PCK_EXTENSION_SEED))
def test_fuzz_pck_extension(data: bytes) -> None:
    _only_format_errors(dcap_pck._parse, data)


@settings(max_examples=60, deadline=None)
@given(_mutations(_QUOTE_SEED))
def test_fuzz_verify_never_crashes(data: bytes) -> None:
    # Whatever parses, verification runs to its end with a verdict.
    try:
        quote = dcap.parse_quote(data)
    except EvidenceFormatError:
        return
    collateral = qvl_collateral()
    verdict = dcap.verify_quote(quote, collateral, now=datetime(2025, 6, 20, tzinfo=UTC))
    assert verdict.checks


# --- a synthetic PKI, for what Intel's keys cannot be made to sign ------------------------------

NOT_BEFORE = datetime(2024, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2034, 1, 1, tzinfo=UTC)
NOW = datetime(2025, 1, 15, tzinfo=UTC)
FMSPC = bytes.fromhex("00906ed50000")
QE_MRSIGNER = bytes(range(32))
SGX_OID = dcap_pck.SGX_EXTENSION_OID


def _tlv(tag: int, content: bytes) -> bytes:
    if len(content) < 0x80:
        return bytes([tag, len(content)]) + content
    size = len(content).to_bytes((len(content).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _oid(dotted: str) -> bytes:
    arcs = [int(arc) for arc in dotted.split(".")]
    out = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7  # noqa: PLW2901
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7  # noqa: PLW2901
        out.extend(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _int(value: int, tag: int = 0x02) -> bytes:
    return _tlv(tag, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _sgx_extension(components: Sequence[int], pce_svn: int) -> bytes:
    tcb = [_seq(_oid(f"{SGX_OID}.2.{i + 1}"), _int(svn)) for i, svn in enumerate(components)]
    tcb.append(_seq(_oid(f"{SGX_OID}.2.17"), _int(pce_svn)))
    tcb.append(_seq(_oid(f"{SGX_OID}.2.18"), _tlv(0x04, bytes(components))))
    return _seq(
        _seq(_oid(f"{SGX_OID}.1"), _tlv(0x04, bytes(16))),
        _seq(_oid(f"{SGX_OID}.2"), _seq(*tcb)),
        _seq(_oid(f"{SGX_OID}.3"), _tlv(0x04, b"\0\0")),
        _seq(_oid(f"{SGX_OID}.4"), _tlv(0x04, FMSPC)),
        _seq(_oid(f"{SGX_OID}.5"), _int(0, 0x0A)),
    )


def _raw_sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]


class _Pki:
    """Root -> PCK Platform CA -> PCK, root -> TCB Signing, and an attestation key."""

    def __init__(
        self,
        *,
        components: Sequence[int] = (5,) * 16,
        pce_svn: int = 13,
        pck_not_after: datetime = NOT_AFTER,
    ) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._cert("Test SGX Root CA", self.root_key, None, ca=True)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = self._cert(
            "Intel SGX PCK Platform CA", self.ca_key, (self.root, self.root_key), ca=True
        )
        self.pck_key = ec.generate_private_key(ec.SECP256R1())
        self.pck = self._cert(
            "Intel SGX PCK Certificate",
            self.pck_key,
            (self.ca, self.ca_key),
            ca=False,
            extension=_sgx_extension(components, pce_svn),
            not_after=pck_not_after,
        )
        self.signer_key = ec.generate_private_key(ec.SECP256R1())
        self.signer = self._cert(
            "Intel SGX TCB Signing", self.signer_key, (self.root, self.root_key), ca=False
        )
        self.attestation_key = ec.generate_private_key(ec.SECP256R1())

    @staticmethod
    def _cert(
        name: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
        *,
        ca: bool,
        extension: bytes | None = None,
        not_after: datetime = NOT_AFTER,
    ) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer[0].subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOT_BEFORE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if extension is not None:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_OID), extension),
                critical=False,
            )
        return builder.sign(issuer[1] if issuer else key, hashes.SHA256())

    def crl(
        self,
        issuer: str,
        revoked: Sequence[x509.Certificate] = (),
        *,
        next_update: datetime = NOT_AFTER,
    ) -> x509.CertificateRevocationList:
        cert, key = (self.root, self.root_key) if issuer == "root" else (self.ca, self.ca_key)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(cert.subject)
            .last_update(NOT_BEFORE)
            .next_update(next_update)
        )
        for item in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(item.serial_number)
                .revocation_date(NOT_BEFORE)
                .build()
            )
        return builder.sign(key, hashes.SHA256())

    def signed(self, name: str, body: dict[str, Any]) -> bytes:
        """A PCS response: the body as served, and its signature by the TCB Signing key."""
        text = json.dumps(body, separators=(",", ":")).encode()
        signature = _raw_sign(self.signer_key, text).hex()
        return b'{"' + name.encode() + b'":' + text + b',"signature":"' + signature.encode() + b'"}'


def _sgx_body(*, debug: bool = False, report_data: bytes = bytes(64)) -> bytes:
    body = bytearray(384)
    body[48] = 0x05 | (0x02 if debug else 0)  # INIT, MODE64BIT (and DEBUG)
    body[64:96] = b"\x11" * 32  # MRENCLAVE
    body[128:160] = b"\x22" * 32  # MRSIGNER
    body[256:258] = struct.pack("<H", 7)
    body[258:260] = struct.pack("<H", 3)
    body[320:384] = report_data
    return bytes(body)


def _td_body(
    *,
    debug: bool = False,
    tee_tcb_svn: bytes = bytes([5, 0, 5]) + bytes(13),
    mrsignerseam: bytes = bytes(48),
    tdx_15: bool = False,
    tee_tcb_svn_2: bytes = bytes(16),
    report_data: bytes = bytes(64),
) -> bytes:
    body = bytearray(648 if tdx_15 else 584)
    body[0:16] = tee_tcb_svn
    body[64:112] = mrsignerseam
    body[120:128] = ((1 << 28) | (1 if debug else 0)).to_bytes(8, "little")
    body[136:184] = b"\x33" * 48  # MRTD
    body[520:584] = report_data
    if tdx_15:
        body[584:600] = tee_tcb_svn_2
    return bytes(body)


def _quote(
    pki: _Pki,
    body: bytes,
    *,
    version: int = 3,
    tdx: bool = False,
    qe_isvsvn: int = 8,
    qe_miscselect: int = 0,
    qe_mrsigner: bytes = QE_MRSIGNER,
    qe_attributes: int = 0x11,  # INIT, PROVISIONKEY
    certification: tuple[int, bytes] | None = None,
) -> bytes:
    body_type = 1 if not tdx else (3 if len(body) == 648 else 2)
    header = struct.pack(
        "<HHIHH16s20s",
        version,
        2,
        0x81 if tdx else 0,
        0,
        0,
        dcap_quote.INTEL_QE_VENDOR_ID,
        bytes(20),
    )
    signed = header + (struct.pack("<HI", body_type, len(body)) if version == 5 else b"") + body
    attestation_key = _raw_public(pki.attestation_key)
    auth = bytes(range(32))
    qe_report = bytearray(384)
    qe_report[16:20] = struct.pack("<I", qe_miscselect)
    qe_report[48] = qe_attributes
    qe_report[128:160] = qe_mrsigner
    qe_report[256:258] = struct.pack("<H", 1)
    qe_report[258:260] = struct.pack("<H", qe_isvsvn)
    qe_report[320:352] = hashlib.sha256(attestation_key + auth).digest()
    chain = (
        b"".join(
            cert.public_bytes(serialization.Encoding.PEM) for cert in (pki.pck, pki.ca, pki.root)
        )
        + b"\0"
    )
    cert_type, cert_data = certification or (5, chain)
    certified = (
        bytes(qe_report)
        + _raw_sign(pki.pck_key, bytes(qe_report))
        + struct.pack("<H", len(auth))
        + auth
        + struct.pack("<HI", cert_type, len(cert_data))
        + cert_data
    )
    if version >= 4:
        certified = struct.pack("<HI", 6, len(certified)) + certified
    signature_data = _raw_sign(pki.attestation_key, signed) + attestation_key + certified
    return signed + struct.pack("<I", len(signature_data)) + signature_data


def _level(
    status: str,
    sgx: int = 5,
    pce_svn: int = 13,
    tdx: Sequence[int] | None = None,
    advisories: Sequence[str] = (),
) -> dict[str, Any]:
    tcb: dict[str, Any] = {"sgxtcbcomponents": [{"svn": sgx}] * 16, "pcesvn": pce_svn}
    if tdx is not None:
        tcb["tdxtcbcomponents"] = [{"svn": svn} for svn in tdx]
    level: dict[str, Any] = {"tcb": tcb, "tcbDate": "2024-06-01T00:00:00Z", "tcbStatus": status}
    if advisories:
        level["advisoryIDs"] = list(advisories)
    return level


def _tcb_info(
    pki: _Pki,
    levels: Sequence[dict[str, Any]],
    *,
    tdx: bool = False,
    identities: Sequence[dict[str, Any]] = (),
    next_update: str = "2025-02-01T00:00:00Z",
    version: int = 3,
) -> dcap.TcbInfo:
    body: dict[str, Any] = {
        "id": "TDX" if tdx else "SGX",
        "version": 3,
        "issueDate": "2025-01-01T00:00:00Z",
        "nextUpdate": next_update,
        "fmspc": FMSPC.hex().upper(),
        "pceId": "0000",
        "tcbType": 0,
        "tcbEvaluationDataNumber": 17,
    }
    if tdx:
        body["tdxModule"] = {
            "mrsigner": "00" * 48,
            "attributes": "00" * 8,
            "attributesMask": "FF" * 8,
        }
        if identities:
            body["tdxModuleIdentities"] = list(identities)
    body["tcbLevels"] = list(levels)
    if version == 2:  # SGX only: no id and no tcbType, flat component SVNs
        del body["id"], body["tcbType"]
        body["version"] = 2
        for level in body["tcbLevels"]:
            components = level["tcb"].pop("sgxtcbcomponents")
            for index, component in enumerate(components, start=1):
                level["tcb"][f"sgxtcbcomp{index:02d}svn"] = component["svn"]
    return dcap.parse_tcb_info(pki.signed("tcbInfo", body))


def _qe_identity(
    pki: _Pki, *, tdx: bool = False, levels: Sequence[tuple[int, str]] = ((8, "UpToDate"),)
) -> dcap.QeIdentity:
    body = {
        "id": "TD_QE" if tdx else "QE",
        "version": 2,
        "issueDate": "2025-01-01T00:00:00Z",
        "nextUpdate": "2025-02-01T00:00:00Z",
        "tcbEvaluationDataNumber": 17,
        "miscselect": "00000000",
        "miscselectMask": "FFFFFFFF",
        "attributes": "11000000000000000000000000000000",
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": QE_MRSIGNER.hex().upper(),
        "isvprodid": 1,
        "tcbLevels": [
            {"tcb": {"isvsvn": svn}, "tcbDate": "2024-06-01T00:00:00Z", "tcbStatus": status}
            for svn, status in levels
        ],
    }
    return dcap.parse_qe_identity(pki.signed("enclaveIdentity", body))


def _collateral(
    pki: _Pki,
    tcb_info: dcap.TcbInfo,
    qe_identity: dcap.QeIdentity,
    *,
    root_revokes: Sequence[x509.Certificate] = (),
    ca_revokes: Sequence[x509.Certificate] = (),
) -> dcap.Collateral:
    return dcap.Collateral(
        tcb_info=tcb_info,
        tcb_info_issuer_chain=(pki.signer, pki.root),
        qe_identity=qe_identity,
        qe_identity_issuer_chain=(pki.signer, pki.root),
        root_ca_crl=pki.crl("root", root_revokes),
        pck_crl=pki.crl("ca", ca_revokes),
    )


@pytest.fixture(scope="module")
def pki() -> _Pki:
    return _Pki()


def _sgx_case(pki: _Pki, **quote_options: Any) -> tuple[dcap.Quote, dcap.Collateral]:
    body = quote_options.pop("body", _sgx_body())
    quote = dcap.parse_quote(_quote(pki, body, **quote_options))
    collateral = _collateral(pki, _tcb_info(pki, [_level("UpToDate")]), _qe_identity(pki))
    return quote, collateral


@pytest.mark.parametrize("version", [3, 4, 5])
def test_synthetic_sgx_quote_is_accepted(pki: _Pki, version: int) -> None:
    quote, collateral = _sgx_case(pki, version=version)
    assert (quote.header.version, quote.body_type) == (version, dcap_quote.BODY_SGX)
    verdict = dcap.verify_quote(quote, collateral, now=NOW, root=pki.root)
    assert verdict.accepted, verdict.failures
    assert verdict.claims is not None
    assert verdict.claims.tcb_status == "UpToDate"
    assert verdict.claims.fields["isvprodid"] == 7
    # The same evidence is not trusted under Intel's root.
    assert not dcap.verify_quote(quote, collateral, now=NOW).accepted


@pytest.mark.parametrize(("version", "tdx_15"), [(4, False), (5, False), (5, True)])
def test_synthetic_tdx_quotes_are_accepted(pki: _Pki, version: int, tdx_15: bool) -> None:
    quote = dcap.parse_quote(_quote(pki, _td_body(tdx_15=tdx_15), version=version, tdx=True))
    assert quote.body_type == (3 if tdx_15 else 2)
    collateral = _collateral(
        pki,
        _tcb_info(pki, [_level("UpToDate", tdx=[5, 0, 5] + [0] * 13)], tdx=True),
        _qe_identity(pki, tdx=True),
    )
    verdict = dcap.verify_quote(quote, collateral, now=NOW, root=pki.root)
    assert verdict.accepted, verdict.failures


def test_sgx_tcb_info_v2_is_accepted(pki: _Pki) -> None:
    quote, collateral = _sgx_case(pki)
    v2 = _tcb_info(pki, [_level("SWHardeningNeeded")], version=2)
    assert (v2.version, v2.id, v2.tcb_levels[0].sgx_components) == (2, "SGX", (5,) * 16)
    verdict = dcap.verify_quote(
        quote, dataclasses.replace(collateral, tcb_info=v2), now=NOW, root=pki.root
    )
    assert verdict.accepted, verdict.failures
    assert verdict.claims is not None
    assert verdict.claims.tcb_status == "SWHardeningNeeded"


def test_certification_data_without_a_pck_chain(pki: _Pki) -> None:
    # Type 3: PPID encrypted with RSA-3072, PCE ID, CPUSVN, PCESVN: the PCK
    # certificate would have to be fetched, which is not this module's job.
    raw = _quote(pki, _sgx_body(), certification=(3, bytes(384 + 36)))
    quote = dcap.parse_quote(raw)
    assert quote.signature_data.pck_chain == ()
    verdict = dcap.verify_quote(quote, dcap.Collateral(), now=NOW, root=pki.root)
    assert "certification data type 3 carries no PCK chain" in check(verdict, "pck_chain").detail
    assert check(verdict, "quote_signature").passed
    assert check(verdict, "qe_report_signature").detail == "no PCK certificate to verify it with"


def test_revoked_pck_is_refused(pki: _Pki) -> None:
    quote, collateral = _sgx_case(pki)
    revoked = dataclasses.replace(collateral, pck_crl=pki.crl("ca", [pki.pck]))
    verdict = dcap.verify_quote(quote, revoked, now=NOW, root=pki.root)
    assert failed(verdict) == {"pck_crl"}
    assert "PCK CRL revokes Intel SGX PCK Certificate" in check(verdict, "pck_crl").detail


def test_revoked_pck_ca_is_refused(pki: _Pki) -> None:
    quote, collateral = _sgx_case(pki)
    revoked = dataclasses.replace(collateral, root_ca_crl=pki.crl("root", [pki.ca]))
    verdict = dcap.verify_quote(quote, revoked, now=NOW, root=pki.root)
    assert failed(verdict) == {"root_ca_crl"}
    assert "revokes Intel SGX PCK Platform CA" in check(verdict, "root_ca_crl").detail


def test_revoked_tcb_signing_certificate_is_refused(pki: _Pki) -> None:
    quote, collateral = _sgx_case(pki)
    revoked = dataclasses.replace(collateral, root_ca_crl=pki.crl("root", [pki.signer]))
    verdict = dcap.verify_quote(quote, revoked, now=NOW, root=pki.root)
    assert failed(verdict) == {"tcb_info_signature", "qe_identity_signature"}
    assert "revokes Intel SGX TCB Signing" in check(verdict, "tcb_info_signature").detail


def test_crl_signed_by_another_key_is_refused(pki: _Pki) -> None:
    quote, collateral = _sgx_case(pki)
    other = _Pki()
    forged = other.crl("ca")  # the same issuer name, another key
    verdict = dcap.verify_quote(
        quote, dataclasses.replace(collateral, pck_crl=forged), now=NOW, root=pki.root
    )
    assert "PCK CRL: the signature does not verify" in check(verdict, "pck_crl").detail


def test_expired_crl_is_refused(pki: _Pki) -> None:
    quote, collateral = _sgx_case(pki)
    stale = pki.crl("ca", next_update=NOW - timedelta(days=1))
    verdict = dcap.verify_quote(
        quote, dataclasses.replace(collateral, pck_crl=stale), now=NOW, root=pki.root
    )
    assert "PCK CRL expired at" in check(verdict, "pck_crl").detail


def test_expired_pck_is_refused() -> None:
    pki = _Pki(pck_not_after=NOW - timedelta(days=1))
    quote, collateral = _sgx_case(pki)
    verdict = dcap.verify_quote(quote, collateral, now=NOW, root=pki.root)
    assert failed(verdict) == {"pck_chain"}
    assert "Intel SGX PCK Certificate expired at" in check(verdict, "pck_chain").detail


@pytest.mark.parametrize("tdx", [False, True])
def test_debug_bit_is_refused(pki: _Pki, tdx: bool) -> None:
    if tdx:
        quote = dcap.parse_quote(_quote(pki, _td_body(debug=True), version=4, tdx=True))
        collateral = _collateral(
            pki,
            _tcb_info(pki, [_level("UpToDate", tdx=[5, 0, 5] + [0] * 13)], tdx=True),
            _qe_identity(pki, tdx=True),
        )
    else:
        quote, collateral = _sgx_case(pki, body=_sgx_body(debug=True))
    verdict = dcap.verify_quote(quote, collateral, now=NOW, root=pki.root)
    assert failed(verdict) == {"debug_disabled"}
    assert verdict.claims is not None
    assert verdict.claims.debug


def test_report_data_must_match(pki: _Pki) -> None:
    wanted = hashlib.sha512(b"keep key").digest()
    quote, collateral = _sgx_case(pki, body=_sgx_body(report_data=wanted))
    good = dcap.verify_quote(quote, collateral, now=NOW, root=pki.root, expected_report_data=wanted)
    assert good.accepted
    bad = dcap.verify_quote(
        quote, collateral, now=NOW, root=pki.root, expected_report_data=bytes(64)
    )
    assert failed(bad) == {"report_data"}


@pytest.mark.parametrize(
    ("levels", "qe_levels", "status", "passes"),
    [
        (
            [_level("SWHardeningNeeded", advisories=["INTEL-SA-00615"])],
            [(8, "UpToDate")],
            "SWHardeningNeeded",
            True,
        ),
        ([_level("UpToDate")], [(9, "UpToDate"), (8, "OutOfDate")], "OutOfDate", True),
        (
            [_level("ConfigurationNeeded")],
            [(9, "UpToDate"), (8, "OutOfDate")],
            "OutOfDateConfigurationNeeded",
            True,
        ),
        ([_level("UpToDate")], [(9, "UpToDate"), (8, "Revoked")], "Revoked", False),
        ([_level("Revoked")], [(8, "UpToDate")], "Revoked", False),
        # Levels are taken in order: the first at or below the platform's TCB.
        (
            [_level("UpToDate", sgx=6), _level("OutOfDate", sgx=5)],
            [(8, "UpToDate")],
            "OutOfDate",
            True,
        ),
        (
            [_level("UpToDate", pce_svn=14), _level("OutOfDate", pce_svn=13)],
            [(8, "UpToDate")],
            "OutOfDate",
            True,
        ),
    ],
)
def test_tcb_status_rules(
    pki: _Pki,
    levels: list[dict[str, Any]],
    qe_levels: list[tuple[int, str]],
    status: str,
    passes: bool,
) -> None:
    quote = dcap.parse_quote(_quote(pki, _sgx_body()))
    collateral = _collateral(pki, _tcb_info(pki, levels), _qe_identity(pki, levels=qe_levels))
    verdict = dcap.verify_quote(quote, collateral, now=NOW, root=pki.root)
    assert verdict.claims is not None
    assert verdict.claims.tcb_status == status
    assert check(verdict, "tcb_status").passed is passes
    assert failed(verdict) == (set() if passes else {"tcb_status"})
    if status == "SWHardeningNeeded":
        assert verdict.claims.advisories == ("INTEL-SA-00615",)


def test_no_matching_level(pki: _Pki) -> None:
    quote = dcap.parse_quote(_quote(pki, _sgx_body()))
    collateral = _collateral(pki, _tcb_info(pki, [_level("UpToDate", sgx=6)]), _qe_identity(pki))
    verdict = dcap.verify_quote(quote, collateral, now=NOW, root=pki.root)
    assert failed(verdict) == {"tcb_level", "tcb_status"}
    low = _qe_identity(pki, levels=[(9, "UpToDate")])
    verdict = dcap.verify_quote(
        quote, dataclasses.replace(collateral, qe_identity=low), now=NOW, root=pki.root
    )
    assert "QE ISVSVN 8 is below every TCB level" in check(verdict, "qe_identity_tcb").detail


def test_qe_identity_must_match_the_qe(pki: _Pki) -> None:
    quote, collateral = _sgx_case(pki, qe_miscselect=1)
    verdict = dcap.verify_quote(quote, collateral, now=NOW, root=pki.root)
    assert "QE MISCSELECT 00000001" in check(verdict, "qe_identity_match").detail
    quote, collateral = _sgx_case(pki)
    td_qe = dataclasses.replace(collateral, qe_identity=_qe_identity(pki, tdx=True))
    verdict = dcap.verify_quote(quote, td_qe, now=NOW, root=pki.root)
    assert "QE Identity TD_QE v2 is not QE v2" in check(verdict, "qe_identity_match").detail


INTEL_QE_MRSIGNER = bytes.fromhex(
    "8c4f5775d796503e96137f77c68a829a0056ac8ded70140b081b094490c57bff"
)


def test_without_qe_identity_the_qe_must_be_intels(pki: _Pki) -> None:
    """No QE Identity given: the QE report must still name Intel's QE signer
    and product, and not be a debug enclave; the QE's TCB is left unchecked."""
    quote, collateral = _sgx_case(pki, qe_mrsigner=INTEL_QE_MRSIGNER)
    bare = dataclasses.replace(collateral, qe_identity=None, qe_identity_issuer_chain=())
    verdict = dcap.verify_quote(quote, bare, now=NOW, root=pki.root)
    assert verdict.accepted, verdict.failures
    assert verdict.claims is not None
    assert verdict.claims.fields["qe_identity_checked"] is False
    assert "not checked" in check(verdict, "qe_identity_tcb").detail

    quote, _ = _sgx_case(pki)  # a QE signed by someone else
    verdict = dcap.verify_quote(quote, bare, now=NOW, root=pki.root)
    assert failed(verdict) == {"qe_identity_match"}
    assert "is not Intel's QE signer" in check(verdict, "qe_identity_match").detail

    quote, _ = _sgx_case(pki, qe_mrsigner=INTEL_QE_MRSIGNER, qe_attributes=0x13)
    verdict = dcap.verify_quote(quote, bare, now=NOW, root=pki.root)
    assert check(verdict, "qe_identity_match").detail == "the QE is a debug enclave"

    quote, _ = _sgx_case(pki, qe_mrsigner=INTEL_QE_MRSIGNER, version=4, tdx=True, body=_td_body())
    verdict = dcap.verify_quote(quote, bare, now=NOW, root=pki.root)
    assert "is not Intel's TD_QE signer" in check(verdict, "qe_identity_match").detail


def test_tcb_info_of_another_platform_or_tee(pki: _Pki) -> None:
    quote, collateral = _sgx_case(pki)
    tdx_info = _tcb_info(pki, [_level("UpToDate", tdx=[0] * 16)], tdx=True)
    verdict = dcap.verify_quote(
        quote, dataclasses.replace(collateral, tcb_info=tdx_info), now=NOW, root=pki.root
    )
    assert "is not for SGX" in check(verdict, "tcb_info_applies").detail
    assert "TCB Info is for TDX, the quote is SGX" in check(verdict, "tcb_level").detail


def _tdx_module_case(
    pki: _Pki, *, tee_tcb_svn: bytes, identities: Sequence[dict[str, Any]], **body: Any
) -> Verdict:
    quote = dcap.parse_quote(
        _quote(pki, _td_body(tee_tcb_svn=tee_tcb_svn, **body), version=5, tdx=True)
    )
    levels = [
        _level("UpToDate", tdx=[0, 0, 3] + [0] * 13),
        _level("OutOfDate", tdx=[0, 0, 2] + [0] * 13),
    ]
    collateral = _collateral(
        pki,
        _tcb_info(pki, levels, tdx=True, identities=identities),
        _qe_identity(pki, tdx=True),
    )
    return dcap.verify_quote(quote, collateral, now=NOW, root=pki.root)


def _identity(
    version: int, levels: Sequence[tuple[int, str]], mrsigner: str = "00" * 48
) -> dict[str, Any]:
    return {
        "id": f"TDX_{version:02X}",
        "mrsigner": mrsigner,
        "attributes": "00" * 8,
        "attributesMask": "FF" * 8,
        "tcbLevels": [
            {"tcb": {"isvsvn": svn}, "tcbDate": "2024-06-01T00:00:00Z", "tcbStatus": status}
            for svn, status in levels
        ],
    }


def test_tdx_module_identity_rules(pki: _Pki) -> None:
    identities = [_identity(1, [(6, "UpToDate"), (2, "OutOfDate")])]
    # Module version 1, ISVSVN 6: the module is current.
    verdict = _tdx_module_case(pki, tee_tcb_svn=bytes([6, 1, 3]) + bytes(13), identities=identities)
    assert verdict.accepted, verdict.failures
    # ISVSVN 4: the module is OutOfDate, and so is the TCB.
    verdict = _tdx_module_case(pki, tee_tcb_svn=bytes([4, 1, 3]) + bytes(13), identities=identities)
    assert verdict.claims is not None
    assert verdict.claims.tcb_status == "OutOfDate"
    assert check(verdict, "tdx_module").detail == "TDX_01 ISVSVN 4: OutOfDate"
    # ISVSVN 1: below every level of the module identity.
    verdict = _tdx_module_case(pki, tee_tcb_svn=bytes([1, 1, 3]) + bytes(13), identities=identities)
    assert "below every level of TDX_01" in check(verdict, "tdx_module").detail
    # Module version 2: no identity for it.
    verdict = _tdx_module_case(pki, tee_tcb_svn=bytes([6, 2, 3]) + bytes(13), identities=identities)
    assert "no TDX module identity TDX_02" in check(verdict, "tdx_module").detail
    # Another module signer.
    verdict = _tdx_module_case(
        pki,
        tee_tcb_svn=bytes([6, 1, 3]) + bytes(13),
        identities=identities,
        mrsignerseam=b"\x01" * 48,
    )
    assert "MRSIGNERSEAM 0101" in check(verdict, "tdx_module").detail
    assert "the TDX module was not matched" in check(verdict, "tcb_status").detail


def test_tdx_15_relaunch_advised(pki: _Pki) -> None:
    # The platform was updated (TEE_TCB_SVN_2 is current) but the TD runs on
    # the old module: Intel advises relaunching it.
    identities = [_identity(1, [(6, "UpToDate"), (2, "OutOfDate")])]
    verdict = _tdx_module_case(
        pki,
        tee_tcb_svn=bytes([4, 1, 2]) + bytes(13),
        identities=identities,
        tdx_15=True,
        tee_tcb_svn_2=bytes([6, 1, 3]) + bytes(13),
    )
    assert verdict.claims is not None
    assert verdict.claims.tcb_status == "TDRelaunchAdvised"
    assert check(verdict, "tcb_status").passed


def test_verifier_caches_signature_checks(pki: _Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    quote, collateral = _sgx_case(pki)
    calls: list[int] = []
    original = dcap._ecdsa_problem

    def counting(key: object, signature: bytes, data: bytes) -> str | None:
        calls.append(len(data))
        return original(key, signature, data)

    monkeypatch.setattr(dcap, "_ecdsa_problem", counting)
    verifier = dcap.DcapVerifier(root=pki.root)
    first = verifier.verify_quote(quote, collateral, now=NOW)
    cold = len(calls)
    calls.clear()
    second = verifier.verify_quote(quote, collateral, now=NOW)
    assert first == second
    assert first.accepted
    # QE report, TCB Info and QE Identity signatures come from the cache;
    # only the quote's own signature is checked again.
    assert cold == 4
    assert calls == [len(quote.signed_data)]
    # Other bytes are not served from the cache.
    assert collateral.tcb_info is not None
    forged = dataclasses.replace(
        collateral, tcb_info=dataclasses.replace(collateral.tcb_info, signature=bytes(64))
    )
    assert not check(verifier.verify_quote(quote, forged, now=NOW), "tcb_info_signature").passed


def test_parsed_dataclasses_check_their_invariants() -> None:
    body = quote_of(OCCLUM / "quote.dat").body
    assert isinstance(body, dcap.SgxReportBody)
    with pytest.raises(ValueError, match="mrenclave must be 32 bytes"):
        dataclasses.replace(body, mrenclave=b"short")
    with pytest.raises(ValueError, match="unknown TCB status"):
        dcap.TcbLevel((0,) * 16, 0, None, NOW, "Fine")
    assert {"UpToDate", "Revoked"} <= dcap_collateral.TCB_STATUSES
