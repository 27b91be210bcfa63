"""Enrolment against hostile Stewards and lying hosts, in process: the keep's
code (keep/enrol.py) with the host executor as its host, talking to a Steward
double on loopback. Every case must end in one EnrolmentError that says what
was wrong, and never in a certificate for another key or an unverified chain.

The end-to-end runs (`wasmkeep run`, nil and process) are in test_enrol.py.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.steward_double import (
    HOUR,
    Answer,
    Authority,
    Received,
    Steward,
    issue_normally,
    pkipath,
    run_steward,
    silent_server,
)
from wasmkeep.attestation.keep_csr import EvidenceForm
from wasmkeep.errors import HostProtocolViolation
from wasmkeep.host.executor import Executor
from wasmkeep.keep.enrol import (
    DEFAULT_ENROLMENT_LIMITS,
    EnrolmentError,
    EnrolmentLimits,
    HttpResponse,
    enrol,
    keep_evidence,
    parse_chain,
    read_response,
    refusal_reason,
    verify_chain,
)
from wasmkeep.keep.evidence import CollectedEvidence, CollectionError, EvidenceKind
from wasmkeep.keep.tls import Identity
from wasmkeep.sallyport.types import Errno, HostError, PollReply, StewardParams

DIGEST = "sha256:" + hashlib.sha256(b"a workload").hexdigest()
FAST = EnrolmentLimits(timeout=1.0)
NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("steward")


@pytest.fixture(scope="module")
def ca(directory: Path) -> Authority:
    return Authority.make(directory)


@pytest.fixture(scope="module")
def other_ca(directory: Path) -> Authority:
    return Authority.make(directory, "another CA")


@pytest.fixture(scope="module")
def tls_steward(ca: Authority, directory: Path) -> Iterator[Steward]:
    with run_steward(ca, directory) as steward:
        yield steward


@pytest.fixture
def steward(tls_steward: Steward) -> Iterator[Steward]:
    """The module's TLS Steward, answering normally unless a test says otherwise."""
    tls_steward.behaviour = issue_normally
    tls_steward.received.clear()
    yield tls_steward
    tls_steward.behaviour = issue_normally


def params(port: int, handle: int, ca_pem: bytes | None, *, https: bool = True) -> StewardParams:
    return StewardParams(handle, https, "127.0.0.1", port, "/", ca_pem)


def enrol_with(
    port: int,
    ca_pem: bytes | None,
    *,
    https: bool = True,
    executor: Executor | None = None,
    limits: EnrolmentLimits = FAST,
) -> Identity:
    executor = executor if executor is not None else Executor()
    handle = executor.add_connection("127.0.0.1", port)
    try:
        return enrol(
            executor,
            params(port, handle, ca_pem, https=https),
            workload_digest=DIGEST,
            backend="nil",
            limits=limits,
        )
    finally:
        executor.close_all()


def refused(
    steward: Steward, ca: Authority, match: str, url: str | None = None, **kwargs: object
) -> EnrolmentError:
    with pytest.raises(EnrolmentError, match=match) as caught:
        enrol_with(steward.port, ca.pem.read_bytes(), **kwargs)  # type: ignore[arg-type]
    text = str(caught.value)
    assert text.startswith(
        f"cannot obtain a certificate from the Steward at {url or steward.url}: "
    )
    assert "\n" not in text
    return caught.value


# -- the honest Steward ------------------------------------------------------------------


def test_an_honest_steward_certifies_the_keeps_own_key(steward: Steward, ca: Authority) -> None:
    identity = enrol_with(steward.port, ca.pem.read_bytes())
    (received,) = steward.received
    key = serialization.load_pem_private_key(identity.key_pem, password=None)
    chain = x509.load_pem_x509_certificates(identity.chain_pem)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert (
        chain[0]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        == spki
    )
    assert (
        received.csr.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == spki
    )
    assert chain[1] == ca.cert
    # The CSR, as a Steward reads it: the binding, the digest, the evidence.
    assert received.binding_ok
    assert received.workload_digest == DIGEST
    assert received.evidence.form is EvidenceForm.SOFTWARE
    assert received.software is not None
    assert received.software.backend == "nil"
    assert received.software.workload_digest == DIGEST
    assert received.path == "/"
    assert received.headers["content-type"] == "application/pkcs10"
    names = received.csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)


def test_the_connection_is_closed_after_enrolment_whatever_happened(
    steward: Steward, ca: Authority
) -> None:
    def refuse(s: Steward, r: Received) -> Answer:
        return 403, {}, b"no"

    for behaviour in (issue_normally, refuse):
        steward.behaviour = behaviour
        executor = Executor()
        handle = executor.add_connection("127.0.0.1", steward.port)
        with contextlib.suppress(EnrolmentError):
            enrol(
                executor,
                params(steward.port, handle, ca.pem.read_bytes()),
                workload_digest=DIGEST,
                backend="nil",
                limits=FAST,
            )
        with pytest.raises(HostError):
            executor.recv(handle, 10, False, False, False)
        executor.close_all()


def test_an_intermediate_ca_is_followed_to_the_anchor(
    steward: Steward, ca: Authority, directory: Path
) -> None:
    intermediate_key = ec.generate_private_key(ec.SECP256R1())
    intermediate = ca.issue(
        intermediate_key.public_key(), ca=True, usages=None, names=x509.SubjectAlternativeName([])
    )
    sub = Authority(intermediate_key, intermediate, directory / "unused.pem")

    def through_intermediate(s: Steward, received: Received) -> Answer:
        leaf = sub.issue(received.csr.public_key(), issuer=intermediate.subject)  # type: ignore[arg-type]
        return 200, {}, pkipath(leaf, intermediate)  # the anchor itself left out

    steward.behaviour = through_intermediate
    identity = enrol_with(steward.port, ca.pem.read_bytes())
    assert len(x509.load_pem_x509_certificates(identity.chain_pem)) == 2


def test_plain_http_with_steward_ca_verifies_the_chain(ca: Authority, directory: Path) -> None:
    with run_steward(ca, directory, tls=False) as steward:
        identity = enrol_with(steward.port, ca.pem.read_bytes(), https=False)
    assert x509.load_pem_x509_certificates(identity.chain_pem)[1] == ca.cert


# -- a hostile Steward ------------------------------------------------------------------------


def other_key(s: Steward, received: Received) -> Answer:
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    return 200, {}, pkipath(s.ca.issue(stranger), s.ca.cert)


def other_ca_chain(other: Authority) -> object:
    def answer(s: Steward, received: Received) -> Answer:
        leaf = other.issue(received.csr.public_key())  # type: ignore[arg-type]
        return 200, {}, pkipath(leaf, other.cert)

    return answer


def forged_signature(s: Steward, received: Received) -> Answer:
    # A certificate naming the Steward's CA as issuer, signed by someone else.
    impostor = Authority(ec.generate_private_key(ec.SECP256R1()), s.ca.cert, s.ca.pem)
    leaf = impostor.issue(received.csr.public_key())  # type: ignore[arg-type]
    return 200, {}, pkipath(leaf, s.ca.cert)


def leaf_with(**options: object) -> object:
    def answer(s: Steward, received: Received) -> Answer:
        leaf = s.ca.issue(received.csr.public_key(), **options)  # type: ignore[arg-type]
        return 200, {}, pkipath(leaf, s.ca.cert)

    return answer


def body(data: bytes) -> object:
    return lambda s, r: (200, {}, data)


def raw(data: bytes) -> object:
    return lambda s, r: data


HOSTILE_STEWARDS = [
    pytest.param(other_key, "is for another key than the keep's", id="other-key"),
    pytest.param(
        forged_signature,
        "the issued certificate is not signed by the CA certificate 'CN=test Steward CA'",
        id="forged-signature",
    ),
    pytest.param(
        leaf_with(not_after=NOW - HOUR, not_before=NOW - 2 * HOUR), "has expired", id="expired"
    ),
    pytest.param(
        leaf_with(not_before=NOW + 2 * HOUR, not_after=NOW + 3 * HOUR),
        "not valid yet",
        id="not-yet-valid",
    ),
    pytest.param(leaf_with(usages=None), "no extended key usage", id="no-eku"),
    pytest.param(
        leaf_with(usages=(ExtendedKeyUsageOID.CLIENT_AUTH,)),
        "not for TLS servers",
        id="client-only",
    ),
    pytest.param(leaf_with(ca=True), "is a CA certificate", id="leaf-is-a-ca"),
    pytest.param(
        body(b"\x30\x03\x02\x01\x00"), "certificate 1 of the answer is malformed", id="junk-cert"
    ),
    pytest.param(body(b"not DER at all"), "not a DER certificate chain", id="garbage"),
    pytest.param(body(b"\x30\x00"), "empty certificate chain", id="empty-chain"),
    pytest.param(
        body(b"\x30\x82\x10\x00" + b"\x00" * 100), "not a DER certificate chain", id="cut-der"
    ),
    pytest.param(
        raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"\x30" * 100),
        "cut short: 100 of 5000 bytes",
        id="truncated",
    ),
    pytest.param(
        raw(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n" + b"x" * 1000),
        "larger than the limit of 262144 bytes",
        id="huge-content-length",
    ),
    pytest.param(
        raw(b"HTTP/1.1 500 Oops\r\n\r\n" + b"x" * (400 * 1024)),
        "body is larger than the limit",
        id="huge-body-until-close",
    ),
    pytest.param(
        raw(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 20000 + b"\r\n\r\n"),
        "header is larger than the limit",
        id="huge-header",
    ),
    pytest.param(
        raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        "Transfer-Encoding 'chunked'",
        id="chunked",
    ),
    pytest.param(
        raw(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n0\x03\x02\x01\x00"),
        "200 answer without Content-Length",
        id="no-length",
    ),
    pytest.param(
        raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n\x30\x00"),
        "conflicting Content-Length",
        id="two-lengths",
    ),
    pytest.param(
        raw(b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\n"), "malformed Content-Length", id="neg"
    ),
    pytest.param(
        raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n\x30\x00extra"),
        "5 bytes arrived after the answer's body",
        id="trailing-bytes",
    ),
    pytest.param(raw(b"SSH-2.0-OpenSSH\r\n\r\n"), "not an HTTP/1.x status line", id="not-http"),
    pytest.param(
        raw(b"HTTP/1.1 200 OK\r\n folded: line\r\n\r\n"), "malformed header field", id="obs-fold"
    ),
    pytest.param(
        raw(b"HTTP/1.1 200 OK\r\nX-Bad: a\nInjected: b\r\n\r\n"), "malformed header", id="bare-lf"
    ),
    pytest.param(raw(b"HTTP/1.1 100 Continue\r\n\r\n"), "interim answer", id="interim"),
    pytest.param(raw(b""), "ended without an answer", id="hang-up"),
    pytest.param(
        raw(b"HTTP/1.1 200 OK\r\nContent-"), "ended inside the answer's header", id="cut-head"
    ),
]


@pytest.mark.parametrize(("behaviour", "complaint"), HOSTILE_STEWARDS)
def test_a_hostile_steward_is_refused(
    steward: Steward, ca: Authority, behaviour: object, complaint: str
) -> None:
    steward.behaviour = behaviour  # type: ignore[assignment]
    refused(steward, ca, complaint)


def test_a_chain_to_another_ca_is_refused(
    steward: Steward, ca: Authority, other_ca: Authority
) -> None:
    steward.behaviour = other_ca_chain(other_ca)  # type: ignore[assignment]
    refused(steward, ca, "does not lead to a CA in steward_ca")


def test_a_chain_in_leaf_first_order_is_refused(steward: Steward, ca: Authority) -> None:
    def leaf_first(s: Steward, received: Received) -> Answer:
        leaf = s.ca.issue(received.csr.public_key())  # type: ignore[arg-type]
        return 200, {}, pkipath(s.ca.cert, leaf)  # reversed: the leaf comes first

    steward.behaviour = leaf_first
    refused(steward, ca, "the chain is in the wrong order: the keep's certificate comes first")


def test_a_chain_too_long_is_refused(steward: Steward, ca: Authority) -> None:
    def long_chain(s: Steward, received: Received) -> Answer:
        leaf = s.ca.issue(received.csr.public_key())  # type: ignore[arg-type]
        return 200, {}, pkipath(leaf, *[s.ca.cert] * 9)

    steward.behaviour = long_chain
    refused(steward, ca, "10 certificates, more than the limit of 8")


def test_a_refusal_gives_the_reason_sanitized_and_bounded(steward: Steward, ca: Authority) -> None:
    steward.behaviour = lambda s, r: (
        403,
        {"Content-Type": "text/plain"},
        b"policy: workload\x1b[31m not allowed\r\nFAKE LINE " + b"x" * 5000,
    )
    error = refused(steward, ca, r"refused the certificate request \(HTTP 403\): policy: workload")
    text = str(error)
    assert "\x1b" not in text and "\r" not in text
    assert len(text) < 600
    assert text.endswith("...")


def test_a_json_refusal_gives_its_detail(steward: Steward, ca: Authority) -> None:
    steward.behaviour = lambda s, r: (
        403,
        {"Content-Type": "application/json"},
        b'{"detail": "workload digest sha256:ab is not in the policy"}',
    )
    refused(steward, ca, r"\(HTTP 403\): workload digest sha256:ab is not in the policy$")


def test_a_server_that_never_answers_times_out() -> None:
    with (
        silent_server() as port,
        pytest.raises(EnrolmentError, match="no complete answer within 1 s"),
    ):
        enrol_with(port, None)


def test_a_steward_that_stalls_after_the_handshake_times_out(
    steward: Steward, ca: Authority
) -> None:
    def stall(s: Steward, received: Received) -> Answer:
        s.stop.wait(3)
        return 200, {}, b""

    steward.behaviour = stall
    refused(steward, ca, "no complete answer within 0.5 s", limits=EnrolmentLimits(timeout=0.5))


# -- TLS with the Steward ----------------------------------------------------------------------


def test_a_tls_server_certificate_not_from_steward_ca_is_refused(
    ca: Authority, other_ca: Authority, directory: Path
) -> None:
    with run_steward(ca, directory, tls=other_ca.server_context(directory)) as steward:
        error = refused(steward, ca, "TLS with the Steward failed: certificate verify failed")
        assert steward.received == []  # the CSR never left the keep
    assert "steward_ca" in (error.hint or "")


def test_a_tls_server_certificate_for_another_name_is_refused(
    ca: Authority, directory: Path
) -> None:
    context = ca.server_context(directory, names=("steward.example",))
    with run_steward(ca, directory, tls=context) as steward:
        refused(steward, ca, "TLS with the Steward failed: .*mismatch")
        assert steward.received == []


def test_without_steward_ca_the_system_store_decides(steward: Steward) -> None:
    # The test CA is in no system store: the Steward's TLS certificate fails.
    with pytest.raises(EnrolmentError, match="certificate verify failed") as caught:
        enrol_with(steward.port, None)
    assert "the system's store (or set steward_ca)" in (caught.value.hint or "")
    assert steward.received == []


def test_a_server_that_hangs_up_during_the_handshake_is_refused() -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def hang_up() -> None:
        connection, _ = listener.accept()
        # Read the whole ClientHello, so that closing sends a FIN, not a reset.
        connection.settimeout(0.3)
        with contextlib.suppress(TimeoutError):
            while connection.recv(65536):
                pass
        connection.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        with pytest.raises(EnrolmentError, match="the connection ended during the handshake"):
            enrol_with(listener.getsockname()[1], None)
    finally:
        thread.join(timeout=10)
        listener.close()


def test_https_to_a_plain_http_server_is_refused(ca: Authority, directory: Path) -> None:
    with run_steward(ca, directory, tls=False) as steward:
        error = refused(
            steward, ca, "TLS with the Steward failed", url=f"https://127.0.0.1:{steward.port}/"
        )
    assert "does not speak TLS" in (error.hint or "")


# -- a lying host ------------------------------------------------------------------------------


class TappedExecutor(Executor):
    """Records what crosses the host on the Steward's connection."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = bytearray()

    def send(self, handle: int, data: bytes | memoryview, block: bool) -> int:
        sent = super().send(handle, data, block)
        self.seen += bytes(data[:sent])
        return sent


class ForgingExecutor(Executor):
    """A host that answers for the Steward: whatever the Steward says, the
    keep receives `forged` instead."""

    def __init__(self, forged: bytes) -> None:
        super().__init__()
        self.forged = forged

    def poll(self, interests, timeout_ns, prefetch=0, sends=()) -> PollReply:  # type: ignore[no-untyped-def]
        reply = super().poll(interests, timeout_ns, prefetch, sends)
        if self.forged and reply.ready and reply.ready[0] is not None and reply.ready[0].data:
            forged, self.forged = self.forged, b""
            ready = reply.ready[0]
            return PollReply(
                [type(ready)(Errno.SUCCESS, len(forged), False, forged, eof=False)], reply.sent
            )
        if not self.forged and reply.ready and reply.ready[0] is not None:
            ready = reply.ready[0]
            return PollReply([type(ready)(Errno.SUCCESS, 0, True, b"", eof=True)], reply.sent)
        return reply


class CorruptingExecutor(Executor):
    """A host that flips one bit of what the Steward sends."""

    def poll(self, interests, timeout_ns, prefetch=0, sends=()) -> PollReply:  # type: ignore[no-untyped-def]
        reply = super().poll(interests, timeout_ns, prefetch, sends)
        ready = reply.ready[0] if reply.ready else None
        if ready is not None and len(ready.data) > 40:
            data = bytearray(ready.data)
            data[len(data) // 2] ^= 0x01
            return PollReply(
                [type(ready)(ready.errno, len(data), ready.hangup, bytes(data), ready.eof)],
                reply.sent,
            )
        return reply


def test_over_https_the_host_sees_only_ciphertext(steward: Steward, ca: Authority) -> None:
    executor = TappedExecutor()
    enrol_with(steward.port, ca.pem.read_bytes(), executor=executor)
    (received,) = steward.received
    csr = received.csr.public_bytes(serialization.Encoding.DER)
    assert len(executor.seen) > len(csr)
    assert csr not in bytes(executor.seen)
    assert b"application/pkcs10" not in executor.seen


def test_a_host_that_corrupts_the_tls_stream_is_caught(steward: Steward, ca: Authority) -> None:
    with pytest.raises(EnrolmentError, match="TLS with the Steward failed"):
        enrol_with(steward.port, ca.pem.read_bytes(), executor=CorruptingExecutor())


def test_a_host_that_answers_for_an_https_steward_is_caught(
    steward: Steward, ca: Authority
) -> None:
    forged = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n\x30\x00"
    with pytest.raises(EnrolmentError, match="TLS with the Steward failed"):
        enrol_with(steward.port, ca.pem.read_bytes(), executor=ForgingExecutor(forged))


def test_a_host_that_answers_for_an_http_steward_gets_nowhere(
    ca: Authority, directory: Path
) -> None:
    # Over plain http the host can say anything, but only the Steward's CA can
    # sign a chain the keep accepts: a chain of its own making is refused.
    host_ca = Authority.make(directory, "the host's CA")
    own_key = ec.generate_private_key(ec.SECP256R1())
    for chain, complaint in (
        (pkipath(host_ca.issue(own_key.public_key()), host_ca.cert), "for another key"),
        (pkipath(ca.issue(own_key.public_key()), ca.cert), "for another key"),
    ):
        document = chain
        forged = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(document) + document
        with (
            run_steward(ca, directory, tls=False) as steward,
            pytest.raises(EnrolmentError, match=complaint),
        ):
            enrol_with(
                steward.port, ca.pem.read_bytes(), https=False, executor=ForgingExecutor(forged)
            )


def test_a_host_certificate_for_the_keeps_key_from_its_own_ca_is_refused() -> None:
    # The host saw the CSR (plain http) and had its own CA certify the keep's
    # key: the chain does not reach steward_ca.
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    steward_ca = _ca("the Steward's CA")
    host_ca = _ca("the host's CA")
    leaf = _leaf(host_ca, key.public_key())
    with pytest.raises(EnrolmentError, match="does not lead to a CA in steward_ca"):
        verify_chain([leaf, host_ca[1]], spki, [steward_ca[1]], now=NOW)
    # Dressed up with the Steward's CA name: the signature gives it away.
    impostor = (host_ca[0], steward_ca[1])
    with pytest.raises(EnrolmentError, match="not signed by"):
        verify_chain([_leaf(impostor, key.public_key())], spki, [steward_ca[1]], now=NOW)


# -- the pure parts ---------------------------------------------------------------------------


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - HOUR)
        .not_valid_after(NOW + HOUR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], public: ec.EllipticCurvePublicKey
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "keep")]))
        .issuer_name(issuer[1].subject)
        .public_key(public)
        .serial_number(2)
        .not_valid_before(NOW - HOUR)
        .not_valid_after(NOW + HOUR)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(issuer[0], hashes.SHA256())
    )


def test_without_steward_ca_the_chain_must_end_self_signed() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    root = _ca("root")
    leaf = _leaf(root, key.public_key())
    verify_chain([leaf, root[1]], spki, None, now=NOW)
    with pytest.raises(EnrolmentError, match="does not end in a self-signed CA certificate"):
        verify_chain([leaf], spki, None, now=NOW)


def test_collected_evidence_forms() -> None:
    report = b"\x01" * 64
    snp = CollectedEvidence(EvidenceKind.SNP_REPORT, "configfs-tsm", b"r", report, b"certs")
    assert keep_evidence(snp).form is EvidenceForm.SNP_REPORT
    assert keep_evidence(snp).auxblob == b"certs"
    quote = CollectedEvidence(EvidenceKind.TDX_QUOTE, "configfs-tsm", b"q", report)
    assert keep_evidence(quote).form is EvidenceForm.TDX_QUOTE
    tdreport = CollectedEvidence(EvidenceKind.TDX_REPORT, "/dev/tdx_guest", b"t", report)
    with pytest.raises(EnrolmentError, match="no Steward can verify remotely"):
        keep_evidence(tdreport)
    huge = CollectedEvidence(EvidenceKind.SNP_REPORT, "configfs-tsm", b"r", report, bytes(200_000))
    with pytest.raises(EnrolmentError, match="larger than a Steward accepts"):
        keep_evidence(huge)


def test_no_evidence_fails_before_anything_is_sent(steward: Steward, ca: Authority) -> None:
    def nothing(report_data: bytes, **kwargs: object) -> CollectedEvidence:
        raise CollectionError("no snp evidence on this machine: no /dev/sev-guest")

    executor = Executor()
    handle = executor.add_connection("127.0.0.1", steward.port)
    with pytest.raises(EnrolmentError, match="no evidence to present: no snp evidence"):
        enrol(
            executor,
            params(steward.port, handle, ca.pem.read_bytes()),
            workload_digest=DIGEST,
            backend="snp",
            collect=nothing,
        )
    executor.close_all()
    assert steward.received == []


def test_the_evidence_binds_the_csr_key_and_the_digest(steward: Steward, ca: Authority) -> None:
    seen: dict[str, object] = {}

    def spy(report_data: bytes, **kwargs: object) -> CollectedEvidence:
        from wasmkeep.keep.evidence import collect_evidence

        seen.update(kwargs, report_data=report_data)
        return collect_evidence(report_data, **kwargs)  # type: ignore[arg-type]

    executor = Executor()
    handle = executor.add_connection("127.0.0.1", steward.port)
    enrol(
        executor,
        params(steward.port, handle, ca.pem.read_bytes()),
        workload_digest=DIGEST,
        backend="process",
        collect=spy,
    )
    executor.close_all()
    assert seen["backend"] == "process"
    assert seen["workload_digest"] == DIGEST
    (received,) = steward.received
    assert received.binding_ok
    assert received.software is not None and received.software.report_data == seen["report_data"]


def _reader(data: bytes, piece: int = 7) -> object:
    chunks = [data[i : i + piece] for i in range(0, len(data), piece)]
    chunks.reverse()
    return lambda: chunks.pop() if chunks else b""


def test_a_response_read_in_small_pieces() -> None:
    data = b"HTTP/1.0 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nbecause"
    with pytest.raises(EnrolmentError, match="1 bytes arrived after"):
        read_response(_reader(data, len(data)))  # type: ignore[arg-type]
    # Read in pieces, the keep stops at Content-Length and never reads past it.
    assert read_response(_reader(data)).body == b"becaus"  # type: ignore[arg-type]
    response = read_response(_reader(data[:-1]))  # type: ignore[arg-type]
    assert (response.status, response.phrase, response.body) == (403, "Forbidden", b"becaus")
    assert response.header("CONTENT-TYPE") == "text/plain"
    assert refusal_reason(HttpResponse(418, "I'm a teapot", (), b"")) == "I'm a teapot"
    assert refusal_reason(HttpResponse(418, "\x1b", (), b"")) == "no reason given"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=64))
def test_any_bytes_give_a_response_or_an_enrolment_error(data: bytes, piece: int) -> None:
    limits = EnrolmentLimits(max_header_bytes=128, max_body_bytes=128, max_headers=4)
    try:
        response = read_response(_reader(data, piece), limits)  # type: ignore[arg-type]
    except EnrolmentError:
        return
    assert len(response.body) <= 128
    refusal_reason(response, limits)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_body_gives_a_chain_or_an_enrolment_error(data: bytes) -> None:
    try:
        chain = parse_chain(data)
    except EnrolmentError:
        return
    with pytest.raises(EnrolmentError):
        verify_chain(chain, b"not the key", None, now=NOW)


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.none() | st.text(max_size=20) | st.integers(),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(["detail", "reason", "x"]), inner, max_size=3)
        ),
        max_leaves=10,
    )
)
def test_any_json_refusal_gives_one_bounded_line(document: object) -> None:
    import json

    body = json.dumps(document).encode()
    line = refusal_reason(HttpResponse(400, "Bad", (("content-type", "application/json"),), body))
    assert (
        line and line.isprintable() and len(line) <= DEFAULT_ENROLMENT_LIMITS.max_reason_chars + 3
    )


def test_a_deeply_nested_json_refusal_does_not_crash() -> None:
    body = b"[" * 100_000
    line = refusal_reason(HttpResponse(400, "Bad", (("content-type", "application/json"),), body))
    assert line.startswith("[[[")


def test_a_sallyport_violation_is_not_an_enrolment_error(steward: Steward, ca: Authority) -> None:
    class Violating(Executor):
        def poll(self, *args, **kwargs) -> PollReply:  # type: ignore[no-untyped-def]
            raise HostProtocolViolation("poll: two results for one interest")

    with pytest.raises(HostProtocolViolation):
        enrol_with(steward.port, ca.pem.read_bytes(), executor=Violating())
