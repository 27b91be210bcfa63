"""The keep runtime: compile a workload, check what it imports, run its `_start`.

This is the same on every backend. What differs is the `HostCalls` it is given:
the host executor itself on nil, a sallyport client in process and VM keeps.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import wasmtime

from wasmkeep.alarm import raise_after
from wasmkeep.errors import (
    KeepError,
    WasmkeepError,
    WorkloadError,
    WorkloadTimedOut,
    WorkloadTrapped,
)
from wasmkeep.keep import engine as engine_module
from wasmkeep.keep.engine import EngineSettings, ModuleCache
from wasmkeep.keep.wasi.memory import GuestMemory
from wasmkeep.keep.wasi.preview1 import IMPORT_MODULE, SIGNATURES, Preview1, ProcExit
from wasmkeep.limits import DEFAULT_LIMITS, Limits
from wasmkeep.sallyport.calls import HostCalls
from wasmkeep.sallyport.types import KeepManifest
from wasmkeep.workload import Workload

if TYPE_CHECKING:
    from wasmkeep.keep.tls import KeepTls

__all__ = ["PreparedRun", "RunOptions", "check_interface", "run_workload"]

log = logging.getLogger(__name__)

#: Gathered output is sent at the latest this long after it was written.
OUTPUT_MAX_AGE = 0.02


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Resource limits and engine choices for one run."""

    #: Ceiling on the guest's linear memory, in bytes.
    max_memory: int = DEFAULT_LIMITS.default_max_memory
    #: Wall-clock limit in seconds (None: none).
    timeout: float | None = None
    #: Where compiled modules are kept; None compiles every time.
    cache: ModuleCache | None = None
    settings: EngineSettings = field(default_factory=EngineSettings)
    limits: Limits = DEFAULT_LIMITS
    #: Interrupt a host call blocked past the deadline with SIGALRM (nil). A
    #: process keep leaves that to its host, which can see the call block.
    interrupt_host_calls: bool = True


def check_interface(module: wasmtime.Module, name: str) -> None:
    """A WorkloadError naming every import we cannot satisfy and any missing export."""
    unknown = []
    for item in module.imports:
        functype = item.type
        expected = SIGNATURES.get(item.name or "") if item.module == IMPORT_MODULE else None
        if (
            expected is None
            or not isinstance(functype, wasmtime.FuncType)
            or [str(param) for param in functype.params] != list(expected)
            or [str(result) for result in functype.results]
            != ([] if item.name == "proc_exit" else ["i32"])
        ):
            unknown.append(f"{item.module}.{item.name} ({_describe(functype)})")
    if unknown:
        raise WorkloadError(
            f"{name}: imports what wasmkeep does not provide: {', '.join(unknown)}",
            hint="wasmkeep provides wasi_snapshot_preview1 (WASI preview1) only",
        )
    exports = {item.name: item.type for item in module.exports}
    start = exports.get("_start")
    if start is None:
        if "_initialize" in exports:
            raise WorkloadError(
                f"{name}: is a reactor (a library with _initialize), not a command with _start"
            )
        raise WorkloadError(f"{name}: exports no _start function: not a WASI command")
    if not isinstance(start, wasmtime.FuncType) or start.params or start.results:
        raise WorkloadError(f"{name}: _start must be a function without parameters or results")
    if not isinstance(exports.get("memory"), wasmtime.MemoryType):
        raise WorkloadError(f"{name}: exports no memory named 'memory', which WASI requires")


def _describe(externtype: object) -> str:
    if isinstance(externtype, wasmtime.FuncType):
        params = " ".join(str(param) for param in externtype.params)
        results = " ".join(str(result) for result in externtype.results)
        return f"func ({params}) -> ({results})"
    return type(externtype).__name__.removesuffix("Type").lower()


class _Outcome:
    """What stopped the guest, recorded where it happened (inside a host call or
    an engine tick) and turned into an exit status or an error afterwards."""

    def __init__(self) -> None:
        self.exit: ProcExit | None = None
        self.failure: BaseException | None = None
        self.timed_out = False

    def fail(self, error: BaseException) -> int:
        if isinstance(error, ProcExit):
            self.exit = error
            return engine_module.new_trap(f"proc_exit({error.status})")
        if isinstance(error, _DeadlinePassed):
            self.timed_out = True
            return engine_module.new_trap("wall-clock limit reached")
        self.failure = error
        return engine_module.new_trap(f"keep failure: {error!r}")


class _DeadlinePassed(Exception):
    """Raised by the timer signal inside a blocking host call."""


class PreparedRun:
    """A workload compiled, checked against what wasmkeep provides, and
    instantiated: everything but running it.

    The process keep locks itself down between preparing and running, so that
    compilation (which needs more of the system) happens before and guest code
    only after.
    """

    def __init__(
        self,
        workload: Workload,
        manifest: KeepManifest,
        host: HostCalls,
        options: RunOptions | None = None,
        tls: KeepTls | None = None,
    ) -> None:
        self.options = options = options or RunOptions()
        settings = options.settings
        if options.timeout is not None and not settings.epoch_interruption:
            settings = dataclasses.replace(settings, epoch_interruption=True)
        self.settings = settings
        self.engine = engine_module.make_engine(settings)
        started = time.perf_counter()
        if options.cache is not None:
            module, cached = options.cache.load(
                self.engine, settings, workload.digest, workload.wasm
            )
        else:
            module, cached = engine_module.compile_module(self.engine, workload.wasm), False
        log.debug(
            "%s %s in %.0f ms",
            "loaded" if cached else "compiled",
            workload.digest,
            (time.perf_counter() - started) * 1000,
        )
        check_interface(module, workload.name)

        self.store = store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=options.max_memory)
        self.wasi = wasi = Preview1(manifest, host, options.limits, tls=tls)
        if tls is not None:
            host.publish_certificate(tls.identity.chain_pem)
        self.outcome = _Outcome()
        linker = wasmtime.Linker(self.engine)
        self._natives = engine_module.bind_preview1(linker, wasi, self.outcome.fail)
        try:
            instance = linker.instantiate(store, module)
        except wasmtime.Trap as trap:
            raise WorkloadTrapped(_describe_trap(trap, "while starting")) from None
        except wasmtime.WasmtimeError as error:
            raise WorkloadError(
                f"{workload.name}: cannot instantiate: {_first_line(error)}"
            ) from None
        exports = instance.exports(store)
        memory = exports["memory"]
        start = exports["_start"]
        assert isinstance(memory, wasmtime.Memory)
        assert isinstance(start, wasmtime.Func)
        self._start = start
        base = ctypes.addressof(memory.data_ptr(store).contents)
        wasi.attach_memory(GuestMemory(base, lambda: memory.data_len(store)))

    def run(self) -> int:
        """Run `_start` to its end; returns the exit status (see run_workload)."""
        options, outcome, wasi = self.options, self.outcome, self.wasi
        deadline = None if options.timeout is None else time.monotonic() + options.timeout
        if self.settings.epoch_interruption:

            def on_epoch() -> str | None:
                if deadline is not None and time.monotonic() >= deadline:
                    outcome.timed_out = True
                    return "wall-clock limit reached"
                return None

            self._natives.append(engine_module.install_epoch_callback(self.store, on_epoch))
        ticker = engine_module.Ticker(
            self.engine if self.settings.epoch_interruption else None,
            lambda: wasi.output.flush_if_stale(OUTPUT_MAX_AGE),
        )
        # Guest code is stopped by the epoch; a host call blocked past the
        # deadline by a signal, a moment later (nil; a process keep's host does it).
        alarm = None
        if options.timeout is not None and options.interrupt_host_calls:
            alarm = options.timeout + 0.05
        try:
            with ticker, raise_after(alarm, _DeadlinePassed):
                self._start(self.store)
            status = 0
        except (wasmtime.Trap, wasmtime.WasmtimeError) as error:
            status = _resolve(outcome, error, options)
        finally:
            wasi.close_all()
            wasi.mem.release()
        return status


def run_workload(
    workload: Workload,
    manifest: KeepManifest,
    host: HostCalls,
    options: RunOptions | None = None,
    tls: KeepTls | None = None,
) -> int:
    """Run the workload to its end; returns its exit status.

    Raises WorkloadError for a module that cannot run, WorkloadTrapped,
    WorkloadTimedOut, or the KeepError a host call raised.
    """
    return PreparedRun(workload, manifest, host, options, tls).run()


def _resolve(outcome: _Outcome, error: Exception, options: RunOptions) -> int:
    if outcome.exit is not None:
        return outcome.exit.status
    if outcome.timed_out:
        raise WorkloadTimedOut(
            f"the workload ran longer than its wall-clock limit of {options.timeout:g} s "
            "and was stopped"
        )
    if outcome.failure is not None:
        if isinstance(outcome.failure, WasmkeepError):
            raise outcome.failure
        raise KeepError(f"keep runtime failure: {outcome.failure!r}") from outcome.failure
    if isinstance(error, wasmtime.Trap):
        raise WorkloadTrapped(_describe_trap(error, "")) from None
    raise WorkloadTrapped(f"the workload failed: {_first_line(error)}") from None


def _describe_trap(trap: wasmtime.Trap, when: str) -> str:
    """ "the workload trapped: <what>, in <function> (func N) at offset 0x.., called from ..."."""
    code = trap.trap_code
    what = code.name.lower().replace("_", " ") if code is not None else _first_line(trap)
    where = []
    for frame in trap.frames[:4]:
        label = frame.func_name or f"func {frame.func_index}"
        if frame.func_name:
            label += f" (func {frame.func_index})"
        where.append(f"{label} at offset {frame.module_offset:#x}")
    text = "the workload trapped" + (f" {when}" if when else "") + f": {what}"
    if where:
        text += ", in " + where[0]
        if len(where) > 1:
            text += "; called from " + ", ".join(where[1:])
    return text


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
