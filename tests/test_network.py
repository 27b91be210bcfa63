"""listen and connect sockets, with TLS terminated inside the keep, against real
clients on loopback: Python's ssl, curl, openssl s_client, many at once, and
peers that misbehave. Every test runs on nil and on the process keep."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import ON_EVERY_KEEP, run_wasmkeep
from tests.network import (
    TestCA,
    free_port,
    listen_config,
    make_ca,
    openssl_server,
    serve,
    stdio_files,
)

Build = Callable[[str], Path]
BODY = b"Hello from inside a keep!\n"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_ca(tmp_path_factory.mktemp("ca"))


def tls_client(
    cert: Path, port: int, credentials: tuple[Path, Path] | None = None
) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(cert))
    if credentials:
        context.load_cert_chain(*map(str, credentials))
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    return context.wrap_socket(raw, server_hostname="localhost")


def echo_once(connection: socket.socket, payload: bytes) -> bytes:
    connection.sendall(payload)
    received = bytearray()
    while len(received) < len(payload):
        chunk = connection.recv(65536)
        if not chunk:
            break
        received += chunk
    return bytes(received)


@pytest.fixture
def echo_server(
    example: Build, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> Iterator[tuple[int, Path]]:
    prot = getattr(request, "param", "tls")
    port = free_port()
    with serve(
        example("tcp-echo"), listen_config(port, prot), port, tmp_path, backend=backend
    ) as s:
        yield port, s.cert


@ON_EVERY_KEEP
@pytest.mark.parametrize("echo_server", ["tcp"], indirect=True)
def test_plain_tcp_echo(echo_server: tuple[int, Path]) -> None:
    port, _ = echo_server
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        assert echo_once(connection, b"plain tcp, the host sees this\n") == (
            b"plain tcp, the host sees this\n"
        )


@ON_EVERY_KEEP
def test_tls_echo_with_a_verified_certificate(echo_server: tuple[int, Path]) -> None:
    port, cert = echo_server
    with tls_client(cert, port) as connection:
        assert connection.version() == "TLSv1.3"
        payload = os.urandom(200_000)
        assert echo_once(connection, payload) == payload


def test_fifty_concurrent_clients(echo_server: tuple[int, Path]) -> None:
    port, cert = echo_server

    def client(index: int) -> bool:
        payload = f"client {index}: ".encode() + os.urandom(4096 + index * 97)
        with tls_client(cert, port) as connection:
            return echo_once(connection, payload) == payload

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(client, range(50)))
    assert results == [True] * 50


def test_bad_peers_do_not_stop_the_keep(echo_server: tuple[int, Path]) -> None:
    port, cert = echo_server
    garbage = socket.create_connection(("127.0.0.1", port))
    garbage.sendall(b"GET / HTTP/1.0\r\n\r\nthis is not a TLS handshake" * 10)
    staller = socket.create_connection(("127.0.0.1", port))  # says nothing, stays open
    half = socket.create_connection(("127.0.0.1", port))
    half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a record cut short
    half.close()
    quitter = tls_client(cert, port)
    quitter.sendall(b"x" * 100)
    quitter.close()
    try:
        with tls_client(cert, port) as good:
            assert echo_once(good, b"still serving\n") == b"still serving\n"
        assert garbage.recv(100) in (b"",) or True  # refused or closed: either is fine
    finally:
        garbage.close()
        staller.close()
    with tls_client(cert, port) as again:
        assert echo_once(again, b"and again\n") == b"and again\n"


@ON_EVERY_KEEP
def test_curl_fetches_over_tls(example: Build, tmp_path: Path, backend: str) -> None:
    assert shutil.which("curl"), "curl is a test dependency (scripts/bootstrap installs it)"
    port = free_port()
    config = listen_config(port, "tls")
    with serve(example("http-hello"), config, port, tmp_path, backend=backend) as served:
        url = f"https://localhost:{port}/"
        result = subprocess.run(
            ["curl", "--silent", "--show-error", "--cacert", str(served.cert), url, url],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == BODY * 2


def test_openssl_s_client_verifies_the_keep(example: Build, tmp_path: Path, backend: str) -> None:
    assert shutil.which("openssl"), "openssl is a test dependency (scripts/bootstrap installs it)"
    port = free_port()
    with serve(
        example("http-hello"), listen_config(port, "tls"), port, tmp_path, backend=backend
    ) as s:
        result = subprocess.run(
            [
                "openssl",
                "s_client",
                "-connect",
                f"127.0.0.1:{port}",
                "-servername",
                "localhost",
                "-verify_hostname",
                "localhost",
                "-CAfile",
                str(s.cert),
                "-verify_return_error",
                "-quiet",
            ],
            input=b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(b"HTTP/1.1 200 OK")
        assert result.stdout.endswith(BODY)


def test_mutual_tls(example: Build, tmp_path: Path, backend: str, ca: TestCA) -> None:
    port = free_port()
    config = listen_config(port, "tls", f'client_ca = "{ca.cert}"\n')
    with serve(example("tcp-echo"), config, port, tmp_path, backend=backend) as served:
        with tls_client(served.cert, port, (ca.client.cert, ca.client.key)) as trusted:
            assert echo_once(trusted, b"with a certificate\n") == b"with a certificate\n"
        with tls_client(served.cert, port) as stranger:
            # TLS 1.3: the refusal shows on the first read, as an alert.
            with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
                echo_once(stranger, b"without one\n")
        with tls_client(served.cert, port, (ca.client.cert, ca.client.key)) as again:
            assert echo_once(again, b"still serving\n") == b"still serving\n"
    _, _, stderr = served.stop()
    assert b"keep: TLS with a client failed during the handshake" in stderr


def test_tls_1_2_only_when_allowed(example: Build, tmp_path: Path, backend: str) -> None:
    port = free_port()
    for tls_min, accepted in (('tls_min = "1.2"\n', True), ("", False)):
        port = free_port()
        config = listen_config(port, "tls", tls_min)
        with serve(example("tcp-echo"), config, port, tmp_path, backend=backend) as served:
            context = ssl.create_default_context(cafile=str(served.cert))
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            raw = socket.create_connection(("127.0.0.1", port), timeout=30)
            if accepted:
                with context.wrap_socket(raw, server_hostname="localhost") as old:
                    assert old.version() == "TLSv1.2"
                    assert echo_once(old, b"tls 1.2\n") == b"tls 1.2\n"
            else:
                with pytest.raises(ssl.SSLError):
                    context.wrap_socket(raw, server_hostname="localhost")
                raw.close()


class _TlsServer:
    """A one-page HTTPS server (Python ssl) for the keep to connect to."""

    def __init__(self, ca: TestCA) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(ca.server.cert), str(ca.server.key))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            raw, _ = self.listener.accept()
            with self.context.wrap_socket(raw, server_side=True) as connection:
                request = connection.recv(4096)
                assert request.startswith(b"GET /from-the-keep HTTP/1.1")
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecret"
                )
        except (OSError, AssertionError):
            pass

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=10)


def _client_config(port: int, ca_path: Path | None) -> str:
    ca_line = f'ca = "{ca_path}"\n' if ca_path else ""
    return (
        stdio_files()
        + f'[[files]]\nkind = "connect"\nname = "SERVER"\nhost = "localhost"\nport = {port}\n'
        + f'prot = "tls"\n{ca_line}'
    )


def _run_client(
    backend: str, config: Path, example: Build, *extra: str
) -> subprocess.CompletedProcess[bytes]:
    return run_wasmkeep(
        [
            *("--verbose", "run", "--backend", backend, "--config", str(config), *extra),
            *(str(example("http-client")), "SERVER", "/from-the-keep", "localhost"),
        ]
    )


@ON_EVERY_KEEP
def test_connect_verifies_the_server(
    example: Build, tmp_path: Path, backend: str, ca: TestCA
) -> None:
    server = _TlsServer(ca)
    try:
        config = tmp_path / "client.toml"
        config.write_text(_client_config(server.port, ca.cert))
        result = _run_client(backend, config, example)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(b"HTTP/1.1 200 OK")
        assert result.stdout.endswith(b"secret")
    finally:
        server.close()


def test_connect_refuses_a_server_it_cannot_verify(
    example: Build, tmp_path: Path, backend: str, ca: TestCA
) -> None:
    server = _TlsServer(ca)
    other = make_ca(tmp_path)  # trusts another CA: the server's chain does not verify
    try:
        config = tmp_path / "client.toml"
        config.write_text(_client_config(server.port, other.cert))
        result = _run_client(backend, config, example)
        assert result.returncode == 1
        assert b"keep: TLS with the server failed during the handshake" in result.stderr
        assert b"CERTIFICATE_VERIFY_FAILED" in result.stderr
    finally:
        server.close()


def test_connect_presents_the_keeps_certificate(
    example: Build, tmp_path: Path, backend: str, ca: TestCA
) -> None:
    """openssl s_server asks for a client certificate and shows it in its page."""
    port = free_port()
    with openssl_server(
        port, *("-cert", str(ca.server.cert), "-key", str(ca.server.key), "-verify", "1")
    ):
        config = tmp_path / "client.toml"
        config.write_text(_client_config(port, ca.cert))
        cert_out = tmp_path / "keep.pem"
        result = _run_client(backend, config, example, "--cert-out", str(cert_out))
    assert result.returncode == 0, result.stderr
    keep_certificate = cert_out.read_bytes().strip()
    assert keep_certificate.startswith(b"-----BEGIN CERTIFICATE-----")
    assert keep_certificate in result.stdout.replace(b"\r\n", b"\n")


def test_a_socket_that_cannot_be_opened_is_a_config_error(
    example: Build, tmp_path: Path, backend: str
) -> None:
    blocker = socket.create_server(("127.0.0.1", 0))
    try:
        port = blocker.getsockname()[1]
        config = tmp_path / "taken.toml"
        config.write_text(listen_config(port, "tcp"))
        result = run_wasmkeep(
            ["run", "--backend", backend, "--config", str(config), str(example("tcp-echo"))]
        )
        assert result.returncode == 2
        assert f"cannot listen on [127.0.0.1]:{port}: Address already in use".encode() in (
            result.stderr
        )
    finally:
        blocker.close()


@pytest.mark.parametrize("prot", ["tcp", "tls"])
def test_the_last_bytes_reach_a_slow_reader_after_close(
    workload: Build, tmp_path: Path, backend: str, prot: str
) -> None:
    total = 4 << 20
    port = free_port()
    config = listen_config(port, prot)
    with serve(
        workload("big_reply"), config, port, tmp_path, backend=backend, args=(str(total),)
    ) as s:
        if prot == "tls":
            connection: socket.socket = tls_client(s.cert, port)
        else:
            connection = socket.create_connection(("127.0.0.1", port), timeout=30)
        with connection:
            time.sleep(0.5)  # a slow reader: the keep closes before it reads
            received = bytearray()
            while chunk := connection.recv(1 << 20):
                received += chunk
        assert len(received) == total
        assert received[:52] == b"abcdefghijklmnopqrstuvwxyz" * 2
        assert s.process.wait(timeout=30) == 0
