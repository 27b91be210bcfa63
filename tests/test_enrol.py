"""A keep enrols with a Steward, end to end: `wasmkeep run` on nil and on the
process keep against a Steward double over TLS on loopback (tests/
steward_double.py), then real clients (curl, openssl) that trust only the
Steward's CA. The hostile cases, in process, are in test_enrol_hostile.py;
the real Steward's end-to-end tests are its own.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import run_wasmkeep
from tests.network import free_port, listen_config, openssl_server, serve, stdio_files
from tests.steward_double import (
    Answer,
    Authority,
    Received,
    Steward,
    issue_normally,
    pkipath,
    run_steward,
)
from wasmkeep.attestation.keep_csr import EvidenceForm
from wasmkeep.config import parse_config
from wasmkeep.errors import ConfigError, KeepError
from wasmkeep.host.executor import Executor
from wasmkeep.host.process_keep import ProcessKeepOptions, run_in_process_keep
from wasmkeep.host.setup import prepare_host
from wasmkeep.sallyport.boot import Boot, boot_payload_limit
from wasmkeep.sallyport.codec import ProtocolError
from wasmkeep.sallyport.types import (
    Errno,
    FileType,
    HandleInfo,
    HandleKind,
    KeepManifest,
    PollReply,
    PollResult,
    StewardParams,
)
from wasmkeep.workload import Workload

Build = Callable[[str], Path]
BODY = b"Hello from inside a keep!\n"


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("steward")


@pytest.fixture(scope="module")
def ca(directory: Path) -> Authority:
    return Authority.make(directory)


@pytest.fixture(scope="module")
def module_steward(ca: Authority, directory: Path) -> Iterator[Steward]:
    with run_steward(ca, directory) as steward:
        yield steward


@pytest.fixture
def steward(module_steward: Steward) -> Iterator[Steward]:
    module_steward.behaviour = issue_normally
    module_steward.received.clear()
    yield module_steward
    module_steward.behaviour = issue_normally


def steward_lines(steward: Steward, ca: Authority) -> str:
    return f'steward = "{steward.url}"\nsteward_ca = "{ca.pem}"\n'


def spki(certificate: x509.Certificate | x509.CertificateSigningRequest) -> bytes:
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_the_keep_serves_tls_with_the_certificate_the_steward_issued(
    example: Build, tmp_path: Path, backend: str, steward: Steward, ca: Authority
) -> None:
    assert shutil.which("curl") and shutil.which("openssl")
    module = example("http-hello")
    port = free_port()
    config = steward_lines(steward, ca) + listen_config(port, "tls")
    with serve(module, config, port, tmp_path, backend=backend) as served:
        url = f"https://localhost:{port}/"
        curl = subprocess.run(
            ["curl", "--silent", "--show-error", "--cacert", str(ca.pem), url],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert curl.returncode == 0, curl.stderr
        assert curl.stdout == BODY
        openssl = subprocess.run(
            [
                *("openssl", "s_client", "-connect", f"127.0.0.1:{port}"),
                *("-servername", "localhost", "-verify_hostname", "localhost"),
                *("-CAfile", str(ca.pem), "-verify_return_error", "-quiet"),
            ],
            input=b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert openssl.returncode == 0, openssl.stderr
        assert openssl.stdout.endswith(BODY)
        context = ssl.create_default_context(cafile=str(ca.pem))
        with (
            socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as connection,
        ):
            der = connection.getpeercert(binary_form=True)
            connection.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            while connection.recv(4096):
                pass
        published = x509.load_pem_x509_certificates(served.cert.read_bytes())
    assert der is not None
    served_leaf = x509.load_der_x509_certificate(der)
    # The Steward saw one CSR: for the key the keep serves with, bound to the
    # module that ran, with software evidence from this backend.
    (received,) = steward.received
    assert spki(received.csr) == spki(served_leaf)
    assert published == [served_leaf, ca.cert]  # --cert-out: the chain, leaf first
    assert received.workload_digest == "sha256:" + hashlib.sha256(module.read_bytes()).hexdigest()
    assert received.binding_ok
    assert received.evidence.form is EvidenceForm.SOFTWARE
    assert received.software is not None
    assert received.software.backend == backend
    assert received.software.workload_digest == received.workload_digest
    assert received.headers["content-type"] == "application/pkcs10"
    assert received.path == "/"


def test_connections_present_the_steward_certificate(
    example: Build, tmp_path: Path, backend: str, steward: Steward, ca: Authority
) -> None:
    """openssl s_server requires a client certificate from the Steward's CA."""
    port = free_port()
    server_cert, server_key = ca.server_files(tmp_path)
    openssl_options = (
        *("-cert", str(server_cert), "-key", str(server_key)),
        *("-Verify", "1", "-CAfile", str(ca.pem), "-verify_return_error"),
    )
    with openssl_server(port, *openssl_options):
        config = tmp_path / "client.toml"
        config.write_text(
            steward_lines(steward, ca)
            + stdio_files()
            + f'[[files]]\nkind = "connect"\nname = "SERVER"\nhost = "localhost"\nport = {port}\n'
            + f'ca = "{ca.pem}"\n'
        )
        result = run_wasmkeep(
            [
                *("run", "--backend", backend, "--config", str(config)),
                *(str(example("http-client")), "SERVER", "/", "localhost"),
            ]
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"HTTP/1.0 200 ok")
    (received,) = steward.received
    page = result.stdout.replace(b"\r\n", b"\n")
    shown = page[page.index(b"-----BEGIN CERTIFICATE-----") :]
    client_leaf = x509.load_pem_x509_certificate(shown)
    assert spki(client_leaf) == spki(received.csr)
    assert client_leaf.issuer == ca.cert.subject


def test_command_line_flags_name_the_steward(
    example: Build, tmp_path: Path, backend: str, steward: Steward, ca: Authority
) -> None:
    # No TLS socket at all: the keep still enrols and publishes its chain.
    cert_out = tmp_path / "keep.pem"
    result = run_wasmkeep(
        [
            *("--verbose", "run", "--backend", backend),
            *("--steward", steward.url, "--steward-ca", str(ca.pem), "--cert-out", str(cert_out)),
            str(example("hello")),
        ]
    )
    assert result.returncode == 0, result.stderr
    assert b"Hello" in result.stdout
    assert f"keep: enrolled with the Steward at {steward.url}".encode() in result.stderr
    leaf, root = x509.load_pem_x509_certificates(cert_out.read_bytes())
    assert root == ca.cert
    (received,) = steward.received
    assert spki(leaf) == spki(received.csr)


def _refuse(s: Steward, received: Received) -> Answer:
    return 403, {"Content-Type": "text/plain"}, b"policy: workload digest not allowed"


def _other_key(s: Steward, received: Received) -> Answer:
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    return 200, {}, pkipath(s.ca.issue(stranger), s.ca.cert)


@pytest.mark.parametrize(
    ("behaviour", "complaint"),
    [
        (
            _refuse,
            "the Steward refused the certificate request (HTTP 403): "
            "policy: workload digest not allowed",
        ),
        (_other_key, "the issued certificate is for another key than the keep's"),
    ],
    ids=["refused", "other-key"],
)
def test_no_certificate_no_workload(
    example: Build,
    tmp_path: Path,
    backend: str,
    steward: Steward,
    ca: Authority,
    behaviour: Callable[[Steward, Received], Answer],
    complaint: str,
) -> None:
    steward.behaviour = behaviour
    result = run_wasmkeep(
        [
            *("run", "--backend", backend),
            *("--steward", steward.url, "--steward-ca", str(ca.pem)),
            str(example("hello")),
        ]
    )
    assert result.returncode == 1
    assert result.stdout == b""  # the workload never started
    (line,) = result.stderr.decode().splitlines()
    assert line == (
        f"wasmkeep: error: cannot obtain a certificate from the Steward at {steward.url}: "
        f"{complaint}"
    )


def test_an_unreachable_steward_fails_the_run(example: Build, backend: str, ca: Authority) -> None:
    url = f"https://127.0.0.1:{free_port()}/"
    result = run_wasmkeep(
        [
            *("run", "--backend", backend, "--steward", url, "--steward-ca", str(ca.pem)),
            str(example("hello")),
        ]
    )
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode().startswith(
        f"wasmkeep: error: cannot reach the Steward at {url}: Connection refused"
    )


def test_an_http_steward_needs_steward_ca(example: Build) -> None:
    result = run_wasmkeep(
        ["run", "--backend", "nil", "--steward", "http://127.0.0.1:9/", str(example("hello"))]
    )
    assert result.returncode == 2
    assert b"an http Steward needs steward_ca" in result.stderr


def test_steward_ca_is_read_relative_to_the_config(tmp_path: Path, ca: Authority) -> None:
    (tmp_path / "ca.pem").write_bytes(ca.pem.read_bytes())
    config = parse_config(
        'steward = "https://steward.example:8443/enrol?x=1"\nsteward_ca = "ca.pem"\n',
        base_dir=tmp_path,
    )
    assert config.steward_ca is not None
    assert config.steward_ca.path == tmp_path / "ca.pem"


def test_the_host_opens_one_connection_the_guest_cannot_name(
    steward: Steward, ca: Authority, tmp_path: Path
) -> None:
    config = parse_config(steward_lines(steward, ca) + stdio_files(), base_dir=tmp_path)
    executor, manifest = prepare_host(config, "app.wasm")
    try:
        assert manifest.steward is not None
        assert manifest.steward.handle not in {info.handle for info in manifest.fds}
        assert (manifest.steward.host, manifest.steward.port) == ("127.0.0.1", steward.port)
        assert manifest.steward.path == "/"
        assert manifest.steward.https
        assert manifest.steward.ca_pem == ca.pem.read_bytes()
        assert manifest.steward.url == steward.url
    finally:
        executor.close_all()


class _ForgingExecutor(Executor):
    """A host that answers for an http Steward with a chain it made itself,
    certifying a key of its own choosing."""

    def __init__(self, forged: bytes) -> None:
        super().__init__()
        self.forged = forged
        self.steward_handle = -1

    def poll(self, interests, timeout_ns, prefetch=0, sends=()) -> PollReply:  # type: ignore[no-untyped-def]
        if [handle for handle, _ in interests] != [self.steward_handle]:
            return super().poll(interests, timeout_ns, prefetch, sends)
        reply = super().poll(interests, timeout_ns, prefetch, sends)
        if reply.ready[0] is None:
            return reply
        forged, self.forged = self.forged, b""
        return PollReply(
            [PollResult(Errno.SUCCESS, len(forged), False, forged, eof=not forged)], []
        )


def test_a_process_keep_refuses_a_chain_its_host_forged(
    example: Build, tmp_path: Path, ca: Authority, directory: Path
) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    chain = pkipath(ca.issue(stranger), ca.cert)
    forged = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(chain) + chain
    executor = _ForgingExecutor(forged)
    with run_steward(ca, directory, tls=False) as steward:
        config = parse_config(steward_lines(steward, ca) + stdio_files(), base_dir=tmp_path)
        _, manifest = prepare_host(config, "hello.wasm", executor=executor)
        assert manifest.steward is not None
        executor.steward_handle = manifest.steward.handle
        try:
            with pytest.raises(KeepError, match="for another key than the keep's"):
                run_in_process_keep(
                    Workload.from_file(example("hello")),
                    manifest,
                    executor,
                    ProcessKeepOptions(1 << 28),
                )
        finally:
            executor.close_all()


# -- the manifest and the config --------------------------------------------------------------


def _boot(steward: StewardParams | None, fds: tuple[HandleInfo, ...] = ()) -> Boot:
    manifest = KeepManifest(args=("app",), env=(), fds=fds, steward=steward)
    return Boot("app.wasm", b"\0asm\1\0\0\0", manifest, 1 << 30, None)


def test_boot_carries_the_steward() -> None:
    stdin = HandleInfo(1, HandleKind.STDIN, FileType.UNKNOWN, name="stdin")
    for steward in (
        StewardParams(7, True, "steward.example", 443, "/", None),
        StewardParams(7, False, "::1", 8080, "/enrol?x=1", b"-----BEGIN CERTIFICATE-----"),
        None,
    ):
        boot = _boot(steward, (stdin,))
        assert Boot.decode(boot.encode()) == boot
        assert len(boot.encode()) < boot_payload_limit()


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [
        ("handle", 1, "a handle is given twice"),
        ("path", "/a b", "must start with / and hold only visible ASCII"),
        ("path", "/x\r\nX-Injected: 1", "must start with / and hold only visible ASCII"),
        ("path", "relative", "must start with /"),
        ("host", "evil host", "not a host name or IP address"),
        ("host", "a..b", "not a host name or IP address"),
        ("host", ":::", "not an IPv6 address"),
        ("port", 0, "port 0 is out of range"),
        ("ca_pem", None, "an http Steward needs its CA certificates"),
    ],
)
def test_boot_refuses_a_bad_steward(field: str, value: object, complaint: str) -> None:
    good = StewardParams(7, False, "127.0.0.1", 80, "/", b"pem")
    stdin = HandleInfo(1, HandleKind.STDIN, FileType.UNKNOWN, name="stdin")
    assert Boot.decode(_boot(good, (stdin,)).encode()).manifest.steward == good
    # Re-encode with the bad field, bypassing StewardParams' own checks.
    bad = object.__new__(StewardParams)
    for name in ("handle", "https", "host", "port", "path", "ca_pem"):
        object.__setattr__(bad, name, value if name == field else getattr(good, name))
    manifest = KeepManifest(args=("app",), env=(), fds=(stdin,), steward=bad)
    payload = bytearray(Boot("app.wasm", b"\0asm\1\0\0\0", manifest, 1 << 30, None).encode())
    with pytest.raises(ProtocolError, match=re.escape(complaint)):
        Boot.decode(bytes(payload))


def test_steward_params_give_the_url_and_host_header() -> None:
    assert StewardParams(1, True, "s.example", 443, "/").url == "https://s.example/"
    assert StewardParams(1, True, "::1", 8443, "/p?q").url == "https://[::1]:8443/p?q"
    assert StewardParams(1, True, "::1", 443, "/").authority == "[::1]"
    assert StewardParams(1, False, "10.0.0.1", 80, "/", b"ca").authority == "10.0.0.1"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('steward_ca = "ca.pem"\n', "steward_ca: only with a steward"),
        ('steward = "https://s.example"\nsteward_ca = "missing.pem"\n', "no such file"),
        ('steward = "https://s.example"\nsteward_ca = 3\n', "expected the path of a PEM file"),
        ('steward = "https://user:pw@s.example"\n', "must not hold a user name or password"),
        ('steward = "https://s\u00e9.example"\n', "expected an http or https URL"),
    ],
)
def test_config_refuses_a_bad_steward(
    tmp_path: Path, ca: Authority, text: str, complaint: str
) -> None:
    (tmp_path / "ca.pem").write_bytes(ca.pem.read_bytes())
    with pytest.raises(ConfigError, match=re.escape(complaint)):
        parse_config(text, base_dir=tmp_path)


def test_the_command_line_replaces_the_configs_steward(
    tmp_path: Path, ca: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ca.pem").write_bytes(ca.pem.read_bytes())
    config = parse_config('steward = "https://a.example"\n[env]\nX = "1"\n')
    replaced = config.with_steward("https://b.example:8443/", "ca.pem")
    assert replaced.steward == "https://b.example:8443/"
    assert replaced.steward_ca is not None and replaced.steward_ca.path == tmp_path / "ca.pem"
    assert dict(replaced.env) == {"X": "1"}
    assert config.with_steward() is config
    with pytest.raises(ConfigError, match=r'^--steward-ca "nope\.pem": no such file'):
        config.with_steward(steward_ca="nope.pem")
    with pytest.raises(ConfigError, match=r'^--steward "ftp://x": steward: expected an http'):
        config.with_steward("ftp://x")
