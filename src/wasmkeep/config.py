"""The workload config: Enarx.toml, and the command-line flags that extend it.

The format is the one Enarx reads (crate `enarx-config`), so one file serves
both runtimes, plus wasmkeep extensions: ``[[dirs]]``, the TLS keys of
sockets (``tls_min``, ``client_ca``, ``ca``) and ``steward_ca``::

    args = ["--foo", "bar"]              # argv after argv[0]
    steward = "https://steward.example"  # optional; http or https
    steward_ca = "steward-ca.pem"        # wasmkeep: the Steward's CA certificates
    [env]                                # string -> string
    VAR = "value"
    [[files]]                            # guest fd = position in this array
    kind = "stdin"                       # null | stdin | stdout | stderr | listen | connect
    [[files]]
    kind = "listen"
    name = "API"
    tls_min = "1.2"                      # wasmkeep, prot = "tls" only: "1.3" by default
    client_ca = "clients.pem"            # wasmkeep, listen with tls only: mutual TLS
    [[files]]
    kind = "connect"
    host = "db.example"
    ca = "db-ca.pem"                     # wasmkeep, connect with tls only: trust anchors
    [[dirs]]                             # wasmkeep: preopened directories, fds after the files
    host = "data"
    guest = "/data"
    readonly = false

What is promised: :func:`load_config` and :func:`parse_config` return a
:class:`Config` or raise :class:`~wasmkeep.errors.ConfigError`, for any input
whatsoever. The message names the source (file or flag), the key path
(``files[3].port``) and what was expected. A ``Config`` checks its invariants
when it is built (unique fd names, existing directories, the limits of
:data:`wasmkeep.limits.DEFAULT_LIMITS`), so code that holds one may trust it.

Files named by the config are read when it is loaded, relative to its directory:
a ``[[dirs]]`` host must exist, and a CA file (``client_ca``, ``ca``,
``steward_ca``) is read
into the :class:`CaBundle` the host sends to the keep, which cannot read host
files itself. The TLS keys are only for ``prot = "tls"``: on a ``tcp`` socket
they are rejected rather than ignored. Enarx ignores them, so a file that relies
on ``client_ca`` to keep clients out does not do so when run by Enarx.

Differences from Enarx, all on the strict side: unknown keys are rejected
(Enarx ignores them), text may not contain NUL, hosts, addresses and the
Steward URL are checked here rather than when the keep starts, and a ``tcp``
socket without a ``port`` defaults to 80 rather than 443.

This module is on the path of every ``wasmkeep run``: it imports no CLI code.
"""

from __future__ import annotations

import ipaddress
import json
import os
import posixpath
import re
import stat
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, TypeAlias, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    StrictBool,
    StrictBytes,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from wasmkeep.errors import ConfigError
from wasmkeep.limits import DEFAULT_LIMITS
from wasmkeep.printable import quote, shown
from wasmkeep.tomlfile import describe, format_loc, parse_toml, problems_error, read_toml_text

__all__ = [
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
]

_LIMITS = DEFAULT_LIMITS


# -- checks shared by the models ------------------------------------------------------
#
# A check raises one of two pydantic errors, translated into ConfigError text
# by _problem_text: "expected" (the message is chosen from the key path, then
# ", got <value>" is added) or "problem" (the message is complete).


def _expected() -> PydanticCustomError:
    return PydanticCustomError("expected", "invalid value")


def _problem(detail: str, at: tuple[str | int, ...] = ()) -> PydanticCustomError:
    # `at` locates a problem found by a check of the whole object, which pydantic
    # would otherwise report at the object itself.
    return PydanticCustomError("problem", "{detail}", {"detail": detail, "at": at})


def _check_text(value: str) -> str:
    # Every string ends up as a C string in the guest (argv, environ, paths):
    # a NUL would silently cut it, a lone surrogate cannot be encoded at all.
    if "\x00" in value:
        raise _problem("must not contain a NUL character")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _problem("must be valid Unicode text (it has a lone surrogate)") from None
    return value


def _check_fd_name(value: str) -> str:
    # FD_NAMES joins the names with ':', so a ':' would shift every later name.
    _check_text(value)
    if ":" in value:
        raise _expected()
    return value


def _check_env_name(value: str) -> str:
    # environ entries are "KEY=VALUE": an '=' in KEY, or no KEY, cannot be read back.
    _check_text(value)
    if not value or "=" in value:
        raise _expected()
    return value


def _check_ip(value: str) -> str:
    _check_text(value)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise _expected() from None
    # ipaddress takes any text after '%' as an IPv6 scope (an interface name).
    if not value.isprintable() or " " in value:
        raise _expected()
    return value


# RFC 1123 labels, also allowing '_' (found in real host names); ASCII only, so an
# internationalized name must be given in its punycode form.
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _check_host(value: str) -> str:
    _check_text(value)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        if not value.isprintable() or " " in value:  # in an IPv6 scope, as above
            raise _expected()
        return value
    name = value.removesuffix(".")
    labels = name.split(".")
    if (
        not name
        or len(name) > 253
        or not all(_DNS_LABEL.fullmatch(label) for label in labels)
        # WHATWG URL host rule: a name ending in a number is an IPv4 address,
        # so "1.2.3" or "10.0.0.300" is malformed rather than a DNS name.
        or labels[-1].isdigit()
    ):
        raise _expected()
    return value


def _check_url(value: str) -> str:
    _check_text(value)
    # ASCII only (an internationalized host in punycode, a path %-encoded): the
    # keep sends the path as it is in its request line.
    if not value.isascii() or any(char.isspace() or not char.isprintable() for char in value):
        raise _expected()
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError when the port is not a number in range
    except ValueError:
        raise _expected() from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _expected()
    _check_host(parts.hostname)
    if parts.username is not None or parts.password is not None:
        raise _problem("must not hold a user name or password (user@host)")
    return value


def _check_guest_path(value: str) -> str:
    _check_text(value)
    if not value:
        raise _expected()
    if len(value.encode("utf-8")) > _LIMITS.max_path_bytes:
        raise _problem(f"must be at most {_LIMITS.max_path_bytes} bytes long")
    return value


def _freeze(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


def _base_dir(info: ValidationInfo) -> Path:
    """Where relative host paths start: the config file's directory, else the cwd."""
    base_dir = info.context.get("base_dir") if isinstance(info.context, dict) else None
    return base_dir if isinstance(base_dir, Path) else Path.cwd()


_Text = Annotated[StrictStr, AfterValidator(_check_text)]
_FdName = Annotated[StrictStr, AfterValidator(_check_fd_name)]
_Port = Annotated[StrictInt, Field(ge=1, le=65535)]
_Env = Annotated[
    Mapping[Annotated[StrictStr, AfterValidator(_check_env_name)], _Text],
    AfterValidator(_freeze),
    PlainSerializer(dict, return_type=dict[str, str]),
]


class _Model(BaseModel, frozen=True):
    """Frozen and closed: every key is known, no value changes after the checks.

    Each subclass repeats `frozen=True` so that type checkers see it too.
    """

    # No __init__ translating ValidationError here: pydantic calls a custom
    # __init__ for nested models too, which would cut validation short. User
    # input enters through parse_config, load_config and with_overrides, which
    # translate; a constructor called wrongly from code raises ValidationError.
    model_config = ConfigDict(extra="forbid", defer_build=True)


# -- files ------------------------------------------------------------------------------


class Protocol(StrEnum):
    """How a socket in `files` speaks to its peer."""

    #: TLS terminated inside the keep: the host relays only ciphertext.
    TLS = "tls"
    #: Plain TCP: the host sees the traffic.
    TCP = "tcp"

    @property
    def default_port(self) -> int:
        return 443 if self is Protocol.TLS else 80


class TlsVersion(StrEnum):
    """The oldest TLS version a `tls` socket accepts (wasmkeep extension)."""

    TLS_1_2 = "1.2"
    #: The default: TLS 1.3 has no renegotiation, no static RSA, no CBC suites.
    TLS_1_3 = "1.3"


# One complete block: a BEGIN line without its END is a cut-off file, not a bundle.
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----"
)
_PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")


def _ca_pem_problem(pem: bytes) -> str | None:
    """What makes `pem` unusable as CA certificates, or None.

    Only the PEM framing is checked here; the keep's TLS stack parses the
    certificates themselves.
    """
    limit = _LIMITS.max_ca_bundle_size
    if len(pem) > limit:
        return f"larger than the limit of {limit} bytes"
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        return "not a PEM certificate bundle (no BEGIN CERTIFICATE)"
    if not _PEM_CERTIFICATE.search(pem):
        return "not a PEM certificate bundle (no complete BEGIN ... END CERTIFICATE block)"
    # A certificate and its key in one file is a server's own identity, not a set
    # of trust anchors: most likely the wrong file, and a key has no place here.
    if _PEM_PRIVATE_KEY.search(pem):
        return "holds a private key; a CA file must hold only certificates"
    return None


def _check_ca_pem(pem: bytes) -> bytes:
    problem = _ca_pem_problem(pem)
    if problem is not None:
        raise _problem(problem)
    return pem


class CaBundle(_Model, frozen=True):
    """CA certificates in PEM, read from a host file when the config was loaded.

    The keep cannot read host files: the host sends `pem` to it. Holds at least
    one complete certificate block, no private key, and at most
    :attr:`~wasmkeep.limits.Limits.max_ca_bundle_size` bytes.
    """

    #: The file `pem` was read from (absolute and resolved when a config read it);
    #: for messages only.
    path: Path
    #: The file's content, as read (comments between the blocks included).
    pem: Annotated[StrictBytes, AfterValidator(_check_ca_pem)] = Field(repr=False)


def _read_ca_bundle(value: object, info: ValidationInfo) -> CaBundle:
    """The CaBundle of the file `value` names, relative to the config's directory."""
    if isinstance(value, CaBundle):
        return value
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise _expected()
    _check_text(value)
    try:
        path = Path(_base_dir(info), value).resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop (3.11)
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise _problem(f"cannot use {quote(value, limit=4096)}: {reason}") from None
    display = shown(path)
    limit = _LIMITS.max_ca_bundle_size
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (fstat then refuses
        # it). Checking the open fd, not the path, leaves no gap for a swap.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise _problem(f"no such file: {display}") from None
    except OSError as error:
        raise _problem(f"cannot read {display}: {error.strerror or error}") from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise _problem(f"not a regular file: {display}")
        if status.st_size > limit:
            raise _problem(f"{display} is larger than the limit of {limit} bytes")
        pem = bytearray()
        # One byte more than the limit: a file that grew since fstat still fails.
        while len(pem) <= limit:
            chunk = os.read(fd, limit + 1 - len(pem))
            if not chunk:
                break
            pem += chunk
    except OSError as error:
        raise _problem(f"cannot read {display}: {error.strerror or error}") from None
    finally:
        os.close(fd)
    problem = _ca_pem_problem(bytes(pem))
    if problem is not None:
        raise _problem(f"{problem}: {display}")
    return CaBundle(path=path, pem=bytes(pem))


class _Socket(_Model, frozen=True):
    """A file that is a socket: fills in the port its protocol implies."""

    @model_validator(mode="before")
    @classmethod
    def _default_port(cls, data: Any) -> Any:
        # Enarx defaults every port to 443; a tcp socket on 443 is a surprise, so
        # wasmkeep defaults by protocol instead (443 for tls, 80 for tcp).
        if isinstance(data, dict) and "port" not in data:
            prot = data.get("prot", Protocol.TLS)
            port = Protocol.TCP.default_port if prot == Protocol.TCP else Protocol.TLS.default_port
            data = {**data, "port": port}
        return data

    @field_validator("tls_min", "client_ca", "ca", mode="before", check_fields=False)
    @classmethod
    def _tls_key(cls, value: object, info: ValidationInfo) -> object:
        # One validator, so that the order is plain: prot first, then the file.
        # 1. Rejected, not ignored, on a tcp socket: a `client_ca` that silently
        #    did nothing would let in every client its author meant to keep out.
        #    `prot` is declared before these keys, so it is checked by now (and
        #    absent from info.data if it was invalid).
        if value is None:
            return None
        if info.data.get("prot") == Protocol.TCP:
            raise _problem('only for prot = "tls", not "tcp"')
        # 2. TOML reads tls_min = 1.2 as a number; the message says what to write.
        if info.field_name == "tls_min":
            if isinstance(value, float):
                raise _problem(f'expected "1.2" or "1.3" in quotes, got the number {value!r}')
            return value
        # 3. A CA file is read now: the keep cannot read it later.
        return _read_ca_bundle(value, info)


class NullFile(_Model, frozen=True):
    """An fd that reads nothing and discards what is written (/dev/null)."""

    kind: Literal["null"] = "null"
    #: The name the config gave, if any; :attr:`name` is the effective one.
    given_name: _FdName | None = Field(default=None, alias="name")

    @property
    def name(self) -> str:
        return self.given_name if self.given_name is not None else "null"


class StdinFile(_Model, frozen=True):
    """The host's standard input."""

    kind: Literal["stdin"] = "stdin"
    given_name: _FdName | None = Field(default=None, alias="name")

    @property
    def name(self) -> str:
        return self.given_name if self.given_name is not None else "stdin"


class StdoutFile(_Model, frozen=True):
    """The host's standard output."""

    kind: Literal["stdout"] = "stdout"
    given_name: _FdName | None = Field(default=None, alias="name")

    @property
    def name(self) -> str:
        return self.given_name if self.given_name is not None else "stdout"


class StderrFile(_Model, frozen=True):
    """The host's standard error."""

    kind: Literal["stderr"] = "stderr"
    given_name: _FdName | None = Field(default=None, alias="name")

    @property
    def name(self) -> str:
        return self.given_name if self.given_name is not None else "stderr"


class ListenFile(_Socket, frozen=True):
    """A listening socket the host opens; the workload accepts on it."""

    kind: Literal["listen"] = "listen"
    #: Required: a workload finds its sockets by name in FD_NAMES.
    name: _FdName
    prot: Protocol = Protocol.TLS
    #: An IP address literal; "::" listens on every address (v6 and v4).
    addr: Annotated[StrictStr, AfterValidator(_check_ip)] = "::"
    #: Default: :attr:`Protocol.default_port` of `prot`.
    port: _Port = Protocol.TLS.default_port
    #: The oldest TLS version a client may use. May be set only with prot = "tls".
    tls_min: TlsVersion = TlsVersion.TLS_1_3
    #: Mutual TLS: clients must present a certificate that chains to one of these.
    #: None: no client certificate is asked for. May be set only with prot = "tls".
    client_ca: CaBundle | None = None

    @property
    def tls(self) -> bool:
        """Whether TLS ends inside the keep (the TLS keys apply)."""
        return self.prot == Protocol.TLS


class ConnectFile(_Socket, frozen=True):
    """A connection to `host` the host opens before the workload starts."""

    kind: Literal["connect"] = "connect"
    given_name: _FdName | None = Field(default=None, alias="name")
    #: A DNS name or an IP address literal.
    host: Annotated[StrictStr, AfterValidator(_check_host)]
    prot: Protocol = Protocol.TLS
    #: Default: :attr:`Protocol.default_port` of `prot`.
    port: _Port = Protocol.TLS.default_port
    #: The oldest TLS version the server may use. May be set only with prot = "tls".
    tls_min: TlsVersion = TlsVersion.TLS_1_3
    #: The trust anchors the server's certificate must chain to; its name is
    #: checked against `host`. None: the system's default CA store. May be set
    #: only with prot = "tls".
    ca: CaBundle | None = None

    @property
    def name(self) -> str:
        return self.given_name if self.given_name is not None else self.host

    @property
    def tls(self) -> bool:
        """Whether TLS ends inside the keep (the TLS keys apply)."""
        return self.prot == Protocol.TLS


def _file_kind(value: Any) -> str | None:
    # Which model checks a `files` entry. A callable rather than the plain
    # discriminator="kind": pydantic would str() any kind, and str() of a huge
    # TOML integer raises inside pydantic-core (printed as an ignored exception).
    if isinstance(value, dict):
        if "kind" not in value:
            return None
        kind = value["kind"]
        return kind if isinstance(kind, str) else ""  # "" matches no kind
    return getattr(value, "kind", None)


FileSpec: TypeAlias = Annotated[
    Annotated[NullFile, Tag("null")]
    | Annotated[StdinFile, Tag("stdin")]
    | Annotated[StdoutFile, Tag("stdout")]
    | Annotated[StderrFile, Tag("stderr")]
    | Annotated[ListenFile, Tag("listen")]
    | Annotated[ConnectFile, Tag("connect")],
    Discriminator(_file_kind),
]
"""One entry of `files`: which model is chosen by its `kind`."""

_FILE_MODELS: tuple[type[_Model], ...] = (
    NullFile,
    StdinFile,
    StdoutFile,
    StderrFile,
    ListenFile,
    ConnectFile,
)
_KINDS = tuple(model.model_fields["kind"].default for model in _FILE_MODELS)
_DEFAULT_FILES: tuple[FileSpec, ...] = (StdinFile(), StdoutFile(), StderrFile())


# -- dirs -------------------------------------------------------------------------------


class DirSpec(_Model, frozen=True):
    """A host directory preopened for the workload (wasmkeep extension).

    `host` is absolute and resolved, and was a directory when this object was
    built. Relative paths are resolved against the validation context's
    ``base_dir`` (the config file's directory), else the current directory.
    """

    host: Path
    #: The path the workload sees; default: `host` as written.
    guest: Annotated[StrictStr, AfterValidator(_check_guest_path)]
    readonly: StrictBool = False

    @model_validator(mode="before")
    @classmethod
    def _default_guest(cls, data: Any) -> Any:
        if isinstance(data, dict) and "guest" not in data:
            host = data.get("host")
            if isinstance(host, os.PathLike):
                host = os.fspath(host)
            if isinstance(host, str):
                data = {**data, "guest": host}
        return data

    @field_validator("host", mode="before")
    @classmethod
    def _existing_directory(cls, value: object, info: ValidationInfo) -> Path:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value:
            raise _expected()
        _check_text(value)
        try:
            resolved = Path(_base_dir(info), value).resolve()
            is_dir = resolved.is_dir()
            exists = is_dir or resolved.exists()
        except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop (3.11)
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            raise _problem(f"cannot use {quote(value, limit=4096)}: {reason}") from None
        if not exists:
            raise _problem(f"no such directory: {shown(resolved)}")
        if not is_dir:
            raise _problem(f"not a directory: {shown(resolved)}")
        return resolved


def _guest_key(guest: str) -> str:
    # "/data" and "/data/" name the same guest directory.
    return posixpath.normpath(guest)


# -- the config -------------------------------------------------------------------------


class Config(_Model, frozen=True):
    """A checked workload config: what the workload gets, nothing more.

    The guest's fds are `files` in order (fd = index), then `dirs`.
    """

    args: tuple[_Text, ...] = ()
    env: _Env = Field(default_factory=lambda: MappingProxyType({}))
    steward: Annotated[StrictStr, AfterValidator(_check_url)] | None = None
    #: wasmkeep extension: the Steward's CA certificates, anchors for both its
    #: TLS server certificate and the chain it issues. None: the server is
    #: checked against the keep's default store, and the chain must end in
    #: the CA certificate the Steward sends.
    steward_ca: CaBundle | None = None
    files: tuple[FileSpec, ...] = _DEFAULT_FILES
    dirs: tuple[DirSpec, ...] = ()

    @field_validator("steward_ca", mode="before")
    @classmethod
    def _read_steward_ca(cls, value: object, info: ValidationInfo) -> object:
        # Read now, like a socket's `ca`: the keep cannot read host files.
        return None if value is None else _read_ca_bundle(value, info)

    @field_validator("files", mode="before")
    @classmethod
    def _not_too_many_files(cls, value: object) -> object:
        # Checked before each entry is, so a huge array costs one error, not thousands.
        if isinstance(value, list | tuple) and len(value) > _LIMITS.max_config_files:
            raise _problem(f"at most {_LIMITS.max_config_files} files allowed, got {len(value)}")
        return value

    @field_validator("dirs", mode="before")
    @classmethod
    def _not_too_many_dirs(cls, value: object) -> object:
        if isinstance(value, list | tuple) and len(value) > _LIMITS.max_preopens:
            raise _problem(f"at most {_LIMITS.max_preopens} dirs allowed, got {len(value)}")
        return value

    @model_validator(mode="after")
    def _check_whole(self) -> Config:
        # 0. steward_ca without a steward would do nothing: rejected, not ignored.
        if self.steward_ca is not None and self.steward is None:
            raise _problem("only with a steward", at=("steward_ca",))
        # 1. FD names are unique: a workload finds its fd by name in FD_NAMES.
        first_with_name: dict[str, int] = {}
        for index, file in enumerate(self.files):
            other = first_with_name.setdefault(file.name, index)
            if other != index:
                raise _problem(
                    f"{quote(file.name)} is already the name of files[{other}]; names "
                    "must be unique (they become FD_NAMES), so set a distinct `name`",
                    at=("files", index, "name"),
                )
        # 2. Each guest path is preopened once: two would make lookups ambiguous.
        first_with_guest: dict[str, int] = {}
        for index, spec in enumerate(self.dirs):
            other = first_with_guest.setdefault(_guest_key(spec.guest), index)
            if other != index:
                raise _problem(
                    f"{quote(spec.guest)} is already the guest path of dirs[{other}]",
                    at=("dirs", index, "guest"),
                )
        # 3. argv and environ fit the limit, counted as the guest sees them
        #    (UTF-8, each NUL-terminated, FD_COUNT and FD_NAMES included).
        args_bytes = sum(len(arg.encode("utf-8")) + 1 for arg in self.args)
        if args_bytes > _LIMITS.max_args_bytes:
            raise _problem(
                f"{args_bytes} bytes in total, more than the limit of {_LIMITS.max_args_bytes}",
                at=("args",),
            )
        env_bytes = sum(len(f"{k}={v}".encode()) + 1 for k, v in self.workload_env())
        if env_bytes > _LIMITS.max_args_bytes:
            raise _problem(
                f"{env_bytes} bytes in total, more than the limit of {_LIMITS.max_args_bytes}",
                at=("env",),
            )
        return self

    @property
    def fd_names(self) -> tuple[str, ...]:
        """The name of each file, by fd: what FD_NAMES lists."""
        return tuple(file.name for file in self.files)

    def workload_env(self) -> list[tuple[str, str]]:
        """The guest's environment: `env`, then FD_COUNT and FD_NAMES as Enarx sets them.

        FD_COUNT and FD_NAMES replace any variables of the same names in `env`.
        """
        fd_vars = {"FD_COUNT": str(len(self.files)), "FD_NAMES": ":".join(self.fd_names)}
        user = [(key, value) for key, value in self.env.items() if key not in fd_vars]
        return user + list(fd_vars.items())

    def with_overrides(
        self,
        *,
        args: Sequence[str] = (),
        env: Sequence[str] = (),
        dirs: Sequence[str] = (),
        readonly_dirs: Sequence[str] = (),
    ) -> Config:
        """This config combined with command-line flags.

        `args` are appended to the config's; `env` items (``--env KEY=VALUE``)
        replace config variables of the same name; `dirs` (``--dir``, read-write)
        and `readonly_dirs` (``--dir-ro``) are ``HOST[::GUEST]``, with a relative
        HOST taken from the current directory and GUEST defaulting to HOST.
        """
        new_env = dict(self.env)
        for item in env:
            key, equals, value = item.partition("=")
            if not equals or not key:
                raise ConfigError(
                    f"--env {quote(item, limit=4096)}: expected KEY=VALUE with a non-empty KEY"
                )
            new_env[key] = value

        new_dirs = list(self.dirs)
        guests = {_guest_key(spec.guest) for spec in new_dirs}
        for flag, items, readonly in (("--dir", dirs, False), ("--dir-ro", readonly_dirs, True)):
            for item in items:
                source = f"{flag} {quote(item, limit=4096)}"
                host, separator, guest = item.partition("::")
                data: dict[str, object] = {"host": host, "readonly": readonly}
                if separator:
                    data["guest"] = guest
                spec = _validate(DirSpec, data, source=source, base_dir=None, within=("dirs", 0))
                if _guest_key(spec.guest) in guests:
                    raise ConfigError(
                        f"{source}: guest path {quote(spec.guest)} is already preopened",
                        hint="give each directory its own guest path with HOST::GUEST",
                    )
                guests.add(_guest_key(spec.guest))
                new_dirs.append(spec)

        combined = {
            "args": (*self.args, *args),
            "env": new_env,
            "steward": self.steward,
            "steward_ca": self.steward_ca,
            "files": self.files,
            "dirs": tuple(new_dirs),
        }
        return _validate(Config, combined, source="command line", base_dir=None)

    def with_steward(self, steward: str | None = None, steward_ca: str | None = None) -> Config:
        """This config with the Steward of the command line: `steward`
        (``--steward URL``) and `steward_ca` (``--steward-ca FILE``, relative
        to the current directory) replace the config's when given."""
        new_steward, new_steward_ca = self.steward, self.steward_ca
        if steward is not None:
            source = f"--steward {quote(steward, limit=4096)}"
            new_steward = _validate(
                Config, {"steward": steward}, source=source, base_dir=None
            ).steward
        if steward_ca is not None:
            new_steward_ca = _ca_flag(steward_ca, f"--steward-ca {quote(steward_ca, limit=4096)}")
        if (new_steward, new_steward_ca) == (self.steward, self.steward_ca):
            return self
        combined = {
            **{name: getattr(self, name) for name in type(self).model_fields},
            "steward": new_steward,
            "steward_ca": new_steward_ca,
        }
        return _validate(Config, combined, source="command line", base_dir=None)


def _ca_flag(path: str, source: str) -> CaBundle:
    """The CaBundle a command-line flag names (relative to the current directory)."""
    from pydantic import BeforeValidator, TypeAdapter  # only for this flag: start-up time

    if not path:
        raise ConfigError(f"{source}: expected the path of a PEM file of CA certificates")
    adapter = TypeAdapter(Annotated[CaBundle, BeforeValidator(_read_ca_bundle)])
    try:
        return adapter.validate_python(path, context={"base_dir": None})
    except ValidationError as error:
        raise _config_error(source, error) from None


def default_config() -> Config:
    """The config of a workload run without one: stdin, stdout and stderr, nothing else."""
    return Config()


def parse_config(text: str, *, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Parse and check the text of an Enarx.toml.

    `source` names the text in error messages; relative `dirs` hosts are taken
    from `base_dir` (default: the current directory).
    """
    data = parse_toml(text, limit=_LIMITS.max_config_size, error=ConfigError, source=source)
    return _validate(Config, data, source=source, base_dir=base_dir)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and check an Enarx.toml; relative `dirs` are taken from its directory."""
    source = os.fspath(path)
    text = read_toml_text(path, limit=_LIMITS.max_config_size, error=ConfigError, source=source)
    base_dir = Path(os.path.abspath(source)).parent
    return parse_config(text, source=source, base_dir=base_dir)


# -- errors -----------------------------------------------------------------------------

_M = TypeVar("_M", bound=BaseModel)


def _validate(
    model: type[_M],
    data: object,
    *,
    source: str,
    base_dir: Path | None,
    within: tuple[str | int, ...] = (),
) -> _M:
    """`model` from `data`, or a ConfigError naming `source`.

    `within` is where `model` sits in a config (("dirs", 0) for a DirSpec), so
    that the messages of a part checked alone are those of the whole.
    """
    try:
        return model.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as error:
        raise _config_error(source, error, within) from None


def _config_error(
    source: str, error: ValidationError, within: tuple[str | int, ...] = ()
) -> ConfigError:
    """One ConfigError listing every problem, one per line: `source: key.path: what`."""
    problems = [_problem_text(details, within) for details in error.errors(include_url=False)]
    return problems_error(source, problems, ConfigError)


def _problem_text(details: ErrorDetails, within: tuple[str | int, ...] = ()) -> str:
    context = details.get("ctx") or {}
    loc = [*within, *details["loc"], *context.get("at", ())]
    kind: str | None = None
    # A discriminated union puts the tag in the location: files[3].listen.port.
    if len(loc) >= 3 and loc[0] == "files" and isinstance(loc[1], int) and loc[2] in _KINDS:
        kind = str(loc.pop(2))
    error_type = details["type"]
    given = details["input"]
    if error_type in ("union_tag_invalid", "union_tag_not_found") and isinstance(given, dict):
        loc.append("kind")
    full_loc = tuple(loc)
    path = format_loc(full_loc[len(within) :])
    prefix = f"{path}: " if path else ""

    if error_type == "problem":
        return prefix + str(context["detail"])
    expected = _expected_text(full_loc)
    if error_type in {"missing", "union_tag_not_found"} and isinstance(given, dict):
        required = f" for kind {quote(kind)}" if kind else ""
        return f"{prefix}required{required}, expected {expected}"
    if error_type == "extra_forbidden":
        return prefix + _unknown_key_text(full_loc, kind)
    if error_type == "union_tag_invalid" and isinstance(given, dict):
        given = given.get("kind")
    if expected is None:
        return prefix + details["msg"]
    return f"{prefix}expected {expected}, got {describe(given)}"


_KIND_LIST = ", ".join(json.dumps(kind) for kind in _KINDS)
_FILE_FIELDS = {
    "name": 'a string without ":"',
    "prot": '"tls" or "tcp"',
    "port": "an integer from 1 to 65535",
    "addr": 'an IP address literal such as "::" or "127.0.0.1"',
    "host": "a DNS name or an IP address literal",
    "kind": f"one of {_KIND_LIST}",
    "tls_min": '"1.2" or "1.3"',
    "client_ca": "the path of a PEM file of CA certificates",
    "ca": "the path of a PEM file of CA certificates",
}
_DIR_FIELDS = {
    "host": "the path of an existing directory",
    "guest": "a non-empty path",
    "readonly": "true or false",
}


def _expected_text(loc: tuple[str | int, ...]) -> str | None:
    match loc:
        case ("args",):
            return "an array of strings"
        case ("args", int()):
            return "a string"
        case ("env",):
            return "a table of strings"
        case ("env", str()):
            return "a string"
        case ("env", str(), "[key]"):
            return 'a non-empty variable name without "="'
        case ("steward",):
            return 'an http or https URL such as "https://steward.example.com"'
        case ("steward_ca",):
            return "the path of a PEM file of CA certificates"
        case ("files",) | ("dirs",):
            return "an array of tables"
        case ("files", int()) | ("dirs", int()):
            return "a table"
        case ("files", int(), str() as key) if key in _FILE_FIELDS:
            return _FILE_FIELDS[key]
        case ("dirs", int(), str() as key) if key in _DIR_FIELDS:
            return _DIR_FIELDS[key]
    return None


def _unknown_key_text(loc: tuple[str | int, ...], kind: str | None) -> str:
    def keys_of(model: type[BaseModel]) -> list[str]:
        return [field.alias or name for name, field in model.model_fields.items()]

    match loc:
        case ("files", int(), str() as key) if kind is not None:
            model = _FILE_MODELS[_KINDS.index(kind)]
            if any(key in keys_of(other) for other in _FILE_MODELS):
                return f"not allowed for kind {quote(kind)} (allowed: {', '.join(keys_of(model))})"
            return f"unknown key (kind {quote(kind)} allows: {', '.join(keys_of(model))})"
        case ("dirs", int(), str()):
            return f"unknown key (allowed: {', '.join(keys_of(DirSpec))})"
        case (str(),):
            return f"unknown key (allowed: {', '.join(keys_of(Config))})"
    return "unknown key"


# -- the example --------------------------------------------------------------------------

EXAMPLE_CONFIG = """\
# Enarx.toml: the configuration of a WebAssembly workload, for `wasmkeep run`.
#
# The format is Enarx's, so the same file works with Enarx; wasmkeep adds
# [[dirs]] (at the end) and the TLS keys of sockets (tls_min, client_ca, ca).
# Every key is optional. A line starting with "#" and no space is an example:
# remove the "#" to use it.
# `wasmkeep config check Enarx.toml` checks this file and shows what it means.

# Arguments for the workload, after argv[0]. Arguments given to `wasmkeep run`
# after the module are appended to these.
#args = ["--verbose", "--threads=2"]

# URL of a Steward (http or https): before the workload starts, the keep makes
# its key, proves to the Steward what it runs (attestation: evidence binding
# that key and the workload's digest, in a certificate request POSTed to this
# URL) and receives a certificate, which its TLS sockets then use. The host
# opens the one connection to the Steward and relays bytes; TLS (https) ends
# inside the keep. If the Steward cannot be reached or refuses, the run fails
# before the workload starts. Without a steward the keep uses a self-signed
# certificate.
#steward = "https://steward.example.com"

# steward_ca (a wasmkeep extension) names a PEM file of CA certificates,
# relative to this file's directory (it must exist), read when this file is
# loaded: the anchors for the Steward's TLS server certificate and for the
# certificate chain it issues. Without it, an https Steward is checked against
# the system's CA certificates and the chain must end in the CA certificate the
# Steward sends; an http Steward requires it (nothing else would vouch for the
# chain). For example (with a "#" before it removed):
#     steward_ca = "steward-ca.pem"

# Environment variables of the workload; `--env KEY=VALUE` adds or replaces one.
# wasmkeep also sets FD_COUNT, the number of [[files]], and FD_NAMES, their
# names joined by ":"; these replace variables of the same name set here.
#[env]
#RUST_LOG = "info"

# [[files]]: the workload's file descriptors. The first entry is fd 0, the
# second fd 1, and so on: the fd is the position in this list. Without any
# [[files]] the workload gets stdin, stdout and stderr, as below; `files = []`
# gives it none. Every file has a `kind` and a `name`, which must be unique and
# must not contain ":"; the workload finds its fds by name in FD_NAMES.
#
# kind = "null", "stdin", "stdout" or "stderr": /dev/null, or the standard
# stream of `wasmkeep run`. The name is optional; it defaults to the kind.
[[files]]
kind = "stdin"

[[files]]
kind = "stdout"

[[files]]
kind = "stderr"

# kind = "listen": a socket the host listens on; the workload accepts from it.
#   name       required
#   prot       "tls" (default): TLS ends inside the keep, the host relays only
#              ciphertext; or "tcp": plain TCP, which the host can read
#   addr       the IP address to listen on (default "::", every address)
#   port       1 to 65535 (default 443 for tls, 80 for tcp)
#   tls_min    the oldest TLS version accepted: "1.3" (default) or "1.2"
#   client_ca  a PEM file of CA certificates, relative to this file's directory
#              (it must exist): clients must present a certificate issued by one
#              of them (mutual TLS). Without it no client certificate is asked for.
#[[files]]
#kind = "listen"
#name = "LISTEN"
#prot = "tls"
#addr = "::"
#port = 8443
#tls_min = "1.3"
#client_ca = "client-ca.pem"

# kind = "connect": a connection the host opens when the workload starts.
#   host     a DNS name or an IP address (required); with tls, the server's
#            certificate must be issued for it
#   name     optional; defaults to the host
#   prot     "tls" (default) or "tcp"
#   port     1 to 65535 (default 443 for tls, 80 for tcp)
#   tls_min  the oldest TLS version accepted: "1.3" (default) or "1.2"
#   ca       a PEM file of CA certificates, relative to this file's directory
#            (it must exist): the server's certificate must be issued by one of
#            them. Without it the system's CA certificates are used.
#[[files]]
#kind = "connect"
#name = "BACKEND"
#host = "example.com"
#prot = "tls"
#port = 443
#tls_min = "1.3"
#ca = "backend-ca.pem"

# tls_min, client_ca and ca are wasmkeep's: only for prot = "tls", and read
# when the file is loaded (the keep cannot read host files). Enarx ignores
# them, so under Enarx a client_ca does not keep any client out.

# [[dirs]] (a wasmkeep extension): host directories the workload may use, like
# wasmtime's --dir. `wasmkeep run --dir HOST[::GUEST]` adds one read-write,
# `--dir-ro HOST[::GUEST]` one read-only. Their fds follow the files: with only
# the three files above, the first directory is fd 3.
#   host      the host directory, relative to this file's directory; it must exist
#   guest     the path the workload sees (default: `host` as written)
#   readonly  true to forbid changes (default false)
#[[dirs]]
#host = "data"
#guest = "/data"
#readonly = false
"""
"""A commented Enarx.toml showing every key; what `wasmkeep config init` writes.

As written it gives the default config; its examples are the lines that start
with "#" and no space. Made active, they need a directory ``data`` and the CA
files ``client-ca.pem`` and ``backend-ca.pem`` beside the config.
"""
