"""What the host sees of a TLS conversation: ciphertext only.

The host's side is tapped: every byte the executor moves on a socket, and
(process keep) every byte of every sallyport frame. A client sends a secret;
the workload echoes it; neither the secret nor any part of the keep's private
key may appear in what the host saw.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.network import free_port, listen_config
from wasmkeep.config import parse_config
from wasmkeep.host.executor import Executor
from wasmkeep.host.process_keep import ProcessKeepOptions, run_in_process_keep
from wasmkeep.host.setup import prepare_host
from wasmkeep.keep import tls as keep_tls
from wasmkeep.keep.runtime import run_workload
from wasmkeep.sallyport.channel import Channel
from wasmkeep.sallyport.codec import Kind
from wasmkeep.sallyport.types import KeepManifest, PollReply
from wasmkeep.workload import Workload

Build = Callable[[str], Path]
SECRET = b"the launch codes are 0000-1111-2222"


class TappedExecutor(Executor):
    """Records every byte that crosses the host's sockets."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = bytearray()

    def recv(self, handle: int, size: int, peek: bool, waitall: bool, block: bool) -> bytes:
        data = super().recv(handle, size, peek, waitall, block)
        self.seen += data
        return data

    def send(self, handle: int, data: bytes | memoryview, block: bool) -> int:
        self.seen += bytes(data)
        return super().send(handle, data, block)

    def poll(
        self,
        interests: Sequence[tuple[int, int]],
        timeout_ns: int | None,
        prefetch: int = 0,
        sends: Sequence[tuple[int, bytes | memoryview]] = (),
    ) -> PollReply:
        for _, data in sends:
            self.seen += bytes(data)
        reply = super().poll(interests, timeout_ns, prefetch, sends)
        for result in reply.ready:
            if result is not None:
                self.seen += result.data
        return reply


def _talk(port: int, cert: bytes) -> bytes:
    context = ssl.create_default_context(cadata=cert.decode())
    deadline = time.monotonic() + 30
    while True:
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=30)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with context.wrap_socket(raw, server_hostname="localhost") as connection:
        connection.sendall(SECRET)
        return connection.recv(4096)


def _wait_for_certificate(executor: Executor) -> bytes:
    deadline = time.monotonic() + 30
    while executor.certificate is None:
        assert time.monotonic() < deadline, "the keep published no certificate"
        time.sleep(0.02)
    return executor.certificate


def _tapped(port: int, tmp_path: Path) -> tuple[TappedExecutor, KeepManifest]:
    """A TLS echo server's host, tapped, serving one connection."""
    config = parse_config(listen_config(port, "tls"), base_dir=tmp_path)
    executor = TappedExecutor()
    _, manifest = prepare_host(
        config, "tcp-echo.wasm", args=("--max-connections", "1"), executor=executor
    )
    return executor, manifest


def test_nil_keep_key_and_plaintext_stay_inside(
    example: Build, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys: list[bytes] = []
    original = keep_tls.Identity.self_signed

    def remember(names: object, subject: str = "wasmkeep keep") -> keep_tls.Identity:
        identity = original(names, subject)  # type: ignore[arg-type]
        keys.append(identity.key_pem)
        return identity

    monkeypatch.setattr(keep_tls.Identity, "self_signed", staticmethod(remember))
    port = free_port()
    executor, manifest = _tapped(port, tmp_path)
    workload = Workload.from_file(example("tcp-echo"))
    runner = threading.Thread(
        target=run_workload,
        args=(workload, manifest, executor),
        kwargs={"tls": keep_tls.prepare_tls(manifest)},
        daemon=True,
    )
    runner.start()
    assert _talk(port, _wait_for_certificate(executor)) == SECRET
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert SECRET not in executor.seen
    assert len(executor.seen) > len(SECRET)  # the host did carry the (encrypted) conversation
    (key_pem,) = keys
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for secret_part in (scalar, der, key_pem):
        assert secret_part not in executor.seen
    assert executor.certificate is not None
    for secret_part in (scalar, der, key_pem):
        assert secret_part not in executor.certificate
    executor.close_all()


def test_process_keep_sallyport_carries_no_plaintext(
    example: Build, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = bytearray()
    original_send, original_receive = Channel.send, Channel.receive

    def send(
        self: Channel,
        kind: Kind,
        op: int,
        frame_id: int,
        payload: bytes | bytearray | Sequence[bytes | bytearray | memoryview],
    ) -> None:
        whole = payload if isinstance(payload, bytes | bytearray) else b"".join(payload)
        frames.extend(whole)
        original_send(self, kind, op, frame_id, payload)

    def receive(self: Channel, max_payload: int | None = None) -> object:
        frame = original_receive(self, max_payload)
        frames.extend(frame.payload)
        return frame

    monkeypatch.setattr(Channel, "send", send)
    monkeypatch.setattr(Channel, "receive", receive)
    port = free_port()
    executor, manifest = _tapped(port, tmp_path)
    workload = Workload.from_file(example("tcp-echo"))
    runner = threading.Thread(
        target=_run_quietly,
        args=(workload, manifest, executor),
        daemon=True,
    )
    runner.start()
    assert _talk(port, _wait_for_certificate(executor)) == SECRET
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert SECRET not in frames
    assert b"PRIVATE KEY" not in frames
    assert executor.certificate is not None
    assert executor.certificate in frames  # the public certificate did cross, as it should
    executor.close_all()


def _run_quietly(workload: Workload, manifest: KeepManifest, executor: Executor) -> None:
    run_in_process_keep(workload, manifest, executor, ProcessKeepOptions(1 << 28))
