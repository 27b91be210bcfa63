"""The public names of each module, pinned: changing them is a deliberate act."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PUBLIC = {
    "wasmkeep": ["__version__"],
    "wasmkeep.errors": [
        "EXIT_HOST_VIOLATION",
        "EXIT_TIMEOUT",
        "EXIT_TRAP",
        "EXIT_USAGE",
        "BackendUnavailable",
        "ConfigError",
        "HostProtocolViolation",
        "Interrupted",
        "KeepError",
        "WasmkeepError",
        "WorkloadError",
        "WorkloadTimedOut",
        "WorkloadTrapped",
    ],
    "wasmkeep.workload": ["Workload"],
    "wasmkeep.limits": ["DEFAULT_LIMITS", "Limits"],
    "wasmkeep.sallyport.calls": ["FDFLAGS", "HostCalls", "OFLAGS", "POLL_READ", "POLL_WRITE"],
    "wasmkeep.keep.runtime": ["PreparedRun", "RunOptions", "check_interface", "run_workload"],
    "wasmkeep.host.executor": ["Executor", "KeepHungUp", "errno_of"],
    "wasmkeep.host.setup": ["prepare_host"],
    "wasmkeep.host.platform": [
        "BACKENDS",
        "BackendReport",
        "Check",
        "ProbeResult",
        "Probes",
        "most_isolating_available",
        "platform_document",
        "probe_platform",
    ],
    "wasmkeep.config": [
        "EXAMPLE_CONFIG",
        "CaBundle",
        "Config",
        "ConnectFile",
        "DirSpec",
        "FileSpec",
        "ListenFile",
        "NullFile",
        "Protocol",
        "StderrFile",
        "StdinFile",
        "StdoutFile",
        "TlsVersion",
        "default_config",
        "load_config",
        "parse_config",
    ],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names(module: str) -> None:
    loaded = importlib.import_module(module)
    assert sorted(loaded.__all__) == sorted(PUBLIC[module])
    for name in loaded.__all__:
        assert hasattr(loaded, name), name


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    ("side", "forbidden"),
    [
        ("keep", ("wasmkeep.host",)),
        ("host", ("wasmkeep.keep",)),
        ("sallyport", ("wasmkeep.host", "wasmkeep.keep")),
    ],
)
def test_the_trust_boundary_in_imports(side: str, forbidden: tuple[str, ...]) -> None:
    """keep/ never imports host/, host/ never imports keep/, both speak sallyport/."""
    source = Path(importlib.import_module("wasmkeep").__file__ or "").parent
    for path in (source / side).rglob("*.py"):
        for name in _imports(path):
            assert not name.startswith(forbidden), f"{path} imports {name}"
