"""A receiver that reads slowly holds at most one flow-control window of each stream.

Before the window was fixed, gRPC grew it from probes of the link, and a
SuperLink receiving eight 500 MB uploads at once held up to 0.67 GB of them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc

from pollen.transport.addresses import Address
from pollen.transport.channels import STREAM_WINDOW_BYTES, new_server, open_channel
from pollen.transport.chunk_codec import as_is

MIB = 1024 * 1024


async def _sent_while_unread() -> int:
    """MiB a client manages to send to a handler that does not read, after warm-up."""
    reading = asyncio.Event()

    async def upload(messages: AsyncIterator[bytes], context: Any) -> bytes:
        if ("hold", "1") in tuple(context.invocation_metadata() or ()):
            await reading.wait()
        async for _ in messages:
            pass
        return b""

    server = new_server()
    handler = grpc.stream_unary_rpc_method_handler(upload, as_is, as_is)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test", {"Upload": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = open_channel(Address("127.0.0.1", port))
    call = channel.stream_unary("/test/Upload", as_is, as_is)
    payload = os.urandom(MIB)
    produced = 0

    async def messages(count: int) -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(count):
            produced += 1
            yield payload

    try:
        for _ in range(3):  # full speed first: what lets gRPC's probes grow a window
            await call(messages(128))
        produced = 0
        held = asyncio.ensure_future(call(messages(256), metadata=(("hold", "1"),)))
        await asyncio.sleep(1.0)
        sent = produced
        reading.set()
        await held
    finally:
        await channel.close()
        await server.stop(None)
    return sent


def test_a_stream_runs_ahead_of_its_reader_by_one_window_at_most() -> None:
    # the window, plus a message being written and one being read; and it does flow
    sent = asyncio.run(_sent_while_unread())
    assert STREAM_WINDOW_BYTES // MIB - 1 <= sent <= STREAM_WINDOW_BYTES // MIB + 2
