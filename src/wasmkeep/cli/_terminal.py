"""What the commands print with, whatever the terminal."""

from __future__ import annotations

import sys

__all__ = ["check_marks"]


def check_marks() -> tuple[str, str]:
    """Pass and fail marks, or plain words where stdout's encoding lacks them."""
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "✔✘".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return "yes", "no"
    return "✔", "✘"
