"""Helpers for the network tests: a private CA, free loopback ports, and a
workload served by `wasmkeep run` until the test is done with it."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import wasmkeep_command


@dataclass(frozen=True)
class Credentials:
    cert: Path
    key: Path


@dataclass(frozen=True)
class TestCA:
    """A CA made for the test run, and credentials it signed."""

    __test__ = False  # a fixture's value, not a test class

    cert: Path
    client: Credentials
    server: Credentials


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def make_ca(directory: Path) -> TestCA:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("wasmkeep test CA"))
        .issuer_name(_name("wasmkeep test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def issue(common: str, usage: x509.ObjectIdentifier, stem: str) -> Credentials:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return Credentials(
            _write(directory / f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM)),
            _write(
                directory / f"{stem}.key",
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            ),
        )

    return TestCA(
        cert=_write(directory / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM)),
        client=issue("a test client", ExtendedKeyUsageOID.CLIENT_AUTH, "client"),
        server=issue("localhost", ExtendedKeyUsageOID.SERVER_AUTH, "server"),
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stdio_files() -> str:
    return '[[files]]\nkind = "stdin"\n[[files]]\nkind = "stdout"\n[[files]]\nkind = "stderr"\n'


def listen_config(port: int, prot: str, extra: str = "", name: str = "LISTEN") -> str:
    return (
        stdio_files()
        + f'[[files]]\nkind = "listen"\nname = "{name}"\nprot = "{prot}"\n'
        + f'addr = "127.0.0.1"\nport = {port}\n{extra}'
    )


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int
    cert: Path

    def stop(self) -> tuple[int, bytes, bytes]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise
        return self.process.returncode, stdout, stderr


@contextmanager
def serve(
    module: Path,
    config: str,
    port: int,
    directory: Path,
    *,
    backend: str,
    args: tuple[str, ...] = (),
    options: tuple[str, ...] = (),
) -> Iterator[Served]:
    """`wasmkeep run` of a server, ready once its port accepts connections;
    `options` go to `run` before the module, `args` to the workload."""
    config_file = directory / f"Enarx-{port}.toml"
    config_file.write_text(config)
    cert = directory / f"keep-{port}.pem"
    process = subprocess.Popen(
        [
            *wasmkeep_command(),
            "--verbose",
            "run",
            "--backend",
            backend,
            "--config",
            str(config_file),
            "--cert-out",
            str(cert),
            *options,
            str(module),
            *args,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    served = Served(process, port, cert)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the server ended: {process.communicate()}")
            tls = 'prot = "tls"' in config
            if (not tls or cert.exists()) and _accepts(port):
                break
            if time.monotonic() > deadline:
                raise AssertionError("the server did not come up")
            time.sleep(0.05)
        yield served
    finally:
        served.stop()


def _accepts(port: int) -> bool:
    # Probing with a connection would be a client the server must serve:
    # the host listens before the keep starts, so ask the kernel instead.
    pattern = re.compile(rf":{port:04X} [0-9A-F]+:0000 0A ")
    return any(
        pattern.search(Path(table).read_text()) for table in ("/proc/net/tcp", "/proc/net/tcp6")
    )


@contextmanager
def openssl_server(port: int, *options: str) -> Iterator[subprocess.Popen[bytes]]:
    """`openssl s_server` on `port` for one client, answering with a page that
    shows the TLS session (-www), with `options`; yielded once it listens."""
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", str(port), "-naccept", "1", "-www", *options],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _accepts(port):
            assert server.poll() is None, "openssl s_server exited"
            assert time.monotonic() < deadline, "openssl s_server did not start"
            time.sleep(0.05)
        yield server
    finally:
        server.kill()
        server.wait()
