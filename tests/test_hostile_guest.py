"""Guests that pass the keep's WASI layer pointers and sizes meant to hurt it.

Each module calls one WASI function with hostile arguments and exits with the
errno it got back. The keep must answer with an errno (FAULT for memory it
does not own, INVAL or BADF for nonsense) and never touch memory outside the
guest's, crash, or hang.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasmkeep.errors import WorkloadError
from wasmkeep.host.executor import Executor
from wasmkeep.keep.engine import EngineSettings, compile_module, make_engine
from wasmkeep.keep.runtime import RunOptions, run_workload
from wasmkeep.keep.wasi.preview1 import SIGNATURES
from wasmkeep.sallyport.types import Errno, FileType, HandleInfo, HandleKind, KeepManifest
from wasmkeep.workload import Workload

FAULT, INVAL, BADF = int(Errno.FAULT), int(Errno.INVAL), int(Errno.BADF)
TOP = 0xFFFFFFF0  # near the end of the 32-bit space: far outside a 1-page memory
PAGE = 65536


def _module(name: str, arguments: list[int]) -> bytes:
    params = SIGNATURES[name]
    signature = " ".join(f"(param {kind})" for kind in params)
    values = " ".join(
        f"({kind}.const {value})" for kind, value in zip(params, arguments, strict=True)
    )
    return bytes(
        wasmtime.wat2wasm(
            f'''(module
          (import "wasi_snapshot_preview1" "{name}" (func $call {signature} (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) "\\10\\00\\00\\00\\ff\\ff\\ff\\7f")  ;; an iovec of 2 GiB at 16
          (func (export "_start") (call $exit (call $call {values}))))'''
        )
    )


def _run(wasm: bytes, tmp_path: Path) -> int:
    executor = Executor()
    fds = []
    for kind in (HandleKind.STDIN, HandleKind.STDOUT, HandleKind.STDERR):
        handle, filetype = executor.add_null()  # stdio of the test process stays untouched
        fds.append(HandleInfo(handle, kind, filetype))
    root = executor.add_directory(tmp_path, read_only=False)
    fds.append(HandleInfo(root, HandleKind.DIRECTORY, FileType.DIRECTORY, guest_path="/"))
    manifest = KeepManifest(args=("guest", "arg"), env=(("A", "b"),), fds=tuple(fds))
    try:
        return run_workload(Workload("hostile.wasm", wasm), manifest, executor, RunOptions())
    finally:
        executor.close_all()


CASES = [
    ("args_get", [TOP, 0], FAULT),
    ("args_get", [0, PAGE - 2], FAULT),
    ("args_sizes_get", [PAGE - 2, 0], FAULT),
    ("environ_get", [0, TOP], FAULT),
    ("clock_time_get", [1, 0, PAGE - 4], FAULT),
    ("clock_time_get", [99, 0, 0], INVAL),
    ("clock_res_get", [7, 0], INVAL),
    ("random_get", [PAGE - 8, 16], FAULT),
    ("random_get", [0, 0xFFFFFFFF], INVAL),
    ("fd_write", [1, TOP, 1, 0], FAULT),
    ("fd_write", [1, 0, 0x20000000, 0], FAULT),  # iovec array far longer than memory
    ("fd_write", [1, 16, 1, 0], FAULT),  # one iovec claiming 2 GiB
    ("fd_write", [99, 0, 1, 0], BADF),
    ("fd_read", [0, 16, 1, 0], FAULT),
    ("fd_read", [12345, 0, 0, 0], BADF),
    ("fd_pread", [3, 0, 1, 0, 0], int(Errno.NOTCAPABLE)),  # a directory cannot read
    ("fd_prestat_get", [3, PAGE], FAULT),
    ("fd_prestat_dir_name", [3, PAGE - 0, 1], FAULT),
    ("fd_prestat_get", [1, 0], BADF),
    ("fd_fdstat_get", [3, TOP], FAULT),
    ("fd_filestat_get", [3, PAGE - 63], FAULT),
    ("fd_readdir", [3, PAGE - 8, 4096, 0, 0], FAULT),
    ("fd_seek", [3, 0, 9, 0], int(Errno.NOTCAPABLE)),
    ("fd_renumber", [3, 77], BADF),
    ("path_open", [3, 0, 0, 0xFFFFFF, 0, 0, 0, 0, 0], int(Errno.NAMETOOLONG)),
    ("path_open", [3, 0, PAGE - 2, 10, 0, 0, 0, 0, 0], FAULT),
    ("path_open", [3, 0, 16, 2, 0xFFFF, 0, 0, 0, 0], INVAL),  # unknown oflags
    ("path_open", [0, 0, 16, 2, 0, 0, 0, 0, 0], int(Errno.NOTDIR)),
    ("path_create_directory", [3, 20, 4], int(Errno.ILSEQ)),  # bytes ff ff ff 7f
    ("path_create_directory", [3, 16, 4], INVAL),  # a NUL inside the path
    ("path_symlink", [TOP, 8, 3, 0, 1], FAULT),
    ("path_readlink", [3, 0, 0, TOP, 8, 0], int(Errno.NOENT)),
    ("poll_oneoff", [0, 0, 0, 0], INVAL),
    ("poll_oneoff", [0, 0, 0x7FFFFFFF, 0], int(Errno.NOTSUP)),
    ("poll_oneoff", [PAGE - 48, 0, 2, 0], FAULT),
    ("fd_filestat_set_times", [3, 0, 0, 0xFF], INVAL),
    ("fd_fdstat_set_flags", [3, 0xFFFF], INVAL),
    ("fd_fdstat_set_rights", [3, -1 & 0xFFFFFFFFFFFFFFFF, 0], int(Errno.NOTCAPABLE)),
    ("sock_shutdown", [3, 0], int(Errno.NOTSOCK)),
    ("sock_accept", [99, 0, 0], BADF),
    ("proc_raise", [9], int(Errno.NOSYS)),
]


@pytest.mark.parametrize(("name", "arguments", "errno"), CASES, ids=str)
def test_hostile_arguments_get_an_errno(
    tmp_path: Path, name: str, arguments: list[int], errno: int
) -> None:
    assert _run(_module(name, arguments), tmp_path) == errno


def test_every_function_is_covered() -> None:
    assert len(SIGNATURES) == 46


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(sorted(set(SIGNATURES) - {"proc_exit", "sched_yield", "poll_oneoff"})),
    data=st.data(),
)
def test_random_arguments_never_break_the_keep(
    tmp_path: Path, name: str, data: st.DataObject
) -> None:
    arguments = [
        data.draw(
            st.one_of(
                st.integers(0, 64),
                st.integers(PAGE - 64, PAGE + 64),
                st.integers(0, 0xFFFFFFFF if kind == "i32" else 0xFFFFFFFFFFFFFFFF),
            )
        )
        for kind in SIGNATURES[name]
    ]
    status = _run(_module(name, arguments), tmp_path)
    assert 0 <= status <= 76


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_refused_cleanly(data: bytes) -> None:
    engine = make_engine(EngineSettings())
    with contextlib.suppress(WorkloadError):
        compile_module(engine, Workload("fuzz.wasm", b"\0asm\x01\0\0\0" + data).wasm)
