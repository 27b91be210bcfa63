"""Turn a workload config into what a keep boots with: the host's handles for
its files and directories (in an Executor) and the manifest naming them, and
the one connection to the Steward when the config names one."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from wasmkeep.errors import ConfigError, WasmkeepError
from wasmkeep.host.executor import Executor
from wasmkeep.limits import DEFAULT_LIMITS, Limits
from wasmkeep.sallyport.types import (
    FileType,
    HandleInfo,
    HandleKind,
    KeepManifest,
    StewardParams,
    TlsParams,
)

if TYPE_CHECKING:
    from wasmkeep.config import Config

__all__ = ["prepare_host"]


class _Stdio(NamedTuple):
    kind: str
    name: str


#: What a workload gets without a config: Enarx's default files.
_DEFAULT_FILES = (_Stdio("stdin", "stdin"), _Stdio("stdout", "stdout"), _Stdio("stderr", "stderr"))

_STDIO_FDS = {HandleKind.STDIN: 0, HandleKind.STDOUT: 1, HandleKind.STDERR: 2}

#: Seconds to wait for the Steward's TCP connection to open.
STEWARD_CONNECT_TIMEOUT = 10.0


def prepare_host(
    config: Config | None,
    program: str,
    *,
    args: tuple[str, ...] = (),
    export_fd_names: bool = True,
    limits: Limits = DEFAULT_LIMITS,
    executor: Executor | None = None,
) -> tuple[Executor, KeepManifest]:
    """Open what the config grants; guest fd i is `files[i]`, then the directories.

    With no config at all (a bare `wasmkeep run MODULE ARGS`) the guest gets
    stdio, its `args` and an empty environment, and the config machinery is
    never loaded: that path is the cold-start benchmark. `export_fd_names` adds
    Enarx's FD_COUNT and FD_NAMES to the environment; it is off when there is
    no config file, so a plain `run` hands the guest exactly the environment it
    was given (as wasmtime does). `executor` may be given to perform the
    requests (tests tap one); by default a new one.
    """
    executor = executor if executor is not None else Executor(limits)
    fds: list[HandleInfo] = []
    try:
        for index, spec in enumerate(config.files if config else _DEFAULT_FILES):
            kind = HandleKind(spec.kind)
            if kind in _STDIO_FDS:
                handle, filetype = executor.add_stdio(kind, _STDIO_FDS[kind])
            elif kind is HandleKind.NULL:
                handle, filetype = executor.add_null()
            else:
                handle, filetype = _open_socket(executor, index, spec), FileType.SOCKET_STREAM
                tls = _tls_params(spec)
                fds.append(HandleInfo(handle, kind, filetype, name=spec.name, tls=tls))
                continue
            fds.append(HandleInfo(handle, kind, filetype, name=spec.name))
        for directory in config.dirs if config else ():
            try:
                handle = executor.add_directory(directory.host, read_only=directory.readonly)
            except OSError as error:
                raise ConfigError(
                    f"cannot open directory {str(directory.host)!r} for {directory.guest!r}: "
                    f"{error.strerror}"
                ) from None
            fds.append(
                HandleInfo(
                    handle,
                    HandleKind.DIRECTORY,
                    FileType.DIRECTORY,
                    name=directory.guest,
                    guest_path=directory.guest,
                    read_only=directory.readonly,
                )
            )
        steward = _connect_steward(executor, config) if config and config.steward else None
    except BaseException:
        executor.close_all()
        raise
    if config is None:
        env: tuple[tuple[str, str], ...] = ()
    elif export_fd_names:
        env = tuple(config.workload_env())
    else:
        env = tuple(config.env.items())
    manifest = KeepManifest(
        args=(program, *(config.args if config else ()), *args),
        env=env,
        fds=tuple(fds),
        steward=steward,
    )
    return executor, manifest


def _connect_steward(executor: Executor, config: Config) -> StewardParams:
    """Open the one connection the keep enrols over, and describe it to the keep.

    The host resolves the name and connects; the keep speaks HTTP (inside TLS
    for https) over it, the host relaying bytes. No other connection is ever
    opened for the keep's enrolment, and the guest cannot name this one.
    """
    from urllib.parse import urlsplit

    assert config.steward is not None
    url = config.steward
    parts = urlsplit(url)
    https = parts.scheme == "https"
    if not https and config.steward_ca is None:
        raise ConfigError(
            f"steward {url}: an http Steward needs steward_ca (without TLS, only the "
            "Steward's CA certificates can vouch for the chain it returns)",
            hint="use an https URL, or name the Steward's CA file in steward_ca or --steward-ca",
        )
    host = parts.hostname
    assert host is not None  # the config checked it
    port = parts.port or (443 if https else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        handle = executor.add_connection(host, port, timeout=STEWARD_CONNECT_TIMEOUT)
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise WasmkeepError(
            f"cannot reach the Steward at {url}: {reason}",
            hint="is the Steward running? `steward` in the config or --steward names it",
        ) from None
    bundle = config.steward_ca
    return StewardParams(handle, https, host, port, path, bundle.pem if bundle else None)


def _open_socket(executor: Executor, index: int, spec: object) -> int:
    """The host's socket for a listen or connect file (made before the keep starts)."""
    from wasmkeep.config import ConnectFile, ListenFile

    assert isinstance(spec, ListenFile | ConnectFile)
    try:
        if isinstance(spec, ListenFile):
            return executor.add_listener(spec.addr, spec.port)
        return executor.add_connection(spec.host, spec.port)
    except OSError as error:
        what = (
            f"listen on [{spec.addr}]:{spec.port}"
            if isinstance(spec, ListenFile)
            else f"connect to {spec.host}:{spec.port}"
        )
        reason = error.strerror or str(error)
        raise ConfigError(
            f"files[{index}] ({spec.kind} {spec.name!r}): cannot {what}: {reason}"
        ) from None


def _tls_params(spec: object) -> TlsParams | None:
    from wasmkeep.config import ConnectFile, ListenFile

    assert isinstance(spec, ListenFile | ConnectFile)
    if not spec.tls:
        return None
    if isinstance(spec, ListenFile):
        bundle = spec.client_ca
        return TlsParams(spec.tls_min.value, bundle.pem if bundle else None, "")
    bundle = spec.ca
    return TlsParams(spec.tls_min.value, bundle.pem if bundle else None, spec.host)
