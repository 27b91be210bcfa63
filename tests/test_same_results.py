"""The same workload gives the same results on every keep: exit status, stdout
and stderr byte for byte, and the same files left behind."""

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


@pytest.mark.parametrize(("source", "name", "args"), CASES, ids=str)
def test_same_output_on_nil_and_process(
    source: str, name: str, args: list[str], example: Build, workload: Build
) -> None:
    module = str((example if source == "example" else workload)(name))
    results = [
        run_wasmkeep(["run", "--backend", backend, "--env", "K=v", module, *args])
        for backend in ("nil", "process")
    ]
    nil, process = ((r.returncode, r.stdout, r.stderr) for r in results)
    assert nil == process


def test_same_files_on_nil_and_process(example: Build, tmp_path: Path) -> None:
    reports = []
    for backend in ("nil", "process"):
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
            ]
        )
        assert result.returncode == 0, result.stderr
        reports.append((result.stdout, (out / "report.txt").read_bytes()))
    assert reports[0] == reports[1]
