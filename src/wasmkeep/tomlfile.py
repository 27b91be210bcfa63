"""TOML files written by people (workload configs, attestation policies).

Reading within a size limit, parsing, and the pieces of error messages that
say where and what is wrong: one line per problem, `source: key.path: what`,
with untrusted text quoted so that it cannot forge a line or drive a terminal.
"""

from __future__ import annotations

import datetime
import os
import re
import tomllib
from collections.abc import Sequence
from typing import Any, TypeVar

from wasmkeep.errors import WasmkeepError
from wasmkeep.printable import quote

__all__ = [
    "MAX_PROBLEMS",
    "describe",
    "format_loc",
    "parse_toml",
    "problems_error",
    "read_toml_text",
]

#: Problems listed in one error; the rest are counted.
MAX_PROBLEMS = 20

_Error = TypeVar("_Error", bound=WasmkeepError)


def read_toml_text(
    path: str | os.PathLike[str], *, limit: int, error: type[WasmkeepError], source: str
) -> str:
    """The UTF-8 text of the file at `path` (a byte-order mark dropped, as
    some editors write one), or `error` naming `source`."""
    try:
        with open(path, "rb") as file:
            raw = file.read(limit + 1)
    except OSError as problem:
        raise error(f"{source}: cannot read: {problem.strerror or problem}") from None
    if len(raw) > limit:
        raise error(f"{source}: larger than the limit of {limit} bytes")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as problem:
        raise error(
            f"{source}: not valid UTF-8 at byte offset {problem.start} ({problem.reason})",
            hint="TOML files must be UTF-8",
        ) from None


def parse_toml(text: str, *, limit: int, error: type[WasmkeepError], source: str) -> dict[str, Any]:
    """The table `text` holds, or `error` naming `source`, the line and column."""
    if len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit:
        raise error(f"{source}: larger than the limit of {limit} bytes")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as problem:
        raise error(f"{source}: {_toml_error_text(problem)}") from None
    except ValueError as problem:  # an integer too long to convert (int_max_str_digits)
        raise error(f"{source}: invalid TOML: {problem}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise error(f"{source}: invalid TOML: arrays or tables nested too deeply") from None


def problems_error(source: str, problems: Sequence[str], error: type[_Error]) -> _Error:
    """One `error` listing every problem, one per line: `source: key.path: what`."""
    lines = [f"{source}: {problem}" for problem in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"{source}: ... and {len(problems) - MAX_PROBLEMS} more problems")
    return error("\n".join(lines))


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_loc(loc: Sequence[str | int]) -> str:
    """A key path as TOML would write it: files[3].port, env."A.B"."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "[key]":  # pydantic's marker for "the key itself", not its value
            continue
        else:
            key = part if _BARE_KEY.fullmatch(part) and len(part) <= 60 else quote(part)
            text += f".{key}" if text else key
    return text


def describe(value: object) -> str:
    """A value as the user wrote it in TOML, short enough for one line."""
    match value:
        case bool():
            return "true" if value else "false"
        case int():
            # str() of a huge int raises ValueError (int_max_str_digits).
            return str(value) if value.bit_length() <= 64 else "a very large integer"
        case float():
            return repr(value)
        case str():
            return quote(value)
        case dict():
            return "a table"
        case list() | tuple():
            return "an array"
        case datetime.datetime():
            return "a date-time"
        case datetime.date():
            return "a date"
        case datetime.time():
            return "a time"
        case None:
            return "nothing"
    return f"a {type(value).__name__}"


def _toml_error_text(error: tomllib.TOMLDecodeError) -> str:
    # tomllib (3.11) puts the position at the end of the message only.
    message = str(error)
    found = re.fullmatch(r"(?s)(.*) \(at line (\d+), column (\d+)\)", message)
    if found:
        reason, line, column = found.groups()
        return f"line {line}, column {column}: invalid TOML: {reason}"
    found = re.fullmatch(r"(?s)(.*) \(at end of document\)", message)
    if found:
        return f"end of file: invalid TOML: {found.group(1)}"
    return f"invalid TOML: {message}"
