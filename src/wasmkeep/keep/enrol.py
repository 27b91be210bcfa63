"""Enrolment: the keep obtains its certificate from a Steward.

When the config names a Steward (:attr:`KeepManifest.steward`), the keep does
this before its workload starts (a process keep also before it gives up its
file system: evidence is read from ``/sys`` or ``/dev``, and ``ssl`` loads a
key only from a file):

1. The workload digest: SHA-256 of the module bytes the keep is about to run,
   computed inside the keep (the caller's :class:`~wasmkeep.workload.Workload`),
   never the host's word for it.
2. The key: ECDSA P-256, made here; the private key never leaves the keep.
3. Evidence (:func:`~wasmkeep.keep.evidence.collect_evidence`) binding both:
   report_data = :func:`~wasmkeep.attestation.software.report_data` of the
   key's SubjectPublicKeyInfo and the digest. The TEE's report or quote, or
   software evidence on nil and process keeps.
4. The CSR (PKCS #10, signed by the key) with the evidence under
   ``EVIDENCE_OID``, the digest under ``WORKLOAD_DIGEST_OID``
   (:mod:`wasmkeep.attestation.keep_csr`) and the names the keep answers to.
5. ``POST <path>`` with ``Content-Type: application/pkcs10`` and the DER CSR,
   the protocol Enarx keeps speak, over the one connection the host opened;
   for https inside TLS terminated here (the server checked against
   steward_ca, else the default store, and against the URL's host name).
6. The answer, read under hard limits (:class:`EnrolmentLimits`) and a
   deadline: 200 with the chain as a DER PkiPath (``SEQUENCE OF
   Certificate``, the CA first and the keep's certificate last, as Enarx's
   Steward answers and Enarx keeps read it); any other status is a refusal,
   whose body says why.
7. The chain, verified (:func:`verify_chain`), becomes the keep's
   :class:`~wasmkeep.keep.tls.Identity` for every TLS listener and connection.

The host relays bytes and may change, drop, delay or invent any of them; the
Steward's answer is checked, not believed. Whatever either does, the keep ends
up with a certificate for its own key that chains to the Steward's CA, or the
workload does not start: every failure is one :class:`EnrolmentError` naming
the Steward and what went wrong (exit status 1). A reply that breaks sallyport
itself is, as everywhere, a HostProtocolViolation.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import re
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wasmkeep import __version__
from wasmkeep.attestation import der
from wasmkeep.attestation.errors import EvidenceFormatError
from wasmkeep.attestation.keep_csr import (
    EVIDENCE_OID,
    MAX_EVIDENCE_EXTENSION,
    WORKLOAD_DIGEST_OID,
    EvidenceForm,
    KeepEvidence,
    encode_evidence,
    encode_workload_digest,
)
from wasmkeep.attestation.software import report_data
from wasmkeep.errors import KeepError
from wasmkeep.keep.evidence import (
    CollectedEvidence,
    CollectionError,
    EvidenceKind,
    collect_evidence,
)
from wasmkeep.keep.tls import Identity, KeepTls, keep_names, prepare_tls, subject_alternative_name
from wasmkeep.sallyport.calls import POLL_READ, POLL_WRITE, HostCalls
from wasmkeep.sallyport.types import Errno, HostError, KeepManifest, StewardParams

__all__ = [
    "DEFAULT_ENROLMENT_LIMITS",
    "EnrolmentError",
    "EnrolmentLimits",
    "HttpResponse",
    "build_csr",
    "enrol",
    "http_request",
    "keep_evidence",
    "keep_tls",
    "parse_chain",
    "read_response",
    "refusal_reason",
    "verify_chain",
]

KiB = 1024
_LOG_INFO = 1
#: Bytes asked of the host at a time.
_RECEIVE = 64 * KiB


@dataclass(frozen=True, slots=True)
class EnrolmentLimits:
    """Hard limits on what the Steward (and the host relaying it) may send."""

    #: The status line and header fields together.
    max_header_bytes: int = 16 * KiB
    max_headers: int = 64
    #: The body: a chain of a few certificates is a few KiB.
    max_body_bytes: int = 256 * KiB
    #: Certificates in the chain, the keep's own included.
    max_chain: int = 8
    #: The refusal reason shown to the operator.
    max_reason_chars: int = 300
    #: Seconds from the first byte sent to the last received.
    timeout: float = 30.0
    #: How far ahead of the keep's clock a certificate's notBefore may lie
    #: (the Steward's clock and the keep's are never quite the same).
    clock_skew: datetime.timedelta = datetime.timedelta(minutes=5)


DEFAULT_ENROLMENT_LIMITS = EnrolmentLimits()


class EnrolmentError(KeepError):
    """The keep could not obtain a verified certificate from its Steward."""


Collect = Callable[..., CollectedEvidence]


# -- the whole flow ----------------------------------------------------------------------


def keep_tls(
    manifest: KeepManifest,
    host: HostCalls,
    *,
    workload_digest: str,
    backend: str,
    limits: EnrolmentLimits = DEFAULT_ENROLMENT_LIMITS,
) -> KeepTls | None:
    """The keep's TLS set-up: its identity issued by the Steward when the
    manifest names one (:func:`enrol`), else self-signed (:func:`prepare_tls`)."""
    identity = None
    if manifest.steward is not None:
        identity = enrol(
            host,
            manifest.steward,
            workload_digest=workload_digest,
            backend=backend,
            limits=limits,
        )
    return prepare_tls(manifest, identity)


def enrol(
    host: HostCalls,
    steward: StewardParams,
    *,
    workload_digest: str,
    backend: str,
    names: Iterable[str] | None = None,
    limits: EnrolmentLimits = DEFAULT_ENROLMENT_LIMITS,
    collect: Collect = collect_evidence,
    now: datetime.datetime | None = None,
) -> Identity:
    """A key made here and the certificate chain the Steward issued for it.

    `workload_digest` must be the keep's own digest of the module it runs;
    `backend` the keep's (nil, process, ...: which evidence to collect);
    `names` those to ask the certificate for (default :func:`keep_names`).
    `collect` and `now` are for tests. The connection (`steward.handle`) is
    closed when done, whatever happened. Raises EnrolmentError.
    """
    try:
        try:
            return _enrol(host, steward, workload_digest, backend, names, limits, collect, now)
        finally:
            with contextlib.suppress(HostError):
                host.close(steward.handle)
    except EnrolmentError as error:
        raise EnrolmentError(
            f"cannot obtain a certificate from the Steward at {steward.url}: {error}",
            hint=error.hint,
        ) from None


def _enrol(
    host: HostCalls,
    steward: StewardParams,
    workload_digest: str,
    backend: str,
    names: Iterable[str] | None,
    limits: EnrolmentLimits,
    collect: Collect,
    now: datetime.datetime | None,
) -> Identity:
    names = list(keep_names() if names is None else names)
    anchors = _anchors(steward)  # a steward_ca that cannot be read fails first
    # 1. and 2.: the digest is the caller's own; the key is made now.
    key = Identity.new_key()
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # 3. Evidence binding the key and the workload.
    try:
        collected = collect(
            report_data(spki, workload_digest), backend=backend, workload_digest=workload_digest
        )
    except CollectionError as error:
        raise EnrolmentError(f"no evidence to present: {error}", hint=error.hint) from None
    evidence = keep_evidence(collected)
    # 4. The request.
    csr = build_csr(key, evidence, workload_digest, names)
    # 5. and 6. The exchange.
    response = _exchange(host, steward, http_request(steward, csr), anchors, limits)
    if response.status != 200:
        raise EnrolmentError(
            f"the Steward refused the certificate request (HTTP {response.status}): "
            f"{refusal_reason(response, limits)}"
        )
    # 7. The chain.
    chain = parse_chain(response.body, limits)
    verify_chain(
        chain, spki, anchors, now=now or datetime.datetime.now(datetime.UTC), limits=limits
    )
    leaf = chain[0]
    with contextlib.suppress(HostError):
        host.log(
            _LOG_INFO,
            f"enrolled with the Steward at {steward.url} ({collected.kind.value} evidence): "
            f"certificate {leaf.serial_number:x} issued by {leaf.issuer.rfc4514_string()[:200]}, "
            f"valid until {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
        )
    return Identity.from_key(key, chain)


# -- 3. and 4.: evidence and the CSR ---------------------------------------------------

_FORMS = {
    EvidenceKind.SOFTWARE: EvidenceForm.SOFTWARE,
    EvidenceKind.SNP_REPORT: EvidenceForm.SNP_REPORT,
    EvidenceKind.TDX_QUOTE: EvidenceForm.TDX_QUOTE,
}


def keep_evidence(collected: CollectedEvidence) -> KeepEvidence:
    """The CSR's form of collected evidence; EnrolmentError for evidence no
    Steward could check (a TDREPORT, which only this machine can verify)."""
    form = _FORMS.get(collected.kind)
    if form is None:
        raise EnrolmentError(
            f"the keep could collect only a {collected.kind.value} ({collected.source}), "
            "which no Steward can verify remotely",
            hint="a TDX keep needs a quote: configfs-tsm with the host's quoting service (QGS)",
        )
    auxblob = collected.auxblob if form is EvidenceForm.SNP_REPORT else b""
    evidence = KeepEvidence(form, collected.evidence, auxblob)
    if len(encode_evidence(evidence)) > MAX_EVIDENCE_EXTENSION:
        raise EnrolmentError(
            f"the {form.value} evidence is larger than a Steward accepts "
            f"({MAX_EVIDENCE_EXTENSION} bytes with its auxblob)"
        )
    return evidence


def build_csr(
    key: ec.EllipticCurvePrivateKey,
    evidence: KeepEvidence,
    workload_digest: str,
    names: Sequence[str],
) -> bytes:
    """The DER PKCS #10 request: signed by `key`, carrying the evidence, the
    workload digest and the names (attestation/keep_csr.py)."""
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wasmkeep keep")]))
        .add_extension(subject_alternative_name(names), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier(EVIDENCE_OID), encode_evidence(evidence)
            ),
            critical=False,
        )
        .add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier(WORKLOAD_DIGEST_OID), encode_workload_digest(workload_digest)
            ),
            critical=False,
        )
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _anchors(steward: StewardParams) -> list[x509.Certificate] | None:
    if steward.ca_pem is None:
        return None
    try:
        anchors = x509.load_pem_x509_certificates(steward.ca_pem)
    except ValueError as error:
        raise EnrolmentError(f"steward_ca cannot be read: {error}") from None
    return anchors


# -- 5.: the request, over the host's connection ---------------------------------------


def http_request(steward: StewardParams, csr_der: bytes) -> bytes:
    """The whole HTTP/1.1 request (StewardParams checked path and host: no CR,
    LF or space can reach the request line or a header)."""
    head = (
        f"POST {steward.path} HTTP/1.1\r\n"
        f"Host: {steward.authority}\r\n"
        f"User-Agent: wasmkeep/{__version__}\r\n"
        "Accept: */*\r\n"
        "Content-Type: application/pkcs10\r\n"
        f"Content-Length: {len(csr_der)}\r\n"
        "Connection: close\r\n"
        "\r\n"
    )
    return head.encode("ascii") + csr_der


class _Stream(Protocol):
    def send(self, data: bytes) -> None: ...

    def receive(self) -> bytes: ...


class _Wire:
    """Bytes to and from the Steward through the host, never waiting past the
    deadline (a host that ignores poll's timeout can stall the keep, as a
    host always can: then the run's own limits apply)."""

    def __init__(self, host: HostCalls, handle: int, limits: EnrolmentLimits) -> None:
        self._host = host
        self._handle = handle
        self._timeout = limits.timeout
        self._deadline = time.monotonic() + limits.timeout

    def _remaining_ns(self) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise EnrolmentError(f"no complete answer within {self._timeout:g} s")
        return max(1, int(left * 1e9))

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self._host.send(self._handle, view, False)
            except HostError as error:
                if error.errno != Errno.AGAIN:
                    raise
                sent = 0
            view = view[sent:]
            if view:
                self._host.poll([(self._handle, POLL_WRITE)], self._remaining_ns())

    def receive(self) -> bytes:
        """What arrived next; b"" when the Steward closed the connection."""
        while True:
            reply = self._host.poll([(self._handle, POLL_READ)], self._remaining_ns(), _RECEIVE)
            result = reply.ready[0]
            if result is None:
                continue  # woke without news: the deadline decides
            if result.errno != Errno.SUCCESS:
                raise HostError(result.errno)
            if result.data:
                return bytes(result.data)
            if result.eof:
                return b""
            try:
                return self._host.recv(self._handle, _RECEIVE, False, False, False)
            except HostError as error:
                if error.errno != Errno.AGAIN:
                    raise


class _TlsWire:
    """TLS over a _Wire, with Python's ssl over memory BIOs (as keep/tls.py)."""

    def __init__(self, wire: _Wire, context: ssl.SSLContext, server_name: str) -> None:
        self._wire = wire
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_name)

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self._wire.send(data)

    def _fill(self) -> None:
        data = self._wire.receive()
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    def handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = self._tls.write(view)
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
                continue
            view = view[written:]
            self._flush()

    def receive(self) -> bytes:
        while True:
            try:
                data = self._tls.read(_RECEIVE)
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""  # close_notify, or the connection just ended
            if data:
                return data
            return b""


def _tls_context(anchors: Sequence[x509.Certificate] | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if anchors is None:
        context.load_default_certs()
    else:
        der_certificates = b"".join(
            anchor.public_bytes(serialization.Encoding.DER) for anchor in anchors
        )
        context.load_verify_locations(cadata=der_certificates)
    return context


def _exchange(
    host: HostCalls,
    steward: StewardParams,
    request: bytes,
    anchors: Sequence[x509.Certificate] | None,
    limits: EnrolmentLimits,
) -> HttpResponse:
    wire = _Wire(host, steward.handle, limits)
    stream: _Stream = wire
    try:
        if steward.https:
            tls = _TlsWire(wire, _tls_context(anchors), steward.host)
            tls.handshake()
            stream = tls
        stream.send(request)
        return read_response(stream.receive, limits)
    except ssl.SSLCertVerificationError as error:
        raise EnrolmentError(
            "TLS with the Steward failed: certificate verify failed: "
            f"{error.verify_message or error.reason}",
            hint=f"the Steward's TLS certificate must be issued for {steward.host} by a CA in "
            + ("steward_ca" if anchors is not None else "the system's store (or set steward_ca)"),
        ) from None
    except ssl.SSLEOFError:
        raise EnrolmentError(
            "TLS with the Steward failed: the connection ended during the handshake"
        ) from None
    except ssl.SSLError as error:
        reason = error.reason or str(error)
        hint = None
        if reason == "WRONG_VERSION_NUMBER":
            hint = "the server does not speak TLS: is the Steward's URL http rather than https?"
        raise EnrolmentError(f"TLS with the Steward failed: {reason}", hint=hint) from None
    except HostError as error:
        raise EnrolmentError(f"the connection to the Steward failed ({error.errno.name})") from None


# -- 6.: the answer ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """An HTTP response as read: status, reason phrase, fields (names in lower
    case, in order), and the body."""

    status: int
    phrase: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first field named `name` (any case), or None."""
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9]{2})(?: ([\t\x20-\x7e\x80-\xff]*))?")
# RFC 9110 5.1 and 5.5: a token, a colon, a value of visible characters, spaces
# and tabs. A folded line (starting with a space) is no token: refused.
_FIELD_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")


def read_response(
    receive: Callable[[], bytes], limits: EnrolmentLimits = DEFAULT_ENROLMENT_LIMITS
) -> HttpResponse:
    """One HTTP/1.x response from `receive` (b"" at the end), read strictly:
    a status line and fields within limits, a body of exactly Content-Length
    bytes (required for a 200) or up to the end of the connection (a refusal
    may omit it), at most max_body_bytes. No Transfer-Encoding, no interim
    responses (the keep sends no Expect). EnrolmentError otherwise."""
    buffer = bytearray()
    # 1. The head, up to the empty line, within max_header_bytes.
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        if len(buffer) > limits.max_header_bytes:
            raise EnrolmentError(
                f"the answer's header is larger than the limit of {limits.max_header_bytes} bytes"
            )
        data = receive()
        if not data:
            if not buffer:
                raise EnrolmentError("the connection ended without an answer")
            raise EnrolmentError(
                f"the connection ended inside the answer's header: {_shown(buffer)}"
            )
        buffer += data
    if end > limits.max_header_bytes:
        raise EnrolmentError(
            f"the answer's header is larger than the limit of {limits.max_header_bytes} bytes"
        )
    status, phrase, headers = _parse_head(bytes(buffer[:end]), limits)
    body = bytearray(buffer[end + 4 :])
    del buffer
    # 2. The body's length (RFC 9112 6.3).
    length = _body_length(status, headers, limits)
    if length is None:
        while data := receive():
            body += data
            if len(body) > limits.max_body_bytes:
                raise EnrolmentError(
                    f"the answer's body is larger than the limit of {limits.max_body_bytes} bytes"
                )
    else:
        while len(body) < length:
            data = receive()
            if not data:
                raise EnrolmentError(
                    f"the answer was cut short: {len(body)} of {length} bytes of its body arrived"
                )
            body += data
        if len(body) > length:
            raise EnrolmentError(
                f"{len(body) - length} bytes arrived after the answer's body "
                f"(Content-Length {length})"
            )
    return HttpResponse(status, phrase, headers, bytes(body))


def _parse_head(
    head: bytes, limits: EnrolmentLimits
) -> tuple[int, str, tuple[tuple[str, str], ...]]:
    status_line, *lines = head.split(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise EnrolmentError(f"not an HTTP/1.x status line: {_shown(status_line)}")
    status = int(match.group(1))
    if status < 200:
        raise EnrolmentError(f"an unexpected interim answer (HTTP {status})")
    if len(lines) > limits.max_headers:
        raise EnrolmentError(f"the answer has more than {limits.max_headers} header fields")
    headers: list[tuple[str, str]] = []
    for line in lines:
        field = _FIELD_LINE.fullmatch(line)
        if field is None:
            raise EnrolmentError(f"a malformed header field in the answer: {_shown(line)}")
        headers.append((field.group(1).decode("ascii").lower(), field.group(2).decode("latin-1")))
    return status, (match.group(2) or b"").decode("latin-1"), tuple(headers)


def _body_length(
    status: int, headers: tuple[tuple[str, str], ...], limits: EnrolmentLimits
) -> int | None:
    """Content-Length, 0 for a bodiless status, None for "until the end"."""
    for name, value in headers:
        if name == "transfer-encoding":
            raise EnrolmentError(
                f"the answer uses Transfer-Encoding {_shown(value.encode('latin-1'))}, which the "
                "keep does not read (a Steward sends Content-Length)"
            )
    # Several Content-Length fields, or a list, must all say the same (RFC 9110 8.6).
    values = {
        item.strip()
        for name, value in headers
        if name == "content-length"
        for item in value.split(",")
    }
    if status in (204, 304):
        return 0
    if not values:
        if status == 200:
            raise EnrolmentError("a 200 answer without Content-Length (it could be cut short)")
        return None
    if len(values) != 1:
        raise EnrolmentError("the answer has conflicting Content-Length values")
    (text,) = values
    if not text.isdigit() or not text.isascii() or len(text) > 12:
        raise EnrolmentError(f"a malformed Content-Length: {_shown(text.encode('latin-1'))}")
    length = int(text)
    if length > limits.max_body_bytes:
        raise EnrolmentError(
            f"the answer's body ({length} bytes) is larger than the limit of "
            f"{limits.max_body_bytes} bytes"
        )
    return length


def refusal_reason(
    response: HttpResponse, limits: EnrolmentLimits = DEFAULT_ENROLMENT_LIMITS
) -> str:
    """Why the Steward refused, as one printable line of bounded length: the
    body's text (a JSON body's "detail", "reason", "message" or "error"), else
    the reason phrase."""
    text = response.body[: 16 * KiB].decode("utf-8", "replace")
    content_type = (response.header("content-type") or "").lower()
    if "json" in content_type:
        try:
            document = json.loads(response.body)
        except (ValueError, RecursionError):  # RecursionError: nested beyond Python's stack
            document = None
        if isinstance(document, dict):
            for key in ("detail", "reason", "message", "error"):
                value = document.get(key)
                if isinstance(value, str):
                    text = value
                    break
                if value is not None:
                    text = json.dumps(value)[: 16 * KiB]
                    break
    # The Steward is not trusted with the operator's terminal either.
    line = _printable(text)
    if len(line) > limits.max_reason_chars:
        line = line[: limits.max_reason_chars] + "..."
    return line or _printable(response.phrase) or "no reason given"


def _printable(text: str) -> str:
    """One line: control characters and runs of white space become one space."""
    return " ".join("".join(char if char.isprintable() else " " for char in text).split())


def _shown(data: bytes | bytearray, limit: int = 80) -> str:
    text = bytes(data[:limit]).decode("latin-1")
    shown = repr(text)
    return shown + ("..." if len(data) > limit else "")


# -- 7.: the chain -------------------------------------------------------------------------


def parse_chain(
    body: bytes, limits: EnrolmentLimits = DEFAULT_ENROLMENT_LIMITS
) -> list[x509.Certificate]:
    """The certificates of a DER PkiPath (``SEQUENCE OF Certificate``, each
    certifying the next: the CA first, the keep's certificate last; RFC 6066
    10.1), returned leaf first, the order TLS presents them in."""
    try:
        items = der.parse_der(body, "certificate chain").expect(der.SEQUENCE, "certificate chain")
        certificates = items.children()
    except EvidenceFormatError as error:
        raise EnrolmentError(f"the answer is not a DER certificate chain: {error}") from None
    if not certificates:
        raise EnrolmentError("the answer is an empty certificate chain")
    if len(certificates) > limits.max_chain:
        raise EnrolmentError(
            f"the chain has {len(certificates)} certificates, more than the limit of "
            f"{limits.max_chain}"
        )
    chain = []
    for index, item in enumerate(certificates):
        try:
            chain.append(x509.load_der_x509_certificate(item.encoded))
        except ValueError as error:
            raise EnrolmentError(
                f"certificate {index + 1} of the answer is malformed: {str(error)[:200]}"
            ) from None
    chain.reverse()
    return chain


def verify_chain(
    chain: Sequence[x509.Certificate],
    spki_der: bytes,
    anchors: Sequence[x509.Certificate] | None,
    *,
    now: datetime.datetime,
    limits: EnrolmentLimits = DEFAULT_ENROLMENT_LIMITS,
) -> None:
    """Check that `chain` (leaf first) certifies the keep's key and reaches a
    trust anchor; EnrolmentError naming the first check that fails.

    `anchors` are steward_ca's certificates; None when the config names none,
    and then the chain must end in a self-signed CA certificate, which the
    keep takes on the word of the Steward it authenticated over TLS.
    """
    try:
        _verify_chain(chain, spki_der, anchors, now, limits)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        # An extension cryptography cannot parse, a key type it does not know.
        raise EnrolmentError(f"the chain cannot be checked: {str(error)[:200]}") from None


def _verify_chain(
    chain: Sequence[x509.Certificate],
    spki_der: bytes,
    anchors: Sequence[x509.Certificate] | None,
    now: datetime.datetime,
    limits: EnrolmentLimits,
) -> None:
    if not chain:
        raise EnrolmentError("the chain is empty")
    leaf = chain[0]
    # 1. The leaf certifies this keep's key and no other: a host or Steward
    #    that answers with a certificate for another key is refused here.
    leaf_spki = _spki(leaf)
    if leaf_spki != spki_der:
        if len(chain) > 1 and _spki(chain[-1]) == spki_der:
            raise EnrolmentError(
                "the chain is in the wrong order: the keep's certificate comes first, where "
                "a PkiPath has the CA first and the keep's certificate last"
            )
        raise EnrolmentError("the issued certificate is for another key than the keep's")
    # 2. The leaf is valid now (RFC 5280 4.1.2.5).
    _check_validity(leaf, "the issued certificate", now, limits)
    # 3. The leaf may serve TLS (RFC 5280 4.2.1.12) and is not a CA.
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise EnrolmentError(
            "the issued certificate has no extended key usage (serverAuth is required)"
        ) from None
    if ExtendedKeyUsageOID.SERVER_AUTH not in usages:
        raise EnrolmentError("the issued certificate is not for TLS servers (no serverAuth usage)")
    if _is_ca(leaf):
        raise EnrolmentError("the issued certificate is a CA certificate")
    # 4. Each certificate is issued by the next (RFC 5280 6.1.3 (a)): issuer
    #    name, signature, and the issuer a CA valid now.
    for index, (subject, issuer) in enumerate(itertools.pairwise(chain)):
        what = _named(issuer)
        _check_issued_by(subject, issuer, "the issued certificate" if index == 0 else "", what)
        _check_validity(issuer, what, now, limits)
    # 5. The chain ends at a trust anchor.
    last = chain[-1]
    if anchors is None:
        # The Steward's own CA certificate, sent by the server the keep
        # authenticated (TLS against the system's store).
        if last.issuer != last.subject:
            raise EnrolmentError(
                "the chain does not end in a self-signed CA certificate, and no steward_ca "
                "is configured to anchor it",
                hint="set steward_ca to the Steward's CA certificate",
            )
        _check_issued_by(last, last, "", "itself")
        return
    if any(last == anchor for anchor in anchors):
        return
    failure = None
    for anchor in anchors:
        if anchor.subject != last.issuer:
            continue
        try:
            _check_issued_by(last, anchor, "", "the steward_ca CA")
            _check_validity(anchor, "the steward_ca CA that issued the chain", now, limits)
        except EnrolmentError as error:
            failure = error  # another anchor of the same name may still do
            continue
        return
    if failure is not None:
        raise failure
    raise EnrolmentError(
        "the chain does not lead to a CA in steward_ca (it ends at "
        f"{last.issuer.rfc4514_string()[:200]!r})"
    )


def _named(certificate: x509.Certificate) -> str:
    return f"the CA certificate {certificate.subject.rfc4514_string()[:100]!r}"


def _spki(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def _check_issued_by(
    subject: x509.Certificate, issuer: x509.Certificate, subject_what: str, issuer_what: str
) -> None:
    subject_what = subject_what or _named(subject)
    if not _is_ca(issuer):
        raise EnrolmentError(f"{issuer_what} is not a CA certificate (basicConstraints cA)")
    try:
        subject.verify_directly_issued_by(issuer)
    except InvalidSignature:
        raise EnrolmentError(f"{subject_what} is not signed by {issuer_what}") from None
    except ValueError:
        raise EnrolmentError(f"{subject_what} names another issuer than {issuer_what}") from None
    except (TypeError, UnsupportedAlgorithm) as error:
        raise EnrolmentError(f"{subject_what} cannot be checked: {str(error)[:200]}") from None


def _check_validity(
    certificate: x509.Certificate, what: str, now: datetime.datetime, limits: EnrolmentLimits
) -> None:
    if now + limits.clock_skew < certificate.not_valid_before_utc:
        raise EnrolmentError(
            f"{what} is not valid yet (from {certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} "
            "UTC)"
        )
    if now > certificate.not_valid_after_utc:
        raise EnrolmentError(
            f"{what} has expired ({certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC)"
        )
