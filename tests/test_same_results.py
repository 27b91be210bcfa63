"""The same workload gives the same results on every keep: exit status, stdout
and stderr byte for byte, and the same files left behind (nil, process, and a
VM keep, whose tests are marked `vm`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, run_wasmkeep

Build = Callable[[str], Path]

CASES = [
    ("example", "hello", []),
    ("example", "echo", ["one", "two words", "--three"]),
    ("workload", "exit_with", ["42"]),
    ("workload", "trap", []),
    ("workload", "interleave", []),
    ("workload", "alloc", ["100"]),
]


KEEPS = ["process", pytest.param("vm", marks=pytest.mark.vm)]


@pytest.mark.parametrize("other", KEEPS)
@pytest.mark.parametrize(("source", "name", "args"), CASES, ids=str)
def test_same_output_as_on_nil(
    source: str, name: str, args: list[str], other: str, example: Build, workload: Build
) -> None:
    module = str((example if source == "example" else workload)(name))
    results = [
        run_wasmkeep(["run", "--backend", backend, "--env", "K=v", module, *args], timeout=300)
        for backend in ("nil", other)
    ]
    nil, keep = ((r.returncode, r.stdout, r.stderr) for r in results)
    assert nil == keep


@pytest.mark.parametrize("other", KEEPS)
def test_same_files_as_on_nil(example: Build, tmp_path: Path, other: str) -> None:
    reports = []
    for backend in ("nil", other):
        out = tmp_path / backend
        out.mkdir()
        result = run_wasmkeep(
            [
                "run",
                "--backend",
                backend,
                "--dir-ro",
                f"{EXAMPLES / 'wordcount' / 'texts'}::/data",
                "--dir",
                f"{out}::/out",
                str(example("wordcount")),
                "/data",
                "/out/report.txt",
            ],
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        reports.append((result.stdout, (out / "report.txt").read_bytes()))
    assert reports[0] == reports[1]
