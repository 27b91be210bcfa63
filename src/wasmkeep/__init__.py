"""wasmkeep: run WebAssembly (WASI preview1) workloads in keeps that do not trust their host."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
