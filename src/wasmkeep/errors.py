"""The errors wasmkeep raises, as one tree.

Every error the command line can meet derives from :class:`WasmkeepError`; the
CLI prints its :meth:`~WasmkeepError.diagnostics` as one line (what failed, why,
what to do) and exits with its :attr:`~WasmkeepError.exit_status`. Foreign errors
(wasmtime, OSError, TOML) are translated into this tree where they are met.

::

    WasmkeepError
    ├── ConfigError            the workload config or a command-line flag is invalid
    ├── WorkloadError          the module cannot run: not wasm, a component,
    │                          too large, unknown imports, no _start
    ├── BackendUnavailable     the chosen backend cannot run on this machine
    ├── Interrupted            Ctrl-C or SIGTERM: the keep was stopped with wasmkeep
    └── KeepError              the keep failed while running a workload
        ├── WorkloadTrapped    the guest trapped (unreachable, out of bounds, ...)
        ├── WorkloadTimedOut   the wall-clock limit passed
        └── HostProtocolViolation
                               a reply from the host broke the protocol (fail closed)
"""

from __future__ import annotations

__all__ = [
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
]

#: Exit status of a bad command line, config or module (as click uses for usage errors).
EXIT_USAGE = 2
#: Exit status of a trapped guest: 128 + SIGABRT, as the wasmtime CLI reports a trap.
EXIT_TRAP = 134
#: Exit status when the wall-clock limit passed, as coreutils `timeout` uses.
EXIT_TIMEOUT = 124
#: Exit status when the host broke the sallyport protocol (a possible attack).
EXIT_HOST_VIOLATION = 125


class WasmkeepError(Exception):
    """Base of every error wasmkeep reports to its user."""

    exit_status: int = 1
    #: What the user can do about it; printed after the message when set.
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def diagnostics(self) -> str:
        """The text the CLI prints: the message, then the hint if there is one."""
        text = str(self)
        if self.hint:
            text += f" ({self.hint})"
        return text


class ConfigError(WasmkeepError):
    """The workload config or a command-line flag is invalid.

    The message names the source (file or flag), the key and what was expected.
    """

    exit_status = EXIT_USAGE


class WorkloadError(WasmkeepError):
    """The module cannot be run: malformed, a component, too large, bad imports."""

    exit_status = EXIT_USAGE


class BackendUnavailable(WasmkeepError):
    """The chosen backend cannot run on this machine; `platform info` says why."""

    hint = "run `wasmkeep platform info` to see which backends work here"


class Interrupted(WasmkeepError):
    """wasmkeep was told to stop (SIGINT, SIGTERM); its keep was stopped too."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(f"stopped by {signal.Signals(signum).name}; the keep was stopped too")
        self.exit_status = 128 + signum


class KeepError(WasmkeepError):
    """The keep failed while running a workload."""


class WorkloadTrapped(KeepError):
    """The guest trapped; the message names the trap and where it happened."""

    exit_status = EXIT_TRAP


class WorkloadTimedOut(KeepError):
    """The workload ran past its wall-clock limit and was stopped."""

    exit_status = EXIT_TIMEOUT


class HostProtocolViolation(KeepError):
    """A reply from the host broke the sallyport protocol.

    The keep stops the workload at once: it never continues on host-chosen data.
    """

    exit_status = EXIT_HOST_VIOLATION

    def __init__(self, message: str) -> None:
        super().__init__(f"host protocol violation: {message}")
