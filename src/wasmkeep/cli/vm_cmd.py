"""`wasmkeep vm`: the VM keep's image (`vm build-image`).

The image is a kernel and an initramfs holding Python, wasmtime and wasmkeep
(`wasmkeep.host.vm.image`); `wasmkeep run --backend vm` builds it on first use,
this command builds it ahead of time, or again (``--force``), or elsewhere
(``--output``). Progress is drawn on stderr; the summary goes to stdout.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from wasmkeep.cli._errors import report_errors
from wasmkeep.printable import escaped, shown

if TYPE_CHECKING:
    import rich.progress

    from wasmkeep.host.vm.image import Progress, VmImage

__all__ = ["build_progress", "vm"]


@click.group()
def vm() -> None:
    """The VM keep: its image of kernel and initramfs."""


@vm.command("build-image")
@click.option(
    "--kernel",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The kernel to boot (default: the newest /boot/vmlinuz-*, from linux-image-amd64).",
)
@click.option(
    "--kernel-version",
    help="The kernel's version, which names its modules in /lib/modules "
    "(default: from its file name, vmlinuz-VERSION).",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Build into this directory (default: $XDG_CACHE_HOME/wasmkeep/vm/KEY, "
    "where run --backend vm looks).",
)
@click.option("--force", is_flag=True, help="Build even if an up-to-date image is there.")
@report_errors
def build_image(
    kernel: Path | None, kernel_version: str | None, output: Path | None, force: bool
) -> None:
    """Build the VM keep's image: the kernel, and an initramfs with this
    machine's Python, wasmtime and wasmkeep, reproducibly (the same inputs
    give the same bytes). An up-to-date image is left as it is."""
    from wasmkeep.host.vm.image import find_image, find_or_build_image

    started = time.monotonic()
    image = None
    if not force:
        image = find_image(output, kernel=kernel, kernel_version=kernel_version)
    built = image is None
    if image is None:
        with build_progress() as progress:
            image = find_or_build_image(
                output, kernel=kernel, kernel_version=kernel_version, force=force, progress=progress
            )
    _print_summary(image, built, time.monotonic() - started)


@contextlib.contextmanager
def build_progress() -> Iterator[Progress]:
    """A `Progress` drawn with rich on stderr, one line per step, for as long
    as the context lasts (also for `run`, when it builds the image first)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.progress import Progress as RichProgress

    display = RichProgress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True, highlight=False),
    )
    adapter = _RichSteps(display)
    with display:
        try:
            yield adapter
        finally:
            adapter.finish()


class _RichSteps:
    """The builder's steps as rich tasks: each step done when the next begins."""

    def __init__(self, display: rich.progress.Progress) -> None:
        self._display = display
        self._task: rich.progress.TaskID | None = None

    def step(self, name: str, total: int | None) -> None:
        self.finish()
        self._task = self._display.add_task(name, total=total)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._display.advance(self._task, n)

    def finish(self) -> None:
        if self._task is None:
            return
        task = next(task for task in self._display.tasks if task.id == self._task)
        done = task.total if task.total is not None else max(task.completed, 1)
        self._display.update(self._task, total=done, completed=done)
        self._display.stop_task(self._task)
        self._task = None


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


def _print_summary(image: VmImage, built: bool, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("what", style="dim", no_wrap=True)
    table.add_column("value", overflow="fold")
    packages = ", ".join(
        f"{name} {version}"
        for name, version in sorted(image.packages.items())
        if name != "wasmkeep"
    )
    rows = [
        ("image", shown(image.directory)),
        ("kernel", f"{image.kernel_version}, {_size(image.kernel_size)}"),
        ("kernel sha256", image.kernel_sha256),
        ("initrd", f"{_size(image.initrd_size)}, {image.file_count} files"),
        ("initrd sha256", image.initrd_sha256),
        ("cmdline", image.cmdline),
        (
            "runtime",
            f"Python {image.python_version}, wasmkeep {image.wasmkeep_version}, {packages}",
        ),
        ("total size", _size(image.kernel_size + image.initrd_size)),
    ]
    for name, value in rows:
        table.add_row(name, Text(escaped(value)))
    console.print(table)
    if built:
        console.print(Text(f"built in {seconds:.1f} s", style="green"))
    else:
        console.print(
            Text(f"up to date (checked in {seconds:.1f} s; --force builds it again)", style="green")
        )
