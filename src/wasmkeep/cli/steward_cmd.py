"""`wasmkeep steward serve`: run the Steward, the CA for attested keeps.

The CA comes from ``--ca-key`` and ``--ca-cert``, or from ``--generate-ca DIR``,
which makes one in DIR (mode 0700; ``ca.key`` 0600, ``ca.crt``) the first time
and reuses it afterwards. The CA key is encrypted at rest when a passphrase is
given, in ``$WASMKEEP_CA_PASSPHRASE`` or a file (``--ca-passphrase-file``).

TLS is on by default, with a server certificate the CA issues at start for
localhost, 127.0.0.1, ::1 and the address served; clients (and keeps) trust the
Steward with ``ca.crt`` alone. One log line per decision goes to stderr.
SIGTERM or Ctrl-C stops it gracefully (exit status 0).
"""

from __future__ import annotations

import datetime
import logging
import re
import signal
import sys
from pathlib import Path
from typing import Any

import click

from wasmkeep.cli._errors import report_errors
from wasmkeep.errors import ConfigError
from wasmkeep.printable import quote, shown

__all__ = ["steward"]

_DEFAULT_PORT = 3000  # Enarx's Steward's default
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@click.group()
def steward() -> None:
    """The Steward: a certificate authority for attested keeps."""


def _lifetime(text: str) -> datetime.timedelta:
    match = re.fullmatch(r"\s*([0-9]{1,7})\s*([smhd]?)\s*", text)
    if match is None:
        raise ConfigError(
            f"--cert-lifetime {quote(text)}: expected a number and a unit s, m, h or d",
            hint="for example 12h",
        )
    return datetime.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2) or "s"])


@steward.command()
@click.option("--addr", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option(
    "--port",
    type=int,
    default=_DEFAULT_PORT,
    show_default=True,
    help="The TCP port (0: any free port).",
)
@click.option("--ca-key", type=click.Path(path_type=Path), help="The CA's private key (PEM).")
@click.option("--ca-cert", type=click.Path(path_type=Path), help="The CA's certificate.")
@click.option(
    "--generate-ca",
    "ca_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Use the CA in this directory, making one there if it holds none.",
)
@click.option(
    "--ca-passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The CA key's passphrase (first line); else $WASMKEEP_CA_PASSPHRASE if set.",
)
@click.option(
    "--ca-curve",
    type=click.Choice(["P-256", "P-384"]),
    default="P-256",
    show_default=True,
    help="The curve of a CA made by --generate-ca.",
)
@click.option("--policy", "policy_path", type=click.Path(path_type=Path), help="A policy file.")
@click.option(
    "--cert-lifetime",
    default="12h",
    show_default=True,
    help="How long issued certificates are valid (s, m, h or d).",
)
@click.option(
    "--collateral",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Intel collateral for TDX and SGX quotes (as `attest verify` reads it). Repeatable.",
)
@click.option(
    "--tls/--no-tls",
    default=True,
    show_default=True,
    help="Serve HTTPS with a certificate from the CA (--no-tls: plain HTTP, for a proxy).",
)
@report_errors
def serve(
    addr: str,
    port: int,
    ca_key: Path | None,
    ca_cert: Path | None,
    ca_dir: Path | None,
    ca_passphrase_file: Path | None,
    ca_curve: str,
    policy_path: Path | None,
    cert_lifetime: str,
    collateral: tuple[Path, ...],
    tls: bool,
) -> None:
    """Serve the Steward: appraise keeps' CSRs and issue certificates to those the
    policy accepts (Enarx-compatible POST /, a JSON API, /openapi.json)."""
    from wasmkeep.attestation.policy import default_policy, load_policy
    from wasmkeep.steward.app import create_app
    from wasmkeep.steward.ca import (
        CA_CERT_FILE,
        CA_KEY_FILE,
        PASSPHRASE_ENV,
        load_ca,
        open_ca_directory,
        read_passphrase,
    )
    from wasmkeep.steward.limits import DEFAULT_STEWARD_LIMITS
    from wasmkeep.steward.server import bind, make_server, server_names, tls_context, url_for

    lifetime = _lifetime(cert_lifetime)
    limits = DEFAULT_STEWARD_LIMITS
    if not limits.min_lifetime <= lifetime <= limits.max_lifetime:
        raise ConfigError(
            f"--cert-lifetime {quote(cert_lifetime)}: expected from "
            f"{limits.min_lifetime} to {limits.max_lifetime}"
        )
    if ca_dir is not None and (ca_key is not None or ca_cert is not None):
        raise ConfigError("give --generate-ca DIR, or --ca-key and --ca-cert, not both")
    if ca_dir is None and (ca_key is None or ca_cert is None):
        raise ConfigError(
            "the Steward needs a CA: give --ca-key and --ca-cert, or --generate-ca DIR",
            hint="--generate-ca makes one in DIR the first time and reuses it after",
        )
    policy = load_policy(policy_path) if policy_path is not None else default_policy()
    merged = None
    if collateral:
        from wasmkeep.cli.attest_cmd import _read_collateral

        merged = _read_collateral(collateral)
    now = datetime.datetime.now(datetime.UTC)
    passphrase = read_passphrase(ca_passphrase_file)
    if ca_dir is not None:
        ca, made = open_ca_directory(ca_dir, passphrase=passphrase, now=now, curve=ca_curve)
        cert_path, key_path = ca_dir / CA_CERT_FILE, ca_dir / CA_KEY_FILE
        state = "encrypted" if passphrase else f"NOT encrypted: set ${PASSPHRASE_ENV} to encrypt"
        ca_note = (
            f"made a new CA in {shown(ca_dir)} (key {shown(key_path)}, {state})"
            if made
            else f"using the existing CA in {shown(ca_dir)} (not overwritten)"
        )
    else:
        assert ca_key is not None
        assert ca_cert is not None
        ca = load_ca(ca_key, ca_cert, passphrase=passphrase, now=now)
        cert_path = ca_cert
        ca_note = f"using the CA {shown(ca_cert)}"
    app = create_app(ca, policy=policy, lifetime=lifetime, collateral=merged)
    context = tls_context(ca, server_names(addr), now=now) if tls else None
    sock = bind(addr, port)
    url = url_for(sock, tls=tls, address=addr)

    server = make_server(app, ssl_context=context)

    def stop(signum: int, frame: Any) -> None:
        # Before uvicorn takes over the signals (and again when it re-raises
        # the one it caught after its graceful shutdown): stop, exit 0.
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _log_decisions()
        click.echo(f"wasmkeep steward: serving {url}")
        click.echo(f"  CA: {ca_note}")
        click.echo(
            f"  policy: {shown(policy_path) if policy_path else 'the default policy'}; "
            f"certificates valid {cert_lifetime.strip()}"
        )
        if tls:
            click.echo(
                f"  clients trust the CA certificate: curl --cacert {shown(cert_path)} {url}"
            )
        else:
            click.echo("  TLS is off (--no-tls): put a TLS-terminating proxy in front of it")
        click.echo(f'  keeps: steward = "{url}" in Enarx.toml')
        sys.stdout.flush()
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    click.echo("wasmkeep steward: stopped")


def _log_decisions() -> None:
    """One line per decision to stderr, whatever --verbose says about the rest."""
    logger = logging.getLogger("wasmkeep.steward")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("wasmkeep steward: %(asctime)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
