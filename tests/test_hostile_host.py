"""A host that lies: the keep must notice every reply it cannot trust.

Three levels:

* the keep's client against a scripted channel: each known lie, by name, and
  hypothesis-made replies (corrupted bytes and well-formed lies) for every
  operation, thousands of cases: the client raises HostProtocolViolation (or
  an errno the host may legitimately give), or returns a value that keeps its
  promises;
* a whole keep runtime (in this process) against a real server whose executor
  lies, running a real workload;
* a real process keep against a lying host, through `run_in_process_keep`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasmkeep.errors import HostProtocolViolation
from wasmkeep.host.executor import Executor
from wasmkeep.host.process_keep import ProcessKeepOptions, run_in_process_keep
from wasmkeep.host.server import serve
from wasmkeep.keep.client import SallyportHost
from wasmkeep.keep.runtime import RunOptions, run_workload
from wasmkeep.sallyport.calls import OFLAGS
from wasmkeep.sallyport.channel import Channel, frame_payload_limit
from wasmkeep.sallyport.codec import Frame, Kind, Writer, encode_frame
from wasmkeep.sallyport.messages import BY_NAME, MESSAGES
from wasmkeep.sallyport.types import (
    DirEntry,
    Errno,
    FileStat,
    FileType,
    HandleInfo,
    HandleKind,
    HostError,
    KeepManifest,
    PollResult,
    SendResult,
)
from wasmkeep.workload import Workload

Build = Callable[[str], Path]
KNOWN = (1, 2, 3, 7)


class ScriptedChannel:
    """Records what the keep sends; answers with whatever the test scripted."""

    def __init__(self, answer: Callable[[Frame], Frame]) -> None:
        self.answer = answer
        self.sent: list[Frame] = []

    def send(
        self,
        kind: Kind,
        op: int,
        frame_id: int,
        payload: bytes | bytearray | Sequence[bytes | bytearray | memoryview],
    ) -> None:
        whole = payload if isinstance(payload, bytes | bytearray) else b"".join(payload)
        self.sent.append(Frame(kind, op, frame_id, bytes(whole)))

    def receive(self, max_payload: int | None = None) -> Frame:
        return self.answer(self.sent[-1])


def client(reply: Callable[[Frame], Frame]) -> SallyportHost:
    return SallyportHost(ScriptedChannel(reply), KNOWN)  # type: ignore[arg-type]


def honest(result: Any) -> Callable[[Frame], Frame]:
    """A reply with `result` encoded as the request's op wants it."""

    def answer(request: Frame) -> Frame:
        message = next(m for m in MESSAGES if m.op == request.op)
        return Frame(Kind.REPLY, request.op, request.id, message.encode_reply(result))

    return answer


CALLS: dict[str, tuple[Any, ...]] = {
    "read": (1, 10),
    "pread": (7, 10, 0),
    "write": (2, b"hello"),
    "pwrite": (7, b"hello", 5),
    "seek": (7, 100, 0),
    "sync": (7, False),
    "fstat": (7,),
    "set_size": (7, 9),
    "allocate": (7, 0, 9),
    "set_times": (7, None, 5),
    "set_fdflags": (7, 4),
    "readdir": (3, 0, 4),
    "close": (7,),
    "stat_at": (3, "file", True),
    "set_times_at": (3, "file", True, None, 5),
    "mkdir_at": (3, "dir"),
    "rmdir_at": (3, "dir"),
    "unlink_at": (3, "file"),
    "rename_at": (3, "a", 3, "b"),
    "link_at": (3, "a", 3, "b", False),
    "symlink_at": ("target", 3, "link"),
    "readlink_at": (3, "link"),
    "poll": ([(1, 1), (2, 2)], 0, 100, [(7, b"hello")]),
    "accept": (3, True),
    "recv": (1, 10, False, False, True),
    "send": (2, b"hello", True),
    "shutdown": (7, 3),
    "log": (2, "a line"),
    "publish_certificate": (b"-----BEGIN CERTIFICATE-----",),
}


def call(host: SallyportHost, name: str) -> Any:
    if name == "open_at":
        return host.open_at(
            3, "file", follow=True, oflags=OFLAGS.DIRECTORY, fdflags=0, read=True, write=False
        )
    return getattr(host, name)(*CALLS[name])


STAT = FileStat(1, 2, FileType.REGULAR_FILE, 1, 10, 0, 0, 0)

LIES = [
    ("read", b"x" * 11, "11 bytes for a read of 10"),
    ("pread", b"x" * 4096, "4096 bytes for a read of 10"),
    ("write", 6, "6 bytes written of 5"),
    ("pwrite", 1 << 31, "written of 5"),
    ("seek", 99, "asked for offset 100, host says 99"),
    ("seek", 1 << 63, "does not fit in 63 bits"),
    ("fstat", FileStat(1, 2, FileType.REGULAR_FILE, 1, 1 << 63, 0, 0, 0), "63 bits"),
    ("stat_at", FileStat(1, 2, FileType.DIRECTORY, 1, (1 << 64) - 1, 0, 0, 0), "63 bits"),
    ("readdir", [DirEntry(n, 1, FileType.REGULAR_FILE, b"f") for n in range(1, 7)], "6 entries"),
    ("readdir", [DirEntry(0, 1, FileType.REGULAR_FILE, b"f")], "does not advance"),
    (
        "readdir",
        [DirEntry(2, 1, FileType.REGULAR_FILE, b"a"), DirEntry(2, 1, FileType.REGULAR_FILE, b"b")],
        "does not advance",
    ),
    ("readdir", [DirEntry(1, 1, FileType.REGULAR_FILE, b"../etc")], "not a file name"),
    ("readdir", [DirEntry(1, 1, FileType.REGULAR_FILE, b"a\0b")], "not a file name"),
    ("readdir", [DirEntry(1, 1, FileType.REGULAR_FILE, b"")], "not a file name"),
    ("open_at", (7, FileType.DIRECTORY), "handle 7 is already in use"),
    ("open_at", (9, FileType.REGULAR_FILE), "a directory was required"),
    ("open_at", (9, FileType.SYMBOLIC_LINK), "symbolic link"),
    ("readlink_at", b"a\0b", "NUL"),
    ("poll", ([None], [SendResult(5)]), "1 results for 2 interests"),
    ("poll", ([PollResult(Errno.SUCCESS, 1 << 63, False), None], [SendResult(5)]), "does not fit"),
    ("poll", ([None, None], []), "0 send results for 1 sends"),
    ("poll", ([None, None], [SendResult(6)]), "6 bytes sent of 5"),
    (
        "poll",
        ([PollResult(Errno.SUCCESS, 0, False, b"x" * 101), None], [SendResult(5)]),
        "101 bytes received, 100 allowed",
    ),
    (
        "poll",
        ([None, PollResult(Errno.SUCCESS, 0, False, b"x")], [SendResult(5)]),
        "data for an interest in writing",
    ),
    ("accept", 7, "handle 7 is already in use"),
    ("recv", b"x" * 11, "11 bytes for a receive of 10"),
    ("send", 6, "6 bytes sent of 5"),
]


@pytest.mark.parametrize(("name", "result", "complaint"), LIES, ids=lambda v: str(v)[:30])
def test_each_lie_is_caught(name: str, result: Any, complaint: str) -> None:
    with pytest.raises(HostProtocolViolation, match=complaint):
        call(client(honest(result)), name)


def test_honest_replies_pass() -> None:
    assert call(client(honest(b"x" * 10)), "read") == b"x" * 10
    assert call(client(honest(100)), "seek") == 100
    assert call(client(honest((9, FileType.DIRECTORY))), "open_at") == (9, FileType.DIRECTORY)
    assert call(client(honest(None)), "close") is None


@pytest.mark.parametrize(
    ("tamper", "complaint"),
    [
        (lambda f: Frame(Kind.REQUEST, f.op, f.id, b"\0\0"), "REQUEST frame"),
        (lambda f: Frame(Kind.REPLY, f.op + 1, f.id, b"\0\0"), "for op"),
        (lambda f: Frame(Kind.REPLY, f.op, f.id + 1, b"\0\0"), "id 2"),
        (lambda f: Frame(Kind.EXIT, 0, 0, b""), "EXIT frame"),
        (lambda f: Frame(Kind.REPLY, f.op, f.id, b"\xff\xff"), "not a WASI errno"),
        (lambda f: Frame(Kind.REPLY, f.op, f.id, b"\0"), "ends inside"),
        (lambda f: Frame(Kind.REPLY, f.op, f.id, b"\0\0" + b"\xff" * 4), "more than the limit"),
        (lambda f: Frame(Kind.REPLY, f.op, f.id, b"\0\0\x05\0\0\0ab"), "announced"),
    ],
)
def test_frames_that_are_not_the_reply(tamper: Callable[[Frame], Frame], complaint: str) -> None:
    with pytest.raises(HostProtocolViolation, match=complaint):
        call(client(tamper), "read")


def test_an_errno_reply_is_an_errno() -> None:
    def refuse(request: Frame) -> Frame:
        return Frame(Kind.REPLY, request.op, request.id, Writer().u16(Errno.ACCES).payload())

    with pytest.raises(HostError) as caught:
        call(client(refuse), "unlink_at")
    assert caught.value.errno is Errno.ACCES


def test_unknown_handles_never_reach_the_host() -> None:
    channel = ScriptedChannel(honest(b""))
    host = SallyportHost(channel, KNOWN)  # type: ignore[arg-type]
    with pytest.raises(HostError):
        host.read(99, 1)
    assert channel.sent == []


def _promises_kept(name: str, value: Any) -> None:
    """What a value the client returned must satisfy."""
    if name in ("read", "pread"):
        assert len(value) <= 10
    elif name in ("write", "pwrite", "send"):
        assert 0 <= value <= 5
    elif name == "recv":
        assert len(value) <= 10
    elif name == "accept":
        assert value not in KNOWN
    elif name == "seek":
        assert value == 100
    elif name in ("fstat", "stat_at"):
        assert value.size < 1 << 63
        assert value.filetype in FileType
    elif name == "readdir":
        assert len(value) <= 4
        cookies = [entry.next for entry in value]
        assert cookies == sorted(set(cookies))
        assert all(cookie > 0 for cookie in cookies)
        assert all(entry.name and b"/" not in entry.name for entry in value)
    elif name == "open_at":
        handle, filetype = value
        assert handle not in KNOWN
        assert filetype == FileType.DIRECTORY
    elif name == "poll":
        assert len(value.ready) == 2
        assert len(value.sent) == 1
        assert value.sent[0].written <= 5
        assert sum(len(result.data) for result in value.ready if result) <= 100
    elif name == "readlink_at":
        assert b"\0" not in value


NAMES = [message.name for message in MESSAGES]


@settings(max_examples=3000, deadline=None)
@given(name=st.sampled_from(NAMES), payload=st.binary(max_size=64), errno=st.integers(0, 0xFFFF))
def test_random_reply_bytes(name: str, payload: bytes, errno: int) -> None:
    host = client(lambda f: Frame(Kind.REPLY, f.op, f.id, errno.to_bytes(2, "little") + payload))
    try:
        value = call(host, name)
    except (HostProtocolViolation, HostError):
        return
    _promises_kept(name, value)


def _lies() -> st.SearchStrategy[tuple[str, Any]]:
    """Well-formed replies with any values: the semantic checks must hold."""
    u64 = st.integers(0, (1 << 64) - 1)
    types = st.sampled_from(list(FileType))
    stat = st.builds(FileStat, u64, u64, types, u64, u64, u64, u64, u64)
    entries = st.lists(
        st.builds(DirEntry, u64, u64, types, st.binary(min_size=0, max_size=8)), max_size=8
    )
    polls = st.lists(
        st.one_of(
            st.none(), st.builds(PollResult, st.sampled_from(list(Errno)), u64, st.booleans())
        ),
        max_size=4,
    )
    return st.one_of(
        st.tuples(st.just("read"), st.binary(max_size=40)),
        st.tuples(st.just("pread"), st.binary(max_size=40)),
        st.tuples(st.just("write"), st.integers(0, 0xFFFFFFFF)),
        st.tuples(st.just("pwrite"), st.integers(0, 0xFFFFFFFF)),
        st.tuples(st.just("seek"), u64),
        st.tuples(st.just("fstat"), stat),
        st.tuples(st.just("stat_at"), stat),
        st.tuples(st.just("readdir"), entries),
        st.tuples(st.just("open_at"), st.tuples(st.integers(0, 12), types)),
        st.tuples(st.just("readlink_at"), st.binary(max_size=20)),
        st.tuples(
            st.just("poll"),
            st.tuples(
                polls,
                st.lists(
                    st.builds(SendResult, st.integers(0, 10), st.sampled_from(list(Errno))),
                    max_size=2,
                ),
            ),
        ),
        st.tuples(st.just("accept"), st.integers(0, 12)),
        st.tuples(st.just("recv"), st.binary(max_size=40)),
        st.tuples(st.just("send"), st.integers(0, 0xFFFFFFFF)),
    )


@settings(max_examples=3000, deadline=None)
@given(_lies())
def test_well_formed_lies(lie: tuple[str, Any]) -> None:
    name, result = lie
    try:
        value = call(client(honest(result)), name)
    except HostProtocolViolation:
        return
    _promises_kept(name, value)


# -- a whole keep against a lying server ---------------------------------------------


class LyingExecutor(Executor):
    """An executor that answers one operation with a lie."""

    def __init__(self, lie: str) -> None:
        super().__init__()
        self.lie = lie

    def read(self, handle: int, size: int) -> bytes:
        data = super().read(handle, size)
        if self.lie == "long read" and data:
            return data + b"!" * (size + 1)
        return data

    def write(self, handle: int, data: bytes | memoryview) -> int:
        written = super().write(handle, data)
        return written + 100 if self.lie == "long write" else written

    def fstat(self, handle: int) -> FileStat:
        stat = super().fstat(handle)
        if self.lie == "huge file":
            return FileStat(stat.dev, stat.ino, stat.filetype, 1, 1 << 63, 0, 0, 0)
        return stat


@pytest.fixture
def stdio_pipes() -> Iterator[tuple[int, int, int, int]]:
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    yield stdin_read, stdin_write, stdout_read, stdout_write
    for fd in (stdin_read, stdin_write, stdout_read, stdout_write):
        with contextlib.suppress(OSError):
            os.close(fd)


def _manifest(executor: Executor, stdin: int, stdout: int) -> KeepManifest:
    handles = [
        (HandleKind.STDIN, executor.add_stdio(HandleKind.STDIN, stdin)),
        (HandleKind.STDOUT, executor.add_stdio(HandleKind.STDOUT, stdout)),
        (HandleKind.STDERR, executor.add_stdio(HandleKind.STDERR, stdout)),
    ]
    return KeepManifest(
        args=("cat",),
        env=(),
        fds=tuple(HandleInfo(handle, kind, filetype) for kind, (handle, filetype) in handles),
    )


@pytest.fixture
def lying_host_for_cat(
    request: pytest.FixtureRequest, stdio_pipes: tuple[int, int, int, int]
) -> tuple[LyingExecutor, KeepManifest]:
    """A lying executor with cat's stdin already holding a line."""
    stdin_read, stdin_write, _stdout_read, stdout_write = stdio_pipes
    os.write(stdin_write, b"some input for cat\n")
    os.close(stdin_write)
    executor = LyingExecutor(request.param)
    return executor, _manifest(executor, stdin_read, stdout_write)


LYING = pytest.mark.parametrize("lying_host_for_cat", ["long read", "long write"], indirect=True)


@LYING
def test_a_keep_runtime_stops_on_a_lie(
    lying_host_for_cat: tuple[LyingExecutor, KeepManifest], workload: Build
) -> None:
    executor, manifest = lying_host_for_cat
    host_end, keep_end = socket.socketpair()
    server = threading.Thread(
        target=_serve_quietly,
        args=(Channel(host_end.detach(), frame_payload_limit()), executor),
        daemon=True,
    )
    server.start()
    keep_channel = Channel(keep_end.detach(), frame_payload_limit())
    client_host = SallyportHost(keep_channel, (info.handle for info in manifest.fds))
    with pytest.raises(HostProtocolViolation):
        run_workload(Workload.from_file(workload("cat")), manifest, client_host, RunOptions())
    keep_channel.close()
    server.join(timeout=10)


@LYING
def test_a_process_keep_stops_on_a_lie(
    lying_host_for_cat: tuple[LyingExecutor, KeepManifest], workload: Build
) -> None:
    executor, manifest = lying_host_for_cat
    with pytest.raises(HostProtocolViolation, match="bytes"):
        run_in_process_keep(
            Workload.from_file(workload("cat")), manifest, executor, ProcessKeepOptions(1 << 28)
        )


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(corruption=st.binary(min_size=1, max_size=32), at=st.integers(0, 40))
def test_a_keep_runtime_never_accepts_a_corrupted_stream(
    workload: Build, corruption: bytes, at: int
) -> None:
    """The host's reply bytes are corrupted at some point of the conversation:
    the run ends with a violation or, if the corruption hit nothing that
    matters, normally; never with anything else."""
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    os.write(stdin_write, b"line\n" * 20)
    os.close(stdin_write)
    executor = Executor()
    manifest = _manifest(executor, stdin_read, stdout_write)
    host_end, keep_end = socket.socketpair()
    host_channel = Channel(host_end.detach(), frame_payload_limit())
    sent = [0]
    original_send = host_channel.send

    def corrupting_send(
        kind: Kind,
        op: int,
        frame_id: int,
        payload: bytes | bytearray | Sequence[bytes | bytearray | memoryview],
    ) -> None:
        sent[0] += 1
        if sent[0] == at:
            whole = payload if isinstance(payload, bytes | bytearray) else b"".join(payload)
            frame = bytearray(encode_frame(kind, op, frame_id, whole))
            frame[at % len(frame) : at % len(frame) + len(corruption)] = corruption
            os.write(host_channel.fd, frame)
            return
        original_send(kind, op, frame_id, payload)

    host_channel.send = corrupting_send  # type: ignore[method-assign]
    server = threading.Thread(target=_serve_quietly, args=(host_channel, executor), daemon=True)
    server.start()
    keep_channel = Channel(keep_end.detach(), frame_payload_limit())
    client_host = SallyportHost(keep_channel, (info.handle for info in manifest.fds))
    try:
        status = run_workload(
            Workload.from_file(workload("cat")), manifest, client_host, RunOptions()
        )
        assert status in (0, 1)
    except HostProtocolViolation:
        pass
    finally:
        keep_channel.close()
        server.join(timeout=10)
        for fd in (stdin_read, stdout_read, stdout_write):
            os.close(fd)
        executor.close_all()


def _serve_quietly(channel: Channel, executor: Executor) -> None:
    try:
        serve(channel, executor)
    except Exception:  # the keep hung up on a lying host: expected
        pass
    finally:
        channel.close()


def test_every_operation_has_a_lie_or_a_reason_it_needs_none() -> None:
    """Operations whose reply carries data have a semantic check above; the
    rest reply with nothing but an errno, which the codec checks."""
    checked = {name for name, _, _ in LIES}
    for message in MESSAGES:
        assert message.name in checked or not message.reply, message.name
    assert BY_NAME["close"].reply == ()
