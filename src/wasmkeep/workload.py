"""A workload: the module bytes, their digest and the checks any module passes
before anything else looks at it."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from wasmkeep.errors import WorkloadError
from wasmkeep.limits import DEFAULT_LIMITS, Limits

__all__ = ["Workload"]

_MAGIC = b"\0asm"
_CORE_VERSION = b"\x01\x00\x00\x00"
# Components share the magic; their version field is 0x0d with layer 1.
_COMPONENT_VERSION = b"\x0d\x00\x01\x00"


@dataclass(frozen=True, slots=True)
class Workload:
    """A core WebAssembly module, checked when built.

    `digest` ("sha256:<hex>") names the workload everywhere: in the compile
    cache, in evidence and in certificates.
    """

    name: str
    wasm: bytes = field(repr=False)
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        _check_module_bytes(self.name, self.wasm, DEFAULT_LIMITS)
        object.__setattr__(self, "digest", "sha256:" + hashlib.sha256(self.wasm).hexdigest())

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS) -> Workload:
        name = os.fspath(path)
        try:
            with open(name, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size > limits.max_module_size:
                    raise WorkloadError(_too_large(name, size, limits))
                # One byte more than allowed shows a file that grew while read.
                wasm = file.read(limits.max_module_size + 1)
        except FileNotFoundError:
            raise WorkloadError(f"{name}: no such file") from None
        except IsADirectoryError:
            raise WorkloadError(f"{name}: is a directory, not a module") from None
        except OSError as error:
            raise WorkloadError(f"{name}: cannot read: {error.strerror}") from None
        if len(wasm) > limits.max_module_size:
            raise WorkloadError(_too_large(name, len(wasm), limits))
        return cls(name, wasm)


def _too_large(name: str, size: int, limits: Limits) -> str:
    return f"{name}: module is {size} bytes, more than the limit of {limits.max_module_size} bytes"


def _check_module_bytes(name: str, wasm: bytes, limits: Limits) -> None:
    if len(wasm) > limits.max_module_size:
        raise WorkloadError(_too_large(name, len(wasm), limits))
    if wasm[:4] != _MAGIC:
        if wasm.lstrip()[:1] == b"(":
            raise WorkloadError(
                f"{name}: looks like WebAssembly text (.wat), not a binary module",
                hint="convert it with `wat2wasm` first",
            )
        raise WorkloadError(f"{name}: not a WebAssembly module (no \\0asm magic number)")
    version = wasm[4:8]
    if version == _COMPONENT_VERSION:
        raise WorkloadError(
            f"{name}: is a WebAssembly component, not a core module",
            hint="wasmkeep runs WASI preview1 core modules: build for wasm32-wasip1",
        )
    if version != _CORE_VERSION:
        raise WorkloadError(f"{name}: unsupported WebAssembly binary version {version.hex()}")
