"""Starting a VM keep with qemu and serving it until it ends.

The host listens on a Unix socket in a private directory, starts
``qemu-system-x86_64`` with the keep image's kernel and initramfs and one
virtio-serial port, ``sallyport``, whose other end connects to that socket.
The guest has nothing else: no network, no disk, no shared file system, no
display; its console goes to a file the host shows the end of when the guest
stops without saying how. Then it is the same as a process keep: BOOT, the
keep's requests, EXIT (`host/process_keep.py`).

Machine: ``q35`` without SATA, SMBus, USB, graphics or vmport
(`PLAIN_MACHINE`), the port on virtio-serial-pci, with KVM when it can really
run a guest here (probed by running one, not guessed from /dev/kvm) and TCG
emulation otherwise. A confidential keep (SEV-SNP or TDX,
`VmKeepOptions.confidential`) is a ``q35`` machine with KVM and a measured
firmware instead (`host/vm/confidential.py`). qemu never outlives wasmkeep: it
dies with its parent (PR_SET_PDEATHSIG) and is killed on every way out.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import fcntl
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import termios
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from wasmkeep.errors import BackendUnavailable, KeepError
from wasmkeep.host.executor import Executor
from wasmkeep.host.process_keep import ProcessKeepOptions, exit_status, make_boot, serve_keep
from wasmkeep.host.server import KeepVanished
from wasmkeep.host.vm.confidential import (
    SERIAL_DEVICE,
    SevBits,
    confidential_args,
    find_firmware,
    probe_sev_bits,
)
from wasmkeep.limits import RUNTIME_ALLOWANCE
from wasmkeep.sallyport.channel import Channel, frame_payload_limit
from wasmkeep.sallyport.types import KeepManifest
from wasmkeep.workload import Workload

__all__ = [
    "PLAIN_MACHINE",
    "PORT_NAME",
    "QEMU",
    "VmKeepOptions",
    "choose_accelerator",
    "qemu_command",
    "require_qemu",
    "run_in_vm_keep",
]

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
#: The virtio-serial port's name; the guest looks for it (keep/vm.py).
PORT_NAME = "sallyport"
#: Memory for the guest's kernel and the unpacked initramfs, beyond the keep's.
GUEST_OVERHEAD = 384 << 20
#: More for a confidential guest: the firmware, and the bounce buffers (SWIOTLB)
#: every virtio transfer goes through, since the host cannot read private memory.
CONFIDENTIAL_OVERHEAD = 128 << 20
#: How long qemu has to connect, and the guest to take BOOT (TCG boots slowly).
CONNECT_TIMEOUT = 30.0
BOOT_TIMEOUT = {"kvm": 30.0, "tcg": 180.0}
#: Lines of the guest's console shown when it stops without an EXIT.
CONSOLE_TAIL = 12

_PR_SET_PDEATHSIG = 1
_ESCAPES = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|[@-~])")
_PANIC = re.compile(r"Kernel panic - not syncing: ([^\n]*)")
_INIT_KILLED = re.compile(r"Attempted to kill init! exitcode=0x([0-9a-fA-F]+)")
_SIGNALS = frozenset(int(number) for number in signal.Signals)

#: The ordinary VM keep's machine: q35 without what the keep does not use.
#: Not microvm: with neither HPET nor an ACPI PM timer there, a guest whose
#: PIT calibration fails (an emulated CPU on a busy host) hung at boot; and
#: q35 reached /init sooner under TCG here (5.3 s against 7.5 s).
PLAIN_MACHINE = "q35,sata=off,smbus=off,usb=off,graphics=off,vmport=off"


@dataclass(frozen=True, slots=True)
class VmKeepOptions:
    keep: ProcessKeepOptions
    kernel: Path
    initrd: Path
    cmdline: str
    #: "kvm", "tcg", or None: probe (KVM if it runs a guest here, else TCG).
    accelerator: str | None = None
    qemu: str = QEMU
    #: "snp", "tdx", or None: an ordinary VM. A confidential VM needs KVM.
    confidential: str | None = None
    #: The measured firmware of a confidential VM (None: the first one found).
    firmware: Path | None = None


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
    sev_bits: SevBits | None = None,
) -> list[str]:
    """The qemu command line: a stripped q35 machine (confidential: with its
    measured firmware) with one serial console and one port."""
    if options.confidential is None:
        cpu = "host" if accelerator == "kvm" else "max"
        machine = [*("-machine", PLAIN_MACHINE), *("-accel", accelerator, "-cpu", cpu)]
        serial = "virtio-serial-pci"
    else:
        if options.firmware is None:
            raise ValueError("a confidential VM needs its firmware")
        machine = [
            *("-accel", "kvm"),
            *confidential_args(options.confidential, options.firmware, sev_bits),
        ]
        serial = SERIAL_DEVICE
    return [
        options.qemu,
        *machine,
        *("-smp", "1", "-m", f"{memory_mib}M"),
        *("-nodefaults", "-no-user-config", "-nographic", "-no-reboot"),
        *("-kernel", os.fspath(options.kernel), "-initrd", os.fspath(options.initrd)),
        *("-append", options.cmdline),
        *("-chardev", f"file,id=console,path={console_path}", "-serial", "chardev:console"),
        *("-chardev", f"socket,id=sallyport,path={socket_path}"),
        *("-device", serial),
        *("-device", f"virtserialport,chardev=sallyport,name={PORT_NAME}"),
    ]


def run_in_vm_keep(
    workload: Workload, manifest: KeepManifest, executor: Executor, options: VmKeepOptions
) -> int:
    """Run the workload in a new VM keep; returns its exit status."""
    require_qemu(options.qemu)
    accelerator = options.accelerator
    sev_bits = None
    if options.confidential is not None:
        # The platform probes chose it (`confidential.choose_confidential`),
        # KVM running guests included: no emulator can run one.
        if accelerator not in (None, "kvm"):
            raise BackendUnavailable(
                f"a confidential VM keep needs KVM, not {accelerator}",
                hint="use --accel auto or kvm, or --confidential off",
            )
        accelerator = "kvm"
        if options.firmware is None:
            options = replace(options, firmware=find_firmware(options.confidential))
        if options.confidential == "snp":
            sev_bits = probe_sev_bits()
    if accelerator is None:
        accelerator, why = choose_accelerator()
        # Not a warning: the workload's stderr must be the same on every keep.
        # `platform info` says it, and -v shows it.
        log.info("vm keep: %s, so %s", why, "KVM" if accelerator == "kvm" else "TCG (slow)")
    memory = options.keep.max_memory + RUNTIME_ALLOWANCE + GUEST_OVERHEAD + 4 * len(workload.wasm)
    if options.confidential is not None:
        memory += CONFIDENTIAL_OVERHEAD
    with tempfile.TemporaryDirectory(prefix="wasmkeep-vm-") as private:
        directory = Path(private)  # mode 0700: nobody else reaches the socket
        socket_path, console_path = directory / "sallyport", directory / "console"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(os.fspath(socket_path))
            listener.listen(1)
            command = qemu_command(
                options, accelerator, socket_path, console_path, memory >> 20, sev_bits
            )
            log.debug("vm keep: %s", " ".join(command))
            started = time.monotonic()
            qemu = _start(command, directory / "qemu.log")
            try:
                connection = _accept(listener, qemu)
            except BaseException:
                _stop(qemu)
                raise
            # Phases from qemu's start, for benchmarks/vm.py (it parses these lines).
            log.debug("vm keep: qemu connected after %.2f s", time.monotonic() - started)
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
                until_taken=lambda: _drained(channel.fd, qemu, started),
            )
            log.debug("vm keep: EXIT after %.2f s", time.monotonic() - started)
        except KeepVanished:
            ending = None
        except BaseException:
            _stop(qemu)
            raise
        finally:
            channel.close()
            if log.isEnabledFor(logging.DEBUG):
                log.debug("vm keep: its console: %s", _tail(console_path, 40))
        # The guest powers off after EXIT; a guest that does not is stopped.
        returncode = _wait(qemu, 5.0 if ending is not None else 10.0)
        if ending is None:
            raise KeepError(_death_message(returncode, directory))
    return exit_status(ending)


def _drained(fd: int, qemu: subprocess.Popen[bytes], started: float) -> None:
    """Return once qemu has read everything sent on `fd`. qemu reads from the
    socket only as the guest takes bytes from its port, so this is when the
    guest has booted and read BOOT (or qemu has ended: the channel says so).
    `started`: when qemu was started (time.monotonic), for the debug log."""
    unread = array.array("i", [0])
    while qemu.poll() is None:
        fcntl.ioctl(fd, termios.TIOCOUTQ, unread)  # SIOCOUTQ: bytes the peer has not read
        if unread[0] == 0:
            log.debug("vm keep: the guest took BOOT after %.2f s", time.monotonic() - started)
            return
        time.sleep(0.02)


def require_qemu(qemu: str = QEMU) -> None:
    """BackendUnavailable unless `qemu` is installed."""
    if shutil.which(qemu) is None:
        raise BackendUnavailable(
            f"the vm backend needs {qemu}, which is not installed",
            hint="apt-get install qemu-system-x86",
        )


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


def _clean(line: str) -> str:
    """A console line without escape sequences or other control characters."""
    line = _ESCAPES.sub("", line)
    return "".join(char for char in line if char.isprintable()).strip()


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_bytes()[-16384:].decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [cleaned for cleaned in map(_clean, text.splitlines()) if cleaned]
    return " | ".join(kept[-lines:])


def _panic(path: Path) -> str | None:
    """What a guest kernel panic says of itself, if the console shows one."""
    try:
        text = path.read_bytes()[-65536:].decode("utf-8", "replace")
    except OSError:
        return None
    found = _PANIC.search(text)
    if found is None:
        return None
    reason = _clean(found.group(1))
    killed = _INIT_KILLED.search(reason)
    if killed is not None:
        number = int(killed.group(1), 16) & 0x7F
        name = signal.Signals(number).name if number in _SIGNALS else f"signal {number}"
        reason = f"the keep (the guest's init) was killed by {name}"
        if number == signal.SIGSYS:
            reason += " (it made a system call outside its seccomp allow-list)"
    return reason


def _death_message(returncode: int, directory: Path) -> str:
    text = "the VM keep stopped without reporting how the workload ended"
    if returncode < 0:
        text += f" (qemu killed by {signal.Signals(-returncode).name})"
    panic = _panic(directory / "console")
    if panic is not None:
        return f"{text}: the guest kernel panicked: {panic}"
    console = _tail(directory / "console", CONSOLE_TAIL)
    if console:
        text += f"; its console said: {console}"
    else:
        said = _tail(directory / "qemu.log", 3)
        if said:
            text += f"; qemu said: {said}"
    return text
