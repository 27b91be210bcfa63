"""The Steward apart from HTTP: its CA on disk, the certificates it issues, its
decisions and their log lines, and `wasmkeep steward serve` as a user runs it."""

from __future__ import annotations

import ast
import datetime
import ipaddress
import json
import logging
import os
import signal
import socket
import ssl
import stat
import subprocess
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import wasmkeep_command
from tests.keep_csrs import (
    DIGEST,
    INSECURE_POLICY,
    MILAN_CSR,
    MILAN_NOW,
    csr_with,
    san,
    software_csr,
)
from wasmkeep.attestation import der
from wasmkeep.attestation.appraise import appraise_csr
from wasmkeep.attestation.errors import EvidenceFormatError
from wasmkeep.attestation.keep_csr import CLAIMS_OID
from wasmkeep.attestation.policy import default_policy, parse_policy
from wasmkeep.steward import ca as ca_module
from wasmkeep.steward.ca import (
    CertificateAuthority,
    generate_ca,
    load_ca,
    open_ca_directory,
    read_passphrase,
    server_credentials,
    write_private_file,
)
from wasmkeep.steward.errors import CaError
from wasmkeep.steward.issuer import check_key, check_names, issue
from wasmkeep.steward.limits import StewardLimits
from wasmkeep.steward.service import Steward

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)


# -- the CA ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("curve", "hash_name"), [("P-256", "sha256"), ("P-384", "sha384")])
def test_a_generated_ca(curve: str, hash_name: str) -> None:
    ca = generate_ca(now=NOW, curve=curve)
    certificate = ca.certificate
    assert certificate.issuer == certificate.subject
    assert certificate.signature_hash_algorithm is not None
    assert certificate.signature_hash_algorithm.name == hash_name
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(ca.key.public_key())
    certificate.verify_directly_issued_by(certificate)
    assert certificate.not_valid_after_utc - NOW == ca_module.CA_LIFETIME


def test_the_ca_directory(tmp_path: Path) -> None:
    folder = tmp_path / "ca"
    ca, made = open_ca_directory(folder, passphrase=b"correct horse", now=NOW)
    assert made
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "ca.crt").stat().st_mode) == 0o644
    assert sorted(path.name for path in folder.iterdir()) == ["ca.crt", "ca.key"]
    key_pem = (folder / "ca.key").read_bytes()
    assert key_pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    # Reused, never overwritten.
    again, made = open_ca_directory(folder, passphrase=b"correct horse", now=NOW)
    assert not made
    assert again.certificate == ca.certificate
    assert (folder / "ca.key").read_bytes() == key_pem
    with pytest.raises(CaError, match=r"ca\.key is encrypted: give its passphrase"):
        open_ca_directory(folder, passphrase=None, now=NOW)
    with pytest.raises(CaError, match=r"ca\.key: wrong passphrase"):
        open_ca_directory(folder, passphrase=b"wrong", now=NOW)
    # Half a CA: refused, nothing overwritten.
    (folder / "ca.crt").unlink()
    with pytest.raises(CaError, match=r"holds ca\.key but no ca\.crt: not overwritten"):
        open_ca_directory(folder, passphrase=b"correct horse", now=NOW)
    assert (folder / "ca.key").read_bytes() == key_pem


def test_an_unencrypted_ca_key_is_still_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = os.umask(0)  # a careless umask must not widen the key's mode
    try:
        with caplog.at_level(logging.WARNING):
            open_ca_directory(tmp_path / "ca", passphrase=None, now=NOW)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600
    assert "is not encrypted" in caplog.text
    assert (tmp_path / "ca" / "ca.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_a_key_file_is_never_readable_by_others_even_while_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file's mode is 0600 from its creation: checked while its bytes are written."""
    seen: list[int] = []
    real_write = os.write

    def write(descriptor: int, data: bytes | memoryview) -> int:
        seen.append(stat.S_IMODE(os.fstat(descriptor).st_mode))
        return real_write(descriptor, data)

    monkeypatch.setattr(os, "write", write)
    write_private_file(tmp_path / "secret.key", b"secret" * 1000)
    monkeypatch.undo()
    assert seen
    assert set(seen) == {0o600}
    assert stat.S_IMODE((tmp_path / "secret.key").stat().st_mode) == 0o600
    with pytest.raises(CaError, match="exists already: not overwritten"):
        write_private_file(tmp_path / "secret.key", b"other")
    assert (tmp_path / "secret.key").read_bytes() == b"secret" * 1000
    assert [path.name for path in tmp_path.iterdir()] == ["secret.key"]  # no temporaries left


def test_passphrases(tmp_path: Path) -> None:
    path = tmp_path / "passphrase"
    path.write_bytes(b"from the file\nsecond line ignored\n")
    assert read_passphrase(path, {}) == b"from the file"
    assert read_passphrase(None, {ca_module.PASSPHRASE_ENV: "from the environment"}) == (
        b"from the environment"
    )
    assert read_passphrase(None, {}) is None
    path.write_bytes(b"\n")
    with pytest.raises(CaError, match="the passphrase is empty"):
        read_passphrase(path, {})
    with pytest.raises(CaError, match="cannot read the passphrase file"):
        read_passphrase(tmp_path / "missing", {})


def test_loading_a_ca_checks_it(tmp_path: Path) -> None:
    ca = generate_ca(now=NOW)
    other = generate_ca(now=NOW)
    key = tmp_path / "ca.key"
    key.write_bytes(
        ca.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)
    good = tmp_path / "ca.crt"
    good.write_bytes(ca.certificate.public_bytes(serialization.Encoding.DER))  # DER is read too
    assert load_ca(key, good, passphrase=None, now=NOW).certificate == ca.certificate
    wrong = tmp_path / "other.crt"
    wrong.write_bytes(other.certificate_pem)
    with pytest.raises(CaError, match="does not belong to the CA certificate"):
        load_ca(key, wrong, passphrase=None)
    leaf_key, leaf = server_credentials(ca, ["localhost"], now=NOW)
    not_ca = tmp_path / "leaf.crt"
    not_ca.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    leaf_key_file = tmp_path / "leaf.key"
    leaf_key_file.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(CaError, match="not a CA"):
        load_ca(leaf_key_file, not_ca, passphrase=None)
    with pytest.raises(CaError, match=r"is valid from"):
        load_ca(key, good, passphrase=None, now=NOW + datetime.timedelta(days=4000))
    junk = tmp_path / "junk"
    junk.write_bytes(b"junk")
    with pytest.raises(CaError, match="not a certificate"):
        load_ca(key, junk, passphrase=None)
    with pytest.raises(CaError, match="not a PEM private key"):
        load_ca(junk, good, passphrase=None)
    with pytest.raises(CaError, match="cannot read the CA key"):
        load_ca(tmp_path / "missing", good, passphrase=None)
    rsa_key = tmp_path / "rsa.key"
    rsa_key.write_bytes(
        rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(CaError, match="ECDSA P-256 or P-384"):
        load_ca(rsa_key, good, passphrase=None)


def test_the_stewards_server_certificate() -> None:
    ca = generate_ca(now=NOW)
    _, certificate = server_credentials(
        ca, ["localhost", "127.0.0.1", "::1", "steward.example"], now=NOW
    )
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "steward.example"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    certificate.verify_directly_issued_by(ca.certificate)
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]


# -- issuing --------------------------------------------------------------------------------


def test_names_are_checked() -> None:
    limits = StewardLimits(max_names=4)
    good, names = check_names(san(["Keep.Example", "keep.example", "10.0.0.1", "::1"]), limits)
    assert good.passed, good.detail
    assert [str(name.value) for name in names] == ["keep.example", "10.0.0.1", "::1"]
    assert check_names([], limits)[0].passed
    cases: list[tuple[list[x509.GeneralName], str]] = [
        (san(["a.example"] * 5), "5 names asked for, more than the 4"),
        (san(["*.example"]), "a wildcard"),
        (san(["-bad.example"]), "is not letters, digits and inner hyphens"),
        (san(["bad..example"]), "is not letters"),
        (san(["trailing.example."]), "is not letters"),
        (san(["0.0.0.0"]), "the unspecified address"),
        ([x509.DNSName("1.2.3.4")], "an IP address goes in an IP address entry"),
        ([x509.DNSName("a" * 64 + ".example")], "is not letters"),
        ([x509.DNSName(("a" * 60 + ".") * 5 + "example")], "longer than 253"),
        ([x509.UniformResourceIdentifier("https://keep.example/")], "only DNS names"),
        ([x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))], "a network, not an address"),
    ]
    for entries, reason in cases:
        check, issued = check_names(entries, limits)
        assert not check.passed, entries
        assert check.name == "requested_names"
        assert reason in check.detail, (entries, check.detail)
        assert issued == ()


def test_weak_keys_are_not_certified() -> None:
    appraisal = appraise_csr(software_csr().der, policy=parse_policy(INSECURE_POLICY), now=NOW)
    assert check_key(appraisal).passed
    assert check_key(appraisal).detail == "ECDSA secp256r1"
    ca = generate_ca(now=NOW - datetime.timedelta(days=1))
    steward = Steward(ca, policy=parse_policy(INSECURE_POLICY), clock=lambda: NOW)
    weak = software_csr(key=rsa.generate_private_key(65537, 1024))
    decision = steward.decide(weak.der)
    assert [check.name for check in decision.failures] == ["csr_key"]
    assert "RSA 1024 bits: at least 2048" in decision.reason()
    strong = steward.decide(software_csr(key=rsa.generate_private_key(65537, 2048)).der)
    assert strong.accepted, strong.reason()


def test_an_issued_certificate() -> None:
    ca = generate_ca(now=NOW - datetime.timedelta(days=1))
    keep = software_csr(names=("keep.example", "127.0.0.1"))
    appraisal = appraise_csr(keep.der, policy=parse_policy(INSECURE_POLICY), now=NOW)
    _, names = check_names(appraisal.names)
    issued = issue(appraisal, ca, names=names, now=NOW, lifetime=datetime.timedelta(hours=2))
    certificate = issued.certificate
    certificate.verify_directly_issued_by(ca.certificate)
    assert certificate.public_key() == keep.key.public_key()
    assert certificate.subject.rfc4514_string() == "CN=wasmkeep process keep"
    assert certificate.not_valid_before_utc == NOW - datetime.timedelta(minutes=1)
    assert certificate.not_valid_after_utc == NOW + datetime.timedelta(hours=2)
    extensions = certificate.extensions
    assert extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    aki = extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca.subject_key_identifier.digest
    extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    claims_extension = extensions.get_extension_for_oid(x509.ObjectIdentifier(CLAIMS_OID))
    assert not claims_extension.critical
    assert isinstance(claims_extension.value, x509.UnrecognizedExtension)
    text = der.parse_der(claims_extension.value.value).as_utf8("claims")
    assert " " not in text  # compact
    assert json.loads(text) == dict(issued.claims)
    assert issued.claims == {
        "tee": "software",
        "backend": "process",
        "measurement": "",
        "workload_digest": DIGEST,
        "tcb_status": None,
        "debug": True,
        "evidence": "software",
        "issued_at": "2026-06-01T00:00:00Z",
    }
    assert issued.chain == (certificate, ca.certificate)
    path = der.parse_der(issued.pkipath_der()).children()
    assert [x509.load_der_x509_certificate(item.encoded) for item in path] == [
        ca.certificate,
        certificate,
    ]
    # Never beyond the CA's own validity.
    old_ca = generate_ca(now=NOW, lifetime=datetime.timedelta(hours=1))
    clamped = issue(appraisal, old_ca, names=names, now=NOW)
    assert clamped.certificate.not_valid_after_utc == old_ca.not_valid_after
    refused = appraise_csr(keep.der, policy=default_policy(), now=NOW)
    with pytest.raises(ValueError, match="refused appraisal"):
        issue(refused, ca, names=names, now=NOW)


def test_the_enarx_milan_csr_gets_an_enarx_subject() -> None:
    ca = generate_ca(now=MILAN_NOW - datetime.timedelta(days=1))
    steward = Steward(ca, policy=default_policy(), clock=lambda: MILAN_NOW)
    decision = steward.decide(MILAN_CSR.read_bytes())
    assert decision.accepted, decision.reason()
    assert decision.issued is not None
    certificate = decision.issued.certificate
    assert certificate.subject.rfc4514_string() == "CN=enarx snp keep"
    with pytest.raises(x509.ExtensionNotFound):  # no names asked for, none given
        certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)


# -- decisions --------------------------------------------------------------------------------


def test_one_log_line_per_decision(caplog: pytest.LogCaptureFixture) -> None:
    ca = generate_ca(now=NOW - datetime.timedelta(days=1))
    steward = Steward(ca, policy=parse_policy(INSECURE_POLICY), clock=lambda: NOW)
    with caplog.at_level(logging.INFO, logger="wasmkeep.steward"):
        accepted = steward.decide(software_csr().der, client="192.0.2.1:1234")
        refused = steward.decide(software_csr(names=("*.example",)).der, client="192.0.2.2:1")
        with pytest.raises(EvidenceFormatError):
            steward.decide(b"junk", client="192.0.2.3:1")
    records = [record for record in caplog.records if record.name == "wasmkeep.steward"]
    assert len(records) == 3
    lines = [record.getMessage() for record in records]
    assert lines[0].startswith("accepted CSR from 192.0.2.1:1234: software evidence")
    assert f"workload {DIGEST}" in lines[0]
    assert accepted.issued is not None
    assert f"serial {accepted.issued.certificate.serial_number:x}" in lines[0]
    assert lines[1].startswith("refused CSR from 192.0.2.2:1")
    assert "failed requested_names: DNS name '*.example': a wildcard" in lines[1]
    assert not refused.accepted
    assert lines[2].startswith("refused a malformed CSR from 192.0.2.3:1: not a CSR")
    for line in lines:  # nothing secret: no key material, no PEM
        assert "PRIVATE" not in line
        assert "BEGIN" not in line


def test_a_lifetime_out_of_bounds_is_refused() -> None:
    ca = generate_ca(now=NOW)
    with pytest.raises(ValueError, match="lifetime"):
        Steward(ca, policy=default_policy(), lifetime=datetime.timedelta(days=365))


def test_a_csr_without_evidence_is_malformed() -> None:
    ca = generate_ca(now=NOW)
    steward = Steward(ca, policy=default_policy(), clock=lambda: NOW)
    with pytest.raises(EvidenceFormatError, match="no Enarx evidence extension"):
        steward.decide(csr_with([]).der)


# -- `wasmkeep steward serve` -----------------------------------------------------------------


def start_steward(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*wasmkeep_command(), "steward", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_serve_starts_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("a passphrase\n")
    process = start_steward(
        ["--generate-ca", str(tmp_path / "ca"), "--ca-passphrase-file", str(passphrase),
         "--port", "0", "--policy", str(_policy_file(tmp_path))]
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("wasmkeep steward: serving https://127.0.0.1:"), first
        url = first.split()[-1]
        lines = [process.stdout.readline() for _ in range(4)]
        assert "made a new CA in" in lines[0]
        assert "encrypted" in lines[0]
        assert f"curl --cacert {tmp_path / 'ca' / 'ca.crt'} {url}" in lines[2]
        assert f'steward = "{url}"' in lines[3]
        context = ssl.create_default_context(cafile=str(tmp_path / "ca" / "ca.crt"))
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            assert response.read() == b"wasmkeep steward: ok\n"
        # A keep's CSR, issued; the decision logged on stderr.
        request = urllib.request.Request(
            url,
            data=software_csr().der,
            headers={"Content-Type": "application/pkcs10"},
            method="POST",
        )
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            assert response.status == 200
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert stdout.strip().endswith("wasmkeep steward: stopped")
    assert "accepted CSR from 127.0.0.1:" in stderr
    assert "Traceback" not in stderr
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600

    # Started again: the same CA, reused.
    process = start_steward(
        ["--generate-ca", str(tmp_path / "ca"), "--port", "0"],
        env={ca_module.PASSPHRASE_ENV: "a passphrase"},
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()
        assert "using the existing CA" in process.stdout.readline()
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0


def _policy_file(tmp_path: Path, text: str = INSECURE_POLICY) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def test_serve_errors_are_one_clear_line(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    open_ca_directory(ca_dir, passphrase=b"right", now=datetime.datetime.now(datetime.UTC))
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    bad_policy = _policy_file(tmp_path, "[snp]\nmax_vmpl = 9\n")
    unreadable = tmp_path / "unreadable.key"
    unreadable.mkdir()
    cases: list[tuple[list[str], dict[str, str], str]] = [
        (["--generate-ca", str(ca_dir), "--port", str(port)],
         {ca_module.PASSPHRASE_ENV: "right"}, "the address is already in use"),
        (["--generate-ca", str(ca_dir)], {ca_module.PASSPHRASE_ENV: "wrong"},
         "ca.key: wrong passphrase"),
        (["--generate-ca", str(ca_dir)], {}, "ca.key is encrypted: give its passphrase"),
        (["--generate-ca", str(ca_dir), "--policy", str(bad_policy)],
         {ca_module.PASSPHRASE_ENV: "right"}, "snp.max_vmpl"),
        (["--ca-key", str(unreadable), "--ca-cert", str(ca_dir / "ca.crt")], {},
         "cannot read the CA key"),
        ([], {}, "the Steward needs a CA"),
        (["--generate-ca", str(ca_dir), "--ca-key", "x", "--ca-cert", "y"], {}, "not both"),
        (["--generate-ca", str(ca_dir), "--cert-lifetime", "soon"], {}, "--cert-lifetime"),
        (["--generate-ca", str(ca_dir), "--cert-lifetime", "90d"], {}, "expected from"),
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != ca_module.PASSPHRASE_ENV}
    try:
        for args, extra, message in cases:
            result = subprocess.run(
                [*wasmkeep_command(), "steward", "serve", *args],
                capture_output=True,
                text=True,
                timeout=60,
                env={**env, **extra},
                check=False,
            )
            assert result.returncode != 0, (args, result.stdout)
            assert message in result.stderr, (args, result.stderr)
            assert result.stderr.startswith("wasmkeep: error: "), result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    finally:
        busy.close()


def test_steward_is_listed() -> None:
    result = subprocess.run(
        [*wasmkeep_command(), "steward", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for option in ("--addr", "--port", "--ca-key", "--ca-cert", "--generate-ca", "--policy",
                   "--cert-lifetime", "--collateral", "--tls / --no-tls",
                   "--ca-passphrase-file"):  # fmt: skip
        assert option in result.stdout


# -- the trust boundary ------------------------------------------------------------------------


def test_the_steward_imports_neither_keep_nor_host() -> None:
    folder = Path(ca_module.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(("wasmkeep.keep", "wasmkeep.host", "wasmkeep.cli")), (
                    path,
                    name,
                )


def test_a_ca_object_checks_its_parts() -> None:
    ca = generate_ca(now=NOW)
    other_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CaError, match="does not belong"):
        CertificateAuthority(other_key, ca.certificate)
