"""Steward benchmark: certificates issued per second over HTTPS on loopback.

A measurement, not a test: it exits non-zero only when the Steward gives a
wrong answer (not 200, or a chain whose certificate is not for the CSR's key),
never because a target is missed.

What is measured (`--only` takes these names):

* `software`: wasmkeep CSRs with software evidence (a process keep, 64
  different keys in turn) under a policy with ``[insecure] allow = true``:
  the CSR's ECDSA P-256 signature, the binding, the policy, issuing.
* `snp`: the real Enarx CSR of an SEV-SNP Milan keep
  (tests/assets/attestation/enarx-csr/milan.signed.crl.csr) at 2023-01-01, the
  Steward's clock set to then, under a policy naming its measurement: the CSR's
  ECDSA P-384 signature, the report's ECDSA P-384 signature (the VCEK chain
  verified once and cached), the CRLs, the policy, issuing. Target: at least
  300 certificates per second.

The contenders, for each:

* `direct`: `Steward.decide` called in this process, one thread, no HTTP:
  what the decision costs by itself.
* `inline` or `thread`, `keep-alive` or `new connection`: a real Steward
  (uvicorn, TLS, the FastAPI app) in a child process, deciding on the event
  loop (`inline`) or in a worker thread (`thread`, `create_app(offload=True)`);
  the client (asyncio, in this process, `--concurrency` connections at once)
  either keeps its TLS connections open (`keep-alive`) or opens one per CSR
  (`new connection`, as an Enarx keep does: a TLS handshake for every
  certificate).

How: each contender answers every distinct CSR once first and each answer is
checked (status 200, a PkiPath whose last certificate has the CSR's key); then
`--repeat` rounds of `--seconds`, the contenders interleaved, counting 200
answers. The report gives the median round with the slowest and fastest, the
CPU time the Steward's process used per certificate (from /proc; for
`direct`, this process's), and what that gives on one core of its own
("one core": 1 / CPU per certificate). Client and server share the machine's
CPUs, so the rate is lower than "one core" whenever the client is busy too.

Usage: .venv/bin/python benchmarks/steward.py [--only software,snp] [--repeat N]
           [--seconds S] [--concurrency N] [--quick] [--markdown] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import multiprocessing
import multiprocessing.connection
import os
import platform
import ssl
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from _harness import (
    Layout,
    Section,
    SetupError,
    add_output_options,
    add_run_options,
    base_context,
    finish,
    interleaved,
    parse_checked,
    progress,
    render_report,
    select,
    setup_failed,
    spread,
    write_json,
)

ROOT = Path(__file__).resolve().parent.parent
MILAN_CSR = ROOT / "tests" / "assets" / "attestation" / "enarx-csr" / "milan.signed.crl.csr"
MILAN_MEASUREMENT = (
    "ff717ae719840c93c1fca3b7db96488454c3c21b43531488eecff51cfed3febc"
    "d91da8be87a4cbcbc52a3bae770987c3"
)
MILAN_NOW = datetime.datetime(2023, 1, 1, tzinfo=datetime.UTC)
#: The CA is made before the Milan vector's time, valid ten years: it issues
#: at 2023-01-01 and today alike.
CA_BORN = datetime.datetime(2022, 12, 1, tzinfo=datetime.UTC)
SNP_TARGET = 300.0
DIGEST = "sha256:" + "ab" * 32


@dataclass(frozen=True)
class Benchmark:
    name: str
    what: str
    policy: str
    #: None: the real clock.
    now: datetime.datetime | None
    target: float | None


BENCHMARKS = [
    Benchmark(
        "software",
        "wasmkeep CSRs, software evidence (process keep)",
        "[insecure]\nallow = true\n",
        None,
        None,
    ),
    Benchmark(
        "snp",
        "Enarx CSR, SEV-SNP Milan report, clock at 2023-01-01",
        f'[snp]\nmeasurements = ["{MILAN_MEASUREMENT}"]\n',
        MILAN_NOW,
        SNP_TARGET,
    ),
]

#: (name, offload, keep-alive); "direct" is None.
SERVED = [
    ("inline, keep-alive", False, True),
    ("thread, keep-alive", True, True),
    ("inline, new connection", False, False),
    ("thread, new connection", True, False),
]
CONTENDERS = ["direct", *(name for name, _, _ in SERVED)]


def software_csrs(count: int) -> list[tuple[bytes, bytes]]:
    """`count` CSRs as process keeps make them (keep/enrol.py's build_csr, with
    software evidence): (DER, the key's SPKI)."""
    from wasmkeep.attestation.keep_csr import EvidenceForm, KeepEvidence
    from wasmkeep.attestation.software import SoftwareEvidence, report_data
    from wasmkeep.keep.enrol import build_csr

    made = []
    for _ in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        evidence = SoftwareEvidence("process", report_data(spki, DIGEST), os.urandom(16), DIGEST)
        keep_evidence = KeepEvidence(EvidenceForm.SOFTWARE, evidence.encode())
        made.append((build_csr(key, keep_evidence, DIGEST, ["keep.example"]), spki))
    return made


def milan_csrs() -> list[tuple[bytes, bytes]]:
    data = MILAN_CSR.read_bytes()
    spki = (
        x509.load_der_x509_csr(data)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return [(data, spki)]


def _quiet_logs() -> None:
    """As `wasmkeep steward serve` logs (a line per decision, the policy's
    warnings), but to /dev/null: formatted, not shown."""
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
    for name in ("wasmkeep.steward", "wasmkeep.attestation.policy"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _make_steward(ca: object, benchmark: Benchmark) -> object:
    from wasmkeep.attestation.policy import parse_policy
    from wasmkeep.steward.ca import CertificateAuthority
    from wasmkeep.steward.service import Steward, utc_now

    assert isinstance(ca, CertificateAuthority)
    moment = benchmark.now
    clock = (lambda: moment) if moment is not None else utc_now
    return Steward(ca, policy=parse_policy(benchmark.policy), clock=clock)


def _serve(
    ca_pem: bytes, ca_key_pem: bytes, benchmark: Benchmark, offload: bool, conn: object
) -> None:
    """In the child: a Steward over TLS on a free loopback port; sends the port."""
    from wasmkeep.steward.app import build_app
    from wasmkeep.steward.ca import CertificateAuthority
    from wasmkeep.steward.server import bind, make_server, tls_context
    from wasmkeep.steward.service import Steward

    assert isinstance(conn, multiprocessing.connection.Connection)
    _quiet_logs()
    key = serialization.load_pem_private_key(ca_key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ca = CertificateAuthority(key, x509.load_pem_x509_certificate(ca_pem))
    steward = _make_steward(ca, benchmark)
    assert isinstance(steward, Steward)
    app = build_app(steward, offload=offload)
    now = datetime.datetime.now(datetime.UTC)
    sock = bind("127.0.0.1", 0)
    server = make_server(app, ssl_context=tls_context(ca, ["127.0.0.1"], now=now))
    conn.send(sock.getsockname()[1])
    server.run(sockets=[sock])


@dataclass
class Server:
    process: multiprocessing.process.BaseProcess
    port: int

    def stop(self) -> None:
        if self.process.is_alive() and self.process.pid is not None:
            os.kill(self.process.pid, 15)
        self.process.join(10)


def start_server(ca_pem: bytes, ca_key_pem: bytes, benchmark: Benchmark, offload: bool) -> Server:
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    process = context.Process(
        target=_serve, args=(ca_pem, ca_key_pem, benchmark, offload, child), daemon=True
    )
    process.start()
    if not parent.poll(30):
        process.kill()
        raise SetupError("the Steward did not start within 30 s")
    return Server(process, parent.recv())


# -- the client ---------------------------------------------------------------------------------


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes, close: bool
) -> tuple[int, bytes]:
    head = (
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/pkcs10\r\n"
        f"Content-Length: {len(body)}\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}"
        "\r\n"
    ).encode()
    writer.write(head + body)
    header = await reader.readuntil(b"\r\n\r\n")
    lines = header.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def _run_client(
    port: int,
    bodies: Sequence[bytes],
    context: ssl.SSLContext,
    *,
    concurrency: int,
    seconds: float | None,
    keep_alive: bool,
    check: Callable[[int, int, bytes], str | None],
) -> tuple[int, float, list[str]]:
    """Send CSRs until `seconds` pass (or, with None, each of `bodies` once);
    the number answered 200, the time taken, the problems."""
    problems: list[str] = []
    count = 0
    start = time.perf_counter()
    deadline = start + seconds if seconds is not None else None
    queue = list(range(len(bodies))) if seconds is None else None

    async def worker(number: int) -> None:
        nonlocal count
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        sent = 0
        while True:
            if queue is not None:
                if not queue:
                    break
                index = queue.pop()
            else:
                assert deadline is not None
                if time.perf_counter() >= deadline:
                    break
                index = (number + sent * concurrency) % len(bodies)
            sent += 1
            if connection is None:
                connection = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
                )
            status, answer = await _exchange(*connection, bodies[index], not keep_alive)
            problem = check(index, status, answer)
            if problem is not None:
                problems.append(problem)
            else:
                count += 1
            if not keep_alive:
                connection[1].close()
                await connection[1].wait_closed()
                connection = None
        if connection is not None:
            connection[1].close()
            await connection[1].wait_closed()

    await asyncio.gather(*(worker(number) for number in range(concurrency)))
    return count, time.perf_counter() - start, problems


# -- measuring ----------------------------------------------------------------------------------


@dataclass
class Result:
    benchmark: Benchmark
    rates: dict[str, list[float]] = field(default_factory=dict)
    #: The Steward's CPU time per certificate, in seconds, each round.
    server_cpu: dict[str, list[float]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) a process has used: ours with None."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _checker(csrs: Sequence[tuple[bytes, bytes]]) -> Callable[[int, int, bytes], str | None]:
    from wasmkeep.attestation import der

    def check(index: int, status: int, answer: bytes) -> str | None:
        if status != 200:
            return f"CSR {index}: status {status}: {answer[:200]!r}"
        children = der.parse_der(answer, "chain").children()
        leaf = x509.load_der_x509_certificate(children[-1].encoded)
        spki = leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return None if spki == csrs[index][1] else f"CSR {index}: a certificate for another key"

    return check


def _fast_check(index: int, status: int, answer: bytes) -> str | None:
    return None if status == 200 else f"CSR {index}: status {status}: {answer[:200]!r}"


def measure(benchmark: Benchmark, args: argparse.Namespace) -> Result:
    from wasmkeep.steward.ca import generate_ca
    from wasmkeep.steward.service import Steward

    csrs = software_csrs(64) if benchmark.name == "software" else milan_csrs()
    bodies = [der for der, _ in csrs]
    ca = generate_ca(now=CA_BORN)
    ca_key_pem = ca.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    client_context = ssl.create_default_context(cadata=ca.certificate_pem.decode())
    result = Result(benchmark)
    servers: dict[str, Server] = {}
    try:
        for name, offload, _ in SERVED:
            servers[name] = start_server(ca.certificate_pem, ca_key_pem, benchmark, offload)
        steward = _make_steward(ca, benchmark)
        assert isinstance(steward, Steward)
        keep_alive = {name: alive for name, _, alive in SERVED}

        def direct_round(seconds: float | None) -> tuple[int, float, list[str]]:
            """Decide in this process: every CSR once (None), or for `seconds`."""
            count, problems = 0, []
            start = time.perf_counter()
            index = 0
            while True:
                if seconds is None:
                    if index == len(bodies):
                        break
                elif time.perf_counter() - start >= seconds:
                    break
                decision = steward.decide(bodies[index % len(bodies)])
                if decision.accepted:
                    count += 1
                else:
                    problems.append(f"refused: {decision.reason()}")
                index += 1
            return count, time.perf_counter() - start, problems

        def one_round(
            contender: str, seconds: float | None, check: Callable[[int, int, bytes], str | None]
        ) -> tuple[int, float, list[str]]:
            if contender == "direct":
                return direct_round(seconds)
            return asyncio.run(
                _run_client(
                    servers[contender].port,
                    bodies,
                    client_context,
                    concurrency=args.concurrency,
                    seconds=seconds,
                    keep_alive=keep_alive[contender],
                    check=check,
                )
            )

        # Every answer checked once, untimed; this warms the caches up too.
        for contender in CONTENDERS:
            _, _, problems = one_round(contender, None, _checker(csrs))
            result.problems += [f"{contender}: {problem}" for problem in problems[:5]]
        for label, contender in interleaved(CONTENDERS, args.repeat):
            pid = servers[contender].process.pid if contender in servers else None
            cpu_before = _cpu_seconds(pid)
            count, elapsed, problems = one_round(contender, args.seconds, _fast_check)
            rate = count / elapsed
            result.rates.setdefault(contender, []).append(rate)
            if count:
                used = (_cpu_seconds(pid) - cpu_before) / count
                result.server_cpu.setdefault(contender, []).append(used)
            result.problems += [f"{contender}: {problem}" for problem in problems[:5]]
            progress(f"{benchmark.name} {label} {contender}: {rate:,.0f}/s")
    finally:
        for server in servers.values():
            server.stop()
    return result


COLUMNS = ("contender", "median", "min", "max", "per certificate", "Steward CPU", "one core")
LAYOUT = Layout(COLUMNS, numeric=COLUMNS[1:])


def _target_text(benchmark: Benchmark, rates: list[float]) -> str:
    if benchmark.target is None:
        return ""
    median = statistics.median(rates)
    met = "met" if median >= benchmark.target else "NOT met"
    return f">= {benchmark.target:,.0f}/s: {met} ({median:,.0f}/s)"


def section(result: Result) -> Section:
    rows = []
    goals = {}
    for contender in CONTENDERS:
        rates = result.rates.get(contender)
        if not rates:
            continue
        cpu = statistics.median(result.server_cpu.get(contender) or [0.0])
        rows.append(
            [
                contender,
                *spread(rates, lambda rate: f"{rate:,.0f}/s"),
                f"{1e3 / statistics.median(rates):.2f} ms",
                f"{cpu * 1e3:.2f} ms" if cpu else "-",
                f"{1 / cpu:,.0f}/s" if cpu else "-",
            ]
        )
        if contender != "direct" and result.benchmark.target is not None:
            goals[contender] = _target_text(result.benchmark, rates)
    target = None
    if result.benchmark.target is not None:
        target = f">= {result.benchmark.target:,.0f} certificates/s over HTTPS"
    return Section(
        result.benchmark.name,
        f"{result.benchmark.name}: {result.benchmark.what}",
        rows,
        target=target,
        goals=goals,
        problems=result.problems,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_run_options(parser, repeat=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="one round (default 3)")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="client connections at once (default 8)"
    )
    add_output_options(parser)
    args = parse_checked(parser, argv)
    if args.quick:
        args.seconds, args.repeat = 1.0, 1
    if args.seconds <= 0 or not 1 <= args.concurrency <= 256:
        parser.error("--seconds must be positive, --concurrency 1 to 256")
    try:
        chosen = select(BENCHMARKS, args.only)
    except SetupError as error:
        return setup_failed("steward.py", error)
    _quiet_logs()
    try:
        results = [measure(benchmark, args) for benchmark in chosen]
    except SetupError as error:
        return setup_failed("steward.py", error)
    context = base_context(
        "steward.py",
        machine=f"Python {platform.python_version()}",
        method=f"{args.repeat} rounds of {args.seconds:g} s per contender, interleaved; "
        f"median, slowest and fastest round; client: asyncio, {args.concurrency} "
        "connections at once, in the same machine as the Steward",
    )
    print(
        render_report(
            LAYOUT, [section(result) for result in results], context, markdown=args.markdown
        )
    )
    if args.json:
        write_json(
            args.json,
            {
                **context,
                "benchmarks": [
                    {
                        "name": result.benchmark.name,
                        "what": result.benchmark.what,
                        "rates": result.rates,
                        "steward_cpu_seconds_per_certificate": result.server_cpu,
                        "target": result.benchmark.target,
                    }
                    for result in results
                ],
            },
        )
    return finish([problem for result in results for problem in result.problems])


if __name__ == "__main__":
    sys.exit(main())
