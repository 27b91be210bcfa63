"""The network examples (examples/tcp-echo, http-hello, http-client) built
natively with gcc and run under examples/native_launcher.py, which hands them
their sockets as a keep would (fds 3, 4, ..., FD_COUNT, FD_NAMES), against real
clients: Python sockets, curl, http.server. Their wasm builds are checked to
compile and to say what is missing; tests/test_network.py runs them in keeps.

Every server gets a free loopback port and is killed, if still running, when
its test ends; servers run with --max-connections / --max-requests where a test
checks that they exit 0 on their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO

import pytest

from tests.conftest import EXAMPLES, run_wasmkeep

LAUNCHER = EXAMPLES / "native_launcher.py"
PROGRAMS = ("tcp-echo", "http-hello", "http-client")
HOST = "127.0.0.1"
DEADLINE = 10.0  # seconds: the longest any single step may take
HELLO = b"Hello from inside a keep!\n"
MAX_CLIENTS = 1024  # as in tcp-echo.c
MAX_PENDING = 1024 * 1024  # as in tcp-echo.c

Build = Callable[[str], Path]


# ---- building and launching --------------------------------------------------


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The examples built with gcc, warnings as errors: the same sources as the wasm."""
    out = tmp_path_factory.mktemp("native")
    built = {}
    for name in PROGRAMS:
        source = EXAMPLES / name / f"{name}.c"
        binary = out / name
        subprocess.run(
            ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", str(source), "-o", str(binary)],
            check=True,
            timeout=60,
        )
        built[name] = binary
    return built


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def is_listening(port: int) -> bool:
    """Whether a socket listens on HOST:port, without connecting to it (which
    would count as a client)."""
    local = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(line.split()[1] == local and line.split()[3] == "0A" for line in lines)


@dataclass
class Launched:
    """A program run by native_launcher.py; its output goes to files, so that
    a chatty program never blocks on a full pipe."""

    process: subprocess.Popen[bytes]
    port: int
    stdout: IO[bytes]
    stderr: IO[bytes]
    result: tuple[int, str, str] | None = None

    def finish(self, timeout: float = DEADLINE) -> tuple[int, str, str]:
        """Wait for the exit: (status, stdout, stderr)."""
        if self.result is None:
            status = self.process.wait(timeout=timeout)
            outputs = []
            for stream in (self.stdout, self.stderr):
                stream.seek(0)
                outputs.append(stream.read().decode(errors="replace"))
            self.result = (status, outputs[0], outputs[1])
        return self.result

    def alive(self) -> bool:
        return self.process.poll() is None

    def connect(self) -> socket.socket:
        return socket.create_connection((HOST, self.port), timeout=DEADLINE)


def launcher_command(sockets: list[str], program: Path | str, *args: str) -> list[str]:
    return [sys.executable, str(LAUNCHER), *sockets, "--", str(program), *args]


@contextmanager
def launched(
    command: list[str],
    *,
    port: int = 0,
    env: Mapping[str, str] | None = None,
) -> Iterator[Launched]:
    """Run COMMAND (if PORT, until it listens there); kill it at the end if it
    has not exited."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        environment = {k: v for k, v in os.environ.items() if k != "ECHO_VERBOSE"}
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env={**environment, **(env or {})},
        )
        run = Launched(process, port, out, err)
        try:
            deadline = time.monotonic() + DEADLINE
            while port and not is_listening(port):
                if not run.alive():
                    pytest.fail(f"{command} exited before listening: {run.finish()}")
                assert time.monotonic() < deadline, f"nothing listens on port {port}"
                time.sleep(0.01)
            yield run
        finally:
            if run.alive():
                process.kill()
            process.wait(timeout=DEADLINE)


@contextmanager
def server(
    program: Path, *args: str, name: str = "LISTEN", env: Mapping[str, str] | None = None
) -> Iterator[Launched]:
    """PROGRAM serving on a fresh loopback port, its socket named NAME."""
    port = free_port()
    command = launcher_command([f"--listen={name}={HOST}:{port}"], program, *args)
    with launched(command, port=port, env=env) as run:
        yield run


def run_launcher(sockets: list[str], program: Path | str, *args: str) -> tuple[int, str, str]:
    with launched(launcher_command(sockets, program, *args)) as run:
        return run.finish()


def receive_all(sock: socket.socket) -> bytes:
    """Everything until the peer closes."""
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset instead of a FIN: a client that vanishes."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# ---- tcp-echo ----------------------------------------------------------------


async def echo_once(port: int, data: bytes, chunk: int) -> bytes:
    """Send DATA in CHUNK-sized writes, then half-close; what comes back."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:

        async def send() -> None:
            for start in range(0, len(data), chunk):
                writer.write(data[start : start + chunk])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        received = await reader.read()
        await sender
        return received
    finally:
        writer.close()
        await writer.wait_closed()


def echo_concurrently(port: int, payloads: list[bytes]) -> list[bytes]:
    """All PAYLOADS echoed at once, each on its own connection."""

    async def everyone() -> list[bytes]:
        clients = (echo_once(port, data, random.randint(1, 64 * 1024)) for data in payloads)
        return list(await asyncio.wait_for(asyncio.gather(*clients), DEADLINE))

    return asyncio.run(everyone())


def random_payloads(count: int, largest: int) -> list[bytes]:
    return [random.randbytes(random.randint(1, largest)) for _ in range(count)]


def test_echo_serves_50_clients_at_once(native: dict[str, Path]) -> None:
    payloads = random_payloads(50, 256 * 1024)
    with server(native["tcp-echo"], "--max-connections", "50") as echo:
        assert echo_concurrently(echo.port, payloads) == payloads
        status, out, err = echo.finish()
    assert (status, out, err) == (0, "", "")  # quiet without ECHO_VERBOSE


def test_echo_finds_its_socket_by_the_name_given(native: dict[str, Path]) -> None:
    with server(native["tcp-echo"], "ECHO", "--max-connections", "1", name="ECHO") as echo:
        assert echo_concurrently(echo.port, [b"named\n"]) == [b"named\n"]
        assert echo.finish()[0] == 0


def fill_without_reading(sock: socket.socket) -> bytes:
    """Send until the connection takes no more (the server has stopped reading
    and every buffer on the way is full); what was sent."""
    sock.setblocking(False)
    sent = bytearray()
    block = random.randbytes(64 * 1024)
    while select.select([], [sock], [], 0.3)[1]:
        try:
            sent += block[: sock.send(block)]
        except BlockingIOError:
            continue
    sock.setblocking(True)
    return bytes(sent)


def test_echo_survives_misbehaving_clients(native: dict[str, Path]) -> None:
    good = random_payloads(10, 128 * 1024)
    connections = len(good) + 4
    with server(
        native["tcp-echo"], "--max-connections", str(connections), env={"ECHO_VERBOSE": "1"}
    ) as echo:
        # A client that sends garbage and vanishes (reset) without reading it back.
        garbage = echo.connect()
        garbage.sendall(random.randbytes(300_000))
        reset(garbage)
        # One that closes in the middle of a message, its echo still pending.
        halfway = echo.connect()
        halfway.sendall(b"GET / HTTP/1.1\r\nHost: exam")
        halfway.close()
        # One that connects and says nothing, and one that sends and never reads.
        with echo.connect() as silent, echo.connect() as stalled:
            stalled_sent = fill_without_reading(stalled)
            assert len(stalled_sent) > MAX_PENDING
            # Everyone else is served meanwhile.
            assert echo_concurrently(echo.port, good) == good
            assert echo.alive()
            # The stalled client reads at last: nothing it sent was lost.
            stalled.shutdown(socket.SHUT_WR)
            assert receive_all(stalled) == stalled_sent
            silent.shutdown(socket.SHUT_WR)
            assert receive_all(silent) == b""
        status, _, log = echo.finish()
    assert status == 0, log
    assert log.count(": connected") == connections
    assert log.count(": closed") == connections
    assert f"served {connections} connections" in log


def connect_when_served(echo: Launched) -> socket.socket:
    """A client the server keeps: until it has seen a place come free, it
    refuses (accepts and closes) newcomers."""
    deadline = time.monotonic() + DEADLINE
    while True:
        client = echo.connect()
        try:
            client.sendall(b"in\n")
            if client.recv(10) == b"in\n":
                return client
        except ConnectionResetError:
            pass
        client.close()
        assert time.monotonic() < deadline, "no place came free"
        time.sleep(0.01)


def test_echo_refuses_clients_beyond_1024(native: dict[str, Path]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * MAX_CLIENTS + 100  # this test's clients and the server's sockets
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {wanted}: cannot open 1024 clients")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    clients: list[socket.socket] = []
    try:
        with server(native["tcp-echo"], "--max-connections", str(MAX_CLIENTS + 1)) as echo:
            clients = [echo.connect() for _ in range(MAX_CLIENTS)]
            clients[-1].sendall(b"last\n")  # all 1024 accepted once this comes back
            assert clients[-1].recv(10) == b"last\n"
            with echo.connect() as refused:
                assert receive_all(refused) == b""  # accepted and closed at once
            clients.pop(0).close()  # a place comes free
            clients.append(connect_when_served(echo))
            for client in clients:
                client.shutdown(socket.SHUT_WR)
            assert all(receive_all(client) == b"" for client in clients)
            for client in clients:
                client.close()
            assert echo.finish()[0] == 0
    finally:
        for client in clients:
            client.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_echo_out_of_fds_waits_without_spinning(native: dict[str, Path]) -> None:
    # With 12 fds the server holds 0-3 and 8 clients; the next ones wait in
    # the backlog (accept fails with EMFILE) until a place comes free.
    port = free_port()
    limited = [
        sys.executable,
        "-c",
        "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (12, 12)); "
        "os.execv(sys.argv[1], sys.argv[1:])",
        *launcher_command([f"--listen=LISTEN={HOST}:{port}"], native["tcp-echo"]),
    ]
    with launched(limited, port=port) as echo:
        first = [echo.connect() for _ in range(8)]
        waiting = [echo.connect() for _ in range(4)]
        for client in (*first, *waiting):
            client.sendall(b"x")
        for client in first:
            assert client.recv(1) == b"x"
        before = cpu_seconds(echo.process.pid)
        time.sleep(0.5)
        assert cpu_seconds(echo.process.pid) - before < 0.2  # retries, does not spin
        for client in waiting:
            assert select.select([client], [], [], 0.05)[0] == []  # not served yet
        for client in first:
            client.close()
        for client in waiting:
            assert client.recv(1) == b"x"
            client.close()
        assert echo.alive()


@pytest.mark.parametrize("program", ["tcp-echo", "http-hello"])
def test_server_without_its_socket_exits_1(native: dict[str, Path], program: str) -> None:
    status, _, err = run_launcher([], native[program])
    assert status == 1
    assert "no socket named LISTEN in FD_NAMES" in err


@pytest.mark.parametrize(
    ("program", "args"),
    [
        ("tcp-echo", ["--max-connections", "0"]),
        ("tcp-echo", ["--max-connections"]),
        ("tcp-echo", ["A", "B"]),
        ("http-hello", ["--max-requests", "-3"]),
        ("http-hello", ["--verbose"]),
        ("http-client", ["SERVER", "/a path"]),
        ("http-client", ["SERVER", "/", "evil\r\nX-Injected: 1"]),
    ],
)
def test_bad_usage_exits_2(native: dict[str, Path], program: str, args: list[str]) -> None:
    status, _, err = run_launcher([], native[program], *args)
    assert status == 2
    assert "usage" in err or "wants a positive number" in err


# ---- http-hello --------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_responses(data: bytes, methods: list[str]) -> list[Response]:
    """Split DATA into one response per request method (a HEAD response has
    no body, whatever its Content-Length says)."""
    responses = []
    for method in methods:
        head, separator, data = data.partition(b"\r\n\r\n")
        assert separator, f"incomplete response head: {head!r}"
        status_line, *lines = head.decode("ascii").split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        headers = {}
        for line in lines:
            name, value = line.split(":", 1)
            headers[name.lower()] = value.strip()
        length = 0 if method == "HEAD" else int(headers["content-length"])
        responses.append(Response(int(status), headers, data[:length]))
        data = data[length:]
    assert data == b"", f"unexpected bytes after the responses: {data[:100]!r}"
    return responses


def exchange(port: int, requests: bytes, methods: list[str]) -> list[Response]:
    """Send REQUESTS at once on one connection, read until the server closes."""
    with socket.create_connection((HOST, port), timeout=DEADLINE) as sock:
        sock.sendall(requests)
        return parse_responses(receive_all(sock), methods)


def curl(*args: str) -> str:
    found = shutil.which("curl")
    assert found, "curl is needed (Debian: apt-get install curl)"
    done = subprocess.run(
        [found, "--silent", "--show-error", "--max-time", str(DEADLINE), *args],
        capture_output=True,
        timeout=DEADLINE + 5,
        check=True,
    )
    return done.stdout.decode()


def test_hello_answers_curl_with_keep_alive(native: dict[str, Path]) -> None:
    with server(native["http-hello"], "--max-requests", "6") as hello:
        url = f"http://{HOST}:{hello.port}"
        for path in ("/", "/index.html", "/a/b?c=d"):
            assert curl(url + path) == HELLO.decode()
        full = curl("--include", url + "/")
        head, _, body = full.partition("\r\n\r\n")
        assert body == HELLO.decode()
        assert head.startswith("HTTP/1.1 200 OK\r\n")
        assert "Content-Type: text/plain\r\n" in head + "\r\n"
        assert f"Content-Length: {len(HELLO)}" in head
        # Two URLs, one connection: the second transfer makes no new connect.
        # (Those are requests 5 and 6 of 6, so the server exits after them.)
        hello_again = curl("--write-out", "[%{num_connects}]", url + "/1", url + "/2")
        assert hello_again == HELLO.decode() + "[1]" + HELLO.decode() + "[0]"
        assert hello.finish()[0] == 0


def test_hello_serves_pipelined_requests_get_and_head(native: dict[str, Path]) -> None:
    requests = (
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n"
        b"\r\n"  # RFC 9112, 2.2: an empty line before a request is ignored
        b"GET /y HTTP/1.1\nHost: a\n\n"  # bare LF line ends are accepted
        b"GET /z HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    with server(native["http-hello"]) as hello:
        first, head, third, last = exchange(hello.port, requests, ["GET", "HEAD", "GET", "GET"])
    for response in (first, head, third, last):
        assert response.status == 200
        assert response.headers["content-type"] == "text/plain"
        assert response.headers["content-length"] == str(len(HELLO))
    assert (first.body, head.body, third.body, last.body) == (HELLO, b"", HELLO, HELLO)
    assert "connection" not in first.headers
    assert last.headers["connection"] == "close"


def test_hello_http10_closes_unless_asked_to_keep_alive(native: dict[str, Path]) -> None:
    with server(native["http-hello"]) as hello:
        (plain,) = exchange(hello.port, b"GET / HTTP/1.0\r\n\r\n", ["GET"])
        assert plain.headers["connection"] == "close"
        with hello.connect() as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            kept = sock.recv(4096)
            assert b"\r\nConnection: keep-alive\r\n" in kept
            assert kept.endswith(HELLO)
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")  # no keep-alive this time
            (closing,) = parse_responses(receive_all(sock), ["GET"])
            assert closing.headers["connection"] == "close"


@pytest.mark.parametrize(
    ("requests", "statuses", "closed_by_server"),
    [
        (b"BREW /pot HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", [405, 200], False),
        # A body announced by Content-Length is skipped, the connection kept.
        (
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n",
            [405, 200],
            False,
        ),
        (b"DELETE / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", [405], True),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n", [200], False),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", [431], True),
        (b"GET /\r\n\r\n", [400], True),
        (b"GET / HTTP/2.0\r\n\r\n", [400], True),
        (b"GET  / HTTP/1.1\r\n\r\n", [400], True),
        (b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", [400], True),
        (b"GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", [400], True),
        (b"\x00\xff\xfe garbage \x01\r\n\r\nGET / HTTP/1.1\r\n\r\n", [400], True),
    ],
    ids=[
        "other-method",
        "post-body-skipped",
        "chunked-closes",
        "8000-byte-head",
        "9000-byte-head",
        "http-0.9",
        "http-2.0",
        "double-space",
        "bad-header",
        "bad-length",
        "binary-garbage",
    ],
)
def test_hello_rejects_what_it_does_not_serve(
    native: dict[str, Path], requests: bytes, statuses: list[int], closed_by_server: bool
) -> None:
    with server(native["http-hello"]) as hello, hello.connect() as sock:
        sock.sendall(requests)
        if not closed_by_server:
            sock.sendall(b"GET /end HTTP/1.1\r\nConnection: close\r\n\r\n")
            statuses = [*statuses, 200]
        responses = parse_responses(receive_all(sock), ["GET"] * len(statuses))
        assert [response.status for response in responses] == statuses
        assert responses[-1].headers["connection"] == "close"
        for response in responses:
            if response.status == 405:
                assert response.headers["allow"] == "GET, HEAD"
        assert hello.alive()


async def keep_alive_client(port: int, requests: int) -> list[bytes]:
    """REQUESTS on one connection, one at a time (every third one pipelined
    with the next); the bodies."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        bodies = []
        pending = 0
        for number in range(requests):
            writer.write(b"GET /%d HTTP/1.1\r\nHost: test\r\n\r\n" % number)
            pending += 1
            if number % 3 == 0 and number + 1 < requests:
                continue
            await writer.drain()
            for _ in range(pending):
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                bodies.append(await reader.readexactly(length))
            pending = 0
        return bodies
    finally:
        writer.close()
        await writer.wait_closed()


def test_hello_serves_many_clients_while_others_stall(native: dict[str, Path]) -> None:
    clients, each = 50, 20
    with server(native["http-hello"], "--max-requests", str(clients * each + 1)) as hello:
        with hello.connect() as stalled, hello.connect() as trickle:
            stalled.sendall(b"GET / HTTP/1.1\r\nHost: never-fini")
            for byte in b"GET /slow HTTP/1.1\r\n":
                trickle.send(bytes([byte]))

            async def everyone() -> list[list[bytes]]:
                runs = (keep_alive_client(hello.port, each) for _ in range(clients))
                return list(await asyncio.wait_for(asyncio.gather(*runs), DEADLINE))

            assert asyncio.run(everyone()) == [[HELLO] * each] * clients
            trickle.sendall(b"\r\n")
            (last,) = parse_responses(receive_all(trickle), ["GET"])
            assert last.headers["connection"] == "close"  # response 1001 of 1001
            assert receive_all(stalled) == b""  # closed as the server stops
        assert hello.finish()[0] == 0


# ---- http-client -------------------------------------------------------------


class RecordingHandler(BaseHTTPRequestHandler):
    seen: list[tuple[str, dict[str, str]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, dict(self.headers.items())))
        body = b"from http.server\n" * 1000
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def http_server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer((HOST, 0), RecordingHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(DEADLINE)


def test_client_fetches_from_http_server(native: dict[str, Path]) -> None:
    RecordingHandler.seen.clear()
    with http_server() as httpd:
        port = httpd.server_address[1]
        status, out, err = run_launcher(
            [f"--connect=WEB={HOST}:{port}"], native["http-client"], "WEB", "/a/b?c=d", "ex.test"
        )
    assert (status, err) == (0, "")
    head, _, body = out.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.0 200 OK\r\n")
    assert body == "from http.server\n" * 1000
    ((path, headers),) = RecordingHandler.seen
    assert path == "/a/b?c=d"
    assert headers["Host"] == "ex.test"
    assert headers["Connection"] == "close"


def test_client_fetches_from_http_hello(native: dict[str, Path]) -> None:
    with server(native["http-hello"], "--max-requests", "1") as hello:
        status, out, err = run_launcher(
            [f"--connect=SERVER={HOST}:{hello.port}"], native["http-client"]
        )
        assert hello.finish()[0] == 0
    assert (status, err) == (0, "")
    assert out.startswith("HTTP/1.1 200 OK\r\n")
    assert out.endswith("\r\nConnection: close\r\n\r\n" + HELLO.decode())


def test_client_reports_a_reset_connection(native: dict[str, Path]) -> None:
    with socket.create_server((HOST, 0)) as listener:
        port = listener.getsockname()[1]
        listener.settimeout(DEADLINE)

        def reset_first_client() -> None:
            client, _ = listener.accept()
            client.recv(1)  # once the request is on its way
            reset(client)

        resetter = threading.Thread(target=reset_first_client)
        resetter.start()
        status, out, err = run_launcher([f"--connect=SERVER={HOST}:{port}"], native["http-client"])
        resetter.join(DEADLINE)
    assert (status, out) == (1, "")
    assert err == "http-client: reading the response from SERVER failed: Connection reset by peer\n"


def test_client_without_its_socket_exits_1(native: dict[str, Path]) -> None:
    status, out, err = run_launcher([], native["http-client"])
    assert (status, out) == (1, "")
    assert "no socket named SERVER in FD_NAMES" in err


# ---- native_launcher.py ------------------------------------------------------

REPORT_FDS = """
import fcntl, json, os, socket
fds = {}
for fd in range(3, 7):
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        fds[fd] = None
        continue
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    fds[fd] = {
        "listening": bool(listening),
        "port": sock.getsockname()[1] if listening else sock.getpeername()[1],
        "nonblocking": bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK),
    }
    sock.detach()
print(json.dumps({"count": os.environ["FD_COUNT"], "names": os.environ["FD_NAMES"], "fds": fds}))
"""


def test_launcher_places_sockets_in_command_line_order() -> None:
    first, last = free_port(), free_port()
    with socket.create_server((HOST, 0)) as target:
        middle = target.getsockname()[1]
        status, out, err = run_launcher(
            [
                f"--listen=A={HOST}:{first}",
                f"--connect=B={HOST}:{middle}",
                f"--listen=C={HOST}:{last}",
            ],
            sys.executable,
            "-c",
            REPORT_FDS,
        )
    assert (status, err) == (0, "")
    report = json.loads(out)
    assert report["count"] == "6"
    assert report["names"] == "stdin:stdout:stderr:A:B:C"
    assert report["fds"] == {
        "3": {"listening": True, "port": first, "nonblocking": False},
        "4": {"listening": False, "port": middle, "nonblocking": False},
        "5": {"listening": True, "port": last, "nonblocking": False},
        "6": None,
    }


def test_launcher_passes_on_the_exit_status() -> None:
    assert run_launcher([], sys.executable, "-c", "raise SystemExit(7)")[0] == 7


@pytest.mark.parametrize(
    ("sockets", "program", "status", "message"),
    [
        (["--listen=L=127.0.0.1"], sys.executable, 2, "is not NAME=HOST:PORT"),
        (["--listen=A:B=127.0.0.1:1"], sys.executable, 2, "bad name"),
        (["--connect=X=127.0.0.1:0"], sys.executable, 2, "not in 1-65535"),
        (["--listen=stdin=127.0.0.1:1"], sys.executable, 2, "names must be unique"),
        (["--connect=S=127.0.0.1:{closed}"], sys.executable, 1, "cannot connect S"),
        ([], "/nonexistent/program", 127, "cannot run /nonexistent/program"),
    ],
)
def test_launcher_errors(sockets: list[str], program: str, status: int, message: str) -> None:
    closed = free_port()  # nothing listens there
    sockets = [spec.format(closed=closed) for spec in sockets]
    result = run_launcher(sockets, program, "-c", "pass")
    assert result[0] == status
    assert message in result[2]


# ---- the wasm builds ---------------------------------------------------------


@pytest.mark.parametrize("program", PROGRAMS)
def test_wasm_build_compiles_and_says_what_is_missing(example: Build, program: str) -> None:
    module = example(program)  # clang --target=wasm32-wasi -O2 -Wall -Wextra -Werror
    name = "SERVER" if program == "http-client" else "LISTEN"
    done = run_wasmkeep(["run", "--backend", "nil", str(module)])
    assert done.returncode == 1
    assert f"no socket named {name} in FD_NAMES" in done.stderr.decode()
