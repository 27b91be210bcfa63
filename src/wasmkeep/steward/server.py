"""Serving the Steward: its listening socket, its TLS context, uvicorn.

The socket is bound here, before uvicorn starts, so that an address in use is
one clear error and port 0 gives a free port whose number is known. TLS uses
a server certificate the Steward's own CA issues at every start
(:func:`~wasmkeep.steward.ca.server_credentials`), for the loopback names and
the address served: a client needs only ``ca.crt``. Python's ssl module loads
a key only from a file, so the fresh key is written, encrypted with a one-time
random password, with mode 0600 into a private temporary directory, loaded,
and removed at once.

uvicorn runs with its plain dependencies (h11, asyncio); see
benchmarks/README.md ("Steward") for what was measured.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import ipaddress
import secrets
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from cryptography.hazmat.primitives import serialization

from wasmkeep.steward.ca import (
    CertificateAuthority,
    server_credentials,
    write_private_file,
    write_public_file,
)
from wasmkeep.steward.errors import StewardError

__all__ = [
    "bind",
    "make_server",
    "serve_in_thread",
    "server_names",
    "tls_context",
    "url_for",
]

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_BACKLOG = 1024


def _unspecified(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return address == ""


def server_names(address: str) -> list[str]:
    """The names the Steward's certificate carries when it listens on `address`:
    the loopback names, the address itself (unless it is 0.0.0.0 or ::), and
    this machine's host name when it listens on every address."""
    names = list(_LOOPBACK_NAMES)
    if _unspecified(address):
        hostname = socket.gethostname()
        if hostname and hostname not in names and "." not in hostname[:1]:
            names.append(hostname.lower())
    elif address not in names:
        names.append(address)
    return names


def tls_context(
    ca: CertificateAuthority, names: Sequence[str], *, now: datetime.datetime
) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or later) with a fresh key and a certificate
    for `names` issued by `ca`; its chain holds the CA's certificate too."""
    key, certificate = server_credentials(ca, names, now=now)
    password = secrets.token_hex(32)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password.encode("ascii")),
    )
    chain_pem = certificate.public_bytes(serialization.Encoding.PEM) + ca.certificate_pem
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    # No TLS 1.3 session tickets: a keep asks once and never resumes, and
    # making two tickets per connection cost ~5% of the certificates issued
    # per second with a connection per CSR (benchmarks/README.md, "Steward").
    context.num_tickets = 0
    # mkdtemp makes the directory with mode 0700.
    with tempfile.TemporaryDirectory(prefix="wasmkeep-steward-tls-") as folder:
        key_path, chain_path = Path(folder) / "key.pem", Path(folder) / "chain.pem"
        write_private_file(key_path, key_pem)
        write_public_file(chain_path, chain_pem)
        context.load_cert_chain(chain_path, key_path, password=password)
    return context


def bind(address: str, port: int) -> socket.socket:
    """A listening TCP socket on `address` (an IP address or a host name) and `port`."""
    if not 0 <= port <= 65535:
        raise StewardError(f"--port {port}: not a port number (0 to 65535)")
    try:
        infos = socket.getaddrinfo(
            address or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        raise StewardError(f"--addr {address}: cannot resolve it: {error.strerror}") from None
    family, kind, protocol, _, where = infos[0]
    sock = socket.socket(family, kind, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and _unspecified(address):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too
        sock.bind(where)
        sock.listen(_BACKLOG)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise StewardError(
                f"cannot listen on {address} port {port}: the address is already in use",
                hint="choose another --port, or stop what listens there",
            ) from None
        raise StewardError(
            f"cannot listen on {address} port {port}: {error.strerror or error}"
        ) from None
    return sock


def url_for(sock: socket.socket, *, tls: bool, address: str | None = None) -> str:
    """The URL a client uses to reach the Steward listening on `sock`."""
    host, port = sock.getsockname()[:2]
    if address is not None and not _unspecified(address):
        host = address
    elif _unspecified(host):
        host = "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}/"


def make_server(app: Any, *, ssl_context: ssl.SSLContext | None) -> uvicorn.Server:
    """A uvicorn server for `app` (run it with ``run(sockets=[bind(...)])``).

    uvicorn's own access log is off: the Steward logs one line per decision.
    """
    factory = None
    if ssl_context is not None:

        def factory(config: uvicorn.Config, default: Any) -> ssl.SSLContext:
            return ssl_context

    config = uvicorn.Config(
        app,
        http="h11",
        loop="asyncio",
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
        backlog=_BACKLOG,
        ssl_context_factory=factory,
    )
    return uvicorn.Server(config)


@contextlib.contextmanager
def serve_in_thread(
    app: Any,
    *,
    ssl_context: ssl.SSLContext | None,
    address: str = "127.0.0.1",
    port: int = 0,
    timeout: float = 10.0,
) -> Iterator[str]:
    """Serve `app` from a thread of this process while the context lasts; yields its URL.

    For tests and benchmarks: a real uvicorn server on a real socket.
    """
    sock = bind(address, port)
    server = make_server(app, ssl_context=ssl_context)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="steward", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise StewardError("the Steward did not start")
            time.sleep(0.01)
        yield url_for(sock, tls=ssl_context is not None, address=address)
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
