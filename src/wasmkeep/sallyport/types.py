"""The vocabulary both sides of sallyport share: errno and file-type numbers,
the records a host returns, and the manifest a keep boots with.

Values are WASI preview1's own numbers (witx `typenames`), so a reply means the
same thing on every host OS and needs no translation inside the keep.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "TIME_NOW",
    "DirEntry",
    "Errno",
    "FileStat",
    "FileType",
    "HandleInfo",
    "HandleKind",
    "HostError",
    "KeepManifest",
    "PollResult",
    "StewardParams",
]


class Errno(enum.IntEnum):
    """WASI preview1 error numbers."""

    SUCCESS = 0
    TOOBIG = 1
    ACCES = 2
    ADDRINUSE = 3
    ADDRNOTAVAIL = 4
    AFNOSUPPORT = 5
    AGAIN = 6
    ALREADY = 7
    BADF = 8
    BADMSG = 9
    BUSY = 10
    CANCELED = 11
    CHILD = 12
    CONNABORTED = 13
    CONNREFUSED = 14
    CONNRESET = 15
    DEADLK = 16
    DESTADDRREQ = 17
    DOM = 18
    DQUOT = 19
    EXIST = 20
    FAULT = 21
    FBIG = 22
    HOSTUNREACH = 23
    IDRM = 24
    ILSEQ = 25
    INPROGRESS = 26
    INTR = 27
    INVAL = 28
    IO = 29
    ISCONN = 30
    ISDIR = 31
    LOOP = 32
    MFILE = 33
    MLINK = 34
    MSGSIZE = 35
    MULTIHOP = 36
    NAMETOOLONG = 37
    NETDOWN = 38
    NETRESET = 39
    NETUNREACH = 40
    NFILE = 41
    NOBUFS = 42
    NODEV = 43
    NOENT = 44
    NOEXEC = 45
    NOLCK = 46
    NOLINK = 47
    NOMEM = 48
    NOMSG = 49
    NOPROTOOPT = 50
    NOSPC = 51
    NOSYS = 52
    NOTCONN = 53
    NOTDIR = 54
    NOTEMPTY = 55
    NOTRECOVERABLE = 56
    NOTSOCK = 57
    NOTSUP = 58
    NOTTY = 59
    NXIO = 60
    OVERFLOW = 61
    OWNERDEAD = 62
    PERM = 63
    PIPE = 64
    PROTO = 65
    PROTONOSUPPORT = 66
    PROTOTYPE = 67
    RANGE = 68
    ROFS = 69
    SPIPE = 70
    SRCH = 71
    STALE = 72
    TIMEDOUT = 73
    TXTBSY = 74
    XDEV = 75
    NOTCAPABLE = 76


class FileType(enum.IntEnum):
    """WASI preview1 file types."""

    UNKNOWN = 0
    BLOCK_DEVICE = 1
    CHARACTER_DEVICE = 2
    DIRECTORY = 3
    REGULAR_FILE = 4
    SOCKET_DGRAM = 5
    SOCKET_STREAM = 6
    SYMBOLIC_LINK = 7


class HostError(Exception):
    """A host operation failed with a WASI errno; the guest sees that errno."""

    __slots__ = ("errno",)

    def __init__(self, errno: Errno) -> None:
        super().__init__(errno.name)
        self.errno = errno


#: Passed as a time to `set_times`: use the host's current time.
TIME_NOW = -1


@dataclass(frozen=True, slots=True)
class FileStat:
    """File attributes as WASI `filestat` carries them (times in ns since the epoch)."""

    dev: int
    ino: int
    filetype: FileType
    nlink: int
    size: int
    atim: int
    mtim: int
    ctim: int


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One directory entry; `next` is the cookie of the entry after it."""

    next: int
    ino: int
    filetype: FileType
    name: bytes


@dataclass(frozen=True, slots=True)
class PollResult:
    """Readiness of one handle: an errno, bytes available (0 if unknown), hang-up.

    For a readable socket, `data` holds bytes the host received on the keep's
    behalf (poll's `prefetch`), and `eof` says the peer closed: the keep need
    not ask for them in another round trip.
    """

    errno: Errno
    nbytes: int
    hangup: bool
    data: bytes | memoryview = b""
    eof: bool = False


@dataclass(frozen=True, slots=True)
class SendResult:
    """What happened to data handed to poll to send: bytes the socket took,
    an errno if it failed, and whether it can take more now (after a partial
    send the host watches for that too)."""

    written: int
    errno: Errno = Errno.SUCCESS
    writable: bool = False


class PollReply(NamedTuple):
    """poll's answer: one readiness per interest, one result per send."""

    ready: list[PollResult | None]
    sent: list[SendResult]


class HandleKind(enum.Enum):
    """What a handle given to the keep at boot stands for."""

    STDIN = "stdin"
    STDOUT = "stdout"
    STDERR = "stderr"
    NULL = "null"
    DIRECTORY = "directory"
    LISTEN = "listen"
    CONNECT = "connect"


@dataclass(frozen=True, slots=True)
class TlsParams:
    """TLS, terminated inside the keep, on a listen or connect socket.

    `ca_pem` is public configuration, sent by the host: for a listener, the
    CAs a client certificate must chain to (None: no client certificate is
    asked for); for a connection, the trust anchors for the server (None: the
    keep's default store). `server_name` is the name a connection checks.
    """

    min_version: str = "1.3"
    ca_pem: bytes | None = None
    server_name: str = ""


@dataclass(frozen=True, slots=True)
class HandleInfo:
    """One guest fd the keep starts with: the host's handle for it and what it is.

    `guest_path` names a preopened directory inside the guest (WASI prestat);
    `read_only` directories refuse every change, in the keep and on the host.
    """

    handle: int
    kind: HandleKind
    filetype: FileType
    name: str = ""
    guest_path: str = ""
    read_only: bool = False
    tls: TlsParams | None = None


# A DNS name as the config accepts it (ASCII labels, '_' allowed), or an IP literal.
_STEWARD_HOST = re.compile(r"[A-Za-z0-9_.-]{1,253}")
# A request target: an absolute path (and query), visible ASCII only, so that
# nothing in it can end the request line or add a header.
_STEWARD_PATH = re.compile(r"/[\x21-\x7e]{0,2047}")


@dataclass(frozen=True, slots=True)
class StewardParams:
    """The Steward a keep obtains its certificate from, and the one connection
    to it the host opened before the keep started (the keep's enrolment).

    All of it is public configuration sent by the host: `handle` is a TCP
    connection to `host`:`port` over which the host relays bytes and nothing
    else; the keep speaks HTTP to `path` over it, inside TLS when `https`
    (terminated in the keep, the server checked against `ca_pem`, else the
    keep's default store, and its name against `host`). `ca_pem` also holds
    the anchors the returned chain must reach. An ``http`` Steward comes with
    `ca_pem`, or the chain it returns could not be authenticated at all.

    Checked when built (ValueError): a host name or IP literal, a port, a path
    that cannot smuggle anything into the request.
    """

    handle: int
    https: bool
    host: str
    port: int
    path: str = "/"
    ca_pem: bytes | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.handle <= 0xFFFFFFFF:
            raise ValueError(f"handle {self.handle} is out of range")
        if ":" in self.host:
            try:
                ipaddress.IPv6Address(self.host)
            except ValueError:
                raise ValueError(f"host {self.host[:80]!r} is not an IPv6 address") from None
        elif not _STEWARD_HOST.fullmatch(self.host) or ".." in self.host:
            raise ValueError(f"host {self.host[:80]!r} is not a host name or IP address")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is out of range")
        if not _STEWARD_PATH.fullmatch(self.path):
            raise ValueError(
                f"path {self.path[:80]!r} must start with / and hold only visible ASCII"
            )
        if not self.https and self.ca_pem is None:
            raise ValueError("an http Steward needs its CA certificates (steward_ca)")

    @property
    def url(self) -> str:
        """The Steward's URL, for messages."""
        return f"{'https' if self.https else 'http'}://{self.authority}{self.path}"

    @property
    def _bracketed(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def authority(self) -> str:
        """The Host header: the host (an IPv6 address in brackets), and the
        port unless it is the scheme's default."""
        default = 443 if self.https else 80
        return self._bracketed if self.port == default else f"{self._bracketed}:{self.port}"


@dataclass(frozen=True, slots=True)
class KeepManifest:
    """What the host tells a keep at boot: the guest's argv, environ and fds,
    and the Steward to enrol with, if the config names one.

    Guest fd `i` is `fds[i]`: the config's `files` first (fd = array index, as
    in Enarx), then the preopened directories. The Steward's connection is
    not a guest fd: the guest cannot name it, and the keep closes it once
    enrolled.
    """

    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    fds: tuple[HandleInfo, ...] = field(default_factory=tuple)
    steward: StewardParams | None = None
