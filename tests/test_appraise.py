"""Appraising keeps' CSRs (wasmkeep.attestation.appraise): the real Enarx CSRs,
wasmkeep CSRs made here, and any bytes at all."""

from __future__ import annotations

import contextlib
import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.keep_csrs import (
    DIGEST,
    ICELAKE_CSR,
    ICELAKE_NOW,
    ICELAKE_POLICY,
    INSECURE_POLICY,
    MILAN_CSR,
    MILAN_MEASUREMENT,
    MILAN_NOW,
    OTHER_DIGEST,
    cert_table,
    csr_with,
    software_csr,
    spki_of,
    wasmkeep_csr,
)
from wasmkeep.attestation import appraise as appraise_module
from wasmkeep.attestation.appraise import (
    Appraisal,
    CsrForm,
    SnpCertificates,
    appraise_csr,
)
from wasmkeep.attestation.dcap import parse_qvl_collateral
from wasmkeep.attestation.errors import EvidenceFormatError
from wasmkeep.attestation.keep_csr import (
    ENARX_SGX_OID,
    ENARX_SNP_OID,
    EVIDENCE_OID,
    WORKLOAD_DIGEST_OID,
    EvidenceForm,
    KeepEvidence,
    encode_evidence,
    encode_workload_digest,
)
from wasmkeep.attestation.policy import Policy, default_policy, parse_policy
from wasmkeep.attestation.snp import load_amd_certificate
from wasmkeep.attestation.snp_capture import GUID_VCEK
from wasmkeep.attestation.software import SoftwareEvidence

ASSETS = Path(__file__).parent / "assets" / "attestation"
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def names(appraisal: Appraisal) -> dict[str, str]:
    return {check.name: check.detail for check in appraisal.verdict.checks}


def failures(appraisal: Appraisal) -> list[str]:
    return [check.name for check in appraisal.failures]


# -- Enarx's CSRs ---------------------------------------------------------------------------


def test_the_enarx_milan_csr_is_accepted_under_a_policy_naming_its_measurement() -> None:
    policy = parse_policy(f'[snp]\nmeasurements = ["{MILAN_MEASUREMENT}"]\n')
    appraisal = appraise_csr(MILAN_CSR.read_bytes(), policy=policy, now=MILAN_NOW)
    assert appraisal.accepted, appraisal.failures
    assert appraisal.form is CsrForm.ENARX_SNP
    assert appraisal.form.enarx
    assert appraisal.backend == "snp"
    assert appraisal.workload_digest is None  # Enarx binds no workload
    assert appraisal.names == ()
    assert [check.name for check in appraisal.verdict.checks[:2]] == ["csr_signature", "binding"]
    assert "SHA-384 of the CSR's key" in names(appraisal)["binding"]
    assert appraisal.claims is not None
    assert appraisal.claims.measurement.hex() == MILAN_MEASUREMENT
    csr = x509.load_der_x509_csr(MILAN_CSR.read_bytes())
    assert appraisal.spki == csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_the_enarx_milan_csr_is_refused_under_a_policy_naming_another() -> None:
    policy = parse_policy(f'[snp]\nmeasurements = ["{"00" * 48}"]\n')
    appraisal = appraise_csr(MILAN_CSR.read_bytes(), policy=policy, now=MILAN_NOW)
    assert failures(appraisal) == ["policy_measurement"]
    assert "is not one of the 1 listed" in names(appraisal)["policy_measurement"]


def test_the_enarx_milan_csr_in_pem() -> None:
    csr = x509.load_der_x509_csr(MILAN_CSR.read_bytes())
    appraisal = appraise_csr(
        csr.public_bytes(serialization.Encoding.PEM), policy=default_policy(), now=MILAN_NOW
    )
    assert appraisal.accepted, appraisal.failures


def test_the_enarx_icelake_csr() -> None:
    data = ICELAKE_CSR.read_bytes()
    refused = appraise_csr(data, policy=default_policy(), now=ICELAKE_NOW)
    assert set(failures(refused)) == {
        "policy_tcb_status",
        "policy_advisories",
        "policy_qe_identity",
    }
    accepted = appraise_csr(data, policy=parse_policy(ICELAKE_POLICY), now=ICELAKE_NOW)
    assert accepted.accepted, accepted.failures
    assert accepted.form is CsrForm.ENARX_SGX
    assert accepted.backend == "sgx"
    assert "SHA-256 of the CSR's key" in names(accepted)["binding"]
    pinned = parse_policy(ICELAKE_POLICY + f'mrenclave = ["{"00" * 32}"]\n')
    assert failures(appraise_csr(data, policy=pinned, now=ICELAKE_NOW)) == ["policy_measurement"]


def test_a_tampered_signature_fails_only_its_check() -> None:
    data = bytearray(MILAN_CSR.read_bytes())
    data[-5] ^= 0x01  # inside the CSR's signature
    appraisal = appraise_csr(bytes(data), policy=default_policy(), now=MILAN_NOW)
    assert failures(appraisal) == ["csr_signature"]
    assert "does not verify" in names(appraisal)["csr_signature"]


def test_enarx_evidence_for_another_key_is_refused_on_the_binding() -> None:
    """The Milan evidence moved into a CSR signed by another key."""
    csr = x509.load_der_x509_csr(MILAN_CSR.read_bytes())
    extension = csr.extensions.get_extension_for_oid(x509.ObjectIdentifier(ENARX_SNP_OID))
    assert isinstance(extension.value, x509.UnrecognizedExtension)
    moved = csr_with([(ENARX_SNP_OID, extension.value.value)])
    appraisal = appraise_csr(moved.der, policy=default_policy(), now=MILAN_NOW)
    assert failures(appraisal) == ["binding", "report_data"]
    assert "another key" in names(appraisal)["binding"]


# -- wasmkeep's CSRs with software evidence -------------------------------------------------


@pytest.mark.parametrize("backend", ["nil", "process"])
def test_software_evidence_is_accepted_only_where_the_policy_allows_it(backend: str) -> None:
    csr = software_csr(backend=backend, names=("keep.example", "127.0.0.1", "::1"))
    refused = appraise_csr(csr.der, policy=default_policy(), now=NOW)
    assert failures(refused) == ["policy_insecure_allowed"]
    accepted = appraise_csr(csr.der, policy=parse_policy(INSECURE_POLICY), now=NOW)
    assert accepted.accepted, accepted.failures
    assert accepted.form is CsrForm.SOFTWARE
    assert not accepted.form.enarx
    assert accepted.backend == backend
    assert accepted.workload_digest == DIGEST
    assert accepted.spki == csr.spki
    assert [str(name.value) for name in accepted.names] == ["keep.example", "127.0.0.1", "::1"]
    assert [check.name for check in accepted.verdict.checks[:3]] == [
        "csr_signature",
        "binding",
        "insecure_evidence",
    ]
    only_vm = parse_policy('[insecure]\nallow = true\nbackends = ["vm"]\n')
    assert failures(appraise_csr(csr.der, policy=only_vm, now=NOW)) == ["policy_insecure_backend"]


def test_a_workload_not_in_the_policy_is_refused() -> None:
    policy = parse_policy(INSECURE_POLICY + f'[workload]\ndigests = ["{OTHER_DIGEST}"]\n')
    appraisal = appraise_csr(software_csr().der, policy=policy, now=NOW)
    assert failures(appraisal) == ["policy_workload_digest"]
    pinned = parse_policy(INSECURE_POLICY + f'[workload]\ndigests = ["{DIGEST}"]\n')
    assert appraise_csr(software_csr().der, policy=pinned, now=NOW).accepted


def test_evidence_for_another_key_is_refused_on_the_binding() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    csr = software_csr(bind_spki=spki_of(other))
    appraisal = appraise_csr(csr.der, policy=parse_policy(INSECURE_POLICY), now=NOW)
    assert failures(appraisal) == ["binding", "report_data"]
    assert "another key or another workload" in names(appraisal)["binding"]
    assert appraisal.workload_digest is None  # nothing is bound


def test_evidence_for_another_workload_is_refused_on_the_binding() -> None:
    policy = parse_policy(INSECURE_POLICY + f'[workload]\ndigests = ["{DIGEST}"]\n')
    csr = software_csr(bind_digest=OTHER_DIGEST)
    appraisal = appraise_csr(csr.der, policy=policy, now=NOW)
    # The digest is not bound, so the policy cannot know the workload either.
    assert failures(appraisal) == ["binding", "report_data", "policy_workload_digest"]


def test_software_evidence_claiming_another_workload_is_refused() -> None:
    csr = software_csr(claimed_digest=OTHER_DIGEST)
    appraisal = appraise_csr(csr.der, policy=parse_policy(INSECURE_POLICY), now=NOW)
    assert failures(appraisal) == ["binding"]
    assert "claims workload" in names(appraisal)["binding"]


def test_a_bad_signature_is_refused() -> None:
    csr = software_csr()
    other = ec.generate_private_key(ec.SECP256R1())
    # The same request signed by another key than the one it carries.
    parsed = x509.load_der_x509_csr(csr.der)
    tbs = bytearray(csr.der)
    signature = other.sign(parsed.tbs_certrequest_bytes, ec.ECDSA(hashes.SHA256()))
    assert parsed.signature in tbs
    start = tbs.index(parsed.signature)
    if len(signature) == len(parsed.signature):
        tbs[start : start + len(signature)] = signature
        appraisal = appraise_csr(bytes(tbs), policy=parse_policy(INSECURE_POLICY), now=NOW)
        assert failures(appraisal) == ["csr_signature"]
    flipped = bytearray(csr.der)
    flipped[-3] ^= 0x40
    with contextlib.suppress(EvidenceFormatError):  # a flip may break the DER instead
        appraisal = appraise_csr(bytes(flipped), policy=parse_policy(INSECURE_POLICY), now=NOW)
        assert failures(appraisal) == ["csr_signature"]


# -- wasmkeep's CSRs with hardware evidence (real reports, not bound to our keys) -----------


def test_an_snp_report_with_its_certificate_table() -> None:
    folder = ASSETS / "snp" / "milan-virtee"
    vcek = (folder / "vcek.der").read_bytes()
    evidence = KeepEvidence(
        EvidenceForm.SNP_REPORT,
        (folder / "report.bin").read_bytes(),
        cert_table([(GUID_VCEK, vcek)]),
    )
    csr = wasmkeep_csr(evidence)
    lenient = parse_policy("[snp]\nallow_unchecked_revocation = true\n")
    now = datetime.datetime(2024, 6, 1, tzinfo=datetime.UTC)
    appraisal = appraise_csr(csr.der, policy=lenient, now=now)
    # Verified to AMD's root and signed, but made for another key: refused on the binding.
    assert failures(appraisal) == ["binding", "report_data"]
    assert appraisal.form is CsrForm.SNP_REPORT
    assert appraisal.backend == "snp"
    checks = names(appraisal)
    assert "verifies with the VCEK" in checks["report_signature"]
    # Without the table, the VCEK must come from the caller.
    bare = wasmkeep_csr(KeepEvidence(EvidenceForm.SNP_REPORT, (folder / "report.bin").read_bytes()))
    with pytest.raises(EvidenceFormatError, match="without the VCEK"):
        appraise_csr(bare.der, policy=lenient, now=now)
    given = SnpCertificates(vcek=load_amd_certificate(vcek))
    appraisal = appraise_csr(bare.der, policy=lenient, now=now, snp_certificates=given)
    assert failures(appraisal) == ["binding", "report_data"]


def test_a_tdx_quote_with_collateral() -> None:
    folder = ASSETS / "tdx" / "dcap-qvl-uptodate"
    collateral = parse_qvl_collateral((folder / "collateral.json").read_bytes())
    csr = wasmkeep_csr(KeepEvidence(EvidenceForm.TDX_QUOTE, (folder / "quote.dat").read_bytes()))
    now = datetime.datetime(2025, 6, 19, 11, tzinfo=datetime.UTC)
    appraisal = appraise_csr(csr.der, policy=default_policy(), now=now, collateral=collateral)
    assert failures(appraisal) == ["binding", "report_data"]
    assert appraisal.backend == "tdx"
    assert names(appraisal)["quote_signature"]
    sgx_quote = (ASSETS / "sgx" / "occlum-trustee" / "quote.dat").read_bytes()
    wrong = wasmkeep_csr(KeepEvidence(EvidenceForm.TDX_QUOTE, sgx_quote))
    with pytest.raises(EvidenceFormatError, match="a sgx quote, not tdx"):
        appraise_csr(wrong.der, policy=default_policy(), now=now)


# -- malformed requests -----------------------------------------------------------------------


def _software_extension(digest: str = DIGEST) -> bytes:
    evidence = SoftwareEvidence("process", bytes(64), bytes(16), digest)
    return encode_evidence(KeepEvidence(EvidenceForm.SOFTWARE, evidence.encode()))


@pytest.mark.parametrize(
    ("extensions", "message"),
    [
        ([], "carries no Enarx evidence extension"),
        ([("1.3.6.1.4.1.58270.1.1", b"")], "only Enarx's KVM extension"),
        (
            [(EVIDENCE_OID, _software_extension()), (ENARX_SNP_OID, b"\x30\x00")],
            "carries 2 evidence extensions",
        ),
        ([(EVIDENCE_OID, _software_extension())], "no workload digest extension"),
        (
            [(ENARX_SGX_OID, b"\x30\x00"), (WORKLOAD_DIGEST_OID, encode_workload_digest(DIGEST))],
            "Enarx evidence binds no workload",
        ),
        (
            [(EVIDENCE_OID, b"\x30\x00"), (WORKLOAD_DIGEST_OID, encode_workload_digest(DIGEST))],
            "expected 3 fields",
        ),
        ([(ENARX_SNP_OID, b"\x04\x00")], "enarx-snp evidence: Evidence at offset 0"),
        ([(ENARX_SGX_OID, b"\x30\x00")], "Enarx SGX evidence"),
    ],
)
def test_malformed_evidence_is_named(extensions: list[tuple[str, bytes]], message: str) -> None:
    csr = csr_with(extensions)
    with pytest.raises(EvidenceFormatError, match=message):
        appraise_csr(csr.der, policy=default_policy(), now=NOW)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the request is empty"),
        (b"\x01\x02\x03", "not a CSR"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "not"),
        (bytes(appraise_module.MAX_CSR_SIZE + 1), "over the limit"),
    ],
)
def test_bytes_that_are_no_csr(data: bytes, message: str) -> None:
    with pytest.raises(EvidenceFormatError, match=message):
        appraise_csr(data, policy=default_policy(), now=NOW)


def test_a_naive_time_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        appraise_csr(software_csr().der, policy=default_policy(), now=datetime.datetime(2026, 1, 1))


_POLICIES: list[Policy] = [default_policy(), parse_policy(INSECURE_POLICY)]


def _appraise_or_format_error(data: bytes, now: datetime.datetime) -> Appraisal | None:
    try:
        return appraise_csr(data, policy=_POLICIES[len(data) % 2], now=now)
    except EvidenceFormatError:
        return None


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_give_an_appraisal_or_a_format_error(data: bytes) -> None:
    _appraise_or_format_error(data, NOW)


_KEY = ec.generate_private_key(ec.SECP256R1())
_OIDS = [EVIDENCE_OID, WORKLOAD_DIGEST_OID, ENARX_SNP_OID, ENARX_SGX_OID, "1.3.6.1.4.1.58270.1.1"]


@st.composite
def _extension_values(draw: st.DrawFn) -> tuple[str, bytes]:
    oid = draw(st.sampled_from(_OIDS))
    if oid == EVIDENCE_OID and draw(st.booleans()):
        form = draw(st.sampled_from(list(EvidenceForm)))
        body = draw(st.binary(min_size=1, max_size=300))
        if form is EvidenceForm.SOFTWARE and draw(st.booleans()):
            body = SoftwareEvidence(
                "nil", draw(st.binary(min_size=64, max_size=64)), bytes(16)
            ).encode()
        aux = draw(st.binary(max_size=100)) if form is EvidenceForm.SNP_REPORT else b""
        return oid, encode_evidence(KeepEvidence(form, body, aux))
    if oid == WORKLOAD_DIGEST_OID and draw(st.booleans()):
        return oid, encode_workload_digest(draw(st.sampled_from([DIGEST, OTHER_DIGEST])))
    return oid, draw(st.binary(max_size=200))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    extensions=st.lists(_extension_values(), max_size=3, unique_by=lambda item: item[0]),
    names=st.lists(
        st.sampled_from(["keep.example", "127.0.0.1", "::1", "a..b", "*.example", "x" * 70]),
        max_size=4,
    ),
)
def test_hypothesis_made_csrs_give_an_appraisal_or_a_format_error(
    extensions: list[tuple[str, bytes]], names: list[str]
) -> None:
    with contextlib.suppress(ValueError):  # names pyca itself refuses to encode
        csr = csr_with(extensions, names=names, key=_KEY)
        _appraise_or_format_error(csr.der, NOW)


@pytest.mark.parametrize(("path", "now"), [(MILAN_CSR, MILAN_NOW), (ICELAKE_CSR, ICELAKE_NOW)])
def test_damaged_enarx_csrs_give_an_appraisal_or_a_format_error(
    path: Path, now: datetime.datetime
) -> None:
    data = path.read_bytes()
    step = max(1, len(data) // 60)
    for offset in range(0, len(data), step):
        for mask in (0x01, 0x80):
            damaged = bytearray(data)
            damaged[offset] ^= mask
            appraisal = _appraise_or_format_error(bytes(damaged), now)
            if appraisal is not None and offset > 16:
                # Every byte past the outer headers is signed: a changed one
                # that still parses cannot be accepted.
                assert not appraisal.accepted, offset
        _appraise_or_format_error(data[:offset], now)


def test_the_public_names() -> None:
    assert sorted(appraise_module.__all__) == sorted(
        [
            "ENARX_KVM_OID",
            "MAX_CSR_SIZE",
            "Appraisal",
            "CsrForm",
            "SnpCertificates",
            "appraise_csr",
            "parse_csr",
        ]
    )
