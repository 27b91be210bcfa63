"""`wasmkeep config`: write an example Enarx.toml, or check one and show what it means."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from wasmkeep.cli._errors import report_errors
from wasmkeep.config import EXAMPLE_CONFIG, ConnectFile, ListenFile, load_config
from wasmkeep.errors import ConfigError

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
                    f"client certificate required (CAs in {_safe(str(file.client_ca.path))})"
                    if file.client_ca
                    else "no client certificate"
                )
                detail += f", TLS {file.tls_min}+, {clients}"
        elif isinstance(file, ConnectFile):
            detail = f"  {file.prot} to {_host_port(file.host, file.port)}"
            if file.tls:
                anchors = f"CAs in {_safe(str(file.ca.path))}" if file.ca else "the system's CAs"
                detail += f", TLS {file.tls_min}+, server verified with {anchors}"
        click.echo(f"  fd {fd}: {file.kind:<7} {_safe(file.name)}{detail}")
    if checked.dirs:
        click.echo("dirs:")
    for fd, spec in enumerate(checked.dirs, start=len(checked.files)):
        access = "read-only" if spec.readonly else "read-write"
        click.echo(f"  fd {fd}: {_safe(spec.guest)} -> {_safe(str(spec.host))} ({access})")
    if checked.args:
        click.echo(f"args: {_safe(shlex.join(checked.args))}")
    if checked.env:
        click.echo(f"env: {', '.join(_safe(key) for key in checked.env)}")
    if checked.steward:
        click.echo(f"steward: {checked.steward}")


def _safe(text: str) -> str:
    """Text from the config as is when it prints safely, else quoted with escapes.

    The config may come from someone else: its strings must not drive the terminal.
    """
    if text.isprintable():
        return text
    quoted = json.dumps(text, ensure_ascii=False)
    return "".join(char if char.isprintable() else _escape(char) for char in quoted)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
