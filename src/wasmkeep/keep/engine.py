"""The Wasm engine inside the keep: wasmtime, bound for speed and for control.

Three things here go below wasmtime-py's public API, through its ctypes
bindings (`wasmtime._ffi`), which is why wasmtime is pinned:

* Host functions are defined with `wasmtime_linker_define_func_unchecked`. The
  public path converts every argument through `Val` objects and costs ~7 us a
  call here; the unchecked path hands us the raw argument slots (~0.5 us). The
  WASI call is the hot path of every I/O-bound workload (DESIGN.md), so each
  import gets a small generated trampoline that reads its arguments straight
  from the slots and writes the errno back.
* The epoch deadline callback (`wasmtime_store_epoch_deadline_callback`) lets
  the keep run code on the guest's own thread every engine tick, to enforce
  the wall-clock limit.
* Linear memory is configured never to move (`memory_may_move = False` over
  the default 4 GiB reservation), so the keep can keep one view of it
  (`wasi/memory.py`).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import wasmtime
from wasmtime import _ffi as ffi

from wasmkeep.errors import WorkloadError
from wasmkeep.keep.wasi.preview1 import IMPORT_MODULE, KEEP_LOCAL, SIGNATURES, Preview1
from wasmkeep.sallyport.types import HostError

__all__ = [
    "EngineSettings",
    "ModuleCache",
    "Ticker",
    "bind_preview1",
    "compile_module",
    "install_epoch_callback",
    "make_engine",
]

log = logging.getLogger(__name__)

#: How often the engine's epoch advances; the resolution of timeouts and output flushes.
TICK_SECONDS = 0.01


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Engine configuration; part of the compile-cache key."""

    opt_level: str = "speed"
    #: Native stack the guest may use (wasmtime's default is 512 KiB).
    max_wasm_stack: int = 512 * 1024
    #: Compile in epoch checks, which the wall-clock limit needs. They cost
    #: ~4% of compute here, so code runs without them when there is no limit.
    epoch_interruption: bool = False
    #: Compile functions on several threads. A process keep compiles on one:
    #: threads made before lockdown would escape its per-thread sandbox.
    parallel_compilation: bool = True

    def fingerprint(self) -> str:
        """A short name for the settings that make compiled code differ.

        The wasmtime version and CPU are not in it: wasmtime refuses to load
        code compiled by another version or for another CPU, and the cache then
        compiles again.
        """
        epoch = "epoch" if self.epoch_interruption else "no-epoch"
        text = f"{self.opt_level}|{epoch}|stack={self.max_wasm_stack}|static-memory"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_engine(settings: EngineSettings) -> wasmtime.Engine:
    config = wasmtime.Config()
    config.epoch_interruption = settings.epoch_interruption
    config.cranelift_opt_level = settings.opt_level
    config.max_wasm_stack = settings.max_wasm_stack
    # One view of memory for the whole run: memory never moves (module docstring).
    config.memory_may_move = False
    config.parallel_compilation = settings.parallel_compilation
    return wasmtime.Engine(config)


def compile_module(engine: wasmtime.Engine, wasm: bytes) -> wasmtime.Module:
    """Compile a module, with wasmtime's validation errors as WorkloadError."""
    try:
        return wasmtime.Module(engine, wasm)
    except wasmtime.WasmtimeError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "invalid"
        raise WorkloadError(f"the module does not validate: {first_line}") from None


class ModuleCache:
    """Compiled modules on disk, keyed by module digest and engine fingerprint.

    A cached file is native code that will run: the directory is private to the
    user (0700) and files are written atomically, so a half-written or foreign
    file is never loaded. wasmtime checks on load that the file was compiled by
    the same wasmtime for this CPU; if it was not, the module is recompiled.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def default(cls) -> ModuleCache:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        return cls(Path(base) / "wasmkeep" / "modules")

    def path_for(self, digest: str, settings: EngineSettings) -> Path:
        return self.directory / f"{digest}-{settings.fingerprint()}.cwasm"

    def load(
        self, engine: wasmtime.Engine, settings: EngineSettings, digest: str, wasm: bytes
    ) -> tuple[wasmtime.Module, bool]:
        """The compiled module and whether it came from the cache."""
        path = self.path_for(digest, settings)
        if path.is_file():
            try:
                return wasmtime.Module.deserialize_file(engine, str(path)), True
            except wasmtime.WasmtimeError as error:
                log.info("recompiling: cached %s unusable (%s)", path.name, error)
        module = compile_module(engine, wasm)
        self._store(path, module)
        return module, False

    def _store(self, path: Path, module: wasmtime.Module) -> None:
        import tempfile  # only on a cache miss: it costs start-up time otherwise

        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            data = module.serialize()
            fd, temporary = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                os.replace(temporary, path)
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError as error:
            # A read-only or full cache costs speed, never correctness.
            log.info("compile cache not written: %s", error)


# -- host functions through the unchecked path --------------------------------

_UNCHECKED_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.c_size_t,
)
_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
# A function pointer of our own, so its argtypes can name our callback type.
_define_unchecked = ffi.dll["wasmtime_linker_define_func_unchecked"]
_define_unchecked.restype = ctypes.c_void_p
_define_unchecked.argtypes = [
    ctypes.c_void_p,
    ctypes.c_char_p,
    ctypes.c_size_t,
    ctypes.c_char_p,
    ctypes.c_size_t,
    ctypes.c_void_p,
    _UNCHECKED_CALLBACK,
    ctypes.c_void_p,
    _FINALIZER,
]
_NO_FINALIZER = _FINALIZER(lambda _: None)

_TRAMPOLINE = """
def trampoline(env, caller, raw, count):
    try:
        {flush}
        {result}function({arguments})
        return 0
    except HostError as error:
        raw[0] = error.errno
        return 0
    except BaseException as error:
        return fail(error)
"""


def _make_trampoline(
    function: Callable[..., int],
    params: tuple[str, ...],
    *,
    returns: bool,
    flush: Callable[[], None] | None,
    pending: bytearray,
    fail: Callable[[BaseException], int],
) -> Callable[..., int]:
    """Generate straight-line code that unpacks this signature's raw slots.

    Each slot is 16 bytes (`wasmtime_val_raw_t`); through a uint64 pointer,
    argument i is `raw[2 * i]`, with i32 values in its low 32 bits.
    """
    arguments = ", ".join(
        f"raw[{2 * index}] & 0xFFFFFFFF" if kind == "i32" else f"raw[{2 * index}]"
        for index, kind in enumerate(params)
    )
    source = _TRAMPOLINE.format(
        flush="if pending: flush()" if flush is not None else "pass",
        result="raw[0] = " if returns else "",
        arguments=arguments,
    )
    namespace: dict[str, object] = {
        "function": function,
        "flush": flush,
        "pending": pending,
        "fail": fail,
        "HostError": HostError,
    }
    exec(compile(source, f"<wasi trampoline {function.__name__}>", "exec"), namespace)  # noqa: S102
    trampoline = namespace["trampoline"]
    assert callable(trampoline)
    return trampoline


def bind_preview1(
    linker: wasmtime.Linker, wasi: Preview1, fail: Callable[[BaseException], int]
) -> list[object]:
    """Define every WASI function in `linker`; returns what must stay alive with it.

    `fail` receives any exception other than an errno (proc_exit, a host
    protocol violation, a bug) and returns the trap that stops the guest.
    """
    keep_alive: list[object] = []
    i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
    pending = wasi.output.pending  # the trampolines' fast "anything to flush?" test
    for name, params in SIGNATURES.items():
        returns = name != "proc_exit"
        functype = wasmtime.FuncType(
            [i32 if kind == "i32" else i64 for kind in params], [i32] if returns else []
        )
        trampoline = _make_trampoline(
            getattr(wasi, name),
            params,
            returns=returns,
            flush=None if name in KEEP_LOCAL else wasi.flush_output,
            pending=pending,
            fail=fail,
        )
        callback = _UNCHECKED_CALLBACK(trampoline)
        module_name, function_name = IMPORT_MODULE.encode(), name.encode()
        error = _define_unchecked(
            ctypes.cast(linker.ptr(), ctypes.c_void_p),
            module_name,
            len(module_name),
            function_name,
            len(function_name),
            ctypes.cast(functype.ptr(), ctypes.c_void_p),
            callback,
            None,
            _NO_FINALIZER,
        )
        if error:
            raise RuntimeError(f"cannot define {IMPORT_MODULE}.{name}")
        keep_alive += [callback, functype, trampoline]
    return keep_alive


def new_trap(message: str) -> int:
    """A fresh wasm trap carrying `message`, as the address a host function returns."""
    encoded = message.encode()
    trap = ffi.wasmtime_trap_new(ctypes.create_string_buffer(encoded), len(encoded))
    address = ctypes.cast(trap, ctypes.c_void_p).value
    assert address is not None
    return address


# -- epochs: the keep's own tick on the guest's thread ---------------------------

_EPOCH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ctypes.c_uint8),
)
_set_epoch_callback = ffi.dll["wasmtime_store_epoch_deadline_callback"]
_set_epoch_callback.restype = None
_set_epoch_callback.argtypes = [ctypes.c_void_p, _EPOCH_CALLBACK, ctypes.c_void_p, _FINALIZER]
_UPDATE_DEADLINE_CONTINUE = 0


def install_epoch_callback(store: wasmtime.Store, on_tick: Callable[[], str | None]) -> object:
    """Call `on_tick` on the guest's thread at every epoch; a returned string stops
    the guest with that message. Returns the callback, to keep alive with the store."""

    def callback(
        context: int, data: int, delta: ctypes.Array[ctypes.c_uint64], kind: object
    ) -> int:
        try:
            stop = on_tick()
        except BaseException as error:  # never let an exception unwind through wasm
            stop = f"keep failure in the engine tick: {error!r}"
        if stop is not None:
            encoded = stop.encode()
            error_pointer = ffi.wasmtime_error_new(ctypes.create_string_buffer(encoded))
            address = ctypes.cast(error_pointer, ctypes.c_void_p).value
            return address or 0
        delta[0] = 1
        kind[0] = _UPDATE_DEADLINE_CONTINUE  # type: ignore[index]
        return 0

    native = _EPOCH_CALLBACK(callback)
    _set_epoch_callback(ctypes.cast(store.ptr(), ctypes.c_void_p), native, None, _NO_FINALIZER)
    store.set_epoch_deadline(1)
    return native


class Ticker:
    """A thread that runs `on_tick` every TICK_SECONDS while the guest runs, and
    advances the engine's epoch (which calls the epoch callback on the guest's
    thread) when the engine has epochs."""

    def __init__(self, engine: wasmtime.Engine | None, on_tick: Callable[[], None]) -> None:
        self._engine = engine
        self._on_tick = on_tick
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wasmkeep-ticker", daemon=True)

    def _run(self) -> None:
        while not self._stopped.wait(TICK_SECONDS):
            if self._engine is not None:
                self._engine.increment_epoch()
            try:
                self._on_tick()
            except Exception:  # a tick must never end the ticker
                log.exception("keep ticker")

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopped.set()
        self._thread.join()
