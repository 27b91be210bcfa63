"""`wasmkeep run`: run a workload in a keep."""

from __future__ import annotations

import contextlib
import re
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from wasmkeep.cli._errors import report_errors
from wasmkeep.errors import ConfigError, Interrupted

if TYPE_CHECKING:
    from wasmkeep.host.executor import Executor
    from wasmkeep.host.process_keep import ProcessKeepOptions
    from wasmkeep.keep.tls import KeepTls
    from wasmkeep.sallyport.types import KeepManifest
    from wasmkeep.workload import Workload

__all__ = ["exit_code", "run"]

BACKENDS = ("process", "vm", "snp", "tdx", "nil")
#: Backends that are a process keep: on its own, or inside an SEV-SNP or TDX guest.
_PROCESS_KEEPS = ("process", "snp", "tdx")
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)(i?[bB])?\s*$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """'512M', '2G', '1048576' -> bytes (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"--max-memory: expected a size like 512M or 2G, got {text!r}")
    value = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if not 64 * 1024 <= value <= 4 << 30:
        raise ConfigError(f"--max-memory: expected between 64K and 4G, got {text!r}")
    return value


def _parse_pin(text: str) -> int | None:
    if text == "auto":
        return -1
    if text == "off":
        return None
    if text.isdigit():
        return int(text)
    raise ConfigError(f"--pin-cpu: expected auto, off or a CPU number, got {text!r}")


def exit_code(status: int) -> int:
    """A guest's exit status as a process exit code: the low byte, as Unix
    keeps it, except that a failure never turns into success."""
    code = status & 0xFF
    return 1 if status and not code else code


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=None,
    help="Keep to run in; default: the most isolating one available.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Workload config (Enarx.toml format).",
)
@click.option(
    "--dir",
    "dirs",
    multiple=True,
    metavar="HOST[::GUEST]",
    help="Preopen a host directory read-write (as the guest path; default the same).",
)
@click.option(
    "--dir-ro",
    "readonly_dirs",
    multiple=True,
    metavar="HOST[::GUEST]",
    help="Preopen a host directory read-only.",
)
@click.option("--env", "env", multiple=True, metavar="K=V", help="Set a guest variable.")
@click.option(
    "--max-memory",
    default="2G",
    show_default=True,
    metavar="SIZE",
    help="Ceiling on the guest's linear memory.",
)
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), help="Wall-clock limit, seconds."
)
@click.option(
    "--cpu-time",
    type=click.IntRange(min=1),
    metavar="SECONDS",
    help="CPU-time limit of a process keep (RLIMIT_CPU).",
)
@click.option("--no-cache", is_flag=True, help="Compile the module even if a cached copy exists.")
@click.option(
    "--cert-out",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the keep's TLS certificate (PEM) here, for clients to trust.",
)
@click.option(
    "--steward",
    metavar="URL",
    help="Steward to obtain the keep's certificate from (replaces the config's `steward`).",
)
@click.option(
    "--steward-ca",
    metavar="FILE",
    help="The Steward's CA certificates, PEM (replaces the config's `steward_ca`).",
)
@click.option(
    "--pin-cpu",
    default="auto",
    show_default=True,
    metavar="auto|off|N",
    help="Run host and process keep on one CPU (they take turns): faster round trips.",
)
@click.option(
    "--vm-image",
    type=click.Path(file_okay=False),
    help="The vm backend's keep image (default: built on first use; `wasmkeep vm build-image`).",
)
@click.option(
    "--accel",
    type=click.Choice(["auto", "kvm", "tcg"]),
    default="auto",
    show_default=True,
    help="The vm backend's accelerator; auto: KVM if it can run a guest here, else TCG.",
)
@click.option(
    "--confidential",
    type=click.Choice(["auto", "snp", "tdx", "off"]),
    default="auto",
    show_default=True,
    help="Launch the vm backend's keep as an SEV-SNP or TDX guest; auto: when this host "
    "supports one (`wasmkeep platform info`), QEMU is new enough and a firmware is found.",
)
@click.option(
    "--firmware",
    type=click.Path(dir_okay=False),
    help="The measured firmware of a confidential vm keep (an OVMF built for SEV, or a TDVF).",
)
@click.option("--keep-test-hook", default="", hidden=True)
@click.argument("module")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@report_errors
def run(
    backend: str | None,
    config_path: str | None,
    dirs: tuple[str, ...],
    readonly_dirs: tuple[str, ...],
    env: tuple[str, ...],
    max_memory: str,
    timeout: float | None,
    cpu_time: int | None,
    no_cache: bool,
    cert_out: str | None,
    steward: str | None,
    steward_ca: str | None,
    pin_cpu: str,
    vm_image: str | None,
    accel: str,
    confidential: str,
    firmware: str | None,
    keep_test_hook: str,
    module: str,
    args: tuple[str, ...],
) -> None:
    """Run MODULE (a wasm32-wasip1 command) with ARGS in a keep.

    The workload's exit status becomes wasmkeep's. Without --config the
    workload gets stdin, stdout and stderr, no environment and no files.
    With a Steward (--steward or the config's `steward`) the keep obtains
    its certificate before the workload starts, or the run fails (status 1).
    --backend snp and tdx run the workload here, in a process keep, when
    wasmkeep itself runs inside an SEV-SNP or TDX guest: its evidence then
    comes from the hardware.
    """
    from wasmkeep.host.setup import prepare_host
    from wasmkeep.workload import Workload

    limit = parse_size(max_memory)
    config = None
    if config_path or env or dirs or readonly_dirs or steward or steward_ca:
        from wasmkeep.config import default_config, load_config

        config = load_config(config_path) if config_path else default_config()
        config = config.with_overrides(args=args, env=env, dirs=dirs, readonly_dirs=readonly_dirs)
        config = config.with_steward(steward, steward_ca)
        args = ()  # now part of the config
    workload = Workload.from_file(module)
    if backend in ("snp", "tdx"):
        _check_confidential_guest(backend)
    backend = backend or _default_backend()
    executor, manifest = prepare_host(
        config, module, args=args, export_fd_names=config_path is not None
    )
    if cert_out is not None:
        from pathlib import Path

        executor.certificate_path = Path(cert_out)
    try:
        with _stop_on_signals():
            if backend in (*_PROCESS_KEEPS, "vm"):
                from wasmkeep.host.process_keep import ProcessKeepOptions, run_in_process_keep

                keep_options = ProcessKeepOptions(
                    max_memory=limit,
                    timeout=timeout,
                    cpu_seconds=cpu_time,
                    test_hook=keep_test_hook,
                    pin_cpu=_parse_pin(pin_cpu),
                    backend=backend if backend in _PROCESS_KEEPS else "process",
                )
                if backend == "vm":
                    status = _run_in_vm(
                        workload,
                        manifest,
                        executor,
                        keep_options,
                        _VmChoices(vm_image, accel, confidential, firmware),
                    )
                else:
                    status = run_in_process_keep(workload, manifest, executor, keep_options)
            else:
                # nil: the keep runtime runs in this process; its host is the executor.
                from wasmkeep.keep.engine import ModuleCache
                from wasmkeep.keep.runtime import RunOptions, run_workload

                run_options = RunOptions(
                    max_memory=limit,
                    timeout=timeout,
                    cache=None if no_cache else ModuleCache.default(),
                )
                tls = _nil_tls(manifest, executor, workload)
                status = run_workload(workload, manifest, executor, run_options, tls=tls)
    finally:
        executor.close_all()
    sys.exit(exit_code(status))


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Ctrl-C and SIGTERM unwind the run (ending the keep) and exit 128 + signal."""

    def terminate(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(signal.SIGINT) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _nil_tls(manifest: KeepManifest, executor: Executor, workload: Workload) -> KeepTls | None:
    """The nil keep's TLS set-up; with a Steward, its enrolment, with the
    executor as its host (the same keep code as a process keep's)."""
    # Imported only when used: ssl, cryptography and evidence cost start-up time.
    if manifest.steward is not None:
        from wasmkeep.keep.enrol import keep_tls

        return keep_tls(manifest, executor, workload_digest=workload.digest, backend="nil")
    if not any(info.tls for info in manifest.fds):
        return None
    from wasmkeep.keep.tls import prepare_tls

    return prepare_tls(manifest)


@dataclass(frozen=True)
class _VmChoices:
    """What the command line says about the vm backend."""

    image: str | None
    accel: str
    confidential: str
    firmware: str | None


def _run_in_vm(
    workload: Workload,
    manifest: KeepManifest,
    executor: Executor,
    keep_options: ProcessKeepOptions,
    choices: _VmChoices,
) -> int:
    """The workload in a VM keep booted from the keep image (built on first
    use), confidential when this host supports it (or when asked)."""
    from pathlib import Path

    from wasmkeep.cli.vm_cmd import build_progress
    from wasmkeep.host.vm.confidential import choose_for_run
    from wasmkeep.host.vm.image import VmImage, find_or_build_image
    from wasmkeep.host.vm.launch import VmKeepOptions, require_qemu, run_in_vm_keep

    require_qemu()  # before building an image for nothing
    firmware = Path(choices.firmware) if choices.firmware else None
    chosen = choose_for_run(choices.confidential, choices.accel, firmware)
    if choices.image:
        image = VmImage.load(Path(choices.image))
    else:
        with build_progress() as progress:
            image = find_or_build_image(progress=progress)
    options = VmKeepOptions(
        keep=keep_options,
        kernel=image.kernel,
        initrd=image.initrd,
        cmdline=image.cmdline,
        accelerator=None if choices.accel == "auto" else choices.accel,
        confidential=chosen.kind,
        firmware=chosen.firmware,
    )
    return run_in_vm_keep(workload, manifest, executor, options)


def _check_confidential_guest(backend: str) -> None:
    """BackendUnavailable unless this machine is the guest `--backend` names."""
    from wasmkeep.errors import BackendUnavailable
    from wasmkeep.host.backends import confidential_guest_unsupported

    reason = confidential_guest_unsupported(backend)
    if reason is not None:
        guest = {"snp": "an SEV-SNP", "tdx": "a TDX"}[backend]
        raise BackendUnavailable(
            reason,
            hint=f"--backend {backend} runs the workload in place, inside {guest} guest; on a "
            "host that launches such guests, --backend vm makes its keep one; "
            "`wasmkeep platform info` shows what this machine offers",
        )


def _default_backend() -> str:
    """process where the kernel allows it (snp or tdx inside such a guest: the
    same keep, with hardware evidence), else nil with a warning."""
    from wasmkeep.host.backends import confidential_guest, process_keep_unsupported

    reason = process_keep_unsupported()
    if reason is None:
        return confidential_guest() or "process"
    click.echo(
        f"wasmkeep: warning: running on the nil backend, without isolation: {reason} "
        "(see `wasmkeep platform info`)",
        err=True,
    )
    return "nil"
