"""The host executor on its own: what a compromised keep could send it directly,
without the keep's own checks in front."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wasmkeep.host.beneath import split_last
from wasmkeep.host.executor import Executor
from wasmkeep.sallyport.calls import FDFLAGS, OFLAGS, POLL_READ
from wasmkeep.sallyport.types import TIME_NOW, Errno, FileType, HandleKind, HostError


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "secret").write_text("secret")
    box = tmp_path / "box"
    (box / "dir").mkdir(parents=True)
    (box / "file").write_text("hello")
    os.symlink("/etc/passwd", box / "abs")
    os.symlink("../secret", box / "out")
    os.symlink("file", box / "in")
    return box


def _errno(call: object, *args: object, **kwargs: object) -> Errno:
    with pytest.raises(HostError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return caught.value.errno


def _open(executor: Executor, handle: int, path: str, **flags: object) -> tuple[int, FileType]:
    options: dict[str, object] = {
        "follow": True,
        "oflags": 0,
        "fdflags": 0,
        "read": True,
        "write": False,
    }
    options.update(flags)
    return executor.open_at(handle, path, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "../secret", "dir/../../secret", "abs", "out", "dir/../out", "/", ".."],
)
def test_escapes_are_refused_even_without_the_keep(tree: Path, path: str) -> None:
    executor = Executor()
    root = executor.add_directory(tree, read_only=False)
    assert _errno(_open, executor, root, path) == Errno.NOTCAPABLE
    assert _errno(executor.stat_at, root, path, True) == Errno.NOTCAPABLE


def test_final_symlink_is_never_followed_by_nofollow_calls(tree: Path) -> None:
    executor = Executor()
    root = executor.add_directory(tree, read_only=False)
    assert executor.stat_at(root, "out", False).filetype == FileType.SYMBOLIC_LINK
    assert executor.readlink_at(root, "out") == b"../secret"
    assert _errno(_open, executor, root, "out", follow=False) == Errno.LOOP
    handle, filetype = _open(executor, root, "in")
    assert filetype == FileType.REGULAR_FILE
    assert executor.read(handle, 100) == b"hello"


def test_parent_directory_tricks_stay_inside(tree: Path) -> None:
    executor = Executor()
    root = executor.add_directory(tree, read_only=False)
    # "dir/.." is the preopen itself; ".." alone is above it.
    assert executor.stat_at(root, "dir/..", False).filetype == FileType.DIRECTORY
    assert _errno(executor.unlink_at, root, "../secret") == Errno.NOTCAPABLE
    assert _errno(executor.rename_at, root, "file", root, "../stolen") == Errno.NOTCAPABLE
    assert _errno(executor.mkdir_at, root, "../made") == Errno.NOTCAPABLE
    assert _errno(executor.rmdir_at, root, "..") in (Errno.NOTCAPABLE, Errno.INVAL, Errno.BUSY)
    assert (tree.parent / "secret").exists()
    assert not (tree.parent / "stolen").exists() and not (tree.parent / "made").exists()


def test_links_cannot_pull_outside_files_in(tree: Path) -> None:
    executor = Executor()
    root = executor.add_directory(tree, read_only=False)
    assert _errno(executor.link_at, root, "out", root, "copy", True) == Errno.INVAL
    executor.link_at(root, "out", root, "copy", False)  # links the symlink itself
    assert (tree / "copy").is_symlink()
    assert _errno(executor.symlink_at, "/etc/shadow", root, "new") == Errno.PERM


def test_read_only_directory_refuses_changes(tree: Path) -> None:
    executor = Executor()
    root = executor.add_directory(tree, read_only=True)
    assert _errno(_open, executor, root, "file", write=True) == Errno.ROFS
    assert _errno(_open, executor, root, "new", oflags=OFLAGS.CREAT) == Errno.ROFS
    assert _errno(_open, executor, root, "file", oflags=OFLAGS.TRUNC) == Errno.ROFS
    assert _errno(_open, executor, root, "file", fdflags=FDFLAGS.APPEND) == Errno.ROFS
    for call, args in [
        (executor.mkdir_at, (root, "x")),
        (executor.rmdir_at, (root, "dir")),
        (executor.unlink_at, (root, "file")),
        (executor.rename_at, (root, "file", root, "moved")),
        (executor.symlink_at, ("file", root, "link")),
        (executor.link_at, (root, "file", root, "hard", False)),
        (executor.set_times_at, (root, "file", True, TIME_NOW, None)),
    ]:
        assert _errno(call, *args) == Errno.ROFS, call.__name__
    handle, _ = _open(executor, root, "file")
    assert _errno(executor.write, handle, b"x") == Errno.ROFS
    assert _errno(executor.set_size, handle, 0) == Errno.ROFS
    assert executor.read(handle, 10) == b"hello"
    assert (tree / "file").read_text() == "hello"


def test_unknown_and_closed_handles(tree: Path) -> None:
    executor = Executor()
    root = executor.add_directory(tree, read_only=False)
    handle, _ = _open(executor, root, "file")
    executor.close(handle)
    assert _errno(executor.read, handle, 1) == Errno.BADF
    assert _errno(executor.close, handle) == Errno.BADF
    assert _errno(executor.read, 999, 1) == Errno.BADF
    assert _errno(_open, executor, handle, "x") == Errno.BADF
    file_handle, _ = _open(executor, root, "file")
    assert _errno(_open, executor, file_handle, "x") == Errno.NOTDIR


def test_stdio_is_not_a_file(tmp_path: Path) -> None:
    executor = Executor()
    read_end, write_end = os.pipe()
    try:
        stdin, filetype = executor.add_stdio(HandleKind.STDIN, read_end)
        stdout, _ = executor.add_stdio(HandleKind.STDOUT, write_end)
        assert filetype == FileType.UNKNOWN
        assert _errno(executor.write, stdin, b"x") == Errno.BADF
        assert _errno(executor.read, stdout, 1) == Errno.BADF
        assert _errno(executor.seek, stdin, 0, 0) == Errno.SPIPE
        assert _errno(executor.set_fdflags, stdin, FDFLAGS.NONBLOCK) == Errno.NOTSUP
        stat = executor.fstat(stdin)
        assert (stat.ino, stat.dev, stat.filetype) == (0, 0, FileType.UNKNOWN)
        assert executor.write(stdout, b"ping") == 4
        assert executor.poll([(stdin, POLL_READ)], 0).ready[0] is not None
        assert executor.read(stdin, 10) == b"ping"
        assert executor.poll([(stdin, POLL_READ)], 0).ready == [None]
        executor.close_all()
        os.fstat(read_end)  # stdio belongs to the host: never closed by the executor
    finally:
        os.close(read_end)
        os.close(write_end)


def test_readdir_snapshot_and_cookies(tree: Path) -> None:
    executor = Executor()
    root = executor.add_directory(tree, read_only=False)
    entries = executor.readdir(root, 0, 100)
    names = [entry.name for entry in entries]
    assert names[:2] == [b".", b".."]
    assert sorted(names[2:]) == [b"abs", b"dir", b"file", b"in", b"out"]
    assert [entry.next for entry in entries] == list(range(1, len(entries) + 1))
    assert executor.readdir(root, 3, 2) == entries[3:5]
    types = {entry.name: entry.filetype for entry in entries}
    assert types[b"dir"] == FileType.DIRECTORY and types[b"out"] == FileType.SYMBOLIC_LINK


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab./", max_size=12).filter(lambda path: not path.startswith("/")))
def test_split_last_keeps_the_path(path: str) -> None:
    parent, last = split_last(path)
    if path.rstrip("/"):
        assert "/" not in last.rstrip("/")
        assert (f"{parent}/{last}" if parent else last) == path.rstrip("/") + (
            "/" if path.endswith("/") else ""
        ) or parent.endswith("/")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["..", ".", "dir", "file", "abs", "out", "in", "", "x"]), max_size=6)
)
def test_no_generated_path_reads_the_secret(
    tmp_path_factory: pytest.TempPathFactory, parts: list[str]
) -> None:
    base = tmp_path_factory.getbasetemp() / "generated"
    if not base.exists():
        (base / "box" / "dir").mkdir(parents=True)
        (base / "secret").write_text("secret")
        (base / "box" / "file").write_text("hello")
        os.symlink("../secret", base / "box" / "out")
        os.symlink("/etc/passwd", base / "box" / "abs")
        os.symlink("file", base / "box" / "in")
    executor = Executor()
    root = executor.add_directory(base / "box", read_only=True)
    try:
        handle, filetype = _open(executor, root, "/".join(parts))
    except HostError:
        return
    if filetype == FileType.REGULAR_FILE:
        assert executor.read(handle, 100) == b"hello"
    executor.close_all()
