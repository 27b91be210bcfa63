"""Network benchmark: wasmkeep's keeps against a native or plain-Python
baseline, side by side in the same run, reported as ratios.

A measurement, not a test: it exits non-zero only when a contender fails or
echoes wrong data, never because a target is missed.

What is measured (`--only` takes these names):

* `tls_echo`: bulk throughput of a TLS echo server, 64 KiB messages. The
  baseline is a Python `ssl` echo server (a thread per connection, TLS 1.3,
  an ECDSA P-256 certificate made here); against it, `examples/tcp-echo` in a
  process keep and on nil with `prot = "tls"` (TLS terminated inside the keep).
* `tcp_echo`: the same over plain TCP: the native tcp-echo (gcc) against the
  same wasm in the two keeps with `prot = "tcp"`. For reference: what the
  keeps cost without TLS.
* `https_hello`: requests per second of `examples/http-hello` over TLS with
  keep-alive. The baseline is the native http-hello behind a TLS terminator
  (a small asyncio proxy, Python `ssl`); against it, http-hello in the two
  keeps with `prot = "tls"`. The native server on plain HTTP is shown too, as
  a reference for what the TLS terminator costs.

How it measures:

1. Build `examples/{tcp-echo,http-hello}` into `benchmarks/build/` (clang,
   wasm32-wasi; gcc), with `run.py`'s compilers, flags and rule for when to
   rebuild.
2. Start every contender's server (they stay up for the whole benchmark),
   each on a free loopback port, in its own process group; wait until its port is in LISTEN state in
   /proc/net/tcp (so no connection is spent on asking) and, for a keep with
   TLS, until the keep has written its certificate (`--cert-out`).
3. Warm up and verify: one short run per contender, untimed. An echo client
   compares every byte that comes back with what it sent; before the HTTP
   load, a check asks for `/` twice on one TLS connection and expects the
   hello text both times.
4. Measure: `--repeat` rounds, each running every contender once, the first
   contender rotating from round to round (as `run.py` does). Clients are
   processes of their own, so no client shares a GIL with a server: an echo
   client (this script, `--role echo-client`) sends the data in 64 KiB
   messages keeping up to 4 in flight, verifies the echo as it comes and
   acknowledges at once (TCP_QUICKACK, against Nagle's 40 ms stall); the
   HTTP load is `wrk`, or without it load processes of this script.
   Throughput is bytes over the time from the first byte sent to the last
   echoed byte verified (TLS handshake excluded); the rate is wrk's
   requests/sec.
5. Report medians with min and max, ratios to the baseline (contender /
   baseline: 1.00x or more is as fast or faster), the CPU the server and the
   client used during the timed runs (in cores: CPU seconds over wall
   seconds), and whether the issue's target is met.
6. Stop every server: echo servers exit by themselves after the connections
   they were told to serve (a check that each was served to the end); the
   HTTP servers get SIGTERM. On Ctrl-C or SIGTERM all of them are stopped.

Usage: .venv/bin/python benchmarks/network.py [--repeat N] [--only NAME,...]
           [--quick] [--load auto|wrk|python] [--json FILE] [--markdown]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime
import http.client
import ipaddress
import json
import os
import random
import re
import resource
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from _harness import (
    Context,
    Layout,
    Section,
    SetupError,
    add_output_options,
    add_run_options,
    base_context,
    finish,
    format_bytes,
    format_ratio,
    interleaved,
    parse_checked,
    progress,
    render_report,
    select,
    setup_failed,
    spread,
    write_json,
)
from run import BUILD, build_all, compiler_versions, find_wasmkeep

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
LAUNCHER = EXAMPLES / "native_launcher.py"
LOOPBACK = "127.0.0.1"

#: Size of one echo message, sent and verified as a unit.
MESSAGE_BYTES = 64 * 1024
#: Echo messages a client keeps in flight: enough to keep a server busy
#: while the client verifies, few enough to fit in the sockets' buffers.
WINDOW_MESSAGES = 4
#: Distinct message bodies; each message also carries its index.
DISTINCT_MESSAGES = 16
#: The warm-up of an echo contender: untimed, but verified like any run.
WARM_UP_ECHO_BYTES = 4 * MESSAGE_BYTES
WARM_UP_HTTP_SECONDS = 2
#: A server must listen within this long (a process keep compiles first).
START_TIMEOUT_SECONDS = 60.0
#: No progress on a connection for this long fails the run.
IO_TIMEOUT_SECONDS = 60.0
#: An echo server must exit this long after its last connection.
EXIT_TIMEOUT_SECONDS = 15.0
#: After SIGTERM, a server gets this long before SIGKILL.
STOP_GRACE_SECONDS = 5.0
#: What http-hello answers to GET (examples/http-hello/http-hello.c).
HELLO_BODY = b"Hello from inside a keep!\n"
#: Load processes when wrk is missing, and the connections wrk and they open.
HTTP_CONNECTIONS = 16
HTTP_THREADS = 2
TCP_LISTEN = "0A"  # the LISTEN state in /proc/net/tcp

Unit = Literal["MB/s", "req/s"]
LoadTool = Literal["wrk", "python"]


class RunFailed(Exception):
    """A client failed, timed out or got wrong data back; or a server died."""


# --- What is measured ----------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How long each benchmark runs; `--quick` swaps in smaller ones."""

    echo_bytes: int
    http_seconds: int


FULL = Sizes(echo_bytes=256 << 20, http_seconds=10)
QUICK = Sizes(echo_bytes=16 << 20, http_seconds=3)

BASELINE_TLS_ECHO = "python ssl"
BASELINE_TCP_ECHO = "native"
BASELINE_HTTPS = "native + python TLS proxy"
REFERENCE_HTTP = "native, plain HTTP (reference)"
KEEP_PROCESS = "wasmkeep process"
KEEP_NIL = "wasmkeep nil"
Backend = Literal["process", "nil"]


@dataclass(frozen=True)
class Target:
    """The issue's goal: `contender` reaches at least `min_ratio` times the baseline."""

    contender: str
    min_ratio: float

    def describe(self) -> str:
        return f"{self.contender} >= {self.min_ratio:.2f}x baseline"


@dataclass(frozen=True)
class Benchmark:
    name: str
    summary: str
    unit: Unit
    baseline: str
    target: Target | None = None


def benchmarks(sizes: Sizes) -> list[Benchmark]:
    size = format_bytes(sizes.echo_bytes)
    message = format_bytes(MESSAGE_BYTES)
    return [
        Benchmark(
            "tls_echo",
            f"TLS echo of {size} in {message} messages, {WINDOW_MESSAGES} in flight",
            "MB/s",
            BASELINE_TLS_ECHO,
            Target(KEEP_PROCESS, 0.5),
        ),
        Benchmark(
            "tcp_echo",
            f"plain TCP echo of {size} in {message} messages, {WINDOW_MESSAGES} in flight",
            "MB/s",
            BASELINE_TCP_ECHO,
        ),
        Benchmark(
            "https_hello",
            f"HTTPS GET / with keep-alive, {HTTP_CONNECTIONS} connections, "
            f"{sizes.http_seconds} s per run",
            "req/s",
            BASELINE_HTTPS,
        ),
    ]


# --- The servers ------------------------------------------------------------------


@dataclass(frozen=True)
class ServerProcess:
    """One server process to start; it listens on `port` once ready."""

    argv: tuple[str, ...]
    port: int
    #: It exits 0 by itself after the connections it was told to serve.
    exits_by_itself: bool = False


@dataclass(frozen=True)
class Contender:
    """A server set-up that clients connect to at `port`."""

    name: str
    processes: tuple[ServerProcess, ...]
    port: int
    #: The certificate to trust, None for plain TCP. Written by the benchmark,
    #: or by the keep itself (`--cert-out`) once it has made its key.
    cert: Path | None


class Workspace:
    """A temporary directory for configs, certificates and server logs."""

    def __init__(self, root: Path, wasmkeep: Path) -> None:
        self.root = root
        self.wasmkeep = wasmkeep
        self._count = 0
        self.cert, self.key = self._credentials()

    def path(self, stem: str, suffix: str) -> Path:
        self._count += 1
        return self.root / f"{self._count:02d}-{stem}{suffix}"

    def _credentials(self) -> tuple[Path, Path]:
        """A self-signed ECDSA P-256 certificate for the Python servers,
        made like the keep's (keep/tls.py): the same curve and signature."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "network benchmark")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        cert = self.root / "baseline.pem"
        cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path = self.root / "baseline.key"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert, key_path

    def keep(
        self, name: str, backend: Backend, module: str, prot: str, port: int, args: Sequence[str]
    ) -> Contender:
        """`wasmkeep run` serving a listen socket LISTEN on `port`."""
        config = self.path(f"{module}-{backend}-{prot}", ".toml")
        config.write_text(
            "".join(f'[[files]]\nkind = "{kind}"\n\n' for kind in ("stdin", "stdout", "stderr"))
            + f'[[files]]\nkind = "listen"\nname = "LISTEN"\nprot = "{prot}"\n'
            f'addr = "{LOOPBACK}"\nport = {port}\n'
        )
        cert = self.path(f"{module}-{backend}", ".pem") if prot == "tls" else None
        argv = [str(self.wasmkeep), "run", "--backend", backend, "--config", str(config)]
        if cert is not None:
            argv += ["--cert-out", str(cert)]
        argv += [str(BUILD / f"{module}.wasm"), *args]
        exits = "--max-connections" in args
        return Contender(name, (ServerProcess(tuple(argv), port, exits),), port, cert)

    @staticmethod
    def native(module: str, port: int, args: Sequence[str]) -> ServerProcess:
        """The gcc build, given its socket by native_launcher.py as a keep would."""
        argv = (
            sys.executable,
            str(LAUNCHER),
            "--listen",
            f"LISTEN={LOOPBACK}:{port}",
            "--",
            str(BUILD / module),
            *args,
        )
        return ServerProcess(argv, port, "--max-connections" in args)

    @staticmethod
    def role(role: str, port: int, *args: str, exits: bool = False) -> ServerProcess:
        """This script in one of its server roles."""
        return ServerProcess(tuple(role_argv(role, *args)), port, exits)


def free_ports(count: int) -> list[int]:
    """Loopback ports free right now (held together, so all different)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in socks]


def contenders_for(bench: Benchmark, ws: Workspace, connections: int) -> list[Contender]:
    """The contenders of one benchmark, baseline first. `connections` is how
    many connections each echo server serves before it exits."""
    serve = ("--max-connections", str(connections))
    if bench.name == "tls_echo":
        base, proc, nil = free_ports(3)
        baseline = ws.role(
            "echo-server", base, str(base), str(ws.cert), str(ws.key), str(connections), exits=True
        )
        return [
            Contender(BASELINE_TLS_ECHO, (baseline,), base, ws.cert),
            ws.keep(KEEP_PROCESS, "process", "tcp-echo", "tls", proc, serve),
            ws.keep(KEEP_NIL, "nil", "tcp-echo", "tls", nil, serve),
        ]
    if bench.name == "tcp_echo":
        base, proc, nil = free_ports(3)
        native = ws.native("tcp-echo", base, serve)
        return [
            Contender(BASELINE_TCP_ECHO, (native,), base, None),
            ws.keep(KEEP_PROCESS, "process", "tcp-echo", "tcp", proc, serve),
            ws.keep(KEEP_NIL, "nil", "tcp-echo", "tcp", nil, serve),
        ]
    assert bench.name == "https_hello"
    upstream, base, plain, proc, nil = free_ports(5)
    proxy = ws.role("tls-proxy", base, str(base), str(ws.cert), str(ws.key), str(upstream))
    return [
        Contender(BASELINE_HTTPS, (ws.native("http-hello", upstream, []), proxy), base, ws.cert),
        ws.keep(KEEP_PROCESS, "process", "http-hello", "tls", proc, []),
        ws.keep(KEEP_NIL, "nil", "http-hello", "tls", nil, []),
        Contender(REFERENCE_HTTP, (ws.native("http-hello", plain, []),), plain, None),
    ]


# --- Starting and stopping servers --------------------------------------------------


def listening(port: int) -> bool:
    """Whether a TCP socket is in LISTEN state on `port` (IPv4). A keep's
    listener is opened by its host, so it shows in this network namespace."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if state == TCP_LISTEN and int(local.rpartition(":")[2], 16) == port:
            return True
    return False


def certificate_ready(path: Path) -> bool:
    """The PEM file is all there (a keep writes it once it has made its key)."""
    try:
        return path.read_bytes().rstrip().endswith(b"-----END CERTIFICATE-----")
    except FileNotFoundError:
        return False


_PR_SET_PDEATHSIG = 1


def _die_with_benchmark() -> None:
    """In the child before exec: SIGTERM it when the benchmark dies, even by
    SIGKILL, so that no server outlives a run (native_launcher.py execs, and
    the signal setting survives exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Started:
    spec: ServerProcess
    process: subprocess.Popen[bytes]
    log: Path


class ServerGroup:
    """Every server of one benchmark: started in their own process groups,
    stopped when the `with` block ends, however it ends."""

    def __init__(self, ws: Workspace) -> None:
        self._ws = ws
        self._started: dict[str, list[Started]] = {}

    def __enter__(self) -> ServerGroup:
        return self

    def __exit__(self, *_: object) -> None:
        for name in list(self._started):
            self.stop(name)

    def start(self, contender: Contender) -> None:
        """Start the contender's processes in order, each once the previous
        one listens; RunFailed if one dies or does not listen in time."""
        started = self._started.setdefault(contender.name, [])
        for spec in contender.processes:
            log = self._ws.path(re.sub(r"\W+", "-", contender.name), ".log")
            with log.open("wb") as stderr:
                process = subprocess.Popen(
                    spec.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=stderr,
                    stderr=stderr,
                    start_new_session=True,
                    preexec_fn=_die_with_benchmark,  # noqa: PLW1509 (no threads in this process)
                )
            started.append(Started(spec, process, log))
            self._wait_until(partial(listening, spec.port), started[-1], "listening")
        if contender.cert is not None and contender.cert != self._ws.cert:
            cert_written = partial(certificate_ready, contender.cert)
            self._wait_until(cert_written, started[-1], "writing its certificate")

    @staticmethod
    def _wait_until(ready: Callable[[], bool], server: Started, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not ready():
            status = server.process.poll()
            if status is not None:
                raise RunFailed(f"exited with status {status} before {what}: {log_tail(server)}")
            if time.monotonic() > deadline:
                raise RunFailed(f"not {what} after {START_TIMEOUT_SECONDS:.0f} s")
            time.sleep(0.02)

    def pids(self, name: str) -> list[int]:
        return [server.process.pid for server in self._started.get(name, [])]

    def check_alive(self, name: str) -> None:
        """RunFailed if a server that should still run has exited (an echo
        server may have exited after its last connection, as told)."""
        for server in self._started.get(name, []):
            status = server.process.poll()
            if status is not None and not server.spec.exits_by_itself:
                raise RunFailed(f"server exited with status {status}: {log_tail(server)}")

    def finish(self, name: str) -> list[str]:
        """End a contender that took part to the end: echo servers must exit 0
        by themselves, the others must still be running (then get SIGTERM).
        Returns what went wrong."""
        problems = []
        for server in self._started.get(name, []):
            status = server.process.poll()
            if server.spec.exits_by_itself:
                try:
                    status = server.process.wait(timeout=EXIT_TIMEOUT_SECONDS)
                except subprocess.TimeoutExpired:
                    problems.append(
                        f"{name}: the server did not exit {EXIT_TIMEOUT_SECONDS:.0f} s after "
                        "its last connection"
                    )
                    continue
                if status != 0:
                    problems.append(f"{name}: the server exited with status {status}")
            elif status is not None:
                problems.append(f"{name}: the server exited early, status {status}")
            if status not in (0, None):
                problems[-1] += f": {log_tail(server)}"
        self.stop(name)
        return problems

    def stop(self, name: str) -> None:
        """SIGTERM to each process group, SIGKILL after a grace period."""
        for server in reversed(self._started.pop(name, [])):
            group = server.process.pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
            try:
                server.process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                progress(f"{name}: server {group} ignored SIGTERM; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            server.process.wait()


def log_tail(server: Started) -> str:
    try:
        lines = server.log.read_text(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    return " / ".join(lines[-3:]) or "(nothing on stderr)"


# --- CPU use ------------------------------------------------------------------------


def tree_cpu(roots: Sequence[int]) -> dict[str, float]:
    """CPU seconds used so far by the threads of the processes under `roots`
    (from schedstat, in nanoseconds, where /proc/PID/stat counts 10 ms
    ticks), summed by what they are: a process keep shows as its host
    ("host") and the keep's own processes ("keep"). Threads that have ended
    are not counted: none ends during a timed run here."""
    used: dict[str, float] = {}
    todo = list(roots)
    while todo:
        pid = todo.pop()
        nanoseconds = 0
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            for task in Path(f"/proc/{pid}/task").iterdir():
                nanoseconds += int((task / "schedstat").read_text().split()[0])
                todo += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile
        label = process_label(argv)
        used[label] = used.get(label, 0.0) + nanoseconds / 1e9
    return used


def process_label(argv: list[bytes]) -> str:
    if b"wasmkeep.keep" in argv:
        return "keep"
    if b"--role" in argv:
        return argv[argv.index(b"--role") + 1].decode()
    if any(arg.endswith(b"/wasmkeep") for arg in argv):
        return "host"  # on nil, the keep too
    return Path(os.fsdecode(argv[0])).name


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {label: after[label] - before.get(label, 0.0) for label in after}


# --- Measuring ----------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One timed run: its rate and what it cost."""

    value: float  # MB/s or requests/s
    seconds: float
    client_cpu: float
    server_cpu: dict[str, float]


@dataclass
class BenchResult:
    bench: Benchmark
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def median(self, name: str) -> float | None:
        samples = self.samples.get(name)
        return statistics.median(s.value for s in samples) if samples else None

    def ratio(self, name: str) -> float | None:
        """The contender's median over the baseline's: 1.00x is as fast."""
        mine, theirs = self.median(name), self.median(self.bench.baseline)
        return None if mine is None or not theirs else mine / theirs


@dataclass(frozen=True)
class Load:
    """How clients are run: the HTTP load tool and the size of a run."""

    tool: LoadTool
    sizes: Sizes


def measure(bench: Benchmark, ws: Workspace, load: Load, repeat: int) -> BenchResult:
    """Start the servers, warm up and verify each, then time `repeat` rounds."""
    result = BenchResult(bench)
    everyone = contenders_for(bench, ws, connections=1 + repeat)
    with ServerGroup(ws) as servers:
        live: list[Contender] = []
        for contender in everyone:
            progress(f"{bench.name}: starting {contender.name}")
            try:
                servers.start(contender)
                progress(f"{bench.name}: warm-up {contender.name}")
                run_client(bench, contender, servers, load, warm_up=True)
            except RunFailed as error:
                result.problems.append(f"{contender.name} failed: {error}")
                servers.stop(contender.name)
                continue
            live.append(contender)
            result.samples[contender.name] = []
        for label, contender in interleaved(live, repeat):
            if contender.name in result.samples:
                time_one(bench, contender, servers, load, result, label)
        for contender in live:
            if contender.name in result.samples:
                result.problems += servers.finish(contender.name)
    return result


def time_one(
    bench: Benchmark,
    contender: Contender,
    servers: ServerGroup,
    load: Load,
    result: BenchResult,
    label: str,
) -> None:
    """One timed run; a failure takes the contender out of this benchmark."""
    try:
        sample = run_client(bench, contender, servers, load, warm_up=False)
    except RunFailed as error:
        result.problems.append(f"{contender.name} failed in run {label}: {error}")
        del result.samples[contender.name]
        servers.stop(contender.name)
        return
    result.samples[contender.name].append(sample)
    progress(
        f"{bench.name}: run {label} {contender.name}: {format_value(sample.value, bench.unit)}"
    )


def run_client(
    bench: Benchmark, contender: Contender, servers: ServerGroup, load: Load, *, warm_up: bool
) -> Sample:
    """One run of the benchmark's client against the contender."""
    servers.check_alive(contender.name)
    if bench.unit == "MB/s":
        size = WARM_UP_ECHO_BYTES if warm_up else load.sizes.echo_bytes
        sample = echo_run(contender, servers.pids(contender.name), size)
    else:
        if warm_up:
            check_http(contender)
        seconds = WARM_UP_HTTP_SECONDS if warm_up else load.sizes.http_seconds
        run = wrk_run if load.tool == "wrk" else python_load_run
        sample = run(contender, servers.pids(contender.name), seconds)
    servers.check_alive(contender.name)
    return sample


def role_argv(role: str, *args: str) -> list[str]:
    """This script as a client or server process (`--role NAME ARGS...`)."""
    return [sys.executable, str(Path(__file__).resolve()), "--role", role, *args]


def cert_arg(contender: Contender) -> str:
    return str(contender.cert) if contender.cert else "-"


def client_timeout(seconds: float) -> float:
    return seconds + START_TIMEOUT_SECONDS + IO_TIMEOUT_SECONDS


def echo_run(contender: Contender, server_pids: Sequence[int], size: int) -> Sample:
    """The echo client in its own process; it times and verifies itself."""
    argv = role_argv(
        "echo-client",
        str(contender.port),
        cert_arg(contender),
        str(size),
        ",".join(map(str, server_pids)),
    )
    report = run_role_client(argv, client_timeout(size / 1e6))  # no slower than 1 MB/s
    seconds = number(report, "seconds")
    return Sample(
        size / seconds / 1e6,
        seconds,
        number(report, "client_cpu"),
        parse_cpu(report.get("server_cpu")),
    )


def run_role_client(argv: list[str], timeout: float) -> dict[str, object]:
    """Run one client process; its report is one JSON object on stdout."""
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise RunFailed(f"the client did not finish in {timeout:.0f} s") from error
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RunFailed(" / ".join(tail) or f"the client exited with status {done.returncode}")
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = None
    if not isinstance(report, dict):
        raise RunFailed(f"the client printed no report: {done.stdout[:200]!r}")
    return report


def number(report: dict[str, object], key: str) -> float:
    value = report.get(key)
    if not isinstance(value, int | float):
        raise RunFailed(f"the client's report has no number {key!r}: {report}")
    return float(value)


def parse_cpu(value: object) -> dict[str, float]:
    if not isinstance(value, dict):
        raise RunFailed(f"the client's report has no server CPU: {value!r}")
    return {str(label): float(seconds) for label, seconds in value.items()}


def check_http(contender: Contender) -> None:
    """Two GETs on one connection (keep-alive), each answered with the hello text."""
    connection: http.client.HTTPConnection
    if contender.cert is not None:
        context = client_context(contender.cert)
        connection = http.client.HTTPSConnection(
            LOOPBACK, contender.port, timeout=IO_TIMEOUT_SECONDS, context=context
        )
    else:
        connection = http.client.HTTPConnection(
            LOOPBACK, contender.port, timeout=IO_TIMEOUT_SECONDS
        )
    try:
        for _ in range(2):
            connection.request("GET", "/")
            response = connection.getresponse()
            body = response.read()
            if response.status != 200 or body != HELLO_BODY:
                raise RunFailed(f"GET / answered {response.status} {body[:80]!r}")
    except (OSError, http.client.HTTPException) as error:
        raise RunFailed(f"GET / failed: {error}") from error
    finally:
        connection.close()


def url(contender: Contender) -> str:
    return f"{'https' if contender.cert else 'http'}://{LOOPBACK}:{contender.port}/"


_WRK_RATE = re.compile(rb"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_WRK_SOCKET_ERRORS = re.compile(
    rb"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
_WRK_NON_2XX = re.compile(rb"Non-2xx or 3xx responses: (\d+)")


def wrk_run(contender: Contender, server_pids: Sequence[int], seconds: int) -> Sample:
    argv = [
        "wrk",
        f"-t{HTTP_THREADS}",
        f"-c{HTTP_CONNECTIONS}",
        f"-d{seconds}s",
        f"--timeout={IO_TIMEOUT_SECONDS:.0f}s",
        url(contender),
    ]
    before_server = tree_cpu(server_pids)
    before_client = children_cpu()
    start = time.perf_counter()
    try:
        done = subprocess.run(
            argv, capture_output=True, timeout=client_timeout(seconds), check=False
        )
    except subprocess.TimeoutExpired as error:
        raise RunFailed(f"wrk did not finish in {client_timeout(seconds):.0f} s") from error
    wall = time.perf_counter() - start
    server = cpu_delta(before_server, tree_cpu(server_pids))
    client = children_cpu() - before_client
    rate = _WRK_RATE.search(done.stdout)
    if done.returncode != 0 or rate is None:
        output = (done.stdout + done.stderr).decode(errors="replace").strip()
        raise RunFailed(f"wrk failed (status {done.returncode}): {output[-300:]}")
    errors = _WRK_SOCKET_ERRORS.search(done.stdout)
    if errors is not None and any(int(count) for count in errors.groups()):
        raise RunFailed(errors.group(0).decode())
    non_2xx = _WRK_NON_2XX.search(done.stdout)
    if non_2xx is not None:
        raise RunFailed(non_2xx.group(0).decode())
    return Sample(float(rate.group(1)), wall, client, server)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def python_load_run(contender: Contender, server_pids: Sequence[int], seconds: int) -> Sample:
    """HTTP_THREADS load processes of this script, HTTP_CONNECTIONS in all."""
    per_process = HTTP_CONNECTIONS // HTTP_THREADS
    argv = role_argv(
        "http-load",
        str(contender.port),
        cert_arg(contender),
        str(per_process),
        str(seconds),
    )
    before_server = tree_cpu(server_pids)
    before_client = children_cpu()
    start = time.perf_counter()
    processes = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(HTTP_THREADS)
    ]
    reports = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=client_timeout(seconds))
            if process.returncode != 0:
                tail = err.decode(errors="replace").strip().splitlines()[-3:]
                raise RunFailed(" / ".join(tail) or f"load client status {process.returncode}")
            reports.append(json.loads(out))
    except subprocess.TimeoutExpired as error:
        raise RunFailed(f"the load did not finish in {client_timeout(seconds):.0f} s") from error
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    wall = time.perf_counter() - start
    server = cpu_delta(before_server, tree_cpu(server_pids))
    rate = sum(number(r, "requests") / number(r, "seconds") for r in reports)
    return Sample(rate, wall, children_cpu() - before_client, server)


# --- The clients and the Python servers (run as `--role NAME ...`) ------------------


def client_context(cert: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert) if cert else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """TLS 1.3 only, as a keep's listener is by default."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    return context


def connect(port: int, cert: str) -> socket.socket:
    """A connection to the server, through TLS unless `cert` is "-"."""
    sock = socket.create_connection((LOOPBACK, port), timeout=IO_TIMEOUT_SECONDS)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if cert == "-":
        return sock
    return client_context(Path(cert)).wrap_socket(sock, server_hostname="localhost")


class Messages:
    """The echo stream: message k is one of DISTINCT_MESSAGES pseudo-random
    bodies stamped with k, so a dropped, repeated or reordered message shows."""

    def __init__(self) -> None:
        rng = random.Random(0)
        self._bodies = [rng.randbytes(MESSAGE_BYTES) for _ in range(DISTINCT_MESSAGES)]

    def get(self, index: int) -> bytes:
        return index.to_bytes(8, "little") + self._bodies[index % DISTINCT_MESSAGES][8:]


class EchoMismatch(RunFailed):
    """The server sent back something other than what it was sent."""


def echo_client(port: int, cert: str, total: int, server_pids: list[int]) -> dict[str, object]:
    """Send `total` bytes, keeping WINDOW_MESSAGES messages in flight, and
    check every byte echoed; time from the first byte sent to the last one
    checked. Non-blocking, so that sending never waits on an unread echo."""
    messages = Messages()
    window = WINDOW_MESSAGES * MESSAGE_BYTES
    buffer = bytearray(MESSAGE_BYTES)
    view = memoryview(buffer)
    unechoed = bytearray()  # sent, not yet echoed back
    pending = memoryview(b"")  # the rest of the message being sent
    index = sent = received = 0
    with connect(port, cert) as sock, selectors.DefaultSelector() as selector:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        server_before = tree_cpu(server_pids)
        cpu_before = time.process_time()
        start = time.perf_counter()
        while received < total:
            wants_write = False
            while sent < total and sent - received < window:
                if not pending:
                    pending = memoryview(messages.get(index)[: total - sent])
                    index += 1
                try:
                    count = sock.send(pending)
                except (ssl.SSLWantWriteError, BlockingIOError):
                    wants_write = True
                    break
                except ssl.SSLWantReadError:
                    break
                unechoed += pending[:count]
                pending = pending[count:]
                sent += count
            try:
                count = sock.recv_into(buffer)
            except (ssl.SSLWantReadError, BlockingIOError):
                count = -1
            except ssl.SSLWantWriteError:
                count = -1
                wants_write = True
            if count == 0:
                raise RunFailed(
                    f"the server closed the connection after echoing {received:,} "
                    f"of {total:,} bytes"
                )
            if count > 0:
                if not unechoed.startswith(view[:count]):
                    raise EchoMismatch(
                        f"echoed data differs from what was sent, in bytes {received:,} "
                        f"to {received + count:,}"
                    )
                del unechoed[:count]
                received += count
                continue
            # ACK at once: else a server that holds back a last small segment
            # (Nagle) waits for the delayed ACK, 40 ms per connection.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            selector.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE * wants_write))
            if not selector.select(IO_TIMEOUT_SECONDS):
                raise RunFailed(
                    f"no progress for {IO_TIMEOUT_SECONDS:.0f} s, {received:,} of {total:,} "
                    "bytes echoed"
                )
        seconds = time.perf_counter() - start
        client_cpu = time.process_time() - cpu_before
        server_cpu = cpu_delta(server_before, tree_cpu(server_pids))
    return {"seconds": seconds, "client_cpu": client_cpu, "server_cpu": server_cpu}


def echo_server(port: int, cert: str, key: str, connections: int) -> None:
    """The TLS echo baseline: a thread per connection, blocking Python `ssl`;
    exits after `connections` connections have ended."""
    context = server_context(cert, key)
    threads = []
    with socket.create_server((LOOPBACK, port), backlog=128) as listener:
        for _ in range(connections):
            connection, _ = listener.accept()
            thread = threading.Thread(target=echo_connection, args=(context, connection))
            thread.start()
            threads.append(thread)
    for thread in threads:
        thread.join()


def echo_connection(context: ssl.SSLContext, connection: socket.socket) -> None:
    buffer = bytearray(MESSAGE_BYTES)
    view = memoryview(buffer)
    try:
        with context.wrap_socket(connection, server_side=True) as tls:
            while count := tls.recv_into(buffer):
                tls.sendall(view[:count])
    except (ssl.SSLError, ConnectionError) as error:
        print(f"echo-server: a connection failed: {error}", file=sys.stderr)


def tls_proxy(port: int, cert: str, key: str, upstream: int) -> None:
    """The HTTPS baseline's front: accepts TLS on `port`, relays plaintext to
    and from `upstream` (the native http-hello); asyncio, Python `ssl`."""
    context = server_context(cert, key)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(MESSAGE_BYTES):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def serve() -> None:
        server = await asyncio.start_server(relay, LOOPBACK, port, ssl=context, backlog=128)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


_REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"


@dataclass
class _LoadConnection:
    sock: socket.socket
    received: bytearray = field(default_factory=bytearray)
    unsent: memoryview = field(default_factory=lambda: memoryview(_REQUEST))


def http_load(port: int, cert: str, connections: int, seconds: float) -> dict[str, object]:
    """Keep-alive GETs on `connections` connections, one request in flight on
    each (as wrk does), for `seconds`; every answer must be the hello text."""
    requests = 0
    with selectors.DefaultSelector() as selector, contextlib.ExitStack() as stack:
        for _ in range(connections):
            sock = stack.enter_context(connect(port, cert))
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_WRITE, _LoadConnection(sock))
        start = time.perf_counter()
        deadline = start + seconds
        while (now := time.perf_counter()) < deadline:
            for key, _ in selector.select(deadline - now):
                conn: _LoadConnection = key.data
                if conn.unsent:
                    with contextlib.suppress(ssl.SSLWantWriteError, BlockingIOError):
                        conn.unsent = conn.unsent[conn.sock.send(conn.unsent) :]
                    if not conn.unsent:
                        selector.modify(conn.sock, selectors.EVENT_READ, conn)
                    continue
                if read_available(conn) and answered(conn):
                    requests += 1
                    conn.unsent = memoryview(_REQUEST)
                    selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        elapsed = time.perf_counter() - start
    return {"requests": requests, "seconds": elapsed}


def read_available(conn: _LoadConnection) -> bool:
    """Read what is there (TLS may hold more than the socket shows)."""
    got = False
    while True:
        try:
            data = conn.sock.recv(MESSAGE_BYTES)
        except (ssl.SSLWantReadError, BlockingIOError):
            return got
        if not data:
            raise RunFailed("the server closed a keep-alive connection")
        conn.received += data
        got = True


def answered(conn: _LoadConnection) -> bool:
    """Whether a whole response is in; checks it and takes it off."""
    end = conn.received.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = bytes(conn.received[:end]).decode("latin-1").split("\r\n")
    if not head[0].startswith("HTTP/1.1 200 "):
        raise RunFailed(f"answered {head[0]!r}")
    length = next(
        (
            int(line.partition(":")[2])
            for line in head
            if line.lower().startswith("content-length:")
        ),
        None,
    )
    if length is None:
        raise RunFailed("an answer without Content-Length")
    if len(conn.received) < end + 4 + length:
        return False
    body = bytes(conn.received[end + 4 : end + 4 + length])
    if body != HELLO_BODY:
        raise RunFailed(f"answered {body[:80]!r}")
    del conn.received[: end + 4 + length]
    return True


def run_role(argv: list[str]) -> int:
    """This script as a client or a Python server (`--role NAME ARGS...`)."""
    role, args = argv[0], argv[1:]
    try:
        if role == "echo-client":
            port, cert, total, pids = args
            report = echo_client(int(port), cert, int(total), [int(p) for p in pids.split(",")])
            print(json.dumps(report))
        elif role == "http-load":
            port, cert, connections, seconds = args
            print(json.dumps(http_load(int(port), cert, int(connections), float(seconds))))
        elif role == "echo-server":
            port, cert, key, connections = args
            echo_server(int(port), cert, key, int(connections))
        elif role == "tls-proxy":
            port, cert, key, upstream = args
            tls_proxy(int(port), cert, key, int(upstream))
        else:
            print(f"network.py: unknown role {role}", file=sys.stderr)
            return 2
    except (RunFailed, OSError, ssl.SSLError) as error:
        print(f"{role}: {error}", file=sys.stderr)
        return 1
    return 0


# --- Reporting ----------------------------------------------------------------------

COLUMNS = ("contender", "median", "min", "max", "vs baseline", "server CPU", "client CPU")
#: Server CPU, which may list its parts, is aligned left in Markdown.
LAYOUT = Layout(COLUMNS, numeric=("median", "min", "max", "vs baseline", "client CPU"))


def format_value(value: float, unit: Unit) -> str:
    return f"{value:,.1f} {unit}" if unit == "MB/s" else f"{value:,.0f} {unit}"


def cores(samples: Sequence[Sample]) -> dict[str, float]:
    """CPU used per wall second over the timed runs, by process kind."""
    wall = sum(s.seconds for s in samples)
    used: dict[str, float] = {}
    for sample in samples:
        for label, seconds in sample.server_cpu.items():
            used[label] = used.get(label, 0.0) + seconds
    return {label: seconds / wall for label, seconds in used.items()} if wall else {}


def format_server_cpu(samples: Sequence[Sample]) -> str:
    """'0.88 (host 0.39, keep 0.49)': cores busy, and by whom if several."""
    by_kind = cores(samples)
    total = f"{sum(by_kind.values()):.2f}"
    if len(by_kind) < 2:
        return total
    parts = ", ".join(f"{label} {value:.2f}" for label, value in sorted(by_kind.items()))
    return f"{total} ({parts})"


def format_client_cpu(samples: Sequence[Sample]) -> str:
    wall = sum(s.seconds for s in samples)
    return f"{sum(s.client_cpu for s in samples) / wall:.2f}" if wall else "-"


def rows(result: BenchResult) -> list[list[str]]:
    unit = result.bench.unit
    table = []
    for name, samples in result.samples.items():
        if not samples:
            continue
        table.append(
            [
                name,
                *spread([s.value for s in samples], lambda value: format_value(value, unit)),
                format_ratio(result.ratio(name)),
                format_server_cpu(samples),
                format_client_cpu(samples),
            ]
        )
    return table


def verdict(result: BenchResult) -> str | None:
    """'met (0.61x)', 'MISSED (0.40x)' or 'not measured'; None without a target."""
    target = result.bench.target
    if target is None:
        return None
    ratio = result.ratio(target.contender)
    if ratio is None:
        return "not measured"
    return f"{'met' if ratio >= target.min_ratio else 'MISSED'} ({ratio:.2f}x)"


def section(result: BenchResult) -> Section:
    """The result as a report shows it, the target judged on its contender's row."""
    bench = result.bench
    target, outcome = bench.target, verdict(result)
    goals = {} if target is None else {target.contender: f">= {target.min_ratio:.2f}x: {outcome}"}
    return Section(
        bench.name,
        f"{bench.name}: {bench.summary}; baseline: {bench.baseline}",
        rows(result),
        target=None if target is None else f"{target.describe()}: {outcome}",
        goals=goals,
        problems=result.problems,
        notes=[f"{bench.name}: {bench.summary}"],
    )


def json_report(results: Sequence[BenchResult], context: Context) -> dict[str, object]:
    return {
        **context,
        "benchmarks": [
            {
                "name": r.bench.name,
                "summary": r.bench.summary,
                "unit": r.bench.unit,
                "baseline": r.bench.baseline,
                "samples": {
                    name: [
                        {
                            "value": s.value,
                            "seconds": s.seconds,
                            "client_cpu_seconds": s.client_cpu,
                            "server_cpu_seconds": s.server_cpu,
                        }
                        for s in samples
                    ]
                    for name, samples in r.samples.items()
                },
                "median": {name: r.median(name) for name in r.samples},
                "ratio_to_baseline": {name: r.ratio(name) for name in r.samples},
                "server_cores": {name: cores(samples) for name, samples in r.samples.items()},
                "target": r.bench.target.describe() if r.bench.target else None,
                "target_result": verdict(r),
                "problems": r.problems,
            }
            for r in results
        ],
    }


def describe_run(repeat: int, load: Load) -> Context:
    """When, where and with what the numbers were taken."""
    if load.tool == "wrk":
        tool = f"{tool_version(['wrk', '--version'])}, -t{HTTP_THREADS} -c{HTTP_CONNECTIONS}"
    else:
        tool = (
            f"Python load client (wrk not installed): {HTTP_THREADS} processes, "
            f"{HTTP_CONNECTIONS} connections in all"
        )
    return {
        **base_context(
            "network.py",
            machine=os.uname().release,
            method=f"1 warm-up, then {repeat} timed runs per contender, interleaved; "
            "MB = 10^6 bytes; CPU in cores (CPU seconds per wall second)",
        ),
        "HTTP load": tool,
        "TLS": f"Python {sys.version.split()[0]} ssl, {ssl.OPENSSL_VERSION}; TLS 1.3, ECDSA P-256",
        "compilers": compiler_versions(),
    }


def tool_version(command: list[str]) -> str:
    """The first line a tool prints about itself (wrk exits 1 after it)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError:
        return f"{command[0]} (unknown version)"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].split(" Copyright")[0] if lines else f"{command[0]} (unknown version)"


# --- Command line ---------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Network throughput and request rate of wasmkeep against a baseline.",
    )
    add_run_options(parser, repeat=3)
    parser.add_argument(
        "--load",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="HTTP load: wrk, the Python load client, or wrk if installed (default)",
    )
    add_output_options(parser)
    return parse_checked(parser, argv)


def choose_load(wanted: str, chosen: Sequence[Benchmark]) -> LoadTool:
    have_wrk = shutil.which("wrk") is not None
    if wanted == "wrk" and not have_wrk:
        raise SetupError("wrk not found: install it (Debian: apt-get install wrk)")
    if wanted == "python" or not have_wrk:
        if wanted == "auto" and any(b.unit == "req/s" for b in chosen):
            progress(
                "wrk not found: the HTTP load is the Python load client, which is slower "
                "than wrk (Debian: apt-get install wrk)"
            )
        return "python"
    return "wrk"


def build() -> None:
    """The examples, with run.py's compilers and flags, into benchmarks/build/."""
    build_all([EXAMPLES / name / f"{name}.c" for name in ("tcp-echo", "http-hello")])


def _stop_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `with` blocks that stop servers


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--role"] and len(arguments) > 1:
        return run_role(arguments[1:])
    args = parse_args(arguments)
    sizes = QUICK if args.quick else FULL
    try:
        chosen = select(benchmarks(sizes), args.only)
        build()
        wasmkeep = find_wasmkeep()
        load = Load(choose_load(args.load, chosen), sizes)
    except SetupError as error:
        return setup_failed("network.py", error)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    context = describe_run(args.repeat, load)
    try:
        with tempfile.TemporaryDirectory(prefix="wasmkeep-net-") as root:
            ws = Workspace(Path(root), wasmkeep)
            results = [measure(b, ws, load, args.repeat) for b in chosen]
    except KeyboardInterrupt:
        print("network.py: interrupted; every server stopped", file=sys.stderr)
        return 130
    sections = [section(result) for result in results]
    print(render_report(LAYOUT, sections, context, markdown=args.markdown))
    if args.json:
        write_json(args.json, json_report(results, context))
    for result in results:
        if (outcome := verdict(result)) is not None:
            assert result.bench.target is not None
            progress(f"target: {result.bench.target.describe()}: {outcome}")
    return finish([p for r in results for p in r.problems])


if __name__ == "__main__":
    sys.exit(main())
