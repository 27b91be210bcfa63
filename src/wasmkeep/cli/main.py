"""The `wasmkeep` command group; `report_errors` (from `cli/_errors.py`) is re-exported."""

from __future__ import annotations

import importlib
import logging

import click

from wasmkeep import __version__
from wasmkeep.cli._errors import report_errors

__all__ = ["main", "report_errors"]

# Each command is imported only when it runs, so `wasmkeep run` (whose start-up
# time is a benchmark) pays for no other command's imports.
_COMMANDS = {
    "run": ("wasmkeep.cli.run_cmd", "run"),
    "platform": ("wasmkeep.cli.platform_cmd", "platform"),
    "config": ("wasmkeep.cli.config_cmd", "config"),
    "attest": ("wasmkeep.cli.attest_cmd", "attest"),
    "steward": ("wasmkeep.cli.steward_cmd", "steward"),
    "vm": ("wasmkeep.cli.vm_cmd", "vm"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        module_name, attribute = _COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wasmkeep")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens; tracebacks on errors.")
def main(verbose: bool) -> None:
    """Run WebAssembly workloads in keeps that do not trust their host."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="wasmkeep: %(levelname)s: %(message)s",
    )
