"""The error handling every command shares.

Kept apart from `cli/main.py`, which imports every command module, so that a
command module can import it without a cycle.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import click

from wasmkeep.errors import WasmkeepError

__all__ = ["report_errors"]

F = TypeVar("F", bound=Callable[..., Any])


def report_errors(func: F) -> F:
    """Print a :class:`WasmkeepError` as one line and exit with its status.

    A traceback is printed only with `--verbose`; any other exception is a bug
    and is reported as one, with the traceback.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except WasmkeepError as error:
            if _verbose():
                traceback.print_exc()
            click.echo(f"wasmkeep: error: {error.diagnostics()}", err=True)
            sys.exit(error.exit_status)

    return wrapper  # type: ignore[return-value]


def _verbose() -> bool:
    context = click.get_current_context(silent=True)
    root = context.find_root() if context else None
    return bool(root and root.params.get("verbose"))
