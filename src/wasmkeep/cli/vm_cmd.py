"""`wasmkeep vm`: the VM keep's image (`vm build-image`) and its expected
SEV-SNP launch digest (`vm measure`).

The image is a kernel and an initramfs holding Python, wasmtime and wasmkeep
(`wasmkeep.host.vm.image`); `wasmkeep run --backend vm` builds it on first use,
this command builds it ahead of time, or again (``--force``), or elsewhere
(``--output``). Progress is drawn on stderr; the summary goes to stdout.
`vm measure` computes the MEASUREMENT an SEV-SNP launch of the image will
have (`wasmkeep.host.vm.measure`), for a Steward policy to pin.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from wasmkeep.cli._errors import report_errors
from wasmkeep.errors import ConfigError
from wasmkeep.printable import escaped, shown

if TYPE_CHECKING:
    import rich.progress

    from wasmkeep.host.vm.image import Progress, VmImage
    from wasmkeep.host.vm.measure import SnpMeasurement

__all__ = ["build_progress", "vm"]


@click.group()
def vm() -> None:
    """The VM keep: its image of kernel and initramfs, and its expected measurement."""


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


def _guest_features(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise ConfigError(
            f"--guest-features: expected a number such as 0x1, got {text!r:.40}"
        ) from None


@vm.command("measure")
@click.option(
    "--image",
    "image_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The keep image (default: the one run --backend vm uses, built if missing).",
)
@click.option(
    "--firmware",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The OVMF the guest boots, built for SEV (OvmfPkg/AmdSev); "
    "default: the first of /usr/share/ovmf/OVMF.amdsev.fd and the like.",
)
@click.option(
    "--vcpus",
    type=click.IntRange(min=1),
    default=None,
    help="vCPUs of the launch (default: the keep's, 1).",
)
@click.option(
    "--vcpu-type",
    default=None,
    metavar="MODEL",
    help="QEMU's vCPU model of the launch (default: the keep's, EPYC-v4).",
)
@click.option(
    "--guest-features",
    default=None,
    metavar="VALUE",
    help="The VMSA's SEV features (default: 0x1, SNP active, as QEMU launches).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document.")
@report_errors
def measure(
    image_dir: Path | None,
    firmware: Path | None,
    vcpus: int | None,
    vcpu_type: str | None,
    guest_features: str | None,
    as_json: bool,
) -> None:
    """Compute the SEV-SNP launch digest of the keep image (the report's
    MEASUREMENT) with sev-snp-measure, for a Steward policy to pin. It covers
    the firmware, the kernel, the initrd and the command line (through the
    firmware's kernel-hashes page) and each vCPU's initial state."""
    from wasmkeep.host.vm import confidential
    from wasmkeep.host.vm.image import VmImage, find_or_build_image
    from wasmkeep.host.vm.measure import measure_snp

    # The firmware first: the image may have to be built.
    if firmware is None:
        firmware = confidential.find_firmware("snp")
    else:
        confidential.check_firmware("snp", firmware)
    if image_dir is not None:
        image = VmImage.load(image_dir, verify=True)
    else:
        with build_progress() as progress:
            image = find_or_build_image(progress=progress)
    result = measure_snp(
        image,
        firmware,
        vcpus=confidential.SNP_VCPUS if vcpus is None else vcpus,
        vcpu_type=vcpu_type or confidential.SNP_CPU,
        guest_features=(
            confidential.SNP_GUEST_FEATURES
            if guest_features is None
            else _guest_features(guest_features)
        ),
    )
    if as_json:
        click.echo(json.dumps(result.document(), indent=2))
        return
    _print_measurement(result)


def _print_measurement(result: SnpMeasurement) -> None:
    # Plain lines, never wrapped: the digest is there to be copied.
    image = result.image
    rows = [
        ("measurement", result.hex),
        ("image", shown(image.directory)),
        ("kernel sha256", image.kernel_sha256),
        ("initrd sha256", image.initrd_sha256),
        ("cmdline", escaped(image.cmdline)),
        ("firmware", shown(result.firmware)),
        ("firmware sha256", result.firmware_sha256),
        ("vCPUs", f"{result.vcpus} x {result.vcpu_type} (signature 0x{result.vcpu_signature:x})"),
        ("guest features", f"0x{result.guest_features:x}"),
        ("computed by", result.tool),
    ]
    for name, value in rows:
        click.echo(f"{name:<16} {value}")
    click.echo(
        "\nThe SEV-SNP launch of this image has this MEASUREMENT; a Steward whose "
        "policy says\n\n"
        f'[snp]\nmeasurements = ["{result.hex}"]\n\n'
        "accepts the keep only if it was launched so."
    )


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
    try:
        yield adapter
    finally:
        adapter.finish()
        if adapter.started:
            display.stop()


class _RichSteps:
    """The builder's steps as rich tasks: each step done when the next begins.
    The display starts with the first step: nothing is drawn, not even a blank
    line, when there is nothing to build (`run` uses it on every VM run)."""

    def __init__(self, display: rich.progress.Progress) -> None:
        self._display = display
        self._task: rich.progress.TaskID | None = None
        self.started = False

    def step(self, name: str, total: int | None) -> None:
        if not self.started:
            self._display.start()
            self.started = True
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
