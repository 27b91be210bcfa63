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
import json
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
        from wasmkeep.cli.attest_cmd import read_collateral

        merged = read_collateral(collateral)
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


@steward.command()
@click.argument("certificate", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option(
    "--ca",
    "ca_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The Steward's CA certificate(s) to check the certificate against.",
)
@click.option(
    "--workload",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The module the claims must name (its SHA-256 digest).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead.")
@report_errors
def inspect(certificate: Path, ca_path: Path | None, workload: Path | None, as_json: bool) -> None:
    """Show a keep's certificate and the claims its Steward verified.

    CERTIFICATE is a PEM file (a chain: the keep's certificate first, as
    `run --cert-out` writes it or `openssl s_client -showcerts` prints it),
    a DER certificate, or - for standard input. Exit status 0 when every
    check made passed, 1 when one failed, 2 for unreadable input.
    """
    from wasmkeep.steward.inspect import (
        MAX_CERTIFICATE_FILE,
        inspect_certificate,
        read_certificates,
    )

    data = _read_input(certificate, MAX_CERTIFICATE_FILE)
    chain = read_certificates(data, _input_name(certificate))
    anchors = []
    if ca_path is not None:
        anchors = read_certificates(_read_input(ca_path, MAX_CERTIFICATE_FILE), shown(ca_path))
    digest = None
    if workload is not None:
        from wasmkeep.workload import Workload

        digest = Workload.from_file(workload).digest
    now = datetime.datetime.now(datetime.UTC)
    inspection = inspect_certificate(chain, anchors=anchors, workload_digest=digest, now=now)
    if as_json:
        _print_inspection_json(inspection)
    else:
        _print_inspection(inspection)
    sys.exit(0 if inspection.passed else 1)


def _read_input(path: Path, limit: int) -> bytes:
    """A file's bytes, or standard input's for ``-``; ConfigError naming it otherwise."""
    try:
        if str(path) == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with path.open("rb") as file:
                data = file.read(limit + 1)
    except OSError as error:
        raise ConfigError(f"cannot read {shown(path)}: {error.strerror or error}") from None
    return data


def _certificate_rows(certificate: Any) -> list[tuple[str, str]]:
    from cryptography import x509

    def iso(moment: datetime.datetime) -> str:
        return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")

    rows = [
        ("subject", certificate.subject.rfc4514_string()),
        ("issuer", certificate.issuer.rfc4514_string()),
        ("serial", f"{certificate.serial_number:x}"),
        (
            "valid",
            f"{iso(certificate.not_valid_before_utc)} to {iso(certificate.not_valid_after_utc)}",
        ),
    ]
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        rows.append(("names", ", ".join(str(name.value) for name in names)))
    except x509.ExtensionNotFound:
        rows.append(("names", "none"))
    return rows


def _print_inspection(inspection: Any) -> None:
    # Imported here: rich is slow to import and only this output needs it.
    from rich.console import Console
    from rich.table import Table

    from wasmkeep.cli._terminal import check_marks

    def two_columns(title: str, rows: Any) -> Table:
        table = Table(title=title, title_justify="left", show_header=False)
        table.add_column(no_wrap=True)
        table.add_column(overflow="fold")  # digests are read whole, never cut
        for name, value in rows:
            table.add_row(name, value)
        return table

    console = Console(highlight=False)
    console.print(two_columns("certificate", _certificate_rows(inspection.certificate)))
    if inspection.claims is not None:
        rows = [(name, json.dumps(value).strip('"')) for name, value in inspection.claims.items()]
        console.print(two_columns("claims (verified by the Steward)", rows))
    passed_mark, failed_mark = check_marks()
    checks = Table(title="checks", title_justify="left")
    checks.add_column("check", no_wrap=True)
    checks.add_column("")
    checks.add_column("detail", overflow="fold")
    for check in inspection.checks:
        checks.add_row(check.name, passed_mark if check.passed else failed_mark, check.detail)
    console.print(checks)


def _print_inspection_json(inspection: Any) -> None:
    document = {
        "certificate": dict(_certificate_rows(inspection.certificate)),
        "claims": None if inspection.claims is None else dict(inspection.claims),
        "checks": [
            {"name": check.name, "passed": check.passed, "detail": check.detail}
            for check in inspection.checks
        ],
        "passed": inspection.passed,
    }
    click.echo(json.dumps(document, indent=2))


def _input_name(path: Path) -> str:
    return "standard input" if str(path) == "-" else shown(path)
