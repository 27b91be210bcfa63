"""What the benchmark scripts share: command line, selection, context, reports.

`run.py`, `network.py` and `attestation.py` use it; a new script (a Steward
benchmark, say) should too, so that every script takes the same options,
describes its run the same way and prints the same kinds of tables. Standard
library only; import it as `from _harness import ...` (the scripts run with
`benchmarks/` first on `sys.path`).

A benchmark is a measurement, not a test. Its exit status says only whether it
could measure: 0, or `EXIT_PROBLEMS` (1) when a contender failed or gave a
wrong answer (see `finish`), or `EXIT_SETUP` (2) when it could not start, a
`SetupError` (see `setup_failed`) or a bad option (argparse). A missed target
is reported, never an exit status. Results go to stdout, progress to stderr
(`progress`).

What it offers:

Command line
    `add_run_options(parser, repeat=N)`: `--repeat N` (default N), `--only
    NAME[,NAME]` and, unless `quick=False`, `--quick`. Add the script's own
    options after it, then `add_output_options(parser)`: `--json FILE` and
    `--markdown`. `parse_checked(parser, argv)` parses and refuses
    `--repeat` below 1 (a usage error, exit 2).
    `select(benchmarks, args.only)`: the benchmarks named by `--only`, in
    their own order; `SetupError` for an unknown name.

Setting up and finishing
    `SetupError`: raise it when the benchmark cannot start (a tool missing,
    a build failed, an unknown name); `setup_failed("NAME.py", error)` prints
    it and returns `EXIT_SETUP`. `finish(problems)` repeats every problem on
    stderr and returns the exit status.

Measuring
    `interleaved(contenders, repeat)`: `repeat` rounds over the contenders,
    each starting one further on, so drift in the machine's load falls on all
    alike; yields each round's label ("2/5") with a contender.
    `spread(values, fmt)`: the median, min and max cells of a table row.

The run's context (when, where, with what: printed under every report)
    `Context` (a dict of str), `base_context("NAME.py", machine=..., method=...)`
    for its first entries: command, date, wasmkeep, machine, method. Parts of
    it: `command_line`, `utc_now`, `wasmkeep_revision`, `cpu_model`; and
    `command_output`, `first_line` to ask a tool its version.

Reports
    A `Layout` (the table's columns) and a `Section` per benchmark (its
    heading, rows, target, problems), then `render_report(layout, sections,
    context, markdown=args.markdown)`: `text_report` or `markdown_report`
    (the README's tables). `write_json(path, data)` for `--json`.
    `aligned`, `bullets`, `format_ratio` ("0.97x" or "-") and `format_bytes`
    ("64 MiB") for reports of another shape.

A script's `main`, in outline (`run.py` and `network.py` do all of it;
`attestation.py` keeps its own options and text lines, and uses the context,
Markdown and JSON helpers):

    parser = argparse.ArgumentParser(description="...")
    add_run_options(parser, repeat=5)
    add_output_options(parser)
    args = parse_checked(parser, argv)
    try:
        chosen = select(all_benchmarks, args.only)  # then find tools, build
    except SetupError as error:
        return setup_failed("NAME.py", error)
    context = {**base_context("NAME.py", machine=..., method=...), ...}
    results = [measure(bench, args.repeat) for bench in chosen]
    sections = [section(result) for result in results]
    print(render_report(LAYOUT, sections, context, markdown=args.markdown))
    if args.json:
        write_json(args.json, {**context, "benchmarks": [...]})
    return finish([problem for result in results for problem in result.problems])
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Protocol, TypeVar

#: Exit status when a contender failed or gave a wrong answer.
EXIT_PROBLEMS = 1
#: Exit status when the benchmark could not start (argparse uses it too).
EXIT_SETUP = 2

#: When, where and with what the numbers were taken: shown under every report.
Context = dict[str, str]


class SetupError(Exception):
    """The benchmark cannot start: a tool is missing or a build failed."""


def progress(message: str) -> None:
    """A line on stderr, at once: stdout is for the results."""
    print(message, file=sys.stderr, flush=True)


def setup_failed(script: str, error: SetupError) -> int:
    """Say why `script` cannot start; the exit status to return."""
    print(f"{script}: {error}", file=sys.stderr)
    return EXIT_SETUP


def finish(problems: Sequence[str]) -> int:
    """Repeat each problem on stderr, under the report; the exit status."""
    for problem in problems:
        progress(f"PROBLEM: {problem}")
    return EXIT_PROBLEMS if problems else 0


# --- Command line --------------------------------------------------------------


def add_run_options(parser: argparse.ArgumentParser, *, repeat: int, quick: bool = True) -> None:
    """`--repeat N` (default `repeat`), `--only NAME[,NAME]`, and `--quick`."""
    parser.add_argument(
        "--repeat",
        type=int,
        default=repeat,
        metavar="N",
        help=f"timed runs per contender (default {repeat})",
    )
    parser.add_argument("--only", metavar="NAME[,NAME]", help="run only these benchmarks")
    if quick:
        parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """`--json FILE` and `--markdown`."""
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
    parser.add_argument(
        "--markdown", action="store_true", help="print a Markdown table instead of text"
    )


def parse_checked(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """Parse `argv` (None: the command line); `--repeat` must be at least 1."""
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


class Named(Protocol):
    """Anything with a name, as a benchmark has."""

    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=Named)


def select(benchmarks: Sequence[N], only: str | None) -> list[N]:
    """The benchmarks named in `only` (comma-separated), in their own order;
    all of them without `only`. SetupError for a name that is not one."""
    if not only:
        return list(benchmarks)
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    known = [b.name for b in benchmarks]
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise SetupError(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(known)}")
    return [b for b in benchmarks if b.name in wanted]


# --- Measuring -----------------------------------------------------------------

T = TypeVar("T")


def interleaved(contenders: Sequence[T], repeat: int) -> Iterator[tuple[str, T]]:
    """`repeat` rounds over `contenders`, each round starting one contender
    further on; yields the round's label ("2/5") with each contender. Lazy:
    the caller may drop a contender from its results between two yields."""
    for round_ in range(repeat):
        start = round_ % len(contenders) if contenders else 0
        for contender in [*contenders[start:], *contenders[:start]]:
            yield f"{round_ + 1}/{repeat}", contender


def spread(values: Sequence[float], fmt: Callable[[float], str]) -> list[str]:
    """The median, min and max of `values`, formatted: three table cells."""
    return [fmt(statistics.median(values)), fmt(min(values)), fmt(max(values))]


# --- The run's context -----------------------------------------------------------


def base_context(script: str, *, machine: str, method: str) -> Context:
    """The first entries of a run's context: the command, the date, the
    wasmkeep measured, the machine (CPU, CPU count, then `machine`) and how
    it measured. Add the script's own after them."""
    return {
        "command": command_line(script),
        "date": utc_now(),
        "wasmkeep": wasmkeep_revision(),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, {machine}",
        "method": method,
    }


def command_line(script: str) -> str:
    """How this run was started, e.g. `benchmarks/run.py --quick`."""
    return shlex.join([f"benchmarks/{script}", *sys.argv[1:]])


def utc_now() -> str:
    """The date and time, e.g. `2026-11-27 07:19 UTC`."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def wasmkeep_revision() -> str:
    """The commit measured, and whether the source differed from it. The
    source is wherever this Python imports wasmkeep from (the editable
    install, or a checkout put first on PYTHONPATH), as the CLI does too."""
    spec = find_spec("wasmkeep")
    if spec is None or spec.origin is None:
        return "not importable"
    package = Path(spec.origin).parent
    git = ["git", "-C", str(package)]
    commit = command_output([*git, "rev-parse", "--short", "HEAD"])
    if commit is None:
        return f"{package} (not in a git checkout)"
    changed = command_output([*git, "status", "--porcelain", "--", "."])
    return f"commit {commit}{' + uncommitted changes' if changed else ''} ({package})"


def cpu_model(unknown: str = "unknown CPU") -> str:
    """The CPU's model name from /proc/cpuinfo, else `platform.processor()`,
    else `unknown`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or unknown


def first_line(command: list[str]) -> str:
    """The first line a tool prints on stdout, e.g. its version."""
    output = command_output(command)
    return output.splitlines()[0] if output else f"{command[0]} (unknown version)"


def command_output(command: list[str]) -> str | None:
    """A helper command's stdout, stripped; None if it could not run or failed."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# --- Reports ---------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One benchmark's part of a report."""

    name: str
    #: The text report's line above the table.
    heading: str
    #: The table: a row per contender, its name first, then the report's columns.
    rows: list[list[str]]
    #: The text report's line under the table, after "target: "; None for none.
    target: str | None = None
    #: The Markdown report's target column, by the row's first cell ("" for others).
    goals: Mapping[str, str] = field(default_factory=dict)
    problems: Sequence[str] = ()
    #: Lines listed under the Markdown table, before the problems.
    notes: Sequence[str] = ()


@dataclass(frozen=True)
class Layout:
    """The columns of a report's table, after the benchmark's name."""

    #: The header, a contender's name first: what each row of a Section holds.
    columns: Sequence[str]
    #: The columns aligned right in Markdown (the text report aligns all but the first).
    numeric: Collection[str] = ()
    #: The Markdown report's last column, filled from Section.goals.
    target_title: str = "target"


def render_report(
    layout: Layout, sections: Sequence[Section], context: Context, *, markdown: bool
) -> str:
    """`markdown_report` for `--markdown`, else `text_report`."""
    report = markdown_report if markdown else text_report
    return report(layout, sections, context)


def text_report(layout: Layout, sections: Sequence[Section], context: Context) -> str:
    """The context as `key: value` lines, then per benchmark its heading, an
    aligned table under the layout's header, its target and its problems."""
    lines = [f"{key}: {value}" for key, value in context.items()]
    for section in sections:
        lines += ["", section.heading]
        lines += ["  " + line for line in aligned([list(layout.columns), *section.rows])]
        if section.target is not None:
            lines.append(f"  target: {section.target}")
        lines += [f"  PROBLEM: {problem}" for problem in section.problems]
    return "\n".join(lines)


def markdown_report(layout: Layout, sections: Sequence[Section], context: Context) -> str:
    """One Markdown table of every benchmark: a "benchmark" column, the
    layout's columns, the target column; under it the context, and each
    section's notes and problems, as a list."""
    columns, numeric = layout.columns, layout.numeric
    rule = ["---", *("---:" if column in numeric else "---" for column in columns), "---"]
    header = ["benchmark", *columns, layout.target_title]
    lines = [markdown_row(header), "|" + "|".join(rule) + "|"]
    for section in sections:
        for row in section.rows:
            lines.append(markdown_row([section.name, *row, section.goals.get(row[0], "")]))
    lines.append("")
    lines += bullets(context)
    for section in sections:
        lines += [f"- {note}" for note in section.notes]
        lines += [f"- PROBLEM in {section.name}: {problem}" for problem in section.problems]
    return "\n".join(lines)


def markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def bullets(context: Context) -> list[str]:
    """The context as a Markdown list: `- key: value`."""
    return [f"- {key}: {value}" for key, value in context.items()]


def aligned(table: list[list[str]]) -> list[str]:
    """Columns padded to line up: the first to the left, numbers to the right."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in table
    ]


def write_json(path: Path, data: object) -> None:
    """`--json`: `data` indented, in `path` (its directory made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def format_ratio(ratio: float | None) -> str:
    """`0.97x`, or `-` where there is nothing to compare."""
    return "-" if ratio is None else f"{ratio:.2f}x"


def format_bytes(size: int) -> str:
    """`1 GiB`, `64 MiB`, `64 KiB` when a whole number of them, else bytes."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"
