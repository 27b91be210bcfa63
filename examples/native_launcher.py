"""Run a native build of a network example the way wasmkeep runs its wasm.

wasmkeep gives a workload its sockets as preopened fds, in the order of the
config's ``[[files]]`` (fds 0, 1 and 2 being stdin, stdout and stderr), and
names them in ``FD_COUNT`` and ``FD_NAMES``. This launcher does the same for a
program built with gcc, so that the very same C source can be tested and
measured without a keep::

    python3 examples/native_launcher.py --listen LISTEN=127.0.0.1:12345 -- ./tcp-echo
    python3 examples/native_launcher.py --connect SERVER=127.0.0.1:8080 -- \\
        ./http-client SERVER / localhost

It opens the sockets in the order given (``--listen``: bound with
``SO_REUSEADDR`` and listening; ``--connect``: connected, blocking), places
them at fds 3, 4, ..., sets ``FD_COUNT`` and ``FD_NAMES`` (the rest of the
environment is passed on) and then replaces itself with the program, so the
program's exit status, signals and stdio are its own. There is no TLS here:
a native run speaks plain TCP where a keep would terminate TLS.

Exit status: the program's; 2 for a bad command line; 1 if a socket cannot be
opened; 127 if the program cannot be started.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["SocketSpec", "main"]

FIRST_FD = 3  # after stdin, stdout and stderr, as in a keep
STDIO_NAMES = ("stdin", "stdout", "stderr")
CONNECT_TIMEOUT = 10.0  # seconds
BACKLOG = socket.SOMAXCONN

Kind = Literal["listen", "connect"]


@dataclass(frozen=True)
class SocketSpec:
    """One socket to hand over: ``NAME=HOST:PORT`` from the command line."""

    kind: Kind
    name: str
    host: str
    port: int

    def __post_init__(self) -> None:
        # The same rules as a config's [[files]] names: FD_NAMES joins them with ':'.
        if not self.name or any(c in self.name for c in ":=\0"):
            raise ValueError(f"bad name {self.name!r}: empty, or has ':', '=' or NUL")
        if not self.host:
            raise ValueError("no host")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not in 1-65535")

    @classmethod
    def parse(cls, kind: Kind, text: str) -> SocketSpec:
        """``NAME=HOST:PORT``; an IPv6 host is written in brackets, ``[::1]:80``."""
        name, equals, address = text.partition("=")
        host, colon, port = address.rpartition(":")
        if not equals or not colon or not port.isdigit():
            raise ValueError(f"{text!r} is not NAME=HOST:PORT")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return cls(kind, name, host, int(port))

    def open(self) -> socket.socket:
        """The socket, bound and listening or connected; OSError if not."""
        if self.kind == "connect":
            sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT)
            # A socket with a timeout is O_NONBLOCK underneath; a keep's
            # connect socket is blocking until the workload says otherwise.
            sock.setblocking(True)
            return sock
        family, type_, proto, _, address = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
        return sock


def _spec_type(kind: Kind) -> Callable[[str], SocketSpec]:
    def parse(text: str) -> SocketSpec:
        try:
            return SocketSpec.parse(kind, text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="native_launcher.py",
        usage="%(prog)s [--listen NAME=HOST:PORT] [--connect NAME=HOST:PORT] ... "
        "-- PROGRAM [ARGS...]",
        description="Run a native program with sockets at fds 3, 4, ... and "
        "FD_COUNT/FD_NAMES set, as wasmkeep runs a workload.",
    )
    # Both append to one list, so the fds follow the command line's order.
    parser.add_argument("--listen", dest="sockets", action="append", type=_spec_type("listen"))
    parser.add_argument("--connect", dest="sockets", action="append", type=_spec_type("connect"))
    parser.set_defaults(sockets=[])
    return parser


def _place(sockets: Sequence[socket.socket]) -> None:
    """Put the sockets at fds FIRST_FD, FIRST_FD + 1, ..., inheritable."""
    # Move them all above the target range first, so that no dup2() closes a
    # socket that is still to be placed.
    above = FIRST_FD + len(sockets)
    moved = []
    for sock in sockets:
        fd = sock.detach()
        moved.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, above))
        os.close(fd)
    for target, fd in enumerate(moved, start=FIRST_FD):
        os.dup2(fd, target, inheritable=True)
        os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, open, place, exec; returns only when something failed."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if "--" not in args:
        parser.error("no program: give it after '--'")
    split = args.index("--")
    command = args[split + 1 :]
    specs: list[SocketSpec] = parser.parse_args(args[:split]).sockets
    if not command:
        parser.error("no program after '--'")
    names = [*STDIO_NAMES, *(spec.name for spec in specs)]
    if len(set(names)) != len(names):
        parser.error(f"names must be unique (and not stdin, stdout, stderr): {names[3:]}")

    sockets: list[socket.socket] = []
    for spec in specs:
        try:
            sockets.append(spec.open())
        except OSError as error:
            print(
                f"native_launcher: cannot {spec.kind} {spec.name} on "
                f"{spec.host}:{spec.port}: {error.strerror or error}",
                file=sys.stderr,
            )
            return 1
    _place(sockets)
    env = {**os.environ, "FD_COUNT": str(len(names)), "FD_NAMES": ":".join(names)}
    try:
        os.execvpe(command[0], command, env)  # noqa: S606 (no shell: the argv is run as given)
    except OSError as error:
        print(f"native_launcher: cannot run {command[0]}: {error.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
