"""The `wasmkeep` command group; `report_errors` (from `cli/_errors.py`) is re-exported."""

from __future__ import annotations

import logging

import click

from wasmkeep import __version__
from wasmkeep.cli._errors import report_errors

__all__ = ["main", "report_errors"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wasmkeep")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens; tracebacks on errors.")
def main(verbose: bool) -> None:
    """Run WebAssembly workloads in keeps that do not trust their host."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="wasmkeep: %(levelname)s: %(message)s",
    )


def _register() -> None:
    # Each command lives in its own module; importing them registers them.
    from wasmkeep.cli import config_cmd, platform_cmd, run_cmd

    main.add_command(run_cmd.run)
    main.add_command(platform_cmd.platform)
    main.add_command(config_cmd.config)


_register()
