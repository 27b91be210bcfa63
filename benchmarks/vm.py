"""VM keep benchmark: `wasmkeep run --backend vm` side by side with the process
keep, nil, the wasmtime CLI and native code, in the same run, as ratios.

A measurement, not a test: it exits non-zero only when a contender fails or
prints something other than what the native build prints, never because a
target is missed.

What is measured (`--only` takes these names):

* `boot`: boot to workload, the wall time of running `hello` (`src/hello.c`:
  one `puts`) on each backend, natively and with the wasmtime CLI. For the VM
  keep the time is also split into phases, from `wasmkeep -v` runs: wasmkeep
  logs at DEBUG when it starts qemu (its command line), and how long after
  that qemu connected to the sallyport socket, the guest took BOOT (it had
  booted and read it) and EXIT came (`host/vm/launch.py`). The benchmark
  stamps each stderr line as it arrives, so the time before qemu starts and
  after EXIT is seen too.
* `compute`: `src/compute.c` (run.py's CPU kernel) at `--compute-scale`. The
  VM keep's time is reported whole, and once more minus its boot: each of its
  times minus the median `boot` time of the VM keep (`hello`), when `boot`
  ran too. The warm-up run of the VM keep is a `-v` run, whose phases are
  shown as well (one run).

How it measures:

1. Build `src/{hello,compute}.c` with run.py's compilers and flags; build
   the VM keep's image (`wasmkeep vm build-image`, untimed; nothing to do if
   it is up to date); ask `wasmkeep platform info --json` which accelerator
   the vm backend uses (KVM only if it really runs a guest here, else TCG).
2. Warm up and verify: each contender runs once untimed, and its stdout must
   equal the native build's.
3. `--repeat` rounds (default 3: a VM keep under TCG takes ~10 s to boot),
   each running every contender once, the first rotating from round to round.
   Wall time is `perf_counter` from starting the process until it has exited
   and its output is read. Then, for `boot`, `--repeat` runs of the VM keep
   with `-v` for its phases (not counted in its times).
4. Report medians with min and max, the speed relative to the process keep
   and to native (their median / the contender's median: 1.00x or more is as
   fast or faster), and the issue's target for the VM keep: boot to workload
   in at most 1 s on KVM. Under TCG it cannot be judged and the report says
   so.

Usage: .venv/bin/python benchmarks/vm.py [--repeat N] [--only NAME,...] [--quick]
           [--compute-scale N] [--json FILE] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
from run import (
    BUILD,
    SRC,
    RunFailed,
    build_all,
    check_status,
    compiler_versions,
    find_wasmkeep,
    find_wasmtime,
)

#: A run that takes longer than this is counted as failed, not waited for.
RUN_TIMEOUT_SECONDS = 900.0
#: The compute kernel's scale: twice run.py's full size, ~8.5 s natively here,
#: so that a VM keep run under TCG takes ~35 s, most of it the workload (its
#: code ran ~3.5x slower than native at scale 100 here: 14.8 s between BOOT
#: and EXIT against 4.2 s; the boot adds ~8 s).
COMPUTE_SCALE = 200
#: The issue's goal for the VM keep's boot to workload, on KVM.
BOOT_TARGET_SECONDS = 1.0

NATIVE = "native"
WASMTIME = "wasmtime"
NIL = "wasmkeep nil"
PROCESS = "wasmkeep process"
VM = "wasmkeep vm"

#: What `host/vm/launch.py` logs at DEBUG (`wasmkeep -v`), seconds since qemu started.
QEMU_COMMAND = re.compile(r"vm keep: \S*qemu-system-\S+ ")
CONNECTED = re.compile(r"vm keep: qemu connected after ([0-9.]+) s")
TOOK_BOOT = re.compile(r"vm keep: the guest took BOOT after ([0-9.]+) s")
EXITED = re.compile(r"vm keep: EXIT after ([0-9.]+) s")

#: The phases of a VM keep run, in order; they add up to its wall time.
PHASES = (
    ("until qemu starts", "wasmkeep starts, imports, probes KVM, checks the image"),
    ("qemu -> connected", "qemu starts and connects to the sallyport socket"),
    ("connected -> BOOT taken", "firmware, kernel, initramfs, the keep's Python; it reads BOOT"),
    ("BOOT -> EXIT", "the keep compiles and runs the workload, in the guest"),
    ("EXIT -> exited", "the guest powers off, qemu and wasmkeep exit"),
)
#: The sum of the first three phases: boot to workload as the host sees it.
TO_BOOT = "start -> BOOT taken"


@dataclass(frozen=True)
class Benchmark:
    name: str
    #: The program: `build/PROGRAM` and `build/PROGRAM.wasm`.
    program: str
    summary: str
    args: tuple[str, ...] = ()
    #: Time the VM keep's phases in `--repeat` extra `-v` runs (else: in its warm-up).
    phase_runs: bool = False


def benchmarks(compute_scale: int) -> list[Benchmark]:
    return [
        Benchmark(
            "boot",
            "hello",
            "boot to workload: wall time of running 'hello' (one puts)",
            phase_runs=True,
        ),
        Benchmark(
            "compute",
            "compute",
            f"run.py's CPU kernel: sieve, 64-bit hash loop, matrix multiply "
            f"(scale {compute_scale})",
            args=(str(compute_scale),),
        ),
    ]


@dataclass(frozen=True)
class Contender:
    """The native build (no runner), the wasmtime CLI or a wasmkeep backend."""

    name: str
    runner: tuple[str, ...] = ()
    #: wasmkeep's `--backend`; `runner` is then the wasmkeep script.
    backend: str | None = None

    def argv(self, bench: Benchmark, *, verbose: bool = False) -> list[str]:
        if not self.runner:
            return [str(BUILD / bench.program), *bench.args]
        module = str(BUILD / f"{bench.program}.wasm")
        if self.backend is None:
            return [*self.runner, module, *bench.args]
        flags = ["-v"] if verbose else []
        return [*self.runner, *flags, "run", "--backend", self.backend, module, *bench.args]


def contenders(wasmtime: Path, wasmkeep: Path) -> list[Contender]:
    keep = (str(wasmkeep),)
    return [
        Contender(NATIVE),
        Contender(WASMTIME, (str(wasmtime), "run")),
        Contender(NIL, keep, "nil"),
        Contender(PROCESS, keep, "process"),
        Contender(VM, keep, "vm"),
    ]


# --- Running --------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    seconds: float
    stdout: bytes
    #: Each stderr line with the time it arrived, seconds after the start.
    stderr: list[tuple[float, str]]


def run_once(argv: list[str]) -> Run:
    """Run to the end, timing it, reading stdout whole and stderr by lines."""
    stdout: list[bytes] = []
    stderr: list[tuple[float, str]] = []
    start = time.perf_counter()
    with subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        out, err = proc.stdout, proc.stderr

        def read_stdout() -> None:
            stdout.append(out.read())

        def read_stderr() -> None:
            for line in err:
                arrived = time.perf_counter() - start
                stderr.append((arrived, line.decode(errors="replace").rstrip("\n")))

        readers = [
            threading.Thread(target=read, daemon=True) for read in (read_stdout, read_stderr)
        ]
        for reader in readers:
            reader.start()
        # Wait for the end of the output, then for the exit: `wait` with a
        # timeout polls (sleeps up to 50 ms), which would count against short runs.
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        for reader in readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        if any(reader.is_alive() for reader in readers):
            proc.kill()
            raise RunFailed(f"no exit after {RUN_TIMEOUT_SECONDS:.0f} s")
        status = proc.wait()
        seconds = time.perf_counter() - start
    check_status(status, "\n".join(line for _, line in stderr).encode())
    return Run(seconds, b"".join(stdout), stderr)


def phases(run: Run) -> dict[str, float]:
    """A VM keep's `-v` run split into PHASES (and TO_BOOT), in seconds.
    RunFailed if a line is missing."""
    started = next((at for at, line in run.stderr if QEMU_COMMAND.search(line)), None)
    logged = {}
    for name, pattern in (("connected", CONNECTED), ("boot", TOOK_BOOT), ("exit", EXITED)):
        found = next((m for _, line in run.stderr if (m := pattern.search(line))), None)
        if found is not None:
            logged[name] = float(found.group(1))
    if started is None or len(logged) < 3:
        raise RunFailed("its -v log lacks the qemu command line or a phase line")
    connected, boot, exit_ = logged["connected"], logged["boot"], logged["exit"]
    times = [started, connected, boot - connected, exit_ - boot, run.seconds - started - exit_]
    split = {name: value for (name, _), value in zip(PHASES, times, strict=True)}
    split[TO_BOOT] = started + boot
    return split


def describe(split: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f} s" for name, value in split.items())


# --- Measuring ------------------------------------------------------------------


@dataclass
class Result:
    bench: Benchmark
    times: dict[str, list[float]] = field(default_factory=dict)
    #: The VM keep's phases, one dict per `-v` run.
    phases: list[dict[str, float]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def median(self, name: str) -> float | None:
        times = self.times.get(name)
        return statistics.median(times) if times else None

    def speed(self, name: str, baseline: str) -> float | None:
        mine, theirs = self.median(name), self.median(baseline)
        return None if mine is None or theirs is None else theirs / mine


def measure(bench: Benchmark, runners: Sequence[Contender], repeat: int) -> Result:
    result = Result(bench)
    expected: bytes | None = None
    live: list[Contender] = []
    for contender in runners:
        verbose = contender.name == VM and not bench.phase_runs
        progress(f"{bench.name}: warm-up {contender.name}{' (-v)' if verbose else ''}")
        try:
            run = run_once(contender.argv(bench, verbose=verbose))
            if verbose:
                result.phases.append(split := phases(run))
                progress(f"{bench.name}: warm-up phases {VM} -v: {describe(split)}")
        except (RunFailed, OSError) as error:
            result.problems.append(f"{contender.name} failed: {error}")
            if contender.name == NATIVE:
                return result
            continue
        if expected is None:
            expected = run.stdout
        elif run.stdout != expected:
            result.problems.append(mismatch(contender, run.stdout, expected))
            continue
        live.append(contender)
        result.times[contender.name] = []
    for label, contender in interleaved(live, repeat):
        if contender.name in result.times:
            time_one(bench, contender, expected, result, label)
    vm = next((c for c in live if c.name == VM and c.name in result.times), None)
    if bench.phase_runs and vm is not None:
        for index in range(repeat):
            try:
                run = run_once(vm.argv(bench, verbose=True))
                result.phases.append(split := phases(run))
            except (RunFailed, OSError) as error:
                result.problems.append(f"{VM} -v failed in phase run {index + 1}: {error}")
                break
            progress(f"{bench.name}: phases {index + 1}/{repeat} {VM} -v: {describe(split)}")
    return result


def time_one(
    bench: Benchmark, contender: Contender, expected: bytes | None, result: Result, label: str
) -> None:
    """One timed run; a failure takes the contender out of this benchmark."""
    try:
        run = run_once(contender.argv(bench))
    except (RunFailed, OSError) as error:
        result.problems.append(f"{contender.name} failed in run {label}: {error}")
        del result.times[contender.name]
        return
    if expected is not None and run.stdout != expected:
        result.problems.append(mismatch(contender, run.stdout, expected) + f" (run {label})")
        del result.times[contender.name]
        return
    result.times[contender.name].append(run.seconds)
    progress(f"{bench.name}: run {label} {contender.name}: {format_time(run.seconds)}")


def mismatch(contender: Contender, got: bytes, expected: bytes) -> str:
    def shown(data: bytes) -> str:
        return data.decode(errors="replace").strip().replace("\n", " | ")[:200]

    return f"{contender.name} output differs: got [{shown(got)}], native [{shown(expected)}]"


# --- The VM keep's setting --------------------------------------------------------


@dataclass(frozen=True)
class VmSetting:
    accelerator: str
    #: Why (the KVM check that failed, if any), qemu's version, the image.
    described: str


def prepare_vm(wasmkeep: Path) -> VmSetting:
    """Build the image (untimed) and ask which accelerator the vm backend uses."""
    progress("vm: wasmkeep vm build-image (untimed)")
    built = subprocess.run(
        [str(wasmkeep), "vm", "build-image"], capture_output=True, text=True, check=False
    )
    if built.returncode != 0:
        said = (built.stderr or built.stdout).strip().splitlines()[-3:]
        raise SetupError(f"wasmkeep vm build-image failed: {' / '.join(said)}")
    info = subprocess.run(
        [str(wasmkeep), "platform", "info", "--json"], capture_output=True, text=True, check=False
    )
    try:
        backends = json.loads(info.stdout)["backends"]
        vm = next(b for b in backends if b["name"] == "vm")
    except (ValueError, KeyError, StopIteration) as error:
        raise SetupError(f"wasmkeep platform info --json: no vm backend ({error})") from None
    if not vm["available"] or vm["accelerator"] is None:
        raise SetupError(f"the vm backend is unavailable here: {vm['summary']}")
    checks = {check["name"]: check for check in vm["checks"]}
    qemu = next((c["detail"] for name, c in checks.items() if "qemu" in name), "qemu (version?)")
    failed = [f"{c['name']}: {c['detail']}" for c in vm["checks"] if not c["passed"]]
    accelerator = str(vm["accelerator"])
    why = f" ({'; '.join(failed)})" if failed else ""
    return VmSetting(
        accelerator,
        f"{accelerator.upper()}{why}; {qemu.rpartition(': ')[2]}; 1 vCPU; {image(built.stdout)}",
    )


def image(build_output: str) -> str:
    """The image's kernel and initramfs, from `build-image`'s output and image.json."""
    directory = next(
        (
            line.split(None, 1)[1].strip()
            for line in build_output.splitlines()
            if line.startswith("image ")
        ),
        None,
    )
    if directory is None:
        return "image (not described)"
    try:
        manifest = json.loads((Path(directory) / "image.json").read_text())
        kernel, initrd = manifest["kernel"], manifest["initrd"]
        return (
            f"kernel {kernel['version']}, initramfs {initrd['size'] / 1e6:.1f} MB "
            f"({initrd['uncompressed_size'] / 1e6:.0f} MB unpacked), "
            f"cmdline {manifest['cmdline']!r}"
        )
    except (OSError, ValueError, KeyError) as error:
        return f"image {directory} ({error})"


# --- Reporting --------------------------------------------------------------------

COLUMNS = ("contender", "median", "min", "max", "vs process", "vs native")
LAYOUT = Layout(COLUMNS, numeric=COLUMNS[1:], target_title="target (vm)")
VM_MINUS_BOOT = "wasmkeep vm minus its boot"


def format_time(seconds: float) -> str:
    return f"{seconds:.3f} s" if abs(seconds) >= 1 else f"{seconds * 1000:.1f} ms"


def boot_goal(result: Result, setting: VmSetting) -> str:
    if setting.accelerator != "kvm":
        return f"<= {BOOT_TARGET_SECONDS:g} s on KVM: KVM only: not measurable here (TCG)"
    median = result.median(VM)
    if median is None:
        return f"<= {BOOT_TARGET_SECONDS:g} s: not measured"
    met = median <= BOOT_TARGET_SECONDS
    return f"<= {BOOT_TARGET_SECONDS:g} s: {'met' if met else 'MISSED'} ({format_time(median)})"


def minus_boot(result: Result, boot: Result | None) -> list[float] | None:
    """The VM keep's times minus its median boot (hello) time."""
    vm_boot = None if boot is None else boot.median(VM)
    times = result.times.get(VM)
    return None if vm_boot is None or not times else [t - vm_boot for t in times]


def ratios(result: Result, median: float) -> list[str]:
    """The cells "vs process" and "vs native" for a median time: their
    median / this one (1.00x or more: as fast or faster)."""
    cells = []
    for baseline in (PROCESS, NATIVE):
        theirs = result.median(baseline)
        cells.append(format_speed(None if theirs is None else theirs / median))
    return cells


def format_speed(ratio: float | None) -> str:
    """`format_ratio`, but two significant digits below 0.1x (a VM keep's
    hello against native's is ~0.001x, which "0.00x" would hide)."""
    return format_ratio(ratio) if ratio is None or ratio >= 0.1 else f"{ratio:.2g}x"


def sections(result: Result, boot: Result | None, setting: VmSetting) -> list[Section]:
    bench = result.bench
    rows = [
        [name, *spread(times, format_time), *ratios(result, statistics.median(times))]
        for name, times in result.times.items()
        if times
    ]
    notes = []
    net = minus_boot(result, boot) if bench.name != "boot" else None
    if net is not None:
        rows.append(
            [VM_MINUS_BOOT, *spread(net, format_time), *ratios(result, statistics.median(net))]
        )
        assert boot is not None
        notes.append(
            f"{bench.name}: '{VM_MINUS_BOOT}' is each {VM} time minus the median {VM} time "
            f"of boot (hello, {format_time(statistics.median(boot.times[VM]))}); "
            "the other rows are whole runs, nothing subtracted"
        )
    elif bench.name != "boot":
        notes.append(f"{bench.name}: '{VM_MINUS_BOOT}' needs boot in the same run")
    goal = boot_goal(result, setting) if bench.name == "boot" else None
    main = Section(
        bench.name,
        f"{bench.name}: {bench.summary}",
        rows,
        target=None if goal is None else f"{VM} {goal}",
        goals={} if goal is None else {VM: goal},
        problems=result.problems,
        notes=notes,
    )
    if not result.phases:
        return [main]
    runs = len(result.phases)
    which = f"{runs} -v run{'s' if runs > 1 else ''}" if bench.phase_runs else "the -v warm-up"
    phase_rows = [
        [f"vm: {name}", *spread([split[name] for split in result.phases], format_time), "-", "-"]
        for name in [*(name for name, _ in PHASES), TO_BOOT]
    ]
    said = "; ".join(f"{name}: {what}" for name, what in PHASES)
    phase_notes = [
        f"{bench.name}, vm phases ({which}): from wasmkeep's DEBUG lines and when they arrived"
        + (f": {said}; '{TO_BOOT}' is the first three together" if bench.phase_runs else "")
    ]
    return [
        main,
        Section(
            f"{bench.name}, vm phases",
            f"{bench.name}: the VM keep's phases ({which}, not counted above)",
            phase_rows,
            notes=phase_notes,
        ),
    ]


def json_report(
    results: Sequence[Result], boot: Result | None, setting: VmSetting, context: Context
) -> dict[str, object]:
    return {
        **context,
        "accelerator": setting.accelerator,
        "benchmarks": [
            {
                "name": r.bench.name,
                "summary": r.bench.summary,
                "seconds": r.times,
                "median_seconds": {name: r.median(name) for name in r.times},
                "speed_vs_process": {name: r.speed(name, PROCESS) for name in r.times},
                "speed_vs_native": {name: r.speed(name, NATIVE) for name in r.times},
                "vm_minus_boot_seconds": None if r.bench.name == "boot" else minus_boot(r, boot),
                "vm_phases_seconds": r.phases,
                "target": f"<= {BOOT_TARGET_SECONDS:g} s boot to workload on KVM"
                if r.bench.name == "boot"
                else None,
                "target_result": boot_goal(r, setting) if r.bench.name == "boot" else None,
                "problems": r.problems,
            }
            for r in results
        ],
    }


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def describe_run(repeat: int, wasmtime: Path, setting: VmSetting, load: str) -> Context:
    return {
        **base_context(
            "vm.py",
            machine=platform.platform(),
            method=(
                f"1 warm-up, then {repeat} timed runs per contender, interleaved; wall time; "
                f"the VM keep's phases from {repeat} more -v runs (boot) or its -v warm-up "
                "(compute)"
            ),
        ),
        "vm": setting.described,
        "wasmtime": f"{first_line([str(wasmtime), '--version'])} (CLI defaults; cache on)",
        "compilers": compiler_versions(),
        "load average (1, 5, 15 min)": f"{load} at the start",
    }


# --- Command line -----------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The VM keep against the process keep, nil, wasmtime and native code.",
    )
    add_run_options(parser, repeat=3)
    parser.add_argument(
        "--compute-scale",
        type=int,
        default=COMPUTE_SCALE,
        metavar="N",
        help=f"the compute kernel's scale (default {COMPUTE_SCALE})",
    )
    add_output_options(parser)
    args = parse_checked(parser, argv)
    if args.compute_scale < 1:
        parser.error("--compute-scale must be at least 1")
    if args.quick:
        args.repeat = 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load = load_average()
    try:
        chosen = select(benchmarks(args.compute_scale), args.only)
        build_all([SRC / f"{program}.c" for program in sorted({b.program for b in chosen})])
        wasmtime, wasmkeep = find_wasmtime(), find_wasmkeep()
        setting = prepare_vm(wasmkeep)
    except SetupError as error:
        return setup_failed("vm.py", error)
    progress(f"vm: {setting.described}; load average {load}")
    context = describe_run(args.repeat, wasmtime, setting, load)
    runners = contenders(wasmtime, wasmkeep)
    results = [measure(bench, runners, args.repeat) for bench in chosen]
    context["load average (1, 5, 15 min)"] += f", {load_average()} at the end"
    boot = next((r for r in results if r.bench.name == "boot"), None)
    report = [s for r in results for s in sections(r, boot, setting)]
    print(render_report(LAYOUT, report, context, markdown=args.markdown))
    if not args.markdown:
        for note in (note for s in report for note in s.notes):
            print(f"note: {note}")
    if args.json:
        write_json(args.json, json_report(results, boot, setting, context))
    return finish([p for r in results for p in r.problems])


if __name__ == "__main__":
    sys.exit(main())
