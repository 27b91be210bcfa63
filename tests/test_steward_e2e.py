"""The real Steward, end to end: `wasmkeep run` of examples/http-hello (with
its Enarx.toml, on a free port) on nil and on the process keep, enrolling with
the Steward of wasmkeep.steward (in this process over TLS on loopback, and as
`wasmkeep steward serve`), then curl and openssl trusting only the Steward's
CA. No doubles: the CSR, the appraisal, the policy and the chain are the ones
a deployment would see. The Steward double's cases are in test_enrol.py.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import re
import select
import signal
import stat
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import wasmtime
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.conftest import EXAMPLES, ON_EVERY_KEEP, run_wasmkeep
from tests.network import Served, free_port
from tests.network import serve as serve_workload
from tests.test_steward import start_steward
from tests.test_steward_api import (  # noqa: F401 - ca, ca_file and serve are fixtures
    ServeFactory,
    ca,
    ca_file,
    claims_of,
    serve,
)
from wasmkeep.keep.tls import keep_names
from wasmkeep.steward.ca import BACKDATE
from wasmkeep.steward.issuer import name_text

Build = Callable[[str], Path]
BODY = b"Hello from inside a keep!\n"
HTTP_HELLO_CONFIG = EXAMPLES / "http-hello" / "Enarx.toml"
#: Not the Steward's default (12 hours): the certificate must carry this one.
LIFETIME = datetime.timedelta(hours=3, minutes=7)
TIMEOUT = 60


def digest_of(module: Path) -> str:
    return "sha256:" + hashlib.sha256(module.read_bytes()).hexdigest()


def insecure_policy(*backends: str, digests: tuple[str, ...] = ()) -> str:
    listed = ", ".join(f'"{backend}"' for backend in backends)
    policy = f"[insecure]\nallow = true\nbackends = [{listed}]\n"
    if digests:
        policy += "[workload]\ndigests = [" + ", ".join(f'"{d}"' for d in digests) + "]\n"
    return policy


def example_config(port: int) -> str:
    """examples/http-hello/Enarx.toml, listening on `port` instead of 8443."""
    text = HTTP_HELLO_CONFIG.read_text()
    assert text.count("port = 8443\n") == 1
    return text.replace("port = 8443\n", f"port = {port}\n")


def steward_options(url: str, ca_certificate: Path) -> tuple[str, ...]:
    return ("--steward", url, "--steward-ca", str(ca_certificate))


@contextmanager
def enrolled_keep(
    module: Path, directory: Path, backend: str, url: str, ca_certificate: Path
) -> Iterator[Served]:
    """http-hello served by `wasmkeep run`, once its certificate is out."""
    port = free_port()
    with serve_workload(
        module,
        example_config(port),
        port,
        directory,
        backend=backend,
        options=steward_options(url, ca_certificate),
    ) as served:
        yield served


def run_refused(
    module: Path, directory: Path, backend: str, url: str, ca_certificate: Path
) -> tuple[subprocess.CompletedProcess[bytes], Path, int]:
    """`wasmkeep run` of `module` with the example's config, expected to end by
    itself (a workload wrongly started is stopped by --timeout: status 124)."""
    port = free_port()
    config = directory / "Enarx.toml"
    config.write_text(example_config(port))
    cert_out = directory / "keep.pem"
    result = run_wasmkeep(
        [
            *("run", "--backend", backend, "--config", str(config), "--cert-out", str(cert_out)),
            *("--timeout", "20"),
            *steward_options(url, ca_certificate),
            str(module),
        ],
        timeout=TIMEOUT,
    )
    return result, cert_out, port


def curl(port: int, ca_certificate: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "30", "--cacert", str(ca_certificate),
         f"https://localhost:{port}/"],
        capture_output=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip


def s_client(port: int, ca_certificate: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
         "-verify_hostname", "localhost", "-CAfile", str(ca_certificate),
         "-verify_return_error", "-showcerts"],
        input="GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip


def steward_decisions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "wasmkeep.steward"]


def with_custom_section(module: Path, target: Path) -> Path:
    """A copy of `module` with a custom section appended: the same program,
    another digest."""
    name, payload = b"wasmkeep-e2e", b"another digest, the same program"
    content = bytes([len(name)]) + name + payload
    assert len(content) < 0x80  # one-byte LEB128 sizes
    target.write_bytes(module.read_bytes() + b"\x00" + bytes([len(content)]) + content)
    wasmtime.Module.validate(wasmtime.Engine(), target.read_bytes())  # still a valid module
    return target


# -- the keep serves with the certificate the Steward issued --------------------------------------


@ON_EVERY_KEEP
def test_clients_trusting_only_the_steward_ca_reach_the_keep(
    example: Build,
    tmp_path: Path,
    backend: str,
    serve: ServeFactory,  # noqa: F811 - the fixture
    ca_file: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wasmkeep.steward")
    module = example("http-hello")
    url = serve(insecure_policy(backend))
    with enrolled_keep(module, tmp_path, backend, url, ca_file) as served:
        fetched = curl(served.port, ca_file)
        verified = s_client(served.port, ca_file)
        published = x509.load_pem_x509_certificates(served.cert.read_bytes())
        status, stdout, stderr = served.stop()
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout == BODY
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "Verify return code: 0 (ok)" in verified.stdout, verified.stdout
    assert "Verification: OK" in verified.stdout
    # The chain the keep presents: the certificate the Steward issued, then its CA.
    ca_certificate = x509.load_pem_x509_certificate(ca_file.read_bytes())
    presented = x509.load_pem_x509_certificates(verified.stdout.encode())
    assert presented == published
    assert len(presented) == 2
    leaf = presented[0]
    assert presented[1] == ca_certificate
    assert leaf.issuer == ca_certificate.subject
    assert leaf.issuer != leaf.subject  # not the keep's self-signed certificate
    assert leaf.subject.rfc4514_string() == f"CN=wasmkeep {backend} keep"
    leaf.verify_directly_issued_by(ca_certificate)
    (decision,) = steward_decisions(caplog)
    assert decision.startswith("accepted CSR from 127.0.0.1:"), decision
    assert f"software evidence, software ({backend}), workload {digest_of(module)}" in decision
    assert f"issued serial {leaf.serial_number:x} for " in decision
    # The keep said whom it enrolled with, and served until stopped.
    assert f"keep: enrolled with the Steward at {url} (software evidence)".encode() in stderr
    assert f"certificate {leaf.serial_number:x} issued by".encode() in stderr
    assert status == 143, stderr
    assert stdout == b""


@ON_EVERY_KEEP
def test_the_certificate_carries_the_verified_claims(
    example: Build,
    tmp_path: Path,
    backend: str,
    serve: ServeFactory,  # noqa: F811 - the fixture
    ca_file: Path,  # noqa: F811
) -> None:
    module = example("http-hello")
    url = serve(insecure_policy(backend), lifetime=LIFETIME)
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    with enrolled_keep(module, tmp_path, backend, url, ca_file) as served:
        leaf, _ = x509.load_pem_x509_certificates(served.cert.read_bytes())
    after = datetime.datetime.now(datetime.UTC)

    claims = claims_of(leaf)
    assert claims["workload_digest"] == digest_of(module)
    assert claims["backend"] == backend
    assert claims["tee"] == "software"
    assert claims["evidence"] == "software"
    assert claims["debug"] is True
    issued_at = datetime.datetime.fromisoformat(str(claims["issued_at"]))
    assert before <= issued_at <= after
    # The names the keep asked for, exactly.
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # A VM keep is a machine of its own, without the host's name: it asks
    # for localhost and the loopback addresses only.
    names = keep_names() if backend != "vm" else ["localhost", "127.0.0.1", "::1"]
    assert [name_text(name) for name in san] == names
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    # Valid for the Steward's configured lifetime (backdated a little).
    assert leaf.not_valid_before_utc == issued_at - BACKDATE
    assert leaf.not_valid_after_utc == issued_at + LIFETIME


# -- refusals: no certificate, no workload ------------------------------------------------------


@ON_EVERY_KEEP
def test_another_workload_is_refused_under_a_pinned_digest(
    example: Build,
    tmp_path: Path,
    backend: str,
    serve: ServeFactory,  # noqa: F811 - the fixture
    ca_file: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wasmkeep.steward")
    pinned = example("http-hello")
    other = with_custom_section(pinned, tmp_path / "http-hello-other.wasm")
    assert digest_of(other) != digest_of(pinned)
    url = serve(insecure_policy(backend, digests=(digest_of(pinned),)))
    result, cert_out, port = run_refused(other, tmp_path, backend, url, ca_file)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.decode().splitlines()
    assert line.startswith(
        f"wasmkeep: error: cannot obtain a certificate from the Steward at {url}: "
        "the Steward refused the certificate request (HTTP 403): "
        "refused: policy_workload_digest policy_workload_digest: workload sha256:"
    ), line
    assert line.endswith(" is not in workload.digests"), line
    # The workload never started: it wrote nothing, published no certificate,
    # and nothing answers on its port.
    assert result.stdout == b""
    assert not cert_out.exists()
    assert curl(port, ca_file).returncode != 0
    (decision,) = [d for d in steward_decisions(caplog) if digest_of(other) in d]
    assert decision.startswith("refused CSR from 127.0.0.1:"), decision
    assert f"workload {digest_of(other)}; failed policy_workload_digest" in decision


def test_a_backend_the_policy_excludes_is_refused(
    example: Build,
    tmp_path: Path,
    backend: str,
    serve: ServeFactory,  # noqa: F811 - the fixture
    ca_file: Path,  # noqa: F811
) -> None:
    other = {"nil": "process", "process": "nil"}[backend]
    url = serve(insecure_policy(other, "vm"))
    result, cert_out, _ = run_refused(example("http-hello"), tmp_path, backend, url, ca_file)
    assert result.returncode == 1, result.stderr
    assert result.stderr.decode() == (
        f"wasmkeep: error: cannot obtain a certificate from the Steward at {url}: "
        "the Steward refused the certificate request (HTTP 403): "
        "refused: policy_insecure_backend policy_insecure_backend: "
        f"backend {backend} is not in insecure.backends ({other}, vm)\n"
    )
    assert result.stdout == b""
    assert not cert_out.exists()


# -- `wasmkeep steward serve` as an operator runs it ----------------------------------------------


def first_line(process: subprocess.Popen[str], timeout: float = 30) -> str:
    """The process's first line of output, waiting at most `timeout` seconds."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, "no output in time"
    return process.stdout.readline()


def test_a_process_keep_enrols_with_steward_serve(example: Build, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(insecure_policy("process"))
    ca_dir = tmp_path / "ca"
    steward = start_steward(["--generate-ca", str(ca_dir), "--port", "0", "--policy", str(policy)])
    try:
        line = first_line(steward)
        match = re.fullmatch(r"wasmkeep steward: serving (https://127\.0\.0\.1:[0-9]+/)\n", line)
        assert match, line
        url = match.group(1)
        ca_certificate = ca_dir / "ca.crt"
        module = example("http-hello")
        with enrolled_keep(module, tmp_path, "process", url, ca_certificate) as served:
            fetched = curl(served.port, ca_certificate)
            leaf, _ = x509.load_pem_x509_certificates(served.cert.read_bytes())
        steward.send_signal(signal.SIGTERM)
        _, stderr = steward.communicate(timeout=TIMEOUT)
    finally:
        if steward.poll() is None:
            steward.kill()
            steward.communicate()
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout == BODY
    assert steward.returncode == 0, stderr
    assert "Traceback" not in stderr
    decisions = [line for line in stderr.splitlines() if line.startswith("wasmkeep steward: ")]
    (decision,) = decisions
    assert "accepted CSR from 127.0.0.1:" in decision
    assert f"software evidence, software (process), workload {digest_of(module)}" in decision
    assert f"issued serial {leaf.serial_number:x} for " in decision
    assert claims_of(leaf)["workload_digest"] == digest_of(module)
    assert leaf.issuer == x509.load_pem_x509_certificate(ca_certificate.read_bytes()).subject
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
