"""What a client reads from a keep's certificate: `steward.inspect` and
`wasmkeep steward inspect`, on certificates the Steward issued and on ones
damaged or forged."""

from __future__ import annotations

import contextlib
import datetime
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import wasmkeep_command
from tests.keep_csrs import DIGEST, INSECURE_POLICY, software_csr
from wasmkeep.attestation import der
from wasmkeep.attestation.errors import EvidenceFormatError
from wasmkeep.attestation.keep_csr import CLAIMS_OID
from wasmkeep.attestation.policy import parse_policy
from wasmkeep.steward.ca import CertificateAuthority, generate_ca
from wasmkeep.steward.inspect import inspect_certificate, read_certificates, read_claims
from wasmkeep.steward.issuer import IssuedCertificate
from wasmkeep.steward.service import Steward

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
OTHER_DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return generate_ca(now=NOW - datetime.timedelta(days=1))


@pytest.fixture(scope="module")
def issued(ca: CertificateAuthority) -> IssuedCertificate:
    steward = Steward(ca, policy=parse_policy(INSECURE_POLICY), clock=lambda: NOW)
    decision = steward.decide(software_csr().der)
    assert decision.issued is not None, decision.reason()
    return decision.issued


def checks_of(inspection: object) -> dict[str, bool]:
    return {check.name: check.passed for check in inspection.checks}  # type: ignore[attr-defined]


def test_a_certificate_the_steward_issued(
    ca: CertificateAuthority, issued: IssuedCertificate
) -> None:
    inspection = inspect_certificate(
        issued.chain, anchors=[ca.certificate], workload_digest=DIGEST, now=NOW
    )
    assert inspection.passed, inspection.checks
    assert checks_of(inspection) == {
        "issued_by_ca": True,
        "valid_now": True,
        "claims": True,
        "workload_digest": True,
    }
    assert inspection.claims == dict(issued.claims)
    assert inspection.claims is not None
    assert inspection.claims["backend"] == "process"


def test_each_check_can_fail(ca: CertificateAuthority, issued: IssuedCertificate) -> None:
    other_ca = generate_ca(now=NOW - datetime.timedelta(days=1))
    assert checks_of(
        inspect_certificate(issued.chain, anchors=[other_ca.certificate], now=NOW)
    ) == {
        "issued_by_ca": False,
        "valid_now": True,
        "claims": True,
    }
    no_ca = inspect_certificate(issued.chain, now=NOW)
    assert not no_ca.passed
    assert "not checked" in no_ca.checks[0].detail
    later = NOW + datetime.timedelta(days=1)
    expired = inspect_certificate(issued.chain, anchors=[ca.certificate], now=later)
    assert checks_of(expired) == {"issued_by_ca": False, "valid_now": False, "claims": True}
    assert "expired at" in expired.checks[1].detail
    other = inspect_certificate(
        issued.chain, anchors=[ca.certificate], workload_digest=OTHER_DIGEST, now=NOW
    )
    assert checks_of(other)["workload_digest"] is False
    assert OTHER_DIGEST in other.checks[-1].detail


def _certificate_with(
    ca: CertificateAuthority, extension: x509.ExtensionType | None
) -> x509.Certificate:
    """A certificate from `ca` for a fresh key, with `extension` (if any) as its claims."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged keep")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(hours=1))
        .not_valid_after(NOW + datetime.timedelta(hours=1))
    )
    if extension is not None:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, hashes.SHA256())  # self-signed: no CA signs it


def _claims(value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(CLAIMS_OID), value)


GOOD_CLAIMS = {
    "tee": "software",
    "backend": "nil",
    "measurement": "",
    "workload_digest": DIGEST,
    "tcb_status": None,
    "debug": True,
    "evidence": "software",
    "issued_at": "2026-11-27T00:00:00Z",
}


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        (der.encode(der.UTF8_STRING, b"not json"), "not JSON"),
        (der.encode(der.UTF8_STRING, b"[1, 2]"), "not a JSON object"),
        (der.encode(der.UTF8_STRING, b"[" * 100_000), "longer than"),
        (der.encode(der.UTF8_STRING, b'{"tee": "snp"}'), "has no 'backend'"),
        (
            der.encode(der.UTF8_STRING, json.dumps({**GOOD_CLAIMS, "debug": "no"}).encode()),
            "'debug' has the wrong type",
        ),
        (der.encode(der.OCTET_STRING, b"{}"), "claims extension"),
        (b"\x0c\x05ab", "claims extension"),
    ],
)
def test_damaged_claims_are_named(ca: CertificateAuthority, value: bytes, complaint: str) -> None:
    certificate = _certificate_with(ca, _claims(value))
    with pytest.raises(EvidenceFormatError, match=complaint):
        read_claims(certificate)
    inspection = inspect_certificate([certificate], anchors=[ca.certificate], now=NOW)
    assert checks_of(inspection) == {"issued_by_ca": False, "valid_now": True, "claims": False}
    assert inspection.claims is None


def test_claims_a_keep_wrote_itself_chain_to_nothing(ca: CertificateAuthority) -> None:
    """Well-formed claims in a certificate no CA signed: read, but not trusted."""
    forged = _certificate_with(
        ca, _claims(der.encode(der.UTF8_STRING, json.dumps(GOOD_CLAIMS).encode()))
    )
    inspection = inspect_certificate(
        [forged], anchors=[ca.certificate], workload_digest=DIGEST, now=NOW
    )
    assert checks_of(inspection) == {
        "issued_by_ca": False,
        "valid_now": True,
        "claims": True,
        "workload_digest": True,
    }
    assert not inspection.passed


def test_a_certificate_without_claims(ca: CertificateAuthority) -> None:
    plain = _certificate_with(ca, None)
    assert read_claims(plain) is None
    inspection = inspect_certificate([plain], workload_digest=DIGEST, now=NOW)
    assert checks_of(inspection)["claims"] is False
    assert "no workload" in inspection.checks[-1].detail


def test_reading_certificate_files(issued: IssuedCertificate) -> None:
    pem = issued.chain_pem().encode()
    assert read_certificates(pem) == list(issued.chain)
    der_bytes = issued.certificate.public_bytes(serialization.Encoding.DER)
    assert read_certificates(der_bytes) == [issued.certificate]
    with pytest.raises(EvidenceFormatError, match="holds no certificate"):
        read_certificates(b"hello")
    with pytest.raises(EvidenceFormatError, match="not a readable certificate"):
        read_certificates(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(EvidenceFormatError, match="larger than"):
        read_certificates(b"\x30" * (1024 * 1024 + 1))


@given(st.binary(max_size=400))
def test_any_bytes_give_certificates_or_a_format_error(data: bytes) -> None:
    with contextlib.suppress(EvidenceFormatError):
        read_certificates(data)


# -- the command --------------------------------------------------------------------------------


def _inspect(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*wasmkeep_command(), "steward", "inspect", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_the_command(tmp_path: Path, ca: CertificateAuthority, issued: IssuedCertificate) -> None:
    chain = tmp_path / "keep.pem"
    chain.write_text(issued.chain_pem())
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca.certificate_pem)
    accepted = _inspect("--ca", str(ca_file), "--json", str(chain))
    assert accepted.returncode == 0, accepted.stderr
    document = json.loads(accepted.stdout)
    assert document["passed"] is True
    assert document["claims"] == dict(issued.claims)
    assert [check["name"] for check in document["checks"]] == [
        "issued_by_ca",
        "valid_now",
        "claims",
    ]
    # The table names every claim, the digest whole.
    table = _inspect("--ca", str(ca_file), "-", stdin=chain.read_bytes())
    assert table.returncode == 0, table.stderr
    text = b"".join(table.stdout.split()).decode()
    assert DIGEST in text.replace("│", "")
    # Not from this CA: 1.
    other = tmp_path / "other.crt"
    other.write_bytes(generate_ca(now=NOW - datetime.timedelta(days=1)).certificate_pem)
    refused = _inspect("--ca", str(other), str(chain))
    assert refused.returncode == 1
    # Unreadable input: 2, one line naming it.
    garbage = _inspect("-", stdin=b"garbage")
    assert garbage.returncode == 2
    assert garbage.stderr.decode().strip() == (
        "wasmkeep: error: standard input holds no certificate (expected PEM or DER)"
    )
    missing = _inspect(str(tmp_path / "nothing.pem"))
    assert missing.returncode == 2
    assert b"cannot read" in missing.stderr
