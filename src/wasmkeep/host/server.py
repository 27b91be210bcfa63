"""The host's sallyport loop: one request from the keep, one reply, until EXIT.

Requests are decoded strictly and dispatched by name to the executor, which
performs them only within the workload's grants. A keep that sends anything
malformed is treated as compromised: the loop stops and the keep is ended
(the host never guesses what a broken request meant).
"""

from __future__ import annotations

import logging

from wasmkeep.errors import KeepError
from wasmkeep.host.executor import Executor, KeepHungUp
from wasmkeep.sallyport.boot import Exit
from wasmkeep.sallyport.channel import Channel, ChannelClosed
from wasmkeep.sallyport.codec import Kind, ProtocolError
from wasmkeep.sallyport.messages import BY_OP, error_reply
from wasmkeep.sallyport.types import HostError

__all__ = ["KeepBrokeProtocol", "KeepVanished", "serve"]

log = logging.getLogger(__name__)


class KeepBrokeProtocol(KeepError):
    """The keep sent something that is not a valid request: it is not trusted further."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the keep broke the sallyport protocol: {detail}")


class KeepVanished(KeepError):
    """The channel closed before the keep said how its run ended."""


def serve(channel: Channel, executor: Executor) -> Exit:
    """Answer the keep's requests until it sends EXIT; returns it."""
    executor.keep_channel_fd = channel.fd
    while True:
        try:
            frame = channel.receive()
        except ChannelClosed as error:
            raise KeepVanished(str(error)) from None
        except ProtocolError as error:
            raise KeepBrokeProtocol(str(error)) from None
        if frame.kind is Kind.EXIT:
            try:
                return Exit.decode(frame.payload)
            except ProtocolError as error:
                raise KeepBrokeProtocol(f"EXIT: {error}") from None
        if frame.kind is not Kind.REQUEST:
            raise KeepBrokeProtocol(f"unexpected {frame.kind.name} frame")
        message = BY_OP.get(frame.op)
        if message is None:
            raise KeepBrokeProtocol(f"unknown request op {frame.op}")
        try:
            arguments = message.decode_request(frame.payload, executor.limits)
        except ProtocolError as error:
            raise KeepBrokeProtocol(str(error)) from None
        reply: bytes | list[bytes | bytearray | memoryview]
        try:
            reply = message.reply_writer(getattr(executor, message.name)(**arguments)).parts()
        except HostError as error:
            reply = error_reply(error.errno)
        except KeepHungUp:
            raise KeepVanished(f"the keep went away during {message.name}") from None
        try:
            channel.send(Kind.REPLY, message.op, frame.id, reply)
        except ChannelClosed as error:
            raise KeepVanished(str(error)) from None
