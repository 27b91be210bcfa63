"""The probes that talk to the kernel, behind one replaceable table.

Each probe asks the kernel for real: a syscall, an ioctl, a child process that
tries the thing. Probes that change process state (unshare, no_new_privs, a KVM
guest) run in a child process (`_child.py`), never in the caller. Tests replace
any of them through :class:`Probes`; paths under `/sys`, `/dev` and `/proc` are
passed in, so the same probes can run against a fake tree.

A probe reports what it found as a :class:`ProbeResult`; it may raise OSError,
which the caller turns into a failed check naming the errno.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ProbeResult",
    "Probes",
    "errno_text",
    "probe_kvm_api_version",
    "probe_kvm_run_guest",
    "probe_landlock",
    "probe_no_new_privs",
    "probe_open_read_write",
    "probe_qemu_version",
    "probe_seccomp",
    "probe_user_namespaces",
    "read_tsm_provider",
]

#: Seconds a probe's child process (or `qemu --version`) may take before it is killed.
CHILD_TIMEOUT = 3.0
#: Bytes read from a child's output, a sysfs or configfs attribute.
MAX_ATTRIBUTE_BYTES = 4096

_CHILD_SCRIPT = Path(__file__).with_name("_child.py")

# Syscall numbers glibc may not wrap, per architecture (asm/unistd_64.h; new
# syscalls such as landlock_create_ruleset share one number on every architecture).
_SYSCALLS = {
    "x86_64": {"seccomp": 317, "landlock_create_ruleset": 444},
    "aarch64": {"seccomp": 277, "landlock_create_ruleset": 444},
}

PR_GET_SECCOMP = 21
SECCOMP_GET_ACTION_AVAIL = 2
# The filter actions a process keep's allow-list needs (linux/seccomp.h).
_SECCOMP_ACTIONS = {
    "kill_process": 0x80000000,
    "errno": 0x00050000,
    "allow": 0x7FFF0000,
}
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12


@dataclass(frozen=True)
class ProbeResult:
    """What a probe found: whether the feature works here, and why (one line)."""

    passed: bool
    detail: str


def errno_text(error: OSError) -> str:
    """An OSError as one line: `EACCES (Permission denied): /dev/kvm`."""
    number = error.errno
    if number is None:
        return str(error)
    text = f"{errno.errorcode.get(number, f'errno {number}')} ({os.strerror(number)})"
    if error.filename is not None:
        text += f": {os.fsdecode(error.filename)}"
    return text


def _machine() -> str:
    return os.uname().machine


def _syscall_number(name: str) -> int | None:
    return _SYSCALLS.get(_machine(), {}).get(name)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def probe_seccomp() -> ProbeResult:
    """Seccomp filter mode, and the filter actions a process keep needs.

    Both questions leave the process as it was: PR_GET_SECCOMP reads the mode,
    SECCOMP_GET_ACTION_AVAIL (Linux 4.14) asks whether an action is supported.
    """
    libc = _libc()
    zero = ctypes.c_ulong(0)
    mode = libc.prctl(PR_GET_SECCOMP, zero, zero, zero, zero)
    if mode == -1:
        number = ctypes.get_errno()
        if number == errno.EINVAL:
            return ProbeResult(False, "the kernel has no seccomp (CONFIG_SECCOMP)")
        raise OSError(number, os.strerror(number))
    number_of_seccomp = _syscall_number("seccomp")
    if number_of_seccomp is None:
        return ProbeResult(False, f"no seccomp syscall number known for {_machine()}")
    missing = []
    for name, action in _SECCOMP_ACTIONS.items():
        value = ctypes.c_uint32(action)
        result = libc.syscall(
            ctypes.c_long(number_of_seccomp),
            ctypes.c_ulong(SECCOMP_GET_ACTION_AVAIL),
            zero,
            ctypes.byref(value),
        )
        if result == 0:
            continue
        number = ctypes.get_errno()
        if number != errno.EOPNOTSUPP:
            raise OSError(number, f"seccomp(SECCOMP_GET_ACTION_AVAIL): {os.strerror(number)}")
        missing.append(name)
    if missing:
        return ProbeResult(False, f"filter actions not supported: {', '.join(missing)}")
    state = "this process is already filtered" if mode == 2 else "this process is unfiltered"
    return ProbeResult(True, f"filter mode with actions {', '.join(_SECCOMP_ACTIONS)}; {state}")


def probe_landlock() -> ProbeResult:
    """The Landlock ABI version, asked with landlock_create_ruleset (no ruleset made)."""
    number = _syscall_number("landlock_create_ruleset")
    if number is None:
        return ProbeResult(False, f"no Landlock syscall number known for {_machine()}")
    abi = _libc().syscall(
        ctypes.c_long(number),
        None,
        ctypes.c_size_t(0),
        ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION),
    )
    if abi >= 1:
        return ProbeResult(True, f"ABI version {abi}")
    error = ctypes.get_errno()
    if error == errno.ENOSYS:
        return ProbeResult(False, "the kernel has no Landlock (CONFIG_SECURITY_LANDLOCK)")
    if error == errno.EOPNOTSUPP:
        return ProbeResult(False, "Landlock is built in but disabled: add it to lsm= at boot")
    raise OSError(error, f"landlock_create_ruleset: {os.strerror(error)}")


def run_child_probe(name: str, *args: str, timeout: float = CHILD_TIMEOUT) -> ProbeResult:
    """Run one probe of `_child.py` in a fresh interpreter and read its verdict."""
    if not sys.executable:
        return ProbeResult(False, "not tried: no Python interpreter to run the probe in")
    # -I -S: no environment variables, user site or site-packages reach the child.
    command = [sys.executable, "-I", "-S", str(_CHILD_SCRIPT), name, *args]
    try:
        completed = subprocess.run(  # noqa: S603 - our interpreter and our script
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"the probe did not finish within {timeout:g} s")
    if completed.returncode == -signal.SIGALRM:
        return ProbeResult(False, "the probe ran out of time (its alarm went off)")
    if completed.returncode < 0:
        signal_name = _signal_name(-completed.returncode)
        return ProbeResult(False, f"the probe process was killed by {signal_name}")
    output = completed.stdout[:MAX_ATTRIBUTE_BYTES].decode("utf-8", "replace").strip()
    try:
        verdict = json.loads(output.splitlines()[-1])
        passed, detail = verdict["passed"], verdict["detail"]
    except (IndexError, ValueError, KeyError, TypeError):
        passed, detail = None, None
    if not isinstance(passed, bool) or not isinstance(detail, str):
        stderr = completed.stderr[-MAX_ATTRIBUTE_BYTES:].decode("utf-8", "replace").strip()
        last = stderr.splitlines()[-1] if stderr else "no output"
        return ProbeResult(False, f"the probe process failed ({completed.returncode}): {last}")
    return ProbeResult(passed, _one_line(detail))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def probe_user_namespaces() -> ProbeResult:
    """Whether a child can unshare user, mount, pid, net and ipc namespaces."""
    return run_child_probe("user-namespaces")


def probe_no_new_privs() -> ProbeResult:
    """Whether a child can set no_new_privs (needed to install seccomp unprivileged)."""
    return run_child_probe("no-new-privs")


def probe_open_read_write(device: Path) -> ProbeResult:
    """Whether this user can open `device` read-write (KVM needs it)."""
    try:
        descriptor = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except PermissionError as error:
        return ProbeResult(False, f"{errno_text(error)}; is this user in the kvm group?")
    os.close(descriptor)
    return ProbeResult(True, "opened read-write")


def probe_kvm_api_version(device: Path) -> ProbeResult:
    """KVM_GET_API_VERSION, which has been 12 since Linux 2.6.22."""
    descriptor = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    try:
        version = fcntl.ioctl(descriptor, KVM_GET_API_VERSION)
    finally:
        os.close(descriptor)
    if version != KVM_API_VERSION:
        return ProbeResult(False, f"API version {version}, expected {KVM_API_VERSION}")
    return ProbeResult(True, f"API version {version}")


def probe_kvm_run_guest(device: Path) -> ProbeResult:
    """Whether KVM can run a guest that does what boot loaders do (see `_child.py`)."""
    if _machine() != "x86_64":
        return ProbeResult(False, f"not tried: the guest is x86_64 code, this is {_machine()}")
    return run_child_probe("kvm-run", os.fspath(device))


def probe_qemu_version(executable: str) -> ProbeResult:
    """The first line of `qemu-system-x86_64 --version`: proof that it runs."""
    try:
        completed = subprocess.run(  # noqa: S603 - the executable found on PATH, no shell
            [executable, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ProbeResult(
            False, f"{executable} --version did not finish within {CHILD_TIMEOUT:g} s"
        )
    lines = completed.stdout[:MAX_ATTRIBUTE_BYTES].decode("utf-8", "replace").splitlines()
    first = _one_line(lines[0]) if lines else ""
    if completed.returncode != 0 or not first:
        return ProbeResult(False, f"{executable} --version failed (exit {completed.returncode})")
    return ProbeResult(True, f"{executable}: {first}")


def read_tsm_provider(
    report_root: Path,
    *,
    mkdir: Callable[[Path], None] = os.mkdir,
    rmdir: Callable[[Path], None] = os.rmdir,
) -> str:
    """The configfs-tsm report provider, e.g. "sev_guest" or "tdx_guest".

    The kernel creates a report entry's attributes when the entry's directory is
    made (Documentation/ABI/testing/configfs-tsm), so the only way to ask is to
    make one, read its `provider`, and remove it again. No report is generated:
    that happens only when `outblob` is read. `mkdir` and `rmdir` are replaceable
    because a plain directory does not grow attributes.
    """
    entry = report_root / f"wasmkeep-probe-{os.getpid()}-{secrets.token_hex(4)}"
    mkdir(entry)
    try:
        with (entry / "provider").open("rb") as attribute:
            raw = attribute.read(MAX_ATTRIBUTE_BYTES)
    finally:
        rmdir(entry)
    return _one_line(raw.decode("utf-8", "replace"))


def _which(name: str) -> str | None:
    return shutil.which(name)


@dataclass(frozen=True)
class Probes:
    """The kernel-facing probes `probe_platform` uses; replace any in tests."""

    seccomp: Callable[[], ProbeResult] = probe_seccomp
    landlock: Callable[[], ProbeResult] = probe_landlock
    user_namespaces: Callable[[], ProbeResult] = probe_user_namespaces
    no_new_privs: Callable[[], ProbeResult] = probe_no_new_privs
    #: Finds an executable by name, as `shutil.which` does on PATH.
    find_executable: Callable[[str], str | None] = _which
    qemu_version: Callable[[str], ProbeResult] = probe_qemu_version
    open_read_write: Callable[[Path], ProbeResult] = probe_open_read_write
    kvm_api_version: Callable[[Path], ProbeResult] = probe_kvm_api_version
    kvm_run_guest: Callable[[Path], ProbeResult] = probe_kvm_run_guest
    #: Given the configfs-tsm report directory, returns the provider's name.
    tsm_provider: Callable[[Path], str] = read_tsm_provider
