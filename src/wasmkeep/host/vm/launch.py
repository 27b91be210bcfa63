"""Starting a VM keep with qemu and serving it until it ends.

The host listens on a Unix socket in a private directory, starts
``qemu-system-x86_64`` with the keep image's kernel and initramfs and one
virtio-serial port, ``sallyport``, whose other end connects to that socket.
The guest has nothing else: no network, no disk, no shared file system, no
display; its console goes to a file the host shows the end of when the guest
stops without saying how. Then it is the same as a process keep: BOOT, the
keep's requests, EXIT (`host/process_keep.py`).

Machine: ``microvm`` (virtio-mmio, no PCI, no firmware to speak of), with KVM
when it can really run a guest here (probed by running one, not guessed from
/dev/kvm) and TCG emulation otherwise. qemu never outlives wasmkeep: it dies
with its parent (PR_SET_PDEATHSIG) and is killed on every way out.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from wasmkeep.errors import BackendUnavailable, KeepError
from wasmkeep.host.executor import Executor
from wasmkeep.host.process_keep import ProcessKeepOptions, exit_status, make_boot, serve_keep
from wasmkeep.host.server import KeepVanished
from wasmkeep.limits import RUNTIME_ALLOWANCE
from wasmkeep.sallyport.channel import Channel, frame_payload_limit
from wasmkeep.sallyport.types import KeepManifest
from wasmkeep.workload import Workload

__all__ = [
    "PORT_NAME",
    "QEMU",
    "VmKeepOptions",
    "choose_accelerator",
    "qemu_command",
    "run_in_vm_keep",
]

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
#: The virtio-serial port's name; the guest looks for it (keep/vm.py).
PORT_NAME = "sallyport"
#: Memory for the guest's kernel and the unpacked initramfs, beyond the keep's.
GUEST_OVERHEAD = 384 << 20
#: How long qemu has to connect, and the guest to take BOOT (TCG boots slowly).
CONNECT_TIMEOUT = 30.0
BOOT_TIMEOUT = {"kvm": 30.0, "tcg": 180.0}
#: Lines of the guest's console shown when it stops without an EXIT.
CONSOLE_TAIL = 12

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class VmKeepOptions:
    keep: ProcessKeepOptions
    kernel: Path
    initrd: Path
    cmdline: str
    #: "kvm", "tcg", or None: probe (KVM if it runs a guest here, else TCG).
    accelerator: str | None = None
    qemu: str = QEMU


def choose_accelerator(kvm: Path = Path("/dev/kvm")) -> tuple[str, str]:
    """("kvm" or "tcg", why): KVM only if it really runs a guest here."""
    from wasmkeep.host.platform._probes import probe_kvm_run_guest, probe_open_read_write

    if not kvm.exists():
        return "tcg", f"{kvm} is absent"
    opened = probe_open_read_write(kvm)
    if not opened.passed:
        return "tcg", opened.detail
    runs = probe_kvm_run_guest(kvm)
    if not runs.passed:
        return "tcg", f"KVM cannot run a guest here: {runs.detail}"
    return "kvm", "KVM runs guests here"


def qemu_command(
    options: VmKeepOptions,
    accelerator: str,
    socket_path: Path,
    console_path: Path,
    memory_mib: int,
) -> list[str]:
    """The qemu command line: a microvm with one serial console and one port."""
    cpu = "host" if accelerator == "kvm" else "max"
    return [
        options.qemu,
        *("-machine", "microvm,x-option-roms=off,rtc=off,isa-serial=on"),
        *("-accel", accelerator, "-cpu", cpu, "-smp", "1", "-m", f"{memory_mib}M"),
        *("-nodefaults", "-no-user-config", "-nographic", "-no-reboot"),
        *("-kernel", os.fspath(options.kernel), "-initrd", os.fspath(options.initrd)),
        *("-append", options.cmdline),
        *("-chardev", f"file,id=console,path={console_path}", "-serial", "chardev:console"),
        *("-chardev", f"socket,id=sallyport,path={socket_path}"),
        *("-device", "virtio-serial-device"),
        *("-device", f"virtserialport,chardev=sallyport,name={PORT_NAME}"),
    ]


def run_in_vm_keep(
    workload: Workload, manifest: KeepManifest, executor: Executor, options: VmKeepOptions
) -> int:
    """Run the workload in a new VM keep; returns its exit status."""
    if shutil.which(options.qemu) is None:
        raise BackendUnavailable(
            f"the vm backend needs {options.qemu}, which is not installed",
            hint="apt-get install qemu-system-x86",
        )
    accelerator = options.accelerator
    if accelerator is None:
        accelerator, why = choose_accelerator()
        if accelerator == "tcg":
            log.warning("vm keep: emulating the guest with TCG, slowly (%s)", why)
    memory = options.keep.max_memory + RUNTIME_ALLOWANCE + GUEST_OVERHEAD + 4 * len(workload.wasm)
    with tempfile.TemporaryDirectory(prefix="wasmkeep-vm-") as private:
        directory = Path(private)  # mode 0700: nobody else reaches the socket
        socket_path, console_path = directory / "sallyport", directory / "console"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(os.fspath(socket_path))
            listener.listen(1)
            command = qemu_command(options, accelerator, socket_path, console_path, memory >> 20)
            log.debug("vm keep: %s", " ".join(command))
            qemu = _start(command, directory / "qemu.log")
            try:
                connection = _accept(listener, qemu)
            except BaseException:
                _stop(qemu)
                raise
        finally:
            listener.close()
        channel = Channel(connection.detach(), frame_payload_limit(executor.limits))
        try:
            ending = serve_keep(
                channel,
                make_boot(workload, manifest, options.keep),
                executor,
                timeout=options.keep.timeout,
                stop=lambda: _stop(qemu),
                boot_deadline=BOOT_TIMEOUT[accelerator],
            )
        except KeepVanished:
            ending = None
        except BaseException:
            _stop(qemu)
            raise
        finally:
            channel.close()
        # The guest powers off after EXIT; a guest that does not is stopped.
        returncode = _wait(qemu, 5.0 if ending is not None else 10.0)
        if ending is None:
            raise KeepError(_death_message(returncode, directory))
    return exit_status(ending)


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _start(command: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as qemu_log:
        return subprocess.Popen(  # noqa: S603 - qemu with arguments made here
            command,
            stdin=subprocess.DEVNULL,
            stdout=qemu_log,
            stderr=qemu_log,
            # Ctrl-C reaches wasmkeep, which decides; qemu dies with wasmkeep.
            process_group=0,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl only, no locks taken
        )


def _accept(listener: socket.socket, qemu: subprocess.Popen[bytes]) -> socket.socket:
    """qemu's connection to the sallyport socket, or KeepError if it exits first."""
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while time.monotonic() < deadline:
        readable, _, _ = select.select([listener], [], [], 0.1)
        if readable:
            connection, _ = listener.accept()
            return connection
        if qemu.poll() is not None:
            raise KeepError(_qemu_failed(qemu.returncode, listener))
    raise KeepError(f"qemu did not connect to the keep's channel within {CONNECT_TIMEOUT:g} s")


def _qemu_failed(returncode: int, listener: socket.socket) -> str:
    log_path = Path(listener.getsockname()).parent / "qemu.log"
    said = _tail(log_path, 3)
    return f"qemu could not start the VM keep (status {returncode})" + (f": {said}" if said else "")


def _stop(qemu: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(qemu.pid, signal.SIGKILL)
    qemu.wait()


def _wait(qemu: subprocess.Popen[bytes], seconds: float) -> int:
    try:
        return qemu.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        _stop(qemu)
        return qemu.returncode


def _tail(path: Path, lines: int, clean: Callable[[str], str] = str.strip) -> str:
    try:
        text = path.read_bytes()[-16384:].decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [clean(line) for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def _death_message(returncode: int, directory: Path) -> str:
    text = "the VM keep stopped without reporting how the workload ended"
    if returncode < 0:
        text += f" (qemu killed by {signal.Signals(-returncode).name})"
    console = _tail(directory / "console", CONSOLE_TAIL)
    if console:
        text += f"; its console said: {console}"
    else:
        said = _tail(directory / "qemu.log", 3)
        if said:
            text += f"; qemu said: {said}"
    return text
