"""`wasmkeep config`: write an example Enarx.toml, or check one and show what it means."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from wasmkeep.cli._errors import report_errors
from wasmkeep.config import EXAMPLE_CONFIG, ConnectFile, ListenFile, load_config
from wasmkeep.errors import ConfigError
from wasmkeep.printable import shown

__all__ = ["config"]


@click.group()
def config() -> None:
    """Write or check a workload config (Enarx.toml)."""


@config.command()
@click.argument("path", default="Enarx.toml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@report_errors
def init(path: Path, force: bool) -> None:
    """Write a commented example config to PATH (default Enarx.toml; - for stdout).

    As written it gives the default: stdin, stdout and stderr, nothing more.
    """
    if str(path) == "-":
        click.echo(EXAMPLE_CONFIG, nl=False)
        return
    # "x" creates the file or fails, so an existing file is never truncated by
    # a race between a check and the open.
    mode = "w" if force else "x"
    try:
        with path.open(mode, encoding="utf-8") as file:
            file.write(EXAMPLE_CONFIG)
    except FileExistsError:
        raise ConfigError(f"{path}: already exists", hint="pass --force to overwrite it") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot write: {error.strerror or error}") from None
    click.echo(f"wrote {path}; check it with `wasmkeep config check {shlex.quote(str(path))}`")


@config.command()
@click.argument("path", type=click.Path(path_type=Path))
@report_errors
def check(path: Path) -> None:
    """Check the config at PATH and show what the workload would get."""
    checked = load_config(path)
    click.echo(f"{path}: valid")
    click.echo(f"files (FD_COUNT={len(checked.files)}):" if checked.files else "files: none")
    for fd, file in enumerate(checked.files):
        detail = ""
        if isinstance(file, ListenFile):
            detail = f"  {file.prot} on {_host_port(file.addr, file.port)}"
            if file.tls:
                clients = (
                    f"client certificate required (CAs in {shown(str(file.client_ca.path))})"
                    if file.client_ca
                    else "no client certificate"
                )
                detail += f", TLS {file.tls_min}+, {clients}"
        elif isinstance(file, ConnectFile):
            detail = f"  {file.prot} to {_host_port(file.host, file.port)}"
            if file.tls:
                anchors = f"CAs in {shown(str(file.ca.path))}" if file.ca else "the system's CAs"
                detail += f", TLS {file.tls_min}+, server verified with {anchors}"
        click.echo(f"  fd {fd}: {file.kind:<7} {shown(file.name)}{detail}")
    if checked.dirs:
        click.echo("dirs:")
    for fd, spec in enumerate(checked.dirs, start=len(checked.files)):
        access = "read-only" if spec.readonly else "read-write"
        click.echo(f"  fd {fd}: {shown(spec.guest)} -> {shown(str(spec.host))} ({access})")
    if checked.args:
        click.echo(f"args: {shown(shlex.join(checked.args))}")
    if checked.env:
        click.echo(f"env: {', '.join(shown(key) for key in checked.env)}")
    if checked.steward:
        click.echo(f"steward: {checked.steward}")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
