"""The official WASI preview1 test suite, run through `wasmkeep run` as a user would.

Each test's JSON names its arguments, environment, a directory preopened as the
guest's `/`, and the exit code and output it must give (see
`conformance/wasi-testsuite/SOURCE.md`). The directory is copied for each run
so tests never see each other's leftovers.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import run_wasmkeep

SUITE = Path(__file__).resolve().parent / "conformance" / "wasi-testsuite" / "tests"
BACKENDS = [
    "nil",
    "process",
    # A VM boot per test (about 9 s under TCG here).
    pytest.param("vm", marks=pytest.mark.vm),
]
TESTS = sorted(SUITE.glob("*/testsuite/wasm32-wasip1/*.wasm"))


def _name(module: Path) -> str:
    return f"{module.parts[-4]}/{module.stem}"


def test_the_whole_suite_is_here() -> None:
    assert len(TESTS) == 72


@pytest.mark.conformance
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("module", TESTS, ids=_name)
def test_wasi_testsuite(
    module: Path, backend: str, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    record_property("conformance_backend", backend)
    record_property("conformance_test", _name(module))
    spec_file = module.with_suffix(".json")
    spec = json.loads(spec_file.read_text()) if spec_file.exists() else {}

    args = ["run", "--backend", backend]
    if "root" in spec:
        root = tmp_path / "root"
        shutil.copytree(spec_file.parent / spec["root"], root, symlinks=True)
        for leftover in root.rglob("*.cleanup"):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        root.chmod(0o755)
        args += ["--dir", f"{root}::/"]
    for key, value in spec.get("env", {}).items():
        args += ["--env", f"{key}={value}"]
    args += [str(module), *spec.get("args", [])]

    result = run_wasmkeep(args, timeout=300 if backend == "vm" else 120)
    detail = (
        f"exit {result.returncode}\nstdout: {result.stdout[-2000:]!r}\n"
        f"stderr: {result.stderr[-2000:]!r}"
    )
    assert result.returncode == spec.get("exit_code", 0), detail
    if "stdout" in spec:
        assert result.stdout.decode() == spec["stdout"], detail
    if "stderr" in spec:
        assert result.stderr.decode() == spec["stderr"], detail
