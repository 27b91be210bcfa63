"""Hostile workloads against the nil keep's file system boundary.

The guest gets one preopened directory. Around it the test puts a secret file
and symbolic links that point out of it in every way; the workload tries to
read through each, guesses fds, and tries every kind of change on a read-only
preopen. Nothing may succeed, and the host files must be unchanged.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import run_wasmkeep, wasmkeep_command

Build = Callable[[str], Path]
SECRET = "TOP-SECRET-HOST-DATA"


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    (tmp_path / "secret").write_text(SECRET)
    box = tmp_path / "sandbox"
    (box / "sub").mkdir(parents=True)
    (box / "inside.txt").write_text("inside")
    os.symlink("/etc", box / "link_abs")
    os.symlink(tmp_path / "secret", box / "link_abs_file")
    os.symlink("../secret", box / "link_rel")
    os.symlink("sub/../../secret", box / "link_deep")
    os.symlink("../../../../../../../../../../secret", box / "sub" / "link_far")
    os.symlink("loop2", box / "loop1")
    os.symlink("loop1", box / "loop2")
    os.symlink("link_rel", box / "chain")
    return box


ESCAPES = [
    "/etc/passwd",
    "/proc/self/environ",
    "../secret",
    "/sandbox/../secret",
    "/sandbox/sub/../../secret",
    "/sandbox/./sub/../../../../secret",
    "/sandbox/link_abs/passwd",
    "/sandbox/link_abs_file",
    "/sandbox/link_rel",
    "/sandbox/link_deep",
    "/sandbox/sub/link_far",
    "/sandbox/chain",
    "/sandbox/loop1",
]


def test_no_path_leaves_the_preopen(workload: Build, sandbox: Path, backend: str) -> None:
    result = run_wasmkeep(
        [
            "run",
            "--backend",
            backend,
            "--dir",
            f"{sandbox}::/sandbox",
            str(workload("escape")),
            *ESCAPES,
            "/sandbox/inside.txt",
        ]
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout.decode()
    assert SECRET not in output
    assert "root:" not in output
    lines = dict(line.split(": ", 1) for line in output.splitlines() if ": " in line)
    for path in ESCAPES:
        assert lines[path].startswith("refused"), (path, lines[path])
    assert lines["/sandbox/loop1"] == "refused Symbolic link loop"
    assert lines["/sandbox/link_rel"] == "refused Capabilities insufficient"
    assert lines["/sandbox/inside.txt"] == "READ inside"


def test_host_fds_cannot_be_guessed(workload: Build, sandbox: Path, backend: str) -> None:
    # The host process holds the secret open; the guest tries every fd number.
    with (sandbox.parent / "secret").open() as secret:
        result = subprocess.run(
            [
                *wasmkeep_command(),
                "run",
                "--backend",
                backend,
                "--dir",
                f"{sandbox}::/sandbox",
                str(workload("escape")),
            ],
            capture_output=True,
            pass_fds=[secret.fileno()],
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"done\n"


CHANGES = ("create", "open for writing", "truncate on open", "mkdir", "unlink", "symlink", "rmdir")


def _mutate(
    workload: Build, tmp_path: Path, flag: str, backend: str
) -> tuple[Path, dict[str, str]]:
    """Run mutate.c on a fresh /data preopened with `flag`; its outcome per change."""
    data = tmp_path / "data"
    (data / "subdir").mkdir(parents=True)
    (data / "existing.txt").write_text("original")
    result = run_wasmkeep(
        ["run", "--backend", backend, flag, f"{data}::/data", str(workload("mutate")), "/data"]
    )
    assert result.returncode == 0, result.stderr
    return data, dict(line.split(": ", 1) for line in result.stdout.decode().splitlines())


def test_read_only_preopen_refuses_every_change(
    workload: Build, tmp_path: Path, backend: str
) -> None:
    data, outcomes = _mutate(workload, tmp_path, "--dir-ro", backend)
    for change in (*CHANGES, "rename", "link"):
        assert outcomes[change] == "refused Read-only file system", change
    assert outcomes["read"] == "ok"
    assert outcomes["content"] == "original"
    assert sorted(p.name for p in data.rglob("*")) == ["existing.txt", "subdir"]
    assert (data / "existing.txt").read_text() == "original"


def test_read_write_preopen_allows_changes(workload: Build, tmp_path: Path, backend: str) -> None:
    data, outcomes = _mutate(workload, tmp_path, "--dir", backend)
    for change in CHANGES:
        assert outcomes[change] == "ok", change
    assert (data / "new.txt").exists()
    assert (data / "newdir").is_dir()
    assert os.readlink(data / "link") == "existing.txt"
