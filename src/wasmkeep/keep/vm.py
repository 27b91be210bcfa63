"""The VM keep's guest side: ``/init`` of the keep image, PID 1 of the guest.

The image (`host/vm/image.py`) holds a kernel and an initramfs with Python,
wasmtime and wasmkeep, and nothing of the host's: no network device, no shared
file system, no disk. The only way in or out is one virtio-serial port named
``sallyport``, the same channel a process keep has in a socketpair. At start:

1. mount /proc, /sys and /dev (devtmpfs): the kernel's view, nothing more;
2. load the virtio modules the image lists in ``/etc/wasmkeep/modules`` (Debian's
   kernel builds them as modules), in order; then those of
   ``/etc/wasmkeep/confidential-modules`` that load (the SEV-SNP and TDX guest
   drivers refuse to outside such a guest), and mount configfs if there is one;
3. find the port named ``sallyport`` (``/sys/class/virtio-ports/*/name``) and
   open its device;
4. decide the keep's backend from what the guest kernel offers
   (:func:`guest_backend`): ``snp`` or ``tdx`` in a confidential VM, whose
   evidence then comes from the hardware or not at all, else ``vm``. The
   host does not say: it could only lie, and a plain VM claiming to be
   confidential would have no hardware evidence to show;
5. run the keep session (`keep/session.py`) with the VM platform: the
   image's own files stay (they are what was measured); sealing applies the
   same limits, Landlock and seccomp as a process keep, as defence in depth
   behind the VM boundary;
6. power the guest off, which ends qemu.

Anything that goes wrong before the channel exists is written to the console
(the host shows its tail when the VM ends without an EXIT).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import os
import secrets
import time
from pathlib import Path
from typing import NoReturn

from wasmkeep.keep.evidence import (
    SEV_GUEST_DEVICE,
    TDX_GUEST_DEVICE,
    TSM_PROVIDERS,
    TSM_REPORT_DIR,
    ConfigfsOps,
    OsConfigfs,
)
from wasmkeep.keep.session import KeepPlatform, run_keep
from wasmkeep.sallyport.channel import Channel, frame_payload_limit

__all__ = [
    "CONFIDENTIAL_MODULE_LIST",
    "MODULE_LIST",
    "PORT_NAME",
    "VM_KEEP",
    "find_port",
    "guest_backend",
    "main",
]

#: The virtio-serial port the host names for sallyport (qemu: virtserialport,name=...).
PORT_NAME = "sallyport"
#: The kernel modules to load, one image path per line, in order.
MODULE_LIST = Path("/etc/wasmkeep/modules")
#: Kernel modules of a confidential guest, loaded when they can be.
CONFIDENTIAL_MODULE_LIST = Path("/etc/wasmkeep/confidential-modules")
#: How long to wait for the port to appear once its driver is loaded.
PORT_WAIT = 10.0

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_FINIT_MODULE = 313  # x86_64
_RB_POWER_OFF = 0x4321FEDC
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _mount(source: str, target: str, kind: str, flags: int) -> None:
    os.makedirs(target, exist_ok=True)
    result = _libc.mount(source.encode(), target.encode(), kind.encode(), flags, None)
    if result != 0 and ctypes.get_errno() != errno.EBUSY:  # EBUSY: mounted already
        _check(result, f"mounting {kind} on {target}")


def _mount_kernel_filesystems() -> None:
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    _mount("sysfs", "/sys", "sysfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    _mount("devtmpfs", "/dev", "devtmpfs", _MS_NOSUID | _MS_NOEXEC)


def _load_modules(listing: Path = MODULE_LIST, *, required: bool = True) -> None:
    """Load the modules `listing` names, in order; without `required`, those
    that do not load are passed over (a guest driver outside its guest)."""
    if not listing.exists():
        return
    for line in listing.read_text().splitlines():
        path = line.strip()
        if not path:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            if required:
                raise
            continue
        try:
            result = _libc.syscall(_SYS_FINIT_MODULE, fd, b"", 0)
            # EEXIST: built in, or loaded already.
            if required and result != 0 and ctypes.get_errno() != errno.EEXIST:
                _check(result, f"loading the kernel module {path}")
        finally:
            os.close(fd)


def _mount_configfs() -> None:
    """configfs at /sys/kernel/config, where configfs-tsm lives, if the kernel has it."""
    with contextlib.suppress(OSError):
        _mount("configfs", "/sys/kernel/config", "configfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)


def guest_backend(root: Path = Path("/"), configfs: ConfigfsOps | None = None) -> str:
    """The keep's backend, "snp", "tdx" or "vm": what the guest kernel offers.

    configfs-tsm first: its provider (read from a fresh report entry, removed
    again; no report is made) names the hardware. Then the guest devices,
    /dev/sev-guest and /dev/tdx_guest. Nothing: an ordinary VM. `root` and
    `configfs` are for tests (a fake tree, a fake configfs).
    """
    report_dir = root / TSM_REPORT_DIR
    if report_dir.is_dir():
        provider = _tsm_provider(configfs or OsConfigfs(), report_dir)
        if provider is not None and provider in TSM_PROVIDERS:
            return TSM_PROVIDERS[provider]
    if (root / SEV_GUEST_DEVICE).exists():
        return "snp"
    if (root / TDX_GUEST_DEVICE).exists():
        return "tdx"
    return "vm"


def _tsm_provider(ops: ConfigfsOps, report_dir: Path) -> str | None:
    entry = report_dir / f"wasmkeep-backend-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        ops.mkdir(entry)
    except OSError:
        return None
    try:
        return ops.read(entry / "provider", 4096).decode("ascii", "replace").strip()
    except OSError:
        return None
    finally:
        with contextlib.suppress(OSError):
            ops.rmdir(entry)


def find_port(name: str = PORT_NAME, sysfs: Path = Path("/sys"), dev: Path = Path("/dev")) -> Path:
    """The device of the virtio-serial port called `name`; FileNotFoundError if none is."""
    ports = sysfs / "class" / "virtio-ports"
    if ports.is_dir():
        for port in sorted(ports.iterdir()):
            with contextlib.suppress(OSError):
                if (port / "name").read_text().strip() == name:
                    return dev / port.name
    raise FileNotFoundError(f"no virtio-serial port named {name!r}")


def _open_port(deadline: float) -> int:
    while True:
        try:
            return os.open(find_port(), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _console(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"wasmkeep keep: {text}\n".encode(errors="replace"))


def _power_off() -> NoReturn:
    os.sync()
    _libc.reboot(_RB_POWER_OFF)
    os._exit(1)  # not reached as PID 1; the kernel would panic, and qemu end


def _use_image_libraries() -> None:
    """ctypes.util.find_library asks ldconfig or a compiler, and the image has
    neither: name the libraries it holds (pyseccomp loads libseccomp so)."""
    known = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}
    original = ctypes.util.find_library
    ctypes.util.find_library = lambda name: known.get(name) or original(name)


def _seal(channel_fd: int, memory_bytes: int, cpu_seconds: int | None) -> None:
    _use_image_libraries()
    from wasmkeep.keep import lockdown

    lockdown.seal(channel_fd, memory_bytes=memory_bytes, cpu_seconds=cpu_seconds)


VM_KEEP = KeepPlatform(backend="vm", seal=_seal)


def main() -> NoReturn:
    """/init: prepare the guest, serve one workload over sallyport, power off."""
    try:
        _mount_kernel_filesystems()
        verbose = "wasmkeep.verbose" in Path("/proc/cmdline").read_text().split()
        _load_modules()
        _load_modules(CONFIDENTIAL_MODULE_LIST, required=False)
        _mount_configfs()
        fd = _open_port(time.monotonic() + PORT_WAIT)
    except OSError as error:
        _console(f"cannot reach the host: {error}")
        _power_off()
    platform = dataclasses.replace(VM_KEEP, backend=guest_backend())
    if verbose:  # `wasmkeep.verbose` on the kernel command line: milestones on the console
        _console(f"sallyport open; serving as a {platform.backend} keep")
    ending = run_keep(Channel(fd, frame_payload_limit()), platform)
    if verbose:
        _console(f"sent EXIT ({ending.outcome.name}); powering off")
    _power_off()
