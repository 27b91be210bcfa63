"""The two frames outside the request/reply table: BOOT (host to keep, once,
first) and EXIT (keep to host, once, last).

BOOT carries the workload and everything the keep runtime needs to run it;
EXIT carries how it ended. Both decode strictly (see codec.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from wasmkeep.limits import DEFAULT_LIMITS, Limits
from wasmkeep.sallyport.codec import ProtocolError, Reader, Writer
from wasmkeep.sallyport.types import (
    FileType,
    HandleInfo,
    HandleKind,
    KeepManifest,
    StewardParams,
    TlsParams,
)

__all__ = ["Boot", "Exit", "Outcome", "boot_payload_limit"]

_KINDS = list(HandleKind)


def boot_payload_limit(limits: Limits = DEFAULT_LIMITS) -> int:
    """The largest BOOT frame: a module of the largest size, its arguments,
    environment and fds, and the Steward's CA certificates."""
    fds = limits.max_config_files + limits.max_preopens
    return (
        limits.max_module_size + 4 * limits.max_args_bytes + (fds + 1) * limits.max_ca_bundle_size
    )


@dataclass(frozen=True, slots=True)
class Boot:
    """What a keep is started with."""

    name: str
    wasm: bytes
    manifest: KeepManifest
    max_memory: int
    timeout_ns: int | None
    cpu_seconds: int | None = None
    #: Only for the test suite: an action the keep tries after lockdown.
    test_hook: str = ""

    def encode(self) -> bytes:
        writer = Writer().text(self.name).blob(self.wasm)
        writer.u32(len(self.manifest.args))
        # Arguments and environment come from the host's command line and may
        # hold bytes that are not UTF-8 (carried as surrogate escapes).
        for arg in self.manifest.args:
            writer.blob(_os_bytes(arg))
        writer.u32(len(self.manifest.env))
        for key, value in self.manifest.env:
            writer.blob(_os_bytes(key)).blob(_os_bytes(value))
        writer.u32(len(self.manifest.fds))
        for info in self.manifest.fds:
            writer.u32(info.handle).u8(_KINDS.index(info.kind)).u8(info.filetype)
            writer.text(info.name).text(info.guest_path).u8(1 if info.read_only else 0)
            _encode_tls(writer, info.tls)
        _encode_steward(writer, self.manifest.steward)
        writer.u64(self.max_memory)
        writer.u8(0 if self.timeout_ns is None else 1).u64(self.timeout_ns or 0)
        writer.u8(0 if self.cpu_seconds is None else 1).u64(self.cpu_seconds or 0)
        writer.text(self.test_hook)
        return writer.payload()

    @classmethod
    def decode(cls, payload: bytes, limits: Limits = DEFAULT_LIMITS) -> Boot:
        reader = Reader(payload)
        name = reader.text("workload name", 4096)
        wasm = reader.blob("module", limits.max_module_size)
        args = tuple(
            _os_str(reader.blob("argument", limits.max_args_bytes))
            for _ in range(reader.count("arguments", limits.max_args_bytes))
        )
        env = tuple(
            (
                _os_str(reader.blob("variable name", limits.max_args_bytes)),
                _os_str(reader.blob("value", limits.max_args_bytes)),
            )
            for _ in range(reader.count("variables", limits.max_args_bytes))
        )
        fds = []
        for _ in range(reader.count("fds", limits.max_config_files + limits.max_preopens)):
            handle, kind, filetype = reader.u32("handle"), reader.u8("kind"), reader.u8("filetype")
            if kind >= len(_KINDS):
                raise ProtocolError(f"unknown fd kind {kind}")
            try:
                file_type = FileType(filetype)
            except ValueError:
                raise ProtocolError(f"{filetype} is not a WASI file type") from None
            fds.append(
                HandleInfo(
                    handle,
                    _KINDS[kind],
                    file_type,
                    name=reader.text("fd name", 4096),
                    guest_path=reader.text("guest path", limits.max_path_bytes),
                    read_only=reader.bool("read-only"),
                    tls=_decode_tls(reader, limits),
                )
            )
        steward = _decode_steward(reader, limits)
        handles = [info.handle for info in fds]
        if steward is not None:
            handles.append(steward.handle)
        # One handle, one use: a Steward connection that is also a guest's fd,
        # or two fds on one socket, would mix streams the keep keeps apart.
        if len(set(handles)) != len(handles):
            raise ProtocolError("a handle is given twice")
        max_memory = reader.u64("max memory")
        has_timeout, timeout = reader.bool("timeout flag"), reader.u64("timeout")
        has_cpu, cpu = reader.bool("cpu limit flag"), reader.u64("cpu limit")
        test_hook = reader.text("test hook", 64)
        reader.end()
        if sum(len(_os_bytes(arg)) + 1 for arg in args) > limits.max_args_bytes:
            raise ProtocolError("arguments exceed the limit")
        return cls(
            name=name,
            wasm=wasm,
            manifest=KeepManifest(args=args, env=env, fds=tuple(fds), steward=steward),
            max_memory=max_memory,
            timeout_ns=timeout if has_timeout else None,
            cpu_seconds=cpu if has_cpu else None,
            test_hook=test_hook,
        )


def _encode_tls(writer: Writer, tls: TlsParams | None) -> None:
    if tls is None:
        writer.u8(0)
        return
    writer.u8(1).text(tls.min_version).text(tls.server_name)
    writer.u8(0 if tls.ca_pem is None else 1).blob(tls.ca_pem or b"")


def _decode_tls(reader: Reader, limits: Limits) -> TlsParams | None:
    if not reader.bool("tls flag"):
        return None
    min_version = reader.text("TLS version", 8)
    if min_version not in ("1.2", "1.3"):
        raise ProtocolError(f"unknown TLS version {min_version!r}")
    server_name = reader.text("server name", 255)
    has_ca = reader.bool("CA flag")
    ca_pem = reader.blob("CA bundle", limits.max_ca_bundle_size)
    return TlsParams(min_version, ca_pem if has_ca else None, server_name)


def _encode_steward(writer: Writer, steward: StewardParams | None) -> None:
    if steward is None:
        writer.u8(0)
        return
    writer.u8(1).u32(steward.handle).u8(1 if steward.https else 0)
    writer.text(steward.host).u16(steward.port).text(steward.path)
    writer.u8(0 if steward.ca_pem is None else 1).blob(steward.ca_pem or b"")


def _decode_steward(reader: Reader, limits: Limits) -> StewardParams | None:
    if not reader.bool("steward flag"):
        return None
    handle = reader.u32("steward handle")
    https = reader.bool("steward https flag")
    host = reader.text("steward host", 253)
    port = reader.u16("steward port")
    path = reader.text("steward path", 2048)
    has_ca = reader.bool("steward CA flag")
    ca_pem = reader.blob("steward CA bundle", limits.max_ca_bundle_size)
    try:
        return StewardParams(handle, https, host, port, path, ca_pem if has_ca else None)
    except ValueError as error:
        raise ProtocolError(f"steward: {error}") from None


def _os_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _os_str(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class Outcome(enum.IntEnum):
    """How a keep's run ended; each but EXITED maps to one error of errors.py."""

    EXITED = 0
    WORKLOAD_ERROR = 1
    TRAPPED = 2
    TIMED_OUT = 3
    HOST_VIOLATION = 4
    KEEP_ERROR = 5


@dataclass(frozen=True, slots=True)
class Exit:
    outcome: Outcome
    status: int = 0
    message: str = ""

    def encode(self) -> bytes:
        return Writer().u8(self.outcome).u32(self.status).text(self.message).payload()

    @classmethod
    def decode(cls, payload: bytes) -> Exit:
        reader = Reader(payload)
        code = reader.u8("outcome")
        try:
            outcome = Outcome(code)
        except ValueError:
            raise ProtocolError(f"unknown exit outcome {code}") from None
        status, message = reader.u32("status"), reader.text("message", 64 * 1024)
        reader.end()
        return cls(outcome, status, message)
