"""Untrusted text, safe to print.

Configs, policies and evidence come from someone else: a line break in them
would forge a line of a message, an escape sequence would drive the terminal.
These show such characters escaped.
"""

from __future__ import annotations

import json

__all__ = ["escaped", "quote", "shown"]


def quote(text: str, limit: int = 60) -> str:
    """`text` in double quotes, cut to `limit`, non-printable characters escaped."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return escaped(json.dumps(text, ensure_ascii=False))


def shown(text: object, limit: int = 4096) -> str:
    """`text` (a path, a key) as is when it prints safely, else quoted."""
    value = str(text)
    return value if value.isprintable() else quote(value, limit)


def escaped(text: str) -> str:
    """`text` with each non-printable character written as an escape."""
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
