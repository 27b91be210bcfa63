"""A test double of a Steward: a small HTTP(S) server on loopback that speaks
the Enarx protocol (``POST /``, ``application/pkcs10``, a DER PkiPath back),
checks the CSR a keep sends as a Steward would (signature, wasmkeep's
extensions with attestation/keep_csr.py, the report_data binding of software
evidence) and issues from a CA made for the test. It can also misbehave in
every way the enrolment tests need (`Steward.behaviour`).

The real Steward (src/wasmkeep/steward/) is tested end to end elsewhere; this
one exists so that the keep's side can be tested alone, and against lies.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wasmkeep.attestation import der
from wasmkeep.attestation.keep_csr import (
    EVIDENCE_OID,
    WORKLOAD_DIGEST_OID,
    EvidenceForm,
    KeepEvidence,
    decode_evidence,
    decode_workload_digest,
)
from wasmkeep.attestation.software import SoftwareEvidence, parse_software_evidence, report_data

HOUR = datetime.timedelta(hours=1)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@dataclass
class Authority:
    """A CA: its key, its certificate, and the PEM file clients trust."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    pem: Path

    @classmethod
    def make(cls, directory: Path, common: str = "test Steward CA") -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common))
            .issuer_name(_name(common))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - HOUR)
            .not_valid_after(now + 24 * HOUR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        pem = directory / f"{common.replace(' ', '-')}.pem"
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert, pem)

    def issue(
        self,
        public_key: ec.EllipticCurvePublicKey,
        *,
        names: x509.SubjectAlternativeName | None = None,
        usages: tuple[x509.ObjectIdentifier, ...] | None = (
            ExtendedKeyUsageOID.SERVER_AUTH,
            ExtendedKeyUsageOID.CLIENT_AUTH,
        ),
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        ca: bool = False,
        issuer: x509.Name | None = None,
    ) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        if names is None:
            names = x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            )
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("a keep"))
            .issuer_name(issuer or self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - datetime.timedelta(minutes=1))
            .not_valid_after(not_after or now + HOUR)
            .add_extension(names, critical=False)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if usages is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def server_files(
        self, directory: Path, names: tuple[str, ...] = ("localhost", "127.0.0.1")
    ) -> tuple[Path, Path]:
        """A TLS server certificate this CA issued for `names`, and its key (PEM files)."""
        key = ec.generate_private_key(ec.SECP256R1())
        alternative: list[x509.GeneralName] = []
        for entry in names:
            try:
                alternative.append(x509.IPAddress(ipaddress.ip_address(entry)))
            except ValueError:
                alternative.append(x509.DNSName(entry))
        cert = self.issue(
            key.public_key(),
            names=x509.SubjectAlternativeName(alternative),
            usages=(ExtendedKeyUsageOID.SERVER_AUTH,),
        )
        stem = directory / f"server-{cert.serial_number:x}"
        cert_file, key_file = stem.with_suffix(".pem"), stem.with_suffix(".key")
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_file, key_file

    def server_context(
        self, directory: Path, names: tuple[str, ...] = ("localhost", "127.0.0.1")
    ) -> ssl.SSLContext:
        """A TLS server context with a certificate this CA issued for `names`."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*self.server_files(directory, names))
        return context


def pkipath(*leaf_first: x509.Certificate) -> bytes:
    """What a Steward answers for a chain given leaf first: a DER PkiPath,
    ``SEQUENCE OF Certificate`` with the CA first and the leaf last (RFC 6066
    10.1), as Enarx's Steward sends it."""
    return der.encode_sequence(
        *(cert.public_bytes(serialization.Encoding.DER) for cert in reversed(leaf_first))
    )


@dataclass
class Received:
    """What the Steward was sent, checked as far as a Steward checks."""

    path: str
    headers: dict[str, str]
    csr: x509.CertificateSigningRequest
    evidence: KeepEvidence
    software: SoftwareEvidence | None
    workload_digest: str
    binding_ok: bool


#: Answers a Steward double can give: (status, headers, body) or raw bytes.
Answer = tuple[int, dict[str, str], bytes] | bytes
Behaviour = Callable[["Steward", Received], Answer]


def issue_normally(steward: Steward, received: Received) -> Answer:
    san = received.csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    leaf = steward.ca.issue(received.csr.public_key(), names=san)  # type: ignore[arg-type]
    return 200, {"Content-Type": "application/pkix-cert"}, pkipath(leaf, steward.ca.cert)


@dataclass
class Steward:
    """A running double: its URL, CA, what it received, and how it answers."""

    ca: Authority
    url: str
    port: int
    behaviour: Behaviour = issue_normally
    received: list[Received] = field(default_factory=list)
    requests: int = 0
    stop: threading.Event = field(default_factory=threading.Event)


def _extension(csr: x509.CertificateSigningRequest, oid: str) -> bytes:
    value = csr.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid)).value
    assert isinstance(value, x509.UnrecognizedExtension)
    return value.value


def _check_csr(path: str, headers: dict[str, str], body: bytes) -> Received:
    csr = x509.load_der_x509_csr(body)
    assert csr.is_signature_valid
    evidence = decode_evidence(_extension(csr, EVIDENCE_OID))
    digest = decode_workload_digest(_extension(csr, WORKLOAD_DIGEST_OID))
    spki = csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    software = None
    binding_ok = False
    if evidence.form is EvidenceForm.SOFTWARE:
        software = parse_software_evidence(evidence.evidence)
        binding_ok = software.report_data == report_data(spki, digest)
    return Received(path, headers, csr, evidence, software, digest, binding_ok)


def _handler(steward: Steward) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._send(200, {"Content-Type": "text/plain"}, b"ok")

        def do_POST(self) -> None:
            steward.requests += 1
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            headers = {key.lower(): value for key, value in self.headers.items()}
            if headers.get("content-type") != "application/pkcs10":
                self._send(415, {"Content-Type": "text/plain"}, b"expected application/pkcs10")
                return
            try:
                received = _check_csr(self.path, headers, body)
            except Exception as error:
                self._send(400, {"Content-Type": "text/plain"}, f"bad CSR: {error}".encode())
                return
            steward.received.append(received)
            if not received.binding_ok:
                self._send(
                    403, {"Content-Type": "text/plain"}, b"report_data does not bind the key"
                )
                return
            answer = steward.behaviour(steward, received)
            if isinstance(answer, bytes):
                self.wfile.write(answer)
                self.wfile.flush()
                self.close_connection = True
                return
            self._send(*answer)

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

    return Handler


@contextmanager
def run_steward(
    ca: Authority,
    directory: Path,
    *,
    tls: ssl.SSLContext | bool | None = True,
    behaviour: Behaviour = issue_normally,
) -> Iterator[Steward]:
    """A Steward double on 127.0.0.1; `tls` True serves TLS with a certificate
    from `ca`, a context serves that, False or None plain HTTP."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.daemon_threads = True
    port = server.server_address[1]
    context = ca.server_context(directory) if tls is True else tls or None
    scheme = "https" if context else "http"
    steward = Steward(ca, f"{scheme}://127.0.0.1:{port}/", port, behaviour)
    server.RequestHandlerClass = _handler(steward)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield steward
    finally:
        steward.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def silent_server() -> Iterator[int]:
    """A TCP server that accepts and never says a word; yields its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            held.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        listener.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
