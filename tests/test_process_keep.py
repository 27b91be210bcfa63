"""The process keep's lockdown and lifecycle, observed from outside.

A keep is caught while it runs (blocked reading a stdin that never speaks)
and inspected through /proc: seccomp filtering, no_new_privs, namespaces of
its own, an empty root, no host files open. A test hook inside the keep tries
what a compromised keep would after lockdown and must be killed for it. Then
the ways a run can end: signals to wasmkeep, a keep killed mid-call, wasmkeep
itself killed: never an orphan.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import run_wasmkeep, wasmkeep_command

Build = Callable[[str], Path]
NAMESPACES = ("user", "mnt", "net", "pid", "ipc", "uts")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _alive(pid: int) -> bool:
    try:
        return _status(pid).get("State", "").split()[0] not in ("Z", "X")
    except OSError:
        return False


@dataclass
class RunningKeep:
    wasmkeep: subprocess.Popen[bytes]
    launcher: int
    keep: int
    stdin: int


@contextmanager
def running_keep(workload: Path, *extra: str) -> Iterator[RunningKeep]:
    """`wasmkeep run --backend process` of a workload blocked on a silent stdin."""
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [*wasmkeep_command(), "run", "--backend", "process", *extra, str(workload)],
        stdin=read_end,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    os.close(read_end)
    try:
        deadline = time.monotonic() + 30
        launcher = keep = 0
        while time.monotonic() < deadline:
            launchers = _children(process.pid)
            keeps = _children(launchers[0]) if launchers else []
            if keeps and _status(keeps[0]).get("Seccomp") == "2":
                launcher, keep = launchers[0], keeps[0]
                break
            time.sleep(0.02)
        assert keep, "the keep did not come up locked down"
        yield RunningKeep(process, launcher, keep, write_end)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)
        with suppress(OSError):
            os.close(write_end)


def test_the_running_keep_is_locked_down(workload: Build) -> None:
    with running_keep(workload("cat")) as running:
        for pid in (running.launcher, running.keep):
            status = _status(pid)
            assert status["Seccomp"] == "2", pid  # filter mode
            assert status["NoNewPrivs"] == "1", pid
            assert status["CapEff"] == "0000000000000000", pid
            for namespace in NAMESPACES:
                if namespace == "pid" and pid == running.launcher:
                    continue  # the launcher waits outside the keep's PID namespace
                ours = os.readlink(f"/proc/self/ns/{namespace}")
                assert os.readlink(f"/proc/{pid}/ns/{namespace}") != ours, (pid, namespace)
        keep = running.keep
        assert _status(keep)["NSpid"].split()[-1] == "1"  # PID 1 of its own namespace
        assert os.listdir(f"/proc/{keep}/root") == []  # an empty root
        for fd in os.listdir(f"/proc/{keep}/fd"):
            target = os.readlink(f"/proc/{keep}/fd/{fd}")
            assert target.startswith(("socket:", "anon_inode:", "/memfd:", "/dev/null")), target
        limits = Path(f"/proc/{keep}/limits").read_text()
        assert "Max file size             0" in limits
        os.write(running.stdin, b"still serving\n")
        os.close(running.stdin)
        stdout, _ = running.wasmkeep.communicate(timeout=30)
        assert stdout == b"still serving\n"
        assert running.wasmkeep.returncode == 0


@pytest.mark.parametrize("attempt", ["open", "socket", "exec", "fork", "write-stderr"])
def test_after_lockdown_the_keep_cannot_reach_out(workload: Build, attempt: str) -> None:
    result = run_wasmkeep(
        ["run", "--backend", "process", "--keep-test-hook", attempt, str(workload("exit_with"))]
    )
    assert result.returncode == 1
    assert b"killed by SIGSYS (it made a system call outside its seccomp allow-list)" in (
        result.stderr
    )


def test_the_test_hook_does_nothing_when_asked_nothing(workload: Build) -> None:
    result = run_wasmkeep(
        ["run", "--backend", "process", "--keep-test-hook", "none", str(workload("exit_with")), "7"]
    )
    assert result.returncode == 7


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stopping_wasmkeep_stops_the_keep(workload: Build, signum: int, status: int) -> None:
    with running_keep(workload("cat")) as running:
        running.wasmkeep.send_signal(signum)
        _, stderr = running.wasmkeep.communicate(timeout=30)
        assert running.wasmkeep.returncode == status
        assert f"stopped by {signal.Signals(signum).name}".encode() in stderr
        assert not _alive(running.launcher)
        assert not _alive(running.keep)


def test_a_keep_killed_mid_call_is_a_clear_error(workload: Build) -> None:
    with running_keep(workload("cat")) as running:
        os.kill(running.keep, signal.SIGKILL)
        _, stderr = running.wasmkeep.communicate(timeout=30)
        assert running.wasmkeep.returncode == 1
        assert b"the keep process died: killed by SIGKILL" in stderr


def test_killing_wasmkeep_leaves_no_orphan(workload: Build) -> None:
    with running_keep(workload("cat")) as running:
        running.wasmkeep.kill()  # SIGKILL: wasmkeep cannot clean up
        running.wasmkeep.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (_alive(running.keep) or _alive(running.launcher)):
            time.sleep(0.05)
        assert not _alive(running.launcher)
        assert not _alive(running.keep)


def test_cpu_time_limit(workload: Build) -> None:
    result = run_wasmkeep(
        ["run", "--backend", "process", "--cpu-time", "1", str(workload("spin"))], timeout=60
    )
    assert result.returncode == 1
    assert b"the keep process died: killed by SIGXCPU (its CPU-time limit)" in result.stderr or (
        b"killed by SIGKILL" in result.stderr
    )


def test_a_keep_that_cannot_start_says_why(tmp_path: Path, workload: Build) -> None:
    # An interpreter without wasmkeep: the keep dies before it can speak.
    env = {"PYTHONSAFEPATH": "1"}
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'no keep here' >&2\nexit 3\n")
    broken.chmod(0o755)
    script = (
        "import sys, runpy; sys.executable = sys.argv.pop(1); "
        "runpy.run_module('wasmkeep', run_name='__main__')"
    )
    result = subprocess.run(
        [
            wasmkeep_command()[0].replace("wasmkeep", "python"),
            "-c",
            script,
            str(broken),
            "run",
            "--backend",
            "process",
            str(workload("exit_with")),
        ],
        capture_output=True,
        env={**os.environ, **env},
        check=False,
    )
    assert result.returncode == 1
    assert b"the keep process ended with status 3 before reporting; it said: no keep here" in (
        result.stderr
    )
