"""`wasmkeep platform info`: which backends this machine supports, and why."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from wasmkeep.cli._terminal import check_marks

if TYPE_CHECKING:
    from wasmkeep.host.platform import BackendReport

__all__ = ["platform"]


@click.group()
def platform() -> None:
    """What this machine can run keeps on."""


@platform.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of tables.")
def info(as_json: bool) -> None:
    """Probe every backend and say which ones can run here.

    Each backend lists its checks, passed or failed with a reason, then a
    verdict; the last line names the backend `wasmkeep run` would pick.
    """
    # Imported here, as rich below: every command loads this module, few need these.
    from wasmkeep.host.platform import platform_document, probe_platform

    reports = probe_platform()
    if as_json:
        click.echo(json.dumps(platform_document(reports), indent=2))
        return
    _print_tables(reports)


def _print_tables(reports: list[BackendReport]) -> None:
    # Imported here: rich is slow to import and only this output needs it.
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from wasmkeep.host.platform import most_isolating_available

    console = Console(highlight=False)
    passed_mark, failed_mark = check_marks()
    for report in reports:
        table = Table(
            title=f"{report.name}: {report.isolation}",
            title_justify="left",
            title_style="bold",
            show_header=True,
            header_style="dim",
            expand=False,
        )
        table.add_column("check", no_wrap=True)
        table.add_column("", no_wrap=True)
        table.add_column("detail")
        for check in report.checks:
            mark = (
                Text(passed_mark, style="green") if check.passed else Text(failed_mark, style="red")
            )
            table.add_row(Text(check.name), mark, Text(check.detail))
        console.print(table)
        style = "green" if report.usable else ("yellow" if report.available else "red")
        console.print(Text(f"{report.name}: {report.summary}", style=style))
        console.print()
    console.print(Text(f"default backend: {most_isolating_available(reports)}", style="bold"))
