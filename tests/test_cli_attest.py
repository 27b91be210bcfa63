"""`wasmkeep attest verify` and `wasmkeep attest collect`, through the real command
group, on every form of the real evidence vectors (tests/assets/attestation)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasmkeep.attestation.snp import parse_enarx_snp_extension, parse_snp_report
from wasmkeep.attestation.software import SoftwareEvidence, report_data
from wasmkeep.cli.main import main

ASSETS = Path(__file__).parent / "assets" / "attestation"
SNP = ASSETS / "snp"
TDX = ASSETS / "tdx"
CSR = ASSETS / "enarx-csr"
DIGEST = "sha256:" + "5a" * 32

#: Times at which each vector's certificates and collateral are valid.
SNP_NOW = "2024-06-01T00:00:00Z"
GENOA_NOW = "2025-06-01T00:00:00Z"  # the Genoa VCEK is valid from 2025-04-20
QVL_NOW = "2025-06-19T11:00:00Z"  # after the QE Identity's issue date, before next updates
SPR_NOW = "2023-06-20T00:00:00Z"
ENARX_SNP_NOW = "2023-01-20T00:00:00Z"
ENARX_SGX_NOW = "2023-01-27T00:00:00Z"
TRUSTEE_NOW = "2025-10-29T00:00:00Z"
V5_NOW = "2026-02-10T00:00:00Z"


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def verify_json(*args: str | Path) -> tuple[int, dict[str, Any]]:
    result = invoke("attest", "verify", "--json", *args)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def checks(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in document["checks"]}


def failures(document: dict[str, Any]) -> list[str]:
    return list(document["failures"])


@pytest.fixture
def lenient_snp(tmp_path: Path) -> Path:
    """A policy for SNP reports verified without AMD's CRL (the raw vectors have none)."""
    path = tmp_path / "lenient.toml"
    path.write_text("[snp]\nallow_unchecked_revocation = true\n")
    return path


# -- SEV-SNP --------------------------------------------------------------------------------


def test_snp_report_refused_by_default_without_a_crl() -> None:
    result = invoke(
        "attest", "verify", SNP / "milan-virtee/report.bin",
        "--certs", SNP / "milan-virtee/vcek.der", "--now", SNP_NOW,
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "refused: 1 of 25 checks failed (policy_revocation)" in result.stdout
    # The rich table shows the claims the vector's facts name.
    assert "bootloader 3 tee 0 snp 8 microcode 115" in result.stdout
    assert "Milan" in result.stdout


@pytest.mark.parametrize("name", ["milan-virtee", "milan-trustee"])
def test_snp_report_accepted(name: str, lenient_snp: Path) -> None:
    code, document = verify_json(
        SNP / name / "report.bin", "--certs", SNP / name / "vcek.der",
        "--policy", lenient_snp, "--now", SNP_NOW,
    )  # fmt: skip
    assert code == 0, failures(document)
    assert document["accepted"] is True
    assert document["format"] == "snp"
    claims = document["claims"]
    assert claims["tee"] == "snp"
    assert claims["debug"] is False
    fields = claims["fields"]
    # PROVENANCE: v2, policy 0x30000 / 0x3001f, VMPL 0, reported TCB bl 3 tee 0 snp 8 ucode 115.
    assert fields["version"] == 2
    assert fields["policy"]["raw"] == {"milan-virtee": "0x30000", "milan-trustee": "0x3001f"}[name]
    assert fields["vmpl"] == 0
    tcb = fields["reported_tcb"]
    assert (tcb["bootloader"], tcb["tee"], tcb["snp"], tcb["microcode"]) == (3, 0, 8, 115)
    assert checks(document)["report_signature"]["passed"]


@pytest.mark.parametrize("name", ["vcek-invalid-legacy.der", "vcek-invalid-new.der"])
def test_snp_report_with_an_invalid_vcek_is_refused(name: str, lenient_snp: Path) -> None:
    code, document = verify_json(
        SNP / "milan-trustee/report.bin", "--certs", SNP / "milan-trustee" / name,
        "--policy", lenient_snp, "--now", SNP_NOW,
    )  # fmt: skip
    assert code == 1
    assert failures(document)


def test_snp_report_data_binding(lenient_snp: Path) -> None:
    report = (SNP / "milan-virtee/report.bin").read_bytes()
    actual = parse_snp_report(report).report_data
    common = ("--certs", SNP / "milan-virtee/vcek.der", "--policy", lenient_snp, "--now", SNP_NOW)
    code, document = verify_json(
        SNP / "milan-virtee/report.bin", *common, "--report-data", actual.hex()
    )
    assert code == 0
    assert checks(document)["report_data"]["detail"] == "REPORT_DATA equals the expected value"
    code, document = verify_json(
        SNP / "milan-virtee/report.bin", *common, "--report-data", "00" * 64
    )
    assert code == 1
    assert failures(document) == ["report_data"]


def test_snp_report_after_its_vcek_expired(lenient_snp: Path) -> None:
    code, document = verify_json(
        SNP / "milan-virtee/report.bin", "--certs", SNP / "milan-virtee/vcek.der",
        "--policy", lenient_snp, "--now", "2031-01-01T00:00:00Z",
    )  # fmt: skip
    assert code == 1
    assert failures(document) == ["certificates_valid"]


def test_snp_report_without_its_vcek_is_bad_input() -> None:
    result = invoke("attest", "verify", SNP / "milan-virtee/report.bin", "--now", SNP_NOW)
    assert result.exit_code == 2
    assert "an SNP report needs the VCEK that signed it (pass --certs vcek.der" in result.stderr


def test_snp_tsm_capture(lenient_snp: Path) -> None:
    code, document = verify_json(
        SNP / "genoa-veraison-tsm/tsm-report.json", "--policy", lenient_snp, "--now", GENOA_NOW
    )
    assert code == 0, failures(document)
    assert document["format"] == "snp-tsm"
    assert document["claims"]["fields"]["product"] == "Genoa"
    assert checks(document)["ask_signed_by_ark"]["detail"].startswith("ASK SEV-Genoa (given)")


def test_enarx_snp_csr_is_accepted_with_its_crl() -> None:
    """PROVENANCE: a compatible verifier accepts the Enarx SNP CSR; its
    report_data[0:48] is SHA-384 of the CSR's SubjectPublicKeyInfo."""
    for extra in ((), ("--certs", CSR / "milan.pkipath")):
        code, document = verify_json(CSR / "milan.signed.crl.csr", "--now", ENARX_SNP_NOW, *extra)
        assert code == 0, failures(document)
        assert document["format"] == "enarx-csr"
        found = checks(document)
        assert document["checks"][0]["name"] == "csr_signature"
        assert found["csr_signature"]["passed"]
        assert found["report_data"]["detail"] == "REPORT_DATA[0:48] equals the expected value"
        assert found["crl"]["passed"] and "not revoked" in found["crl"]["detail"]
        assert found["policy_revocation"]["detail"] == "checked against AMD's CRL"


def test_enarx_snp_csr_with_a_tampered_signature_is_refused(tmp_path: Path) -> None:
    data = bytearray((CSR / "milan.signed.crl.csr").read_bytes())
    data[-5] ^= 0x01  # inside the CSR's signature
    path = tmp_path / "tampered.csr"
    path.write_bytes(bytes(data))
    code, document = verify_json(path, "--now", ENARX_SNP_NOW)
    assert code == 1
    assert failures(document) == ["csr_signature"]


def test_enarx_csr_in_pem(tmp_path: Path) -> None:
    der = (CSR / "milan.signed.crl.csr").read_bytes()
    pem = x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)
    path = tmp_path / "keep.csr.pem"
    path.write_bytes(pem)
    code, document = verify_json(path, "--now", ENARX_SNP_NOW)
    assert code == 0, failures(document)


def test_crls_given_with_certs_are_used(tmp_path: Path) -> None:
    """An AMD CRL passed in --certs makes revocation checked for a raw report."""
    from cryptography.x509 import load_der_x509_csr

    csr = load_der_x509_csr((CSR / "milan.signed.crl.csr").read_bytes())
    extension = next(e for e in csr.extensions if e.oid.dotted_string == "1.3.6.1.4.1.58270.1.3")
    assert isinstance(extension.value, x509.UnrecognizedExtension)
    _, _, crls = parse_enarx_snp_extension(extension.value.value)
    (milan,) = [crl for crl in crls if "ARK-Milan" in crl.issuer.rfc4514_string()]
    crl_path = tmp_path / "milan.crl"
    crl_path.write_bytes(milan.public_bytes(serialization.Encoding.PEM))
    code, document = verify_json(
        SNP / "milan-virtee/report.bin", "--certs", SNP / "milan-virtee/vcek.der",
        "--certs", crl_path, "--now", "2023-04-10T00:00:00Z",
    )  # fmt: skip
    assert checks(document)["crl"]["passed"], checks(document)["crl"]
    assert checks(document)["policy_revocation"]["passed"]
    assert code == 0, failures(document)


# -- Intel TDX and SGX ----------------------------------------------------------------------


def test_tdx_quote_with_complete_collateral_is_accepted() -> None:
    """PROVENANCE: dcap-qvl-uptodate is UpToDate with its collateral."""
    code, document = verify_json(
        TDX / "dcap-qvl-uptodate/quote.dat",
        "--collateral", TDX / "dcap-qvl-uptodate/collateral.json", "--now", QVL_NOW,
    )  # fmt: skip
    assert code == 0, failures(document)
    assert document["format"] == "tdx"
    assert document["claims"]["tee"] == "tdx"
    assert document["claims"]["tcb_status"] == "UpToDate"
    assert document["claims"]["advisories"] == []


def test_tdx_quote_with_stale_collateral_is_refused() -> None:
    code, document = verify_json(
        TDX / "dcap-qvl-uptodate/quote.dat",
        "--collateral", TDX / "dcap-qvl-uptodate/collateral.json",
        "--now", "2025-09-01T00:00:00Z",
    )  # fmt: skip
    assert code == 1
    assert "tcb_info_validity" in failures(document)


def test_tdx_quote_against_a_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(f'[tdx]\nmrtd = ["{"00" * 48}"]\n')
    code, document = verify_json(
        TDX / "dcap-qvl-uptodate/quote.dat",
        "--collateral", TDX / "dcap-qvl-uptodate/collateral.json",
        "--now", QVL_NOW, "--policy", policy,
    )  # fmt: skip
    assert code == 1
    assert failures(document) == ["policy_measurement"]
    assert document["policy"] == str(policy)


def test_tdx_quote_with_collateral_in_separate_files() -> None:
    """PROVENANCE: spr-e4's quote verifies to the Intel root and its collateral's
    signatures verify, but no TCB level of that TCB Info matches the quote."""
    folder = TDX / "spr-e4-go-tdx-guest"
    collateral = [
        item
        for name in (
            "tcb_info_response.json", "qe_identity_response.json", "pck_crl.der",
            "root_crl.der", "tcb_info_issuer_chain.pem", "pck_crl_issuer_chain.pem",
        )
        for item in ("--collateral", folder / name)
    ]  # fmt: skip
    code, document = verify_json(folder / "quote.dat", *collateral, "--now", SPR_NOW)
    assert code == 1
    found = checks(document)
    for name in ("pck_chain", "quote_signature", "tcb_info_signature", "qe_identity_signature"):
        assert found[name]["passed"], found[name]
    assert not found["tcb_level"]["passed"]
    assert "no TCB level" in found["tcb_level"]["detail"]


def test_trustee_quotes_with_their_tcb_info() -> None:
    """PROVENANCE: the trustee TCB Info matches quote 6 (and not 4 or 5)."""
    args = (
        "--collateral", TDX / "trustee/tcbInfo.json",
        "--collateral", TDX / "trustee/enclaveIdentity.json", "--now", TRUSTEE_NOW,
    )  # fmt: skip
    _, six = verify_json(TDX / "trustee/tdx_quote_6.dat", *args)
    assert checks(six)["tcb_info_applies"]["passed"]
    assert checks(six)["tcb_level"]["passed"]
    assert checks(six)["quote_signature"]["passed"]
    for number in (4, 5):
        code, other = verify_json(TDX / f"trustee/tdx_quote_{number}.dat", *args)
        assert code == 1
        assert not checks(other)["tcb_info_applies"]["passed"]
        assert checks(other)["quote_signature"]["passed"]
    # Quote 4 is a debug TD: verification and policy both say so.
    _, four = verify_json(TDX / "trustee/tdx_quote_4.dat", *args)
    assert {"debug_disabled", "policy_debug"} <= set(failures(four))


def test_v5_quote() -> None:
    """PROVENANCE: v5, body type 3 (TDX 1.5), TCB status UpToDate."""
    code, document = verify_json(
        TDX / "v5-go-tdx-guest/quote.dat",
        "--collateral", TDX / "v5-go-tdx-guest/tcb_info_response.json", "--now", V5_NOW,
    )  # fmt: skip
    assert code == 1  # no PCK CRL, no QE Identity: refused, saying so
    assert document["claims"]["fields"]["quote_version"] == 5
    assert "mrservicetd" in document["claims"]["fields"]
    assert document["claims"]["tcb_status"] == "UpToDate"
    assert checks(document)["quote_signature"]["passed"]


def test_quotes_without_collateral_are_refused_saying_why() -> None:
    for path, form in (
        (TDX / "cos-113-go-tdx-guest/quote.dat", "tdx"),
        (ASSETS / "sgx/occlum-trustee/quote.dat", "sgx"),
    ):
        code, document = verify_json(path, "--now", QVL_NOW)
        assert code == 1
        assert document["format"] == form
        assert checks(document)["quote_signature"]["passed"]  # PROVENANCE: verifies
        assert checks(document)["pck_chain"]["passed"]
        assert checks(document)["pck_crl"]["detail"] == "no PCK CRL was given"


def test_a_tdx_quote_named_sgx_is_bad_input() -> None:
    result = invoke("attest", "verify", "--format", "sgx", TDX / "dcap-qvl-uptodate/quote.dat")
    assert result.exit_code == 2
    assert "a tdx quote, not sgx" in result.stderr


def test_enarx_sgx_csr(tmp_path: Path) -> None:
    """PROVENANCE: a compatible verifier accepts the Enarx SGX CSR. It verifies
    to the Intel root and binds its key, but it carries no QE Identity and its
    platform is OutOfDate: the default policy refuses it, naming each reason,
    and a policy that accepts those three things (as Enarx's Steward did)
    accepts it."""
    csr = CSR / "icelake.signed.tcb.crl.multi.xeon.csr"
    code, document = verify_json(csr, "--now", ENARX_SGX_NOW)
    assert code == 1
    found = checks(document)
    assert found["csr_signature"]["passed"]
    assert found["quote_signature"]["passed"]
    assert found["report_data"]["passed"]
    assert found["pck_crl"]["passed"] and found["root_ca_crl"]["passed"]
    assert document["claims"]["tcb_status"] == "OutOfDate"
    assert set(failures(document)) == {
        "policy_tcb_status",
        "policy_advisories",
        "policy_qe_identity",
    }
    advisories = ", ".join(f'"{a}"' for a in document["claims"]["advisories"])
    policy = tmp_path / "sgx.toml"
    policy.write_text(
        "[sgx]\n"
        'allowed_tcb_statuses = ["UpToDate", "OutOfDate"]\n'
        f"allowed_advisories = [{advisories}]\n"
        "allow_unchecked_qe_identity = true\n"
    )
    code, document = verify_json(csr, "--now", ENARX_SGX_NOW, "--policy", policy)
    assert code == 0, failures(document)


# -- software evidence ------------------------------------------------------------------------


def key_file(tmp_path: Path) -> tuple[Path, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "keep.pub.pem"
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path, spki


def software_file(tmp_path: Path, bound: bytes, backend: str = "process") -> Path:
    path = tmp_path / "software.bin"
    path.write_bytes(SoftwareEvidence(backend, bound, bytes(16), DIGEST).encode())
    return path


def test_software_evidence_is_refused_by_default(tmp_path: Path) -> None:
    public_key, spki = key_file(tmp_path)
    evidence = software_file(tmp_path, report_data(spki, DIGEST))
    result = invoke(
        "attest", "verify", evidence, "--public-key", public_key, "--workload-digest", DIGEST
    )
    assert result.exit_code == 1
    assert "INSECURE: no hardware protects this keep" in result.stdout
    assert "policy_insecure_allowed" in result.stdout
    assert "refused: 1 of 5 checks failed (policy_insecure_allowed)" in result.stdout


def test_software_evidence_accepted_when_the_policy_allows_it(tmp_path: Path) -> None:
    public_key, spki = key_file(tmp_path)
    evidence = software_file(tmp_path, report_data(spki, DIGEST))
    policy = tmp_path / "insecure.toml"
    policy.write_text(f'[insecure]\nallow = true\n[workload]\ndigests = ["{DIGEST}"]\n')
    common = ("--public-key", public_key, "--policy", policy)
    code, document = verify_json(evidence, *common, "--workload-digest", DIGEST)
    assert code == 0, failures(document)
    assert document["workload_digest"] == DIGEST
    assert checks(document)["report_data"]["detail"] == "report_data is the expected value"
    assert checks(document)["insecure_evidence"]["passed"]
    # Another workload: the binding fails, and the policy's workload rule too.
    other = "sha256:" + "66" * 32
    code, document = verify_json(evidence, *common, "--workload-digest", other)
    assert code == 1
    assert failures(document) == ["report_data", "policy_workload_digest"]


def test_collected_software_evidence_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "evidence.bin"
    bound = hashlib.sha512(b"challenge").hexdigest()
    result = invoke(
        "attest", "collect", "--report-data", bound, "--backend", "process",
        "--workload-digest", DIGEST, "--out", out,
    )  # fmt: skip
    if "evidence: software" not in result.stdout:
        pytest.skip("this machine offers TEE evidence")
    assert result.exit_code == 0, result.output
    assert "software evidence: no hardware protects this keep" in result.stderr
    assert f"wrote {out}" in result.stdout
    policy = tmp_path / "insecure.toml"
    policy.write_text('[insecure]\nallow = true\nbackends = ["process"]\n')
    code, document = verify_json(out, "--report-data", bound, "--policy", policy)
    assert code == 0, failures(document)
    assert document["format"] == "software"
    assert document["claims"]["fields"]["backend"] == "process"
    assert document["claims"]["fields"]["workload_digest"] == DIGEST


def test_collect_to_stdout_and_without_out() -> None:
    result = invoke("attest", "collect", "--out", "-")
    if "evidence: software" not in result.stderr:
        pytest.skip("this machine offers TEE evidence")
    assert result.exit_code == 0
    assert result.stdout_bytes.startswith(b"WASMKEEP-INSECURE-EVIDENCE\0")
    summary = invoke("attest", "collect")
    assert summary.exit_code == 0
    assert "not written (pass --out FILE)" in summary.stdout


def test_collect_refuses_to_downgrade_a_confidential_backend() -> None:
    result = invoke("attest", "collect", "--backend", "snp")
    if result.exit_code == 0:
        pytest.skip("this machine is an SNP guest")
    assert result.exit_code == 1
    assert "no snp evidence on this machine" in result.stderr


def test_collect_bad_report_data() -> None:
    result = invoke("attest", "collect", "--report-data", "abc")
    assert result.exit_code == 2
    assert "expected 128 hex digits (64 bytes)" in result.stderr


# -- the JSON document ------------------------------------------------------------------------


def test_the_json_document_is_stable(lenient_snp: Path) -> None:
    _, document = verify_json(
        SNP / "milan-virtee/report.bin", "--certs", SNP / "milan-virtee/vcek.der",
        "--policy", lenient_snp, "--now", "2024-06-01T02:00:00+02:00",
    )  # fmt: skip
    assert set(document) == {
        "accepted", "format", "now", "policy", "workload_digest", "claims", "checks", "failures",
    }  # fmt: skip
    assert document["now"] == "2024-06-01T00:00:00Z"
    assert set(document["claims"]) == {
        "tee", "measurement", "report_data", "debug", "tcb_status", "advisories", "fields",
    }  # fmt: skip
    for check in document["checks"]:
        assert set(check) == {"name", "passed", "detail"}
        assert isinstance(check["passed"], bool)
    assert len(bytes.fromhex(document["claims"]["measurement"])) == 48
    assert len(bytes.fromhex(document["claims"]["report_data"])) == 64


# -- bad input: exit status 2 -------------------------------------------------------------------


def csr_without_evidence(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keep")]))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "plain.csr"
    path.write_bytes(csr.public_bytes(serialization.Encoding.DER))
    return path


def test_bad_input(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x01\x02 not evidence")
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes((SNP / "milan-virtee/report.bin").read_bytes()[:1000])
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"provider": "sev_guest", "outblob": "!!"}')
    bad_policy = tmp_path / "bad.toml"
    bad_policy.write_text("[snp]\nmax_vmpl = 9\n")
    huge = tmp_path / "huge"
    huge.write_bytes(bytes(1024 * 1024 + 1))
    report = SNP / "milan-virtee/report.bin"
    vcek = SNP / "milan-virtee/vcek.der"
    cases: list[tuple[list[str | Path], str]] = [
        ([tmp_path / "missing"], "cannot read the evidence: No such file"),
        ([tmp_path], "cannot read the evidence: Is a directory"),
        ([huge], "larger than the limit of 1048576 bytes"),
        ([junk], "not evidence wasmkeep knows"),
        ([truncated, "--format", "snp"], "SNP report: 1000 bytes"),
        ([bad_json], "TSM capture JSON"),
        ([csr_without_evidence(tmp_path)], "the CSR carries no Enarx evidence extension"),
        ([report, "--certs", vcek, "--policy", bad_policy], f"{bad_policy}: snp.max_vmpl"),
        ([report, "--certs", vcek, "--now", "yesterday"], '--now "yesterday": not an ISO 8601'),
        ([report, "--certs", vcek, "--report-data", "zz"], "expected 128 hex digits"),
        ([report, "--certs", vcek, "--workload-digest", DIGEST], "--workload-digest needs"),
        ([report, "--certs", vcek, "--workload-digest", "sha256:X"], "expected sha256: and 64"),
        ([report, "--certs", junk], "not a certificate, a CRL or a PkiPath"),
        ([report, "--certs", TDX / "spr-e4-go-tdx-guest/tcb_info_issuer_chain.pem"], "not an AMD"),
        ([CSR / "milan.signed.crl.csr", "--report-data", "00" * 64], "do not apply to an Enarx"),
        ([report, "--collateral", junk], "--collateral does not apply to snp evidence"),
        ([TDX / "dcap-qvl-uptodate/quote.dat", "--certs", vcek], "--certs does not apply to tdx"),
        ([report, "--format", "snp-tsm"], "TSM capture JSON: not JSON"),
        ([report, "--format", "software"], "software evidence: magic at offset 0"),
        ([report, "--format", "enarx-csr"], "not a CSR"),
        (
            [TDX / "dcap-qvl-uptodate/quote.dat", "--collateral", junk],
            "neither DER (SEQUENCE at offset 0) nor PEM",
        ),
        (
            [
                TDX / "dcap-qvl-uptodate/quote.dat",
                "--collateral",
                TDX / "trustee/tcbInfo.json",
                "--collateral",
                TDX / "v5-go-tdx-guest/tcb_info_response.json",
            ],
            "a second tcb info",
        ),
    ]
    for args, message in cases:
        result = invoke("attest", "verify", *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert result.stderr.startswith("wasmkeep: error: ")
        assert "Traceback" not in result.output


def test_public_key_needs_a_workload_digest(tmp_path: Path) -> None:
    public_key, _ = key_file(tmp_path)
    evidence = software_file(tmp_path, bytes(64))
    result = invoke("attest", "verify", evidence, "--public-key", public_key)
    assert result.exit_code == 2
    assert "--public-key needs --workload-digest" in result.stderr
    both = invoke(
        "attest", "verify", evidence, "--public-key", public_key, "--report-data", "00" * 64
    )
    assert both.exit_code == 2
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("hello")
    result = invoke(
        "attest", "verify", evidence, "--public-key", not_a_key, "--workload-digest", DIGEST
    )
    assert result.exit_code == 2
    assert "not a public key or certificate" in result.stderr


def test_a_public_key_from_a_certificate(tmp_path: Path) -> None:
    """--public-key also takes the keep's certificate (what --cert-out writes)."""
    import datetime

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keep")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "keep.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    evidence = software_file(tmp_path, report_data(spki, DIGEST))
    _, document = verify_json(evidence, "--public-key", path, "--workload-digest", DIGEST)
    assert checks(document)["report_data"]["passed"]


@pytest.mark.parametrize(
    ("path", "form"),
    [
        (SNP / "milan-virtee/report.bin", "snp"),
        (SNP / "genoa-veraison-tsm/tsm-report.json", "snp-tsm"),
        (TDX / "dcap-qvl-uptodate/quote.dat", "tdx"),
        (TDX / "v5-go-tdx-guest/quote.dat", "tdx"),
        (ASSETS / "sgx/occlum-trustee/quote.dat", "sgx"),
        (CSR / "milan.signed.crl.csr", "enarx-csr"),
        (CSR / "icelake.signed.tcb.crl.multi.xeon.csr", "enarx-csr"),
    ],
)
def test_the_form_is_detected_and_can_be_named(path: Path, form: str) -> None:
    extra: tuple[str | Path, ...] = ()
    if form == "snp":
        extra = ("--certs", SNP / "milan-virtee/vcek.der")
    _, detected = verify_json(path, "--now", SNP_NOW, *extra)
    _, named = verify_json(path, "--now", SNP_NOW, "--format", form, *extra)
    assert detected["format"] == named["format"] == form
    assert detected["checks"] == named["checks"]


def test_attest_is_listed() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    assert "attest" in result.stdout
    result = invoke("attest", "verify", "--help")
    assert "--collateral" in result.stdout


def test_tsm_capture_from_configfs_shape(tmp_path: Path, lenient_snp: Path) -> None:
    """A capture written with standard base64 and padding verifies the same."""
    document = json.loads((SNP / "genoa-veraison-tsm/tsm-report.json").read_text())

    def standard(text: str) -> str:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return base64.b64encode(raw).decode()

    path = tmp_path / "capture.json"
    path.write_text(
        json.dumps(
            {
                "provider": "sev_guest",
                "outblob": standard(document["outblob"]),
                "auxblob": standard(document["auxblob"]),
            }
        )
    )
    code, result = verify_json(path, "--policy", lenient_snp, "--now", GENOA_NOW)
    assert code == 0, failures(result)


_SEEDS = [
    (SNP / "milan-virtee/report.bin").read_bytes(),
    (SNP / "genoa-veraison-tsm/tsm-report.json").read_bytes(),
    (TDX / "dcap-qvl-uptodate/quote.dat").read_bytes(),
    (ASSETS / "sgx/occlum-trustee/quote.dat").read_bytes(),
    (CSR / "milan.signed.crl.csr").read_bytes(),
    (CSR / "icelake.signed.tcb.crl.multi.xeon.csr").read_bytes(),
    SoftwareEvidence("vm", bytes(64), bytes(16)).encode(),
]


@pytest.mark.parametrize(
    ("seed", "flips", "reason"),
    [
        # Inputs that once escaped as pyca exceptions (found by fuzzing): pyca
        # parses names, versions and keys lazily, or raises beyond ValueError.
        ("enarx-csr/milan.signed.crl.csr", [(1762, 1)], "not a valid CRL"),
        ("enarx-csr/milan.signed.crl.csr", [(10, 44)], "not a valid CSR version"),
        ("enarx-csr/milan.signed.crl.csr", [(200, 120)], "not a valid X509 version"),
        (
            "enarx-csr/icelake.signed.tcb.crl.multi.xeon.csr",
            [(31, 16), (363, 48)],
            "is not supported",
        ),
        ("sgx/occlum-trustee/quote.dat", [(1491, 31)], "certificate 0 is not valid"),
    ],
)
def test_damage_found_by_fuzzing_is_bad_input(
    tmp_path: Path, seed: str, flips: list[tuple[int, int]], reason: str
) -> None:
    data = bytearray((ASSETS / seed).read_bytes())
    for position, mask in flips:
        data[position] ^= mask
    path = tmp_path / "evidence"
    path.write_bytes(bytes(data))
    result = invoke("attest", "verify", path, "--now", SNP_NOW)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.exit_code == 2
    assert reason in result.stderr


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(_SEEDS),
    cut=st.integers(min_value=0, max_value=20000),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)), max_size=4),
)
def test_damaged_evidence_is_refused_or_bad_input_never_a_crash(
    tmp_path_factory: pytest.TempPathFactory, seed: bytes, cut: int, flips: list[tuple[int, int]]
) -> None:
    """Truncated or bit-flipped vectors of every form, through auto-detection:
    exit 1 (refused) or 2 (malformed), with one line of error, never a traceback."""
    data = bytearray(seed[: max(1, cut)] if cut < len(seed) else seed)
    for position, mask in flips:
        data[position % len(data)] ^= mask
    path = tmp_path_factory.mktemp("damaged") / "evidence"
    path.write_bytes(bytes(data))
    result = invoke("attest", "verify", path, "--now", SNP_NOW, "--json")
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    if result.exit_code == 2:
        assert result.stderr.startswith("wasmkeep: error: ")
        assert len(result.stderr.strip().splitlines()) <= 20
