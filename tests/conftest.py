"""Shared fixtures: the `wasmkeep` command as a user runs it, and the WASI
conformance score printed at the end of the run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(__file__).resolve().parent / "assets"


def wasmkeep_command() -> list[str]:
    """The installed `wasmkeep` entry point beside this interpreter, else `-m`."""
    script = Path(sys.executable).parent / "wasmkeep"
    if script.exists():
        return [str(script)]
    found = shutil.which("wasmkeep")
    return [found] if found else [sys.executable, "-m", "wasmkeep"]


def run_wasmkeep(
    args: Sequence[str],
    *,
    input: bytes | None = None,
    timeout: float = 120,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*wasmkeep_command(), *args],
        input=input if input is not None else b"",
        capture_output=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        check=False,
    )


CONFORMANCE_RESULTS: dict[str, dict[str, bool]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Runs in the controlling process even under xdist, so the score is whole.
    backend = dict(report.user_properties).get("conformance_backend")
    if backend is None or (report.when != "call" and report.passed):
        return
    name = str(dict(report.user_properties)["conformance_test"])
    CONFORMANCE_RESULTS.setdefault(str(backend), {})[name] = report.passed


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for backend, results in sorted(CONFORMANCE_RESULTS.items()):
        passed = sum(results.values())
        terminalreporter.write_line(
            f"WASI preview1 conformance (wasi-testsuite) on {backend}: {passed}/{len(results)}"
        )
        for name, ok in sorted(results.items()):
            if not ok:
                terminalreporter.write_line(f"  failed: {name}")


BUILD = ROOT / "build" / "wasm"
WORKLOADS = Path(__file__).resolve().parent / "workloads"
EXAMPLES = ROOT / "examples"


def build_wasm(source: Path, *extra_flags: str) -> Path:
    """Compile C to wasm32-wasi with Debian's clang, cached by source and flags.

    Safe under pytest-xdist: each build goes to a private name, then is renamed.
    """
    import hashlib

    flags = ["--target=wasm32-wasi", "-O2", "-Wall", "-Wextra", "-Werror", *extra_flags]
    key = hashlib.sha256(source.read_bytes() + " ".join(flags).encode()).hexdigest()[:12]
    output = BUILD / f"{source.stem}-{key}.wasm"
    if not output.exists():
        BUILD.mkdir(parents=True, exist_ok=True)
        partial = output.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(["clang", *flags, str(source), "-o", str(partial)], check=True)
        partial.replace(output)
    return output


@pytest.fixture(scope="session")
def workload() -> Callable[[str], Path]:
    """Build a test workload from tests/workloads/NAME.c."""
    return lambda name: build_wasm(WORKLOADS / f"{name}.c")


@pytest.fixture(scope="session")
def example() -> Callable[[str], Path]:
    """Build an example from examples/NAME/NAME.c."""
    return lambda name: build_wasm(EXAMPLES / name / f"{name}.c")


@pytest.fixture(params=["nil", "process"])
def backend(request: pytest.FixtureRequest) -> str:
    """The keeps every behaviour is tested on: they must agree."""
    return str(request.param)


#: For the tests that also run in a VM keep (a boot each, seconds under TCG):
#: `@ON_EVERY_KEEP` replaces the `backend` fixture's nil and process.
ON_EVERY_KEEP = pytest.mark.parametrize(
    "backend", ["nil", "process", pytest.param("vm", marks=pytest.mark.vm)]
)
