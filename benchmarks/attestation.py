"""Attestation benchmark: verifications per second, on the real evidence vectors.

A measurement, not a test: it exits non-zero only when a verification does not
give the verdict the vector should give, never because a target is missed.

What is measured (`--only` takes these names):

* `snp`: an SEV-SNP report (tests/assets/attestation/snp/milan-virtee) from its
  bytes: parse, then `SnpVerifier.verify` with the VCEK chain cached (the ARK,
  ASK and VCEK signatures are checked once; each call checks the times, the
  report's ECDSA P-384 signature and every field), then the default policy.
  The target: at least 500 verifications per second.
* `snp_uncached`: the same through `verify_snp`, the chain verified every time
  (three RSA-4096 PSS signatures more), for reference.
* `tdx`: a TDX quote (tdx/dcap-qvl-uptodate) with its complete collateral,
  parsed once as a Steward would keep it: parse the quote, then
  `DcapVerifier.verify_quote` (signature checks of the chain, CRLs, collateral
  and QE report cached; the quote's own signature checked every time), then
  the default policy.
* `software`: software evidence: parse, verify, and a policy that allows it.

How it measures: each benchmark first runs once and checks its verdict (the
vector must be accepted), then warms up for `--warmup` seconds, then runs
`--repeat` rounds of `--seconds` each, counting verifications; the report gives
the median rate with the slowest and fastest round. One process, one thread.

Usage: .venv/bin/python benchmarks/attestation.py [--only NAME,...]
           [--repeat N] [--seconds S] [--warmup S] [--markdown] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from _harness import (
    Context,
    Layout,
    Section,
    bullets,
    command_output,
    cpu_model,
    markdown_report,
    parse_checked,
    progress,
    spread,
    utc_now,
    write_json,
)

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "assets" / "attestation"
SNP_TARGET = 500.0


@dataclass(frozen=True)
class Result:
    name: str
    what: str
    rates: list[float]
    target: float | None

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def _snp(cached: bool) -> Callable[[], bool]:
    from wasmkeep.attestation.policy import parse_policy
    from wasmkeep.attestation.snp import (
        SnpVerifier,
        load_amd_certificate,
        parse_snp_report,
        verify_snp,
    )

    folder = VECTORS / "snp" / "milan-virtee"
    report = (folder / "report.bin").read_bytes()
    vcek = load_amd_certificate((folder / "vcek.der").read_bytes())
    now = datetime.datetime(2024, 6, 1, tzinfo=datetime.UTC)
    # The raw vector comes without AMD's CRL: a policy that accepts that.
    policy = parse_policy("[snp]\nallow_unchecked_revocation = true\n")
    verifier = SnpVerifier()
    expected = parse_snp_report(report).report_data

    def once() -> bool:
        parsed = parse_snp_report(report)
        if cached:
            verdict = verifier.verify(parsed, vcek, now=now, expected_report_data=expected)
        else:
            verdict = verify_snp(parsed, vcek, now=now, expected_report_data=expected)
        return policy.evaluate(verdict, workload_digest=None).accepted

    return once


def _tdx() -> Callable[[], bool]:
    from wasmkeep.attestation.dcap import DcapVerifier, parse_quote, parse_qvl_collateral
    from wasmkeep.attestation.policy import default_policy

    folder = VECTORS / "tdx" / "dcap-qvl-uptodate"
    quote = (folder / "quote.dat").read_bytes()
    collateral = parse_qvl_collateral((folder / "collateral.json").read_bytes())
    now = datetime.datetime(2025, 6, 19, 11, tzinfo=datetime.UTC)
    verifier = DcapVerifier()
    policy = default_policy()
    expected = parse_quote(quote).report_data

    def once() -> bool:
        verdict = verifier.verify_quote(
            parse_quote(quote), collateral, now=now, expected_report_data=expected
        )
        return policy.evaluate(verdict, workload_digest=None).accepted

    return once


def _software() -> Callable[[], bool]:
    from wasmkeep.attestation.policy import parse_policy
    from wasmkeep.attestation.software import (
        SoftwareEvidence,
        parse_software_evidence,
        verify_software,
    )

    bound = bytes(range(64))
    evidence = SoftwareEvidence("process", bound, bytes(16), "sha256:" + "ab" * 32).encode()
    policy = parse_policy("[insecure]\nallow = true\n")

    def once() -> bool:
        verdict = verify_software(parse_software_evidence(evidence), expected_report_data=bound)
        return policy.evaluate(verdict, workload_digest=None).accepted

    return once


BENCHMARKS: dict[str, tuple[str, Callable[[], Callable[[], bool]], float | None]] = {
    "snp": ("SNP report, chain cached, + policy", lambda: _snp(cached=True), SNP_TARGET),
    "snp_uncached": ("SNP report, chain verified each time", lambda: _snp(cached=False), None),
    "tdx": ("TDX quote with collateral, + policy", _tdx, None),
    "software": ("software evidence, + policy", _software, None),
}


def _rate(once: Callable[[], bool], seconds: float) -> float:
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        once()
        count += 1
        if count % 8 == 0 and time.perf_counter() >= deadline:
            break
    return count / (time.perf_counter() - start)


def measure(name: str, repeat: int, seconds: float, warmup: float) -> Result:
    what, make, target = BENCHMARKS[name]
    once = make()
    if not once():
        raise SystemExit(f"{name}: the vector was not accepted; nothing to measure")
    _rate(once, warmup)
    rates = []
    for round_number in range(repeat):
        rates.append(_rate(once, seconds))
        progress(f"{name}: round {round_number + 1}: {rates[-1]:,.0f}/s")
    return Result(name, what, rates, target)


def _target_text(result: Result) -> str:
    if result.target is None:
        return ""
    met = "met" if result.median >= result.target else "NOT met"
    return f">= {result.target:,.0f}/s: {met} ({result.median:,.0f}/s)"


def _commit() -> str:
    return command_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]) or "unknown"


COLUMNS = ("what", "median", "min", "max", "per verification")
LAYOUT = Layout(COLUMNS, numeric=COLUMNS[1:])


def section(result: Result) -> Section:
    """The result as the Markdown table shows it."""
    per_second = spread(result.rates, lambda rate: f"{rate:,.0f}/s")
    row = [result.what, *per_second, f"{1e3 / result.median:.2f} ms"]
    target = _target_text(result)
    goals = {result.what: target} if target else {}
    return Section(result.name, f"{result.name}: {result.what}", [row], goals=goals)


def report(results: Sequence[Result], context: Context, markdown: bool) -> str:
    if markdown:
        sections = [section(result) for result in results]
        return markdown_report(LAYOUT, sections, context)
    lines = [
        f"{result.name:<14} {result.median:>9,.0f}/s  (min {min(result.rates):,.0f}, "
        f"max {max(result.rates):,.0f}; {1e3 / result.median:.2f} ms each)  "
        f"{_target_text(result)}"
        for result in results
    ]
    return "\n".join([*lines, "", *bullets(context)])


def describe_run(args: argparse.Namespace) -> Context:
    """When, where and with what the numbers were taken."""
    cpu = cpu_model(unknown=platform.machine())
    return {
        "command": " ".join(["benchmarks/attestation.py", *sys.argv[1:]]),
        "date": utc_now(),
        "wasmkeep": f"commit {_commit()}",
        "machine": f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "method": f"{args.warmup:g} s warm-up, then {args.repeat} rounds of {args.seconds:g} s; "
        "median, slowest and fastest round; one thread",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", help=f"comma-separated: {', '.join(BENCHMARKS)}")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--markdown", action="store_true", help="a Markdown table")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parse_checked(parser, None)
    if args.seconds <= 0 or args.warmup < 0:
        parser.error("--seconds must be positive and --warmup not negative")
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r} (known: {', '.join(BENCHMARKS)})")
    # The policy warns each time an `allow` is what accepts the evidence (the
    # SNP vector has no CRL, software evidence is insecure): not timed here.
    logging.getLogger("wasmkeep.attestation.policy").setLevel(logging.ERROR)
    results = [measure(name, args.repeat, args.seconds, args.warmup) for name in names]
    print(report(results, describe_run(args), args.markdown))
    if args.json is not None:
        write_json(
            args.json,
            [
                {
                    "name": result.name,
                    "what": result.what,
                    "rates": result.rates,
                    "median": result.median,
                    "target": result.target,
                }
                for result in results
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
