"""The VM keep's life: it starts, serves, stops, and never leaves a qemu behind.

Each test boots a real VM (TCG here: seconds each), so they are few and each
checks several things. What a VM keep computes is tested with the other keeps
(conformance, same results, network, Steward: the tests marked `vm`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import run_wasmkeep, wasmkeep_command
from tests.test_hostile_host import LyingExecutor, _manifest
from wasmkeep.errors import HostProtocolViolation
from wasmkeep.host.process_keep import ProcessKeepOptions
from wasmkeep.host.vm.image import find_or_build_image
from wasmkeep.host.vm.launch import VmKeepOptions, run_in_vm_keep
from wasmkeep.workload import Workload

pytestmark = pytest.mark.vm

Build = Callable[[str], Path]
BOOT = 300  # seconds a test waits for a keep under TCG on a busy machine


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@dataclass
class RunningVm:
    wasmkeep: subprocess.Popen[bytes]
    qemu: int
    stdin: int


@contextmanager
def running_vm(workload: Path, *extra: str) -> Iterator[RunningVm]:
    """`wasmkeep run --backend vm` of `workload`, its stdin a pipe held open,
    once its qemu runs."""
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [*wasmkeep_command(), "run", "--backend", "vm", *extra, str(workload)],
        stdin=read_end,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    os.close(read_end)
    try:
        deadline = time.monotonic() + BOOT
        qemu = 0
        while not qemu and time.monotonic() < deadline:
            found = [pid for pid in _children(process.pid) if "qemu-system" in _command(pid)]
            qemu = found[0] if found else 0
            time.sleep(0.05)
        assert qemu, "qemu did not start"
        yield RunningVm(process, qemu, write_end)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=60)
        with contextlib.suppress(OSError):
            os.close(write_end)


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_a_vm_keep_serves_stdin_and_powers_off(workload: Build) -> None:
    with running_vm(workload("cat")) as running:
        os.write(running.stdin, b"through a virtio port and back\n")
        os.close(running.stdin)
        stdout, stderr = running.wasmkeep.communicate(timeout=BOOT)
        assert running.wasmkeep.returncode == 0, stderr
        assert stdout == b"through a virtio port and back\n"
        assert _gone(running.qemu)


def test_the_wall_clock_limit_stops_a_vm_keep(workload: Build) -> None:
    with running_vm(workload("spin"), "--timeout", "2") as running:
        _, stderr = running.wasmkeep.communicate(timeout=BOOT)
        assert running.wasmkeep.returncode == 124, stderr
        assert b"wall-clock limit of 2 s" in stderr
        assert _gone(running.qemu)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130)])
def test_stopping_wasmkeep_stops_the_vm(workload: Build, signum: int, status: int) -> None:
    with running_vm(workload("cat")) as running:
        running.wasmkeep.send_signal(signum)
        _, stderr = running.wasmkeep.communicate(timeout=60)
        assert running.wasmkeep.returncode == status, stderr
        assert _gone(running.qemu)


def test_a_vm_that_dies_is_a_clear_error(workload: Build) -> None:
    with running_vm(workload("cat")) as running:
        os.kill(running.qemu, signal.SIGKILL)
        _, stderr = running.wasmkeep.communicate(timeout=60)
        assert running.wasmkeep.returncode == 1
        assert (
            b"wasmkeep: error: the VM keep stopped without reporting how the workload ended "
            b"(qemu killed by SIGKILL)"
        ) in stderr
        assert b"\x1b" not in stderr  # the console's escape sequences are not passed on


def test_killing_wasmkeep_leaves_no_qemu(workload: Build) -> None:
    with running_vm(workload("cat")) as running:
        running.wasmkeep.kill()  # SIGKILL: wasmkeep cannot clean up; PDEATHSIG does
        running.wasmkeep.wait(timeout=30)
        assert _gone(running.qemu)


def test_inside_the_vm_the_keep_is_sealed_too(workload: Build) -> None:
    """After sealing, opening a file kills the keep (seccomp), which is the
    guest's init: the kernel panics, the VM stops, and the host says so."""
    result = run_wasmkeep(
        ["run", "--backend", "vm", "--keep-test-hook", "open", str(workload("exit_with"))],
        timeout=BOOT,
    )
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        b"the VM keep stopped without reporting how the workload ended: the guest kernel "
        b"panicked: the keep (the guest's init) was killed by SIGSYS (it made a system call "
        b"outside its seccomp allow-list)"
    ), result.stderr


def test_a_vm_keep_stops_on_a_lying_host(workload: Build) -> None:
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    try:
        os.write(stdin_write, b"some input for cat\n")
        os.close(stdin_write)
        executor = LyingExecutor("long read")
        manifest = _manifest(executor, stdin_read, stdout_write)
        image = find_or_build_image()
        options = VmKeepOptions(
            keep=ProcessKeepOptions(1 << 28),
            kernel=image.kernel,
            initrd=image.initrd,
            cmdline=image.cmdline,
        )
        with pytest.raises(HostProtocolViolation, match="bytes"):
            run_in_vm_keep(Workload.from_file(workload("cat")), manifest, executor, options)
    finally:
        for fd in (stdin_read, stdout_read, stdout_write):
            os.close(fd)


def test_without_qemu_the_vm_backend_says_so(workload: Build, tmp_path: Path) -> None:
    result = run_wasmkeep(
        ["run", "--backend", "vm", str(workload("exit_with"))],
        env={"PATH": str(tmp_path)},
        timeout=BOOT,
    )
    assert result.returncode == 1, result.stderr
    assert b"the vm backend needs qemu-system-x86_64, which is not installed" in result.stderr
