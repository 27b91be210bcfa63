"""`wasmkeep run` end to end on nil and in a process keep: examples, exit
statuses, traps, limits, module errors and the compile cache (nil only),
through the command as a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, run_wasmkeep, wasmkeep_command

Build = Callable[[str], Path]


def test_hello(example: Build, backend: str) -> None:
    result = run_wasmkeep(["run", "--backend", backend, str(example("hello"))])
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Hello from inside a keep!\n"
    assert result.stderr == b""


def test_args_and_env_reach_the_guest(example: Build, backend: str) -> None:
    module = example("echo")
    result = run_wasmkeep(
        ["run", "--backend", backend, "--env", "GREETING=hi there", str(module), "one", "two words"]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        "argc=3",
        f"argv[0]={module}",
        "argv[1]=one",
        "argv[2]=two words",
        "env GREETING=hi there",
    ]


def test_options_after_the_module_belong_to_the_guest(example: Build, backend: str) -> None:
    result = run_wasmkeep(["run", "--backend", backend, str(example("echo")), "--env", "X=1"])
    assert result.stdout.decode().splitlines()[2:] == ["argv[1]=--env", "argv[2]=X=1"]


def test_config_file_args_env_and_fd_names(example: Build, tmp_path: Path, backend: str) -> None:
    config = tmp_path / "Enarx.toml"
    config.write_text(
        'args = ["from-config"]\n[env]\nMODE = "config"\n'
        '[[files]]\nkind = "null"\n[[files]]\nkind = "stdout"\n[[files]]\nkind = "stderr"\n'
    )
    result = run_wasmkeep(
        ["run", "--backend", backend, "--config", str(config), str(example("echo")), "from-cli"]
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[2:4] == ["argv[1]=from-config", "argv[2]=from-cli"]
    assert set(lines[4:]) == {
        "env MODE=config",
        "env FD_COUNT=3",
        "env FD_NAMES=null:stdout:stderr",
    }


def test_wordcount_on_preopened_directories(example: Build, tmp_path: Path, backend: str) -> None:
    texts = EXAMPLES / "wordcount" / "texts"
    out = tmp_path / "out"
    out.mkdir()
    result = run_wasmkeep(
        [
            "run",
            "--dir-ro",
            f"{texts}::/data",
            "--dir",
            f"{out}::/out",
            str(example("wordcount")),
            "/data",
            "/out/report.txt",
        ]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines()[-1].split() == [
        "6",
        "39",
        "194",
        "total",
        "(3",
        "files)",
    ]
    assert (out / "report.txt").read_text().splitlines()[-1] == "6 39 194 total"


@pytest.mark.parametrize(("status", "expected"), [(0, 0), (3, 3), (42, 42), (255, 255), (256, 1)])
def test_exit_status_is_propagated(
    workload: Build, status: int, expected: int, backend: str
) -> None:
    result = run_wasmkeep(["run", "--backend", backend, str(workload("exit_with")), str(status)])
    assert result.returncode == expected


def test_trap_names_the_trap_and_where(workload: Build, backend: str) -> None:
    result = run_wasmkeep(["run", "--backend", backend, str(workload("trap"))])
    assert result.returncode == 134
    assert result.stdout == b"before the trap\n"
    message = result.stderr.decode()
    assert message.startswith("wasmkeep: error: the workload trapped: unreachable, in crash_here")
    assert "called from __original_main" in message
    assert "offset 0x" in message
    assert "Traceback" not in message


def test_timeout_stops_guest_code(workload: Build, backend: str) -> None:
    started = time.monotonic()
    result = run_wasmkeep(
        ["run", "--backend", backend, "--timeout", "0.5", str(workload("spin"))], timeout=30
    )
    assert result.returncode == 124
    assert b"wall-clock limit of 0.5 s" in result.stderr
    assert time.monotonic() - started < 10


def _run_with_silent_stdin(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run wasmkeep with a stdin that stays open and never delivers a byte."""
    read_end, write_end = os.pipe()
    try:
        return subprocess.run(
            [*wasmkeep_command(), *args],
            stdin=read_end,
            capture_output=True,
            timeout=30,
            check=False,
        )
    finally:
        os.close(read_end)
        os.close(write_end)


def test_timeout_stops_a_blocked_host_call(workload: Build, backend: str) -> None:
    result = _run_with_silent_stdin(
        ["run", "--backend", backend, "--timeout", "0.5", str(workload("cat"))]
    )
    assert result.returncode == 124
    assert b"wall-clock limit" in result.stderr


def test_memory_ceiling_is_what_the_guest_can_allocate(workload: Build, backend: str) -> None:
    result = run_wasmkeep(
        ["run", "--backend", backend, "--max-memory", "64M", str(workload("alloc")), "1024"]
    )
    assert result.returncode == 0, result.stderr
    allocated = int(result.stdout.split()[1])
    assert 32 <= allocated < 64


def test_memory_ceiling_below_the_initial_memory_is_a_clear_error(
    workload: Build, backend: str
) -> None:
    result = run_wasmkeep(
        ["run", "--backend", backend, "--max-memory", "64K", str(workload("alloc"))]
    )
    assert result.returncode == 2
    assert b"cannot instantiate" in result.stderr


@pytest.mark.parametrize("value", ["lots", "0", "5G", "12Q"])
def test_bad_memory_size_is_a_usage_error(workload: Build, value: str, backend: str) -> None:
    result = run_wasmkeep(
        ["run", "--backend", backend, "--max-memory", value, str(workload("exit_with"))]
    )
    assert result.returncode == 2
    assert b"--max-memory" in result.stderr


def test_stdin_to_stdout(workload: Build, backend: str) -> None:
    data = bytes(range(256)) * 4096
    result = run_wasmkeep(["run", "--backend", backend, str(workload("cat"))], input=data)
    assert result.returncode == 0
    assert result.stdout == data


def test_buffered_output_keeps_the_order_across_streams(workload: Build, backend: str) -> None:
    result = subprocess.run(
        [*wasmkeep_command(), "run", "--backend", backend, str(workload("interleave"))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    assert result.returncode == 0
    expected = [f"{'out' if i % 3 else 'err'} {i}" for i in range(200)]
    assert result.stdout.decode().splitlines() == expected


def test_output_is_flushed_while_the_guest_keeps_running(
    tmp_path: Path, workload: Build, backend: str
) -> None:
    # trap.c prints, flushes, then traps: the line must arrive before the trap message.
    result = subprocess.run(
        [*wasmkeep_command(), "run", "--backend", backend, str(workload("trap"))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    assert result.stdout.decode().splitlines()[0] == "before the trap"


def test_poll_oneoff_on_stdin_and_a_clock(workload: Build, backend: str) -> None:
    ready = run_wasmkeep(
        ["run", "--backend", backend, str(workload("poll_stdin")), "2000"], input=b"hello\n"
    )
    assert ready.stdout == b"stdin ready, 6 bytes\n"
    silent = _run_with_silent_stdin(
        ["run", "--backend", backend, str(workload("poll_stdin")), "200"]
    )
    assert silent.stdout == b"timeout\n"
    closed = run_wasmkeep(
        ["run", "--backend", backend, str(workload("poll_stdin")), "2000"], input=b""
    )
    assert closed.stdout == b"stdin ready, 0 bytes\n"  # end of file is readable


# -- modules that cannot run -------------------------------------------------------


def _wat2wasm(tmp_path: Path, text: str) -> Path:
    import wasmtime

    module = tmp_path / "module.wasm"
    module.write_bytes(wasmtime.wat2wasm(text))
    return module


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", b"not a WebAssembly module"),
        (b"\x7fELF\x02\x01\x01", b"not a WebAssembly module"),
        (b"(module)", b"looks like WebAssembly text"),
        (b"\0asm\x0d\x00\x01\x00", b"is a WebAssembly component"),
        (b"\0asm\x02\x00\x00\x00", b"unsupported WebAssembly binary version"),
        (b"\0asm\x01\x00\x00\x00\xff\xff", b"does not validate"),
    ],
)
def test_bad_module_bytes(tmp_path: Path, content: bytes, message: bytes, backend: str) -> None:
    module = tmp_path / "bad.wasm"
    module.write_bytes(content)
    result = run_wasmkeep(["run", "--backend", backend, str(module)])
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count(b"\n") == 1, "one line, no traceback"


def test_unknown_imports_are_named(tmp_path: Path, backend: str) -> None:
    module = _wat2wasm(
        tmp_path,
        '(module (import "env" "magic" (func (param i32) (result i32)))'
        ' (import "wasi_snapshot_preview1" "fd_write" (func (param i64)))'
        ' (memory (export "memory") 1) (func (export "_start")))',
    )
    result = run_wasmkeep(["run", "--backend", backend, str(module)])
    assert result.returncode == 2
    assert b"env.magic (func (i32) -> (i32))" in result.stderr
    assert b"wasi_snapshot_preview1.fd_write (func (i64) -> ())" in result.stderr


def test_missing_start_and_reactors(tmp_path: Path, backend: str) -> None:
    no_start = _wat2wasm(tmp_path, '(module (memory (export "memory") 1))')
    assert b"exports no _start" in run_wasmkeep(["run", "--backend", backend, str(no_start)]).stderr
    reactor = _wat2wasm(
        tmp_path, '(module (memory (export "memory") 1) (func (export "_initialize")))'
    )
    assert b"is a reactor" in run_wasmkeep(["run", "--backend", backend, str(reactor)]).stderr
    no_memory = _wat2wasm(tmp_path, '(module (func (export "_start")))')
    assert (
        b"exports no memory" in run_wasmkeep(["run", "--backend", backend, str(no_memory)]).stderr
    )


def test_module_too_large_is_refused_before_reading(tmp_path: Path, backend: str) -> None:
    module = tmp_path / "huge.wasm"
    with module.open("wb") as file:
        file.truncate(257 * 1024 * 1024)  # sparse: costs no disk
    result = run_wasmkeep(["run", "--backend", backend, str(module)])
    assert result.returncode == 2
    assert b"more than the limit of 268435456 bytes" in result.stderr


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_module_path_errors(tmp_path: Path, kind: str, backend: str) -> None:
    path = tmp_path / "module.wasm"
    if kind == "directory":
        path.mkdir()
    result = run_wasmkeep(["run", "--backend", backend, str(path)])
    assert result.returncode == 2
    assert result.stderr.startswith(b"wasmkeep: error: ")


def test_verbose_shows_the_traceback(tmp_path: Path, backend: str) -> None:
    module = tmp_path / "bad.wasm"
    module.write_bytes(b"nope")
    result = run_wasmkeep(["--verbose", "run", "--backend", backend, str(module)])
    assert b"Traceback" in result.stderr
    assert result.returncode == 2


# -- compile cache -----------------------------------------------------------------


def test_second_run_loads_the_compiled_module(example: Build, tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    module = str(example("hello"))
    first = run_wasmkeep(["--verbose", "run", "--backend", "nil", module], env=env)
    assert b"compiled sha256:" in first.stderr
    cached = list((tmp_path / "wasmkeep" / "modules").glob("*.cwasm"))
    assert len(cached) == 1
    assert (tmp_path / "wasmkeep" / "modules").stat().st_mode & 0o777 == 0o700
    second = run_wasmkeep(["--verbose", "run", "--backend", "nil", module], env=env)
    assert b"loaded sha256:" in second.stderr
    assert second.stdout == first.stdout

    cached[0].write_bytes(b"garbage")  # a damaged cache costs time, not correctness
    third = run_wasmkeep(["--verbose", "run", "--backend", "nil", module], env=env)
    assert third.returncode == 0 and b"compiled sha256:" in third.stderr
    assert cached[0].read_bytes() != b"garbage"

    fresh = run_wasmkeep(["--verbose", "run", "--backend", "nil", "--no-cache", module], env=env)
    assert b"compiled sha256:" in fresh.stderr


def test_unwritable_cache_still_runs(example: Build, tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    result = run_wasmkeep(
        ["run", "--backend", "nil", str(example("hello"))], env={"XDG_CACHE_HOME": str(blocker)}
    )
    assert result.returncode == 0
    assert result.stdout == b"Hello from inside a keep!\n"


def test_clang_is_available() -> None:
    assert shutil.which("clang"), "tests build their workloads with clang (see README)"


def test_read_ahead_stdin_stays_visible_to_poll(workload: Build, backend: str) -> None:
    result = run_wasmkeep(
        ["run", "--backend", backend, str(workload("read_then_poll"))], input=b"hello\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"first=h ready=1 rest=ello\n"
