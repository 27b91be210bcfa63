"""TLS terminated inside the keep.

For every `prot = "tls"` socket the keep runs the TLS protocol itself, with
Python's `ssl` over memory BIOs: the host relays ciphertext, and neither the
private key nor any plaintext ever crosses sallyport.

The keep's identity is a key pair made inside the keep at boot (ECDSA P-256)
and a certificate for it: issued by the Steward when the config names one
(`keep/enrol.py`), else self-signed. The certificate (public) is published to
the host so that clients can be told to trust it. Everything that reads files
(the default trust store, loading the key into a context) happens in
:func:`prepare_tls`, before the keep gives up its file system.
"""

from __future__ import annotations

import contextlib
import datetime
import encodings.idna  # noqa: F401 - ssl encodes server names with it, after lockdown
import ipaddress
import os
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wasmkeep.keep.wasi.streams import LINGER_SECONDS, OUTBOX_LIMIT
from wasmkeep.sallyport.calls import POLL_WRITE, HostCalls
from wasmkeep.sallyport.types import Errno, HandleKind, HostError, KeepManifest

__all__ = [
    "Identity",
    "KeepTls",
    "TlsStream",
    "keep_names",
    "prepare_tls",
    "subject_alternative_name",
]

#: Ciphertext asked of the host at a time: a TLS record is at most ~16 KiB.
_RECEIVE = 64 * 1024
_LOG_INFO, _LOG_WARNING = 1, 2

_VALIDITY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Identity:
    """The keep's key pair and certificate chain (PEM). The key stays in the keep.

    `chain_pem` is the keep's certificate first, then the certificates that
    issued it (none when self-signed).
    """

    key_pem: bytes
    chain_pem: bytes

    @staticmethod
    def new_key() -> ec.EllipticCurvePrivateKey:
        """A fresh key pair, made here; the key exists before any certificate
        does (a Steward certifies it only after seeing evidence that binds it)."""
        return ec.generate_private_key(ec.SECP256R1())

    @classmethod
    def from_key(
        cls, key: ec.EllipticCurvePrivateKey, chain: Sequence[x509.Certificate]
    ) -> Identity:
        """`key` with its certificate chain (the key's certificate first)."""
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        chain_pem = b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in chain)
        return cls(key_pem, chain_pem)

    @classmethod
    def self_signed(
        cls,
        names: Iterable[str],
        subject: str = "wasmkeep keep",
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> Identity:
        key = key if key is not None else cls.new_key()
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(subject_alternative_name(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls.from_key(key, [certificate])

    def load_into(self, context: ssl.SSLContext) -> None:
        """ssl reads a key only from a file: give it an anonymous in-memory one."""
        fd = os.memfd_create("keep-identity", os.MFD_CLOEXEC)
        try:
            os.write(fd, self.key_pem + self.chain_pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)


@dataclass
class KeepTls:
    """The keep's identity and a TLS context for each TLS socket, by host handle."""

    identity: Identity
    contexts: dict[int, ssl.SSLContext]


def keep_names() -> list[str]:
    """Names clients may reach the keep by on this machine: what the keep's
    certificate is for (self-signed, or asked of the Steward)."""
    names = ["localhost", "127.0.0.1", "::1"]
    node = os.uname().nodename
    labels = node.split(".")
    if node and all(label.replace("-", "").isalnum() and label.isascii() for label in labels):
        names.append(node.lower())
    return names


def subject_alternative_name(names: Iterable[str]) -> x509.SubjectAlternativeName:
    """The SAN extension for `names`: IP addresses as such, the rest as DNS names."""
    alternative: list[x509.GeneralName] = []
    for entry in dict.fromkeys(names):
        try:
            alternative.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            alternative.append(x509.DNSName(entry))
    return x509.SubjectAlternativeName(alternative)


def prepare_tls(manifest: KeepManifest, identity: Identity | None = None) -> KeepTls | None:
    """The keep's contexts for its TLS sockets, with `identity` (default: a
    self-signed one made now); None when no socket uses TLS and no identity
    was given (a Steward-issued identity is kept, and published, regardless)."""
    tls_fds = [info for info in manifest.fds if info.tls is not None]
    if not tls_fds and identity is None:
        return None
    if identity is None:
        identity = Identity.self_signed(keep_names())
    contexts: dict[int, ssl.SSLContext] = {}
    for info in tls_fds:
        assert info.tls is not None
        server = info.kind is HandleKind.LISTEN
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = (
            ssl.TLSVersion.TLSv1_2 if info.tls.min_version == "1.2" else ssl.TLSVersion.TLSv1_3
        )
        identity.load_into(context)  # a server's certificate; a client's for mutual TLS
        if server:
            if info.tls.ca_pem is not None:
                context.load_verify_locations(cadata=info.tls.ca_pem.decode("ascii"))
                context.verify_mode = ssl.CERT_REQUIRED
        elif info.tls.ca_pem is not None:
            context.load_verify_locations(cadata=info.tls.ca_pem.decode("ascii"))
        else:
            context.load_default_certs()
        contexts[info.handle] = context
    return KeepTls(identity, contexts)


class TlsStream:
    """One TLS connection, driven by the guest's reads and writes."""

    def __init__(
        self,
        host: HostCalls,
        handle: int,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_name: str = "",
    ) -> None:
        self._host = host
        self._handle = handle
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=None if server_side else server_name,
        )
        self._server_side = server_side
        self._plain = bytearray()
        self._backlog = bytearray()  # ciphertext not yet taken by the host
        self._ended = False
        self._failed: Errno | None = None

    # -- moving ciphertext --------------------------------------------------------
    def _flush(self, block: bool) -> None:
        self._backlog += self._outgoing.read()
        while self._backlog:
            try:
                sent = self._host.send(self._handle, memoryview(self._backlog), block)
            except HostError as error:
                if error.errno == Errno.AGAIN and not block:
                    return
                raise
            del self._backlog[:sent]

    def _receive(self, block: bool) -> bool:
        """Feed what the host has; False if nothing came and not blocking."""
        try:
            data = self._host.recv(self._handle, _RECEIVE, False, False, block)
        except HostError as error:
            if error.errno == Errno.AGAIN and not block:
                return False
            raise
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()
        return True

    def _fail(self, error: ssl.SSLError | HostError) -> None:
        stage = "during the handshake" if not self._tls_established() else "after the handshake"
        peer = "a client" if self._server_side else "the server"
        reason = getattr(error, "reason", None) or str(error)
        # A protocol failure is worth the operator's attention; a peer that
        # hangs up (a host errno such as CONNRESET) is ordinary.
        level = _LOG_WARNING if isinstance(error, ssl.SSLError) else _LOG_INFO
        self._host.log(level, f"TLS with {peer} failed {stage}: {reason}")
        self._failed = Errno.CONNABORTED if isinstance(error, ssl.SSLError) else error.errno
        with contextlib.suppress(HostError):
            self._flush(block=False)  # the alert that tells the peer why

    def _tls_established(self) -> bool:
        try:
            return self._tls.version() is not None
        except ValueError:
            return False

    def _advance(self, block: bool, want: int = 1) -> bool:
        """Decrypt until `want` bytes wait in the keep, or the stream ended or
        failed. False if nothing can be read yet and the guest does not block."""
        while len(self._plain) < want and not (self._ended or self._failed):
            try:
                data = self._tls.read(_RECEIVE)
            except ssl.SSLWantReadError:
                try:
                    self._flush(block)  # handshake messages go out (a backlog waits for poll)
                    if not self._receive(block):
                        return bool(self._plain)
                except HostError as error:
                    self._fail(error)
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._ended = True  # close_notify, or the peer just closed
                continue
            except ssl.SSLError as error:
                self._fail(error)
                continue
            if data:
                self._plain += data
            else:
                self._ended = True
        return True

    # -- the Stream interface -------------------------------------------------------
    def recv(self, size: int, *, peek: bool, waitall: bool, block: bool) -> bytes | memoryview:
        want = size if waitall and block and not peek else 1
        if not self._advance(block, want):
            raise HostError(Errno.AGAIN)
        if len(self._plain) < size:
            # Records that already arrived go to the guest in this read too:
            # fewer, larger reads mean fewer round trips on the way back.
            self._decrypt_received()
        if self._plain:
            data = bytes(self._plain[:size])
            if not peek:
                del self._plain[:size]
            return data
        if self._failed:
            raise HostError(self._failed)
        return b""

    def send(self, data: bytes | memoryview, *, block: bool) -> int:
        if self._failed:
            raise HostError(self._failed)
        if not block and len(self._backlog) >= OUTBOX_LIMIT:
            self._flush(block=False)
            if len(self._backlog) >= OUTBOX_LIMIT:
                raise HostError(Errno.AGAIN)
        while True:
            try:
                written = self._tls.write(data)
                break
            except ssl.SSLWantReadError:
                try:
                    self._flush(block)
                    if not self._receive(block):
                        raise HostError(Errno.AGAIN) from None
                except HostError as error:
                    if error.errno == Errno.AGAIN:
                        raise
                    self._fail(error)
                    raise HostError(self._failed or Errno.IO) from None
            except ssl.SSLError as error:
                self._fail(error)
                raise HostError(self._failed or Errno.IO) from None
        if block:
            self._flush(block=True)
        else:
            # Goes out with the guest's next poll (or a flush before a wait).
            self._backlog += self._outgoing.read()
        return written

    def shutdown(self, how: int) -> None:
        if how & 2 and not self._failed:
            self.close()
        self._host.shutdown(self._handle, how)

    def outbox(self) -> bytes | memoryview:
        self._backlog += self._outgoing.read()
        return memoryview(self._backlog)

    def sent(self, written: int, errno: Errno) -> None:
        del self._backlog[:written]
        if errno != Errno.SUCCESS:
            self._fail(HostError(errno))

    def feed(self, data: bytes | memoryview, eof: bool) -> None:
        if data:
            self._incoming.write(data)
        if eof:
            self._incoming.write_eof()

    def flush(self) -> None:
        try:
            self._flush(block=False)
        except HostError as error:
            self._fail(error)

    def ready(self) -> int:
        if not self._plain and not (self._ended or self._failed):
            self._decrypt_received()
        if self._plain:
            return len(self._plain)
        return -1 if (self._ended or self._failed) else 0

    def _held(self) -> int:
        return len(self._backlog) + self._outgoing.pending

    def _decrypt_received(self) -> None:
        """Decrypt records that already arrived (one host receive may bring
        several), asking the host for nothing."""
        while self._incoming.pending or self._tls.pending() or self._incoming.eof:
            try:
                data = self._tls.read(_RECEIVE)
            except ssl.SSLWantReadError:
                return
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._ended = True
                return
            except ssl.SSLError as error:
                self._fail(error)
                return
            if not data:
                self._ended = True
                return
            self._plain += data

    def pump(self) -> bool:
        return self._advance(block=False)

    def close(self) -> None:
        """close_notify, then what is still held back, lingering at most
        LINGER_SECONDS for a slow peer (as the kernel lingers for a socket)."""
        if self._failed or not self._tls_established():
            return
        with contextlib.suppress(ssl.SSLError):
            self._tls.unwrap()
        deadline = time.monotonic() + LINGER_SECONDS
        with contextlib.suppress(HostError):
            self._flush(block=False)
            while self._held() and time.monotonic() < deadline:
                remaining = int((deadline - time.monotonic()) * 1e9)
                self._host.poll([(self._handle, POLL_WRITE)], max(0, remaining))
                self._flush(block=False)
